//! `UniloraLayer`: PEFT 0.21.2's `unilora.Linear` — UniLoRA on `nn.Linear` and GPT-2's `Conv1D`.
//!
//! With θ `(theta_d_length,)` the adapter's one trained vector, the layer's index maps
//! `unilora_indices_A` `(r, in)` and `unilora_indices_B` `(out, r)` (int64) and their scales
//! `unilora_scales_A` / `unilora_scales_B` (same shapes, `1/√(uses of the entry)` over the whole adapter):
//!
//! * `A = θ[indices_A] ⊙ scales_A` `(r, in)`, `B = θ[indices_B] ⊙ scales_B` `(out, r)`;
//! * forward, not merged: `y = base(x) + (drop(x) · Aᵀ) · Bᵀ`, summed over the active adapters;
//! * `ΔW = B·A` `(out, in)` (transposed for `Conv1D`), added on merge.
//!
//! θ belongs to the adapter, not the layer: the adapter's first layer registers it in the var store and
//! saves it under the model-level key `base_model.unilora_theta_d`; the other layers read the same tensor.
//! The maps and scales are buffers, saved only with `save_indices` (otherwise drawn again from
//! `proj_seed` on load).

use crate::config::{UniloraConfig, PEFT_TYPE};
use crate::shared::SharedTheta;
use peft_core::config::LayerInit;
use peft_core::layer::{
    add_group_terms, all_finite, merge_delta, unmerge_delta, BaseLayer, ForwardCtx, MergeCtx, TunerLayer,
};
use peft_core::{PeftError, Result};
use tch::{Device, Kind, Tensor};

/// One UniLoRA adapter on one linear layer.
#[derive(Debug)]
pub struct UniloraLayer {
    adapter: String,
    module: String,
    r: i64,
    in_features: i64,
    out_features: i64,
    fan_in_fan_out: bool,
    dropout: f64,
    save_indices: bool,
    theta: Tensor,
    indices_a: Tensor,
    indices_b: Tensor,
    scales_a: Tensor,
    scales_b: Tensor,
    /// This layer registered θ and saves it.
    owns_theta: bool,
    /// The model's θ vectors (PEFT's status lists every adapter in it on every layer).
    shared: SharedTheta,
}

const UNSUPPORTED: &str = "Currently, only the following modules are supported: `torch.nn.Linear`, \
                           `transformers.pytorch_utils.Conv1D`.";

const SCALE_NAMES: [&str; 4] =
    ["unilora_indices_A", "unilora_indices_B", "unilora_scales_A", "unilora_scales_B"];

