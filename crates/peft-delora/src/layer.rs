//! `DeloraLayer`: PEFT 0.21.2's `DeloraLinear` (`delora.DeloraLinear`) — DeLoRA on `nn.Linear`.
//!
//! Tensors (in-memory names): `delora_A.<adapter>` `(r, in)`, `delora_B.<adapter>` `(out, r)`,
//! `delora_lambda.<adapter>` `(1,)`, and the buffer `delora_w_norm.<adapter>` `(in,)` — the base weight's
//! column norms when the adapter was created, saved with it.
//!
//! With `‖aᵢ‖` the norms of `A`'s rows and `‖bᵢ‖` those of `B`'s columns (each at least `1e-4`), and
//! `s = (λ / r) / (‖a‖ · ‖b‖)` `(r,)`:
//!
//! * forward, not merged: `y = base(x) + Σ_adapters ((drop(x) · w_norm) Aᵀ · s) Bᵀ` — the active adapters'
//!   updates are summed first and added to the base output once, as PEFT does;
//! * `ΔW = B · diag(s) · A · diag(w_norm)` `(out, in)`, added on merge and subtracted on unmerge.

use crate::config::{DeloraConfig, PEFT_TYPE};
use peft_core::config::LayerInit;
use peft_core::layer::{merge_delta, unmerge_delta, BaseLayer, ForwardCtx, MergeCtx, TunerLayer};
use peft_core::{PeftError, Result};
use tch::{Device, Kind, Tensor};

/// One DeLoRA adapter on one linear layer.
#[derive(Debug)]
pub struct DeloraLayer {
    adapter: String,
    module: String,
    r: i64,
    in_features: i64,
    out_features: i64,
    dropout: f64,
    a: Tensor,
    b: Tensor,
    lambda: Tensor,
    w_norm: Tensor,
}

/// PEFT's `x.norm(dim=d)` (a vector 2-norm: `linalg.norm` over one dimension) clamped at `1e-4`.
fn clamped_norm(t: &Tensor, dim: i64) -> Tensor {
    t.linalg_norm(2, [dim].as_slice(), false, None::<Kind>).clamp_min(1e-4)
}

impl DeloraLayer {
    /// Creates the adapter as PEFT's `update_layer`: `A` Kaiming-uniform, `B` zero (Kaiming-uniform with
    /// `init_weights: false`), `λ` from `delora_lambda` / `lambda_pattern`, and the base weight's column
    /// norms, moved to the base layer's device and dtype.
    ///
    /// # Errors
    /// [`PeftError::UnsupportedLayer`] for anything but dense `nn.Linear`; a rank that is not positive.
    pub fn create(config: &DeloraConfig, ctx: &mut LayerInit<'_, '_>) -> Result<Self> {
        let Some(lin) = ctx.base.as_linear().filter(|l| !l.fan_in_fan_out()) else {
            return Err(ctx.unsupported(PEFT_TYPE, "Currently, only `torch.nn.Linear` is supported."));
        };
        if !lin.weight_is_storage() {
            return Err(ctx.unsupported(
                PEFT_TYPE,
                "DeLoRA scales by the base weight's column norms, which a quantized weight does not hold \
                 (PEFT would take the norms of the packed bytes)",
            ));
        }
        let (in_features, out_features) = (lin.in_features(), lin.out_features());
        let w_norm = tch::no_grad(|| lin.weight().f_linalg_norm(2, [0i64].as_slice(), false, None::<Kind>))
            .map_err(PeftError::torch("computing the base weight's column norms"))?;
        let (r, lambda) = config.rank_and_lambda(ctx.module_name)?;
        peft_core::config::require_positive("r", r)?;
        let opts = (Kind::Float, Device::Cpu);
        let torch = PeftError::torch("initialising DeLoRA");
        let mut a = Tensor::f_empty([r, in_features], opts).map_err(torch)?;
        let mut b =
            Tensor::f_empty([out_features, r], opts).map_err(PeftError::torch("initialising DeLoRA"))?;
        peft_core::init::kaiming_uniform_(&mut a, 5f64.sqrt())?;
        if config.init_weights {
            peft_core::init::zeros_(&mut b)?;
        } else {
            peft_core::init::kaiming_uniform_(&mut b, 5f64.sqrt())?;
        }
        let lambda =
            Tensor::f_full([1], lambda, opts).map_err(PeftError::torch("initialising delora_lambda"))?;
        let adapter = ctx.adapter_name.to_string();
        let (a, b, lambda) = (ctx.place(a)?, ctx.place(b)?, ctx.place(lambda)?);
        let w_norm = w_norm.f_detach_copy().map_err(PeftError::torch("copying the column norms"))?;
        Ok(Self {
            a: (&ctx.path / "delora_A").add(&adapter, a, true),
            b: (&ctx.path / "delora_B").add(&adapter, b, true),
            lambda: (&ctx.path / "delora_lambda").add(&adapter, lambda, true),
            w_norm: (&ctx.path / "delora_w_norm").add(&adapter, w_norm, false),
            adapter,
            module: ctx.module_name.to_string(),
            r,
            in_features,
            out_features,
            dropout: config.module_dropout,
        })
    }

