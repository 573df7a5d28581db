//! PVeRA on one linear layer (PEFT's `pvera.Linear`, also for GPT-2's `Conv1D`).
//!
//! With `A_s = pvera_A[:, :in]` `(2r, in)` and `B_s = pvera_B[:out, :]` `(out, r)`, slices of projections
//! shared by all the adapter's layers (frozen, random), and the trained vectors `pvera_lambda_d` `(2r)` and
//! `pvera_lambda_b` `(out)`:
//!
//! `(μ, logvar) = split(λ_d ⊙ (A_s · dropout(x)))`, `z = μ + ε ⊙ exp(logvar / 2)` in training or with
//! `sample_at_inference` (else `z = μ`), `y = base(x) + λ_b ⊙ (B_s · z)`. The noise `ε` comes from the
//! global generator, or from a generator of the layer's own seeded with `generator_seed` at creation.
//!
//! Merging uses the mean path only: `ΔW = (λ_b · B_s) @ (λ_d[:r] · A_s[:r])` (transposed for
//! `fan_in_fan_out`), computed in f32 on the CPU for half-precision adapters, as PEFT does.

use crate::config::{PveraConfig, PEFT_TYPE};
use peft_core::config::LayerInit;
use peft_core::layer::{
    add_group_terms, merge_delta, unmerge_delta, BaseLayer, ForwardCtx, MergeCtx, TunerLayer,
};
use peft_core::rng::Generator;
use peft_core::{PeftError, Result};
use std::sync::Mutex;
use tch::{Device, Kind, Tensor};

/// The projections' names, saved at the model level (`base_model.pvera_A`).
const NAMES: [&str; 2] = ["pvera_A", "pvera_B"];

/// One PVeRA adapter on one layer.
#[derive(Debug)]
pub struct PveraLayer {
    adapter: String,
    module: String,
    fan_in_fan_out: bool,
    in_features: i64,
    out_features: i64,
    r: i64,
    dropout: f64,
    sample_at_inference: bool,
    /// The layer's own noise generator (`generator_seed`).
    generator: Option<Mutex<Generator>>,
    lambda_b: Tensor,
    lambda_d: Tensor,
    /// The shared projections (shallow clones of one tensor per adapter).
    pvera_a: Tensor,
    pvera_b: Tensor,
    /// The adapter's shared-projection handle (for the status' device list).
    shared: peft_projections::SharedProjections,
    /// This layer holds the shared projections in the var store and saves them.
    owns_projections: bool,
}

