//! Rank padding and hotswapping (PEFT's `prepare_model_for_compiled_hotswap` and `hotswap_adapter`):
//! A and B are allocated at the largest rank once, the rank in use fills their first rows (the first
//! rows of each group's block for grouped convolutions), and hotswaps copy into them in place.

use super::{LoraLayer, TchResult};
use crate::config::LoraConfig;
use crate::variant::LoraVariant;
use peft_core::error::{PeftError, Result};
use peft_core::layer::TunerLayer;
use std::collections::BTreeMap;
use tch::Tensor;

impl LoraLayer {
    /// [`TunerLayer::state_tensors`]: the named tensors, A and B cut to the rank in use.
    pub(super) fn state_tensors_in_use(&self) -> Vec<(String, Tensor)> {
        let allocated = self.lora_a.size()[0];
        // Padded for hotswapping when A has more rows than the rank in use (PiSSA/OLoRA can leave fewer).
        if allocated <= self.r {
            return self.named_tensors();
        }
        let g = self.groups();
        let (a_name, b_name, _) = self.kind.tensor_names(&self.adapter);
        self.named_tensors()
            .into_iter()
            .map(|(n, t)| {
                let t = if n == a_name {
                    self.rows_in_use(&t, allocated)
                } else if n == b_name {
                    t.narrow(1, 0, self.r / g)
                } else {
                    t
                };
                (n, t)
            })
            .collect()
    }

    /// [`TunerLayer::pad_rank`]: A and B grown with zeros to `target_rank`, in place.
    pub(super) fn pad_to_rank(&mut self, target_rank: i64) -> Result<bool> {
        if matches!(self.variant, LoraVariant::BdLora(Some(_))) {
            return Err(PeftError::Invalid(format!(
                "`{}`: a BD-LoRA adapter's block-diagonal factor cannot be padded for hotswapping",
                self.module
            )));
        }
        let allocated = self.lora_a.size()[0];
        if target_rank < allocated {
            return Err(PeftError::Invalid(format!(
                "Trying to pad the adapter `{}` on `{}` to the target rank {target_rank}, but its rank is larger \
                 ({allocated}). This is not possible.",
                self.adapter, self.module
            )));
        }
        let g = self.groups();
        if target_rank % g != 0 {
            return Err(PeftError::Invalid(format!(
                "Trying to pad a {} LoRA adapter with groups={g} to target rank {target_rank}, but the target rank is \
                 not divisible by {g}",
                self.kind.class_name()
            )));
        }
        if target_rank == allocated {
            return Ok(true);
        }
        let f = || -> TchResult<(Tensor, Tensor)> {
            let mut a_shape = self.lora_a.size();
            a_shape[0] = target_rank;
            let a = Tensor::f_zeros(a_shape.as_slice(), (self.lora_a.kind(), self.lora_a.device()))?;
            self.place_rows(&a, &self.lora_a, target_rank)?;
            let mut b_shape = self.lora_b.size();
            b_shape[1] = target_rank / g;
            let b = Tensor::f_zeros(b_shape.as_slice(), (self.lora_b.kind(), self.lora_b.device()))?;
            b.f_narrow(1, 0, self.lora_b.size()[1])?.f_copy_(&self.lora_b)?;
            Ok((a, b))
        };
        let (a, b) = tch::no_grad(f).map_err(PeftError::torch("padding LoRA weights"))?;
        // set_data keeps the tensors' identity: the var store and every shallow clone see the padding.
        self.lora_a.f_set_data(&a).map_err(PeftError::torch("padding LoRA A"))?;
        self.lora_b.f_set_data(&b).map_err(PeftError::torch("padding LoRA B"))?;
        self.version += 1;
        Ok(true)
    }

    /// [`TunerLayer::hotswap_check`]: every loaded tensor fits the allocated one.
    pub(super) fn check_hotswap(&self, tensors: &BTreeMap<String, Tensor>) -> Result<()> {
        let mine: BTreeMap<String, Tensor> = self.named_tensors().into_iter().collect();
        let (a_name, _, _) = self.kind.tensor_names(&self.adapter);
        for (k, t) in tensors {
            let Some(m) = mine.get(k) else {
                return Err(PeftError::Invalid(format!(
                    "hotswap: the loaded adapter has `{k}` on `{}`, which the current one does not",
                    self.module
                )));
            };
            let (ms, ts) = (m.size(), t.size());
            let fits = ms.len() == ts.len() && ms.iter().zip(&ts).all(|(a, b)| b <= a);
            if !fits {
                return Err(PeftError::Invalid(format!(
                    "hotswap: `{}.{k}` is allocated as {ms:?} but the loaded adapter has {ts:?}; pad the adapter to \
                     the largest rank first (`prepare_for_hotswap`)",
                    self.module
                )));
            }
            if k == &a_name && self.groups() > 1 && ts[0] % self.groups() != 0 {
                return Err(PeftError::Invalid(format!(
                    "hotswap: rank {} of `{}.{k}` is not divisible by the convolution's groups",
                    ts[0], self.module
                )));
            }
        }
        Ok(())
    }

