//! VeLoRA (`velora_config`): in training, `lora_A`'s weight gradient is computed from activations
//! compressed to one number per group of `num_groups` sub-tokens (their projection on a unit vector, the
//! `lora_velora_embed` buffer) instead of the full input — PEFT's `VeloraLinearVariant` and
//! `VeloraFunction`. Outputs, input gradients and inference are those of plain LoRA.
//!
//! PEFT writes a custom autograd function; tch has none, so the same gradients come from a graph whose
//! forward value is exactly `x·Aᵀ` and that saves only the compressed activations:
//!
//! ```text
//! after_A = x·sg(A)ᵀ + (c·Mᵀ − sg(c·Mᵀ))     c = compress(sg(x)) (tokens × groups)
//!                                            M[o, g] = scale · Σ_d A[o, g·D + d] · e[d]
//! ```
//!
//! The first term carries the input gradient; the second is zero in value and gives `A` the gradient
//! `gᵀ·reconstruct(c)` of PEFT's backward (`sg` = stop-gradient).

use crate::config::LoraConfig;
use crate::layer::{LoraLayer, Placement};
use peft_core::config::LayerInit;
use peft_core::error::{PeftError, Result};
use std::sync::atomic::{AtomicBool, Ordering};
use tch::{Kind, Tensor};

/// How the projection vector is chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InitType {
    /// The normalized mean sub-token of every training batch.
    BatchAverage,
    /// The normalized mean sub-token of the first training batch.
    BatchAverageOnce,
    /// A random unit vector, drawn at creation.
    Random,
}

/// One adapter's VeLoRA state on one layer.
#[derive(Debug)]
pub struct Velora {
    /// Number of sub-token groups the input features are split into.
    pub num_groups: i64,
    /// Scale applied to the reconstructed activations.
    pub scale: f64,
    /// How the projection is chosen.
    pub init_type: InitType,
    /// The unit projection vector (`lora_velora_embed`), `ceil(in / num_groups)` long; saved.
    pub embed: Tensor,
    initialized: AtomicBool,
}

/// `ceil(in / num_groups)`.
fn group_dim(in_features: i64, num_groups: i64) -> i64 {
    (in_features + num_groups - 1) / num_groups
}

/// `embed / ‖embed‖` in fp32; a zero vector becomes the normalized all-ones vector.
fn normalize(embed: &Tensor) -> Tensor {
    let e = embed.to_kind(Kind::Float);
    let norm = e.norm();
    if norm.double_value(&[]) == 0.0 {
        let ones = e.ones_like();
        let n = ones.norm();
        return ones / n;
    }
    e / norm
}

/// The input as `(tokens, num_groups, group_dim)`, zero-padded to whole groups.
fn grouped(x: &Tensor, num_groups: i64) -> Tensor {
    let features = x.size().last().copied().unwrap_or(1);
    let gd = group_dim(features, num_groups);
    let padded = num_groups * gd;
    let x = if padded != features { x.constant_pad_nd([0, padded - features]) } else { x.shallow_clone() };
    x.reshape([-1, num_groups, gd])
}

impl Velora {
    /// The state for the adapter of the placed `layer`, created with `config`: the embed is drawn
    /// (`random`) or zero, in the base weight's float dtype on its device, and registered as the buffer
    /// `lora_velora_embed`.
    ///
    /// # Errors
    /// A libtorch failure.
    pub(crate) fn create(
        config: &LoraConfig,
        layer: &LoraLayer,
        ctx: &LayerInit<'_, '_>,
        placement: &Placement,
    ) -> Result<Self> {
        let v = config.velora_config.as_ref();
        let get = |k: &str| v.and_then(|v| v.get(k));
        let num_groups = get("num_groups").and_then(serde_json::Value::as_i64).unwrap_or(64);
        let scale = get("scale").and_then(serde_json::Value::as_f64).unwrap_or(1.0);
        let init_type = match get("init_type").and_then(serde_json::Value::as_str).unwrap_or("batch_average")
        {
            "random" => InitType::Random,
            "batch_average_once" => InitType::BatchAverageOnce,
            _ => InitType::BatchAverage,
        };
        let gd = group_dim(layer.features().0, num_groups);
        let options = placement.base_options();
        let f = || -> std::result::Result<Tensor, tch::TchError> {
            match init_type {
                InitType::Random => Tensor::f_randn([gd], options).map(|e| normalize(&e).to_kind(options.0)),
                _ => Tensor::f_zeros([gd], options),
            }
        };
        let embed = f().map_err(PeftError::torch("initialising the VeLoRA projection"))?;
        let embed = (&ctx.path / "lora_velora_embed").add(layer.adapter_name(), embed, false);
        Ok(Self {
            num_groups,
            scale,
            init_type,
            embed,
            initialized: AtomicBool::new(init_type == InitType::Random),
        })
    }

    /// A training forward pass: plain LoRA's output (dropout, A, B, scaling) with VeLoRA's gradient for
    /// A. `x` is the input cast to the adapter dtype, `y` the output so far.
    pub(crate) fn forward(&self, layer: &LoraLayer, x: Tensor, y: Tensor) -> Tensor {
        let x = if layer.dropout > 0.0 { x.dropout(layer.dropout, true) } else { x };
        let after_a = self.linear(&x, &layer.lora_a);
        y + after_a.linear(&layer.lora_b, layer.lora_b_bias.as_ref()) * layer.scaling
    }

    /// PEFT's `_maybe_update_embed`: the normalized mean sub-token of `x`, per `init_type`.
    fn update_embed(&self, x: &Tensor) {
        match self.init_type {
            InitType::Random => return,
            InitType::BatchAverageOnce if self.initialized.load(Ordering::Relaxed) => return,
            _ => {}
        }
        tch::no_grad(|| {
            let sub = grouped(&x.detach(), self.num_groups);
            let d = sub.size()[2];
            let mean = sub.reshape([-1, d]).mean_dim(0, false, None::<Kind>);
            let e = normalize(&mean).to_device(self.embed.device()).to_kind(self.embed.kind());
            let mut target = self.embed.shallow_clone();
            target.copy_(&e);
        });
        self.initialized.store(true, Ordering::Relaxed);
    }

    /// `x · Aᵀ` with VeLoRA's gradient for `A` (see the module docs); updates the embed first.
    fn linear(&self, x: &Tensor, a: &Tensor) -> Tensor {
        self.update_embed(x);
        let features = x.size().last().copied().unwrap_or(1);
        let main = x.linear::<&Tensor>(&a.detach(), None);
        if !a.requires_grad() {
            return main;
        }
        let embed = self.embed.to_kind(x.kind());
        let compressed = grouped(&x.detach(), self.num_groups).matmul(&embed); // (tokens, groups)
        let gd = embed.size()[0];
        let padded = self.num_groups * gd;
        let a_pad =
            if padded != features { a.constant_pad_nd([0, padded - features]) } else { a.shallow_clone() };
        let r = a.size()[0];
        let m = (a_pad.reshape([r, self.num_groups, gd]) * embed.to_kind(a.kind())).sum_dim_intlist(
            -1,
            false,
            None::<Kind>,
        ) * self.scale;
        let z = compressed.to_kind(a.kind()).matmul(&m.tr());
        let zero = &z - z.detach();
        let shape = main.size();
        main + zero.reshape(shape.as_slice())
    }
}