impl UniloraLayer {
    /// Creates the adapter as PEFT's `update_layer` and `_assign_unilora_indices_and_scales` do: the
    /// placeholder maps `randint(0, theta_d_length, (r, in))` and `(out, r)` drawn (and discarded, PEFT
    /// overwrites them) so the global generator moves as in PEFT, then this layer's part of the adapter's
    /// index map, its scales and θ (placed as PEFT places adapter tensors; θ registered by the first
    /// layer).
    ///
    /// # Errors
    /// [`PeftError::UnsupportedLayer`] for anything but dense linear layers and `Conv1D` (quantized
    /// linears are refused: PEFT casts the scales to the packed weight's integer dtype).
    pub fn create(config: &mut UniloraConfig, ctx: &mut LayerInit<'_, '_>) -> Result<Self> {
        let Some(lin) = ctx.base.as_linear() else {
            return Err(ctx.unsupported(PEFT_TYPE, UNSUPPORTED));
        };
        if !lin.weight_is_storage() {
            return Err(ctx.unsupported(
                PEFT_TYPE,
                "quantized linear layers are not supported: PEFT casts UniLoRA's scales to the quantized \
                 weight's integer dtype, which zeroes them",
            ));
        }
        let (in_features, out_features, fifo) = (lin.in_features(), lin.out_features(), lin.fan_in_fan_out());
        ctx.match_fan_in_fan_out(&mut config.fan_in_fan_out, fifo);
        let (r, d) = (config.r, config.theta_d_length);
        let torch = |what: &'static str| PeftError::torch(what);
        let long = (Kind::Int64, Device::Cpu);
        for shape in [[r, in_features], [out_features, r]] {
            let _ = Tensor::f_randint_low(0, d, shape, long)
                .map_err(torch("drawing UniLoRA's placeholder indices"))?;
        }
        let plan = config.plan.0.clone().ok_or_else(|| {
            PeftError::Invalid("UniLoRA's index map was not drawn before its layers".into())
        })?;
        let mut plan = plan.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let offset = *plan.offsets.get(ctx.module_name).ok_or_else(|| {
            PeftError::Invalid(format!(
                "`{}` is not among the layers UniLoRA's index map covers",
                ctx.module_name
            ))
        })?;
        let (_, _, device) = ctx.placement()?;
        let part = |start: i64, shape: [i64; 2]| -> std::result::Result<(Tensor, Tensor), tch::TchError> {
            let idx = plan.indices.f_narrow(0, start, shape[0] * shape[1])?.f_view(shape)?.copy();
            let scales = plan.inv_sqrt_counts.f_index(&[Some(&idx)])?;
            Ok((idx.f_to_device(device)?, scales))
        };
        let what = "taking a layer's part of UniLoRA's index map";
        let (indices_a, scales_a) = part(offset, [r, in_features]).map_err(torch(what))?;
        let (indices_b, scales_b) = part(offset + r * in_features, [out_features, r]).map_err(torch(what))?;
        // PEFT casts the scales to the base weight's dtype, and its adapter-dtype autocast (which covers
        // buffer dicts too) brings half-precision ones back to f32: rounded through the base dtype.
        let (scales_a, scales_b) = (ctx.place(scales_a)?, ctx.place(scales_b)?);
        let adapter = ctx.adapter_name.to_string();
        let shared = config.shared.clone();
        let (theta, owns_theta) = match shared.get(&adapter) {
            Some(theta) => (theta, false),
            None => {
                let drawn = plan
                    .theta
                    .take()
                    .ok_or_else(|| PeftError::Invalid("UniLoRA's theta_d was registered twice".into()))?;
                let theta = (&ctx.path / "unilora_theta_d").add(&adapter, ctx.place(drawn)?, true);
                shared.insert(&adapter, &theta);
                (theta, true)
            }
        };
        Ok(Self {
            adapter,
            module: ctx.module_name.to_string(),
            r,
            in_features,
            out_features,
            fan_in_fan_out: fifo,
            dropout: config.unilora_dropout,
            save_indices: config.save_indices,
            theta,
            indices_a,
            indices_b,
            scales_a,
            scales_b,
            owns_theta,
            shared,
        })
    }

    /// `(θ, indices_A, indices_B, scales_A, scales_B)`.
    pub fn tensors(&self) -> (&Tensor, &Tensor, &Tensor, &Tensor, &Tensor) {
        (&self.theta, &self.indices_a, &self.indices_b, &self.scales_a, &self.scales_b)
    }

    /// PEFT's `_get_lora_matrices`: `A` `(r, in)` and `B` `(out, r)` gathered from θ and scaled, in f32
    /// when `fp32` (PEFT's CPU half-precision merge).
    pub fn factors(&self, fp32: bool) -> (Tensor, Tensor) {
        let up = |t: &Tensor| if fp32 { t.to_kind(Kind::Float) } else { t.shallow_clone() };
        let (theta, sa, sb) = (up(&self.theta), up(&self.scales_a), up(&self.scales_b));
        // `theta[indices]`: the same advanced-indexing op as PEFT's (its backward accumulates alike).
        let a = theta.index(&[Some(&self.indices_a)]) * sa;
        let b = theta.index(&[Some(&self.indices_b)]) * sb;
        (a, b)
    }

    /// PEFT's `get_delta_weight`: `B·A` `(out, in)`, transposed for `Conv1D`; computed in f32 and cast back
    /// for a half-precision θ on the CPU.
    pub fn delta_weight(&self) -> Tensor {
        let kind = self.theta.kind();
        let fp32 = self.theta.device() == Device::Cpu && matches!(kind, Kind::Half | Kind::BFloat16);
        let (a, b) = self.factors(fp32);
        let delta = b.matmul(&a);
        let delta = if self.fan_in_fan_out { delta.tr() } else { delta };
        if fp32 {
            delta.to_kind(kind)
        } else {
            delta
        }
    }

