//! DoRA (weight-decomposed LoRA, `use_dora=True`): PEFT's `DoraLinearLayer`, `DoraEmbeddingLayer` and
//! `DoraConvNdLayer`, op for op.
//!
//! The adapted weight is `m · (W + s·BA) / ‖W + s·BA‖`, with the norm taken per output unit (rows of the
//! `(out, in)` weight, columns of an embedding table, output channels of a convolution) and treated as a
//! constant (detached) in the backward pass. The forward pass never builds the adapted weight:
//!
//! ```text
//! y = base(x) + (m/‖·‖ − 1) · (base(x) − bias) + m/‖·‖ · B(A(x)) · s          (linear, conv)
//! y = m/‖·‖ · base(ids) + m/‖·‖ · embed(ids, Aᵀ)·Bᵀ · s                        (embedding)
//! ```
//!
//! Merging writes `m/‖·‖ · (W + ΔW)` and remembers the norm so that unmerging can divide it out again.
//!
//! Caching: when the adapter is frozen (loaded for inference: none of its tensors requires grad) and the
//! forward pass is in evaluation mode, the low-rank product `BA` and the weight norm are computed once and
//! reused — the norm costs as much as a full matrix pass otherwise. Any other forward pass drops the
//! cache, and so do merges, unmerges, loads and [`crate::LoraLayer::set_scale`]. PEFT has the same cache
//! behind a global switch (`ENABLE_DORA_CACHING`); here the frozen state decides, so a training loop can
//! never read a stale norm.

use crate::layer::{transpose, LoraKind, LoraLayer};
use peft_core::config::LayerInit;
use peft_core::error::{PeftError, Result};
use peft_core::layer::{BaseLayer, ForwardCtx};
use std::sync::Mutex;
use tch::{Kind, Tensor};

type TchResult<T> = std::result::Result<T, tch::TchError>;

/// DoRA's learned magnitude and its caches, for one adapter on one layer.
#[derive(Debug)]
pub struct Dora {
    /// `m`: `(out,)` for linear layers, `(dim,)` for embeddings, `(1, out, 1, …)` for convolutions.
    pub magnitude: Tensor,
    /// The weight norm at merge time (unmerge divides it out).
    merged_norm: Option<Tensor>,
    /// `(BA in the weight layout, weight norm)` while frozen and evaluating.
    cache: Mutex<Option<(Tensor, Tensor)>>,
    /// `(g, g·s·B, (1 − g)·bias)` for the in-place inference path, with the cache.
    fused: Mutex<Option<(Tensor, Tensor, Option<Tensor>)>>,
}

/// The per-output-unit L2 norm of `weight + scaling · lora_weight`, in the layer class's layout, as
/// PEFT's `get_weight_norm` (`weight` in the base's storage layout, `lora_weight` already oriented).
fn weight_norm(kind: &LoraKind, weight: &Tensor, lora_weight: &Tensor, scaling: f64) -> Tensor {
    match kind {
        LoraKind::Linear { fan_in_fan_out } => {
            let w =
                if *fan_in_fan_out { weight.tr() } else { weight.shallow_clone() } + lora_weight * scaling;
            w.norm_scalaropt_dim(2, [1i64].as_slice(), false).to_kind(w.kind())
        }
        LoraKind::Embedding { .. } => {
            let w = weight.tr() + lora_weight * scaling;
            w.norm_scalaropt_dim(2, [1i64].as_slice(), false).to_kind(w.kind())
        }
        LoraKind::Conv { .. } => {
            let w = weight + lora_weight * scaling;
            let dims: Vec<i64> = (1..w.dim() as i64).collect();
            w.norm_scalaropt_dim(2, dims.as_slice(), true).transpose(1, 0)
        }
    }
}

impl Dora {
    /// Wraps a registered magnitude tensor.
    pub fn new(magnitude: Tensor) -> Self {
        Self { magnitude, merged_norm: None, cache: Mutex::new(None), fused: Mutex::new(None) }
    }

