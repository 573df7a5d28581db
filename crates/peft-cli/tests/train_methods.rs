//! `peft train --config` with methods that need more than a plain loop: with an AdaLoRA config the rank
//! allocation runs by itself and the saved adapter is the one PEFT's documented AdaLoRA loop saves; with
//! an OSF config the gradient projection applies by itself (`tests/oracle/gen_train_methods.py`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use peft_parity::compare::assert_close;
use peft_parity::models::read_all;
use peft_parity::oracle::{self, read_json};
use std::path::Path;
use std::process::{Command, Output};

fn peft(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_peft")).args(args).output().expect("the peft binary runs")
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `peft train --config <fixture>/adapter_config.json` with the fixture's arguments and `steps` steps.
fn train(d: &Path, steps: &str, out: &Path) -> Output {
    let c = read_json(&d.join("case.json"));
    let f = |k: &str| c[k].to_string();
    peft(&[
        "train",
        "--model",
        s(&d.join("model")),
        "--data",
        s(&d.join("train.jsonl")),
        "--format",
        "text",
        "--config",
        s(&d.join("adapter_config.json")),
        "--max-steps",
        steps,
        "--lr",
        &f("lr"),
        "--batch-size",
        &f("batch"),
        "--grad-accum",
        &f("accum"),
        "--warmup-steps",
        &f("warmup"),
        "--weight-decay",
        &f("weight_decay"),
        "--max-grad-norm",
        &f("clip"),
        "--seed",
        &f("seed"),
        "--no-shuffle",
        "--logging-steps",
        "1",
        "--quiet",
        "--output",
        s(out),
    ])
}

#[test]
fn peft_train_with_an_adalora_config_reallocates_ranks_as_peft() {
    let d = oracle::fixtures("gen_train_methods.py").join("adalora");
    let c = read_json(&d.join("case.json"));
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("adapter");
    let done = train(&d, &c["steps"].to_string(), &out);
    assert!(done.status.success(), "peft train failed:\n{}", String::from_utf8_lossy(&done.stderr));
    let saved = read_json(&out.join("adapter_config.json"));
    let theirs = read_json(&d.join("final").join("adapter_config.json"));
    assert_eq!(saved["peft_type"], "ADALORA");
    assert_eq!(saved["rank_pattern"], theirs["rank_pattern"], "PEFT's final allocation");
    let kept: Vec<usize> = saved["rank_pattern"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_array().unwrap().iter().filter(|b| b.as_bool().unwrap()).count())
        .collect();
    assert!(kept.iter().any(|&k| k != 2), "the ranks moved away from the even split: {kept:?}");
    let ours = read_all(&out.join("adapter_model.safetensors"));
    let want = read_all(&d.join("final").join("adapter_model.safetensors"));
    assert_eq!(ours.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>());
    for (k, v) in &ours {
        // Only the kept triplets are saved: each lora_E has its layer's kept rank.
        assert_close(v, &want[k], 2e-5, &format!("peft train (AdaLoRA): {k}"));
    }
    // A run whose length is not the config's total_step is refused before training.
    let short = train(&d, "4", &work.path().join("short"));
    assert!(!short.status.success());
    let err = String::from_utf8_lossy(&short.stderr);
    assert!(err.contains("total_step = 6 but this run takes 4 optimizer steps"), "{err}");
    oracle::record("rs->peft", "peft train --config (AdaLoRA, tiny llama)");
}

#[test]
fn peft_train_with_an_osf_config_trains_as_peft_with_its_gradient_hooks() {
    let d = oracle::fixtures("gen_train_methods.py").join("osf");
    let c = read_json(&d.join("case.json"));
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("adapter");
    let done = train(&d, &c["steps"].to_string(), &out);
    assert!(done.status.success(), "peft train failed:\n{}", String::from_utf8_lossy(&done.stderr));
    assert_eq!(read_json(&out.join("adapter_config.json"))["peft_type"], "OSF");
    let ours = read_all(&out.join("adapter_model.safetensors"));
    let want = read_all(&d.join("final").join("adapter_model.safetensors"));
    assert_eq!(ours.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>());
    for (k, v) in &ours {
        assert_close(v, &want[k], 2e-5, &format!("peft train (OSF): {k}"));
    }
    oracle::record("rs->peft", "peft train --config (OSF, tiny llama)");
}

/// An AdaMSS config with `use_asa`: `peft train` registers the ASA callback itself (PEFT users add
/// `AdamssAsaCallback` to their Trainer), and the subspaces it masks at steps 2 and 4 stop training as in
/// PEFT's loop (without ASA the final weights differ by 0.011).
#[test]
fn peft_train_with_an_adamss_asa_config_masks_subspaces_as_peft() {
    let d = oracle::fixtures("gen_train_methods.py").join("adamss");
    let c = read_json(&d.join("case.json"));
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("adapter");
    let done = train(&d, &c["steps"].to_string(), &out);
    assert!(done.status.success(), "peft train failed:\n{}", String::from_utf8_lossy(&done.stderr));
    assert_eq!(read_json(&out.join("adapter_config.json"))["peft_type"], "ADAMSS");
    let ours = read_all(&out.join("adapter_model.safetensors"));
    let want = read_all(&d.join("final").join("adapter_model.safetensors"));
    assert_eq!(ours.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>());
    for (k, v) in &ours {
        assert_close(v, &want[k], 2e-5, &format!("peft train (AdaMSS + ASA): {k}"));
    }
    oracle::record("rs->peft", "peft train --config (AdaMSS with ASA, tiny llama)");
}
