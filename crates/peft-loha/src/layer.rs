//! LoHa on one layer: a delta weight that is the Hadamard (element-wise) product of two low-rank
//! matrices, `ΔW = (W1a W1b) ⊙ (W2a W2b) · α/r`, added to the base output as `op(x, ΔW)` (see
//! [`peft_lycoris::layer`] for the forward, the dropouts and merging).
//!
//! Shapes, with `out` the output features (channels), `in'` the input features (input channels per
//! group) and `k…` the kernel:
//!
//! * `nn.Linear`, and convolutions without the CP form (`use_effective_conv2d` off, or a kernel of size
//!   1): `hada_w1_a`, `hada_w2_a` are `(out, r)`, `hada_w1_b`, `hada_w2_b` are `(r, in'·∏k)`; the product
//!   is reshaped to the base weight.
//! * Convolutions with `use_effective_conv2d` and a kernel larger than 1 (the CP form): `hada_t1`,
//!   `hada_t2` are `(r, r, kh, kw)` (`(r, r, k, 1)` for `Conv1d`), `hada_w1_a`, `hada_w2_a` are
//!   `(r, out)`, `hada_w1_b`, `hada_w2_b` are `(r, in')`, and each factor is
//!   `rebuild[p, q, k, l] = Σ_{i,j} t[i, j, k, l] · w_b[j, q] · w_a[i, p]`.
//!
//! PEFT computes the CP form inside a custom autograd function whose backward gives `hada_w1_a` the
//! gradient built from the *second* factor's `t2 × w2b` (and `hada_w2_a` from the first's), not the
//! true gradient. peft-rs reproduces those gradients (training steps match PEFT's) with detached
//! surrogate branches that add exactly zero to the forward value.

use crate::config::{LohaConfig, PEFT_TYPE};
use peft_core::config::LayerInit;
use peft_core::layer::grad_enabled;
use peft_core::Result;
use peft_lycoris::layer::{empty, kaiming, register};
use peft_lycoris::{LycorisAdapter, LycorisKind, LycorisLayer, LycorisParams, LycorisTarget, MaskKind};
use tch::{Device, Kind, Tensor};

/// One LoHa adapter on one layer (PEFT's `loha.Linear`, `loha.Conv1d`, `loha.Conv2d`).
pub type LohaLayer = LycorisLayer<LohaFactors>;

/// LoHa's factors: `hada_w1_a`, `hada_w1_b`, `hada_w2_a`, `hada_w2_b`, and in the CP form the cores
/// `hada_t1`, `hada_t2`.
#[derive(Debug)]
pub struct LohaFactors {
    /// `hada_w1_a`.
    pub w1_a: Tensor,
    /// `hada_w1_b`.
    pub w1_b: Tensor,
    /// `hada_w2_a`.
    pub w2_a: Tensor,
    /// `hada_w2_b`.
    pub w2_b: Tensor,
    /// `(hada_t1, hada_t2)` in the CP form.
    pub cores: Option<(Tensor, Tensor)>,
}

const REBUILD: &str = "i j k l, j r, i p -> p r k l";
const CORE_TIMES_B: &str = "i j k l, j r -> i r k l";
const TIMES_A: &str = "i r k l, i p -> p r k l";

/// `t - t.detach()`: zero in value, `t`'s gradient in backward.
fn grad_only(t: &Tensor) -> Tensor {
    t - t.detach()
}

impl LohaFactors {
    fn tracked(&self) -> bool {
        let mut ts = vec![&self.w1_a, &self.w1_b, &self.w2_a, &self.w2_b];
        if let Some((t1, t2)) = &self.cores {
            ts.push(t1);
            ts.push(t2);
        }
        ts.iter().any(|t| t.requires_grad()) && grad_enabled()
    }
}

impl LycorisAdapter for LohaFactors {
    const PEFT_TYPE: &'static str = PEFT_TYPE;
    const CLASS_PREFIX: &'static str = "loha";
    const MASK_KIND: MaskKind = MaskKind::Weight;

    fn tensors(&self) -> Vec<(&'static str, &Tensor)> {
        let mut v = vec![
            ("hada_w1_a", &self.w1_a),
            ("hada_w1_b", &self.w1_b),
            ("hada_w2_a", &self.w2_a),
            ("hada_w2_b", &self.w2_b),
        ];
        if let Some((t1, t2)) = &self.cores {
            v.push(("hada_t1", t1));
            v.push(("hada_t2", t2));
        }
        v
    }

