//! [`TunerLayer`] for [`LoraLayer`]: the names and roles of its tensors, and the entry points that the
//! other files of the layer implement.

use super::LoraLayer;
use crate::config::PEFT_TYPE;
use crate::variant::LoraVariant;
use peft_core::error::Result;
use peft_core::hotswap::Hotswap;
use peft_core::layer::{BaseLayer, ForwardCtx, MergeCtx, TunerLayer};
use peft_core::mixed::{MixedBatch, MixedCache};
use std::collections::BTreeMap;
use tch::Tensor;

impl TunerLayer for LoraLayer {
    fn peft_type(&self) -> &'static str {
        PEFT_TYPE
    }

    fn named_tensors(&self) -> Vec<(String, Tensor)> {
        let (a, b, bias) = self.kind.tensor_names(&self.adapter);
        let mut v = vec![(a, self.lora_a.shallow_clone()), (b, self.lora_b.shallow_clone())];
        if let Some(bb) = &self.lora_b_bias {
            v.push((bias, bb.shallow_clone()));
        }
        self.variant.push_tensors(&self.adapter, &mut v);
        v
    }

    fn is_buffer(&self, name: &str) -> bool {
        crate::variant::is_buffer(name)
    }

    fn is_trainable_tensor(&self, name: &str) -> bool {
        if self.is_buffer(name) {
            return false;
        }
        let frozen_b = matches!(self.variant, LoraVariant::Mica);
        !(frozen_b && (name.starts_with("lora_B.") || name.starts_with("lora_embedding_B.")))
    }

    fn checkpoint_key(&self, key: &str, adapter: &str) -> String {
        // DoRA's magnitude is saved without its `.weight` suffix (PEFT keeps the pre-refactor format).
        let dora_suffix = format!("lora_magnitude_vector.{adapter}.weight");
        if let Some(head) = key.strip_suffix(&dora_suffix) {
            return format!("{head}lora_magnitude_vector");
        }
        peft_core::peft_config::keys::remove_adapter_name(key, adapter)
    }

    fn transform_output(&self, base: &dyn BaseLayer, x: &Tensor, y: Tensor, ctx: &ForwardCtx<'_>) -> Tensor {
        self.variant.forward(self, base, self.cast_input(x), y, ctx)
    }

    fn merge(&mut self, base: &mut dyn BaseLayer, ctx: &MergeCtx<'_>) -> Result<()> {
        self.merge_into(base, ctx)
    }

    fn merge_needs_unmerged_base(&self) -> bool {
        self.variant.dora().is_some()
    }

    fn unmerge(&mut self, base: &mut dyn BaseLayer) -> Result<()> {
        self.unmerge_from(base)
    }

    fn state_tensors(&self) -> Vec<(String, Tensor)> {
        self.state_tensors_in_use()
    }

    fn as_hotswap(&self) -> Option<&dyn Hotswap> {
        Some(self)
    }

    fn as_hotswap_mut(&mut self) -> Option<&mut dyn Hotswap> {
        Some(self)
    }

    fn as_mixed_batch(&self) -> Option<&dyn MixedBatch> {
        Some(self)
    }

    fn weights_changed(&mut self) {
        self.version += 1;
        self.variant.clear_cache();
    }

    fn describe(&self) -> String {
        format!(
            "lora.{}(in_features={}, out_features={}, r={}, lora_alpha={}, scaling={}{})",
            self.kind.class_name(),
            self.in_features,
            self.out_features,
            self.r,
            self.lora_alpha,
            self.scaling,
            if self.variant.dora().is_some() { ", use_dora=True" } else { "" }
        )
    }
}

impl Hotswap for LoraLayer {
    fn pad_rank(&mut self, target_rank: i64) -> Result<bool> {
        self.pad_to_rank(target_rank)
    }

    fn hotswap_check(&self, tensors: &BTreeMap<String, Tensor>) -> Result<()> {
        self.check_hotswap(tensors)
    }

    fn hotswap(
        &mut self,
        tensors: &BTreeMap<String, Tensor>,
        config: &dyn peft_core::AdapterConfig,
    ) -> Result<()> {
        self.hotswap_from(tensors, config)
    }
}

/// LoRA computes a mixed batch at once: each row's factors gathered, batched matrix products.
impl MixedBatch for LoraLayer {
    fn mixed_batch_output(
        &self,
        _base: &dyn BaseLayer,
        x: &Tensor,
        y: &Tensor,
        group: &[&dyn TunerLayer],
        index: &Tensor,
        cache: &MixedCache,
        ctx: &ForwardCtx<'_>,
    ) -> Option<Tensor> {
        crate::mixed::output(self, x, y, group, index, cache, ctx)
    }
}
