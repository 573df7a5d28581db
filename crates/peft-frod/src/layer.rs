//! `FrodLayer`: PEFT 0.21.2's `frod.Linear` — FRoD on `nn.Linear` and GPT-2's `Conv1D`.
//!
//! With the base weight `W` `(out, in)` (`Conv1D` transposed) of a layer in category `c`:
//!
//! * shared by the category's layers (model level, see [`crate::basis`]): `frod_V.<adapter>` `(in, in)`,
//!   `frod_s_indices.<adapter>` `(2, nnz)` and `frod_s_size.<adapter>` `[in, in]`;
//! * `frod_U.<adapter>` `(out, in)`, frozen and never saved, and the initial `frod_lambda_l.<adapter>`
//!   `(in)`: `B = W·V⁻ᵀ` (`linalg.solve(V, Wᵀ)ᵀ` in f64, `W·pinv(V)ᵀ` when `V` is singular), `λ` the
//!   norms of `B`'s columns and `U` its columns divided by them (zero where a norm is below `1e-12`);
//! * `frod_lambda_s_values.<adapter>` `(nnz)`: the values of the sparse `S` `(in, in)` at the shared
//!   positions (zero at init, so `U·diag(λ)·Vᵀ = W` up to rounding).
//!
//! Forward: FRoD computes the adapted layer `W' = U·(S + diag(λ))·Vᵀ` directly,
//! `z = x·V`, `y = (z·Sᵀ + z⊙λ)·Uᵀ + b` — the base layer does not run when one FRoD adapter is active
//! and no dropout draws. Otherwise `y = base(x) + Σ ((drop(x)·V)·(Sᵀ + diag λ)·Uᵀ − drop(x)·Wᵀ)` over the
//! active adapters (`base(x) − b` stands for `drop(x)·Wᵀ` without dropout). Merging adds `W' − W₀`
//! (`W₀` the weight before the layer's first FRoD merge); unmerging the last merged FRoD adapter writes
//! `W₀` back.

use crate::basis::{category_from_key, SharedBases};
use crate::config::{FrodConfig, PEFT_TYPE};
use peft_core::config::LayerInit;
use peft_core::layer::{merge_delta, unmerge_delta, BaseLayer, ForwardCtx, MergeCtx, TunerLayer};
use peft_core::{PeftError, Result};
use std::sync::{Arc, Mutex, MutexGuard};
use tch::{Device, Kind, Tensor};

type Tch<T> = std::result::Result<T, tch::TchError>;

const UNSUPPORTED: &str = "Currently, only the following modules are supported: `torch.nn.Linear`, \
                           `transformers.pytorch_utils.Conv1D`.";

/// What the FRoD adapters of one layer share: PEFT's `_base_weight_before_merge` and the FRoD adapters
/// merged into the layer.
#[derive(Debug, Default)]
pub struct MergeState {
    /// The weight before the first FRoD merge (storage layout), until the last FRoD unmerge.
    w0: Option<Tensor>,
    merged: Vec<String>,
}

/// One FRoD adapter on one linear layer.
#[derive(Debug)]
pub struct FrodLayer {
    adapter: String,
    module: String,
    category: String,
    in_features: i64,
    out_features: i64,
    fan_in_fan_out: bool,
    dropout: f64,
    lambda_l: Tensor,
    lambda_s: Tensor,
    u: Tensor,
    /// The model-level registry the category's `V` and positions of `S` are read from at each use (a
    /// later adapter may decompose a category again under this adapter's name, as PEFT does).
    bases: SharedBases,
    size: [i64; 2],
    /// This layer is the adapter's first in its category: it saves the category's shared tensors.
    owns: bool,
    save_projection: bool,
    merge_state: Arc<Mutex<MergeState>>,
}

extern "C" {
    fn peft_frod_sparse_coo_tensor(
        indices: *const torch_sys::C_tensor,
        values: *const torch_sys::C_tensor,
        size: *const i64,
        ndim: usize,
        out: *mut *mut torch_sys::C_tensor,
    ) -> *mut std::ffi::c_char;
}

