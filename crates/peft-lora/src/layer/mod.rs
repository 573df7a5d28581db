//! LoRA on one layer: PEFT's `lora.Linear`, `lora.Embedding` and `lora.Conv1d/2d/3d` as one type.
//!
//! With `s = lora_alpha / r` (or `lora_alpha / sqrt(r)` with rsLoRA):
//!
//! ```text
//! Linear     y = base(x) + B(A(dropout(x))) · s            A (r, in), B (out, r)
//! Embedding  y = base(ids) + embed(ids, Aᵀ) · Bᵀ · s        A (r, vocab), B (dim, r); no dropout
//! ConvNd     y = base(x) + convB(convA(dropout(x))) · s    A (r, in, *kernel), B (out, r/groups, 1, …)
//! ```
//!
//! `convA` uses the base's kernel, stride and padding; `convB` is a 1×…×1 convolution with the base's
//! groups. The delta weights (for merging) and DoRA (see [`crate::dora`]) follow PEFT op for op, so
//! results are bit-identical on the same libtorch.
//!
//! The code is split by concern: [`LoraLayer::create`] in `create`, the forward pass and the delta
//! weight in `compute`, merging in `merge`, rank padding and hotswapping in `hotswap`, and the
//! [`TunerLayer`](peft_core::layer::TunerLayer) glue in `tuner`. What a LoRA variant changes lives in [`crate::variant`] and the
//! variant's own module.

use crate::variant::LoraVariant;
use peft_core::error::{PeftError, Result};
use peft_core::layer::{BaseLayer, ConvGeometry, WeightLike};
use tch::{Device, Kind, Tensor};

mod compute;
mod create;
mod hotswap;
mod merge;
mod tuner;

pub(crate) use create::Placement;

type TchResult<T> = std::result::Result<T, tch::TchError>;

/// The PEFT layer class an adapter mirrors, with what its computation needs from the base.
#[derive(Clone, Debug, PartialEq)]
pub enum LoraKind {
    /// `lora.Linear` on `nn.Linear`, or on transformers' `Conv1D` (weight stored `(in, out)`).
    Linear {
        /// The base weight is stored `(in, out)`.
        fan_in_fan_out: bool,
    },
    /// `lora.Embedding` on `nn.Embedding`.
    Embedding {
        /// The base's padding index (only affects gradients).
        padding_idx: Option<i64>,
        /// The base's output scale (Gemma); applied to the adapter's contribution too.
        embed_scale: Option<f64>,
    },
    /// `lora.Conv1d` / `Conv2d` / `Conv3d`.
    Conv {
        /// The base's kernel, stride, padding, dilation and groups.
        geometry: ConvGeometry,
    },
}

impl LoraKind {
    /// PEFT's class name (`Linear`, `Embedding`, `Conv2d`, …).
    pub fn class_name(&self) -> &'static str {
        match self {
            LoraKind::Linear { .. } => "Linear",
            LoraKind::Embedding { .. } => "Embedding",
            LoraKind::Conv { geometry } => match geometry.dims() {
                1 => "Conv1d",
                2 => "Conv2d",
                _ => "Conv3d",
            },
        }
    }

    /// The in-memory names of A and B relative to the layer, for `adapter`.
    fn tensor_names(&self, adapter: &str) -> (String, String, String) {
        match self {
            LoraKind::Embedding { .. } => (
                format!("lora_embedding_A.{adapter}"),
                format!("lora_embedding_B.{adapter}"),
                format!("lora_embedding_B.{adapter}.bias"),
            ),
            _ => (
                format!("lora_A.{adapter}.weight"),
                format!("lora_B.{adapter}.weight"),
                format!("lora_B.{adapter}.bias"),
            ),
        }
    }
}

