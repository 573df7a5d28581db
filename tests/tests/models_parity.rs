//! peft-models against transformers 5.24 + PEFT 0.21.2: tiny random models of every architecture (made by
//! transformers at test time), with and without LoRA adapters, unmerged and merged; real all-MiniLM-L6-v2
//! weights; greedy generation. `tests/oracle/gen_models.py` defines the matrix.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use peft as _;
use peft_core::peft_config::TaskType;
use peft_core::{ForwardCtx, LoadOptions, PeftModel, SaveOptions};
use peft_models::generate::{generate, GenerationConfig};
use peft_models::{HfModel, ModelInputs, Task};
use peft_parity::compare::{assert_close, assert_differs, assert_identical};
use peft_parity::models::read_all;
use peft_parity::oracle::{self, read_json};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

/// transformers' float32 outputs on these tiny models agree to this tolerance.
const ATOL: f64 = 1e-4;

fn fixtures() -> PathBuf {
    oracle::fixtures("gen_models.py")
}

fn task_of(task_type: &str) -> Task {
    let t: TaskType = serde_json::from_value(serde_json::Value::String(task_type.into())).unwrap();
    Task::from_task_type(t)
}

fn run(model: &HfModel, inputs: &BTreeMap<String, Tensor>) -> Tensor {
    run_ctx(model, inputs, &ForwardCtx::eval())
}

fn run_ctx(model: &HfModel, inputs: &BTreeMap<String, Tensor>, ctx: &ForwardCtx<'_>) -> Tensor {
    let ins = ModelInputs {
        input_ids: inputs.get("input_ids"),
        attention_mask: inputs.get("attention_mask"),
        decoder_input_ids: inputs.get("decoder_input_ids"),
        ..ModelInputs::default()
    };
    tch::no_grad(|| model.forward(&ins, ctx)).unwrap()
}

/// [`run`] with the per-row values the adapters compute from the input ids (PEFT's automatic aLoRA
/// offsets).
fn run_peft(peft: &PeftModel<HfModel>, inputs: &BTreeMap<String, Tensor>) -> Tensor {
    let values = peft.row_values(&inputs["input_ids"], None).unwrap();
    let ctx = match &values {
        Some(o) => ForwardCtx::eval().with_row_values(o),
        None => ForwardCtx::eval(),
    };
    run_ctx(peft.model(), inputs, &ctx)
}

/// Zeroes positions of padding tokens (their outputs are not meaningful) for `(B, T, …)` outputs of
/// encoder/decoder-only models.
fn valid(t: &Tensor, inputs: &BTreeMap<String, Tensor>, task: Task) -> Tensor {
    if matches!(task, Task::SequenceClassification | Task::Seq2SeqLm) {
        return t.shallow_clone();
    }
    peft_parity::compare::mask_padding(t, &inputs["attention_mask"])
}

fn load(dir: &Path, task: Task) -> peft_models::Loaded {
    HfModel::load_dir(dir, Some(task), &peft_models::LoadOptions::default()).unwrap()
}