/// `torch.sparse_coo_tensor(indices, values, size)` as PEFT calls it: differentiable in `values`
/// (`csrc/frod.cpp`; tch's own binding starts a new graph).
///
/// # Errors
/// Positions or values libtorch rejects.
pub fn sparse_coo_tensor(indices: &Tensor, values: &Tensor, size: &[i64]) -> Result<Tensor> {
    let mut out: *mut torch_sys::C_tensor = std::ptr::null_mut();
    // SAFETY: live tch tensors and a live slice borrowed for the call; the shim returns an owned tensor
    // or an owned message.
    unsafe {
        let err = peft_frod_sparse_coo_tensor(
            indices.as_ptr(),
            values.as_ptr(),
            size.as_ptr(),
            size.len(),
            &mut out,
        );
        peft_core::rng::take_tensor(err, out, "FRoD's sparse S")
    }
}

/// PEFT's `_calculate_frod_u_and_lambda`: `(U, λ)` in f32 from `V` `(in, in)` and `W` `(out, in)`.
fn u_and_lambda(v: &Tensor, w: &Tensor) -> Tch<(Tensor, Tensor)> {
    let w = w.f_detach()?.f_to_kind(Kind::Double)?.f_to_device(Device::Cpu)?;
    let v = v.f_detach()?.f_to_kind(Kind::Double)?.f_to_device(Device::Cpu)?;
    let bi = match Tensor::f_linalg_solve(&v, &w.f_tr()?, true) {
        Ok(x) => x.f_tr()?,
        // A singular basis (LAPACK refuses the solve): the pseudo-inverse, as PEFT falls back.
        Err(_) => w.f_mm(&v.f_linalg_pinv_atol_rtol_float(None::<f64>, 1e-6, false)?.f_tr()?)?,
    };
    let lambda = bi.f_linalg_norm(2.0, [0i64].as_slice(), false, None::<Kind>)?;
    let mut u = bi.f_zeros_like()?;
    let nonzero = lambda.f_gt(1e-12)?;
    let cols = bi.f_index(&[None, Some(&nonzero)])?;
    let scaled = cols.f_div(&lambda.f_index(&[Some(&nonzero)])?)?;
    let _ = u.f_index_put_(&[None, Some(&nonzero)], &scaled, false)?;
    Ok((u.f_to_kind(Kind::Float)?, lambda.f_to_kind(Kind::Float)?))
}