    /// The initial magnitude: the weight norm of the base plus the initial LoRA update (PEFT's
    /// `DoraLinearLayer.update_layer`).
    ///
    /// # Errors
    /// A base without a weight, or a libtorch failure.
    pub fn initial_magnitude(layer: &LoraLayer, base: &dyn BaseLayer) -> Result<Tensor> {
        let weight = base
            .as_weighted()
            .ok_or_else(|| PeftError::Invalid(format!("DoRA on a {} base", base.kind())))?
            .weight();
        let f = || -> TchResult<Tensor> {
            let fp16 = layer.lora_a.kind() == Kind::Half;
            let (a, b) = if fp16 {
                (layer.lora_a.f_to_kind(Kind::Float)?, layer.lora_b.f_to_kind(Kind::Float)?)
            } else {
                (layer.lora_a.shallow_clone(), layer.lora_b.shallow_clone())
            };
            let mut lora_weight = if weight.dim() >= 3 {
                let r = a.size()[0];
                b.f_view([-1, r])?.f_mm(&a.f_view([r, -1])?)?.f_reshape(weight.size())?
            } else {
                b.f_matmul(&a)?
            };
            if fp16 {
                lora_weight = lora_weight.f_to_kind(Kind::Half)?;
            }
            Ok(weight_norm(&layer.kind, &weight.f_to_device(a.device())?, &lora_weight, layer.scaling)
                .detach())
        };
        tch::no_grad(f).map_err(PeftError::torch("initialising the DoRA magnitude"))
    }

    /// DoRA's init on a placed `layer`: the magnitude from [`Self::initial_magnitude`], registered as
    /// the trainable `lora_magnitude_vector.<adapter>.weight`.
    ///
    /// # Errors
    /// As [`Self::initial_magnitude`].
    pub(crate) fn create(layer: &LoraLayer, ctx: &LayerInit<'_, '_>) -> Result<Self> {
        let magnitude = Self::initial_magnitude(layer, &*ctx.base)?;
        let path = &ctx.path / "lora_magnitude_vector" / layer.adapter_name();
        Ok(Self::new(path.add("weight", magnitude, true)))
    }

    /// Drops the evaluation cache.
    pub fn clear_cache(&self) {
        if let Ok(mut c) = self.cache.lock() {
            *c = None;
        }
        if let Ok(mut c) = self.fused.lock() {
            *c = None;
        }
    }

    /// `BA` oriented like the weight (PEFT's `get_lora_weight`), and the detached weight norm; cached
    /// while `cacheable`.
    fn lora_weight_and_norm(
        &self,
        layer: &LoraLayer,
        weight: &Tensor,
        x_kind: Kind,
        cacheable: bool,
    ) -> (Tensor, Tensor) {
        let mut guard = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if !cacheable {
            *guard = None;
            if let Ok(mut f) = self.fused.lock() {
                *f = None;
            }
        } else if let Some((lw, n)) = guard.as_ref() {
            return (lw.shallow_clone(), n.shallow_clone());
        }
        let lora_weight = match &layer.kind {
            LoraKind::Linear { .. } => {
                // PEFT computes B(A(I))ᵀ through the modules rather than B @ A.
                let eye = Tensor::eye(layer.lora_a.size()[1], (layer.lora_a.kind(), layer.lora_a.device()));
                layer.lora_path(&eye).tr().to_kind(x_kind)
            }
            LoraKind::Embedding { .. } => layer.lora_a.tr().matmul(&layer.lora_b.tr()).tr(),
            LoraKind::Conv { .. } => {
                let r = layer.lora_a.size()[0];
                layer.lora_b.view([-1, r]).mm(&layer.lora_a.view([r, -1])).reshape(weight.size())
            }
        };
        let norm = weight_norm(&layer.kind, weight, &lora_weight.detach(), layer.scaling).detach();
        if cacheable {
            *guard = Some((lora_weight.shallow_clone(), norm.shallow_clone()));
        }
        (lora_weight, norm)
    }

