//! KaSA (knowledge-aware singular-value adaptation, `kasa_config`): the base weight loses its `r`
//! smallest singular components once, at creation, and the update is `s·B·diag(ΔΣ)·A` with a learnable
//! `lora_diag` (`ΔΣ`) — PEFT's `KasaLinearVariant`. Linear layers only.
//!
//! The truncation is destructive (disabling or unloading the adapter does not restore the weight), so
//! KaSA adapters cannot sit next to non-KaSA ones. The paper's regularizers are [`kasa_loss`]; add it to
//! the task loss.

use crate::config::LoraConfig;
use crate::layer::{LoraKind, LoraLayer};
use crate::variant::LoraVariant;
use peft_core::config::LayerInit;
use peft_core::error::{PeftError, Result};
use peft_core::layer::BaseLayer;
use peft_core::{Adaptable, PeftModel};
use tch::{Kind, Tensor};

/// PEFT's refusals before anything is drawn: Conv1D bases, and a rank that would truncate the whole
/// base (`features`: `(in, out)`).
pub(crate) fn check(kind: &LoraKind, r: i64, features: (i64, i64)) -> Result<()> {
    if let LoraKind::Linear { fan_in_fan_out: true } = kind {
        return Err(PeftError::Invalid(
            "KaSA does not support `fan_in_fan_out=True` layers (e.g. Conv1D). Please target nn.Linear layers."
                .into(),
        ));
    }
    let min = features.0.min(features.1);
    if r >= min {
        return Err(PeftError::Invalid(format!(
            "KaSA requires `r` ({r}) to be smaller than min(in_features, out_features) ({min}) so that at least \
             one singular component of the base weight is preserved after truncation."
        )));
    }
    Ok(())
}

/// KaSA's init on a placed `layer`: `lora_diag` ~ N(0, 1) on A's device and dtype (B is zero, so the
/// update starts at zero), then the base keeps only its largest min(in, out) − r singular components.
/// Returns the registered `lora_diag`.
pub(crate) fn create(layer: &LoraLayer, ctx: &mut LayerInit<'_, '_>) -> Result<Tensor> {
    let diag = Tensor::f_randn([layer.r], (layer.lora_a.kind(), layer.lora_a.device()))
        .map_err(PeftError::torch("initialising lora_diag"))?;
    let diag = (&ctx.path / "lora_diag").add(layer.adapter_name(), diag, true);
    truncate_base(ctx.base, layer.r)?;
    Ok(diag)
}

/// `B(diag(ΔΣ)·A(x))`, without scaling.
pub(crate) fn path(x: &Tensor, a: &Tensor, diag: &Tensor, b: &Tensor, bias: Option<&Tensor>) -> Tensor {
    let after_a = x.linear::<&Tensor>(a, None) * diag;
    after_a.linear(b, bias)
}

/// `B·diag(ΔΣ)` for the delta weight (`ΔΣ` in fp32 when `cast`, as the factors then are).
pub(crate) fn fold_diag(b: &Tensor, diag: &Tensor, cast: bool) -> std::result::Result<Tensor, tch::TchError> {
    b.f_mul(&if cast { diag.f_to_kind(Kind::Float)? } else { diag.shallow_clone() })
}

/// Replaces the base weight by its rank-`(min(in, out) − r)` SVD approximation.
pub(crate) fn truncate_base(base: &mut dyn BaseLayer, r: i64) -> Result<()> {
    let weight =
        base.as_weighted().ok_or_else(|| PeftError::Invalid("KaSA needs a base weight".into()))?.weight();
    let dtype = weight.kind();
    let (u, s, vh) = peft_core::linalg::svd(&weight.detach().to_kind(Kind::Float))?;
    let keep = s.size()[0] - r;
    let f = || -> std::result::Result<Tensor, tch::TchError> {
        let up = u.f_narrow(1, 0, keep)?;
        let sp = s.f_narrow(0, 0, keep)?;
        let vhp = vh.f_narrow(0, 0, keep)?;
        up.f_mul(&sp)?.f_matmul(&vhp)?.f_to_kind(dtype)
    };
    let truncated = tch::no_grad(f).map_err(PeftError::torch("KaSA truncation"))?;
    match base.as_weighted_mut() {
        Some(w) => w.set_weight(&truncated),
        None => Err(PeftError::Invalid("KaSA needs a base weight".into())),
    }
}

/// PEFT's `LoraModel._get_kasa_loss`: `Σ β·‖ΔΣ‖² + γ·(‖BᵀB − I‖ + ‖AAᵀ − I‖)` over the KaSA layers of
/// `adapters` (default: the active ones), with each adapter's `kasa_config` β and γ; a zero scalar when
/// there is none.
pub fn kasa_loss<M: Adaptable>(peft: &PeftModel<M>, adapters: Option<&[&str]>) -> Tensor {
    let names: Vec<String> = match adapters {
        Some(a) => a.iter().map(|s| s.to_string()).collect(),
        None => peft.active_adapters().to_vec(),
    };
    let coeffs: Vec<(String, f64, f64)> = names
        .iter()
        .filter_map(|n| {
            let c = peft.config(n)?.as_any().downcast_ref::<LoraConfig>()?;
            let k = c.kasa_config.as_ref().filter(|v| !v.is_null())?;
            let get = |key: &str, d: f64| k.get(key).and_then(serde_json::Value::as_f64).unwrap_or(d);
            Some((n.clone(), get("beta", 1e-4), get("gamma", 1e-3)))
        })
        .collect();
    let mut total: Option<Tensor> = None;
    peft.model().visit_layers(&mut |l| {
        for (name, beta, gamma) in &coeffs {
            let Some(layer) = l.slots().get(name).and_then(|t| t.as_any().downcast_ref::<LoraLayer>()) else {
                continue;
            };
            let LoraVariant::Kasa(diag) = &layer.variant else { continue };
            let r = diag.size()[0];
            let d = diag.to_kind(Kind::Float);
            let a = layer.lora_a.to_kind(Kind::Float);
            let b = layer.lora_b.to_kind(Kind::Float);
            let eye = Tensor::eye(r, (Kind::Float, d.device()));
            let l2 = d.square().sum(None::<Kind>);
            let gram_b = b.transpose(-1, -2).matmul(&b);
            let gram_a = a.matmul(&a.transpose(-1, -2));
            // torch.linalg.norm of a matrix without `ord`: the 2-norm of its entries.
            let l3 = (gram_b - &eye).norm() + (gram_a - &eye).norm();
            let term = l2 * *beta + l3 * *gamma;
            total = Some(match total.take() {
                Some(t) => t + term,
                None => term,
            });
        }
    });
    total.unwrap_or_else(|| Tensor::from(0.0f32))
}