#[test]
fn logits_match_transformers_and_peft_for_every_architecture() {
    let root = fixtures();
    let m = read_json(&root.join("manifest.json"));
    let cases: Vec<String> =
        m["cases"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect();
    let mut types = std::collections::BTreeSet::new();
    for case in cases {
        let d = root.join("cases").join(&case);
        let meta = read_json(&d.join("case.json"));
        let task = task_of(meta["task"].as_str().unwrap());
        types.insert(meta["model_type"].as_str().unwrap().to_string());
        let inputs = read_all(&d.join("inputs.safetensors"));
        let expected = read_all(&d.join("outputs.safetensors"));
        let loaded = load(&d.join("model"), task);
        let base = run(&loaded.model, &inputs);
        assert_close(
            &valid(&base, &inputs, task),
            &valid(&expected["base"], &inputs, task),
            ATOL,
            &format!("{case}: base"),
        );
        oracle::record("models transformers->rs", &case);
        for adapter in meta["adapters"].as_array().unwrap() {
            let a = adapter.as_str().unwrap();
            let loaded = load(&d.join("model"), task);
            let (mut peft, _) = PeftModel::from_pretrained(
                loaded.model,
                &loaded.vs,
                d.join("adapters").join(a),
                LoadOptions::default(),
            )
            .unwrap();
            // Saving what was loaded gives PEFT's file back (keys and values, embedding base weights and
            // trainable tokens included).
            let resaved = tempfile::tempdir().unwrap();
            peft.save_pretrained(resaved.path(), &SaveOptions::default()).unwrap();
            let ours = read_all(&resaved.path().join("adapter_model.safetensors"));
            let theirs = read_all(&d.join("adapters").join(a).join("adapter_model.safetensors"));
            assert_eq!(
                ours.keys().collect::<Vec<_>>(),
                theirs.keys().collect::<Vec<_>>(),
                "{case}/{a}: saved keys"
            );
            for (k, v) in &theirs {
                assert_identical(&ours[k], v, &format!("{case}/{a}: saved {k}"));
            }
            let unmerged = run_peft(&peft, &inputs);
            let want = &expected[&format!("{a}/unmerged")];
            assert_differs(
                &valid(want, &inputs, task),
                &valid(&expected["base"], &inputs, task),
                1e-5,
                &format!("{case}/{a}: adapter effect"),
            );
            assert_close(
                &valid(&unmerged, &inputs, task),
                &valid(want, &inputs, task),
                ATOL,
                &format!("{case}/{a}: unmerged"),
            );
            let Some(want) = expected.get(&format!("{a}/merged")) else {
                // Replicated layers share weights, aLoRA applies per position, LiLy mixes its experts per
                // batch: merging is refused.
                let err = peft.merge_adapter(None, false).unwrap_err();
                let msg = err.to_string();
                assert!(
                    msg.contains("replicated")
                        || msg.contains("aLoRA")
                        || msg.contains("not supported for Lily"),
                    "{case}/{a}: {err}"
                );
                oracle::record("models peft->rs", &format!("{case}/{a}"));
                continue;
            };
            peft.merge_adapter(None, false).unwrap();
            let merged = run(peft.model(), &inputs);
            assert_close(
                &valid(&merged, &inputs, task),
                &valid(want, &inputs, task),
                ATOL,
                &format!("{case}/{a}: merged"),
            );
            oracle::record("models peft->rs", &format!("{case}/{a}"));
        }
    }
    let want: std::collections::BTreeSet<String> =
        peft_models::SUPPORTED_MODEL_TYPES.iter().map(|s| s.to_string()).collect();
    assert_eq!(types, want, "every supported architecture is in the matrix");
}

#[test]
fn real_minilm_weights_give_transformers_token_embeddings() {
    let root = fixtures();
    let m = read_json(&root.join("manifest.json"));
    let dir = PathBuf::from(m["minilm"]["model_dir"].as_str().unwrap());
    let data = read_all(&root.join("minilm.safetensors"));
    let loaded =
        HfModel::load_dir(&dir, Some(Task::FeatureExtraction), &peft_models::LoadOptions::default()).unwrap();
    let ins = ModelInputs {
        input_ids: Some(&data["input_ids"]),
        attention_mask: Some(&data["attention_mask"]),
        token_type_ids: Some(&data["token_type_ids"]),
        ..ModelInputs::default()
    };
    let hidden = tch::no_grad(|| loaded.model.forward(&ins, &ForwardCtx::eval())).unwrap();
    let mask = data["attention_mask"].to_kind(Kind::Float).unsqueeze(-1);
    assert_close(
        &(&hidden * &mask),
        &(&data["last_hidden_state"] * &mask),
        ATOL,
        "all-MiniLM-L6-v2 last_hidden_state",
    );
    oracle::record("models transformers->rs", "all-MiniLM-L6-v2");
}

#[test]
fn greedy_generation_matches_transformers() {
    let root = fixtures();
    let m = read_json(&root.join("manifest.json"));
    for (name, spec) in m["generation"].as_object().unwrap() {
        let case = spec["case"].as_str().unwrap();
        let d = root.join("cases").join(case);
        let meta = read_json(&d.join("case.json"));
        let task = task_of(meta["task"].as_str().unwrap());
        let toks = read_all(&root.join("generation").join(name).join("tokens.safetensors"));
        let loaded = load(&d.join("model"), task);
        let mut cfg = GenerationConfig::for_model(&loaded.model);
        cfg.max_new_tokens = 8;
        cfg.pad_token_id = Some(0);
        let same = |a: &Tensor, b: &Tensor, what: &str| {
            assert!(a.size() == b.size() && a.equal(b), "{name}: {what}: ours {a} vs transformers {b}");
        };
        let out = generate(&loaded.model, &toks["prompt"], None, &cfg).unwrap();
        same(&out, &toks["gen_single"], "single prompt");
        if let Some(want) = toks.get("gen_batch") {
            let out = generate(&loaded.model, &toks["batch_ids"], Some(&toks["batch_mask"]), &cfg).unwrap();
            same(&out, want, "left-padded batch");
        }
        let adapter = d.join("adapters").join(spec["adapter"].as_str().unwrap());
        let (peft, _) =
            PeftModel::from_pretrained(loaded.model, &loaded.vs, adapter, LoadOptions::default()).unwrap();
        let out = generate(peft.model(), &toks["prompt"], None, &cfg).unwrap();
        same(&out, &toks["gen_adapter"], "with adapter");
        oracle::record("generation", name);
    }
}

#[test]
fn losses_match_transformers() {
    let root = fixtures();
    for case in ["llama_causal", "gpt2_causal", "qwen2_causal", "t5_seq2seq"] {
        let d = root.join("cases").join(case);
        let meta = read_json(&d.join("case.json"));
        let task = task_of(meta["task"].as_str().unwrap());
        let inputs = read_all(&d.join("inputs.safetensors"));
        let expected = read_all(&d.join("outputs.safetensors"));
        let loaded = load(&d.join("model"), task);
        let logits = run(&loaded.model, &inputs);
        let loss = match task {
            Task::CausalLm => peft_models::task::causal_lm_loss(&logits, &inputs["labels"]),
            _ => peft_models::task::cross_entropy_loss(&logits, &inputs["labels"]),
        };
        assert_close(&loss, &expected["loss"], 1e-5, &format!("{case}: loss"));
        oracle::record("models transformers->rs", &format!("{case}/loss"));
    }
}

#[test]
fn sharded_checkpoints_load_like_single_files() {
    let d = fixtures().join("cases").join("llama_causal");
    assert!(d.join("model_sharded").join("model.safetensors.index.json").is_file());
    let files = peft_models::weights::checkpoint_files(&d.join("model_sharded")).unwrap();
    assert!(files.len() > 1, "the fixture is sharded: {files:?}");
    let inputs = read_all(&d.join("inputs.safetensors"));
    let single = run(&load(&d.join("model"), Task::CausalLm).model, &inputs);
    let sharded = run(&load(&d.join("model_sharded"), Task::CausalLm).model, &inputs);
    assert!(single.equal(&sharded));
}

#[test]
fn half_precision_weights_run_close_to_f32_with_fp32_adapters() {
    let d = fixtures().join("cases").join("llama_causal");
    let inputs = read_all(&d.join("inputs.safetensors"));
    let expected = read_all(&d.join("outputs.safetensors"));
    for kind in [Kind::BFloat16, Kind::Half] {
        let opts = peft_models::LoadOptions { kind, ..Default::default() };
        let loaded = HfModel::load_dir(&d.join("model"), Some(Task::CausalLm), &opts).unwrap();
        let (peft, _) = PeftModel::from_pretrained(
            loaded.model,
            &loaded.vs,
            d.join("adapters").join("qv"),
            LoadOptions::default(),
        )
        .unwrap();
        for (k, t) in peft.adapter_state_dict("default").unwrap() {
            assert_eq!(t.kind(), Kind::Float, "{k}: adapters stay fp32 (PEFT's autocast_adapter_dtype)");
        }
        let out = run(peft.model(), &inputs);
        assert_eq!(out.kind(), kind);
        let want = valid(&expected["qv/unmerged"], &inputs, Task::CausalLm);
        assert_close(
            &valid(&out.to_kind(Kind::Float), &inputs, Task::CausalLm),
            &want,
            5e-2,
            &format!("{kind:?} logits"),
        );
    }
}

#[test]
fn auto_loader_builds_the_task_model_from_the_adapter() {
    let d = fixtures().join("cases").join("bert_seqcls");
    let adapter = d.join("adapters").join("qv");
    let inputs = read_all(&d.join("inputs.safetensors"));
    let expected = read_all(&d.join("outputs.safetensors"));
    let model_dir = d.join("model");
    let auto = peft_models::auto::from_pretrained(
        &adapter,
        Some(model_dir.to_str().unwrap()),
        &Default::default(),
        LoadOptions::default(),
    )
    .unwrap();
    assert_eq!(auto.peft.model().task(), Task::SequenceClassification, "from task_type SEQ_CLS");
    assert_close(
        &run(auto.peft.model(), &inputs),
        &expected["qv/unmerged"],
        ATOL,
        "auto-loaded SEQ_CLS adapter",
    );
    // Without a base model anywhere, the error says what to do.
    let err = peft_models::auto::from_pretrained(&adapter, None, &Default::default(), LoadOptions::default())
        .unwrap_err();
    assert!(err.to_string().contains("base_model_name_or_path"), "{err}");
}

#[test]
fn generation_with_a_merged_adapter_equals_unmerged() {
    let root = fixtures();
    let d = root.join("cases").join("llama_causal");
    let toks = read_all(&root.join("generation").join("llama").join("tokens.safetensors"));
    let loaded = load(&d.join("model"), Task::CausalLm);
    let mut cfg = GenerationConfig::for_model(&loaded.model);
    cfg.max_new_tokens = 8;
    let (mut peft, _) = PeftModel::from_pretrained(
        loaded.model,
        &loaded.vs,
        d.join("adapters").join("qv"),
        LoadOptions::default(),
    )
    .unwrap();
    peft.merge_adapter(None, false).unwrap();
    let out = generate(peft.model(), &toks["prompt"], None, &cfg).unwrap();
    assert!(out.equal(&toks["gen_adapter"]), "{out} vs {}", toks["gen_adapter"]);
}