    /// Inference on a frozen linear adapter, in place: with `g = m/‖W + sBA‖`,
    /// `y + (g − 1)·(y − b) + g·s·BA·x = g·y + (1 − g)·b + (g·s·B)·A·x`. `g·s·B` and `(1 − g)·b` are cached
    /// with the norm, so this costs one scaling pass over `y` plus the low-rank product accumulated into
    /// it — against five passes for the formula as PEFT evaluates it. `None` when `y` cannot be
    /// written in place (see [`crate::layer::add_low_rank_in_place`]).
    fn cached_linear(
        &self,
        layer: &LoraLayer,
        weighted: &dyn peft_core::layer::WeightLike,
        x: &Tensor,
        y: &Tensor,
    ) -> Option<Tensor> {
        if y.requires_grad() || x.requires_grad() || y.kind() != layer.lora_b.kind() {
            return None;
        }
        let (g, gb, bias_term) = {
            let mut fused = self.fused.lock().unwrap_or_else(|p| p.into_inner());
            if fused.is_none() {
                let weight = weighted.weight().to_kind(x.kind());
                let (_, norm) = self.lora_weight_and_norm(layer, &weight, x.kind(), true);
                let g = &self.magnitude / norm;
                let gb = layer.lora_b.f_mul(&(&g * layer.scaling).unsqueeze(1)).ok()?;
                let bias_term = weighted.bias().map(|b| (g.ones_like() - &g) * b);
                *fused = Some((g, gb, bias_term));
            }
            let (g, gb, bt) = fused.as_ref()?;
            (g.shallow_clone(), gb.shallow_clone(), bt.as_ref().map(Tensor::shallow_clone))
        };
        if !y.is_contiguous() {
            return None;
        }
        let mut y = y.shallow_clone();
        let _ = y.f_mul_(&g).ok()?;
        if let Some(bt) = &bias_term {
            let _ = y.f_add_(bt).ok()?;
        }
        crate::layer::add_low_rank_in_place(x, &layer.lora_a, &gb, &y)
    }

    /// The forward pass of one DoRA adapter: `y` is the output so far, `x` the input already cast to the
    /// adapter dtype.
    pub(crate) fn forward(
        &self,
        layer: &LoraLayer,
        base: &dyn BaseLayer,
        x: &Tensor,
        y: Tensor,
        ctx: &ForwardCtx<'_>,
    ) -> Tensor {
        let Some(weighted) = base.as_weighted() else {
            // Unreachable: creating a DoRA adapter requires a base with a weight.
            return y;
        };
        let frozen =
            !(self.magnitude.requires_grad() || layer.lora_a.requires_grad() || layer.lora_b.requires_grad());
        let cacheable = frozen && !ctx.train;
        let s = layer.scaling;
        match &layer.kind {
            LoraKind::Embedding { embed_scale, .. } => {
                let weight = weighted.weight();
                let (_, norm) = self.lora_weight_and_norm(layer, &weight, x.kind(), cacheable);
                let mag = &self.magnitude / norm;
                let mut dora = &mag * layer.lora_path(x) * s;
                if let Some(es) = embed_scale {
                    dora = &dora * Tensor::from(*es).to_kind(dora.kind());
                }
                &mag * y + dora
            }
            LoraKind::Linear { fan_in_fan_out } => {
                if cacheable && layer.plain_linear() {
                    if let Some(out) = self.cached_linear(layer, weighted, x, &y) {
                        return out;
                    }
                }
                let (x, base_result) = if layer.dropout > 0.0 && ctx.train {
                    (x.dropout(layer.dropout, true), None)
                } else {
                    (x.shallow_clone(), Some(y.shallow_clone()))
                };
                let weight = weighted.weight().to_kind(x.kind());
                let (_, norm) = self.lora_weight_and_norm(layer, &weight, x.kind(), cacheable);
                let mag = (&self.magnitude / norm).view([1, -1]);
                let lora_result = layer.lora_path(&x);
                let base_result = match base_result {
                    Some(r) => match weighted.bias() {
                        Some(b) => r - b,
                        None => r,
                    },
                    None => {
                        let w = if *fan_in_fan_out { weight.tr() } else { weight.shallow_clone() };
                        x.linear::<&Tensor>(&w, None)
                    }
                };
                let dora = (&mag - 1.0) * base_result + &mag * lora_result * s;
                y + dora
            }
            LoraKind::Conv { geometry } => {
                let (x, base_result) = if layer.dropout > 0.0 && ctx.train {
                    (x.dropout(layer.dropout, true), None)
                } else {
                    (x.shallow_clone(), Some(y.shallow_clone()))
                };
                let weight = weighted.weight();
                let (_, norm) = self.lora_weight_and_norm(layer, &weight, x.kind(), cacheable);
                let mag = &self.magnitude / norm;
                let base_result = match base_result {
                    Some(r) => match weighted.bias() {
                        Some(b) => {
                            let mut shape = vec![1i64, -1];
                            shape.extend(std::iter::repeat_n(1, r.dim().saturating_sub(2)));
                            r - b.view(shape.as_slice())
                        }
                        None => r,
                    },
                    None => geometry.conv(&x, &weight, None),
                };
                let dora = (&mag - 1.0) * base_result + &mag * layer.lora_path(&x) * s;
                y + dora
            }
        }
    }

