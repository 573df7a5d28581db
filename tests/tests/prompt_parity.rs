//! Prompt learning (prompt tuning, P-tuning, prefix tuning) against PEFT 0.21.2 on tiny Llama and GPT-2
//! causal LMs: PEFT's adapters load and give PEFT's logits and loss, adapters created here under the same
//! seed start with PEFT's prompt, train to PEFT's prompt, and load in PEFT with the logits computed here.
//! `tests/oracle/gen_prompt.py` defines the cases.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use peft::prompt::{PromptConfig, PromptModel};
use peft_core::LoadOptions;
use peft_models::{HfModel, ModelInputs, Task};
use peft_parity::compare::{assert_close, assert_identical};
use peft_parity::harness;
use peft_parity::models::{read_all, read_tensor};
use peft_parity::oracle::{self, read_json};
use serde_json::Value;
use std::path::{Path, PathBuf};
use tch::nn::OptimizerConfig;
use tch::Tensor;

fn cases() -> Vec<(PathBuf, String)> {
    let root = oracle::fixtures("gen_prompt.py");
    harness::manifest_list(&root, "cases").into_iter().map(|c| (root.join("cases").join(&c), c)).collect()
}

fn base_dir(case_dir: &Path, meta: &Value) -> PathBuf {
    case_dir.join("../../bases").join(meta["base"].as_str().unwrap())
}

fn load_base(case_dir: &Path, meta: &Value) -> peft_models::Loaded {
    HfModel::load_dir(&base_dir(case_dir, meta), Some(Task::CausalLm), &Default::default()).unwrap()
}

/// The config PEFT was given (`task_type` CAUSAL_LM plus the case's keyword arguments), through the
/// registry.
fn config(meta: &Value) -> PromptConfig {
    let mut kwargs = meta["kwargs"].as_object().unwrap().clone();
    kwargs.insert("peft_type".into(), meta["method"].clone());
    kwargs.insert("task_type".into(), "CAUSAL_LM".into());
    let mut w = vec![];
    let c = peft_core::registry::parse_config(kwargs, "<case>", &mut w).unwrap();
    PromptConfig::from_adapter_config(c.as_ref()).unwrap()
}

struct Inputs {
    ids: Tensor,
    mask: Tensor,
    labels: Tensor,
}

fn inputs(case_dir: &Path) -> Inputs {
    let f = case_dir.join("inputs.safetensors");
    Inputs {
        ids: read_tensor(&f, "input_ids"),
        mask: read_tensor(&f, "attention_mask"),
        labels: read_tensor(&f, "labels"),
    }
}

fn logits_and_loss(model: &PromptModel, i: &Inputs, train: bool) -> (Tensor, Tensor) {
    let logits = model.forward(&ModelInputs::with_mask(&i.ids, Some(&i.mask)), train).unwrap();
    let loss = model.causal_lm_loss(&logits, &i.labels);
    (logits, loss)
}

#[test]
fn peft_saves_peft_rs_loads_same_logits_and_loss() {
    for (d, case) in cases() {
        let meta = read_json(&d.join("case.json"));
        let out = read_all(&d.join("outputs.safetensors"));
        let model =
            PromptModel::from_pretrained(load_base(&d, &meta), d.join("adapter"), LoadOptions::default())
                .unwrap_or_else(|e| panic!("{case}: {e}"));
        let i = inputs(&d);
        let (logits, loss) = tch::no_grad(|| logits_and_loss(&model, &i, false));
        assert_identical(&logits, &out["reloaded_logits"], &format!("{case}: logits of PEFT's reload"));
        assert_close(&logits, &out["logits"], 1e-6, &format!("{case}: logits"));
        assert_close(&loss, &out["loss"], 1e-6, &format!("{case}: loss"));
        // The config rewritten byte for byte.
        let text = std::fs::read_to_string(d.join("adapter/adapter_config.json")).unwrap();
        let reread = peft_core::config::to_config_file_text(model.config().as_adapter_config());
        let peft: Value = serde_json::from_str(&text).unwrap();
        let ours: Value = serde_json::from_str(&reread).unwrap();
        assert_eq!(ours, peft, "{case}: adapter_config.json");
        oracle::record("prompt peft->rs", &case);
    }
}

#[test]
fn same_seed_gives_peft_s_prompt_and_training_gives_peft_s_steps() {
    let _rng = oracle::rng_guard();
    for (d, case) in cases() {
        let meta = read_json(&d.join("case.json"));
        let out = read_all(&d.join("outputs.safetensors"));
        let loaded = load_base(&d, &meta);
        tch::manual_seed(1);
        let model =
            PromptModel::new(loaded, config(&meta), "default").unwrap_or_else(|e| panic!("{case}: {e}"));
        let init = tch::no_grad(|| model.encoder_output(false));
        if meta["kwargs"]["encoder_reparameterization_type"] == "LSTM" {
            // PyTorch's nn.LSTM may run oneDNN's RNN kernel, which rounds the last bit differently.
            assert_close(&init, &out["init"], 1e-6, &format!("{case}: prompt at creation"));
        } else {
            assert_identical(&init, &out["init"], &format!("{case}: prompt at creation"));
        }
        oracle::record("prompt init", &case);

        let i = inputs(&d);
        let lr = meta["train"]["lr"].as_f64().unwrap();
        let mut opt = tch::nn::Sgd::default().build(model.adapter_var_store(), lr).unwrap();
        let mut losses = vec![];
        for _ in 0..meta["train"]["steps"].as_i64().unwrap() {
            opt.zero_grad();
            let (_, loss) = logits_and_loss(&model, &i, false);
            loss.backward();
            opt.step();
            losses.push(loss.double_value(&[]));
        }
        let want: Vec<f64> = Vec::<f64>::try_from(&out["train_losses"]).unwrap();
        for (step, (a, b)) in losses.iter().zip(&want).enumerate() {
            assert!((a - b).abs() < 1e-6, "{case}: loss at step {step}: {a} vs PEFT {b}");
        }
        let trained = tch::no_grad(|| model.encoder_output(false));
        assert_close(&trained, &out["trained"], 1e-6, &format!("{case}: prompt after training"));
        oracle::record("prompt train", &case);
    }
}