impl FrodLayer {
    /// Creates the adapter as PEFT's `_create_and_replace` + `update_layer`: the category's shared
    /// tensors attached (and registered by the category's first layer), `U` and `λ` from the base weight,
    /// `S`'s values zero (`init_weights`) or `N(0, 0.1²)` with `λ` perturbed by `N(0, 0.1²)`.
    ///
    /// # Errors
    /// [`PeftError::UnsupportedLayer`] for anything but dense linear layers and `Conv1D`;
    /// `runtime_offload_base_weight` on a base that is not on the CPU; a libtorch failure.
    pub fn create(config: &mut FrodConfig, ctx: &mut LayerInit<'_, '_>) -> Result<Self> {
        let Some(lin) = ctx.base.as_linear() else {
            return Err(ctx.unsupported(PEFT_TYPE, UNSUPPORTED));
        };
        if !lin.weight_is_storage() {
            return Err(ctx.unsupported(
                PEFT_TYPE,
                "FRoD decomposes the dense base weight; quantized bases are not supported",
            ));
        }
        let (in_features, out_features, fifo) = (lin.in_features(), lin.out_features(), lin.fan_in_fan_out());
        let weight = lin.weight();
        let bias_device = lin.bias().map(|b| b.device());
        ctx.match_fan_in_fan_out(&mut config.fan_in_fan_out, fifo);
        let (base_kind, _, device) = ctx.placement()?;
        if config.runtime_offload_base_weight
            && (device != Device::Cpu || bias_device.is_some_and(|d| d != Device::Cpu))
        {
            return Err(peft_core::config::unsupported_option(
                PEFT_TYPE,
                "runtime_offload_base_weight",
                &serde_json::Value::Bool(true),
                "peft-rs keeps base weights where the model's var store puts them; on the CPU the option is a no-op",
            ));
        }
        let category = category_from_key(ctx.module_name);
        let adapter = ctx.adapter_name.to_string();
        let bases = config.bases.clone();
        let v = bases.lock()?.attach(&category, &adapter)?;
        if v.size() != [in_features, in_features] {
            return Err(PeftError::Invalid(format!(
                "`{}`: FRoD's basis of category `{category}` is {:?} but the layer has {in_features} inputs",
                ctx.module_name,
                v.size()
            )));
        }
        let torch = |what: &'static str| PeftError::torch(what);
        let w = if fifo { weight.tr() } else { weight.shallow_clone() };
        let (u, lambda) = tch::no_grad(|| u_and_lambda(&v, &w)).map_err(torch("computing FRoD's U and λ"))?;
        let nnz = bases.lock()?.entry(&category, &adapter).map_or(0, |e| e.indices.size()[1]);
        // PEFT's `_get_adapter_target_device_dtype`: on the CPU, a layer that already holds a FRoD adapter
        // makes the new one in that adapter's dtype (f32 after autocast), else in the weight's.
        let sibling_kind = ctx
            .siblings
            .values()
            .find_map(|t| t.as_any().downcast_ref::<FrodLayer>())
            .map(|s| s.lambda_l.kind());
        let kind = match sibling_kind {
            Some(k) if device == Device::Cpu => k,
            _ => base_kind,
        };
        // `_cast_adapter_dtype` puts `U` back in the base dtype when it autocasts.
        let u_kind = if ctx.autocast_adapter_dtype { base_kind } else { kind };
        let init = || -> Tch<(Tensor, Tensor, Tensor)> {
            let u = u.f_to_kind(u_kind)?.f_to_device(device)?;
            let mut lambda_l = lambda.f_to_kind(kind)?;
            let mut lambda_s = Tensor::f_zeros([nnz], (kind, Device::Cpu))?;
            if !config.init_weights {
                // PEFT's draws on the global generator, in that dtype: `normal_(S values, std=0.1)`, then
                // `λ += randn_like(λ) · 0.1`.
                let _ = lambda_s.f_normal_(0.0, 0.1)?;
                let noise = lambda_l.f_randn_like()?.f_mul_scalar(0.1)?;
                let _ = lambda_l.f_add_(&noise)?;
            }
            Ok((u, lambda_l, lambda_s))
        };
        let (u, lambda_l, lambda_s) = tch::no_grad(init).map_err(torch("initialising FRoD"))?;
        let owns = bases.lock()?.claim(&category, &adapter);
        let merge_state = ctx
            .siblings
            .values()
            .find_map(|t| t.as_any().downcast_ref::<FrodLayer>())
            .map_or_else(Arc::default, |s| s.merge_state.clone());
        Ok(Self {
            lambda_l: (&ctx.path / "frod_lambda_l").add(&adapter, ctx.place(lambda_l)?, true),
            lambda_s: (&ctx.path / "frod_lambda_s_values").add(&adapter, ctx.place(lambda_s)?, true),
            // `frod_U` is a non-persistent buffer in PEFT: recomputed whenever the adapter is created, never
            // saved or loaded. It stays out of the adapter's var store and tensors, so nothing but this
            // layer ever changes it.
            u,
            adapter,
            module: ctx.module_name.to_string(),
            category,
            in_features,
            out_features,
            fan_in_fan_out: fifo,
            dropout: config.frod_dropout,
            bases,
            size: [in_features, in_features],
            owns,
            save_projection: config.save_projection,
            merge_state,
        })
    }

    /// The adapter's category (the key of its shared tensors).
    pub fn category(&self) -> &str {
        &self.category
    }

