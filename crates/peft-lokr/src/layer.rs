//! LoKr on one layer: a delta weight that is the Kronecker product of two (optionally low-rank)
//! factors, `ΔW = (W1 ⊗ W2) · α/r`, reshaped to the base weight and added to the base output as
//! `op(x, ΔW)` (see [`peft_lycoris::layer`] for the forward, the dropouts and merging).
//!
//! The output features are split as `out = a·b` and the input features (input channels per group) as
//! `in' = c·d` by [`factorization`]. Then, with `k…` the kernel of a convolution:
//!
//! * left factor `W1` `(a, c)`: `lokr_w1`, or `lokr_w1_a (a, r) @ lokr_w1_b (r, c)` with `decompose_both`
//!   when `r < max(a, c) / 2`;
//! * right factor `W2`: `lokr_w2` `(b, d)` (convolutions: `(b, d, k…)`) when `r ≥ max(b, d) / 2`; else,
//!   for convolutions with `use_effective_conv2d` and a kernel larger than 1, the CP form
//!   `einsum("ijkl,ip,jr->prkl", lokr_t2 (r, r, kh, kw), lokr_w2_a (r, b), lokr_w2_b (r, d))` (`Conv1d`:
//!   `lokr_t2` is `(r, r, k, 1)`); else `lokr_w2_a (b, r) @ lokr_w2_b (r, d·∏k)`.
//!
//! `W1` is unsqueezed to 4-D when `W2` is 4-D. As in PEFT, a `Conv1d` with a full `lokr_w2 (b, d, k)`
//! takes `torch.kron`'s rule for operands of different rank (`W1` is read as `(1, a, c)`), and the
//! product is then reshaped to the base weight as it is.

use crate::config::{LokrConfig, LokrInitWeights, PEFT_TYPE};
use peft_core::config::LayerInit;
use peft_core::Result;
use peft_lycoris::layer::{empty, kaiming, register};
use peft_lycoris::{LycorisAdapter, LycorisKind, LycorisLayer, LycorisParams, LycorisTarget, MaskKind};
use tch::Tensor;

/// One LoKr adapter on one layer (PEFT's `lokr.Linear`, `lokr.Conv1d`, `lokr.Conv2d`).
pub type LokrLayer = LycorisLayer<LokrFactors>;

/// The left Kronecker factor.
#[derive(Debug)]
pub enum LeftFactor {
    /// `lokr_w1` `(a, c)`.
    Full(Tensor),
    /// `lokr_w1_a (a, r)`, `lokr_w1_b (r, c)`.
    LowRank(Tensor, Tensor),
}

/// The right Kronecker factor.
#[derive(Debug)]
pub enum RightFactor {
    /// `lokr_w2` `(b, d[, k…])`.
    Full(Tensor),
    /// `lokr_w2_a (b, r)`, `lokr_w2_b (r, d·∏k)`.
    LowRank(Tensor, Tensor),
    /// The CP form: `lokr_t2 (r, r, kh, kw)`, `lokr_w2_a (r, b)`, `lokr_w2_b (r, d)`.
    Cp {
        /// `lokr_t2`.
        core: Tensor,
        /// `lokr_w2_a`.
        a: Tensor,
        /// `lokr_w2_b`.
        b: Tensor,
    },
}

/// LoKr's factors.
#[derive(Debug)]
pub struct LokrFactors {
    /// `W1`.
    pub left: LeftFactor,
    /// `W2`.
    pub right: RightFactor,
}

impl LycorisAdapter for LokrFactors {
    const PEFT_TYPE: &'static str = PEFT_TYPE;
    const CLASS_PREFIX: &'static str = "lokr";
    const MASK_KIND: MaskKind = MaskKind::Float;