/// One LoRA adapter on one layer.
#[derive(Debug)]
pub struct LoraLayer {
    adapter: String,
    module: String,
    /// The layer class and base geometry.
    pub kind: LoraKind,
    /// Rank.
    pub r: i64,
    /// Alpha.
    pub lora_alpha: f64,
    /// rsLoRA (`scaling = alpha / sqrt(r)`).
    pub use_rslora: bool,
    /// The factor applied to the adapter's contribution.
    pub scaling: f64,
    /// Dropout probability on the LoRA input path (not used by embeddings, as in PEFT).
    pub dropout: f64,
    /// `A`: `(r, in)`, `(r, vocab)` or `(r, in, *kernel)`.
    pub lora_a: Tensor,
    /// `B`: `(out, r)`, `(dim, r)` or `(out, r / groups, 1, …)`.
    pub lora_b: Tensor,
    /// `B`'s bias, `(out,)`, with `lora_bias`.
    pub lora_b_bias: Option<Tensor>,
    /// The LoRA variant with its state (PEFT's `lora_variant[adapter]`), [`LoraVariant::Plain`] for
    /// vanilla LoRA. One field, because PEFT 0.21.2 accepts at most one variant per adapter; what
    /// combines with any of them (rsLoRA, dropout, `lora_bias`, the init scheme) are the fields above.
    pub variant: LoraVariant,
    /// Bumped whenever the adapter's values or scaling change (caches compare it).
    pub version: u64,
    in_features: i64,
    out_features: i64,
}

fn alloc(shape: &[i64]) -> Result<Tensor> {
    Tensor::f_empty(shape, (Kind::Float, Device::Cpu)).map_err(PeftError::torch("allocating LoRA weights"))
}

/// `y += (x·Aᵀ)·Bᵀ` written into `y` with one accumulating matrix product, for inference: only when no
/// autograd graph can involve `y` (nothing here requires grad) and `y` is a contiguous tensor of the
/// factors' dtype; `None` otherwise (the caller takes the out-of-place path). Saves the two full passes
/// over the output (`· s`, `+`) of the PEFT formula; `b` carries the scaling.
pub(crate) fn add_low_rank_in_place(x: &Tensor, a: &Tensor, b: &Tensor, y: &Tensor) -> Option<Tensor> {
    if y.requires_grad() || x.requires_grad() || a.requires_grad() || b.requires_grad() {
        return None;
    }
    if y.kind() != b.kind() || x.kind() != a.kind() || !y.is_contiguous() || y.device() != b.device() {
        return None;
    }
    let out = *y.size().last()?;
    let r = a.size()[0];
    let h = x.f_linear::<&Tensor>(a, None).ok()?.f_reshape([-1, r]).ok()?;
    let mut y2 = y.f_view([-1, out]).ok()?;
    let _ = y2.f_addmm_(&h, &b.f_tr().ok()?).ok()?;
    Some(y.shallow_clone())
}

/// `peft.utils.other.transpose`.
pub(crate) fn transpose(w: &Tensor, fan_in_fan_out: bool) -> TchResult<Tensor> {
    if fan_in_fan_out {
        w.f_tr()
    } else {
        Ok(w.shallow_clone())
    }
}

impl LoraLayer {
    /// The adapter's name.
    pub fn adapter_name(&self) -> &str {
        &self.adapter
    }

    /// The PEFT module name of the layer.
    pub fn module_name(&self) -> &str {
        &self.module
    }

    /// `(in, out)` features: input/output features, vocabulary/embedding width, or channels.
    pub fn features(&self) -> (i64, i64) {
        (self.in_features, self.out_features)
    }

    /// Recomputes `scaling` from `r`, `lora_alpha` and rsLoRA, times `scale` (PEFT's `set_scale`).
    pub fn set_scale(&mut self, scale: f64) {
        let base = if self.use_rslora {
            self.lora_alpha / (self.r as f64).sqrt()
        } else {
            self.lora_alpha / self.r as f64
        };
        self.scaling = scale * base;
        self.version += 1;
        self.variant.clear_cache();
    }

    /// The input as the adapter sees it: cast to the adapter dtype (not for embedding ids).
    pub(crate) fn cast_input(&self, x: &Tensor) -> Tensor {
        match self.kind {
            LoraKind::Embedding { .. } => x.shallow_clone(),
            _ if x.kind() != self.lora_a.kind() => x.to_kind(self.lora_a.kind()),
            _ => x.shallow_clone(),
        }
    }

    /// The convolution groups (1 for other layers).
    fn groups(&self) -> i64 {
        match &self.kind {
            LoraKind::Conv { geometry } => geometry.groups,
            _ => 1,
        }
    }

    fn weighted<'a>(&self, base: &'a mut dyn BaseLayer) -> Result<&'a mut dyn WeightLike> {
        let kind = base.kind();
        base.as_weighted_mut().ok_or_else(|| PeftError::Invalid(format!("LoRA adapter on a {kind} base")))
    }

    fn non_finite(&self) -> PeftError {
        PeftError::NonFiniteMerge { adapter: self.adapter.clone(), module: self.module.clone() }
    }
}
