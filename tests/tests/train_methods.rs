//! Methods that need more than a plain loop, trained by peft-train's `Trainer`, against the same loops in
//! Python (`tests/oracle/gen_train_methods.py`): AdaLoRA — PEFT's documented loop (regularised loss,
//! `update_and_allocate` after each optimizer step, before `zero_grad`) gives the same losses, the same
//! rank pattern after every step and the same saved adapter — and OSF, whose gradient projection (a
//! libtorch hook, PEFT's `register_hook`) needs no callback at all.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use peft::adalora::AdaLoraConfig;
use peft_core::PeftModel;
use peft_parity::compare::assert_close;
use peft_parity::models::read_all;
use peft_parity::oracle::{self, read_json};
use peft_train::adalora::AdaLoraCallback;
use peft_train::{data, DataOptions, Format, StepCallback, TrainError, Trainer, TrainingArgs};
use serde_json::Value;
use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::rc::Rc;

fn fixture() -> PathBuf {
    oracle::fixtures("gen_train_methods.py").join("adalora")
}

fn model(d: &Path, seed: i64) -> PeftModel<peft_models::HfModel> {
    let loaded = peft_models::HfModel::load_dir(
        &d.join("model"),
        Some(peft_models::Task::CausalLm),
        &Default::default(),
    )
    .unwrap();
    let text = std::fs::read_to_string(d.join("adapter_config.json")).unwrap();
    // Any linked method's config, as `peft train --config` reads it.
    let mut cfg = peft_core::registry::config_from_str(&text, &mut vec![]).unwrap();
    cfg.common_mut().inference_mode = false;
    tch::manual_seed(seed);
    PeftModel::new(loaded.model, &loaded.vs, cfg, "default").unwrap()
}

fn args(c: &Value, out: &Path) -> TrainingArgs {
    TrainingArgs {
        output_dir: out.to_path_buf(),
        learning_rate: c["lr"].as_f64().unwrap(),
        weight_decay: c["weight_decay"].as_f64().unwrap(),
        max_grad_norm: c["clip"].as_f64(),
        max_steps: Some(c["steps"].as_u64().unwrap() as usize),
        warmup_steps: c["warmup"].as_u64().unwrap() as usize,
        per_device_train_batch_size: c["batch"].as_u64().unwrap() as usize,
        gradient_accumulation_steps: c["accum"].as_u64().unwrap() as usize,
        logging_steps: 1,
        seed: c["seed"].as_u64().unwrap(),
        shuffle: false,
        progress: false,
        ..TrainingArgs::default()
    }
}

/// The rank pattern of the config after each optimizer step (as PEFT's in-memory keys).
struct Patterns(Rc<RefCell<Vec<Value>>>);

impl<M: peft_core::Adaptable> StepCallback<M> for Patterns {
    fn after_optimizer_step(&mut self, peft: &mut PeftModel<M>, _step: usize) -> peft_train::Result<()> {
        let cfg = peft.config("default").unwrap().as_any().downcast_ref::<AdaLoraConfig>().unwrap();
        let v = in_memory_keys(&serde_json::to_value(&cfg.rank_pattern).unwrap());
        self.0.borrow_mut().push(v);
        Ok(())
    }
}

/// PEFT's saved keys have no adapter name; its in-memory ones (what gen_train_methods.py recorded) do.
fn in_memory_keys(v: &Value) -> Value {
    match v {
        Value::Object(m) => m
            .iter()
            .map(|(k, v)| {
                (if k.ends_with(".default") { k.clone() } else { format!("{k}.default") }, v.clone())
            })
            .collect::<serde_json::Map<_, _>>()
            .into(),
        other => other.clone(),
    }
}

