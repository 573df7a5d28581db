//! LoRA's `bias` option ("lora_only", "all") against PEFT 0.21.2 (`tests/oracle/gen_bias.py`): files PEFT wrote
//! for two adapters on Qwen2 (biased q/k/v) and for BERT sequence classifiers with a modules_to_save head load
//! here with PEFT's logits in each loading order (the modules adapted when a file loads decide which of its
//! biases apply), save back as PEFT re-saves them, load in PEFT with the same logits, and train the same
//! parameters as PEFT's `is_trainable=True` load.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use peft as _;
use peft_core::peft_config::TaskType;
use peft_core::{ForwardCtx, LoadOptions, PeftModel, SaveOptions};
use peft_models::{HfModel, ModelInputs, Task};
use peft_parity::compare::{assert_close, assert_identical};
use peft_parity::models::read_all;
use peft_parity::oracle::{self, read_json};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tch::Tensor;

/// transformers' float32 outputs on these tiny models agree to this tolerance.
const ATOL: f64 = 1e-4;

fn fixtures() -> PathBuf {
    oracle::fixtures("gen_bias.py")
}

fn cases(root: &Path) -> Vec<(String, serde_json::Value)> {
    let m = read_json(&root.join("manifest.json"));
    m["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let name = c.as_str().unwrap().to_string();
            let meta = read_json(&root.join(&name).join("case.json"));
            (name, meta)
        })
        .collect()
}

fn task(meta: &serde_json::Value) -> Task {
    let t: TaskType = serde_json::from_value(meta["task"].clone()).unwrap();
    Task::from_task_type(t)
}

fn strings(v: &serde_json::Value) -> Vec<String> {
    v.as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_string()).collect()
}

fn adapter_dir(root: &Path, name: &str) -> PathBuf {
    if name == "default" {
        root.to_path_buf()
    } else {
        root.join(name)
    }
}

/// The base model with the adapters under `adapters` loaded in `order`.
fn load_in_order(
    d: &Path,
    task: Task,
    adapters: &Path,
    order: &[String],
    trainable: bool,
) -> PeftModel<HfModel> {
    let loaded =
        HfModel::load_dir(&d.join("model"), Some(task), &peft_models::LoadOptions::default()).unwrap();
    let mut first = LoadOptions::named(order[0].clone());
    if trainable {
        first = first.trainable();
    }
    let (mut peft, _) =
        PeftModel::from_pretrained(loaded.model, &loaded.vs, adapter_dir(adapters, &order[0]), first)
            .unwrap();
    for n in &order[1..] {
        peft.load_adapter(adapter_dir(adapters, n), LoadOptions::named(n.clone())).unwrap();
    }
    peft
}

fn logits(peft: &PeftModel<HfModel>, inputs: &BTreeMap<String, Tensor>) -> Tensor {
    let ins = ModelInputs {
        input_ids: inputs.get("input_ids"),
        attention_mask: inputs.get("attention_mask"),
        ..ModelInputs::default()
    };
    tch::no_grad(|| peft.model().forward(&ins, &ForwardCtx::eval())).unwrap()
}

/// Logits with each adapter of `order` active alone, then with adapters disabled, keyed `<prefix>/<name>`.
fn outputs(
    peft: &mut PeftModel<HfModel>,
    order: &[String],
    inputs: &BTreeMap<String, Tensor>,
    prefix: &str,
) -> BTreeMap<String, Tensor> {
    let mut out = BTreeMap::new();
    for n in order {
        peft.set_adapters_for_inference(&[n.as_str()]).unwrap();
        out.insert(format!("{prefix}/{n}"), logits(peft, inputs));
    }
    peft.disable_adapter_layers().unwrap();
    out.insert(format!("{prefix}/base"), logits(peft, inputs));
    peft.enable_adapter_layers().unwrap();
    out
}

/// Only the rows' real tokens: padded positions of causal LM logits are not meaningful.
fn valid(t: &Tensor, inputs: &BTreeMap<String, Tensor>, task: Task) -> Tensor {
    if task == Task::SequenceClassification {
        return t.shallow_clone();
    }
    peft_parity::compare::mask_padding(t, &inputs["attention_mask"])
}