    /// `HadaWeight` / `HadaWeightCP`'s forward, scaled by `torch.tensor(scaling)` (a 0-dim f32 tensor,
    /// as PEFT passes it).
    fn delta(&self, scaling: f64) -> Tensor {
        let scale = Tensor::scalar_tensor(scaling, (Kind::Float, Device::Cpu));
        let Some((t1, t2)) = &self.cores else {
            return (self.w1_a.matmul(&self.w1_b) * self.w2_a.matmul(&self.w2_b)) * scale;
        };
        let (w1a, w1b, w2a, w2b) = (&self.w1_a, &self.w1_b, &self.w2_a, &self.w2_b);
        let mut r1 = Tensor::einsum(REBUILD, &[t1, w1b, w1a], None::<&[i64]>);
        let mut r2 = Tensor::einsum(REBUILD, &[t2, w2b, w2a], None::<&[i64]>);
        if self.tracked() {
            // HadaWeightCP.backward: t1, w1b (t2, w2b) get their true gradients through
            // temp1 = t1 × w1b; w1a gets the gradient as if rebuild1 were temp2 × w1a (and w2a as if
            // rebuild2 were temp1 × w2a).
            let temp1 = Tensor::einsum(CORE_TIMES_B, &[t1, w1b], None::<&[i64]>);
            let temp2 = Tensor::einsum(CORE_TIMES_B, &[t2, w2b], None::<&[i64]>);
            let through = |temp: &Tensor, a: &Tensor| Tensor::einsum(TIMES_A, &[temp, a], None::<&[i64]>);
            r1 = r1.detach()
                + grad_only(&through(&temp1, &w1a.detach()))
                + grad_only(&through(&temp2.detach(), w1a));
            r2 = r2.detach()
                + grad_only(&through(&temp2, &w2a.detach()))
                + grad_only(&through(&temp1.detach(), w2a));
        }
        r1 * r2 * scale
    }
}

/// Creates adapter `ctx.adapter_name` on `ctx.module_name` as PEFT's `LoHaLayer.update_layer` does:
/// the rank and alpha after `rank_pattern` / `alpha_pattern`, the factor shapes of the layer class, then
/// `reset_adapter_parameters` (`hada_w1_a`, `hada_w1_b`, `hada_w2_a` Kaiming-uniform with `a = √5`,
/// `hada_w2_b` zero, then `hada_t1`, `hada_t2` Kaiming) or, with `init_weights = false`,
/// `reset_adapter_parameters_random` (all Kaiming, in the same order), drawn on the CPU in f32 and
/// moved to the base layer's device and dtype.
///
/// # Errors
/// [`peft_core::PeftError::UnsupportedLayer`] for anything but dense `nn.Linear`, `nn.Conv1d` and `nn.Conv2d`;
/// a rank that is not positive.
pub fn create(config: &LohaConfig, ctx: &mut LayerInit<'_, '_>) -> Result<LohaLayer> {
    let target = LycorisTarget::of(ctx, PEFT_TYPE)?;
    let o = &config.lycoris;
    let (r, alpha) = o.rank_and_alpha(ctx.module_name)?;
    peft_core::config::require_positive("r", r)?;
    let params = LycorisParams::new(r, alpha, o.rank_dropout, o.module_dropout, false);
    let out = target.out_features;
    // The shape PEFT decomposes: the weight flattened to (out, in'·∏k), or (out, in', k…) in the CP form.
    let (cp, cols, kernel) = match &target.kind {
        LycorisKind::Linear => (false, target.in_features, Vec::new()),
        LycorisKind::Conv(g) => {
            let in_per_group = target.in_features / g.groups;
            let cp = o.use_effective_conv2d && g.kernel_size.iter().any(|&k| k != 1);
            let cols = if cp { in_per_group } else { in_per_group * g.kernel_size.iter().product::<i64>() };
            let mut kernel = g.kernel_size.clone();
            if kernel.len() == 1 {
                kernel.push(1);
            }
            (cp, cols, kernel)
        }
    };
    let (a_shape, b_shape) = if cp { ([r, out], [r, cols]) } else { ([out, r], [r, cols]) };
    let core_shape = [r, r, kernel.first().copied().unwrap_or(1), kernel.get(1).copied().unwrap_or(1)];
    let mut cores = if cp { Some((empty(&core_shape)?, empty(&core_shape)?)) } else { None };
    let mut w1_a = empty(&a_shape)?;
    let mut w1_b = empty(&b_shape)?;
    let mut w2_a = empty(&a_shape)?;
    let mut w2_b = empty(&b_shape)?;
    kaiming(&mut w1_a)?;
    kaiming(&mut w1_b)?;
    kaiming(&mut w2_a)?;
    if config.init_weights {
        peft_core::init::zeros_(&mut w2_b)?;
    } else {
        kaiming(&mut w2_b)?;
    }
    if let Some((t1, t2)) = cores.as_mut() {
        kaiming(t1)?;
        kaiming(t2)?;
    }
    let cores = match cores {
        Some((t1, t2)) => Some((register(ctx, "hada_t1", t1)?, register(ctx, "hada_t2", t2)?)),
        None => None,
    };
    let factors = LohaFactors {
        w1_a: register(ctx, "hada_w1_a", w1_a)?,
        w1_b: register(ctx, "hada_w1_b", w1_b)?,
        w2_a: register(ctx, "hada_w2_a", w2_a)?,
        w2_b: register(ctx, "hada_w2_b", w2_b)?,
        cores,
    };
    Ok(LohaLayer::new(ctx, target, params, factors))
}
