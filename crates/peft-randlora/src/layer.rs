//! RandLoRA on one linear layer (dense, GPT-2's `Conv1D`, or quantized).
//!
//! With `m = min(in, out)`, `M = max(in, out)`, `n = ⌈m / r⌉` bases, slices of the shared frozen bases
//! `A_s = randlora_A[:, :n, :m]` `(r, 1, m)` and `B_s = randlora_B[:M, :n, :]` `(M, n, r)`, and the
//! trained `Λ = randlora_lambda` `(r, n)` and `Γ = randlora_gamma` `(n, m)`:
//!
//! * `S = (Λ[:, :, None] · A_s · Γ[None]).flatten(0, 1)` `(r·n, m)` (PEFT's `UniqueBaseGrad`, with its
//!   hand-written backward: `csrc/randlora.cpp`), `U = B_s.flatten(1)` `(M, n·r)`;
//! * the factors applied in turn are `(S, U)` when `m = in`, else `(Uᵀ, Sᵀ)`;
//! * `y = base(x) + linear(linear(dropout(x), first), second) · randlora_alpha / r`.
//!
//! The delta weight is `(firstᵀ @ secondᵀ)ᵀ` `(out, in)` (transposed for `fan_in_fan_out`) times the
//! scaling, computed in f32 on the CPU for half-precision bases, as PEFT does.

use crate::bases::num_bases;
use crate::config::{RandloraConfig, PEFT_TYPE};
use peft_core::config::LayerInit;
use peft_core::layer::{
    add_group_terms, merge_delta, unmerge_delta, BaseLayer, ForwardCtx, MergeCtx, TunerLayer,
};
use peft_core::{PeftError, Result};
use peft_projections::SharedProjections;
use tch::{Device, Kind, Tensor};

/// The bases' names: each layer holds them under these (saved as `<module>.randlora_A`, as PEFT's
/// per-layer references to its shared `BufferDict` are).
const NAMES: [&str; 2] = ["randlora_A", "randlora_B"];

/// The names under which the owning layer also holds the bases for the model-level keys
/// (`base_model.randlora_A`).
const MODEL_NAMES: [&str; 2] = ["randlora_A@model", "randlora_B@model"];

extern "C" {
    fn peft_randlora_unique_base_grad(
        a: *const torch_sys::C_tensor,
        lambda: *const torch_sys::C_tensor,
        gamma: *const torch_sys::C_tensor,
        out: *mut *mut torch_sys::C_tensor,
    ) -> *mut std::ffi::c_char;
}

/// PEFT's `UniqueBaseGrad.apply(a, lambda, gamma)`: `lambda[:, :, None] * a * gamma[None]` `(r, n, m)` as a
/// libtorch autograd function whose backward is PEFT's two einsums (no gradient for `a`).
///
/// # Errors
/// Shapes libtorch rejects.
pub fn unique_base_grad(a: &Tensor, lambda: &Tensor, gamma: &Tensor) -> Result<Tensor> {
    let mut out: *mut torch_sys::C_tensor = std::ptr::null_mut();
    // SAFETY: live tch tensors borrowed for the call; the shim returns an owned tensor or message.
    unsafe {
        let err = peft_randlora_unique_base_grad(a.as_ptr(), lambda.as_ptr(), gamma.as_ptr(), &mut out);
        peft_core::rng::take_tensor(err, out, "RandLoRA's scaled basis")
    }
}

/// One RandLoRA adapter on one layer (PEFT's `randlora.Linear`, `Linear8bitLt`, `Linear4bit`).
#[derive(Debug)]
pub struct RandloraLayer {
    adapter: String,
    module: String,
    fan_in_fan_out: bool,
    in_features: i64,
    out_features: i64,
    r: i64,
    num_bases: i64,
    scaling: f64,
    dropout: f64,
    /// A quantized base: PEFT's bitsandbytes forward, and no merge (see [`TunerLayer::merge`]).
    quantized: bool,
    lambda: Tensor,
    gamma: Tensor,
    /// The shared bases (shallow clones of one tensor per model).
    randlora_a: Tensor,
    randlora_b: Tensor,
    /// The adapter's shared-bases handle (for the status' device list).
    shared: SharedProjections,
    /// This layer holds the shared bases in the var store and saves them at the model level (the first
    /// layer of the adapter, with `save_projection`).
    owns_projections: bool,
    /// The bases are saved (PEFT's persistent `BufferDict`): every layer lists its copy.
    save_projection: bool,
}