impl PveraLayer {
    /// Creates the adapter as PEFT's `update_layer`: `pvera_lambda_b = ones(out)`, `pvera_lambda_d =
    /// randn(2r)` (drawn from the global generator in that order), reset to `0` / `d_initial` with
    /// `init_weights`, then moved to the base layer's device and dtype; the shared projections are placed by
    /// the first layer and reused by the others.
    ///
    /// # Errors
    /// [`PeftError::UnsupportedLayer`] for anything but linear layers and `Conv1D`; projections too small
    /// for the layer or of another rank.
    pub fn create(config: &mut PveraConfig, ctx: &mut LayerInit<'_, '_>) -> Result<Self> {
        let Some(lin) = ctx.base.as_linear() else {
            return Err(ctx.unsupported(
                PEFT_TYPE,
                "only `torch.nn.Linear` (optionally quantized) and `transformers.pytorch_utils.Conv1D` are supported",
            ));
        };
        let (in_features, out_features, fifo) = (lin.in_features(), lin.out_features(), lin.fan_in_fan_out());
        ctx.match_fan_in_fan_out(&mut config.fan_in_fan_out, fifo);
        let r = config.r;
        peft_core::config::require_positive("r", r)?;
        let generator =
            config.generator_seed.map(|seed| Generator::new(seed as u64).map(Mutex::new)).transpose()?;
        let mut lambda_b = Tensor::f_ones([out_features], (Kind::Float, Device::Cpu))
            .map_err(PeftError::torch("initialising pvera_lambda_b"))?;
        let mut lambda_d = Tensor::f_randn([2 * r], (Kind::Float, Device::Cpu))
            .map_err(PeftError::torch("initialising pvera_lambda_d"))?;
        if config.init_weights {
            tch::no_grad(|| -> std::result::Result<(), tch::TchError> {
                let _ = lambda_d.f_zero_()?.f_fill_(config.d_initial)?;
                let _ = lambda_b.f_zero_()?;
                Ok(())
            })
            .map_err(PeftError::torch("initialising PVeRA's vectors"))?;
        }
        let adapter = ctx.adapter_name.to_string();
        let lambda_b = (&ctx.path / "pvera_lambda_b").add(&adapter, ctx.place(lambda_b)?, true);
        let lambda_d = (&ctx.path / "pvera_lambda_d").add(&adapter, ctx.place(lambda_d)?, true);
        let shared = config.projections.clone();
        let attached = shared.attach(
            ctx,
            "PVeRA",
            NAMES,
            [2 * r, in_features, out_features, r],
            config.save_projection,
        )?;
        Ok(Self {
            adapter,
            module: ctx.module_name.to_string(),
            fan_in_fan_out: fifo,
            in_features,
            out_features,
            r,
            dropout: config.pvera_dropout,
            sample_at_inference: config.sample_at_inference,
            generator,
            lambda_b,
            lambda_d,
            pvera_a: attached.a,
            pvera_b: attached.b,
            owns_projections: attached.owns,
            shared,
        })
    }

    /// `pvera_lambda_b`, `(out)`.
    pub fn lambda_b(&self) -> &Tensor {
        &self.lambda_b
    }

    /// `pvera_lambda_d`, `(2r)`.
    pub fn lambda_d(&self) -> &Tensor {
        &self.lambda_d
    }

    /// The shared projections `(pvera_A, pvera_B)` (the whole tensors, not this layer's slices).
    pub fn projections(&self) -> (&Tensor, &Tensor) {
        (&self.pvera_a, &self.pvera_b)
    }

    fn sliced(&self) -> (Tensor, Tensor) {
        (self.pvera_a.narrow(1, 0, self.in_features), self.pvera_b.narrow(0, 0, self.out_features))
    }

    /// PEFT's `get_delta_weight` (the mean path): `(λ_b · B_s) @ (λ_d[:r] · A_s[:r])` in the base
    /// weight's layout.
    ///
    /// # Errors
    /// A libtorch failure.
    pub fn delta_weight(&self) -> Result<Tensor> {
        let kind = self.pvera_b.kind();
        let cast = self.pvera_b.device() == Device::Cpu && matches!(kind, Kind::Half | Kind::BFloat16);
        let f = || -> std::result::Result<Tensor, tch::TchError> {
            let (mut a, mut b) = self.sliced();
            let (mut ld, mut lb) = (self.lambda_d.shallow_clone(), self.lambda_b.shallow_clone());
            if cast {
                a = a.f_to_kind(Kind::Float)?;
                b = b.f_to_kind(Kind::Float)?;
                ld = ld.f_to_kind(Kind::Float)?;
                lb = lb.f_to_kind(Kind::Float)?;
            }
            let ld = ld.f_unsqueeze(-1)?;
            let ld = ld.f_narrow(0, 0, ld.size()[0] / 2)?;
            let a = a.f_narrow(0, 0, a.size()[0] / 2)?;
            let out = lb.f_unsqueeze(-1)?.f_mul(&b)?.f_matmul(&ld.f_mul(&a)?)?;
            let out = if self.fan_in_fan_out { out.f_transpose(0, 1)? } else { out };
            if cast {
                out.f_to_kind(kind)
            } else {
                Ok(out)
            }
        };
        tch::no_grad(f).map_err(PeftError::torch("computing PVeRA's delta weight"))
    }

