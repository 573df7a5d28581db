//! CorDA (`init_lora_weights = "corda"`): context-oriented decomposition — each target weight is
//! multiplied by the covariance of its inputs over sample data, decomposed by SVD, and the components
//! with the largest (`corda_method = "ipm"`) or smallest (`"kpm"`, knowledge-preserving) singular values
//! become A and B; the base keeps the residual. PEFT's `preprocess_corda` + `corda_init`.
//!
//! ```text
//! config.init_data = peft_lora::corda::preprocess_corda(&mut model, &config, |m| {
//!     /* run the model on your samples (inference) */ Ok(())
//! })?;
//! // then PeftModel::new(model, &vs, config.boxed(), …)
//! ```
//!
//! PEFT's `cache_file` / `covariance_file` (pickled tensors) are not read or written here.

use crate::config::{CordaEigens, InitData, LoraConfig};
use peft_core::config::LayerInit;
use peft_core::error::{PeftError, Result};
use peft_core::peft_config::{TargetMatch, TargetMatcher};
use peft_core::{Adaptable, AdapterConfig};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use tch::{Kind, Tensor};

type TchResult<T> = std::result::Result<T, tch::TchError>;

fn corda_options(config: &LoraConfig) -> Result<(String, bool)> {
    let v = config.corda_config.clone().unwrap_or_else(crate::config::default_corda_config);
    for key in ["cache_file", "covariance_file"] {
        if v.get(key).is_some_and(|f| !f.is_null()) {
            return Err(peft_core::config::unsupported_option(
                crate::PEFT_TYPE,
                &format!("corda_config.{key}"),
                &v[key],
                "peft-rs does not read or write PEFT's pickled CorDA caches",
            ));
        }
    }
    let method = v.get("corda_method").and_then(serde_json::Value::as_str).unwrap_or("ipm").to_string();
    if method != "ipm" && method != "kpm" {
        return Err(PeftError::Invalid(format!(
            "Invalid corda_method found: {method}, it should be 'ipm' or 'kpm'."
        )));
    }
    let fp16 = v.get("use_float16_for_covariance").and_then(serde_json::Value::as_bool).unwrap_or(false);
    Ok((method, fp16))
}

/// PEFT's `preprocess_corda`: accumulates the input covariance of every linear target layer while
/// `run_model` runs the model (2-d layer inputs, or a batch of one), decomposes each weight, keeps the
/// components `corda_method` asks for at the layer's rank, and returns them for [`LoraConfig::init_data`].
///
/// # Errors
/// Unsupported CorDA options, no samples reaching a layer, non-finite inputs, or what `run_model`
/// returns.
pub fn preprocess_corda<M: Adaptable>(
    model: &mut M,
    config: &LoraConfig,
    run_model: impl FnOnce(&M) -> Result<()>,
) -> Result<InitData> {
    let (method, fp16) = corda_options(config)?;
    let matcher = TargetMatcher::new(&config.target_spec())?;
    let mut targets: Vec<(String, Tensor, bool)> = Vec::new();
    model.visit_layers(&mut |l| {
        if matches!(matcher.check(l.name()), TargetMatch::Targeted { .. }) {
            if let Some(lin) = l.base().as_linear() {
                targets.push((l.name().to_string(), lin.weight(), lin.fan_in_fan_out()));
            }
        }
    });
    // Covariance sums and sample counts per layer.
    type Acc = BTreeMap<String, (Option<Tensor>, i64)>;
    let acc: Arc<Mutex<Acc>> = Arc::new(Mutex::new(BTreeMap::new()));
    let error: Arc<Mutex<Option<PeftError>>> = Arc::new(Mutex::new(None));
    let (hook_acc, hook_err) = (acc.clone(), error.clone());
    let hook: peft_core::ForwardHook = Arc::new(move |name: &str, x: &Tensor, _y: &Tensor| {
        let f = || -> TchResult<Tensor> {
            let mut input = x.f_detach()?;
            if input.dim() > 2 {
                input = input.f_squeeze_dim(0)?;
            }
            if !fp16 {
                input = input.f_to_kind(Kind::Float)?;
            }
            let max = input.f_max()?.f_abs()?;
            input = input.f_div(&max)?;
            input.f_tr()?.f_matmul(&input)
        };
        let cov = match tch::no_grad(f) {
            Ok(c) => c,
            Err(e) => {
                if let Ok(mut err) = hook_err.lock() {
                    err.get_or_insert(PeftError::Invalid(format!("CorDA covariance of `{name}`: {e}")));
                }
                return;
            }
        };
        let finite = cov.isfinite().all().int64_value(&[]) != 0;
        if let Ok(mut a) = hook_acc.lock() {
            if !finite {
                if let Ok(mut err) = hook_err.lock() {
                    err.get_or_insert(PeftError::Invalid(format!(
                        "Invalid value found in the input or covariance of `{name}`, please check your input data."
                    )));
                }
                return;
            }
            let entry = a.entry(name.to_string()).or_insert((None, 0));
            entry.0 = Some(match entry.0.take() {
                Some(sum) => sum + cov,
                None => cov,
            });
            entry.1 += 1;
        }
    });
    let names: Vec<String> = targets.iter().map(|(n, _, _)| n.clone()).collect();
    peft_core::adaptable::set_forward_hook(model, &names, Some(hook))?;
    let result = tch::no_grad(|| run_model(model));
    peft_core::adaptable::set_forward_hook(model, &names, None)?;
    result?;
    if let Some(e) = error.lock().ok().and_then(|mut e| e.take()) {
        return Err(e);
    }
    let acc = acc.lock().map(|mut a| std::mem::take(&mut *a)).unwrap_or_default();
    let mut eigens: CordaEigens = BTreeMap::new();
    for (name, weight, fifo) in targets {
        let Some((Some(sum), count)) =
            acc.get(&name).map(|(s, c)| (s.as_ref().map(Tensor::shallow_clone), *c))
        else {
            return Err(PeftError::Invalid(format!("CorDA: no samples reached `{name}`")));
        };
        let cov = sum / count as f64;
        let (r, _) = config.rank_and_alpha(&name)?;
        let (u, s, v) = tch::no_grad(|| eigens_for_layer(&weight, fifo, &cov))
            .map_err(PeftError::torch("CorDA decomposition"))?;
        let k = s.size()[0];
        let (start, len) = if method == "ipm" { (0, r.min(k)) } else { ((k - r).max(0), r.min(k)) };
        if len != r {
            return Err(PeftError::Invalid(format!("rank mismatch: {len} vs. {r} on `{name}`")));
        }
        eigens.insert(name, (u.narrow(1, start, len), s.narrow(0, start, len), v.narrow(1, start, len)));
    }
    Ok(InitData::Corda(Arc::new(Mutex::new(eigens))))
}

