//! AdaLoRA parity beyond the shared method matrix (tests/tests/methods_parity.rs runs AdaLoRA's output,
//! init and config rows from tests/oracle/method_adalora.py): training with PEFT's rank allocator and
//! orthogonal regularisation, and adapters saved with a `rank_pattern`, in both directions. The fixtures
//! come from running `method_adalora.py` as a script (see its docstring).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use peft::adalora::{orthogonal_regularization, AdaLoraConfig, AdaLoraLayer, RankAllocator};
use peft_core::{Adaptable, LoadOptions, PeftModel, SaveOptions};
use peft_parity::compare::{assert_close, assert_differs, assert_identical};
use peft_parity::harness::{self, assert_same_config, base_model, rust_outputs, strings};
use peft_parity::models::{read_all, read_tensor, TestModel};
use peft_parity::oracle::{self, read_json};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tch::nn::{ModuleT, OptimizerConfig};
use tch::Tensor;

/// The dedicated fixtures, generated once per hash of the shared oracle files and this method's rows.
fn fixtures() -> PathBuf {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let mut files: Vec<PathBuf> = std::fs::read_dir(oracle::oracle_dir())
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "py" || e == "txt"))
            .filter(|p| {
                let n = p.file_name().unwrap().to_string_lossy();
                !n.starts_with("method_") || n == "method_adalora.py"
            })
            .collect();
        files.sort();
        let mut h = Sha256::new();
        for f in &files {
            h.update(f.file_name().unwrap().to_string_lossy().as_bytes());
            h.update(std::fs::read(f).unwrap());
        }
        let hash = format!("{:x}", h.finalize());
        let dir = oracle::workspace_root()
            .join("target")
            .join("oracle-cache")
            .join(format!("adalora-{}", &hash[..16]));
        if !dir.join("manifest.json").exists() {
            let tmp = dir.with_extension(format!("tmp-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&tmp);
            std::fs::create_dir_all(tmp.parent().unwrap()).unwrap();
            oracle::run_script("method_adalora.py", &[&tmp]);
            if std::fs::rename(&tmp, &dir).is_err() {
                let _ = std::fs::remove_dir_all(&tmp);
            }
        }
        dir
    })
    .clone()
}

fn config(peft: &PeftModel<TestModel>) -> &AdaLoraConfig {
    peft.config("default").unwrap().as_any().downcast_ref::<AdaLoraConfig>().unwrap()
}

/// PEFT's in-memory rank pattern (`….lora_E.default`) in the saved form our config holds.
fn peft_pattern(v: &Value) -> Option<BTreeMap<String, Vec<bool>>> {
    let m = v.as_object()?;
    Some(
        m.iter()
            .map(|(k, v)| {
                let keep = v.as_array().unwrap().iter().map(|b| b.as_bool().unwrap()).collect();
                (k.replace(".default", ""), keep)
            })
            .collect(),
    )
}

