//! `cargo xtask demo`: LoRA end to end on a small model, checked against Python PEFT.
//!
//! 1. Pretrain a small MLP (PEFT's test MLP shape: 10 → 20 → 2) on task A: `x0 + x1 > 0`.
//! 2. Freeze it, inject LoRA (r = 4 on `lin0` and `lin1`) and fine-tune on task B: `x2 - x3 > 0`, which the
//!    base model gets right only by chance.
//! 3. Save the adapter in PEFT's format, reload it onto a fresh copy of the base model, and check that the
//!    reloaded model reproduces the trained logits exactly.
//! 4. If the project venv exists (`cargo xtask setup`), let Python PEFT 0.21.2 load the same adapter and
//!    compare its logits too.
#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

use anyhow::{bail, Context, Result};
use peft_core::nn::{self, Linear};
use peft_core::peft_config::TargetModules;
use peft_core::{Adaptable, LoadOptions, PeftModel, SaveOptions};
use peft_lora::LoraConfig;
use std::path::{Path, PathBuf};
use tch::nn::{ModuleT, OptimizerConfig, VarStore};
use tch::{Device, Kind, Tensor};

#[derive(Debug, Adaptable)]
struct Mlp {
    lin0: Linear,
    lin1: Linear,
}

impl Mlp {
    fn new(vs: &VarStore) -> Result<Self> {
        let p = vs.root();
        Ok(Mlp {
            lin0: nn::linear(&p / "lin0", 10, 20, Default::default())?,
            lin1: nn::linear(&p / "lin1", 20, 2, Default::default())?,
        })
    }
}

impl ModuleT for Mlp {
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        // Same layout as PEFT's test MLP (tests/oracle/models.py), so Python can load the adapter.
        let h = self.lin0.forward_t(x, train).relu().dropout(0.5, train);
        self.lin1.forward_t(&h, train).log_softmax(-1, None::<Kind>)
    }
}

fn task(n: i64, b: bool) -> (Tensor, Tensor) {
    let x = Tensor::randn([n, 10], (Kind::Float, Device::Cpu));
    let y =
        if b { (x.select(1, 2) - x.select(1, 3)).gt(0.0) } else { (x.select(1, 0) + x.select(1, 1)).gt(0.0) };
    (x, y.to_kind(Kind::Int64))
}

fn accuracy(m: &impl ModuleT, x: &Tensor, y: &Tensor) -> f64 {
    tch::no_grad(|| {
        m.forward_t(x, false).argmax(-1, false).eq_tensor(y).to_kind(Kind::Float).mean(None::<Kind>)
    })
    .double_value(&[])
}

fn train(m: &impl ModuleT, vs: &VarStore, x: &Tensor, y: &Tensor, steps: i64, lr: f64) -> Result<f64> {
    let mut opt = tch::nn::AdamW::default().build(vs, lr)?;
    let mut loss_value = f64::NAN;
    for step in 0..steps {
        let idx = Tensor::randint(x.size()[0], [256], (Kind::Int64, Device::Cpu));
        let loss = m.forward_t(&x.index_select(0, &idx), true).nll_loss(&y.index_select(0, &idx));
        opt.backward_step(&loss);
        loss_value = loss.double_value(&[]);
        if step % 100 == 0 {
            println!("    step {step:4}  loss {loss_value:.4}");
        }
    }
    Ok(loss_value)
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).ancestors().nth(2).map(Path::to_path_buf).unwrap_or_default()
}