    /// `m / norm` shaped to scale the weight in its storage layout.
    fn factor(&self, kind: &LoraKind, norm: &Tensor) -> TchResult<Tensor> {
        let f = self.magnitude.f_div(norm)?;
        match kind {
            LoraKind::Linear { fan_in_fan_out } => transpose(&f.f_view([-1, 1])?, *fan_in_fan_out),
            LoraKind::Embedding { .. } => f.f_view([1, -1]),
            LoraKind::Conv { geometry } => {
                let mut shape = vec![-1i64];
                shape.extend(std::iter::repeat_n(1, geometry.dims() + 1));
                f.f_view(shape.as_slice())
            }
        }
    }

    /// The merged weight `m/‖W₀ + ΔW‖ · (W + ΔW)`: `weight` is the current base weight, `reference` the
    /// base weight without other merged adapters, `delta` this adapter's delta weight.
    pub(crate) fn merged_weight(
        &mut self,
        kind: &LoraKind,
        weight: &Tensor,
        reference: &Tensor,
        delta: &Tensor,
    ) -> Result<Tensor> {
        let f = || -> TchResult<(Tensor, Tensor)> {
            let oriented = match kind {
                LoraKind::Linear { fan_in_fan_out } => transpose(delta, *fan_in_fan_out)?,
                LoraKind::Embedding { .. } => delta.f_tr()?,
                LoraKind::Conv { .. } => delta.shallow_clone(),
            };
            let norm = weight_norm(kind, reference, &oriented, 1.0).detach();
            let factor = self.factor(kind, &norm)?;
            let merged = factor.f_mul(&weight.f_add(delta)?)?.f_to_kind(weight.kind())?;
            Ok((norm, merged))
        };
        let (norm, merged) = tch::no_grad(f).map_err(PeftError::torch("merging a DoRA adapter"))?;
        self.merged_norm = Some(norm);
        Ok(merged)
    }

    /// The weight with this adapter's merge undone: `W / (m/‖·‖) − ΔW`.
    pub(crate) fn unmerged_weight(
        &mut self,
        kind: &LoraKind,
        weight: &Tensor,
        delta: &Tensor,
    ) -> Result<Tensor> {
        let Some(norm) = self.merged_norm.take() else {
            return Err(PeftError::Invalid("unmerging a DoRA adapter that was not merged".into()));
        };
        let f = || -> TchResult<Tensor> {
            let factor = self.factor(kind, &norm)?;
            weight.f_div(&factor)?.f_sub(delta)?.f_to_kind(weight.kind())
        };
        tch::no_grad(f).map_err(PeftError::torch("unmerging a DoRA adapter"))
    }
}
