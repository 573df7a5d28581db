//! [`Hotswap`]: a layer's ability to take another adapter's weights in place, without reallocating
//! (what PEFT's `hotswap_adapter` and `prepare_model_for_compiled_hotswap` need of each layer). The
//! model-level operations live with the method that offers them (`peft_lora::LoraModelExt`); core's
//! `modules_to_save` copies take part, so an adapter with trained modules swaps whole.

use crate::config::AdapterConfig;
use crate::error::Result;
use std::collections::BTreeMap;
use tch::Tensor;

/// Hotswapping, per layer (see [`crate::TunerLayer::as_hotswap`]).
pub trait Hotswap {
    /// Grows the adapter's tensors to `target_rank` with zeros, once, so that adapters of any rank up to
    /// it can later be swapped in without reallocating. Returns `false` for layers without ranks. The
    /// layer's [`crate::TunerLayer::state_tensors`] then return views of the part in use, so files keep
    /// the adapter's own shapes.
    ///
    /// # Errors
    /// A target below the current rank.
    fn pad_rank(&mut self, target_rank: i64) -> Result<bool>;

    /// Checks that [`Hotswap::hotswap`] can take `tensors` (this layer's part of another adapter's state
    /// dict, keyed like [`crate::TunerLayer::named_tensors`]) without reallocating.
    ///
    /// # Errors
    /// [`crate::PeftError::Invalid`] naming the tensor and both shapes.
    fn hotswap_check(&self, tensors: &BTreeMap<String, Tensor>) -> Result<()>;

    /// Replaces the adapter's values in place with another adapter's (`config` is that adapter's):
    /// tensors absent from `tensors` become neutral, derived values (a scaling) are recomputed.
    ///
    /// `tensors` are read-only views of the adapter file's memory map, valid only during the call: copy
    /// from them (`copy_`), never keep or modify them.
    ///
    /// # Errors
    /// As [`Hotswap::hotswap_check`].
    fn hotswap(&mut self, tensors: &BTreeMap<String, Tensor>, config: &dyn AdapterConfig) -> Result<()>;
}
