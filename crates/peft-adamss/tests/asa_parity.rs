//! ASA against PEFT: `tests/oracle/asa.py` trains an AdaMSS adapter with `use_asa` for ten AdamW steps,
//! calling PEFT's `update_and_allocate(step)` after each optimizer step; the same steps here with
//! [`Asa::update_and_allocate`] must mask the same subspaces at the same steps and give the same losses
//! and weights bit for bit (PyTorch's AdamW replayed by `peft_train::optim::AdamW`). Skipped (with a message) when the project's Python oracle is not installed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use peft_adamss::Asa;
use peft_core::nn as pnn;
use peft_core::{Adaptable, LoadOptions, PeftModel};
use peft_train::optim::{AdamW, Optimizer, Param};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tch::nn::{ModuleT, VarStore};
use tch::{Device, Kind, Tensor};

#[derive(Debug, Adaptable)]
struct Net {
    lin0: pnn::Linear,
    lin1: pnn::Linear,
}

impl ModuleT for Net {
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        self.lin1.forward_t(&self.lin0.forward_t(x, train).relu(), train).log_softmax(-1, Kind::Float)
    }
}

fn read_all(path: &Path) -> BTreeMap<String, Tensor> {
    peft_core::io::read_safetensors(path).unwrap().into_iter().map(|t| (t.key, t.tensor)).collect()
}

fn python() -> Option<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let py = root.join(".venv/bin/python");
    py.exists().then_some(py)
}

#[test]
fn asa_masks_the_subspaces_peft_masks_and_trains_to_the_same_weights() {
    let Some(py) = python() else {
        eprintln!("skipped: no .venv/bin/python (run `cargo xtask setup`)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/oracle/asa.py");
    let status = std::process::Command::new(py).arg(&script).arg(dir.path()).status().unwrap();
    assert!(status.success(), "asa.py failed");
    let d = dir.path();
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("asa.json")).unwrap()).unwrap();

    let mut vs = VarStore::new(Device::Cpu);
    let net = Net {
        lin0: pnn::linear(vs.root() / "lin0", 10, 20, Default::default()).unwrap(),
        lin1: pnn::linear(vs.root() / "lin1", 20, 6, Default::default()).unwrap(),
    };
    vs.load(d.join("base.safetensors")).unwrap();
    let (mut peft, _) =
        PeftModel::from_pretrained(net, &vs, d.join("initial"), LoadOptions::default().trainable()).unwrap();
    let data = read_all(&d.join("data.safetensors"));
    let (x, y) = (&data["x"], &data["y"]);
    // torch.optim.AdamW(lr=0.01) with its defaults, op for op (peft_train's AdamW).
    let params = peft
        .named_trainable_parameters()
        .into_iter()
        .map(|(name, tensor)| Param { name, tensor, lr: 0.01, weight_decay: 0.01 })
        .collect();
    let mut opt = AdamW::new(params, (0.9, 0.999), 1e-8);
    let mut asa = Asa::new();
    let want_losses: Vec<f64> =
        meta["losses"].as_array().unwrap().iter().filter_map(|v| v.as_f64()).collect();
    let want_trainable = meta["trainable"].as_array().unwrap();
    for step in 0..want_losses.len() {
        opt.zero_grad();
        let loss = peft.forward_t(x, true).nll_loss(y);
        loss.backward();
        opt.step(1.0).unwrap();
        asa.update_and_allocate(&mut peft, step as i64).unwrap();
        let l = loss.double_value(&[]);
        assert!(
            (l - want_losses[step]).abs() < 1e-6,
            "loss at step {step}: {l} vs PEFT {}",
            want_losses[step]
        );
        let mut ours: Vec<String> = peft
            .named_trainable_parameters()
            .into_iter()
            .filter(|(n, _)| n.contains("adamss_"))
            .map(|(n, _)| n)
            .collect();
        ours.sort();
        let want: Vec<String> = want_trainable[step]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect();
        assert_eq!(ours, want, "trainable subspaces after step {step}");
    }
    let final_weights = read_all(&d.join("final").join("adapter_model.safetensors"));
    for (k, v) in peft.adapter_state_dict("default").unwrap() {
        let diff = (&v - &final_weights[&k]).abs().max().double_value(&[]);
        // Bit for bit: the same ATen ops in the same order, masking included.
        assert!(diff == 0.0, "{k}: {diff}");
    }
}