    /// `(λ, S values, U, V, S positions)` (shallow clones).
    pub fn tensors(&self) -> (Tensor, Tensor, Tensor, Tensor, Tensor) {
        let (v, indices, _) = self.shared();
        (self.lambda_l.shallow_clone(), self.lambda_s.shallow_clone(), self.u.shallow_clone(), v, indices)
    }

    /// `(V, positions of S, size of S)` of this adapter's category, as the registry holds them now.
    fn shared(&self) -> (Tensor, Tensor, Tensor) {
        let reg = self.bases.lock();
        match reg.as_ref().ok().and_then(|r| r.entry(&self.category, &self.adapter)) {
            Some(e) => (e.v.shallow_clone(), e.indices.shallow_clone(), e.size.shallow_clone()),
            // Unreachable once created: the entry is made before the layer.
            None => (
                Tensor::zeros(self.size, (self.u.kind(), Device::Cpu)),
                Tensor::zeros([2, 0], (Kind::Int64, Device::Cpu)),
                Tensor::from_slice(&self.size),
            ),
        }
    }

    fn nnz(&self) -> i64 {
        self.lambda_s.size()[0]
    }

    /// `(h·V)·(Sᵀ + diag λ)·Uᵀ` for the (dropped-out) input `h` `(…, in)`: the adapted layer without bias
    /// (PEFT's forward: `S` applied as a sparse product, densified for half precision).
    fn adapted(&self, h: &Tensor) -> Tensor {
        let (kind, device) = (h.kind(), h.device());
        let u = self.u.to_device(device).to_kind(kind);
        let (v, indices, _) = self.shared();
        let v = v.to_device(device).to_kind(kind);
        let lambda = self.lambda_l.to_device(device).to_kind(kind);
        let mut shape = h.size();
        let h_flat = h.reshape([-1, self.in_features]);
        let z = h_flat.matmul(&v);
        let z_s = if self.nnz() == 0 {
            z.zeros_like()
        } else {
            let s = self.sparse_s(&indices, kind, device);
            if matches!(kind, Kind::Half | Kind::BFloat16) {
                // PEFT densifies `S` here (CUDA's sparse addmm lacks these dtypes on some builds).
                z.matmul(&s.to_dense(None::<Kind>, true).tr())
            } else {
                Tensor::internal_sparse_mm(&s, &z.tr()).tr()
            }
        };
        let z_l = &z * lambda;
        let out = (z_s + z_l).linear::<Tensor>(&u, None);
        shape.pop();
        shape.push(self.out_features);
        out.reshape(shape.as_slice())
    }

    /// The coalesced sparse `S` `(in, in)` from the shared positions and this adapter's values.
    fn sparse_s(&self, indices: &Tensor, kind: Kind, device: Device) -> Tensor {
        let indices = indices.to_device(device).to_kind(Kind::Int64);
        let values = self.lambda_s.to_device(device).to_kind(kind);
        sparse_coo_tensor(&indices, &values, &self.size)
            .unwrap_or_else(|e| {
                log::warn!("{e}; building it with tch's factory (no gradient reaches the values of S)");
                Tensor::sparse_coo_tensor_indices_size(&indices, &values, self.size, (kind, device), false)
            })
            .coalesce()
    }

    fn drop_input(&self, x: &Tensor, ctx: &ForwardCtx<'_>) -> Tensor {
        if self.dropout > 0.0 {
            x.dropout(self.dropout, ctx.train)
        } else {
            x.shallow_clone()
        }
    }

    /// Whether the input of this adapter is `x` itself (no dropout drawn).
    fn deterministic(&self, ctx: &ForwardCtx<'_>) -> bool {
        self.dropout <= 0.0 || !ctx.train
    }

