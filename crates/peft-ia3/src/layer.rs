//! (IA)³ on one layer: a learned vector that rescales the layer's output (or, for feed-forward layers,
//! its input).
//!
//! * Linear / GPT-2 `Conv1D`: `ia3_l` is `(out, 1)` and the output is `base(x) · ia3_l` per output
//!   feature; on a feed-forward layer it is `(1, in)` and the output is `base(x · ia3_l)`.
//! * `Conv2d` / `Conv3d`: `ia3_l` is `(1, C, 1, …)` with `C` the output channels (or the input channels on
//!   a feed-forward layer), broadcast over the spatial dimensions.
//!
//! Several active adapters act together, as in PEFT: their vectors are multiplied first and applied once.
//! Merging multiplies the weight (and, for output scaling, the bias) by the vector; unmerging divides by
//! `vector + 1e-8`, so it is inexact, as PEFT warns.

use crate::config::{Ia3Config, PEFT_TYPE};
use peft_core::config::LayerInit;
use peft_core::layer::{all_finite, BaseLayer, ForwardCtx, MergeCtx, TunerLayer, WeightLike};
use peft_core::{PeftError, Result};
use tch::{Kind, Tensor};

/// The layer classes (IA)³ adapts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ia3Kind {
    /// `nn.Linear`, or GPT-2's `Conv1D` with `fan_in_fan_out` (weight stored `(in, out)`).
    Linear {
        /// The weight is stored `(in, out)`.
        fan_in_fan_out: bool,
    },
    /// `nn.Conv2d` (`dims` 2) or `nn.Conv3d` (`dims` 3).
    Conv {
        /// Spatial dimensions.
        dims: usize,
        /// Convolution groups.
        groups: i64,
    },
}

/// One (IA)³ adapter on one layer (PEFT's `ia3.Linear`, `ia3.Conv2d`, `ia3.Conv3d`).
#[derive(Debug)]
pub struct Ia3Layer {
    adapter: String,
    module: String,
    kind: Ia3Kind,
    is_feedforward: bool,
    in_features: i64,
    out_features: i64,
    ia3_l: Tensor,
}

impl Ia3Layer {
    /// Creates the adapter as PEFT's `update_layer` does: draws `torch.randn` of the vector's shape (so
    /// the global RNG advances as in PEFT), sets it to 1 with `init_ia3_weights`, then moves it to the base
    /// layer's device and dtype. A layer that already has (IA)³ adapters keeps its feed-forward flag (PEFT
    /// decides it when the layer is first wrapped).
    ///
    /// # Errors
    /// [`PeftError::UnsupportedLayer`] for anything but linear layers, `Conv1D`, `Conv2d` and `Conv3d`.
    pub fn create(config: &mut Ia3Config, ctx: &mut LayerInit<'_, '_>) -> Result<Self> {
        let existing = ctx
            .siblings
            .values()
            .find_map(|t| t.as_any().downcast_ref::<Ia3Layer>())
            .map(|l| l.is_feedforward);
        let is_feedforward = match existing {
            Some(ff) => ff,
            None => config.is_feedforward(ctx.module_name)?,
        };
        let (kind, in_features, out_features) = if let Some(lin) = ctx.base.as_linear() {
            let fifo = lin.fan_in_fan_out();
            let (i, o) = (lin.in_features(), lin.out_features());
            ctx.match_fan_in_fan_out(&mut config.fan_in_fan_out, fifo);
            (Ia3Kind::Linear { fan_in_fan_out: fifo }, i, o)
        } else if let Some(conv) = ctx.base.as_conv().filter(|c| matches!(c.geometry().dims(), 2 | 3)) {
            let g = conv.geometry();
            (Ia3Kind::Conv { dims: g.dims(), groups: g.groups }, conv.in_channels(), conv.out_channels())
        } else {
            return Err(ctx.unsupported(
                PEFT_TYPE,
                "only `torch.nn.Linear`, `torch.nn.Conv2d`, `torch.nn.Conv3d` and `Conv1D` are supported",
            ));
        };
        let shape: Vec<i64> = match &kind {
            Ia3Kind::Linear { .. } if is_feedforward => vec![1, in_features],
            Ia3Kind::Linear { .. } => vec![out_features, 1],
            Ia3Kind::Conv { dims, .. } => {
                let mut s = vec![1, if is_feedforward { in_features } else { out_features }];
                s.extend(std::iter::repeat_n(1, *dims));
                s
            }
        };
        let mut weight = Tensor::f_randn(&shape, (Kind::Float, tch::Device::Cpu))
            .map_err(PeftError::torch("initialising ia3_l"))?;
        if config.init_ia3_weights {
            let _ = weight.f_fill_(1.0).map_err(PeftError::torch("initialising ia3_l"))?;
        }
        let weight = ctx.place(weight)?;
        let adapter = ctx.adapter_name.to_string();
        let ia3_l = (&ctx.path / "ia3_l").add(&adapter, weight, true);
        Ok(Self {
            adapter,
            module: ctx.module_name.to_string(),
            kind,
            is_feedforward,
            in_features,
            out_features,
            ia3_l,
        })
    }

