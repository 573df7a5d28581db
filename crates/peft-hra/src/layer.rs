//! HRA on one layer: the weight multiplied on the input side by a product of Householder reflections.
//!
//! The parameter `hra_u.<adapter>` is `(D, r)`: `r` vectors of the layer's input dimension `D`
//! (`in_features` for `nn.Linear`, `in_channels · k²` for a `k × k` `nn.Conv2d`). From them,
//! `get_delta_weight` builds the `(D, D)` orthogonal matrix
//!
//! * `H = (I − 2û₁û₁ᵀ)(I − 2û₂û₂ᵀ)…(I − 2û_rû_rᵀ)` with `û_i = u_i / ‖u_i‖`, accumulated left to right as
//!   `H ← H − ((2H)·û_i)·û_iᵀ` (unmerging takes the reflections in reverse order, which inverts `H`);
//! * with `apply_GS`: the vectors orthonormalised by classical Gram–Schmidt (`q_i = u_i − Σ_j (q_jᵀu_i)·q_j`,
//!   normalised) into `Q` `(D, r)`, and `H = I − (2Q)·Qᵀ` (its own inverse).
//!
//! Forward (not merged): `H_all = I·H_a·H_b…` over the active HRA adapters in activation order (starting
//! from an fp32 identity, each product in the next adapter's dtype), then `W' = W·H_all` with the base
//! weight viewed `(out, D)` and cast to `H_all`'s dtype, and the layer runs with `W'`:
//!
//! * Linear: `y = x·W'ᵀ + b`, `x` `(…, in)` → `y` `(…, out)`;
//! * Conv2d: `y = conv2d(x, W'.view(out, in, k, k), b, stride = stride[0], padding = padding[0])`,
//!   `x` `(N, in, H, W)` — PEFT passes only the first stride and padding entries (applied to both spatial
//!   dimensions) and no dilation, which is reproduced (a warning says so for layers where it matters).
//!
//! The input and bias are cast to `H_all`'s dtype and the result back to the input's dtype. Merging
//! writes `W·H` into the base weight (viewed `(out, D)`), unmerging `W·H_reversed`.

use crate::config::{HraConfig, PEFT_TYPE};
use peft_core::config::LayerInit;
use peft_core::layer::{all_finite, replace_weight, BaseLayer, ForwardCtx, MergeCtx, TunerLayer, WeightLike};
use peft_core::{PeftError, Result};
use tch::{Device, Kind, Tensor};

/// PEFT's message for the layer classes HRA does not adapt.
const UNSUPPORTED: &str = "Currently, only `torch.nn.Linear` and `torch.nn.Conv2d` are supported.";

/// The layer classes HRA adapts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HraKind {
    /// `nn.Linear`.
    Linear,
    /// `nn.Conv2d` with a square kernel and one group.
    Conv2d {
        /// Kernel height = width.
        kernel: i64,
        /// The stride PEFT's forward uses (`stride[0]`, on both dimensions).
        stride: i64,
        /// The padding PEFT's forward uses (`padding[0]`, on both dimensions).
        padding: i64,
    },
}

/// One HRA adapter on one layer (PEFT's `HRALinear`, `HRAConv2d`).
#[derive(Debug)]
pub struct HraLayer {
    adapter: String,
    module: String,
    kind: HraKind,
    in_features: i64,
    out_features: i64,
    /// The reflected dimension `D`.
    dim: i64,
    r: i64,
    apply_gs: bool,
    hra_u: Tensor,
}