impl RandloraLayer {
    /// Creates the adapter as PEFT's `update_layer`: `randlora_lambda = randn(r, n)` (the global
    /// generator), `randlora_gamma = ones(n, m) / max(in, out)`, reset to `0` / `1 / max(n, m)` with
    /// `init_weights`, then moved to the base layer's device and dtype; the shared bases are placed by
    /// the first layer and reused by the others.
    ///
    /// # Errors
    /// [`PeftError::UnsupportedLayer`] for anything but linear layers and `Conv1D`; bases too small for
    /// the layer or of another rank.
    pub fn create(config: &mut RandloraConfig, ctx: &mut LayerInit<'_, '_>) -> Result<Self> {
        let Some(lin) = ctx.base.as_linear() else {
            return Err(ctx.unsupported(
                PEFT_TYPE,
                "only `torch.nn.Linear` (optionally quantized) and `transformers.pytorch_utils.Conv1D` are supported",
            ));
        };
        let (in_features, out_features, fifo) = (lin.in_features(), lin.out_features(), lin.fan_in_fan_out());
        let quantized = !ctx.base.as_weighted().is_some_and(|w| w.weight_is_storage());
        ctx.match_fan_in_fan_out(&mut config.fan_in_fan_out, fifo);
        let r = config.r;
        let (min_dim, max_dim) = (in_features.min(out_features), in_features.max(out_features));
        let n = num_bases(min_dim, r);
        let init = || -> std::result::Result<(Tensor, Tensor), tch::TchError> {
            let mut lambda = Tensor::f_randn([r, n], (Kind::Float, Device::Cpu))?;
            let mut gamma =
                Tensor::f_ones([n, min_dim], (Kind::Float, Device::Cpu))?.f_div_scalar(max_dim)?;
            if config.init_weights {
                tch::no_grad(|| -> std::result::Result<(), tch::TchError> {
                    let _ = lambda.f_zero_()?;
                    let _ = gamma.f_fill_(1.0 / n.max(min_dim) as f64)?;
                    Ok(())
                })?;
            }
            Ok((lambda, gamma))
        };
        let (lambda, gamma) = init().map_err(PeftError::torch("initialising RandLoRA's diagonals"))?;
        let adapter = ctx.adapter_name.to_string();
        let lambda = (&ctx.path / "randlora_lambda").add(&adapter, ctx.place(lambda)?, true);
        let gamma = (&ctx.path / "randlora_gamma").add(&adapter, ctx.place(gamma)?, true);
        let shared = config.projections.clone();
        let attached =
            shared.attach(ctx, "RandLora", NAMES, [r, min_dim, max_dim, r], config.save_projection)?;
        Ok(Self {
            adapter,
            module: ctx.module_name.to_string(),
            fan_in_fan_out: fifo,
            in_features,
            out_features,
            r,
            num_bases: n,
            scaling: config.scaling(),
            dropout: config.randlora_dropout,
            quantized,
            lambda,
            gamma,
            randlora_a: attached.a,
            randlora_b: attached.b,
            owns_projections: attached.owns,
            save_projection: config.save_projection,
            shared,
        })
    }

    /// `randlora_lambda`, `(r, n)`.
    pub fn lambda(&self) -> &Tensor {
        &self.lambda
    }

    /// `randlora_gamma`, `(n, min(in, out))`.
    pub fn gamma(&self) -> &Tensor {
        &self.gamma
    }

    /// The shared bases `(randlora_A, randlora_B)` (the whole tensors, not this layer's slices).
    pub fn bases(&self) -> (&Tensor, &Tensor) {
        (&self.randlora_a, &self.randlora_b)
    }

    /// The number of bases `n = ⌈min(in, out) / r⌉`.
    pub fn num_bases(&self) -> i64 {
        self.num_bases
    }

    /// The scaling `randlora_alpha / r`.
    pub fn scaling(&self) -> f64 {
        self.scaling
    }