    /// This adapter's term `(drop(x) · Aᵀ) · Bᵀ`, with `x` in θ's dtype.
    fn term(&self, x: &Tensor, train: bool) -> Tensor {
        let (a, b) = self.factors(false);
        let x = x.to_kind(self.theta.kind());
        let x = if train && self.dropout > 0.0 { x.dropout(self.dropout, true) } else { x };
        x.linear::<Tensor>(&a, None).linear::<Tensor>(&b, None)
    }
}

impl Drop for UniloraLayer {
    /// The adapter's θ leaves the model's dict with the layer that registered it (adapter deleted).
    fn drop(&mut self) {
        if self.owns_theta {
            self.shared.remove(&self.adapter);
        }
    }
}

impl TunerLayer for UniloraLayer {
    fn peft_type(&self) -> &'static str {
        PEFT_TYPE
    }

    fn named_tensors(&self) -> Vec<(String, Tensor)> {
        let a = &self.adapter;
        let mut v = Vec::with_capacity(5);
        if self.owns_theta {
            v.push((format!("unilora_theta_d.{a}"), self.theta.shallow_clone()));
        }
        let buffers = [&self.indices_a, &self.indices_b, &self.scales_a, &self.scales_b];
        v.extend(SCALE_NAMES.iter().zip(buffers).map(|(n, t)| (format!("{n}.{a}"), t.shallow_clone())));
        v
    }

    fn is_buffer(&self, name: &str) -> bool {
        !name.starts_with("unilora_theta_d.")
    }

    fn is_trainable_tensor(&self, name: &str) -> bool {
        !self.is_buffer(name)
    }

    /// θ (from its owning layer), and the maps and scales only with `save_indices` (PEFT registers them
    /// as non-persistent buffers otherwise).
    fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let mut v = self.named_tensors();
        if !self.save_indices {
            v.retain(|(name, _)| !self.is_buffer(name));
        }
        v
    }

    /// θ is saved once, at the model level: `base_model.unilora_theta_d`.
    fn checkpoint_key(&self, key: &str, adapter: &str) -> String {
        if key.ends_with(&format!(".unilora_theta_d.{adapter}")) {
            return "base_model.unilora_theta_d".to_string();
        }
        peft_core::peft_config::keys::remove_adapter_name(key, adapter)
    }

    /// Every layer holds the model's whole θ dict, so PEFT's status lists all UniLoRA adapters here.
    fn status_shared_parameters(&self) -> Vec<(String, Tensor)> {
        self.shared.entries()
    }

    fn transform_output(&self, _base: &dyn BaseLayer, x: &Tensor, y: Tensor, ctx: &ForwardCtx<'_>) -> Tensor {
        // PEFT adds every active adapter's term out of place and casts the sum back once.
        let Some(group) = ctx.active_group(self) else { return y };
        add_group_terms(y, &group, |l| Some(l.term(x, ctx.train)))
    }

    fn merge(&mut self, base: &mut dyn BaseLayer, ctx: &MergeCtx<'_>) -> Result<()> {
        // PEFT's safe merge refuses a non-finite θ even where no entry of it reaches this layer.
        if ctx.safe && !all_finite(&self.theta)? {
            return Err(PeftError::NonFiniteMerge {
                adapter: self.adapter.clone(),
                module: self.module.clone(),
            });
        }
        let delta = tch::no_grad(|| self.delta_weight());
        merge_delta(base, &delta, ctx.safe, &self.adapter, &self.module)
    }

    fn unmerge(&mut self, base: &mut dyn BaseLayer) -> Result<()> {
        let delta = tch::no_grad(|| self.delta_weight());
        unmerge_delta(base, &delta, &self.module)
    }

    /// PEFT's class is `unilora.Linear` without a `__repr__` of its own: its status says `Linear`.
    fn describe(&self) -> String {
        format!("Linear(in_features={}, out_features={}, r={})", self.in_features, self.out_features, self.r)
    }
}
