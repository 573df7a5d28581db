//! LoRA on linear layers (`nn.Linear` and GPT-2's `Conv1D`): PEFT's `lora.Linear`.
//!
//! With `x` of shape `(…, in)`, `A` `(r, in)`, `B` `(out, r)` and `s = lora_alpha / r` (or
//! `lora_alpha / sqrt(r)` with rsLoRA):
//!
//! ```text
//! y = base(x) + B(A(dropout(x))) · s          (B carries a bias with lora_bias)
//! ΔW = (B @ A) · s, transposed to (in, out) for fan_in_fan_out bases
//! ```
//!
//! Every op is the ATen op PEFT calls (`linear`, `matmul`, `add`, `mul`, `dropout`), in PEFT's order, so
//! results are bit-identical on the same libtorch.

use crate::config::{InitLoraWeights, LoraConfig, PEFT_TYPE};
use peft_core::config::LayerInit;
use peft_core::error::{PeftError, Result};
use peft_core::init;
use peft_core::layer::{all_finite, BaseLayer, ForwardCtx, LinearLike, TunerLayer};
use std::any::Any;
use tch::{Device, Kind, Tensor};

/// One LoRA adapter on one linear layer.
#[derive(Debug)]
pub struct LoraLinear {
    adapter: String,
    module: String,
    /// Rank.
    pub r: i64,
    /// Alpha.
    pub lora_alpha: f64,
    /// The factor applied to `B(A(x))`.
    pub scaling: f64,
    /// Dropout probability on the LoRA path.
    pub dropout: f64,
    /// Base weight stored `(in, out)`.
    pub fan_in_fan_out: bool,
    /// `A`, `(r, in)`.
    pub lora_a: Tensor,
    /// `B`, `(out, r)`.
    pub lora_b: Tensor,
    /// `B`'s bias, `(out,)`, with `lora_bias`.
    pub lora_b_bias: Option<Tensor>,
    in_features: i64,
    out_features: i64,
}

fn alloc(shape: &[i64]) -> Result<Tensor> {
    Tensor::f_empty(shape, (Kind::Float, Device::Cpu)).map_err(PeftError::torch("allocating LoRA weights"))
}

