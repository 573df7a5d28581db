//! VeRA on one linear layer: `y = base(x) + λ_b ⊙ (B_s · (λ_d ⊙ (A_s · dropout(x))))`, with `A_s = vera_A[:, :in]`
//! `(r, in)` and `B_s = vera_B[:out, :]` `(out, r)` slices of projections shared by all the adapter's layers
//! (frozen, random), and the trained vectors `vera_lambda_d` `(r)` and `vera_lambda_b` `(out)`.
//!
//! The delta weight is `(λ_b · B_s) @ (λ_d · A_s)` (transposed for `fan_in_fan_out`), computed in f32 on
//! the CPU for half-precision adapters, as PEFT does.

use crate::config::{VeraConfig, PEFT_TYPE};
use peft_core::config::LayerInit;
use peft_core::layer::{merge_delta, unmerge_delta, BaseLayer, ForwardCtx, MergeCtx, TunerLayer};
use peft_core::{PeftError, Result};
use tch::{Device, Kind, Tensor};

/// The projections' names, saved at the model level (`base_model.vera_A`).
const NAMES: [&str; 2] = ["vera_A", "vera_B"];

/// One VeRA adapter on one layer (PEFT's `vera.Linear`, also for GPT-2's `Conv1D`).
#[derive(Debug)]
pub struct VeraLayer {
    adapter: String,
    module: String,
    fan_in_fan_out: bool,
    in_features: i64,
    out_features: i64,
    r: i64,
    dropout: f64,
    lambda_b: Tensor,
    lambda_d: Tensor,
    /// The shared projections (shallow clones of one tensor per adapter).
    vera_a: Tensor,
    vera_b: Tensor,
    /// The adapter's shared-projection handle (for the status' device list).
    shared: peft_projections::SharedProjections,
    /// This layer holds the shared projections in the var store and saves them (the first layer of the
    /// adapter, with `save_projection`).
    owns_projections: bool,
}

impl VeraLayer {
    /// Creates the adapter as PEFT's `update_layer`: `vera_lambda_b = ones(out)`, `vera_lambda_d = randn(r)`
    /// (drawn from the global generator in that order), reset to `0` / `d_initial` with `init_weights`,
    /// then moved to the base layer's device and dtype; the shared projections are placed by the first
    /// layer and reused by the others.
    ///
    /// # Errors
    /// [`PeftError::UnsupportedLayer`] for anything but linear layers and `Conv1D`; projections too small
    /// for the layer.
    pub fn create(config: &mut VeraConfig, ctx: &mut LayerInit<'_, '_>) -> Result<Self> {
        let Some(lin) = ctx.base.as_linear() else {
            return Err(ctx.unsupported(
                PEFT_TYPE,
                "only `torch.nn.Linear` (optionally quantized) and `transformers.pytorch_utils.Conv1D` are supported",
            ));
        };
        let (in_features, out_features, fifo) = (lin.in_features(), lin.out_features(), lin.fan_in_fan_out());
        ctx.match_fan_in_fan_out(&mut config.fan_in_fan_out, fifo);
        let r = config.r;
        let shared = config.projections.clone();
        let mut lambda_b = Tensor::f_ones([out_features], (Kind::Float, Device::Cpu))
            .map_err(PeftError::torch("initialising vera_lambda_b"))?;
        let mut lambda_d = Tensor::f_randn([r], (Kind::Float, Device::Cpu))
            .map_err(PeftError::torch("initialising vera_lambda_d"))?;
        if config.init_weights {
            tch::no_grad(|| -> std::result::Result<(), tch::TchError> {
                let _ = lambda_d.f_zero_()?.f_fill_(config.d_initial)?;
                let _ = lambda_b.f_zero_()?;
                Ok(())
            })
            .map_err(PeftError::torch("initialising VeRA's vectors"))?;
        }
        let adapter = ctx.adapter_name.to_string();
        let lambda_b = (&ctx.path / "vera_lambda_b").add(&adapter, ctx.place(lambda_b)?, true);
        let lambda_d = (&ctx.path / "vera_lambda_d").add(&adapter, ctx.place(lambda_d)?, true);
        let attached =
            shared.attach(ctx, "VeRA", NAMES, [r, in_features, out_features, r], config.save_projection)?;
        Ok(Self {
            adapter,
            module: ctx.module_name.to_string(),
            fan_in_fan_out: fifo,
            in_features,
            out_features,
            r,
            dropout: config.vera_dropout,
            lambda_b,
            lambda_d,
            vera_a: attached.a,
            vera_b: attached.b,
            owns_projections: attached.owns,
            shared,
        })
    }

