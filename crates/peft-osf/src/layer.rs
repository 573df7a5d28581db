//! `OsfLayer`: PEFT 0.21.2's `osf.Linear` — OSF on plain `nn.Linear` layers.
//!
//! With the frozen weight `W` `(out, in)`, `m = min(out, in)` and the preserved rank `k`, the SVD
//! `W = U S Vᵀ` (fp32, `torch.linalg.svd(full_matrices=False)`) is split into the frozen top part
//! `U_high` `(out, k)`, `V_high` `(k, in)` and the low part `U_low` `(out, m−k)`, `S_low` `(m−k)`,
//! `V_low` `(m−k, in)`. The low part is trained (`osf_svd_params.<adapter>.{U_low,S_low,V_low}`, the
//! tensors the file holds) and kept as it started (`_osf_{U,S,V}_low_init.<adapter>`, recomputed from
//! the base weight, never saved). `U_high` is kept only where `U` is not square (`out > in`), `V_high`
//! only where `V` is not (`out < in`): a square factor's complement is spanned by its low part.
//!
//! * forward, not merged: with `A = [U_low·diag(S_low), −U_low₀·diag(S_low₀)]` `(out, 2(m−k))` and
//!   `B = [V_low; V_low₀]` `(2(m−k), in)`, `y = base(x) + linear(linear(x, B), A)` — the delta
//!   `U_low S_low V_low − U_low₀ S_low₀ V_low₀` applied as one rank-`2(m−k)` product, as PEFT does. Only
//!   the first of the model's active adapters acts, and a layer with any adapter merged runs its base.
//! * backward: the gradients of `U_low` and `V_low` are projected orthogonally to the frozen directions
//!   by a libtorch tensor hook (`csrc/osf.cpp`) before they reach `.grad`, as PEFT's hooks do — any
//!   training loop gets it.
//! * merge: `W += ΔW` with the delta above; PEFT cannot unmerge (nor can peft-rs).

use crate::config::{OsfConfig, PEFT_TYPE};
use peft_core::config::LayerInit;
use peft_core::layer::{merge_delta, BaseLayer, ForwardCtx, MergeCtx, TunerLayer};
use peft_core::{PeftError, Result};
use tch::Tensor;

/// One OSF adapter on one linear layer.
#[derive(Debug)]
pub struct OsfLayer {
    adapter: String,
    module: String,
    in_features: i64,
    out_features: i64,
    effective_rank: i64,
    /// The trained factors.
    u_low: Tensor,
    s_low: Tensor,
    v_low: Tensor,
    /// The low factors as they started.
    u_low_init: Tensor,
    s_low_init: Tensor,
    v_low_init: Tensor,
    /// The frozen top directions where they cannot be recovered from the low ones.
    u_high: Option<Tensor>,
    v_high: Option<Tensor>,
    merged: bool,
}

extern "C" {
    fn peft_osf_register_projection(
        param: *const torch_sys::C_tensor,
        basis: *const torch_sys::C_tensor,
        mode: std::ffi::c_int,
    ) -> *mut std::ffi::c_char;
}

/// The projections of `csrc/osf.cpp` (its `Projection` enum).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(i32)]
pub enum Projection {
    /// `U` square: `dU ← U_low₀ (U_low₀ᵀ dU)`.
    UFromLowInit = 0,
    /// `U` not square: `dU ← dU − U_high (U_highᵀ dU)`.
    UAgainstHigh = 1,
    /// `V` square: `dV ← (dV V_low₀ᵀ) V_low₀`.
    VFromLowInit = 2,
    /// `V` not square: `dV ← dV − (dV V_highᵀ) V_high`.
    VAgainstHigh = 3,
}

/// Registers PEFT's gradient projection `mode` with `basis` on the leaf tensor `param`: every gradient
/// autograd computes for `param` is projected before it is accumulated into `param.grad`. The hook lives
/// as long as the tensor, whatever its `requires_grad` becomes.
///
/// # Errors
/// A libtorch failure (e.g. `param` is not a leaf).
pub fn register_projection(param: &Tensor, basis: &Tensor, mode: Projection) -> Result<()> {
    // SAFETY: live tch tensors borrowed for the call; the shim copies `basis` (a reference count) into
    // the hook and returns an owned message or null.
    unsafe {
        let err = peft_osf_register_projection(param.as_ptr(), basis.as_ptr(), mode as i32);
        peft_core::rng::take_error(err, "registering OSF's gradient projection")
    }
}

fn torch_err(what: &'static str) -> impl FnOnce(tch::TchError) -> PeftError {
    PeftError::torch(what)
}

/// `U diag(S) V` as PEFT writes it: `mm(U * S.unsqueeze(0), V)`.
fn product(u: &Tensor, s: &Tensor, v: &Tensor) -> Tensor {
    (u * s.unsqueeze(0)).mm(v)
}