impl LoraLinear {
    /// Creates the adapter as PEFT's `LoraLayer.update_layer` does, drawing the same random numbers in
    /// the same order: `nn.Linear(in, r)` and `nn.Linear(r, out)` constructors (kaiming-uniform weights,
    /// uniform bias), then `reset_lora_parameters`; tensors are made on the CPU in fp32, moved to the base
    /// layer's device and float dtype, and upcast to fp32 when `autocast_adapter_dtype` is set.
    ///
    /// # Errors
    /// [`PeftError::UnsupportedLayer`] for a non-linear base.
    pub fn create(config: &mut LoraConfig, ctx: &mut LayerInit<'_, '_>) -> Result<Self> {
        let Some(lin) = ctx.base.as_linear() else {
            return Err(
                ctx.unsupported(PEFT_TYPE, "peft-lora supports linear layers (nn.Linear, Conv1D) so far")
            );
        };
        let (in_features, out_features) = (lin.in_features(), lin.out_features());
        let base_fifo = lin.fan_in_fan_out();
        let weight = lin.weight();
        let has_base_bias = lin.bias().is_some();
        let (device, base_kind) = (weight.device(), weight.kind());
        if config.fan_in_fan_out != base_fifo {
            // PEFT corrects the config object itself, so the saved config carries the corrected value.
            ctx.warn(if base_fifo {
                "fan_in_fan_out is set to False but the target module is `Conv1D`. Setting fan_in_fan_out to True."
            } else {
                "fan_in_fan_out is set to True but the target module is `torch.nn.Linear`. Setting fan_in_fan_out to False."
            });
            config.fan_in_fan_out = base_fifo;
        }
        let (r, lora_alpha) = config.rank_and_alpha(ctx.module_name)?;
        if r <= 0 {
            return Err(PeftError::Invalid(format!(
                "`r` should be a positive integer value but the value passed is {r}"
            )));
        }
        if config.lora_bias && !has_base_bias {
            ctx.warn(format!(
                "`lora_bias=True` was passed but the targeted layer `{}` has no bias. This means that merging LoRA \
                 weights won't be possible.",
                ctx.module_name
            ));
        }
        let sqrt5 = 5f64.sqrt();
        // nn.Linear(in, r, bias=False)
        let mut a = alloc(&[r, in_features])?;
        init::kaiming_uniform_(&mut a, sqrt5)?;
        // nn.Linear(r, out, bias=lora_bias)
        let mut b = alloc(&[out_features, r])?;
        init::kaiming_uniform_(&mut b, sqrt5)?;
        let mut b_bias = None;
        if config.lora_bias {
            let mut bb = alloc(&[out_features])?;
            init::bias_uniform_(&mut bb, r)?;
            b_bias = Some(bb);
        }
        // reset_lora_parameters
        match &config.init_lora_weights {
            InitLoraWeights::Bool(false) => {}
            InitLoraWeights::Bool(true) => {
                init::kaiming_uniform_(&mut a, sqrt5)?;
                init::zeros_(&mut b)?;
                if let Some(bb) = b_bias.as_mut() {
                    init::zeros_(bb)?;
                }
            }
            InitLoraWeights::Scheme(s) if s.eq_ignore_ascii_case("gaussian") => {
                init::normal_(&mut a, 0.0, 1.0 / r as f64)?;
                init::zeros_(&mut b)?;
                if let Some(bb) = b_bias.as_mut() {
                    init::zeros_(bb)?;
                }
            }
            InitLoraWeights::Scheme(s) => {
                return Err(peft_core::config::unsupported_option(
                    PEFT_TYPE,
                    "init_lora_weights",
                    &serde_json::Value::String(s.clone()),
                    "",
                ))
            }
        }
        // _move_adapter_to_device_of_base_layer, then autocast_adapter_dtype.
        let target_kind = match base_kind {
            Kind::Half | Kind::BFloat16 | Kind::Float | Kind::Double => base_kind,
            _ => Kind::Float,
        };
        let final_kind = match target_kind {
            Kind::Half | Kind::BFloat16 if ctx.autocast_adapter_dtype => Kind::Float,
            k => k,
        };
        let place = |t: Tensor| -> Result<Tensor> {
            t.f_to_device(device)
                .and_then(|t| t.f_to_kind(target_kind))
                .and_then(|t| t.f_to_kind(final_kind))
                .map_err(PeftError::torch("moving LoRA weights to the base layer's device"))
        };
        let adapter = ctx.adapter_name.to_string();
        let pa = &ctx.path / "lora_A" / &adapter;
        let pb = &ctx.path / "lora_B" / &adapter;
        let lora_a = pa.add("weight", place(a)?, true);
        let lora_b = pb.add("weight", place(b)?, true);
        let lora_b_bias = match b_bias {
            Some(bb) => Some(pb.add("bias", place(bb)?, true)),
            None => None,
        };
        Ok(Self {
            adapter,
            module: ctx.module_name.to_string(),
            r,
            lora_alpha,
            scaling: config.scaling_for(r, lora_alpha),
            dropout: config.lora_dropout,
            fan_in_fan_out: base_fifo,
            lora_a,
            lora_b,
            lora_b_bias,
            in_features,
            out_features,
        })
    }

    /// The adapter's name.
    pub fn adapter_name(&self) -> &str {
        &self.adapter
    }

    /// PEFT's `get_delta_weight`: `(B @ A) · s`, in the base weight's layout. On the CPU, fp16/bf16
    /// adapters are multiplied in fp32 and the result cast back.
    ///
    /// # Errors
    /// A libtorch failure.
    pub fn delta_weight(&self) -> Result<Tensor> {
        let kind = self.lora_b.kind();
        let cast = self.lora_b.device() == Device::Cpu && matches!(kind, Kind::Half | Kind::BFloat16);
        let f = || -> std::result::Result<Tensor, tch::TchError> {
            let (a, b) = if cast {
                (self.lora_a.f_to_kind(Kind::Float)?, self.lora_b.f_to_kind(Kind::Float)?)
            } else {
                (self.lora_a.shallow_clone(), self.lora_b.shallow_clone())
            };
            let mut d = b.f_matmul(&a)?;
            if self.fan_in_fan_out {
                d = d.f_tr()?;
            }
            let d = d.f_mul_scalar(self.scaling)?;
            if cast {
                d.f_to_kind(kind)
            } else {
                Ok(d)
            }
        };
        tch::no_grad(f).map_err(PeftError::torch("computing the LoRA delta weight"))
    }

    fn bias_delta(&self) -> Result<Option<Tensor>> {
        match &self.lora_b_bias {
            Some(bb) => tch::no_grad(|| bb.f_mul_scalar(self.scaling))
                .map(Some)
                .map_err(PeftError::torch("computing the LoRA bias delta")),
            None => Ok(None),
        }
    }