    /// [`TunerLayer::hotswap`]: the loaded adapter's values copied into the allocated tensors (zeros
    /// where it has none), and its rank, alpha and scaling taken over.
    pub(super) fn hotswap_from(
        &mut self,
        tensors: &BTreeMap<String, Tensor>,
        config: &dyn peft_core::AdapterConfig,
    ) -> Result<()> {
        self.check_hotswap(tensors)?;
        let config = config
            .as_any()
            .downcast_ref::<LoraConfig>()
            .ok_or_else(|| PeftError::Invalid("hotswapping a LoRA adapter needs a LoRA config".into()))?;
        let (r, alpha) = config.rank_and_alpha(&self.module)?;
        let (a_name, b_name, bias_name) = self.kind.tensor_names(&self.adapter);
        let new_r = tensors.get(&a_name).map(|a| a.size()[0]).unwrap_or(r);
        let allocated = self.lora_a.size()[0];
        // Zero what the new tensors will not overwrite (padding rows, or a factor the file lacks); a same-size
        // swap just overwrites.
        let covers = |dst: &Tensor, name: &str| tensors.get(name).is_some_and(|t| t.size() == dst.size());
        let (full_a, full_b) = (covers(&self.lora_a, &a_name), covers(&self.lora_b, &b_name));
        let f = || -> TchResult<()> {
            if !full_a {
                let _ = self.lora_a.f_zero_()?;
            }
            if !full_b {
                let _ = self.lora_b.f_zero_()?;
            }
            if let Some(a) = tensors.get(&a_name) {
                self.place_rows(&self.lora_a, &a.f_to_kind(self.lora_a.kind())?, allocated)?;
            }
            if let Some(b) = tensors.get(&b_name) {
                self.lora_b.f_narrow(1, 0, b.size()[1])?.f_copy_(b)?;
            }
            if let Some(bb) = &self.lora_b_bias {
                let mut bb = bb.shallow_clone();
                match tensors.get(&bias_name) {
                    Some(src) => bb.f_copy_(src)?,
                    None => drop(bb.f_zero_()?),
                };
            }
            // The variants' own tensors (KaSA's diagonal, VeLoRA's projection, MonteCLoRA's sampler).
            let magnitude = format!("lora_magnitude_vector.{}.weight", self.adapter);
            for (name, t) in self.named_tensors() {
                if [&a_name, &b_name, &bias_name, &magnitude].contains(&&name) {
                    continue;
                }
                if let Some(src) = tensors.get(&name) {
                    t.shallow_clone().f_copy_(src)?;
                }
            }
            if let Some(d) = self.variant.dora() {
                let mut m = d.magnitude.shallow_clone();
                match tensors.get(&format!("lora_magnitude_vector.{}.weight", self.adapter)) {
                    Some(src) => m.f_copy_(src)?,
                    None => drop(m.f_zero_()?),
                };
            }
            Ok(())
        };
        tch::no_grad(f).map_err(PeftError::torch("hotswapping LoRA weights"))?;
        self.r = new_r;
        self.lora_alpha = alpha;
        self.use_rslora = config.use_rslora;
        self.dropout = config.lora_dropout;
        self.scaling = config.scaling_for(r, alpha);
        self.version += 1;
        self.variant.clear_cache();
        Ok(())
    }

    /// Copies the rows of `src` (rank `src.size(0)`) into `dst` (allocated rank `allocated`): the first
    /// rows, or for grouped convolutions the first rows of each group's block (B reads its group's block).
    fn place_rows(&self, dst: &Tensor, src: &Tensor, allocated: i64) -> TchResult<()> {
        let g = self.groups();
        let src_rank = src.size()[0];
        if g == 1 {
            return dst.f_narrow(0, 0, src_rank)?.f_copy_(src).map(drop);
        }
        let (dst_block, src_block) = (allocated / g, src_rank / g);
        for k in 0..g {
            dst.f_narrow(0, k * dst_block, src_block)?.f_copy_(&src.f_narrow(
                0,
                k * src_block,
                src_block,
            )?)?;
        }
        Ok(())
    }

    /// The rows of a padded A that hold the adapter in use (a view, or a copy for grouped convolutions).
    fn rows_in_use(&self, a: &Tensor, allocated: i64) -> Tensor {
        let g = self.groups();
        if g == 1 {
            return a.narrow(0, 0, self.r);
        }
        let (block, used) = (allocated / g, self.r / g);
        let parts: Vec<Tensor> = (0..g).map(|k| a.narrow(0, k * block, used)).collect();
        Tensor::cat(&parts, 0)
    }
}