    /// PEFT's `get_delta_weight`: `U·(S + diag λ)·Vᵀ − W₀` (transposed for `Conv1D`), in `W₀`'s dtype.
    fn delta_from(&self, w0: &Tensor) -> Tensor {
        let (kind, device) = (w0.kind(), w0.device());
        let u = self.u.to_device(device).to_kind(kind);
        let (v, indices, _) = self.shared();
        let v = v.to_device(device).to_kind(kind);
        let lambda = self.lambda_l.to_device(device).to_kind(kind);
        let s = self.sparse_s(&indices, kind, device).to_dense(None::<Kind>, true);
        let frod = u.matmul(&(s + lambda.diag_embed(0, -2, -1))).matmul(&v.tr());
        if self.fan_in_fan_out {
            (frod - w0.tr()).tr()
        } else {
            frod - w0
        }
    }

    fn state(&self) -> MutexGuard<'_, MergeState> {
        self.merge_state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The weight before the layer's first FRoD merge, kept from the first call on (PEFT's
    /// `_get_base_weight_before_merge`), on the weight's device and in its dtype.
    fn base_before_merge(&self, weight: &Tensor) -> Result<Tensor> {
        let mut st = self.state();
        if st.w0.is_none() {
            st.w0 = Some(tch::no_grad(|| weight.detach().copy()));
        }
        let w0 = st.w0.as_ref().map(Tensor::shallow_clone).unwrap_or_else(|| weight.shallow_clone());
        w0.f_to_device(weight.device())
            .and_then(|w| w.f_to_kind(weight.kind()))
            .map_err(PeftError::torch("keeping the base weight"))
    }

    /// `ΔW = W' − W₀` as merging adds it (storage layout, the weight's dtype).
    ///
    /// # Errors
    /// A base without a dense weight, a libtorch failure.
    pub fn delta_weight(&self, base: &dyn BaseLayer) -> Result<Tensor> {
        let w = base
            .as_weighted()
            .ok_or_else(|| PeftError::Invalid(format!("`{}`: the base has no weight", self.module)))?
            .weight();
        let w0 = self.base_before_merge(&w)?;
        Ok(tch::no_grad(|| self.delta_from(&w0)))
    }
}

impl Drop for FrodLayer {
    /// Deleting the adapter takes its tensors of this category out of the model's registry (PEFT's
    /// `delete_adapter` deletes the adapter's key from the shared dicts); the category's first layer does
    /// it for the adapter.
    fn drop(&mut self) {
        if self.owns {
            if let Ok(mut reg) = self.bases.lock() {
                reg.remove(&self.category, &self.adapter);
            }
        }
    }
}

