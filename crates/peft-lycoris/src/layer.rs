//! The layer skeleton of PEFT's `LycorisLayer`: one adapter whose contribution is a dense delta weight
//! `ΔW` (built by the method from its factors), applied as `y = base(x) + op(x, ΔW)` with `op` the base
//! layer's own operation without bias (`F.linear`, or `F.conv1d` / `F.conv2d` with the base's stride,
//! padding, dilation and groups), and merged as `W += ΔW`.
//!
//! Training-time regularisation, drawn from libtorch's global generator in PEFT's order:
//!
//! * module dropout: every active adapter of every adapted layer draws `torch.rand(1)` in each training
//!   forward pass (even with `module_dropout = 0`) and is skipped unless the draw exceeds
//!   `module_dropout`;
//! * rank dropout (when `rank_dropout != 0`): `torch.rand(out)` after that, keeping row `o` of `ΔW` when
//!   its draw exceeds `rank_dropout`; the mask is rescaled by its mean (always for LoHa, with
//!   `rank_dropout_scale` for LoKr).

use peft_core::config::LayerInit;
use peft_core::layer::{
    merge_delta, unmerge_delta, BaseLayer, ConvGeometry, ForwardCtx, MergeCtx, TunerLayer,
};
use peft_core::{PeftError, Result};
use std::fmt;
use tch::{Device, Kind, Tensor};

/// PEFT's message for a layer class no LyCORIS method adapts.
pub const SUPPORTED_LAYERS_HINT: &str = "currently only adapters for Conv2d, Conv1d, Linear are supported";

/// The layer classes LyCORIS methods adapt (`nn.Linear`, `nn.Conv1d`, `nn.Conv2d`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LycorisKind {
    /// `nn.Linear`: weight `(out, in)`.
    Linear,
    /// `nn.Conv1d` (one spatial dimension) or `nn.Conv2d` (two): weight `(out, in / groups, k…)`.
    Conv(ConvGeometry),
}

/// What a LyCORIS adapter needs to know about its base layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LycorisTarget {
    /// The layer class.
    pub kind: LycorisKind,
    /// Input features (input channels of a convolution, all groups).
    pub in_features: i64,
    /// Output features (output channels).
    pub out_features: i64,
    /// The base weight's shape, which `ΔW` is reshaped to.
    pub weight_shape: Vec<i64>,
}

impl LycorisTarget {
    /// Reads the base of `ctx`, refusing what PEFT's `_create_new_module` refuses: anything but dense
    /// `nn.Linear`, `nn.Conv1d` and `nn.Conv2d` (GPT-2's `Conv1D`, embeddings, `Conv3d`), and quantized
    /// linears, whose packed storage PEFT's LyCORIS layers would use as if it were the weight.
    ///
    /// # Errors
    /// [`PeftError::UnsupportedLayer`] naming the module, its class and the method.
    pub fn of(ctx: &LayerInit<'_, '_>, peft_type: &str) -> Result<Self> {
        let base = &*ctx.base;
        if let Some(lin) = base.as_linear() {
            if lin.fan_in_fan_out() {
                return Err(ctx.unsupported(peft_type, SUPPORTED_LAYERS_HINT));
            }
            if !lin.weight_is_storage() {
                return Err(ctx.unsupported(
                    peft_type,
                    "quantized linear layers are not supported (PEFT's LyCORIS layers would treat the packed \
                     storage as the weight)",
                ));
            }
            let (i, o) = (lin.in_features(), lin.out_features());
            return Ok(Self {
                kind: LycorisKind::Linear,
                in_features: i,
                out_features: o,
                weight_shape: vec![o, i],
            });
        }
        if let Some(conv) = base.as_conv() {
            let g = conv.geometry();
            if matches!(g.dims(), 1 | 2) {
                return Ok(Self {
                    kind: LycorisKind::Conv(g.clone()),
                    in_features: conv.in_channels(),
                    out_features: conv.out_channels(),
                    weight_shape: conv.weight().size(),
                });
            }
        }
        Err(ctx.unsupported(peft_type, SUPPORTED_LAYERS_HINT))
    }

    /// The convolution geometry (`None` for linear layers).
    pub fn geometry(&self) -> Option<&ConvGeometry> {
        match &self.kind {
            LycorisKind::Linear => None,
            LycorisKind::Conv(g) => Some(g),
        }
    }