    /// `(A, B, λ, w_norm)`.
    pub fn tensors(&self) -> (&Tensor, &Tensor, &Tensor, &Tensor) {
        (&self.a, &self.b, &self.lambda, &self.w_norm)
    }

    /// `s = (λ / r) / (‖a‖ · ‖b‖)` `(r,)`.
    fn scaling(&self) -> Tensor {
        (&self.lambda / self.r as f64) / (clamped_norm(&self.a, 1) * clamped_norm(&self.b, 0))
    }

    /// This adapter's update of the output for input `x`.
    fn update(&self, x: &Tensor, train: bool) -> Tensor {
        let x = if train && self.dropout > 0.0 { x.dropout(self.dropout, true) } else { x.shallow_clone() };
        let h = (x * &self.w_norm).linear::<Tensor>(&self.a, None) * self.scaling();
        h.linear::<Tensor>(&self.b, None)
    }

    /// PEFT's `get_delta_weight`: `B · diag(s) · A · diag(w_norm)` `(out, in)`, differentiable.
    pub fn delta_weight(&self) -> Tensor {
        let diag = self.scaling().diag_embed(0, -2, -1);
        self.b.matmul(&diag).matmul(&self.a) * self.w_norm.unsqueeze(0)
    }
}

impl TunerLayer for DeloraLayer {
    fn peft_type(&self) -> &'static str {
        PEFT_TYPE
    }

    fn named_tensors(&self) -> Vec<(String, Tensor)> {
        let a = &self.adapter;
        vec![
            (format!("delora_A.{a}"), self.a.shallow_clone()),
            (format!("delora_B.{a}"), self.b.shallow_clone()),
            (format!("delora_lambda.{a}"), self.lambda.shallow_clone()),
            (format!("delora_w_norm.{a}"), self.w_norm.shallow_clone()),
        ]
    }

    fn is_buffer(&self, name: &str) -> bool {
        name.starts_with("delora_w_norm.")
    }

    fn is_trainable_tensor(&self, name: &str) -> bool {
        !self.is_buffer(name)
    }

    /// The first active DeLoRA adapter adds the sum of every active adapter's update (the others pass).
    fn transform_output(&self, _base: &dyn BaseLayer, x: &Tensor, y: Tensor, ctx: &ForwardCtx<'_>) -> Tensor {
        let Some(group) = ctx.active_group(self) else { return y };
        let mut sum = y.zeros_like();
        for layer in group {
            sum += layer.update(x, ctx.train);
        }
        let kind = y.kind();
        y + sum.to_kind(kind)
    }

    fn merge(&mut self, base: &mut dyn BaseLayer, ctx: &MergeCtx<'_>) -> Result<()> {
        let delta = tch::no_grad(|| self.delta_weight());
        merge_delta(base, &delta, ctx.safe, &self.adapter, &self.module)
    }

    fn unmerge(&mut self, base: &mut dyn BaseLayer) -> Result<()> {
        let delta = tch::no_grad(|| self.delta_weight());
        unmerge_delta(base, &delta, &self.module)
    }

    fn describe(&self) -> String {
        format!(
            "delora.DeloraLinear(in_features={}, out_features={}, r={})",
            self.in_features, self.out_features, self.r
        )
    }
}
