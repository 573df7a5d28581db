//! `init_lora_weights`: how A and B start, per layer class, dispatched exactly as PEFT 0.21.2's
//! `update_layer` methods do (including which schemes a layer class silently treats as the default and
//! which it rejects).
//!
//! | scheme | Linear / Conv1D | Embedding | Conv |
//! |---|---|---|---|
//! | `true` | A kaiming-uniform, B zero | A zero, B normal | as Linear |
//! | `false` | constructor init (A, B random) | `randn` A and B | constructor init |
//! | `"gaussian"` | A `N(0, 1/r)`, B zero | as `true` | as Linear |
//! | `"pissa"`, `"pissa_niter_N"` | top-r SVD factors, base ← residual | as `true` | error |
//! | `"olora"` | QR factors, base ← residual | as `true` | error |
//! | `"orthogonal"` | orthogonal rows/columns (even r) | as `true` | error |
//! | `"mica"` | B ← minor left singular vectors (frozen), A zero | same on the table | error |
//! | `"eva"` | B zero (A is filled by EVA) | as `true` | error |
//! | `"lora_ga"` | without gradients: as `true` | as `true` | as `true` |
//!
//! The schemes that rewrite the base weight (PiSSA, OLoRA) are undone on save with
//! [`peft_core::SaveOptions::convert_initial_adapter`], as PEFT's `path_initial_model_for_weight_conversion`.

use crate::config::{InitLoraWeights, PEFT_TYPE};
use crate::layer::{transpose, LoraKind};
use peft_core::error::{PeftError, Result};
use peft_core::layer::BaseLayer;
use peft_core::{init, linalg};
use tch::{Kind, Tensor};

type TchResult<T> = std::result::Result<T, tch::TchError>;

/// What `update_layer` does for one layer class and `init_lora_weights` value.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Scheme {
    /// `false` (or an empty string): keep the constructor's draws.
    Keep,
    /// `reset_lora_parameters` with `true` (`gaussian = false`) or `"gaussian"`.
    Reset { gaussian: bool },
    /// PiSSA: full SVD, or `svd_lowrank` with `niter` subspace iterations.
    Pissa { niter: Option<i64> },
    /// OLoRA.
    Olora,
    /// Orthogonal A and B.
    Orthogonal,
    /// MiCA; `frozen_b` when the value is exactly `"mica"` (PEFT's variant lookup is case-sensitive).
    Mica { frozen_b: bool },
    /// EVA: B zero, A filled later from data.
    Eva,
    /// CorDA: from the preprocessed decomposition (required).
    Corda,
    /// LoRA-GA: from the estimated gradient when the config carries one for the layer, else the default.
    LoraGa,
    /// LoftQ: alternate quantization (`bits`) and a rank-r fit of the error, `iters` times.
    Loftq {
        /// 4 (NF4) or 8 (LLM.int8).
        bits: i64,
        /// Alternating iterations.
        iters: i64,
    },
    /// Not available for this layer kind.
    Unsupported(String),
}

