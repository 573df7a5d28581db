//! Activated LoRA (`alora_invocation_tokens`): the update applies only to the positions from each row's
//! invocation offset on, so the base model's cache for the prompt before it stays valid — PEFT's
//! `ALoraLinearVariant`. The offsets come with the forward pass as the per-row column [`ALORA_OFFSETS`]
//! (`ForwardCtx::row_values`), which the config computes from the input ids ([`InputRowValues`], collected
//! by `PeftModel::row_values`). Linear layers only; cannot be merged.

use crate::config::LoraConfig;
use crate::layer::LoraLayer;
use peft_core::layer::ForwardCtx;
use peft_core::InputRowValues;
use tch::{Kind, Tensor};

/// The per-row column of the invocation offsets: per row, how many trailing positions (from the last
/// occurrence of the invocation sequence on) the adapter applies to.
pub const ALORA_OFFSETS: &str = "alora_offsets";

/// PEFT's `calculate_alora_offsets`, one row at a time: the number of positions from the last
/// occurrence of `alora_invocation_tokens` to the end; `None` where the sequence does not occur.
impl InputRowValues for LoraConfig {
    fn key(&self) -> &'static str {
        ALORA_OFFSETS
    }

    fn row_value(&self, ids: &[i64]) -> Option<i64> {
        let tokens = self.alora_invocation_tokens.as_deref().filter(|t| !t.is_empty())?;
        let start = (0..ids.len()).rev().find(|&i| ids[i..].starts_with(tokens))?;
        Some((ids.len() - start) as i64)
    }
}

/// `ALoraLinearVariant.forward`: the update only on each row's last `offset` positions; no offsets at
/// all means none. `x` is the input cast to the adapter dtype, `y` the output so far.
pub(crate) fn forward(layer: &LoraLayer, x: &Tensor, y: Tensor, ctx: &ForwardCtx<'_>) -> Tensor {
    let shape = y.size();
    let rows = shape[0];
    let t = if shape.len() == 3 { shape[1] } else { 1 };
    let d = *shape.last().unwrap_or(&1);
    let dx = *x.size().last().unwrap_or(&1);
    let dev = y.device();
    let mask = match ctx.row_values.and_then(|v| v.get(ALORA_OFFSETS)) {
        None => Tensor::zeros([rows, t], (Kind::Bool, dev)),
        Some(offsets) => {
            let clipped: Vec<i64> =
                (0..rows as usize).map(|i| offsets.get(i).copied().flatten().unwrap_or(0).min(t)).collect();
            let off = Tensor::from_slice(&clipped).to_device(dev);
            let pos = Tensor::arange(t, (Kind::Int64, dev)).unsqueeze(0);
            pos.ge_tensor(&(-off + t).unsqueeze(1))
        }
    };
    let x_flat = x.reshape([-1, dx]);
    let res_flat = y.reshape([-1, d]);
    let mask_flat = mask.reshape([-1]);
    let sel = x_flat.index(&[Some(&mask_flat)]);
    let sel = if layer.dropout > 0.0 && ctx.train { sel.dropout(layer.dropout, true) } else { sel };
    let update = res_flat.index(&[Some(&mask_flat)]) + layer.lora_path(&sel) * layer.scaling;
    res_flat.index_put(&[Some(&mask_flat)], &update, false).reshape(shape.as_slice())
}