impl OsfLayer {
    /// Creates the adapter as PEFT's `update_layer`: the SVD of the base weight in fp32, its factors in
    /// the weight's dtype and on its device (then fp32 under `autocast_adapter_dtype`), the trained factors
    /// the low part (or `randn_like` draws, `U_low`, `S_low`, `V_low` in that order, with
    /// `init_weights: false`), and the projection hooks.
    ///
    /// # Errors
    /// [`PeftError::UnsupportedLayer`] for anything but a plain dense `nn.Linear` (PEFT leaves GPT-2's
    /// `Conv1D`, embeddings and convolutions unadapted without a word; peft-rs refuses them by name); a
    /// preserved rank that resolves to 0 or less (PEFT's message).
    pub fn create(config: &mut OsfConfig, ctx: &mut LayerInit<'_, '_>) -> Result<Self> {
        let Some(lin) = ctx.base.as_linear() else {
            return Err(ctx.unsupported(
                PEFT_TYPE,
                "OSF adapts torch.nn.Linear only (PEFT silently leaves other layer types unadapted; \
                 peft-rs refuses them so that nothing is skipped unnoticed)",
            ));
        };
        if lin.fan_in_fan_out() {
            return Err(ctx.unsupported(
                PEFT_TYPE,
                "transformers' Conv1D is not a torch.nn.Linear: PEFT's OSF silently leaves it unadapted; \
                 peft-rs refuses it",
            ));
        }
        if !lin.weight_is_storage() {
            return Err(ctx.unsupported(
                PEFT_TYPE,
                "OSF needs the SVD of a dense weight; quantized linears are not supported",
            ));
        }
        let (in_features, out_features) = (lin.in_features(), lin.out_features());
        let weight = lin.weight().detach();
        let min_dim = in_features.min(out_features);
        let r = config.effective_rank_for(ctx.module_name, min_dim);
        if r <= 0 {
            return Err(PeftError::Invalid(format!(
                "`{}`: `effective_rank` should be a positive integer value but the value passed is {r}",
                ctx.module_name
            )));
        }
        let (base_kind, final_kind, device) = ctx.placement()?;
        let (u, s, vt) = tch::no_grad(|| {
            let w = weight.f_to_kind(tch::Kind::Float).map_err(torch_err("casting OSF's weight to fp32"))?;
            peft_core::linalg::svd(&w)
        })?;
        let k = r.min(s.size()[0]);
        let low = s.size()[0] - k;
        // PEFT's `.contiguous().to(device, orig_dtype)` of each slice; `_cast_adapter_dtype` later.
        let to_base = |t: Tensor| -> Result<Tensor> {
            t.f_contiguous()
                .and_then(|t| t.f_to_device(device))
                .and_then(|t| t.f_to_kind(base_kind))
                .map_err(torch_err("placing OSF's SVD factors"))
        };
        let to_final = |t: &Tensor| t.f_to_kind(final_kind).map_err(torch_err("placing OSF's SVD factors"));
        let u_high = to_base(u.narrow(1, 0, k))?;
        let v_high = to_base(vt.narrow(0, 0, k))?;
        let u_low = to_base(u.narrow(1, k, low))?;
        let s_low = to_base(s.narrow(0, k, low))?;
        let v_low = to_base(vt.narrow(0, k, low))?;
        let (u_train, s_train, v_train) = if config.identity_init() {
            (u_low.copy(), s_low.copy(), v_low.copy())
        } else {
            (u_low.randn_like(), s_low.randn_like(), v_low.randn_like())
        };
        let params = &ctx.path / "osf_svd_params" / ctx.adapter_name;
        let adapter = ctx.adapter_name;
        // The buffers stay outside the var store, as PyTorch buffers are outside `parameters()`: nothing
        // that walks the adapter's variables (optimizers, perturbations, `requires_grad`) sees them.
        let u_low_init = to_final(&u_low)?;
        let s_low_init = to_final(&s_low)?;
        let v_low_init = to_final(&v_low)?;
        let (u_square, v_square) = (out_features <= in_features, out_features >= in_features);
        let u_high = if u_square { None } else { Some(to_final(&u_high)?) };
        let v_high = if v_square { None } else { Some(to_final(&v_high)?) };
        let s_low_p = params.add("S_low", to_final(&s_train)?, true);
        let u_low_p = params.add("U_low", to_final(&u_train)?, true);
        let v_low_p = params.add("V_low", to_final(&v_train)?, true);
        match &u_high {
            None => register_projection(&u_low_p, &u_low_init, Projection::UFromLowInit)?,
            Some(h) => register_projection(&u_low_p, h, Projection::UAgainstHigh)?,
        }
        match &v_high {
            None => register_projection(&v_low_p, &v_low_init, Projection::VFromLowInit)?,
            Some(h) => register_projection(&v_low_p, h, Projection::VAgainstHigh)?,
        }
        Ok(Self {
            adapter: adapter.to_string(),
            module: ctx.module_name.to_string(),
            in_features,
            out_features,
            effective_rank: k,
            u_low: u_low_p,
            s_low: s_low_p,
            v_low: v_low_p,
            u_low_init,
            s_low_init,
            v_low_init,
            u_high,
            v_high,
            merged: false,
        })
    }