    /// PEFT's `get_scaled_bases`: the two factors in the order they apply to the input, on `device`.
    fn scaled_bases(&self, device: Device) -> std::result::Result<(Tensor, Tensor), tch::TchError> {
        let (mut a, mut b) = (self.randlora_a.shallow_clone(), self.randlora_b.shallow_clone());
        // Half-precision bases on the CPU compute in f32 (slow half matmuls there), as PEFT does.
        let cast = device == Device::Cpu && matches!(b.kind(), Kind::Half | Kind::BFloat16);
        let mut lambda = self.lambda.f_to_device(device)?;
        let mut gamma = self.gamma.f_to_device(device)?;
        if cast {
            a = a.f_to_kind(Kind::Float)?;
            b = b.f_to_kind(Kind::Float)?;
            lambda = lambda.f_to_kind(Kind::Float)?;
            gamma = gamma.f_to_kind(Kind::Float)?;
        }
        let (min_dim, max_dim) =
            (self.in_features.min(self.out_features), self.in_features.max(self.out_features));
        let n = self.num_bases;
        // Python slices clamp: A's middle dimension has size 1 whatever `n` is.
        let a = a.f_slice(1, 0, n, 1)?.f_slice(2, 0, min_dim, 1)?.f_to_device(device)?;
        let b = b.f_slice(0, 0, max_dim, 1)?.f_slice(1, 0, n, 1)?.f_to_device(device)?;
        let update_b = b.f_flatten(1, -1)?;
        let update_a = unique_base_grad(&a, &lambda, &gamma)
            .map_err(|e| tch::TchError::Torch(e.to_string()))?
            .f_flatten(0, 1)?;
        if min_dim == self.in_features {
            Ok((update_a, update_b))
        } else {
            Ok((update_b.f_transpose(0, 1)?, update_a.f_transpose(0, 1)?))
        }
    }

    /// PEFT's `get_delta_weight` (dense layers): `(firstᵀ @ secondᵀ)ᵀ · scaling` in the base weight's layout.
    ///
    /// # Errors
    /// A libtorch failure.
    pub fn delta_weight(&self) -> Result<Tensor> {
        let f = || -> std::result::Result<Tensor, tch::TchError> {
            let (first, second) = self.scaled_bases(self.randlora_b.device())?;
            let update = first.f_transpose(0, 1)?.f_matmul(&second.f_transpose(0, 1)?)?.f_transpose(0, 1)?;
            let update = if self.fan_in_fan_out { update.f_transpose(0, 1)? } else { update };
            update.f_mul_scalar(self.scaling)
        };
        tch::no_grad(f).map_err(PeftError::torch("computing RandLoRA's delta weight"))
    }

    /// `delta` in the base weight's dtype (`delta.to(orig_dtype)`).
    fn in_weight_kind(&self, base: &dyn BaseLayer, delta: Tensor) -> Result<Tensor> {
        match base.as_weighted() {
            Some(w) => {
                delta.f_to_kind(w.weight().kind()).map_err(PeftError::torch("casting RandLoRA's delta"))
            }
            None => Ok(delta),
        }
    }

    /// This adapter's term, with `x` cast to the factors' dtype: `linear(linear(dropout(x), first),
    /// second)` (unscaled), and that dtype.
    fn term(&self, x: &Tensor, train: bool) -> (Tensor, Kind) {
        let (first, second) = self.scaled_bases(x.device()).unwrap_or_else(|e| {
            // Only a failure of the C++ function lands here (shapes are checked at creation): the same
            // product with tensor ops keeps the forward pass going, with autograd's backward.
            log::warn!("`{}`: RandLoRA's scaled bases: {e}; computing them with tensor ops", self.module);
            self.scaled_bases_ops(x.device())
        });
        let kind = second.kind();
        let x = x.to_kind(kind);
        let x = if self.dropout > 0.0 { x.dropout(self.dropout, train) } else { x };
        (x.linear::<Tensor>(&first, None).linear::<Tensor>(&second, None), kind)
    }

    /// [`Self::scaled_bases`] with tensor ops instead of PEFT's autograd function (a fallback).
    fn scaled_bases_ops(&self, device: Device) -> (Tensor, Tensor) {
        let kind = self.lambda.kind();
        let (min_dim, max_dim) =
            (self.in_features.min(self.out_features), self.in_features.max(self.out_features));
        let a = self.randlora_a.slice(2, 0, min_dim, 1).to_device(device).to_kind(kind);
        let b = self.randlora_b.slice(0, 0, max_dim, 1).slice(1, 0, self.num_bases, 1).to_device(device);
        let s = (self.lambda.to_device(device).unsqueeze(2) * a * self.gamma.to_device(device).unsqueeze(0))
            .flatten(0, 1);
        let u = b.to_kind(kind).flatten(1, -1);
        if min_dim == self.in_features {
            (s, u)
        } else {
            (u.tr(), s.tr())
        }
    }
}