fn assert_same_files(ours: &Path, theirs: &Path, what: &str) {
    let ours = read_all(&ours.join("adapter_model.safetensors"));
    let theirs = read_all(&theirs.join("adapter_model.safetensors"));
    assert_eq!(ours.keys().collect::<Vec<_>>(), theirs.keys().collect::<Vec<_>>(), "{what}: saved keys");
    for (k, v) in &theirs {
        assert_identical(&ours[k], v, &format!("{what}: saved {k}"));
    }
}

#[test]
fn peft_bias_files_load_save_and_reload_with_peft_outputs() {
    let root = fixtures();
    let work = tempfile::tempdir().unwrap();
    let mut ours_all = BTreeMap::new();
    for (case, meta) in cases(&root) {
        let d = root.join(&case);
        let task = task(&meta);
        let inputs = read_all(&d.join("inputs.safetensors"));
        let expected = read_all(&d.join("outputs.safetensors"));
        for order in meta["orders"].as_array().unwrap() {
            let order = strings(order);
            let tag = order.join("_");
            let mut peft = load_in_order(&d, task, &d.join("trained"), &order, false);
            let ours = outputs(&mut peft, &order, &inputs, &tag);
            for (k, t) in &ours {
                assert_close(
                    &valid(t, &inputs, task),
                    &valid(&expected[k], &inputs, task),
                    ATOL,
                    &format!("{case}: {k}"),
                );
            }
            oracle::record("bias peft->rs", &format!("{case}/{tag}"));
            // Our save of what we loaded is PEFT's save of what it loaded.
            let staged = work.path().join(format!("{case}_{tag}"));
            let saved = staged.join("adapters");
            peft.save_pretrained(&saved, &SaveOptions::default()).unwrap();
            for n in &order {
                assert_same_files(
                    &adapter_dir(&saved, n),
                    &adapter_dir(&d.join("resaved").join(&tag), n),
                    &format!("{case}/{tag}/{n}"),
                );
            }
            let job = serde_json::json!({"case": case, "model_dir": d.join("model"), "order": order});
            std::fs::write(staged.join("check.json"), job.to_string()).unwrap();
            ours_all.insert(format!("{case}_{tag}"), (task, d.join("inputs.safetensors"), ours, tag));
        }
    }
    // PEFT loads our saves in the same order and computes our logits.
    oracle::run_script("gen_bias.py", &[Path::new("check"), work.path()]);
    for (entry, (task, inputs, ours, tag)) in &ours_all {
        let inputs = &read_all(inputs);
        let theirs = read_all(&work.path().join(entry).join("peft_outputs.safetensors"));
        for (k, t) in ours {
            let pk = k.replacen(tag.as_str(), "peft", 1);
            assert_close(
                &valid(t, inputs, *task),
                &valid(&theirs[&pk], inputs, *task),
                ATOL,
                &format!("{entry}: {k} (PEFT loaded ours)"),
            );
        }
        oracle::record("bias rs->peft", entry);
    }
}

#[test]
fn training_a_biased_adapter_trains_what_peft_trains() {
    let root = fixtures();
    for (case, meta) in cases(&root) {
        let d = root.join(&case);
        let task = task(&meta);
        for (adapter, want) in meta["trainable"].as_object().unwrap() {
            let mut peft = load_in_order(&d, task, &d.join("trained"), std::slice::from_ref(adapter), true);
            let trainer = peft_train::Trainer::new(&mut peft, peft_train::TrainingArgs::default()).unwrap();
            drop(trainer);
            let names: Vec<String> = {
                let mut v: Vec<String> =
                    peft.named_trainable_parameters().into_iter().map(|(n, _)| n).collect();
                v.sort();
                v
            };
            assert_eq!(names, strings(&want["names"]), "{case}/{adapter}: trainable parameters");
            let (trainable, total) = peft.num_parameters();
            assert_eq!(trainable, want["count"].as_i64().unwrap(), "{case}/{adapter}: trainable count");
            assert_eq!(total, want["total"].as_i64().unwrap(), "{case}/{adapter}: total count");
            oracle::record("bias trainable", &format!("{case}/{adapter}"));
        }
    }
}
