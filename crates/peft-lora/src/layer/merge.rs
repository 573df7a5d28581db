//! Merging the adapter into the base weight and taking it out again, as PEFT's `merge` / `unmerge`:
//! the delta weight added to (or subtracted from) the weight, through one accumulating matrix product
//! where the update is a plain `B·A`, or DoRA's rescaled weight.

use super::{LoraKind, LoraLayer, TchResult};
use crate::variant::LoraVariant;
use peft_core::error::{PeftError, Result};
use peft_core::layer::{all_finite, BaseLayer, MergeCtx};
use tch::{Device, Kind, Tensor};

impl LoraLayer {
    /// [`TunerLayer::merge`](peft_core::layer::TunerLayer::merge): `W + ΔW` (and the bias delta), DoRA's
    /// rescaled weight, or PEFT's refusal.
    pub(super) fn merge_into(&mut self, base: &mut dyn BaseLayer, ctx: &MergeCtx<'_>) -> Result<()> {
        if let Some(err) = self.variant.merge_error(self) {
            return Err(err);
        }
        if let LoraKind::Conv { geometry } = &self.kind {
            if geometry.groups > 1 {
                return Err(PeftError::Invalid(format!(
                    "merging is not supported for {} layers with groups > 1 (`{}`), as in PEFT",
                    self.kind.class_name(),
                    self.module
                )));
            }
        }
        if !ctx.safe && self.variant.dora().is_none() && self.accumulate_into_weight(base, 1.0)? {
            return Ok(());
        }
        let delta = self.delta_weight()?;
        let bias_delta = self.bias_delta()?;
        let weight = self.weighted(base)?.weight();
        let base_bias = self.weighted(base)?.bias();
        if bias_delta.is_some() && base_bias.is_none() {
            return Err(PeftError::Invalid(
                "Impossible to merge LoRA with `lora_bias=True` because the base layer has no bias.".into(),
            ));
        }
        let kind = weight.kind();
        let torch = PeftError::torch("merging a LoRA adapter");
        let merged = match &mut self.variant {
            // DoRA: `m/‖W₀ + ΔW‖ · (W + ΔW)`, W₀ the base without other merged adapters.
            LoraVariant::Dora(d) => {
                let reference =
                    ctx.unmerged_base_weight.map_or_else(|| weight.shallow_clone(), Tensor::shallow_clone);
                d.merged_weight(&self.kind, &weight, &reference, &delta)?
            }
            _ if ctx.safe => tch::no_grad(|| weight.f_add(&delta.f_to_kind(kind)?)).map_err(torch)?,
            _ => {
                let mut w = weight.shallow_clone();
                let delta = if matches!(self.kind, LoraKind::Linear { .. } | LoraKind::Conv { .. }) {
                    delta
                } else {
                    delta.f_to_kind(kind).map_err(PeftError::torch("merging a LoRA adapter"))?
                };
                tch::no_grad(|| w.f_add_(&delta))
                    .map(drop)
                    .map_err(PeftError::torch("merging a LoRA adapter"))?;
                w
            }
        };
        let new_bias = match (&base_bias, &bias_delta) {
            (Some(b), Some(d)) => {
                Some(tch::no_grad(|| b.f_add(d)).map_err(PeftError::torch("merging a LoRA bias"))?)
            }
            _ => None,
        };
        if ctx.safe {
            if !all_finite(&merged)? {
                return Err(self.non_finite());
            }
            if let Some(nb) = &new_bias {
                if !all_finite(nb)? {
                    return Err(self.non_finite());
                }
            }
        }
        self.weighted(base)?.set_weight(&merged)?;
        if let (Some(mut b), Some(nb)) = (base_bias, new_bias) {
            tch::no_grad(|| b.f_copy_(&nb)).map_err(PeftError::torch("writing a merged bias"))?;
        }
        self.variant.clear_cache();
        Ok(())
    }

    /// [`TunerLayer::unmerge`](peft_core::layer::TunerLayer::unmerge): the inverse of
    /// [`Self::merge_into`].
    pub(super) fn unmerge_from(&mut self, base: &mut dyn BaseLayer) -> Result<()> {
        if self.variant.dora().is_none() && self.accumulate_into_weight(base, -1.0)? {
            return Ok(());
        }
        let delta = self.delta_weight()?;
        let bias_delta = self.bias_delta()?;
        let w = self.weighted(base)?.weight();
        let kind = w.kind();
        let restored = match &mut self.variant {
            LoraVariant::Dora(dora) => dora.unmerged_weight(&self.kind, &w, &delta)?,
            _ => {
                let mut w = w.shallow_clone();
                tch::no_grad(|| delta.f_to_kind(kind).and_then(|d| w.f_sub_(&d)).map(drop))
                    .map_err(PeftError::torch("unmerging a LoRA adapter"))?;
                w
            }
        };
        let lin = self.weighted(base)?;
        lin.set_weight(&restored)?;
        if let (Some(mut b), Some(d)) = (lin.bias(), bias_delta) {
            tch::no_grad(|| b.f_sub_(&d)).map(drop).map_err(PeftError::torch("unmerging a LoRA bias"))?;
        }
        self.variant.clear_cache();
        Ok(())
    }

    /// `lora_B`'s bias times the scaling: what merging adds to the base bias.
    fn bias_delta(&self) -> Result<Option<Tensor>> {
        match &self.lora_b_bias {
            Some(bb) => tch::no_grad(|| bb.f_mul_scalar(self.scaling))
                .map(Some)
                .map_err(PeftError::torch("computing the LoRA bias delta")),
            None => Ok(None),
        }
    }

    /// `W ± s·B·A` accumulated into the base weight by one matrix product, without materialising the
    /// full-size delta twice as `W += (B·A)·s` does (PEFT's merge); `false` when this layer needs the
    /// general path (another update shape, mixed dtypes, fp16/bf16 on the CPU where PEFT multiplies in
    /// fp32).
    fn accumulate_into_weight(&self, base: &mut dyn BaseLayer, sign: f64) -> Result<bool> {
        let LoraKind::Linear { fan_in_fan_out } = self.kind else { return Ok(false) };
        if !self.plain_linear() || !self.weighted(base)?.weight_is_storage() {
            return Ok(false);
        }
        let w = self.weighted(base)?.weight();
        let reduced_on_cpu = w.device() == Device::Cpu && matches!(w.kind(), Kind::Half | Kind::BFloat16);
        if w.kind() != self.lora_b.kind() || w.device() != self.lora_b.device() || reduced_on_cpu {
            return Ok(false);
        }
        let f = || -> TchResult<()> {
            let bs = self.lora_b.f_mul_scalar(sign * self.scaling)?;
            let mut w = w.shallow_clone();
            if fan_in_fan_out {
                let _ = w.f_addmm_(&self.lora_a.f_tr()?, &bs.f_tr()?)?;
            } else {
                let _ = w.f_addmm_(&bs, &self.lora_a)?;
            }
            Ok(())
        };
        tch::no_grad(f).map_err(PeftError::torch("merging a LoRA adapter"))?;
        Ok(true)
    }
}
