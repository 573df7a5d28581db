//! The adapter's computations: the forward pass of vanilla LoRA (the variants dispatch in
//! [`crate::variant::LoraVariant::forward`]), the low-rank path of each layer class, and the delta
//! weight for merging, following PEFT op for op.

use super::{add_low_rank_in_place, transpose, LoraKind, LoraLayer, TchResult};
use peft_core::error::{PeftError, Result};
use peft_core::layer::{conv_nd_t, ForwardCtx};
use tch::{Device, Kind, Tensor};

impl LoraLayer {
    /// PEFT's `get_delta_weight`: the update to the base weight in its layout, scaling included. On the
    /// CPU, fp16/bf16 adapters are multiplied in fp32 and the result cast back.
    ///
    /// # Errors
    /// A libtorch failure (or a conv geometry PEFT's formula cannot handle).
    pub fn delta_weight(&self) -> Result<Tensor> {
        let kind = match self.kind {
            LoraKind::Linear { .. } => self.lora_b.kind(),
            _ => self.lora_a.kind(),
        };
        let cast = self.lora_b.device() == Device::Cpu && matches!(kind, Kind::Half | Kind::BFloat16);
        let f = || -> TchResult<Tensor> {
            let (a, b) = if cast {
                (self.lora_a.f_to_kind(Kind::Float)?, self.lora_b.f_to_kind(Kind::Float)?)
            } else {
                (self.lora_a.shallow_clone(), self.lora_b.shallow_clone())
            };
            let d = match &self.kind {
                LoraKind::Linear { fan_in_fan_out } => {
                    let (a, b) = self.variant.linear_delta_factors(a, b, cast)?;
                    transpose(&b.f_matmul(&a)?, *fan_in_fan_out)?.f_mul_scalar(self.scaling)?
                }
                LoraKind::Embedding { .. } => b.f_matmul(&a)?.f_tr()?.f_mul_scalar(self.scaling)?,
                LoraKind::Conv { geometry } => {
                    let ws = a.size();
                    if ws.len() >= 4 && ws[2] == 1 && ws[3] == 1 {
                        // 1×1 kernels: a plain matrix product.
                        let b2 = b.f_squeeze_dim(3)?.f_squeeze_dim(2)?;
                        let a2 = a.f_squeeze_dim(3)?.f_squeeze_dim(2)?;
                        b2.f_matmul(&a2)?.f_unsqueeze(2)?.f_unsqueeze(3)?.f_mul_scalar(self.scaling)?
                    } else {
                        let dims = geometry.dims();
                        let ones = vec![1i64; dims];
                        let zeros = vec![0i64; dims];
                        let out = peft_core::layer::conv_nd(
                            &a.f_transpose(0, 1)?,
                            &b,
                            None,
                            &ones,
                            &zeros,
                            &ones,
                            1,
                        )?;
                        if geometry.groups > 1 {
                            out.f_mul_scalar(self.scaling)?
                        } else {
                            out.f_transpose(0, 1)?.f_mul_scalar(self.scaling)?
                        }
                    }
                }
            };
            if cast {
                d.f_to_kind(kind)
            } else {
                Ok(d)
            }
        };
        tch::no_grad(f).map_err(PeftError::torch("computing the LoRA delta weight"))
    }

    /// `B(A(x))` without scaling: the low-rank path of the layer class.
    pub(crate) fn lora_path(&self, x: &Tensor) -> Tensor {
        match &self.kind {
            LoraKind::Linear { .. } => {
                self.variant.linear_path(x, &self.lora_a, &self.lora_b, self.lora_b_bias.as_ref())
            }
            LoraKind::Embedding { padding_idx, .. } => {
                let after_a =
                    Tensor::embedding(&self.lora_a.tr(), x, padding_idx.unwrap_or(-1), false, false);
                after_a.matmul(&self.lora_b.tr())
            }
            LoraKind::Conv { geometry } => {
                let dims = geometry.dims();
                let ones = vec![1i64; dims];
                let zeros = vec![0i64; dims];
                let h = conv_nd_t(x, &self.lora_a, None, &geometry.stride, &geometry.padding, &ones, 1);
                conv_nd_t(&h, &self.lora_b, self.lora_b_bias.as_ref(), &ones, &zeros, &ones, geometry.groups)
            }
        }
    }

    /// A linear adapter whose update is exactly `B·A` (no bias, KaSA diagonal or block layout).
    pub(crate) fn plain_linear(&self) -> bool {
        matches!(self.kind, LoraKind::Linear { .. })
            && self.lora_b_bias.is_none()
            && self.variant.dense_product()
    }

    /// Vanilla LoRA's forward pass: `y + B(A(dropout(x))) · s` (embeddings: no dropout, and the base's
    /// `embed_scale`), accumulated in place where [`add_low_rank_in_place`] can. `x` is the input cast to
    /// the adapter dtype, `y` the output so far.
    pub(crate) fn plain_forward(&self, x: Tensor, y: Tensor, ctx: &ForwardCtx<'_>) -> Tensor {
        let x = match self.kind {
            LoraKind::Embedding { .. } => x,
            _ if self.dropout > 0.0 && ctx.train => x.dropout(self.dropout, true),
            _ => x,
        };
        if self.plain_linear() {
            if let Some(out) = add_low_rank_in_place(&x, &self.lora_a, &(&self.lora_b * self.scaling), &y) {
                return out;
            }
        }
        let mut h = self.lora_path(&x) * self.scaling;
        if let LoraKind::Embedding { embed_scale: Some(s), .. } = self.kind {
            h = &h * Tensor::from(s).to_kind(h.kind());
        }
        y + h
    }
}