impl TunerLayer for FrodLayer {
    fn peft_type(&self) -> &'static str {
        PEFT_TYPE
    }

    fn named_tensors(&self) -> Vec<(String, Tensor)> {
        let a = &self.adapter;
        let mut v = vec![
            (format!("frod_lambda_l.{a}"), self.lambda_l.shallow_clone()),
            (format!("frod_lambda_s_values.{a}"), self.lambda_s.shallow_clone()),
        ];
        if self.owns {
            // Not in the adapter's var store (a later adapter may replace them; nothing trains them): read
            // from the registry each time, so saving and loading see the current tensors.
            let (basis, indices, size) = self.shared();
            v.push((format!("frod_V.{a}"), basis));
            v.push((format!("frod_s_indices.{a}"), indices));
            v.push((format!("frod_s_size.{a}"), size));
        }
        v
    }

    fn is_buffer(&self, name: &str) -> bool {
        !name.starts_with("frod_lambda_")
    }

    fn is_trainable_tensor(&self, name: &str) -> bool {
        !self.is_buffer(name)
    }

    /// PEFT's layer status lists a device for every adapter with tensors in the layer's category (its
    /// `frod_V` is the category's `BufferDict`), on the layer or not.
    fn status_shared_devices(&self) -> Vec<(String, Device)> {
        let Ok(reg) = self.bases.lock() else { return Vec::new() };
        reg.adapters(&self.category)
            .into_iter()
            .filter_map(|a| reg.entry(&self.category, &a).map(|e| (a.clone(), e.v.device())))
            .collect()
    }

    /// The shared tensors are saved only with `save_projection` (PEFT's non-persistent buffers otherwise).
    fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = self.named_tensors();
        out.retain(|(n, _)| self.save_projection || n.starts_with("frod_lambda_"));
        out
    }

    /// The shared tensors are saved once per category, at the model level:
    /// `base_model.frod_V.<category>`, `base_model.frod_s_indices.<category>`,
    /// `base_model.frod_s_size.<category>`.
    fn checkpoint_key(&self, key: &str, adapter: &str) -> String {
        for name in ["frod_V", "frod_s_indices", "frod_s_size"] {
            if key.ends_with(&format!(".{name}.{adapter}")) {
                return format!("base_model.{name}.{}", self.category);
            }
        }
        peft_core::peft_config::keys::remove_adapter_name(key, adapter)
    }

    /// One active FRoD adapter and no dropout drawn: the adapted layer alone, `adapted(x) + b`.
    fn replace_base(&self, base: &dyn BaseLayer, x: &Tensor, ctx: &ForwardCtx<'_>) -> Option<Tensor> {
        let group = ctx.active_group(self)?;
        if group.len() != 1 || !self.deterministic(ctx) {
            return None;
        }
        let bias = base.as_weighted().and_then(|w| w.bias());
        let out = self.adapted(x);
        Some(match bias {
            Some(b) => out + b,
            None => out,
        })
    }

    /// Several active FRoD adapters, or dropout: `y + adapted(drop(x)) − drop(x)·Wᵀ` for each, in order.
    fn transform_output(&self, base: &dyn BaseLayer, x: &Tensor, y: Tensor, ctx: &ForwardCtx<'_>) -> Tensor {
        let Some(group) = ctx.active_group(self) else { return y };
        if group.len() == 1 && self.deterministic(ctx) {
            return y;
        }
        let Some(w) = base.as_weighted() else { return y };
        let base_out = match w.bias() {
            Some(b) => &y - b,
            None => y.shallow_clone(),
        };
        let mut weight: Option<Tensor> = None;
        let mut result = y;
        for a in group {
            let h = a.drop_input(x, ctx);
            let out = a.adapted(&h);
            let adapter_base = if a.deterministic(ctx) {
                base_out.shallow_clone()
            } else {
                let wt = weight.get_or_insert_with(|| {
                    let t = w.weight();
                    let t = if self.fan_in_fan_out { t.tr() } else { t };
                    t.to_device(x.device()).to_kind(x.kind())
                });
                h.linear::<Tensor>(wt, None)
            };
            result = result + out - adapter_base;
        }
        result
    }

    fn merge(&mut self, base: &mut dyn BaseLayer, ctx: &MergeCtx<'_>) -> Result<()> {
        let delta = self.delta_weight(base)?;
        merge_delta(base, &delta, ctx.safe, &self.adapter, &self.module)?;
        self.state().merged.push(self.adapter.clone());
        Ok(())
    }

    /// The last merged FRoD adapter writes `W₀` back (PEFT's unmerge copies it); an earlier one takes its
    /// delta out.
    fn unmerge(&mut self, base: &mut dyn BaseLayer) -> Result<()> {
        let last = {
            let mut st = self.state();
            st.merged.retain(|a| a != &self.adapter);
            st.merged.is_empty()
        };
        if !last {
            let delta = self.delta_weight(base)?;
            return unmerge_delta(base, &delta, &self.module);
        }
        let w0 = self.state().w0.take();
        let Some(w0) = w0 else { return Ok(()) };
        let w = base
            .as_weighted_mut()
            .ok_or_else(|| PeftError::Invalid(format!("`{}`: the base has no weight", self.module)))?;
        let target = w.weight();
        let w0 = w0
            .f_to_device(target.device())
            .and_then(|t| t.f_to_kind(target.kind()))
            .map_err(PeftError::torch("restoring the base weight"))?;
        w.set_weight(&w0)
    }

    fn describe(&self) -> String {
        format!(
            "frod.Linear(in_features={}, out_features={}, category={}, nnz={})",
            self.in_features,
            self.out_features,
            self.category,
            self.nnz()
        )
    }
}