impl HraLayer {
    /// Creates the adapter as PEFT's `update_layer` does: `hra_u` `(D, r)` drawn on the CPU in f32 —
    /// with `init_weights` and an even `r`, `r/2` Kaiming-uniform columns each repeated twice (so the
    /// reflections cancel pairwise and `H = I`); otherwise (`init_weights=false`, or an odd `r`, with
    /// PEFT's warning) all `r` columns Kaiming-uniform — then moved to the base layer's device and dtype.
    ///
    /// # Errors
    /// [`PeftError::UnsupportedLayer`] for anything but dense `nn.Linear` and `nn.Conv2d` (one group,
    /// square kernel): GPT-2's `Conv1D`, embeddings, 1-d/3-d convolutions and quantized linears included.
    pub fn create(config: &HraConfig, ctx: &mut LayerInit<'_, '_>) -> Result<Self> {
        let (kind, in_features, out_features, dim) = if let Some(lin) = ctx.base.as_linear() {
            if lin.fan_in_fan_out() {
                return Err(ctx.unsupported(PEFT_TYPE, UNSUPPORTED));
            }
            if !lin.weight_is_storage() {
                return Err(ctx.unsupported(
                    PEFT_TYPE,
                    "HRA on quantized linear layers is not supported (PEFT's HRA multiplies the packed \
                     quantized weight and fails)",
                ));
            }
            let (i, o) = (lin.in_features(), lin.out_features());
            (HraKind::Linear, i, o, i)
        } else if let Some(conv) = ctx.base.as_conv().filter(|c| c.geometry().dims() == 2) {
            let g = conv.geometry().clone();
            let (i, o) = (conv.in_channels(), conv.out_channels());
            if g.groups > 1 {
                return Err(ctx.unsupported(
                    PEFT_TYPE,
                    &format!("HRA does not support Conv2d layers with groups > 1 (got groups={}).", g.groups),
                ));
            }
            let k = g.kernel_size[0];
            if g.kernel_size[1] != k {
                return Err(ctx.unsupported(
                    PEFT_TYPE,
                    &format!(
                        "HRA on a Conv2d with a non-square kernel {:?} is not supported (PEFT sizes the \
                         reflection from kernel_size[0]² and fails reshaping the weight)",
                        g.kernel_size
                    ),
                ));
            }
            let (stride, padding) = (g.stride[0], g.padding[0]);
            if g.stride.iter().any(|&s| s != stride)
                || g.padding.iter().any(|&p| p != padding)
                || g.dilation.iter().any(|&d| d != 1)
            {
                let message = format!(
                    "`{}`: PEFT's HRA Conv2d forward uses stride {stride} and padding {padding} on both \
                     dimensions and no dilation (the layer has stride {:?}, padding {:?}, dilation {:?}); \
                     the unmerged adapter computes that, as in PEFT, while a merged one uses the layer's own \
                     geometry",
                    ctx.module_name, g.stride, g.padding, g.dilation
                );
                ctx.warn(message);
            }
            (HraKind::Conv2d { kernel: k, stride, padding }, i, o, i * k * k)
        } else {
            return Err(ctx.unsupported(PEFT_TYPE, UNSUPPORTED));
        };
        let r = config.r;
        peft_core::config::require_positive("r", r)?;
        let opts = (Kind::Float, Device::Cpu);
        let u = if config.init_weights && r % 2 == 0 {
            let mut half =
                Tensor::f_zeros([dim, r / 2], opts).map_err(PeftError::torch("initialising hra_u"))?;
            peft_core::init::kaiming_uniform_(&mut half, 5f64.sqrt())?;
            half.f_repeat_interleave_self_int(2, Some(1), None::<i64>)
                .map_err(PeftError::torch("initialising hra_u"))?
        } else {
            if config.init_weights {
                ctx.warn("The symmetric initialization can NOT be performed when r is odd!");
            }
            let mut u = Tensor::f_empty([dim, r], opts).map_err(PeftError::torch("initialising hra_u"))?;
            peft_core::init::kaiming_uniform_(&mut u, 5f64.sqrt())?;
            u
        };
        let u = ctx.place(u)?;
        let adapter = ctx.adapter_name.to_string();
        let hra_u = (&ctx.path / "hra_u").add(&adapter, u, true);
        Ok(Self {
            adapter,
            module: ctx.module_name.to_string(),
            kind,
            in_features,
            out_features,
            dim,
            r,
            apply_gs: config.apply_gs,
            hra_u,
        })
    }

    /// The Householder vectors (`hra_u.<adapter>`, `(D, r)`).
    pub fn vectors(&self) -> &Tensor {
        &self.hra_u
    }

    /// The layer class.
    pub fn kind(&self) -> &HraKind {
        &self.kind
    }

    /// The number of reflections.
    pub fn r(&self) -> i64 {
        self.r
    }

    /// Whether the vectors are orthonormalised first (`apply_GS`).
    pub fn apply_gs(&self) -> bool {
        self.apply_gs
    }

    /// `get_delta_weight`: the `(D, D)` orthogonal matrix the weight is multiplied by (`reverse`: the
    /// reflections in reverse order, its inverse), in `hra_u`'s dtype, differentiable in `hra_u`.
    pub fn delta_weight(&self, reverse: bool) -> Tensor {
        let u = &self.hra_u;
        let n = u.size()[0];
        let eye = Tensor::eye(n, (u.kind(), u.device()));
        if self.apply_gs {
            let first = u.select(1, 0);
            let norm = first.norm();
            let mut q: Vec<Tensor> = vec![(&first / norm).view([-1, 1])];
            for i in 1..self.r {
                let mut ui = u.select(1, i).view([-1, 1]);
                for qj in q.iter().take(i as usize) {
                    ui = &ui - qj.tr().matmul(&ui) * qj;
                }
                let norm = ui.norm();
                q.push((&ui / norm).view([-1, 1]));
            }
            let q = Tensor::cat(&q, 1);
            eye - (&q * 2).matmul(&q.tr())
        } else {
            let norms = u.norm_scalaropt_dim(2, [0], false);
            let unit = u / norms;
            let mut h = eye;
            let order: Vec<i64> = if reverse { (0..self.r).rev().collect() } else { (0..self.r).collect() };
            for i in order {
                let ui = unit.select(1, i).view([-1, 1]);
                h = &h - (&h * 2).matmul(&ui).matmul(&ui.tr());
            }
            h
        }
    }

