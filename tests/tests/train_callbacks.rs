//! `peft_train::StepCallback`: the hooks run at their points of every optimizer step of the `Trainer`
//! (after backward, after the optimizer step with the gradients still present, on log, at the end) and
//! an error from a hook stops training.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use peft_core::{Adaptable, MethodConfig, PeftModel};
use peft_models::{HfModel, Task};
use peft_parity::oracle;
use peft_train::{data, DataOptions, Format, LogEntry, StepCallback, TrainError, Trainer, TrainingArgs};
use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::rc::Rc;

fn fixture() -> PathBuf {
    oracle::fixtures("gen_train.py").join("trainer")
}

fn model() -> PeftModel<HfModel> {
    let d = fixture().join("model");
    let loaded = HfModel::load_dir(&d, Some(Task::CausalLm), &Default::default()).unwrap();
    let cfg = peft_lora::LoraConfig {
        r: 4,
        target_modules: Some(peft_core::peft_config::TargetModules::list(["q_proj", "v_proj"])),
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
        max_steps: Some(steps),
        per_device_train_batch_size: 2,
        gradient_accumulation_steps: 2,
        logging_steps: 2,
        progress: false,
        ..TrainingArgs::default()
    }
}

/// Whether any trainable tensor holds a gradient.
fn has_grads<M: Adaptable>(peft: &PeftModel<M>) -> bool {
    peft.named_trainable_parameters().iter().any(|(_, t)| t.grad().defined())
}

struct Recorder {
    events: Rc<RefCell<Vec<String>>>,
    stop_at: Option<usize>,
}

impl<M: Adaptable> StepCallback<M> for Recorder {
    fn after_backward(&mut self, peft: &mut PeftModel<M>, step: usize) -> peft_train::Result<()> {
        self.events.borrow_mut().push(format!("backward {step} grads={}", has_grads(peft)));
        Ok(())
    }

    fn after_optimizer_step(&mut self, peft: &mut PeftModel<M>, step: usize) -> peft_train::Result<()> {
        self.events.borrow_mut().push(format!("optimizer {step} grads={}", has_grads(peft)));
        if self.stop_at == Some(step) {
            return Err(TrainError::Config(format!("stopped by the callback at step {step}")));
        }
        Ok(())
    }

    fn on_log(&mut self, _peft: &mut PeftModel<M>, entry: &LogEntry) -> peft_train::Result<()> {
        self.events.borrow_mut().push(format!("log {}", entry.step));
        Ok(())
    }

    fn on_train_end(&mut self, _peft: &mut PeftModel<M>, steps: usize) -> peft_train::Result<()> {
        self.events.borrow_mut().push(format!("end {steps}"));
        Ok(())
    }
}

#[test]
fn callbacks_run_at_their_points_of_every_step_with_the_gradients_still_present() {
    let _rng = oracle::rng_guard();
    let mut peft = model();
    let out = tempfile::tempdir().unwrap();
    let events = Rc::new(RefCell::new(Vec::new()));
    let mut trainer = Trainer::new(&mut peft, args(out.path(), 4))
        .unwrap()
        .with_callback(Recorder { events: events.clone(), stop_at: None });
    trainer.train(&dataset(), None, &peft_train::hf_loss, 0).unwrap();
    let want: Vec<String> = [
        "backward 0 grads=true",
        "optimizer 0 grads=true",
        "backward 1 grads=true",
        "optimizer 1 grads=true",
        "log 2",
        "backward 2 grads=true",
        "optimizer 2 grads=true",
        "backward 3 grads=true",
        "optimizer 3 grads=true",
        "log 4",
        "end 4",
    ]
    .map(String::from)
    .to_vec();
    assert_eq!(*events.borrow(), want);
}

#[test]
fn a_callback_error_stops_training() {
    let _rng = oracle::rng_guard();
    let mut peft = model();
    let out = tempfile::tempdir().unwrap();
    let events = Rc::new(RefCell::new(Vec::new()));
    let mut trainer = Trainer::new(&mut peft, args(out.path(), 6)).unwrap();
    trainer.add_callback(Box::new(Recorder { events: events.clone(), stop_at: Some(1) }));
    let err = trainer.train(&dataset(), None, &peft_train::hf_loss, 0).unwrap_err();
    assert!(err.to_string().contains("stopped by the callback at step 1"), "{err}");
    assert_eq!(events.borrow().last().map(String::as_str), Some("optimizer 1 grads=true"));
    assert_eq!(trainer.global_step(), 1, "the step the callback stopped is not counted");
    assert!(!out.path().join("adapter_model.safetensors").exists(), "nothing is saved after the error");
}
