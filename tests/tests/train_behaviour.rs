//! Trainer behaviour that needs no oracle comparison: a non-finite loss stops training with a clear
//! error, a resumed checkpoint reproduces the uninterrupted run, logs follow the schedule, and bad data
//! is an error naming the line.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use peft_core::MethodConfig;
use peft_core::PeftModel;
use peft_lora as _;
use peft_models::{HfModel, Task};
use peft_parity::oracle;
use peft_train::{data, DataOptions, Format, TrainError, Trainer, TrainingArgs};
use std::path::{Path, PathBuf};

fn fixture() -> PathBuf {
    oracle::fixtures("gen_train.py").join("trainer")
}

fn model(dropout: f64) -> PeftModel<HfModel> {
    let d = fixture().join("model");
    let loaded = HfModel::load_dir(&d, Some(Task::CausalLm), &Default::default()).unwrap();
    let cfg = peft_lora::LoraConfig {
        r: 4,
        lora_alpha: 8.into(),
        lora_dropout: dropout,
        target_modules: Some(peft_core::peft_config::TargetModules::list(["q_proj", "v_proj", "down_proj"])),
        ..Default::default()
    };
    tch::manual_seed(1);
    PeftModel::new(loaded.model, &loaded.vs, cfg.boxed(), "default").unwrap()
}

fn dataset() -> data::Dataset {
    let tok = peft_models::tokenizer::Tokenizer::from_dir(&fixture().join("model")).unwrap();
    data::load_jsonl(&fixture().join("train.jsonl"), Format::Text, &tok, &DataOptions::default()).unwrap()
}

fn args(out: &Path, steps: usize) -> TrainingArgs {
    TrainingArgs {
        output_dir: out.to_path_buf(),
        learning_rate: 1e-2,
        weight_decay: 0.01,
        max_steps: Some(steps),
        warmup_steps: 1,
        per_device_train_batch_size: 2,
        gradient_accumulation_steps: 2,
        logging_steps: 1,
        progress: false,
        ..TrainingArgs::default()
    }
}