    /// The active HRA adapters of the layer that act in this call, in activation order — or `None` when
    /// another one comes first (it computes the layer for all of them).
    fn chain<'a>(&'a self, ctx: &ForwardCtx<'a>) -> Option<Vec<&'a HraLayer>> {
        ctx.active_group(self)
    }

    /// `(out, D)`: the weight as `H` multiplies it.
    fn flat(&self, weight: &Tensor) -> std::result::Result<Tensor, tch::TchError> {
        match self.kind {
            HraKind::Conv2d { .. } => weight.f_view([self.out_features, self.dim]),
            HraKind::Linear => Ok(weight.shallow_clone()),
        }
    }

    fn unflat(&self, t: Tensor) -> std::result::Result<Tensor, tch::TchError> {
        match self.kind {
            HraKind::Conv2d { kernel, .. } => t.f_view([self.out_features, self.in_features, kernel, kernel]),
            HraKind::Linear => Ok(t),
        }
    }

    fn weighted<'b>(&self, base: &'b mut dyn BaseLayer) -> Result<&'b mut dyn WeightLike> {
        let module = self.module.clone();
        base.as_weighted_mut().ok_or_else(|| {
            PeftError::Invalid(format!("`{module}`: the base layer has no weight to merge HRA into"))
        })
    }

    /// `W ← (W_(out, D) · M)` in `M`'s dtype, cast back to the weight's dtype; refused when `check` finds a
    /// non-finite value (nothing is written then).
    fn multiply_weight(&self, base: &mut dyn BaseLayer, m: &Tensor, check: bool) -> Result<()> {
        let w = self.weighted(base)?;
        let weight = w.weight();
        let orig_kind = weight.kind();
        let product = tch::no_grad(|| -> std::result::Result<Tensor, tch::TchError> {
            let flat = self.flat(&weight)?;
            let flat = if flat.kind() != m.kind() { flat.f_to_kind(m.kind())? } else { flat };
            self.unflat(flat.f_mm(m)?)
        })
        .map_err(PeftError::torch("multiplying the weight by HRA's reflections"))?;
        if check && !all_finite(&product)? {
            return Err(PeftError::NonFiniteMerge {
                adapter: self.adapter.clone(),
                module: self.module.clone(),
            });
        }
        let value = tch::no_grad(|| product.f_to_kind(orig_kind))
            .map_err(PeftError::torch("casting a merged weight"))?;
        replace_weight(w, &value)
    }
}

impl TunerLayer for HraLayer {
    fn peft_type(&self) -> &'static str {
        PEFT_TYPE
    }

    fn named_tensors(&self) -> Vec<(String, Tensor)> {
        vec![(format!("hra_u.{}", self.adapter), self.hra_u.shallow_clone())]
    }

    fn replace_base(&self, base: &dyn BaseLayer, x: &Tensor, ctx: &ForwardCtx<'_>) -> Option<Tensor> {
        let chain = self.chain(ctx)?;
        let weighted = base.as_weighted()?;
        let previous = x.kind();
        let mut new_weight = Tensor::eye(self.dim, (Kind::Float, x.device()));
        for layer in &chain {
            let delta = layer.delta_weight(false);
            if new_weight.kind() != delta.kind() {
                new_weight = new_weight.to_kind(delta.kind());
            }
            new_weight = new_weight.mm(&delta);
        }
        let kind = new_weight.kind();
        let cast = |t: Tensor| if t.kind() != kind { t.to_kind(kind) } else { t };
        let orig = self.flat(&weighted.weight().detach()).ok()?;
        let orig = cast(orig);
        let bias = weighted.bias().map(&cast);
        let new_weight = self.unflat(orig.mm(&new_weight)).ok()?;
        let x = cast(x.shallow_clone());
        let y = match self.kind {
            HraKind::Linear => x.linear(&new_weight, bias.as_ref()),
            HraKind::Conv2d { stride, padding, .. } => {
                x.conv2d(&new_weight, bias.as_ref(), [stride, stride], [padding, padding], [1, 1], 1)
            }
        };
        Some(y.to_kind(previous))
    }

    fn merge(&mut self, base: &mut dyn BaseLayer, ctx: &MergeCtx<'_>) -> Result<()> {
        let delta = tch::no_grad(|| self.delta_weight(false));
        self.multiply_weight(base, &delta, ctx.safe)
    }

    fn unmerge(&mut self, base: &mut dyn BaseLayer) -> Result<()> {
        let delta = tch::no_grad(|| self.delta_weight(true));
        self.multiply_weight(base, &delta, false)
    }

    fn describe(&self) -> String {
        let class = match self.kind {
            HraKind::Linear => "HRALinear",
            HraKind::Conv2d { .. } => "HRAConv2d",
        };
        format!(
            "hra.{class}(in_features={}, out_features={}, r={}, apply_GS={})",
            self.in_features,
            self.out_features,
            self.r,
            if self.apply_gs { "True" } else { "False" }
        )
    }
}
