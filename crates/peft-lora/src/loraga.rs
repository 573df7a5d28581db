//! LoRA-GA (`init_lora_weights = "lora_ga"`): A and B start from the SVD of the full fine-tuning
//! gradient of each target weight, estimated by running a few training steps on the base model — PEFT's
//! `preprocess_loraga` + `lora_ga_init`.
//!
//! ```text
//! let grads = peft_lora::loraga::estimate_gradients(&mut model, &vs, &config, |m| {
//!     /* forward (training mode) + loss.backward() on a few batches */ Ok(())
//! })?;
//! config.init_data = InitData::LoraGa(grads);      // then PeftModel::new(model, &vs, config.boxed(), …)
//! ```
//!
//! Each target gradient is the accumulated `weight.grad` divided by how often the layer ran. With the
//! gradients, creating the adapter takes the top `2r` singular directions (`svd_lowrank`, q = `4r`, 4
//! iterations), splits them between A and B by `lora_ga_config.direction`, scales them by
//! `lora_ga_config.scale`, and subtracts `s·BA` from the base weight so the model is unchanged at start.
//! Without gradients (e.g. loading a saved LoRA-GA adapter) the default init is used, as in PEFT.

use crate::config::{InitData, LoraConfig};
use peft_core::config::LayerInit;
use peft_core::error::{PeftError, Result};
use peft_core::peft_config::TargetMatch;
use peft_core::peft_config::TargetMatcher;
use peft_core::{Adaptable, AdapterConfig};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use tch::nn::VarStore;
use tch::Tensor;

/// PEFT's `LoraGAConfig`.
#[derive(Clone, Debug, PartialEq)]
pub struct LoraGaConfig {
    /// `"ArBr"`, `"A2rBr"`, `"ArB2r"` or `"random"`.
    pub direction: String,
    /// `"stable"`, `"weight_svd"`, `"gd_scale"` or `"unit"`.
    pub scale: String,
    /// γ of the stable scaling.
    pub stable_gamma: f64,
}

impl LoraGaConfig {
    /// From `LoraConfig::lora_ga_config` (PEFT's defaults: ArB2r, stable, 16).
    ///
    /// # Errors
    /// Unknown direction or scale names.
    pub fn from_config(config: &LoraConfig) -> Result<Self> {
        let Some(v) = config.lora_ga_config.clone().filter(|v| !v.is_null()) else {
            return Err(PeftError::Invalid(
                "lora_ga_config must be provided when init_lora_weights='lora_ga'. Please pass \
                 lora_ga_config=LoraGAConfig(...) to LoraConfig."
                    .into(),
            ));
        };
        let s = |k: &str, d: &str| v.get(k).and_then(serde_json::Value::as_str).unwrap_or(d).to_string();
        let c = LoraGaConfig {
            direction: s("direction", "ArB2r"),
            scale: s("scale", "stable"),
            stable_gamma: v.get("stable_gamma").and_then(serde_json::Value::as_f64).unwrap_or(16.0),
        };
        if !["ArBr", "A2rBr", "ArB2r", "random"].contains(&c.direction.as_str()) {
            return Err(PeftError::Invalid(format!(
                "lora_ga_config.direction {:?} is not ArBr, A2rBr, ArB2r or random",
                c.direction
            )));
        }
        if !["stable", "weight_svd", "gd_scale", "unit"].contains(&c.scale.as_str()) {
            return Err(PeftError::Invalid(format!(
                "lora_ga_config.scale {:?} is not stable, weight_svd, gd_scale or unit",
                c.scale
            )));
        }
        Ok(c)
    }
}