#[test]
fn peft_rs_saves_peft_loads_same_logits() {
    let _rng = oracle::rng_guard();
    let work = tempfile::tempdir().unwrap();
    let mut ours = Vec::new();
    for (d, case) in cases() {
        let meta = read_json(&d.join("case.json"));
        tch::manual_seed(3);
        let model = PromptModel::new(load_base(&d, &meta), config(&meta), "default").unwrap();
        // Move every parameter away from its init (zero prefixes included).
        tch::no_grad(|| {
            for (_, mut t) in model.adapter_var_store().variables() {
                let noise = Tensor::randn_like(&t) * 0.3;
                let _ = t.f_add_(&noise).unwrap();
            }
        });
        let target = work.path().join(&case);
        model.save_pretrained(target.join("adapter")).unwrap();
        std::fs::copy(d.join("inputs.safetensors"), target.join("inputs.safetensors")).unwrap();
        let mut m = meta.clone();
        m["base_dir"] = base_dir(&d, &meta).canonicalize().unwrap().display().to_string().into();
        std::fs::write(target.join("case.json"), serde_json::to_string(&m).unwrap()).unwrap();
        let (logits, loss) = tch::no_grad(|| logits_and_loss(&model, &inputs(&d), false));
        ours.push((case, logits, loss));
    }
    oracle::run_script("gen_prompt.py", &[Path::new("check"), work.path()]);
    for (case, logits, loss) in ours {
        let peft = read_all(&work.path().join(&case).join("peft_logits.safetensors"));
        assert_close(&logits, &peft["logits"], 1e-6, &format!("{case}: PEFT's logits with our adapter"));
        assert_close(&loss.reshape([1]), &peft["loss"], 1e-6, &format!("{case}: PEFT's loss"));
        oracle::record("prompt rs->peft", &case);
    }
}

#[test]
fn prompt_learning_errors_name_what_is_wrong() {
    let _rng = oracle::rng_guard();
    let (d, _) = cases().into_iter().find(|(_, c)| c == "ptuning_llama_mlp").unwrap();
    let meta = read_json(&d.join("case.json"));
    // A P-tuning file holds the encoder's output: loading it for training is refused.
    let err = PromptModel::from_pretrained(
        load_base(&d, &meta),
        d.join("adapter"),
        LoadOptions::default().trainable(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("loads for inference only"), "{err}");
    // A layer-method model refuses the config, saying where it belongs.
    let mut w = vec![];
    let cfg = peft_core::registry::load_config(&d.join("adapter"), &mut w).unwrap();
    let loaded = load_base(&d, &meta);
    let err = peft_core::PeftModel::new(loaded.model, &loaded.vs, cfg, "default").unwrap_err();
    assert!(err.to_string().contains("peft_prompt::PromptModel"), "{err}");
    // A prompt of the wrong length names the key and the shapes.
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("adapter");
    std::fs::create_dir_all(&dir).unwrap();
    let text = std::fs::read_to_string(d.join("adapter/adapter_config.json")).unwrap();
    std::fs::write(
        dir.join("adapter_config.json"),
        text.replace("\"num_virtual_tokens\": 5", "\"num_virtual_tokens\": 6"),
    )
    .unwrap();
    std::fs::copy(d.join("adapter/adapter_model.safetensors"), dir.join("adapter_model.safetensors"))
        .unwrap();
    let err = PromptModel::from_pretrained(load_base(&d, &meta), &dir, LoadOptions::default()).unwrap_err();
    match &err {
        peft_core::PeftError::ShapeMismatch { key, expected, found, .. } => {
            assert_eq!(
                (key.as_str(), expected.as_slice(), found.as_slice()),
                ("prompt_embeddings", &[6, 32][..], &[5, 32][..])
            );
        }
        other => panic!("expected a shape mismatch, got {other:?}"),
    }
    // Options peft-rs does not implement are refused by name; a missing prompt length is an error.
    let mut w = vec![];
    let text_init = peft_core::registry::config_from_str(
        r#"{"peft_type": "PROMPT_TUNING", "num_virtual_tokens": 2, "prompt_tuning_init": "TEXT",
            "prompt_tuning_init_text": "hello", "tokenizer_name_or_path": "some/tokenizer"}"#,
        &mut w,
    )
    .unwrap();
    let text_init = PromptConfig::from_adapter_config(text_init.as_ref()).unwrap();
    let err = PromptModel::new(load_base(&d, &meta), text_init, "default").unwrap_err();
    assert!(err.to_string().contains("prompt_tuning_init"), "{err}");
    let err = PromptModel::new(load_base(&d, &meta), peft::prompt::PromptTuningConfig::default(), "default")
        .unwrap_err();
    assert!(err.to_string().contains("num_virtual_tokens"), "{err}");
    let mut w = vec![];
    let err = peft_core::registry::config_from_str(
        r#"{"peft_type": "PROMPT_TUNING", "prompt_tuning_init": "TEXT"}"#,
        &mut w,
    )
    .unwrap_err();
    assert!(err.to_string().contains("tokenizer_name_or_path can't be None"), "{err}");
}