#[test]
fn trainer_driven_adalora_matches_peft_step_for_step() {
    let _rng = oracle::rng_guard();
    let d = fixture();
    let c = read_json(&d.join("case.json"));
    let mut peft = model(&d, c["seed"].as_i64().unwrap());
    let tok = peft_models::tokenizer::Tokenizer::from_dir(&d.join("model")).unwrap();
    let train =
        data::load_jsonl(&d.join("train.jsonl"), Format::Text, &tok, &DataOptions::default()).unwrap();
    let out = tempfile::tempdir().unwrap();
    let seen = Rc::new(RefCell::new(Vec::new()));
    // The AdaLoRA callback is added by the trainer itself, before this one.
    let mut trainer =
        Trainer::new(&mut peft, args(&c, out.path())).unwrap().with_callback(Patterns(seen.clone()));
    let summary = trainer.train(&train, None, &peft_train::hf_loss, 0).unwrap();
    let want: Vec<f64> = c["losses"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    assert_eq!(summary.log.len(), want.len());
    for (e, w) in summary.log.iter().zip(&want) {
        assert!(
            (e.loss.unwrap() - w).abs() < 1e-5,
            "step {}: loss {} vs PEFT's {w}",
            e.step,
            e.loss.unwrap()
        );
    }
    let theirs: Vec<Value> = c["rank_patterns"].as_array().unwrap().iter().map(in_memory_keys).collect();
    assert_eq!(*seen.borrow(), theirs, "the rank pattern after every step");
    let last = theirs.last().unwrap().as_object().unwrap();
    let kept: Vec<usize> = last
        .values()
        .map(|v| v.as_array().unwrap().iter().filter(|b| b.as_bool().unwrap()).count())
        .collect();
    assert!(
        kept.iter().any(|&k| k != 2) && kept.iter().sum::<usize>() == 8,
        "ranks were reallocated: {kept:?}"
    );
    // The saved adapter: PEFT's kept triplets and config.
    let fin = read_all(&d.join("final").join("adapter_model.safetensors"));
    let ours = read_all(&out.path().join("adapter_model.safetensors"));
    assert_eq!(ours.keys().collect::<Vec<_>>(), fin.keys().collect::<Vec<_>>());
    for (k, v) in &ours {
        assert_close(v, &fin[k], 2e-5, &format!("adalora trainer: {k}"));
    }
    let saved = read_json(&out.path().join("adapter_config.json"));
    let peft_saved = read_json(&d.join("final").join("adapter_config.json"));
    assert_eq!(saved["rank_pattern"], peft_saved["rank_pattern"]);
    oracle::record("train", "adalora trainer loop (tiny llama)");
}

#[test]
fn an_adalora_total_step_other_than_the_run_length_is_refused() {
    let _rng = oracle::rng_guard();
    let d = fixture();
    let c = read_json(&d.join("case.json"));
    let mut peft = model(&d, 1);
    let tok = peft_models::tokenizer::Tokenizer::from_dir(&d.join("model")).unwrap();
    let train =
        data::load_jsonl(&d.join("train.jsonl"), Format::Text, &tok, &DataOptions::default()).unwrap();
    let out = tempfile::tempdir().unwrap();
    let mut a = args(&c, out.path());
    a.max_steps = Some(4);
    let err = Trainer::new(&mut peft, a).unwrap().train(&train, None, &peft_train::hf_loss, 0).unwrap_err();
    assert!(matches!(err, TrainError::Config(_)), "{err:?}");
    assert!(err.to_string().contains("total_step = 6 but this run takes 4 optimizer steps"), "{err}");
    // A loop of one's own registers the callback by hand.
    assert!(AdaLoraCallback::new(&peft, "default", 6).is_ok());
}

#[test]
fn trainer_driven_osf_matches_peft_with_its_gradient_hooks() {
    let _rng = oracle::rng_guard();
    let d = oracle::fixtures("gen_train_methods.py").join("osf");
    let c = read_json(&d.join("case.json"));
    let mut peft = model(&d, c["seed"].as_i64().unwrap());
    let tok = peft_models::tokenizer::Tokenizer::from_dir(&d.join("model")).unwrap();
    let train =
        data::load_jsonl(&d.join("train.jsonl"), Format::Text, &tok, &DataOptions::default()).unwrap();
    let out = tempfile::tempdir().unwrap();
    let summary = Trainer::new(&mut peft, args(&c, out.path()))
        .unwrap()
        .train(&train, None, &peft_train::hf_loss, 0)
        .unwrap();
    let want: Vec<f64> = c["losses"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    for (e, w) in summary.log.iter().zip(&want) {
        assert!(
            (e.loss.unwrap() - w).abs() < 1e-5,
            "step {}: loss {} vs PEFT's {w}",
            e.step,
            e.loss.unwrap()
        );
    }
    let fin = read_all(&d.join("final").join("adapter_model.safetensors"));
    let ours = read_all(&out.path().join("adapter_model.safetensors"));
    assert_eq!(ours.keys().collect::<Vec<_>>(), fin.keys().collect::<Vec<_>>());
    for (k, v) in &ours {
        assert_close(v, &fin[k], 2e-5, &format!("osf trainer: {k}"));
    }
    oracle::record("train", "osf trainer loop (tiny llama)");
}