    /// The learned vector (`ia3_l`).
    pub fn vector(&self) -> &Tensor {
        &self.ia3_l
    }

    /// Whether the vector scales the input (a feed-forward layer) rather than the output.
    pub fn is_feedforward(&self) -> bool {
        self.is_feedforward
    }

    /// The layer class.
    pub fn kind(&self) -> &Ia3Kind {
        &self.kind
    }

    /// The product of the vectors of every active (IA)³ adapter on the layer (flattened for linear
    /// layers) and the dtype of the last, as PEFT's forward builds `ia3_scaling` — or `None` when another
    /// active adapter comes first (it applies the product for all of them).
    fn combined_scaling(&self, ctx: &ForwardCtx<'_>) -> Option<(Tensor, Kind)> {
        let group = ctx.active_group(self)?;
        let flat = |t: &Tensor| match self.kind {
            Ia3Kind::Linear { .. } => t.flatten(0, -1),
            Ia3Kind::Conv { .. } => t.shallow_clone(),
        };
        let mut scaling = flat(&group[0].ia3_l) * 1.0;
        for other in &group[1..] {
            scaling *= flat(&other.ia3_l);
        }
        let kind = group[group.len() - 1].ia3_l.kind();
        Some((scaling, kind))
    }

    /// The vector laid out against the weight (PEFT's `transpose(ia3_l, fan_in_fan_out)` for linear
    /// layers, `_get_ia3_scaling_for_weight` for convolutions).
    fn weight_scaling(&self) -> Tensor {
        let v = self.ia3_l.detach();
        match &self.kind {
            Ia3Kind::Linear { fan_in_fan_out } => {
                if *fan_in_fan_out {
                    v.transpose(0, 1)
                } else {
                    v
                }
            }
            Ia3Kind::Conv { groups, .. } => {
                if !self.is_feedforward {
                    return v.transpose(0, 1);
                }
                if *groups == 1 {
                    return v;
                }
                let g = *groups;
                let (in_pg, out_pg) = (self.in_features / g, self.out_features / g);
                let spatial: Vec<i64> = v.size()[2..].to_vec();
                let mut shape = vec![g, 1, in_pg];
                shape.extend(&spatial);
                let mut expanded = vec![g, out_pg, in_pg];
                expanded.extend(&spatial);
                let mut out_shape = vec![self.out_features, in_pg];
                out_shape.extend(&spatial);
                v.reshape(shape.as_slice()).expand(expanded.as_slice(), false).reshape(out_shape.as_slice())
            }
        }
    }

    fn weighted<'b>(&self, base: &'b mut dyn BaseLayer) -> Result<&'b mut dyn WeightLike> {
        let module = self.module.clone();
        let w = base.as_weighted_mut().ok_or_else(|| {
            PeftError::Invalid(format!("`{module}`: the base layer has no weight to merge (IA)³ into"))
        })?;
        if !w.weight_is_storage() {
            return Err(PeftError::Invalid(format!(
                "Cannot merge ia3 layers when the model is loaded in 4-bit or 8-bit mode (`{module}`)"
            )));
        }
        Ok(w)
    }

    fn non_finite(&self) -> PeftError {
        PeftError::NonFiniteMerge { adapter: self.adapter.clone(), module: self.module.clone() }
    }
}

