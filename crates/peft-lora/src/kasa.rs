//! KaSA (knowledge-aware singular-value adaptation, `kasa_config`): the base weight loses its `r`
//! smallest singular components once, at creation, and the update is `s·B·diag(ΔΣ)·A` with a learnable
//! `lora_diag` (`ΔΣ`) — PEFT's `KasaLinearVariant`. Linear layers only.
//!
//! The truncation is destructive (disabling or unloading the adapter does not restore the weight), so
//! KaSA adapters cannot sit next to non-KaSA ones. The paper's regularizers are [`kasa_loss`]; add it to
//! the task loss.

use crate::config::LoraConfig;
use crate::layer::LoraLayer;
use peft_core::error::{PeftError, Result};
use peft_core::layer::BaseLayer;
use peft_core::{Adaptable, PeftModel};
use tch::{Kind, Tensor};

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
            let Some(diag) = &layer.kasa_diag else { continue };
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