    /// `vera_lambda_b`, `(out)`.
    pub fn lambda_b(&self) -> &Tensor {
        &self.lambda_b
    }

    /// `vera_lambda_d`, `(r)`.
    pub fn lambda_d(&self) -> &Tensor {
        &self.lambda_d
    }

    /// The shared projections `(vera_A, vera_B)` (the whole tensors, not this layer's slices).
    pub fn projections(&self) -> (&Tensor, &Tensor) {
        (&self.vera_a, &self.vera_b)
    }

    fn sliced(&self) -> (Tensor, Tensor) {
        (self.vera_a.narrow(1, 0, self.in_features), self.vera_b.narrow(0, 0, self.out_features))
    }

    /// PEFT's `get_delta_weight`: `(λ_b · B_s) @ (λ_d · A_s)` in the base weight's layout.
    ///
    /// # Errors
    /// A libtorch failure.
    pub fn delta_weight(&self) -> Result<Tensor> {
        let kind = self.vera_b.kind();
        let cast = self.vera_b.device() == Device::Cpu && matches!(kind, Kind::Half | Kind::BFloat16);
        let f = || -> std::result::Result<Tensor, tch::TchError> {
            let (mut a, mut b) = self.sliced();
            let (mut ld, mut lb) = (self.lambda_d.shallow_clone(), self.lambda_b.shallow_clone());
            if cast {
                a = a.f_to_kind(Kind::Float)?;
                b = b.f_to_kind(Kind::Float)?;
                ld = ld.f_to_kind(Kind::Float)?;
                lb = lb.f_to_kind(Kind::Float)?;
            }
            let out = lb.f_unsqueeze(-1)?.f_mul(&b)?.f_matmul(&ld.f_unsqueeze(-1)?.f_mul(&a)?)?;
            let out = if self.fan_in_fan_out { out.f_transpose(0, 1)? } else { out };
            if cast {
                out.f_to_kind(kind)
            } else {
                Ok(out)
            }
        };
        tch::no_grad(f).map_err(PeftError::torch("computing VeRA's delta weight"))
    }
}

impl TunerLayer for VeraLayer {
    fn peft_type(&self) -> &'static str {
        PEFT_TYPE
    }

    fn named_tensors(&self) -> Vec<(String, Tensor)> {
        let mut v = vec![
            (format!("vera_lambda_b.{}", self.adapter), self.lambda_b.shallow_clone()),
            (format!("vera_lambda_d.{}", self.adapter), self.lambda_d.shallow_clone()),
        ];
        if self.owns_projections {
            v.push((format!("vera_A.{}", self.adapter), self.vera_a.shallow_clone()));
            v.push((format!("vera_B.{}", self.adapter), self.vera_b.shallow_clone()));
        }
        v
    }

    fn status_shared_devices(&self) -> Vec<(String, Device)> {
        self.shared.member_devices()
    }

    fn is_buffer(&self, name: &str) -> bool {
        name.starts_with("vera_A.") || name.starts_with("vera_B.")
    }

    fn is_trainable_tensor(&self, name: &str) -> bool {
        !self.is_buffer(name)
    }

    /// The shared projections are saved once, at the model level: `base_model.vera_A` / `base_model.vera_B`.
    fn checkpoint_key(&self, key: &str, adapter: &str) -> String {
        peft_projections::model_level_key(key, adapter, NAMES)
            .unwrap_or_else(|| peft_core::peft_config::keys::remove_adapter_name(key, adapter))
    }

    fn transform_output(&self, _base: &dyn BaseLayer, x: &Tensor, y: Tensor, ctx: &ForwardCtx<'_>) -> Tensor {
        let (a, b) = self.sliced();
        let x = x.to_kind(self.lambda_d.kind());
        let x = if self.dropout > 0.0 { x.dropout(self.dropout, ctx.train) } else { x };
        let kind = y.kind();
        let h = x.linear::<Tensor>(&a, None) * &self.lambda_d;
        (y + &self.lambda_b * h.linear::<Tensor>(&b, None)).to_kind(kind)
    }

    fn merge(&mut self, base: &mut dyn BaseLayer, ctx: &MergeCtx<'_>) -> Result<()> {
        merge_delta(base, &self.delta_weight()?, ctx.safe, &self.adapter, &self.module)
    }

    fn unmerge(&mut self, base: &mut dyn BaseLayer) -> Result<()> {
        unmerge_delta(base, &self.delta_weight()?, &self.module)
    }

    fn describe(&self) -> String {
        format!(
            "vera.Linear(in_features={}, out_features={}, r={})",
            self.in_features, self.out_features, self.r
        )
    }
}