impl TunerLayer for Ia3Layer {
    fn peft_type(&self) -> &'static str {
        PEFT_TYPE
    }

    fn named_tensors(&self) -> Vec<(String, Tensor)> {
        vec![(format!("ia3_l.{}", self.adapter), self.ia3_l.shallow_clone())]
    }

    fn transform_input(&self, base: &dyn BaseLayer, x: &Tensor, ctx: &ForwardCtx<'_>) -> Option<Tensor> {
        if !self.is_feedforward {
            return None;
        }
        let (scaling, kind) = self.combined_scaling(ctx)?;
        let scaled = x.to_kind(kind) * scaling;
        Some(match self.kind {
            Ia3Kind::Linear { .. } => scaled.to_kind(x.kind()),
            Ia3Kind::Conv { .. } => {
                let base_kind = base.as_weighted().map_or(x.kind(), |w| w.compute_kind());
                scaled.to_kind(base_kind)
            }
        })
    }

    fn transform_output(
        &self,
        _base: &dyn BaseLayer,
        _x: &Tensor,
        y: Tensor,
        ctx: &ForwardCtx<'_>,
    ) -> Tensor {
        if self.is_feedforward {
            return y;
        }
        let Some((scaling, kind)) = self.combined_scaling(ctx) else { return y };
        match self.kind {
            Ia3Kind::Linear { .. } => {
                let k = y.kind();
                (y * scaling).to_kind(k)
            }
            Ia3Kind::Conv { .. } => y.to_kind(kind) * scaling,
        }
    }

    fn merge(&mut self, base: &mut dyn BaseLayer, ctx: &MergeCtx<'_>) -> Result<()> {
        let scaling = self.weight_scaling();
        let vector = self.ia3_l.detach();
        let is_ff = self.is_feedforward;
        let is_conv = matches!(self.kind, Ia3Kind::Conv { .. });
        let w = self.weighted(base)?;
        let weight = w.weight();
        let kind = weight.kind();
        let merged = tch::no_grad(|| weight.f_mul(&scaling).and_then(|t| t.f_to_kind(kind)))
            .map_err(PeftError::torch("merging an (IA)³ adapter"))?;
        let bias = if is_ff { None } else { w.bias() };
        let new_bias = match &bias {
            Some(b) => {
                let target = if is_conv { kind } else { b.kind() };
                Some(
                    tch::no_grad(|| {
                        b.f_mul(&vector.reshape(b.size().as_slice())).and_then(|t| t.f_to_kind(target))
                    })
                    .map_err(PeftError::torch("merging an (IA)³ adapter into the bias"))?,
                )
            }
            None => None,
        };
        if ctx.safe {
            let ok = all_finite(&merged)? && new_bias.as_ref().map_or(Ok(true), all_finite)?;
            if !ok {
                return Err(self.non_finite());
            }
        }
        let w = self.weighted(base)?;
        w.set_weight(&merged)?;
        if let (Some(mut b), Some(nb)) = (bias, new_bias) {
            tch::no_grad(|| b.f_copy_(&nb)).map_err(PeftError::torch("writing a merged bias"))?;
        }
        Ok(())
    }

    fn unmerge(&mut self, base: &mut dyn BaseLayer) -> Result<()> {
        log::warn!("Unmerge result can be inaccurate for (IA)^3.");
        let scaling = self.weight_scaling();
        let vector = self.ia3_l.detach();
        let is_ff = self.is_feedforward;
        let w = self.weighted(base)?;
        let weight = w.weight();
        let kind = weight.kind();
        let restored = tch::no_grad(|| weight.f_div(&(&scaling + 1e-8)).and_then(|t| t.f_to_kind(kind)))
            .map_err(PeftError::torch("unmerging an (IA)³ adapter"))?;
        w.set_weight(&restored)?;
        if let Some(mut b) = if is_ff { None } else { w.bias() } {
            let bk = b.kind();
            let nb = tch::no_grad(|| {
                b.f_div(&(vector.reshape(b.size().as_slice()) + 1e-8)).and_then(|t| t.f_to_kind(bk))
            })
            .map_err(PeftError::torch("unmerging an (IA)³ adapter from the bias"))?;
            tch::no_grad(|| b.f_copy_(&nb)).map_err(PeftError::torch("writing an unmerged bias"))?;
        }
        Ok(())
    }

    fn describe(&self) -> String {
        let class = match self.kind {
            Ia3Kind::Linear { .. } => "Linear",
            Ia3Kind::Conv { dims: 2, .. } => "Conv2d",
            Ia3Kind::Conv { .. } => "Conv3d",
        };
        format!(
            "{class}(in_features={}, out_features={}, is_feedforward={})",
            self.in_features,
            self.out_features,
            if self.is_feedforward { "True" } else { "False" }
        )
    }
}