/// PEFT's `estimate_gradients`: runs `train_step` with gradients enabled only on the weights of the
/// layers `config` targets (linear layers), and returns each weight's accumulated gradient divided by
/// the number of times the layer ran. Every variable of `vs` gets its `requires_grad` back afterwards.
///
/// # Errors
/// No linear target layer, a config error, or what `train_step` returns.
pub fn estimate_gradients<M: Adaptable>(
    model: &mut M,
    vs: &VarStore,
    config: &LoraConfig,
    train_step: impl FnOnce(&M) -> Result<()>,
) -> Result<InitData> {
    let matcher = TargetMatcher::new(&config.target_spec())?;
    let mut targets: Vec<(String, Tensor)> = Vec::new();
    model.visit_layers(&mut |l| {
        if matches!(matcher.check(l.name()), TargetMatch::Targeted { .. }) {
            if let Some(lin) = l.base().as_linear() {
                targets.push((l.name().to_string(), lin.weight()));
            }
        }
    });
    if targets.is_empty() {
        return Err(PeftError::Invalid(
            "No supported layers found for LoRA-GA initialization. LoRA-GA only supports nn.Linear and Conv1D layers."
                .into(),
        ));
    }
    let original: Vec<(Tensor, bool)> = vs
        .variables()
        .into_values()
        .map(|t| {
            let rg = t.requires_grad();
            (t, rg)
        })
        .collect();
    for (t, _) in &original {
        let _ = t.set_requires_grad(false);
    }
    for (_, w) in &targets {
        let _ = w.set_requires_grad(true);
    }
    // Count how often each target runs (PEFT counts backward calls; every forward here is trained on).
    let counts: Arc<Mutex<BTreeMap<String, i64>>> = Arc::new(Mutex::new(BTreeMap::new()));
    let hook_counts = counts.clone();
    let hook: peft_core::ForwardHook = Arc::new(move |name: &str, _x: &Tensor, _y: &Tensor| {
        if let Ok(mut c) = hook_counts.lock() {
            *c.entry(name.to_string()).or_default() += 1;
        }
    });
    let names: Vec<String> = targets.iter().map(|(n, _)| n.clone()).collect();
    peft_core::adaptable::set_forward_hook(model, &names, Some(hook))?;
    let result = tch::with_grad(|| train_step(model));
    peft_core::adaptable::set_forward_hook(model, &names, None)?;
    for (t, rg) in &original {
        let _ = t.set_requires_grad(*rg);
    }
    result?;
    let counts = counts.lock().map(|c| c.clone()).unwrap_or_default();
    let mut grads = BTreeMap::new();
    for (name, mut w) in targets {
        let g = w.grad();
        if g.defined() {
            if let Some(&n) = counts.get(&name).filter(|&&n| n > 0) {
                grads.insert(name.clone(), g.detach() / n as f64);
            }
            w.zero_grad();
        }
    }
    Ok(InitData::LoraGa(Arc::new(Mutex::new(grads))))
}

/// LoRA-GA's init of the layer being created (rank `r`): `(A, B)` from the gradient
/// `estimate_gradients` left in `config.init_data` for it (taken out of it), the base keeping the
/// residual; `None` without a gradient or on a base that is not linear (the caller then falls back to
/// the default init, as PEFT).
///
/// # Errors
/// An invalid `lora_ga_config`, or a libtorch failure.
pub(crate) fn init_layer(
    config: &LoraConfig,
    ctx: &mut LayerInit<'_, '_>,
    r: i64,
    scaling: f64,
) -> Result<Option<(Tensor, Tensor)>> {
    let grad = match &config.init_data {
        InitData::LoraGa(g) => g.lock().ok().and_then(|mut g| g.remove(ctx.module_name)),
        _ => None,
    };
    let (Some(grad), Some(lin)) = (grad, ctx.base.as_linear()) else { return Ok(None) };
    let ga = LoraGaConfig::from_config(config)?;
    let (a, b, residual) = init_from_gradient(&grad, &lin.weight(), lin.fan_in_fan_out(), r, scaling, &ga)?;
    match ctx.base.as_weighted_mut() {
        Some(w) => w.set_weight(&residual)?,
        None => return Err(PeftError::Invalid("LoRA-GA needs a base weight".into())),
    }
    Ok(Some((a, b)))
}