fn main() -> Result<()> {
    tch::manual_seed(2024);
    let out_dir = workspace_root().join("target").join("demo");
    let _ = std::fs::remove_dir_all(&out_dir);
    std::fs::create_dir_all(&out_dir)?;

    println!("1. pretraining the base model on task A (x0 + x1 > 0)");
    let vs = VarStore::new(Device::Cpu);
    let base = Mlp::new(&vs)?;
    let (xa, ya) = task(4096, false);
    train(&base, &vs, &xa, &ya, 300, 1e-2)?;
    let (xa_test, ya_test) = task(2048, false);
    let (xb, yb) = task(4096, true);
    let (xb_test, yb_test) = task(2048, true);
    println!(
        "   base accuracy: task A {:.1}%, task B {:.1}%",
        100.0 * accuracy(&base, &xa_test, &ya_test),
        100.0 * accuracy(&base, &xb_test, &yb_test)
    );
    let base_file = out_dir.join("base.safetensors");
    vs.save(&base_file)?;

    println!("2. LoRA fine-tuning on task B (x2 - x3 > 0), base frozen");
    let config = LoraConfig {
        r: 4,
        lora_alpha: 8.into(),
        target_modules: Some(TargetModules::list(["lin0", "lin1"])),
        ..LoraConfig::default()
    };
    let peft = PeftModel::new(base, &vs, config.boxed(), "default")?;
    println!("   {}", peft.trainable_parameters_line());
    let before = accuracy(&peft, &xb_test, &yb_test);
    train(&peft, peft.adapter_var_store(), &xb, &yb, 400, 1e-2)?;
    let after = accuracy(&peft, &xb_test, &yb_test);
    println!("   held-out accuracy on task B: {:.1}% -> {:.1}%", 100.0 * before, 100.0 * after);
    if after < before + 0.2 {
        bail!("LoRA did not learn task B ({before:.3} -> {after:.3})");
    }

    println!("3. saving in PEFT's format and reloading onto a fresh base model");
    let adapter_dir = out_dir.join("adapter");
    peft.save_pretrained(&adapter_dir, &SaveOptions::default())?;
    for entry in std::fs::read_dir(&adapter_dir)? {
        let entry = entry?;
        println!("   {} ({} bytes)", entry.path().display(), entry.metadata()?.len());
    }
    let trained_logits = tch::no_grad(|| peft.forward_t(&xb_test, false));
    let mut vs2 = VarStore::new(Device::Cpu);
    let fresh = Mlp::new(&vs2)?;
    vs2.load(&base_file)?;
    let (reloaded, report) = PeftModel::from_pretrained(fresh, &vs2, &adapter_dir, LoadOptions::default())?;
    let reloaded_logits = tch::no_grad(|| reloaded.forward_t(&xb_test, false));
    let diff = (&reloaded_logits - &trained_logits).abs().max().double_value(&[]);
    println!(
        "   reloaded {} tensors ({}); max |logit difference| = {diff:e}",
        report.tensors_loaded,
        if report.trainable { "trainable" } else { "frozen for inference" }
    );
    if diff != 0.0 {
        bail!("the reloaded adapter does not reproduce the trained outputs");
    }

    println!("4. Python PEFT 0.21.2 loads the same adapter");
    match python_cross_check(&out_dir, &base_file, &adapter_dir, &xb_test, &trained_logits)? {
        Some(d) => println!("   PEFT's logits match: max |difference| = {d:e}"),
        None => println!("   skipped: no project venv (run `cargo xtask setup`)"),
    }
    println!("done: the adapter is in {}", adapter_dir.display());
    Ok(())
}

/// Runs `tests/oracle/check_load.py` on a case directory holding our base weights, input and adapter.
fn python_cross_check(
    out: &Path,
    base: &Path,
    adapter: &Path,
    x: &Tensor,
    logits: &Tensor,
) -> Result<Option<f64>> {
    let root = workspace_root();
    let python = root.join(".venv").join("bin").join("python");
    if !python.exists() {
        return Ok(None);
    }
    let cases = out.join("python-check");
    let case = cases.join("demo");
    std::fs::create_dir_all(&case)?;
    std::fs::copy(base, case.join("base.safetensors"))?;
    Tensor::write_safetensors(&[("x", x)], case.join("input.safetensors"))?;
    Tensor::write_safetensors(&[("logits", logits)], case.join("peft_rs_outputs.safetensors"))?;
    std::fs::write(
        case.join("case.json"),
        r#"{"model": "MLP", "adapters": ["default"], "active": ["default"]}"#,
    )?;
    copy_dir(adapter, &case.join("adapter"))?;
    let oracle = root.join("tests").join("oracle");
    let status = std::process::Command::new(&python)
        .current_dir(&oracle)
        .arg(oracle.join("check_load.py"))
        .arg(&cases)
        .status()
        .context("running Python PEFT")?;
    if !status.success() {
        bail!("Python PEFT could not load the adapter ({status})");
    }
    let theirs = Tensor::read_safetensors(case.join("peft_outputs.safetensors"))?
        .into_iter()
        .find(|(k, _)| k == "unmerged")
        .map(|(_, t)| t)
        .context("PEFT wrote no outputs")?;
    let d = (&theirs - logits).abs().max().double_value(&[]);
    if d > 1e-5 {
        bail!("PEFT's logits differ from ours by {d:e}");
    }
    Ok(Some(d))
}

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        std::fs::copy(entry.path(), to.join(entry.file_name()))?;
    }
    Ok(())
}