impl TunerLayer for RandloraLayer {
    fn peft_type(&self) -> &'static str {
        PEFT_TYPE
    }

    fn named_tensors(&self) -> Vec<(String, Tensor)> {
        let mut v = vec![
            (format!("randlora_lambda.{}", self.adapter), self.lambda.shallow_clone()),
            (format!("randlora_gamma.{}", self.adapter), self.gamma.shallow_clone()),
        ];
        if self.save_projection {
            v.push((format!("randlora_A.{}", self.adapter), self.randlora_a.shallow_clone()));
            v.push((format!("randlora_B.{}", self.adapter), self.randlora_b.shallow_clone()));
        }
        if self.owns_projections {
            v.push((format!("{}.{}", MODEL_NAMES[0], self.adapter), self.randlora_a.shallow_clone()));
            v.push((format!("{}.{}", MODEL_NAMES[1], self.adapter), self.randlora_b.shallow_clone()));
        }
        v
    }

    fn status_shared_devices(&self) -> Vec<(String, Device)> {
        self.shared.member_devices()
    }

    fn is_buffer(&self, name: &str) -> bool {
        name.starts_with("randlora_A") || name.starts_with("randlora_B")
    }

    fn is_trainable_tensor(&self, name: &str) -> bool {
        !self.is_buffer(name)
    }

    /// PEFT's file holds the bases at the model level (`base_model.randlora_A`, from the owning layer's
    /// second names) and again under every layer (`base_model.model.<module>.randlora_A`).
    fn checkpoint_key(&self, key: &str, adapter: &str) -> String {
        peft_projections::model_level_key(key, adapter, MODEL_NAMES)
            .map(|k| k.replace("@model", ""))
            .unwrap_or_else(|| peft_core::peft_config::keys::remove_adapter_name(key, adapter))
    }

    fn transform_output(&self, _base: &dyn BaseLayer, x: &Tensor, y: Tensor, ctx: &ForwardCtx<'_>) -> Tensor {
        let Some(group) = ctx.active_group(self) else { return y };
        if self.quantized {
            // PEFT's bitsandbytes forward: each term is cast to the result's dtype before the scaling,
            // and the output ends in the factors' dtype.
            let mut result = y;
            let mut last = x.kind();
            for layer in &group {
                let (h, kind) = layer.term(x, ctx.train);
                last = kind;
                result = &result + h.to_kind(result.kind()) * layer.scaling;
            }
            return result.to_kind(last);
        }
        add_group_terms(y, &group, |layer| {
            let (h, _) = layer.term(x, ctx.train);
            Some(h * layer.scaling)
        })
    }

    /// PEFT's dense merge (`weight += delta`). Quantized bases are refused: PEFT 0.21.2's bitsandbytes
    /// `get_delta_weight` multiplies the factors as `update_B @ update_A`, which is not the layer's
    /// update (it fails unless `in == out`, and is then the wrong matrix).
    fn merge(&mut self, base: &mut dyn BaseLayer, ctx: &MergeCtx<'_>) -> Result<()> {
        if self.quantized {
            return Err(PeftError::Invalid(format!(
                "`{}`: merging RandLoRA into a quantized ({}) base is not supported: PEFT 0.21.2's bitsandbytes \
                 RandLoRA merge computes `update_B @ update_A`, not the layer's update",
                self.module,
                base.kind()
            )));
        }
        // PEFT casts the delta to the weight's dtype before a plain merge, and adds it uncast (then casts
        // the sum) in a safe one: with half-precision bases the two round differently.
        let delta = self.delta_weight()?;
        let delta = if ctx.safe { delta } else { self.in_weight_kind(base, delta)? };
        merge_delta(base, &delta, ctx.safe, &self.adapter, &self.module)
    }

    fn unmerge(&mut self, base: &mut dyn BaseLayer) -> Result<()> {
        let delta = self.in_weight_kind(base, self.delta_weight()?)?;
        unmerge_delta(base, &delta, &self.module)
    }

    fn describe(&self) -> String {
        format!(
            "randlora.Linear(in_features={}, out_features={}, r={}, num_bases={})",
            self.in_features, self.out_features, self.r, self.num_bases
        )
    }
}