/// `lora_ga_init`: `(A, B, residual weight)` from the gradient `grad` of a linear layer's weight
/// `weight` (storage layout; `fan_in_fan_out` for Conv1D).
fn init_from_gradient(
    grad: &Tensor,
    weight: &Tensor,
    fan_in_fan_out: bool,
    r: i64,
    scaling: f64,
    cfg: &LoraGaConfig,
) -> Result<(Tensor, Tensor, Tensor)> {
    use tch::Kind;
    let dtype = weight.kind();
    let t = |x: &Tensor| if fan_in_fan_out { x.tr() } else { x.shallow_clone() };
    let grad = t(&grad.to_kind(Kind::Float));
    let size = grad.size();
    let q = (4 * r).min(size[0].min(size[1]));
    let (u, s, v) = peft_core::linalg::svd_lowrank(&grad, q, 4)?;
    let f = || -> std::result::Result<(Tensor, Tensor, Tensor), tch::TchError> {
        let vh = v.f_tr()?;
        let two_r = (2 * r).min(s.size()[0]);
        let u = u.f_narrow(1, 0, two_r)?;
        let s = s.f_narrow(0, 0, two_r)?;
        let vh = vh.f_narrow(0, 0, two_r)?;
        let (a, b, s_b) = match cfg.direction.as_str() {
            "ArBr" => {
                let a = vh.f_slice(0, 1, two_r, 2)?;
                let b = u.f_slice(1, 0, two_r, 2)?;
                let s_b = s.f_slice(0, 0, two_r, 2)?;
                (a, b.f_matmul(&s_b.f_diag(0)?)?, s_b)
            }
            "A2rBr" => {
                let s_b = s.f_narrow(0, 0, r)?;
                (vh.f_narrow(0, r, two_r - r)?, u.f_narrow(1, 0, r)?.f_matmul(&s_b.f_diag(0)?)?, s_b)
            }
            "random" => {
                let idx = Tensor::f_randperm(two_r, (Kind::Int64, tch::Device::Cpu))?
                    .f_narrow(0, 0, r)?
                    .f_to_device(vh.device())?;
                let s_b = s.f_index_select(0, &idx)?;
                (vh.f_index_select(0, &idx)?, u.f_index_select(1, &idx)?.f_matmul(&s_b.f_diag(0)?)?, s_b)
            }
            _ => {
                let s_b = s.f_narrow(0, r, two_r - r)?;
                (vh.f_narrow(0, 0, r)?, u.f_narrow(1, r, two_r - r)?.f_matmul(&s_b.f_diag(0)?)?, s_b)
            }
        };
        Ok((a, b, s_b))
    };
    let (mut a, mut b, s_b) = f().map_err(PeftError::torch("LoRA-GA factors"))?;
    let out_features = weight.size()[0];
    let torch = |what: &'static str| PeftError::torch(what);
    match cfg.scale.as_str() {
        "stable" => {
            let factor = (out_features as f64).powf(0.25) / cfg.stable_gamma.powf(0.5);
            b = b.f_mul_scalar(factor).map_err(torch("LoRA-GA scaling"))?;
        }
        "weight_svd" => {
            let wd = t(&weight.to_kind(Kind::Float));
            let (_, ws, _) = peft_core::linalg::svd_lowrank(&wd, r, 4)?;
            let sb0 = s_b.double_value(&[0]);
            if sb0 > 0.0 {
                let factor = ws.get(0).f_div_scalar(sb0).map_err(torch("LoRA-GA scaling"))?;
                b = b.f_mul(&factor).map_err(torch("LoRA-GA scaling"))?;
            }
        }
        "gd_scale" => {
            a = a.f_div_scalar(scaling).map_err(torch("LoRA-GA scaling"))?;
            b = b.f_div_scalar(scaling).map_err(torch("LoRA-GA scaling"))?;
        }
        _ => {}
    }
    let g = || -> std::result::Result<(Tensor, Tensor, Tensor), tch::TchError> {
        let a = a.f_to_kind(dtype)?.f_contiguous()?;
        let b = b.f_to_kind(dtype)?.f_contiguous()?;
        let wd = t(&weight.f_to_kind(Kind::Float)?);
        let offset = b.f_to_kind(Kind::Float)?.f_matmul(&a.f_to_kind(Kind::Float)?)?.f_mul_scalar(scaling)?;
        let residual = t(&wd.f_sub(&offset)?.f_to_kind(dtype)?);
        Ok((a, b, residual))
    };
    tch::no_grad(g).map_err(PeftError::torch("LoRA-GA residual"))
}