/// `collect_eigens_for_layer`: damped covariance, `W·C = U S Vh`, `V = (Vh C⁻¹)ᵀ`.
fn eigens_for_layer(weight: &Tensor, fifo: bool, cov: &Tensor) -> TchResult<(Tensor, Tensor, Tensor)> {
    let mut w = weight.f_to_kind(Kind::Float)?;
    if fifo {
        w = w.f_tr()?;
    }
    let cov = cov.f_to_kind(Kind::Float)?;
    let n = cov.size()[0];
    let mut damp = 0.01;
    let (fix, inv) = loop {
        let mean_diag = cov.f_diag(0)?.f_mean(None::<Kind>)?;
        let compensate = Tensor::f_ones([n], (Kind::Float, cov.device()))?
            .f_mul(&mean_diag)?
            .f_mul_scalar(damp)?
            .f_diag(0)?;
        let fix = cov.f_add(&compensate)?;
        let inv = Tensor::f_linalg_inv(&fix)?;
        let eye = Tensor::f_eye(n, (Kind::Float, cov.device()))?;
        let err = fix.f_matmul(&inv)?.f_dist(&eye)?.f_double_value(&[])?;
        if err < 0.05 {
            break (fix, inv);
        }
        damp *= 2.0;
    };
    let w = w.f_matmul(&fix)?;
    let (u, s, v) = w.f_svd(true, true)?;
    let vh = v.f_transpose(-2, -1)?;
    let v = vh.f_matmul(&inv)?.f_transpose(0, 1)?;
    Ok((u, s, v))
}

/// CorDA's init of the layer being created: `(A, B)` from the decomposition `preprocess_corda` left in
/// `config.init_data` for it (taken out of it); the base keeps the residual.
///
/// # Errors
/// No decomposition for the layer, a base that is not linear, or a libtorch failure.
pub(crate) fn init_layer(
    config: &LoraConfig,
    ctx: &mut LayerInit<'_, '_>,
    scaling: f64,
) -> Result<(Tensor, Tensor)> {
    let eigens = match &config.init_data {
        InitData::Corda(e) => e.lock().ok().and_then(|mut e| e.remove(ctx.module_name)),
        _ => None,
    };
    let (Some(eigens), Some(lin)) = (eigens, ctx.base.as_linear()) else {
        return Err(PeftError::Invalid(format!(
            "`{}`: no CorDA decomposition, please run `peft_lora::corda::preprocess_corda` first and pass its \
             result in `LoraConfig::init_data`",
            ctx.module_name
        )));
    };
    let (a, b, residual) = init_from_eigens(&eigens, &lin.weight(), lin.fan_in_fan_out(), scaling)?;
    match ctx.base.as_weighted_mut() {
        Some(w) => w.set_weight(&residual)?,
        None => return Err(PeftError::Invalid("CorDA needs a base weight".into())),
    }
    Ok((a, b))
}

/// `corda_init`: `(A, B, residual)` from the layer's `(U, S, V)`.
fn init_from_eigens(
    eigens: &(Tensor, Tensor, Tensor),
    weight: &Tensor,
    fan_in_fan_out: bool,
    scaling: f64,
) -> Result<(Tensor, Tensor, Tensor)> {
    let (u, s, v) = eigens;
    let f = || -> TchResult<(Tensor, Tensor, Tensor)> {
        let dtype = weight.kind();
        let w = weight.f_to_kind(Kind::Float)?;
        let s = s.f_div_scalar(scaling)?;
        let root = s.f_sqrt()?;
        let a = v.f_tr()?.f_mul(&root.f_view([-1, 1])?)?.f_contiguous()?;
        let b = u.f_mul(&root)?.f_contiguous()?;
        let mut delta = b.f_mul_scalar(scaling)?.f_matmul(&a)?;
        if fan_in_fan_out {
            delta = delta.f_tr()?;
        }
        let residual = w.f_sub(&delta)?.f_to_kind(dtype)?;
        Ok((a, b, residual))
    };
    tch::no_grad(f).map_err(PeftError::torch("CorDA initialisation"))
}