impl Scheme {
    /// PEFT's dispatch for `kind`.
    pub(crate) fn resolve(
        kind: &LoraKind,
        init: &InitLoraWeights,
        loftq: &serde_json::Value,
    ) -> Result<Scheme> {
        let s = match init {
            InitLoraWeights::Bool(false) => return Ok(Scheme::Keep),
            InitLoraWeights::Bool(true) => return Ok(Scheme::Reset { gaussian: false }),
            InitLoraWeights::Scheme(s) if s.is_empty() => return Ok(Scheme::Keep),
            InitLoraWeights::Scheme(s) => s.as_str(),
        };
        let lower = s.to_ascii_lowercase();
        let unknown = || {
            peft_core::config::unsupported_option(
                PEFT_TYPE,
                "init_lora_weights",
                &serde_json::Value::String(s.to_string()),
                &format!("PEFT raises `Unknown initialization` for it on a {} layer", kind.class_name()),
            )
        };
        Ok(match kind {
            LoraKind::Linear { .. } => {
                if s.starts_with("pissa") {
                    Scheme::Pissa { niter: pissa_niter(s)? }
                } else if s.starts_with("corda") {
                    Scheme::Corda
                } else if lower == "olora" {
                    Scheme::Olora
                } else if lower == "mica" {
                    Scheme::Mica { frozen_b: s == "mica" }
                } else if s == "loftq" {
                    loftq_scheme(loftq)?
                } else if s == "eva" {
                    Scheme::Eva
                } else if s == "orthogonal" {
                    Scheme::Orthogonal
                } else if s == "lora_ga" {
                    // Without `preprocess_loraga` gradients PEFT falls back to the default init (a saved
                    // LoRA-GA adapter loads this way).
                    Scheme::LoraGa
                } else if lower == "gaussian" {
                    Scheme::Reset { gaussian: true }
                } else {
                    return Err(unknown());
                }
            }
            LoraKind::Embedding { .. } => {
                if lower == "mica" {
                    Scheme::Mica { frozen_b: s == "mica" }
                } else if s == "loftq" {
                    Scheme::Unsupported("loftq".into())
                } else {
                    // Any other truthy value resets an embedding adapter the default way.
                    Scheme::Reset { gaussian: false }
                }
            }
            LoraKind::Conv { .. } => {
                if s == "loftq" {
                    Scheme::Unsupported("loftq".into())
                } else if s == "lora_ga" {
                    Scheme::Reset { gaussian: false }
                } else if lower == "gaussian" {
                    Scheme::Reset { gaussian: true }
                } else {
                    return Err(unknown());
                }
            }
        })
    }
}

/// `loftq_config` → the scheme (PEFT reads `loftq_bits` and `loftq_iter`).
fn loftq_scheme(cfg: &serde_json::Value) -> Result<Scheme> {
    let get = |k: &str| {
        cfg.get(k).and_then(serde_json::Value::as_i64).ok_or_else(|| {
            PeftError::Invalid(format!(
                "loftq_config needs an integer `{k}` (LoftQConfig(loftq_bits=4, loftq_iter=1))"
            ))
        })
    };
    Ok(Scheme::Loftq { bits: get("loftq_bits")?, iters: get("loftq_iter")? })
}

/// `pissa` → full SVD; `pissa_niter_N` → `N` subspace iterations.
fn pissa_niter(s: &str) -> Result<Option<i64>> {
    if s == "pissa" {
        return Ok(None);
    }
    let parts: Vec<&str> = s.split("_niter_").collect();
    match parts.as_slice() {
        [_, n] => n.parse::<i64>().ok().filter(|n| *n >= 0).map(Some).ok_or_else(|| invalid_pissa(s)),
        _ => Err(invalid_pissa(s)),
    }
}

fn invalid_pissa(s: &str) -> PeftError {
    PeftError::Invalid(format!(
        "init_lora_weights should be 'pissa' or 'pissa_niter_[number of iters]', got {s} instead."
    ))
}

/// `reset_lora_parameters(adapter, true | "gaussian")`.
pub(crate) fn reset(
    kind: &LoraKind,
    gaussian: bool,
    r: i64,
    a: &mut Tensor,
    b: &mut Tensor,
    b_bias: Option<&mut Tensor>,
) -> Result<()> {
    if let LoraKind::Embedding { .. } = kind {
        // A to zeros, B like nn.Embedding, whatever the scheme.
        init::zeros_(a)?;
        return init::normal_(b, 0.0, 1.0);
    }
    if gaussian {
        init::normal_(a, 0.0, 1.0 / r as f64)?;
    } else {
        init::kaiming_uniform_(a, 5f64.sqrt())?;
    }
    init::zeros_(b)?;
    if let Some(bb) = b_bias {
        init::zeros_(bb)?;
    }
    Ok(())
}