    fn linear_of<'a>(&self, base: &'a mut dyn BaseLayer) -> Result<&'a mut dyn LinearLike> {
        let kind = base.kind();
        base.as_linear_mut()
            .ok_or_else(|| PeftError::Invalid(format!("LoRA linear adapter on a {kind} base")))
    }
}

impl TunerLayer for LoraLinear {
    fn peft_type(&self) -> &'static str {
        PEFT_TYPE
    }

    fn named_tensors(&self) -> Vec<(String, Tensor)> {
        let ad = &self.adapter;
        let mut v = vec![
            (format!("lora_A.{ad}.weight"), self.lora_a.shallow_clone()),
            (format!("lora_B.{ad}.weight"), self.lora_b.shallow_clone()),
        ];
        if let Some(bb) = &self.lora_b_bias {
            v.push((format!("lora_B.{ad}.bias"), bb.shallow_clone()));
        }
        v
    }

    fn transform_output(&self, _base: &dyn BaseLayer, x: &Tensor, y: Tensor, ctx: &ForwardCtx<'_>) -> Tensor {
        let x =
            if x.kind() != self.lora_a.kind() { x.to_kind(self.lora_a.kind()) } else { x.shallow_clone() };
        let x = if self.dropout > 0.0 && ctx.train { x.dropout(self.dropout, true) } else { x };
        let h = x.linear::<&Tensor>(&self.lora_a, None).linear(&self.lora_b, self.lora_b_bias.as_ref());
        y + h * self.scaling
    }

    fn merge(&mut self, base: &mut dyn BaseLayer, safe: bool) -> Result<()> {
        let delta = self.delta_weight()?;
        let bias_delta = self.bias_delta()?;
        let lin = self.linear_of(base)?;
        let weight = lin.weight();
        let base_bias = lin.bias();
        if bias_delta.is_some() && base_bias.is_none() {
            return Err(PeftError::Invalid(
                "Impossible to merge LoRA with `lora_bias=True` because the base layer has no bias.".into(),
            ));
        }
        let kind = weight.kind();
        let torch = PeftError::torch("merging a LoRA adapter");
        if safe {
            let merged = tch::no_grad(|| weight.f_add(&delta.f_to_kind(kind)?)).map_err(torch)?;
            if !all_finite(&merged)? {
                return Err(PeftError::NonFiniteMerge {
                    adapter: self.adapter.clone(),
                    module: self.module.clone(),
                });
            }
            let new_bias = match (&base_bias, &bias_delta) {
                (Some(b), Some(d)) => {
                    let nb = tch::no_grad(|| b.f_add(d)).map_err(PeftError::torch("merging a LoRA bias"))?;
                    if !all_finite(&nb)? {
                        return Err(PeftError::NonFiniteMerge {
                            adapter: self.adapter.clone(),
                            module: self.module.clone(),
                        });
                    }
                    Some(nb)
                }
                _ => None,
            };
            lin.set_weight(&merged)?;
            if let (Some(mut b), Some(nb)) = (base_bias, new_bias) {
                tch::no_grad(|| b.f_copy_(&nb)).map_err(PeftError::torch("writing a merged bias"))?;
            }
        } else {
            let mut w = weight;
            tch::no_grad(|| w.f_add_(&delta)).map(drop).map_err(torch)?;
            lin.set_weight(&w)?;
            if let (Some(mut b), Some(d)) = (base_bias, bias_delta) {
                tch::no_grad(|| b.f_add_(&d)).map(drop).map_err(PeftError::torch("merging a LoRA bias"))?;
            }
        }
        Ok(())
    }

    fn unmerge(&mut self, base: &mut dyn BaseLayer) -> Result<()> {
        let delta = self.delta_weight()?;
        let bias_delta = self.bias_delta()?;
        let lin = self.linear_of(base)?;
        let mut w = lin.weight();
        let kind = w.kind();
        tch::no_grad(|| delta.f_to_kind(kind).and_then(|d| w.f_sub_(&d)))
            .map(drop)
            .map_err(PeftError::torch("unmerging a LoRA adapter"))?;
        lin.set_weight(&w)?;
        if let (Some(mut b), Some(d)) = (lin.bias(), bias_delta) {
            tch::no_grad(|| b.f_sub_(&d)).map(drop).map_err(PeftError::torch("unmerging a LoRA bias"))?;
        }
        Ok(())
    }

    fn describe(&self) -> String {
        format!(
            "lora.Linear(in_features={}, out_features={}, r={}, lora_alpha={}, scaling={})",
            self.in_features, self.out_features, self.r, self.lora_alpha, self.scaling
        )
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}
