//! Step callbacks: code that runs at fixed points of every optimizer step of a [`Trainer`], the analogue
//! of transformers' `TrainerCallback` for what PEFT methods need from the loop (AdaLoRA's rank
//! allocation after the optimizer step while the gradients are still there, a gradient projection before
//! the step, logging of method state).
//!
//! [`Trainer`]: crate::Trainer

use crate::error::Result;
use crate::trainer::LogEntry;
use peft_core::{Adaptable, PeftModel};
use tch::Tensor;

/// Hooks into every optimizer step of a [`Trainer`](crate::Trainer).
///
/// Each hook gets the model being trained and `step`, the 0-based index of the optimizer step it belongs
/// to (the number of steps completed before it) — the `global_step` of PEFT's hand-written loops, which
/// call `update_and_allocate(global_step)` before incrementing it. An error from any hook stops training
/// at once: [`Trainer::train`](crate::Trainer::train) returns it, nothing more is saved.
///
/// For every micro-batch, [`adjust_loss`](Self::adjust_loss) may add to the loss before it is checked,
/// logged and backpropagated (AdaLoRA's orthogonal regularisation, which PEFT's model adds to
/// `outputs.loss`). The order within one optimizer step, after its last micro-batch's backward:
/// [`after_backward`](Self::after_backward) → gradient clipping → optimizer step →
/// [`after_optimizer_step`](Self::after_optimizer_step) → `zero_grad` → logging
/// ([`on_log`](Self::on_log)) → evaluation and checkpoints; [`on_train_end`](Self::on_train_end) runs once
/// after the last step, before the final evaluation and save. With gradient accumulation the hooks run
/// once per optimizer step, not per micro-batch.
///
/// ```
/// use peft_core::{nn, Adaptable, ForwardCtx, MethodConfig, PeftModel};
/// use peft_train::{Batch, Dataset, Example, LogEntry, StepCallback, Target, TrainError, Trainer, TrainingArgs};
/// use std::{cell::Cell, rc::Rc};
/// use tch::{nn::VarStore, Device, Kind};
///
/// #[derive(Debug, Adaptable)]
/// struct Probe { lin: nn::Linear }
///
/// /// Counts the optimizer steps and stops training when the gradient norm explodes.
/// struct Watchdog { steps: Rc<Cell<usize>> }
///
/// impl<M: Adaptable> StepCallback<M> for Watchdog {
///     fn after_optimizer_step(&mut self, _peft: &mut PeftModel<M>, step: usize) -> peft_train::Result<()> {
///         self.steps.set(step + 1);
///         Ok(())
///     }
///     fn on_log(&mut self, _peft: &mut PeftModel<M>, entry: &LogEntry) -> peft_train::Result<()> {
///         match entry.grad_norm {
///             Some(n) if n > 1e3 => Err(TrainError::Config(format!("gradient norm {n} at step {}", entry.step))),
///             _ => Ok(()),
///         }
///     }
/// }
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let vs = VarStore::new(Device::Cpu);
/// let probe = Probe { lin: nn::linear(vs.root() / "lin", 4, 2, Default::default())? };
/// let lora = peft_lora::LoraConfig {
///     target_modules: Some(peft_core::peft_config::TargetModules::list(["lin"])),
///     ..Default::default()
/// };
/// let mut peft = PeftModel::new(probe, &vs, lora.boxed(), "default")?;
/// let example = Example { input_ids: vec![1, 2, 3, 4], target: Target::Class(0) };
/// let data = Dataset { examples: vec![example; 4], label_names: vec![], path: "probe.jsonl".into() };
/// let loss = |m: &Probe, b: &Batch, ctx: &ForwardCtx<'_>| {
///     let y = m.lin.forward_ctx(&b.input_ids.to_kind(Kind::Float), ctx);
///     Ok((y.square().mean(Kind::Float), y))
/// };
/// let out = tempfile::tempdir()?;
/// let args = TrainingArgs {
///     output_dir: out.path().into(),
///     max_steps: Some(3),
///     per_device_train_batch_size: 2,
///     progress: false,
///     ..TrainingArgs::default()
/// };
/// let steps = Rc::new(Cell::new(0));
/// let mut trainer = Trainer::new(&mut peft, args)?.with_callback(Watchdog { steps: steps.clone() });
/// trainer.train(&data, None, &loss, 0)?;
/// assert_eq!(steps.get(), 3);
/// # Ok(()) }
/// ```
///
/// It is registered with [`Trainer::add_callback`](crate::Trainer::add_callback) or
/// [`Trainer::with_callback`](crate::Trainer::with_callback); the workspace test
/// `tests/tests/train_callbacks.rs` pins the order above.
pub trait StepCallback<M: Adaptable> {
    /// The training loss of one micro-batch, before it is checked for NaN, logged and backpropagated:
    /// return it changed to add a term with its graph. The default returns it as it is.
    ///
    /// # Errors
    /// Any error stops training.
    fn adjust_loss(&mut self, peft: &PeftModel<M>, loss: Tensor) -> Result<Tensor> {
        let _ = peft;
        Ok(loss)
    }

    /// After the backward pass of the step's last micro-batch: the gradients are complete and not yet
    /// clipped; the parameters are as before the step. A gradient transformation goes here.
    ///
    /// # Errors
    /// Any error stops training.
    fn after_backward(&mut self, peft: &mut PeftModel<M>, step: usize) -> Result<()> {
        let _ = (peft, step);
        Ok(())
    }

    /// After the optimizer step, before `zero_grad`: the parameters are updated and the gradients (as
    /// clipped) are still present — where PEFT's AdaLoRA calls `update_and_allocate`.
    ///
    /// # Errors
    /// Any error stops training.
    fn after_optimizer_step(&mut self, peft: &mut PeftModel<M>, step: usize) -> Result<()> {
        let _ = (peft, step);
        Ok(())
    }

    /// After a log entry (training or evaluation) is recorded; `entry.step` counts the steps completed.
    ///
    /// # Errors
    /// Any error stops training.
    fn on_log(&mut self, peft: &mut PeftModel<M>, entry: &LogEntry) -> Result<()> {
        let _ = (peft, entry);
        Ok(())
    }

    /// Once, after the last optimizer step (`steps` completed in all), before the final evaluation and
    /// the final save: changes made here are in the saved adapter.
    ///
    /// # Errors
    /// Any error stops training before the final save.
    fn on_train_end(&mut self, peft: &mut PeftModel<M>, steps: usize) -> Result<()> {
        let _ = (peft, steps);
        Ok(())
    }
}