/// The base weight in fp32 as PEFT's data-driven inits read it; errors for non-float bases.
fn float_weight(base: &dyn BaseLayer, scheme: &str) -> Result<(Tensor, Kind)> {
    let weight = base
        .as_weighted()
        .ok_or_else(|| PeftError::Invalid(format!("{scheme} initialisation needs a base weight")))?
        .weight();
    let kind = weight.kind();
    if !matches!(kind, Kind::Float | Kind::Half | Kind::BFloat16) {
        return Err(PeftError::Invalid(format!(
            "Please initialize {scheme} under float32, float16, or bfloat16 (the base weight is {kind:?})."
        )));
    }
    let w = weight.f_to_kind(Kind::Float).map_err(PeftError::torch("reading the base weight"))?;
    Ok((w, kind))
}

fn write_weight(base: &mut dyn BaseLayer, w: &Tensor) -> Result<()> {
    match base.as_weighted_mut() {
        Some(b) => b.set_weight(w),
        None => Err(PeftError::Invalid("the base layer has no weight".into())),
    }
}

/// Applies a weight-derived scheme: returns the new `(A, B)` (fp32, on the weight's device) and rewrites
/// the base weight where the scheme does. `a`, `b` hold the constructor draws.
pub(crate) fn apply(
    scheme: &Scheme,
    kind: &LoraKind,
    base: &mut dyn BaseLayer,
    r: i64,
    scaling: f64,
    in_features: i64,
    out_features: i64,
) -> Result<Option<(Tensor, Tensor)>> {
    let fifo = matches!(kind, LoraKind::Linear { fan_in_fan_out: true });
    match scheme {
        Scheme::Pissa { niter } => {
            let (w, dtype) = float_weight(base, "PiSSA")?;
            let f = || -> Result<(Tensor, Tensor, Tensor)> {
                let w = transpose(&w, fifo).map_err(PeftError::torch("PiSSA"))?;
                let (vr, sr, uhr) = match niter {
                    None => {
                        // Slicing clamps as in Python: with r above min(in, out) the factors get the
                        // smaller rank, as PEFT's do.
                        let (v, s, uh) = linalg::svd(&w)?;
                        let k = r.min(s.size()[0]);
                        (v.narrow(1, 0, k), s.narrow(0, 0, k), uh.narrow(0, 0, k))
                    }
                    Some(n) => {
                        let (v, s, u) = linalg::svd_lowrank(&w, r, *n)?;
                        (v, s, u.tr())
                    }
                };
                let g = || -> TchResult<(Tensor, Tensor, Tensor)> {
                    let sr = sr.f_div_scalar(scaling)?;
                    let root = sr.f_sqrt()?.f_diag(0)?;
                    let a = root.f_matmul(&uhr)?;
                    let b = vr.f_matmul(&root)?;
                    let residual = w.f_sub(&b.f_mul_scalar(scaling)?.f_matmul(&a)?)?;
                    let residual = transpose(&residual.f_to_kind(dtype)?, fifo)?;
                    Ok((a, b, residual))
                };
                g().map_err(PeftError::torch("PiSSA"))
            };
            let (a, b, residual) = tch::no_grad(f)?;
            write_weight(base, &residual)?;
            Ok(Some((a, b)))
        }
        Scheme::Loftq { bits, iters } => {
            if fifo {
                return Err(PeftError::Invalid(
                    "LoftQ decomposes the stored weight, which a Conv1D (fan_in_fan_out) layer keeps transposed; \
                     PEFT 0.21.2 cannot initialise it either"
                        .into(),
                ));
            }
            let (w, dtype) = float_weight(base, "LoftQ")?;
            let (q, a, b) = loftq(&w, *bits, r, *iters)?;
            let q = q.f_to_kind(dtype).map_err(PeftError::torch("LoftQ"))?;
            write_weight(base, &q)?;
            Ok(Some((a, b)))
        }
        Scheme::Olora => {
            if fifo {
                // PEFT's OLoRA decomposes the stored (in, out) weight without transposing it, which gives A
                // and B the wrong shapes on Conv1D layers.
                return Err(PeftError::Invalid(
                    "OLoRA ignores fan_in_fan_out in PEFT 0.21.2 and cannot initialise a Conv1D layer".into(),
                ));
            }
            let (w, dtype) = float_weight(base, "OLoRA")?;
            let f = || -> TchResult<(Tensor, Tensor, Tensor)> {
                let (q, rr) = Tensor::f_linalg_qr(&w, "reduced")?;
                // Python slicing clamps to the available rank.
                let b = q.f_narrow(1, 0, r.min(q.size()[1]))?.f_contiguous()?;
                let a = rr.f_narrow(0, 0, r.min(rr.size()[0]))?.f_contiguous()?;
                let residual = w.f_sub(&b.f_mul_scalar(scaling)?.f_matmul(&a)?)?.f_to_kind(dtype)?;
                Ok((a, b, residual))
            };
            let (a, b, residual) = tch::no_grad(f).map_err(PeftError::torch("OLoRA"))?;
            write_weight(base, &residual)?;
            Ok(Some((a, b)))
        }
        Scheme::Orthogonal => {
            if r % 2 != 0 {
                return Err(PeftError::Invalid(format!(
                    "Orthogonal initialization requires the LoRA rank to be even, got {r} instead."
                )));
            }
            let dtype = base.as_weighted().map(|w| w.weight().kind()).unwrap_or(Kind::Float);
            let f = || -> TchResult<(Tensor, Tensor)> {
                let x = Tensor::f_randn([r, r], (Kind::Float, tch::Device::Cpu))?;
                let (q, _) = Tensor::f_linalg_qr(&x, "reduced")?;
                let q_odd = q.f_slice(0, 0, r, 2)?;
                let q_even = q.f_slice(0, 1, r, 2)?;
                let a = Tensor::f_randn([in_features, r / 2], (Kind::Float, tch::Device::Cpu))?
                    .f_mm(&q_odd)?
                    .f_tr()?
                    .f_div_scalar(10.0)?;
                let b = Tensor::f_randn([r / 2, out_features], (Kind::Float, tch::Device::Cpu))?
                    .f_tr()?
                    .f_mm(&q_even)?
                    .f_div_scalar(10.0)?;
                Ok((a.f_contiguous()?.f_to_kind(dtype)?, b.f_contiguous()?.f_to_kind(dtype)?))
            };
            tch::no_grad(f).map(Some).map_err(PeftError::torch("orthogonal initialisation"))
        }
        Scheme::Mica { .. } => {
            let (w, dtype) = float_weight(base, "MiCA")?;
            let w = match kind {
                LoraKind::Embedding { .. } => w.tr(),
                _ => transpose(&w, fifo).map_err(PeftError::torch("MiCA"))?,
            };
            let size = w.size();
            let max_r = size[0].min(size[1]);
            if r > max_r {
                return Err(PeftError::Invalid(format!(
                    "MiCA requires `r` <= min(in_features, out_features) but got r={r} for a layer with weight \
                     shape {size:?} (max usable r is {max_r})."
                )));
            }
            let (u, _, _) = linalg::svd(&w)?;
            let f = || -> TchResult<(Tensor, Tensor)> {
                let k = u.size()[1];
                let b = u.f_narrow(1, k - r, r)?.f_contiguous()?.f_to_kind(dtype)?;
                let a = Tensor::f_zeros([r, size[1]], (Kind::Float, w.device()))?.f_to_kind(dtype)?;
                Ok((a, b))
            };
            tch::no_grad(f).map(Some).map_err(PeftError::torch("MiCA"))
        }
        _ => Ok(None),
    }
}

/// LoftQ's alternating quantization and SVD (peft-quant's bitsandbytes-exact quantizers).
#[cfg(feature = "loftq")]
fn loftq(w: &Tensor, bits: i64, r: i64, iters: i64) -> Result<(Tensor, Tensor, Tensor)> {
    peft_quant::loftq_init(w, bits, r, iters).map_err(PeftError::from)
}

/// Without the `loftq` feature there is no quantizer to run.
#[cfg(not(feature = "loftq"))]
fn loftq(_w: &Tensor, _bits: i64, _r: i64, _iters: i64) -> Result<(Tensor, Tensor, Tensor)> {
    Err(peft_core::config::unsupported_option(
        crate::config::PEFT_TYPE,
        "init_lora_weights",
        &serde_json::Value::String("loftq".into()),
        "peft-lora was built without its `loftq` feature (which links peft-quant)",
    ))
}