    /// `_reparametrize`: the mean outside training (unless `sample_at_inference`), else a sample.
    fn code(&self, mu: Tensor, logvar: &Tensor, train: bool) -> Tensor {
        if !(train || self.sample_at_inference) {
            return mu;
        }
        let std = (logvar * 0.5).exp();
        let eps = match &self.generator {
            None => std.randn_like(),
            Some(g) => {
                let drawn = g.lock().ok().and_then(|mut g| g.randn_kind(&std.size(), std.kind()).ok());
                // A poisoned lock or failed draw cannot happen with a CPU generator; fall back to the global one.
                drawn.map_or_else(|| std.randn_like(), |e| e.to_device(std.device()))
            }
        };
        mu + eps * std
    }

    /// This adapter's term for input `x` (already cast to `λ_d`'s dtype).
    fn term(&self, x: &Tensor, train: bool) -> Tensor {
        let (a, b) = self.sliced();
        let x = if train && self.dropout > 0.0 { x.dropout(self.dropout, true) } else { x.shallow_clone() };
        let h = &self.lambda_d * x.linear::<Tensor>(&a, None);
        let halves = h.chunk(2, -1);
        let z = self.code(halves[0].shallow_clone(), &halves[1], train);
        &self.lambda_b * z.linear::<Tensor>(&b, None)
    }
}

impl TunerLayer for PveraLayer {
    fn peft_type(&self) -> &'static str {
        PEFT_TYPE
    }

    fn named_tensors(&self) -> Vec<(String, Tensor)> {
        let mut v = vec![
            (format!("pvera_lambda_b.{}", self.adapter), self.lambda_b.shallow_clone()),
            (format!("pvera_lambda_d.{}", self.adapter), self.lambda_d.shallow_clone()),
        ];
        if self.owns_projections {
            v.push((format!("pvera_A.{}", self.adapter), self.pvera_a.shallow_clone()));
            v.push((format!("pvera_B.{}", self.adapter), self.pvera_b.shallow_clone()));
        }
        v
    }

    fn status_shared_devices(&self) -> Vec<(String, Device)> {
        self.shared.member_devices()
    }

    fn is_buffer(&self, name: &str) -> bool {
        name.starts_with("pvera_A.") || name.starts_with("pvera_B.")
    }

    fn is_trainable_tensor(&self, name: &str) -> bool {
        !self.is_buffer(name)
    }

    /// The shared projections are saved once, at the model level: `base_model.pvera_A` / `base_model.pvera_B`.
    fn checkpoint_key(&self, key: &str, adapter: &str) -> String {
        peft_projections::model_level_key(key, adapter, NAMES)
            .unwrap_or_else(|| peft_core::peft_config::keys::remove_adapter_name(key, adapter))
    }

    /// PEFT's loop: `x` cast to each adapter's `λ_d` dtype in turn, the terms added, the sum cast back once.
    fn transform_output(&self, _base: &dyn BaseLayer, x: &Tensor, y: Tensor, ctx: &ForwardCtx<'_>) -> Tensor {
        let Some(group) = ctx.active_group(self) else {
            return y;
        };
        let mut x = x.shallow_clone();
        add_group_terms(y, &group, |layer| {
            if x.kind() != layer.lambda_d.kind() {
                x = x.to_kind(layer.lambda_d.kind());
            }
            Some(layer.term(&x, ctx.train))
        })
    }

    fn merge(&mut self, base: &mut dyn BaseLayer, ctx: &MergeCtx<'_>) -> Result<()> {
        merge_delta(base, &self.delta_weight()?, ctx.safe, &self.adapter, &self.module)
    }

    fn unmerge(&mut self, base: &mut dyn BaseLayer) -> Result<()> {
        unmerge_delta(base, &self.delta_weight()?, &self.module)
    }

    fn describe(&self) -> String {
        format!(
            "pvera.Linear(in_features={}, out_features={}, r={})",
            self.in_features, self.out_features, self.r
        )
    }
}