    /// PEFT's class name of the adapted layer: `Linear`, `Conv1d` or `Conv2d`.
    pub fn class_name(&self) -> &'static str {
        match &self.kind {
            LycorisKind::Linear => "Linear",
            LycorisKind::Conv(g) if g.dims() == 1 => "Conv1d",
            LycorisKind::Conv(_) => "Conv2d",
        }
    }
}

/// The per-adapter scalars of PEFT's `LycorisLayer` (`r`, `alpha`, `scaling`, `rank_dropout`,
/// `rank_dropout_scale`, `module_dropout`).
#[derive(Clone, Debug, PartialEq)]
pub struct LycorisParams {
    /// The rank (after `rank_pattern`).
    pub r: i64,
    /// Alpha (after `alpha_pattern`).
    pub alpha: f64,
    /// `alpha / r`.
    pub scaling: f64,
    /// Probability of dropping an output row of `ΔW` in training.
    pub rank_dropout: f64,
    /// Whether the rank-dropout mask is divided by its mean.
    pub rank_dropout_scale: bool,
    /// Probability of skipping the adapter in a training forward pass.
    pub module_dropout: f64,
}

impl LycorisParams {
    /// The scalars for rank `r` and `alpha` (`scaling = alpha / r`, as Python's true division).
    pub fn new(r: i64, alpha: f64, rank_dropout: f64, module_dropout: f64, rank_dropout_scale: bool) -> Self {
        Self { r, alpha, scaling: alpha / r as f64, rank_dropout, rank_dropout_scale, module_dropout }
    }
}

/// The dtype PEFT builds the rank-dropout mask in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MaskKind {
    /// The delta weight's dtype (LoHa: `.to(weight.dtype)`).
    Weight,
    /// Always f32 (LoKr: `.float()`).
    Float,
}

/// The method-specific part of a LyCORIS adapter: its factors and how they make `ΔW`.
pub trait LycorisAdapter: fmt::Debug + Send + 'static {
    /// The method (`"LOHA"`).
    const PEFT_TYPE: &'static str;
    /// The prefix of PEFT's layer class names (`"loha"` in `loha.Linear`).
    const CLASS_PREFIX: &'static str;
    /// The dtype of the rank-dropout mask.
    const MASK_KIND: MaskKind;

    /// The factors as `(PEFT attribute, tensor)`, in PEFT's state-dict order.
    fn tensors(&self) -> Vec<(&'static str, &Tensor)>;

    /// `ΔW` as PEFT's `get_delta_weight` builds it before the reshape to the base weight shape and the
    /// rank dropout, with `scaling` applied.
    fn delta(&self, scaling: f64) -> Tensor;
}

/// Moves a freshly initialised (CPU, f32) factor to the base layer's device and dtype and registers it
/// as `<attr>.<adapter>` in the adapter var store (PEFT's ParameterDict entry).
///
/// # Errors
/// A base without a weight, or a libtorch failure.
pub fn register(ctx: &LayerInit<'_, '_>, attr: &str, t: Tensor) -> Result<Tensor> {
    let placed = ctx.place(t)?;
    Ok((&ctx.path / attr).add(ctx.adapter_name, placed, true))
}

/// An uninitialised CPU f32 tensor (`torch.empty`).
///
/// # Errors
/// A libtorch failure.
pub fn empty(shape: &[i64]) -> Result<Tensor> {
    Tensor::f_empty(shape, (Kind::Float, Device::Cpu))
        .map_err(PeftError::torch("allocating a LyCORIS factor"))
}

/// `nn.init.kaiming_uniform_(t, a=math.sqrt(5))`, the init of every LyCORIS factor that is not zero.
///
/// # Errors
/// A libtorch failure.
pub fn kaiming(t: &mut Tensor) -> Result<()> {
    peft_core::init::kaiming_uniform_(t, 5f64.sqrt())
}

/// One LyCORIS adapter on one layer: the shared skeleton around a method's factors `A`.
#[derive(Debug)]
pub struct LycorisLayer<A: LycorisAdapter> {
    adapter: String,
    module: String,
    target: LycorisTarget,
    params: LycorisParams,
    factors: A,
}