fn our_pattern(peft: &PeftModel<TestModel>) -> Option<BTreeMap<String, Vec<bool>>> {
    config(peft).rank_pattern.as_ref().map(|p| p.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
}

/// `torch.optim.AdamW` (defaults: betas (0.9, 0.999), eps 1e-8, weight_decay 0.01), the single-tensor
/// path PyTorch takes on the CPU, with its very ATen ops: `addcmul_(g, g, value=v)` is `addcmul_(g·v, g)`,
/// which runs the same (possibly fused multiply-add) kernel; `(g·v)·g + m` rounds differently on some
/// elements.
struct TorchAdamW {
    params: Vec<Tensor>,
    state: Vec<Option<(f64, Tensor, Tensor)>>,
    lr: f64,
}

impl TorchAdamW {
    fn step(&mut self) {
        let (beta1, beta2, eps, wd, lr) = (0.9f64, 0.999f64, 1e-8, 0.01, self.lr);
        tch::no_grad(|| {
            for (p, st) in self.params.iter_mut().zip(self.state.iter_mut()) {
                let grad = p.grad();
                if !grad.defined() {
                    continue;
                }
                let (step, m, v) = st.get_or_insert_with(|| (0.0, p.zeros_like(), p.zeros_like()));
                *step += 1.0;
                let _ = p.f_mul_scalar_(1.0 - lr * wd).unwrap();
                let _ = m.f_lerp_(&grad, 1.0 - beta1).unwrap();
                let _ = v.f_mul_scalar_(beta2).unwrap();
                let _ = v.f_addcmul_(&(&grad * (1.0 - beta2)), &grad).unwrap();
                let bias_correction1 = 1.0 - beta1.powf(*step);
                let bias_correction2 = 1.0 - beta2.powf(*step);
                let step_size = lr / bias_correction1;
                let denom = (v.sqrt() / bias_correction2.powf(0.5)) + eps;
                let update = (&*m * -step_size) / denom;
                let _ = p.f_add_(&update).unwrap();
            }
        });
    }
}

enum Opt {
    Sgd(tch::nn::Optimizer),
    AdamW(TorchAdamW),
}

impl Opt {
    fn new(kind: &str, peft: &PeftModel<TestModel>, lr: f64) -> Self {
        match kind {
            "sgd" => Opt::Sgd(tch::nn::Sgd::default().build(peft.adapter_var_store(), lr).unwrap()),
            "adamw" => {
                let params: Vec<Tensor> =
                    peft.named_trainable_parameters().into_iter().map(|(_, t)| t).collect();
                let state = params.iter().map(|_| None).collect();
                Opt::AdamW(TorchAdamW { params, state, lr })
            }
            other => panic!("unknown optimizer {other}"),
        }
    }

    fn zero_grad(&mut self) {
        match self {
            Opt::Sgd(o) => o.zero_grad(),
            Opt::AdamW(o) => {
                for p in &o.params {
                    let mut g = p.grad();
                    if g.defined() {
                        let _ = g.zero_();
                    }
                }
            }
        }
    }

    fn step(&mut self) {
        match self {
            Opt::Sgd(o) => o.step(),
            Opt::AdamW(o) => o.step(),
        }
    }
}

/// Writes a case directory for check_load.py (PEFT loads our adapter and records its outputs).
fn stage_for_peft(work: &Path, name: &str, case_dir: &Path, model: &str, adapter: &Path) {
    let out = work.join(name);
    std::fs::create_dir_all(&out).unwrap();
    std::fs::copy(case_dir.join("base.safetensors"), out.join("base.safetensors")).unwrap();
    let json =
        serde_json::json!({"model": model, "adapters": ["default"], "active": ["default"], "merge": true});
    std::fs::write(out.join("case.json"), json.to_string()).unwrap();
    let copy = out.join("adapter");
    std::fs::create_dir_all(&copy).unwrap();
    for f in ["adapter_config.json", "adapter_model.safetensors"] {
        std::fs::copy(adapter.join(f), copy.join(f)).unwrap();
    }
}

/// Our outputs in every state after loading `adapter` onto the case's base model.
fn outputs_after_load(case_dir: &Path, model: &str, adapter: &Path, x: &Tensor) -> BTreeMap<String, Tensor> {
    let (vs, m) = base_model(case_dir, model);
    let (peft, _) = PeftModel::from_pretrained(m, &vs, adapter, LoadOptions::default()).unwrap();
    rust_outputs(peft, x, &["default".to_string()], true)
}

/// Compares our outputs with what check_load.py computed after PEFT loaded our adapter.
fn compare_with_peft(work: &Path, ours: &BTreeMap<String, BTreeMap<String, Tensor>>) {
    oracle::run_script("check_load.py", &[work]);
    for (name, outputs) in ours {
        let theirs = read_all(&work.join(name).join("peft_outputs.safetensors"));
        assert_eq!(outputs.keys().collect::<Vec<_>>(), theirs.keys().collect::<Vec<_>>(), "{name}: states");
        for (state, t) in outputs {
            assert_close(t, &theirs[state], 0.0, &format!("{name}: {state} (PEFT loaded ours)"));
        }
        oracle::record("adalora rs->peft", name);
    }
}

#[test]
fn training_with_the_rank_allocator_matches_peft() {
    let _rng = oracle::rng_guard();
    let root = fixtures();
    let work = tempfile::tempdir().unwrap();
    let mut staged = BTreeMap::new();
    let cases = harness::manifest_list(&root, "train");
    assert!(!cases.is_empty());
    for case in cases {
        let d = root.join("train").join(&case);
        let meta = read_json(&d.join("case.json"));
        let model_name = meta["model"].as_str().unwrap();
        let (vs, model) = base_model(&d, model_name);
        let (mut peft, report) =
            PeftModel::from_pretrained(model, &vs, d.join("initial"), LoadOptions::default().trainable())
                .unwrap();
        assert!(report.trainable);
        let x = read_tensor(&d.join("data.safetensors"), "x");
        let y = read_tensor(&d.join("data.safetensors"), "y");
        let mut opt = Opt::new(meta["optimizer"].as_str().unwrap(), &peft, meta["lr"].as_f64().unwrap());
        let mut allocator = RankAllocator::new(&peft, "default").unwrap();
        let per_step = read_all(&d.join("lora_E_per_step.safetensors"));
        let scores = read_all(&d.join("scores.safetensors"));
        let end = meta["end"].as_i64().unwrap();
        tch::manual_seed(meta["seed"].as_i64().unwrap());
        for step in 0..meta["steps"].as_i64().unwrap() {
            let s = step as usize;
            opt.zero_grad();
            let out = peft.forward_t(&x, true);
            let classes = *out.size().last().unwrap();
            let task = out.reshape([-1, classes]).nll_loss(&y.reshape([-1]));
            let loss = task + orthogonal_regularization(&peft, "default").unwrap();
            loss.backward();
            opt.step();
            if step == end - 1 {
                assert!(!scores.is_empty());
                for (k, expected) in &scores {
                    let (kind, name) = k.split_once('.').unwrap();
                    let (ipt, unc) =
                        allocator.importance(name).unwrap_or_else(|| panic!("{case}: no scores for {name}"));
                    let ours = if kind == "ipt" { ipt } else { unc };
                    assert_identical(ours, expected, &format!("{case}: {k} before the final allocation"));
                }
            }
            let allocation = allocator.update_and_allocate(&mut peft, step).unwrap();
            let peft_loss = meta["losses"][s].as_f64().unwrap();
            // The losses are f32 values; serde_json may parse Python's shortest repr one f64 ulp off.
            assert_eq!(loss.double_value(&[]) as f32, peft_loss as f32, "{case}: loss at step {step}");
            if let Some(b) = meta["budgets"][s].as_i64() {
                assert_eq!(allocation.budget, Some(b), "{case}: budget at step {step}");
            }
            assert_eq!(
                our_pattern(&peft),
                peft_pattern(&meta["patterns"][s]),
                "{case}: rank_pattern after step {step}"
            );
            for (name, e) in peft.named_parameters().into_iter().filter(|(n, _)| n.contains(".lora_E.")) {
                assert_identical(
                    &e,
                    &per_step[&format!("{step}/{name}")],
                    &format!("{case}: {name} after step {step}"),
                );
            }
        }
        // Masking happened: some singular values are exactly zero at the end.
        let live = read_all(&d.join("final_live.safetensors"));
        let ours: BTreeMap<String, Tensor> =
            peft.named_parameters().into_iter().filter(|(n, _)| n.contains(".lora_")).collect();
        assert_eq!(ours.keys().collect::<Vec<_>>(), live.keys().collect::<Vec<_>>(), "{case}: live tensors");
        let mut zeros = 0;
        for (k, v) in &ours {
            assert_identical(v, &live[k], &format!("{case}: trained {k}"));
            if k.contains(".lora_E.") {
                zeros += v.eq(0.0).sum(tch::Kind::Int64).int64_value(&[]);
            }
        }
        assert!(zeros > 0, "{case}: no triplet was masked");
        let initial = read_all(&d.join("initial").join("adapter_model.safetensors"));
        for (k, v) in peft.adapter_state_dict("default").unwrap() {
            if initial[&k].size() == v.size() {
                assert_differs(&v, &initial[&k], 1e-6, &format!("{case}: {k} trained"));
            }
        }
        // Saving truncates to the kept triplets, as PEFT's file; the config carries the pattern.
        let ours_dir = work.path().join(format!("{case}_saved"));
        peft.save_pretrained(&ours_dir, &SaveOptions::default()).unwrap();
        let theirs = read_all(&d.join("final").join("adapter_model.safetensors"));
        let mine = read_all(&ours_dir.join("adapter_model.safetensors"));
        assert_eq!(mine.keys().collect::<Vec<_>>(), theirs.keys().collect::<Vec<_>>(), "{case}: saved keys");
        for (k, v) in &mine {
            assert_identical(v, &theirs[k], &format!("{case}: saved {k}"));
        }
        assert_same_config(
            &read_json(&ours_dir.join("adapter_config.json")),
            &read_json(&d.join("final").join("adapter_config.json")),
            false,
            &format!("{case}: saved config"),
        );
        let x_eval = peft_parity::models::read_tensor(
            &root.join("reload").join(format!("{case}_reload")).join("input.safetensors"),
            "x",
        );
        let name = format!("{case}_rust_trained");
        stage_for_peft(work.path(), &name, &d, model_name, &ours_dir);
        std::fs::copy(
            root.join("reload").join(format!("{case}_reload")).join("input.safetensors"),
            work.path().join(&name).join("input.safetensors"),
        )
        .unwrap();
        staged.insert(name, outputs_after_load(&d, model_name, &ours_dir, &x_eval));
        oracle::record("adalora train", &case);
    }
    compare_with_peft(work.path(), &staged);
}

#[test]
fn adapters_saved_with_a_rank_pattern_reload_like_peft() {
    let _rng = oracle::rng_guard();
    let root = fixtures();
    let work = tempfile::tempdir().unwrap();
    let mut staged = BTreeMap::new();
    let cases = harness::manifest_list(&root, "reload");
    assert!(!cases.is_empty());
    for case in cases {
        let d = root.join("reload").join(&case);
        let meta = read_json(&d.join("case.json"));
        let model_name = meta["model"].as_str().unwrap();
        let (vs, model) = base_model(&d, model_name);
        let (peft, _) =
            PeftModel::from_pretrained(model, &vs, d.join("adapter"), LoadOptions::default()).unwrap();
        // Each layer at its reduced rank, ranknum still init_r (0 for a layer reduced to nothing).
        let shapes: BTreeMap<String, Vec<i64>> = peft
            .named_parameters()
            .into_iter()
            .filter(|(n, _)| n.contains(".lora_"))
            .map(|(n, t)| (n, t.size()))
            .collect();
        let expected: BTreeMap<String, Vec<i64>> = meta["shapes"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_array().unwrap().iter().map(|i| i.as_i64().unwrap()).collect()))
            .collect();
        assert_eq!(shapes, expected, "{case}: shapes after loading");
        let mut ranknums = BTreeMap::new();
        peft.model().visit_layers(&mut |l| {
            if let Some(t) = l.slots().get("default").and_then(|t| t.as_any().downcast_ref::<AdaLoraLayer>())
            {
                ranknums.insert(
                    format!("base_model.model.{}.ranknum.default", l.name()),
                    Value::from(t.ranknum().double_value(&[0])),
                );
            }
        });
        assert_eq!(Value::from(serde_json::Map::from_iter(ranknums)), meta["ranknums"], "{case}: ranknum");
        let x = read_tensor(&d.join("input.safetensors"), "x");
        let expected = read_all(&d.join("outputs.safetensors"));
        assert_differs(
            &expected["unmerged"],
            &expected["disabled"],
            1e-4,
            &format!("{case}: adapter effect"),
        );
        // Saving the loaded adapter writes what was loaded.
        let resaved = work.path().join(format!("{case}_resaved"));
        peft.save_pretrained(&resaved, &SaveOptions::default()).unwrap();
        let outputs = rust_outputs(peft, &x, &strings(&meta["active"]), true);
        for (state, ours) in &outputs {
            assert_close(ours, &expected[state], 0.0, &format!("{case}: {state}"));
        }
        let file = read_all(&d.join("adapter").join("adapter_model.safetensors"));
        for (k, v) in read_all(&resaved.join("adapter_model.safetensors")) {
            assert_identical(&v, &file[&k], &format!("{case}: re-saved {k}"));
        }
        assert_same_config(
            &read_json(&resaved.join("adapter_config.json")),
            &read_json(&d.join("adapter").join("adapter_config.json")),
            false,
            &format!("{case}: re-saved config"),
        );
        oracle::record("adalora peft->rs", &case);
        stage_for_peft(work.path(), &case, &d, model_name, &resaved);
        std::fs::copy(d.join("input.safetensors"), work.path().join(&case).join("input.safetensors"))
            .unwrap();
        staged.insert(case.clone(), outputs);
    }
    compare_with_peft(work.path(), &staged);
}
