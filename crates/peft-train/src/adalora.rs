//! AdaLoRA in the [`Trainer`](crate::Trainer): PEFT's rank allocation and orthogonal regularisation as a
//! [`StepCallback`].
//!
//! PEFT leaves both to its users' loops: `AdaLoraModel.forward` adds the orthogonal regularisation to
//! `outputs.loss`, and `model.base_model.update_and_allocate(global_step)` must be called after
//! `optimizer.step()` and before `optimizer.zero_grad()`, while the gradients are still there.
//! [`AdaLoraCallback`] does both at those points; the trainer registers it by itself for an AdaLoRA
//! adapter, so `peft train --config adalora_config.json` needs nothing more.

use crate::callback::StepCallback;
use crate::error::{Result, TrainError};
use peft_adalora::allocator::adalora_config;
use peft_adalora::{regularized_loss, Allocation, RankAllocator};
use peft_core::{Adaptable, PeftModel};
use tch::Tensor;

/// Drives AdaLoRA's [`RankAllocator`] from the training loop and adds the orthogonal regularisation to
/// each micro-batch's loss, as PEFT's documented loop does.
#[derive(Debug)]
pub struct AdaLoraCallback {
    allocator: RankAllocator,
    last: Option<Allocation>,
}

impl AdaLoraCallback {
    /// The callback for AdaLoRA adapter `adapter` of a run of `total_steps` optimizer steps.
    ///
    /// # Errors
    /// A non-AdaLoRA adapter; a config whose `total_step` is not `total_steps` (PEFT's budget schedule
    /// runs to `total_step − tfinal`: with another length the final allocation would come too early, or
    /// never).
    pub fn new<M: Adaptable>(peft: &PeftModel<M>, adapter: &str, total_steps: usize) -> Result<Self> {
        let config = adalora_config(peft, adapter)?;
        let total_step = config.total_step()?;
        if total_step != total_steps as i64 {
            return Err(TrainError::Config(format!(
                "AdaLoRA adapter `{adapter}` has total_step = {total_step} but this run takes {total_steps} \
                 optimizer steps; PEFT's rank schedule needs them equal: set \"total_step\": {total_steps} \
                 in the adapter config (or train {total_step} steps)"
            )));
        }
        Ok(Self { allocator: RankAllocator::new(peft, adapter)?, last: None })
    }

    /// What the last allocation step did (budget, new rank pattern).
    pub fn last_allocation(&self) -> Option<&Allocation> {
        self.last.as_ref()
    }
}

impl<M: Adaptable> StepCallback<M> for AdaLoraCallback {
    /// `AdaLoraModel.forward`: the loss plus `orth_reg_weight ·` the mean orthogonality defect.
    fn adjust_loss(&mut self, peft: &PeftModel<M>, loss: Tensor) -> Result<Tensor> {
        Ok(regularized_loss(peft, &loss)?)
    }

    /// `update_and_allocate(global_step)` with the step just taken (0-based, as PEFT's loops count).
    fn after_optimizer_step(&mut self, peft: &mut PeftModel<M>, step: usize) -> Result<()> {
        self.last = Some(self.allocator.update_and_allocate(peft, step as i64)?);
        Ok(())
    }
}

/// The callback the trainer adds for the trained adapter `adapter`: [`AdaLoraCallback`] for AdaLoRA,
/// nothing for other methods.
///
/// # Errors
/// As [`AdaLoraCallback::new`].
pub fn method_callback<M: Adaptable>(
    peft: &PeftModel<M>,
    adapter: &str,
    total_steps: usize,
) -> Result<Option<Box<dyn StepCallback<M>>>> {
    let is_adalora = peft.config(adapter).is_some_and(|c| c.common().peft_type == peft_adalora::PEFT_TYPE);
    if !is_adalora {
        return Ok(None);
    }
    Ok(Some(Box::new(AdaLoraCallback::new(peft, adapter, total_steps)?)))
}
