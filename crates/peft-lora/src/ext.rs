//! [`LoraModelExt`]: the operations PEFT offers on a LoRA model beyond the method-agnostic
//! [`PeftModel`] API — combining adapters and hotswapping.

use crate::weighted::{self, WeightedAdapterOptions};
use peft_core::error::Result;
use peft_core::{Adaptable, PeftModel};
use std::path::Path;

/// LoRA operations on a [`PeftModel`] that PEFT offers on `LoraModel` (and in `peft.utils.hotswap`).
pub trait LoraModelExt {
    /// PEFT's `add_weighted_adapter`: adds `adapter_name`, combined from `adapters` with `weights` (see
    /// [`crate::weighted`]). Returns PEFT's warnings (e.g. a density of 1).
    ///
    /// # Errors
    /// Unknown adapters or a taken name, non-LoRA or DoRA adapters, mismatched ranks for the types that
    /// need equal ranks, mixed target-module forms, a missing `density`, modules_to_save shared by
    /// several adapters, or a libtorch failure. On error the model is left without the new adapter.
    fn add_weighted_adapter(
        &mut self,
        adapters: &[&str],
        weights: &[f64],
        adapter_name: &str,
        options: &WeightedAdapterOptions,
    ) -> Result<Vec<String>>;

    /// PEFT's `prepare_model_for_compiled_hotswap(model, target_rank=…)`: pads every adapter's tensors
    /// to `target_rank` with zeros (outputs unchanged), once, so that [`LoraModelExt::hotswap_adapter`]
    /// can later swap in adapters of any rank up to it without reallocating. Saving still writes each
    /// adapter with its own rank; loading weights into a padded adapter goes through hotswapping.
    ///
    /// # Errors
    /// No adapter with ranks in the model, or a target below an adapter's rank.
    fn prepare_for_hotswap(&mut self, target_rank: i64) -> Result<()>;

    /// PEFT's `hotswap_adapter`: replaces the weights of the loaded adapter `adapter_name` in place with
    /// those of the adapter saved in `dir` (same targeted layers; layers the new adapter does not target
    /// get zero weights), recomputing the scaling, without reallocating any tensor. Adapters of a higher
    /// rank than the loaded one need [`LoraModelExt::prepare_for_hotswap`] first. The adapter keeps its
    /// name; its config becomes the new one. Nothing changes if any check fails.
    ///
    /// # Errors
    /// [`peft_core::PeftError::UnknownAdapter`]; [`peft_core::PeftError::AdapterMerged`]; adapters that
    /// are not LoRA, or a config with options that change the output beyond the weights (PEFT's list);
    /// keys the loaded adapter does not have ([`peft_core::PeftError::UnexpectedKeys`]); tensors larger
    /// than the allocated ones.
    fn hotswap_adapter(&mut self, dir: impl AsRef<Path>, adapter_name: &str) -> Result<()>;
}

impl<M: Adaptable> LoraModelExt for PeftModel<M> {
    fn add_weighted_adapter(
        &mut self,
        adapters: &[&str],
        weights: &[f64],
        adapter_name: &str,
        options: &WeightedAdapterOptions,
    ) -> Result<Vec<String>> {
        weighted::add_weighted_adapter(self, adapters, weights, adapter_name, options)
    }

    fn prepare_for_hotswap(&mut self, target_rank: i64) -> Result<()> {
        crate::hotswap::prepare(self, target_rank)
    }

    fn hotswap_adapter(&mut self, dir: impl AsRef<Path>, adapter_name: &str) -> Result<()> {
        crate::hotswap::hotswap(self, dir.as_ref(), adapter_name)
    }
}