    /// The preserved rank `k` of this layer (PEFT's `effective_rank[adapter]`).
    pub fn effective_rank(&self) -> i64 {
        self.effective_rank
    }

    /// The trained factors `(U_low, S_low, V_low)`.
    pub fn low(&self) -> (&Tensor, &Tensor, &Tensor) {
        (&self.u_low, &self.s_low, &self.v_low)
    }

    /// The low factors as they started `(U_low₀, S_low₀, V_low₀)`.
    pub fn low_init(&self) -> (&Tensor, &Tensor, &Tensor) {
        (&self.u_low_init, &self.s_low_init, &self.v_low_init)
    }

    /// PEFT's `get_delta_weight`: `U_low S_low V_low − U_low₀ S_low₀ V_low₀` `(out, in)`.
    pub fn delta_weight(&self) -> Tensor {
        product(&self.u_low, &self.s_low, &self.v_low)
            - product(&self.u_low_init, &self.s_low_init, &self.v_low_init)
    }

    fn any_merged(&self, ctx: &ForwardCtx<'_>) -> bool {
        self.merged
            || ctx.siblings.is_some_and(|s| {
                s.values().any(|t| t.as_any().downcast_ref::<OsfLayer>().is_some_and(|l| l.merged))
            })
    }
}

impl TunerLayer for OsfLayer {
    fn peft_type(&self) -> &'static str {
        PEFT_TYPE
    }

    fn named_tensors(&self) -> Vec<(String, Tensor)> {
        let a = &self.adapter;
        let mut v = vec![
            (format!("osf_svd_params.{a}.S_low"), self.s_low.shallow_clone()),
            (format!("osf_svd_params.{a}.U_low"), self.u_low.shallow_clone()),
            (format!("osf_svd_params.{a}.V_low"), self.v_low.shallow_clone()),
            (format!("_osf_U_low_init.{a}"), self.u_low_init.shallow_clone()),
            (format!("_osf_S_low_init.{a}"), self.s_low_init.shallow_clone()),
            (format!("_osf_V_low_init.{a}"), self.v_low_init.shallow_clone()),
        ];
        if let Some(h) = &self.u_high {
            v.push((format!("_osf_U_high.{a}"), h.shallow_clone()));
        }
        if let Some(h) = &self.v_high {
            v.push((format!("_osf_V_high.{a}"), h.shallow_clone()));
        }
        v
    }

    fn is_buffer(&self, name: &str) -> bool {
        name.starts_with("_osf_")
    }

    fn is_trainable_tensor(&self, name: &str) -> bool {
        !self.is_buffer(name)
    }

    /// PEFT saves the trained factors only: the buffers come from the base weight's SVD again at load.
    fn state_tensors(&self) -> Vec<(String, Tensor)> {
        self.named_tensors().into_iter().filter(|(n, _)| !self.is_buffer(n)).collect()
    }

    fn transform_output(&self, _base: &dyn BaseLayer, x: &Tensor, y: Tensor, ctx: &ForwardCtx<'_>) -> Tensor {
        // PEFT's forward uses `active_adapters[0]` only, and the base alone once anything is merged.
        if ctx.active.and_then(<[String]>::first).is_some_and(|first| first != &self.adapter)
            || self.any_merged(ctx)
        {
            return y;
        }
        let a = Tensor::cat(
            &[&self.u_low * self.s_low.unsqueeze(0), -(&self.u_low_init * self.s_low_init.unsqueeze(0))],
            1,
        );
        let b = Tensor::cat(&[&self.v_low, &self.v_low_init], 0);
        let kind = x.kind();
        let x = if kind == a.kind() { x.shallow_clone() } else { x.to_kind(a.kind()) };
        let h = x.linear::<Tensor>(&b, None);
        y + h.linear::<Tensor>(&a, None).to_kind(kind)
    }

    /// PEFT's `merge`: `W ← W + ΔW` (refused before writing when `safe` and not finite).
    fn merge(&mut self, base: &mut dyn BaseLayer, ctx: &MergeCtx<'_>) -> Result<()> {
        let delta = tch::no_grad(|| self.delta_weight());
        merge_delta(base, &delta, ctx.safe, &self.adapter, &self.module)?;
        self.merged = true;
        Ok(())
    }

    /// PEFT's `OSFModel.unmerge_adapter` raises; the merge changed the weights for good.
    fn unmerge(&mut self, _base: &mut dyn BaseLayer) -> Result<()> {
        Err(PeftError::Invalid(format!(
            "`{}`: OSF models do not support unmerging (adapter `{}` is merged into the base weight for good)",
            self.module, self.adapter
        )))
    }

    fn describe(&self) -> String {
        format!(
            "osf.Linear(in_features={}, out_features={}, effective_rank={})",
            self.in_features, self.out_features, self.effective_rank
        )
    }
}
