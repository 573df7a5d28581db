//! peft-train against PyTorch + PEFT: the optimizers (AdamW with decay groups and a warmup schedule,
//! clipping and accumulation; PEFT's LoRA+ and LoRA-FA) and the Trainer's loop give the same adapter
//! weights as the same steps in Python. `tests/oracle/gen_train.py` defines the runs.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use peft_core::MethodConfig;
use peft_core::{LoadOptions, PeftModel};
use peft_lora as _;
use peft_parity::compare::{assert_close, assert_differs};
use peft_parity::models::{load_var_store, read_all, TestModel};
use peft_parity::oracle::{self, read_json};
use peft_train::optim::{self, AdamW, LoraFa, Optimizer};
use peft_train::{data, DataOptions, Format, OptimizerKind, Schedule, Trainer, TrainingArgs};
use std::collections::BTreeMap;
use tch::nn::{ModuleT, VarStore};
use tch::Device;

fn fixtures() -> std::path::PathBuf {
    oracle::fixtures("gen_train.py")
}

#[test]
fn optimizers_match_torch_and_peft() {
    let _rng = oracle::rng_guard();
    let root = fixtures();
    for name in ["adamw", "loraplus", "lorafa"] {
        let d = root.join("optim").join(name);
        let c = read_json(&d.join("case.json"));
        let vs = VarStore::new(Device::Cpu);
        let model = TestModel::build("MLP", &vs).unwrap();
        load_var_store(&vs, &d.join("base.safetensors"));
        let (peft, _) =
            PeftModel::from_pretrained(model, &vs, d.join("initial"), LoadOptions::default().trainable())
                .unwrap();
        let lr = c["lr"].as_f64().unwrap();
        let named = peft.named_trainable_parameters();
        let mut opt: Box<dyn Optimizer> = match name {
            "adamw" => Box::new(AdamW::new(
                optim::default_groups(named, lr, c["weight_decay"].as_f64().unwrap()),
                (0.9, 0.999),
                1e-8,
            )),
            "loraplus" => Box::new(AdamW::new(
                optim::loraplus_groups(named, lr, c["ratio"].as_f64().unwrap(), 1e-6, 0.0),
                (0.9, 0.999),
                1e-8,
            )),
            _ => {
                let scalings: BTreeMap<String, f64> = ["lin0", "lin1"]
                    .iter()
                    .map(|l| (format!("base_model.model.{l}.lora_B.default.weight"), 8.0 / 4.0))
                    .collect();
                Box::new(LoraFa::new(optim::default_groups(named, lr, 0.0), &scalings, 1e-6, true))
            }
        };
        let data = read_all(&d.join("data.safetensors"));
        let (x, y) = (&data["x"], &data["y"]);
        let accum = c["accum"].as_i64().unwrap();
        let micro = 16 / accum;
        let steps = c["steps"].as_u64().unwrap() as usize;
        let mut losses = vec![];
        tch::manual_seed(13);
        for step in 0..steps {
            for m in 0..accum {
                let out = peft.model().forward_t(&x.narrow(0, m * micro, micro), true);
                let loss = out.nll_loss(&y.narrow(0, m * micro, micro));
                (&loss / accum as f64).backward();
                losses.push(loss.double_value(&[]));
            }
            if let Some(clip) = c["clip"].as_f64() {
                optim::clip_grad_norm(opt.params(), clip).unwrap();
            }
            let factor = match c["warmup"].as_u64() {
                Some(w) => Schedule::Linear.factor(step, w as usize, steps),
                None => 1.0,
            };
            opt.step(factor).unwrap();
            opt.zero_grad();
        }
        let want: Vec<f64> = c["losses"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        for (i, (a, b)) in losses.iter().zip(&want).enumerate() {
            assert!((a - b).abs() < 1e-5, "{name}: loss {i}: {a} vs torch {b}");
        }
        let fin = read_all(&d.join("final").join("adapter_model.safetensors"));
        let init = read_all(&d.join("initial").join("adapter_model.safetensors"));
        for (k, v) in peft.adapter_state_dict("default").unwrap() {
            if name == "lorafa" && k.contains("lora_A") {
                assert!(v.equal(&init[&k]), "{name}: LoRA-FA keeps {k} frozen");
            } else {
                assert_differs(&fin[&k], &init[&k], 1e-6, &format!("{name}: {k} trained"));
            }
            assert_close(&v, &fin[&k], 2e-5, &format!("{name}: {k}"));
        }
        oracle::record("train", &format!("optimizer {name}"));
    }
}

#[test]
fn trainer_loop_matches_the_transformers_trainer_steps() {
    let _rng = oracle::rng_guard();
    let d = fixtures().join("trainer");
    let c = read_json(&d.join("case.json"));
    let model_dir = d.join("model");
    let loaded =
        peft_models::HfModel::load_dir(&model_dir, Some(peft_models::Task::CausalLm), &Default::default())
            .unwrap();
    let tok = peft_models::tokenizer::Tokenizer::from_dir(&model_dir).unwrap();
    let train =
        data::load_jsonl(&d.join("train.jsonl"), Format::Text, &tok, &DataOptions::default()).unwrap();
    let lora = &c["lora"];
    let mut cfg = peft_lora::LoraConfig::from_json_map(
        serde_json::from_value(serde_json::json!({
            "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": lora["r"], "lora_alpha": lora["lora_alpha"],
            "lora_dropout": lora["lora_dropout"], "target_modules": lora["target_modules"],
        }))
        .unwrap(),
        "test",
        &mut vec![],
    )
    .unwrap();
    cfg.init_lora_weights = peft_lora::InitLoraWeights::Bool(true);
    tch::manual_seed(c["seed"].as_i64().unwrap());
    let mut peft = PeftModel::new(loaded.model, &loaded.vs, cfg.boxed(), "default").unwrap();
    let out = tempfile::tempdir().unwrap();
    let args = TrainingArgs {
        output_dir: out.path().to_path_buf(),
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
        optimizer: OptimizerKind::Adamw,
        ..TrainingArgs::default()
    };
    let mut trainer = Trainer::new(&mut peft, args).unwrap();
    let summary = trainer.train(&train, None, &peft_train::hf_loss, 0).unwrap();
    assert_eq!(summary.steps, 4);
    let want: Vec<f64> = c["losses"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    for (i, e) in summary.log.iter().enumerate() {
        let mean = (want[2 * i] + want[2 * i + 1]) / 2.0;
        assert!((e.loss.unwrap() - mean).abs() < 1e-5, "step {}: loss {} vs {mean}", e.step, e.loss.unwrap());
    }
    let fin = read_all(&d.join("final").join("adapter_model.safetensors"));
    for (k, v) in peft.adapter_state_dict("default").unwrap() {
        assert_close(&v, &fin[&k], 2e-5, &format!("trainer: {k}"));
    }
    // The run wrote what a user expects next to the adapter.
    for f in [
        "adapter_config.json",
        "adapter_model.safetensors",
        "training_args.json",
        "metrics.jsonl",
        "loss.png",
        "train_summary.json",
    ] {
        assert!(out.path().join(f).is_file(), "{f}");
    }
    oracle::record("train", "trainer loop (tiny llama)");
}