impl<A: LycorisAdapter> LycorisLayer<A> {
    /// Wraps the registered factors of adapter `ctx.adapter_name` on `ctx.module_name`.
    pub fn new(ctx: &LayerInit<'_, '_>, target: LycorisTarget, params: LycorisParams, factors: A) -> Self {
        Self {
            adapter: ctx.adapter_name.to_string(),
            module: ctx.module_name.to_string(),
            target,
            params,
            factors,
        }
    }

    /// The method's factors.
    pub fn factors(&self) -> &A {
        &self.factors
    }

    /// The rank, alpha, scaling and dropout probabilities.
    pub fn params(&self) -> &LycorisParams {
        &self.params
    }

    /// The base layer as the adapter sees it.
    pub fn target(&self) -> &LycorisTarget {
        &self.target
    }

    /// PEFT's `get_delta_weight`: `ΔW` in the base weight's shape, with rank dropout when
    /// `apply_rank_dropout` (drawing `torch.rand(out)`).
    pub fn delta_weight(&self, apply_rank_dropout: bool) -> Tensor {
        let weight = self.factors.delta(self.params.scaling).reshape(self.target.weight_shape.as_slice());
        if !apply_rank_dropout {
            return weight;
        }
        let size = weight.size();
        let kind = weight.kind();
        let mask_kind = match A::MASK_KIND {
            MaskKind::Weight => kind,
            MaskKind::Float => Kind::Float,
        };
        let mut view = vec![-1i64];
        view.extend(std::iter::repeat_n(1, size.len().saturating_sub(1)));
        let mut drop = Tensor::rand([size[0]], (Kind::Float, Device::Cpu))
            .gt(self.params.rank_dropout)
            .to_kind(mask_kind)
            .view(view.as_slice())
            .to_device(weight.device());
        if A::MASK_KIND == MaskKind::Weight || self.params.rank_dropout_scale {
            drop = &drop / drop.mean(None::<Kind>);
        }
        // PEFT multiplies in place: the result keeps the delta's dtype.
        let out = weight * drop;
        if out.kind() != kind {
            out.to_kind(kind)
        } else {
            out
        }
    }
}

impl<A: LycorisAdapter> TunerLayer for LycorisLayer<A> {
    fn peft_type(&self) -> &'static str {
        A::PEFT_TYPE
    }

    fn named_tensors(&self) -> Vec<(String, Tensor)> {
        self.factors
            .tensors()
            .into_iter()
            .map(|(attr, t)| (format!("{attr}.{}", self.adapter), t.shallow_clone()))
            .collect()
    }

    fn transform_output(&self, _base: &dyn BaseLayer, x: &Tensor, y: Tensor, ctx: &ForwardCtx<'_>) -> Tensor {
        if ctx.train {
            let draw = Tensor::rand([1], (Kind::Float, Device::Cpu)).gt(self.params.module_dropout);
            if draw.int64_value(&[0]) == 0 {
                return y;
            }
        }
        let delta = self.delta_weight(ctx.train && self.params.rank_dropout != 0.0);
        let input = if x.kind() != delta.kind() { x.to_kind(delta.kind()) } else { x.shallow_clone() };
        let out = match &self.target.kind {
            LycorisKind::Linear => input.linear(&delta, None::<Tensor>),
            LycorisKind::Conv(g) => g.conv(&input, &delta, None),
        };
        y + out
    }

    /// `weight.data += get_delta_weight(adapter)` (on a copy checked for NaN/inf with `safe`).
    fn merge(&mut self, base: &mut dyn BaseLayer, ctx: &MergeCtx<'_>) -> Result<()> {
        let delta = tch::no_grad(|| self.delta_weight(false));
        merge_delta(base, &delta, ctx.safe, &self.adapter, &self.module)
    }

    /// `weight.data -= get_delta_weight(adapter)`.
    fn unmerge(&mut self, base: &mut dyn BaseLayer) -> Result<()> {
        let delta = tch::no_grad(|| self.delta_weight(false));
        unmerge_delta(base, &delta, &self.module)
    }

    fn describe(&self) -> String {
        format!(
            "{}.{}(in_features={}, out_features={}, r={})",
            A::CLASS_PREFIX,
            self.target.class_name(),
            self.target.in_features,
            self.target.out_features,
            self.params.r
        )
    }
}