    fn tensors(&self) -> Vec<(&'static str, &Tensor)> {
        let mut v = match &self.left {
            LeftFactor::Full(w) => vec![("lokr_w1", w)],
            LeftFactor::LowRank(a, b) => vec![("lokr_w1_a", a), ("lokr_w1_b", b)],
        };
        match &self.right {
            RightFactor::Full(w) => v.push(("lokr_w2", w)),
            RightFactor::LowRank(a, b) => v.extend([("lokr_w2_a", a), ("lokr_w2_b", b)]),
            RightFactor::Cp { core, a, b } => {
                v.extend([("lokr_w2_a", a), ("lokr_w2_b", b), ("lokr_t2", core)])
            }
        }
        v
    }

    /// PEFT's `get_delta_weight` up to the reshape: `make_kron(w1, w2, scaling)`.
    fn delta(&self, scaling: f64) -> Tensor {
        let w1 = match &self.left {
            LeftFactor::Full(w) => w.shallow_clone(),
            LeftFactor::LowRank(a, b) => a.matmul(b),
        };
        let w2 = match &self.right {
            RightFactor::Full(w) => w.shallow_clone(),
            RightFactor::LowRank(a, b) => a.matmul(b),
            RightFactor::Cp { core, a, b } => {
                Tensor::einsum("i j k l, i p, j r -> p r k l", &[core, a, b], None::<&[i64]>)
            }
        };
        let w1 = if w2.dim() == 4 { w1.unsqueeze(2).unsqueeze(2) } else { w1 };
        w1.kron(&w2.contiguous()) * scaling
    }
}

/// PEFT's `factorization(dimension, factor)`: splits `dimension` into `(m, n)`, `m ≤ n`, `m·n =
/// dimension`. A positive `factor` dividing `dimension` gives `(factor, dimension / factor)`; otherwise
/// the search walks the divisors from 1 up while the sum `m + n` does not exceed `1 + dimension` and `m`
/// stays within `factor` (`-1`: no bound), which ends at the divisor pair closest to the square root.
///
/// ```
/// use peft_lokr::layer::factorization;
/// assert_eq!(factorization(256, -1), (16, 16));
/// assert_eq!(factorization(128, -1), (8, 16));
/// assert_eq!(factorization(127, -1), (1, 127));
/// assert_eq!(factorization(128, 4), (4, 32));
/// assert_eq!(factorization(20, 3), (2, 10));
/// ```
pub fn factorization(dimension: i64, factor: i64) -> (i64, i64) {
    if factor > 0 && dimension % factor == 0 {
        return (factor, dimension / factor);
    }
    let factor = if factor == -1 { dimension } else { factor };
    let (mut m, mut n) = (1i64, dimension);
    let length = m + n;
    while m < n {
        let mut new_m = m + 1;
        while dimension % new_m != 0 {
            new_m += 1;
        }
        let new_n = dimension / new_m;
        if new_m + new_n > length || new_m > factor {
            break;
        }
        m = new_m;
        n = new_n;
    }
    if m > n {
        std::mem::swap(&mut m, &mut n);
    }
    (m, n)
}

