//! [`AsaCallback`] in `peft_train::Trainer`: registered with `with_callback`, it runs ASA after every
//! optimizer step, so the masked subspaces stop changing while the kept ones train on.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use peft_adamss::{AdamssConfig, AdamssLayer, AsaCallback, MethodConfig};
use peft_core::peft_config::TargetModules;
use peft_core::{nn, Adaptable, ForwardCtx, PeftModel};
use peft_testkit::{randomize, rng_lock, tuner};
use peft_train::{Batch, Dataset, Example, StepCallback, Target, Trainer, TrainingArgs};
use std::cell::RefCell;
use std::rc::Rc;
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

#[derive(Debug, Adaptable)]
struct Probe {
    lin: nn::Linear,
}

#[test]
fn the_trainer_runs_asa_after_each_optimizer_step() {
    let _rng = rng_lock();
    tch::manual_seed(0);
    let vs = VarStore::new(Device::Cpu);
    let probe = Probe { lin: nn::linear(vs.root() / "lin", 4, 12, Default::default()).unwrap() };
    let config = AdamssConfig {
        r: 3,
        num_subspaces: 4,
        use_asa: true,
        asa_target_subspaces: 2,
        init_warmup: 0,
        final_warmup: 3,
        mask_interval: 3,
        target_modules: Some(TargetModules::list(["lin"])),
        ..AdamssConfig::default()
    };
    let mut peft = PeftModel::new(probe, &vs, config.boxed(), "default").unwrap();
    randomize(&peft, 0.3);
    let examples =
        (0..8).map(|i| Example { input_ids: vec![i, i + 1, 2 * i, 3], target: Target::Class(0) }).collect();
    let data = Dataset { examples, label_names: vec![], path: "probe.jsonl".into() };
    let loss = |m: &Probe, b: &Batch, ctx: &ForwardCtx<'_>| {
        let y = m.lin.forward_ctx(&b.input_ids.to_kind(Kind::Float), ctx);
        Ok((y.square().mean(Kind::Float), y))
    };
    let subspaces = |p: &PeftModel<Probe>| -> Vec<(bool, Tensor)> {
        let l = tuner::<AdamssLayer>(p.model().lin.slots(), "default");
        (0..l.num_subspaces())
            .map(|i| l.subspace(i).unwrap())
            .map(|(a, _)| (a.requires_grad(), a.copy()))
            .collect()
    };
    let out = tempfile::tempdir().unwrap();
    let args = TrainingArgs {
        output_dir: out.path().into(),
        max_steps: Some(6),
        per_device_train_batch_size: 4,
        progress: false,
        ..TrainingArgs::default()
    };
    let snapshot: Rc<RefCell<Vec<Tensor>>> = Rc::default();
    let mut trainer = Trainer::new(&mut peft, args)
        .unwrap()
        .with_callback(AsaCallback::new())
        .with_callback(Snapshot { at: 3, taken: snapshot.clone() });
    trainer.train(&data, None, &loss, 0).unwrap();
    drop(trainer);
    let after = subspaces(&peft);
    // Step 3 masked to the schedule's target of 2, keeping the one scored above the second best.
    let on: Vec<bool> = after.iter().map(|s| s.0).collect();
    assert_eq!(on.iter().filter(|&&b| b).count(), 1, "{on:?}");
    // After the masking, the masked subspaces no longer change; the kept one trains on.
    for ((on, a), snap) in after.iter().zip(snapshot.borrow().iter()) {
        assert_eq!(!a.equal(snap), *on, "trained after masking: {on}");
    }
}

/// Copies every `Aᵢ` after the optimizer step `at` (registered after [`AsaCallback`], so after its
/// masking).
struct Snapshot {
    at: usize,
    taken: Rc<RefCell<Vec<Tensor>>>,
}

impl StepCallback<Probe> for Snapshot {
    fn after_optimizer_step(&mut self, peft: &mut PeftModel<Probe>, step: usize) -> peft_train::Result<()> {
        if step == self.at {
            let l = tuner::<AdamssLayer>(peft.model().lin.slots(), "default");
            *self.taken.borrow_mut() =
                (0..l.num_subspaces()).map(|i| l.subspace(i).unwrap().0.copy()).collect();
        }
        Ok(())
    }
}