#[test]
fn a_non_finite_loss_stops_training_with_a_clear_error() {
    let _rng = oracle::rng_guard();
    let mut peft = model(0.0);
    let a = peft.adapter_var_store().variables()
        ["base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight"]
        .shallow_clone();
    let _ = tch::no_grad(|| a.shallow_clone().fill_(f64::NAN));
    let out = tempfile::tempdir().unwrap();
    let mut trainer = Trainer::new(&mut peft, args(out.path(), 4)).unwrap();
    let err = trainer.train(&dataset(), None, &peft_train::hf_loss, 0).unwrap_err();
    assert!(matches!(err, TrainError::NonFiniteLoss { step: 0, .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("step 0") && msg.contains("learning rate"), "{msg}");
}

#[test]
fn resuming_a_checkpoint_reproduces_the_uninterrupted_run() {
    let _rng = oracle::rng_guard();
    let data = dataset();
    let straight = tempfile::tempdir().unwrap();
    let mut a = model(0.0);
    Trainer::new(&mut a, args(straight.path(), 6))
        .unwrap()
        .train(&data, None, &peft_train::hf_loss, 0)
        .unwrap();

    let first = tempfile::tempdir().unwrap();
    let mut b = model(0.0);
    let mut with_ckpt = args(first.path(), 6);
    with_ckpt.save_steps = Some(4);
    Trainer::new(&mut b, with_ckpt).unwrap().train(&data, None, &peft_train::hf_loss, 0).unwrap();
    let ckpt = first.path().join("checkpoint-4");
    for f in ["adapter_model.safetensors", "optimizer.safetensors", "trainer_state.json"] {
        assert!(ckpt.join(f).is_file(), "{f}");
    }

    let resumed = tempfile::tempdir().unwrap();
    let mut c = model(0.0);
    let mut trainer = Trainer::new(&mut c, args(resumed.path(), 6)).unwrap();
    trainer.resume_from(&ckpt).unwrap();
    assert_eq!(trainer.global_step(), 4);
    trainer.train(&data, None, &peft_train::hf_loss, 0).unwrap();
    let want: std::collections::BTreeMap<_, _> =
        a.adapter_state_dict("default").unwrap().into_iter().collect();
    for (k, v) in c.adapter_state_dict("default").unwrap() {
        assert!(v.equal(&want[&k]), "{k} differs after resume");
    }
}

#[test]
fn logs_follow_the_learning_rate_schedule() {
    let _rng = oracle::rng_guard();
    let out = tempfile::tempdir().unwrap();
    let mut peft = model(0.1);
    let mut a = args(out.path(), 5);
    a.warmup_steps = 2;
    let summary =
        Trainer::new(&mut peft, a).unwrap().train(&dataset(), None, &peft_train::hf_loss, 0).unwrap();
    let lrs: Vec<f64> = summary.log.iter().map(|e| e.learning_rate.unwrap()).collect();
    let want = [0.0, 0.5e-2, 1e-2, 1e-2 * 2.0 / 3.0, 1e-2 / 3.0];
    for (a, b) in lrs.iter().zip(want) {
        assert!((a - b).abs() < 1e-12, "{lrs:?}");
    }
    let lines = std::fs::read_to_string(out.path().join("metrics.jsonl")).unwrap();
    assert_eq!(lines.lines().count(), 5);
    let png = std::fs::read(out.path().join("loss.png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
}

#[test]
fn bad_records_are_errors_naming_the_line() {
    let tok = peft_models::tokenizer::Tokenizer::from_dir(&fixture().join("model")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let p = write("a.jsonl", "{\"text\": \"t5 t6\"}\n\n{\"text\": \"t7\"\n");
    let err = data::load_jsonl(&p, Format::Text, &tok, &DataOptions::default()).unwrap_err().to_string();
    assert!(err.contains("a.jsonl:3") && err.contains("not JSON"), "{err}");
    let p = write("b.jsonl", "{\"text\": \"t5\", \"label\": \"pos\"}\n{\"text\": \"t6\"}\n");
    let err =
        data::load_jsonl(&p, Format::Classification, &tok, &DataOptions::default()).unwrap_err().to_string();
    assert!(err.contains("b.jsonl:2") && err.contains("label"), "{err}");
    let p = write("c.jsonl", "{\"messages\": [{\"role\": \"user\", \"content\": \"t5\"}]}\n");
    let err = data::load_jsonl(&p, Format::Chat, &tok, &DataOptions::default()).unwrap_err().to_string();
    assert!(err.contains("c.jsonl:1") && err.contains("chat template"), "{err}");
    let p = write("d.jsonl", "{\"prompt\": \"t5 t6\", \"completion\": \"t7 t8\"}\n");
    let opts = DataOptions { eos_token_id: Some(2), ..DataOptions::default() };
    let ds = data::load_jsonl(&p, Format::PromptCompletion, &tok, &opts).unwrap();
    assert_eq!(ds.examples[0].input_ids, [5, 6, 7, 8, 2]);
    assert_eq!(
        ds.examples[0].target,
        data::Target::Tokens(vec![-100, -100, 7, 8, 2]),
        "loss on the completion only"
    );
    let p = write(
        "e.jsonl",
        "{\"text\": \"t5\", \"label\": \"pos\"}\n{\"text\": \"t6 t7\", \"label\": \"neg\"}\n",
    );
    let ds = data::load_jsonl(&p, Format::Classification, &tok, &DataOptions::default()).unwrap();
    assert_eq!(ds.label_names, ["neg", "pos"]);
    assert_eq!(ds.examples[0].target, data::Target::Class(1));
}

#[test]
fn evaluation_runs_during_training_and_a_bf16_base_trains_fp32_adapters() {
    let _rng = oracle::rng_guard();
    let d = fixture().join("model");
    let opts = peft_models::LoadOptions { kind: tch::Kind::BFloat16, ..Default::default() };
    let loaded = HfModel::load_dir(&d, Some(Task::CausalLm), &opts).unwrap();
    let cfg = peft_lora::LoraConfig {
        r: 4,
        target_modules: Some(peft_core::peft_config::TargetModules::list(["q_proj", "v_proj"])),
        ..Default::default()
    };
    let mut peft = PeftModel::new(loaded.model, &loaded.vs, cfg.boxed(), "default").unwrap();
    let before: std::collections::BTreeMap<_, _> =
        peft.adapter_state_dict("default").unwrap().into_iter().map(|(k, t)| (k, t.copy())).collect();
    let out = tempfile::tempdir().unwrap();
    let mut a = args(out.path(), 4);
    a.eval_steps = Some(2);
    let data = dataset();
    let summary =
        Trainer::new(&mut peft, a).unwrap().train(&data, Some(&data), &peft_train::hf_loss, 0).unwrap();
    let evals: Vec<f64> = summary.log.iter().filter_map(|e| e.eval_loss).collect();
    assert_eq!(evals.len(), 2, "at step 2 and at the end: {:?}", summary.log);
    assert!(evals.iter().all(|l| l.is_finite()));
    assert!(summary.eval.unwrap().accuracy.is_none(), "token labels have no accuracy");
    for (k, t) in peft.adapter_state_dict("default").unwrap() {
        assert_eq!(t.kind(), tch::Kind::Float, "{k}");
        if k.contains("lora_B") {
            assert!(!t.equal(&before[&k]), "{k} trained");
        }
    }
}

#[test]
fn activated_lora_trains_only_from_its_invocation_tokens_on() {
    let _rng = oracle::rng_guard();
    let data = dataset();
    let train = |tokens: Vec<i64>| {
        let d = fixture().join("model");
        let loaded = HfModel::load_dir(&d, Some(Task::CausalLm), &Default::default()).unwrap();
        let cfg = peft_lora::LoraConfig {
            r: 4,
            target_modules: Some(peft_core::peft_config::TargetModules::list(["q_proj", "v_proj"])),
            alora_invocation_tokens: Some(tokens),
            ..Default::default()
        };
        tch::manual_seed(1);
        let mut peft = PeftModel::new(loaded.model, &loaded.vs, cfg.boxed(), "default").unwrap();
        let out = tempfile::tempdir().unwrap();
        Trainer::new(&mut peft, args(out.path(), 2))
            .unwrap()
            .train(&data, None, &peft_train::hf_loss, 0)
            .unwrap();
        let b = peft.adapter_var_store().variables()
            ["base_model.model.model.layers.0.self_attn.q_proj.lora_B.default.weight"]
            .shallow_clone();
        b.abs().sum(tch::Kind::Float).double_value(&[])
    };
    // An invocation that occurs in the data: the adapter gets gradients from the positions after it.
    let ex = &data.examples[0].input_ids;
    assert!(train(ex[1..3].to_vec()) > 0.0, "the aLoRA adapter trained");
    // One that never occurs: nothing after it, no gradient, B stays at its zero init.
    assert_eq!(train(vec![-5, -6]), 0.0, "an aLoRA adapter without invocations does not train");
}