/// Creates adapter `ctx.adapter_name` on `ctx.module_name` as PEFT's `LoKrLayer.update_layer` does: the
/// rank and alpha after `rank_pattern` / `alpha_pattern`, the factor shapes of the layer class, then
/// the init of `init_weights` (`true`: `reset_adapter_parameters`, `"lycoris"`:
/// `reset_adapter_parameters_lycoris_way`, `false`: `reset_adapter_parameters_random`; Kaiming-uniform
/// with `a = √5` in the order `w1*`, `w2*`, `t2`), drawn on the CPU in f32 and moved to the base layer's
/// device and dtype.
///
/// # Errors
/// [`peft_core::PeftError::UnsupportedLayer`] for anything but dense `nn.Linear`, `nn.Conv1d` and
/// `nn.Conv2d`; a rank that is not positive.
pub fn create(config: &LokrConfig, ctx: &mut LayerInit<'_, '_>) -> Result<LokrLayer> {
    let target = LycorisTarget::of(ctx, PEFT_TYPE)?;
    let o = &config.lycoris;
    let (r, alpha) = o.rank_and_alpha(ctx.module_name)?;
    peft_core::config::require_positive("r", r)?;
    let params = LycorisParams::new(r, alpha, o.rank_dropout, o.module_dropout, config.rank_dropout_scale);
    let (in_dim, kernel, effective) = match &target.kind {
        LycorisKind::Linear => (target.in_features, Vec::new(), false),
        LycorisKind::Conv(g) => (
            target.in_features / g.groups,
            g.kernel_size.clone(),
            o.use_effective_conv2d && g.kernel_size.iter().any(|&k| k != 1),
        ),
    };
    let (c, d) = factorization(in_dim, config.decompose_factor);
    let (a, b) = factorization(target.out_features, config.decompose_factor);
    let rf = r as f64;
    let use_w1 = !(config.decompose_both && rf < a.max(c) as f64 / 2.0);
    let use_w2 = rf >= b.max(d) as f64 / 2.0;

    let mut left = if use_w1 {
        LeftFactor::Full(empty(&[a, c])?)
    } else {
        LeftFactor::LowRank(empty(&[a, r])?, empty(&[r, c])?)
    };
    let mut right = if use_w2 {
        let mut shape = vec![b, d];
        shape.extend(&kernel);
        RightFactor::Full(empty(&shape)?)
    } else if effective {
        let core = [r, r, kernel[0], kernel.get(1).copied().unwrap_or(1)];
        RightFactor::Cp { core: empty(&core)?, a: empty(&[r, b])?, b: empty(&[r, d])? }
    } else {
        RightFactor::LowRank(empty(&[b, r])?, empty(&[r, d * kernel.iter().product::<i64>()])?)
    };

    let zeros = peft_core::init::zeros_;
    // Which side starts at zero (the other is Kaiming-uniform): PEFT's default resets the left factor
    // (`lokr_w1` or `lokr_w1_a`), LyCORIS' scheme the right one (`lokr_w2` or `lokr_w2_b`), `false` neither.
    // Zeroing draws nothing, so the order of the Kaiming draws is PEFT's in every case.
    let (zero_left, zero_right) = match &config.init_weights {
        LokrInitWeights::Bool(true) => (true, false),
        LokrInitWeights::Scheme(_) => (false, true),
        LokrInitWeights::Bool(false) => (false, false),
    };
    let init = |t: &mut Tensor, zero: bool| if zero { zeros(t) } else { kaiming(t) };
    match &mut left {
        LeftFactor::Full(w) => init(w, zero_left)?,
        LeftFactor::LowRank(wa, wb) => {
            init(wa, zero_left)?;
            kaiming(wb)?;
        }
    }
    match &mut right {
        RightFactor::Full(w) => init(w, zero_right)?,
        RightFactor::LowRank(wa, wb) | RightFactor::Cp { a: wa, b: wb, .. } => {
            kaiming(wa)?;
            init(wb, zero_right)?;
        }
    }
    if let RightFactor::Cp { core, .. } = &mut right {
        kaiming(core)?;
    }

    let left = match left {
        LeftFactor::Full(w) => LeftFactor::Full(register(ctx, "lokr_w1", w)?),
        LeftFactor::LowRank(wa, wb) => {
            LeftFactor::LowRank(register(ctx, "lokr_w1_a", wa)?, register(ctx, "lokr_w1_b", wb)?)
        }
    };
    let right = match right {
        RightFactor::Full(w) => RightFactor::Full(register(ctx, "lokr_w2", w)?),
        RightFactor::LowRank(wa, wb) => {
            RightFactor::LowRank(register(ctx, "lokr_w2_a", wa)?, register(ctx, "lokr_w2_b", wb)?)
        }
        RightFactor::Cp { core, a, b } => RightFactor::Cp {
            core: register(ctx, "lokr_t2", core)?,
            a: register(ctx, "lokr_w2_a", a)?,
            b: register(ctx, "lokr_w2_b", b)?,
        },
    };
    Ok(LokrLayer::new(ctx, target, params, LokrFactors { left, right }))
}
