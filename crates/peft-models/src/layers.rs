//! The non-adaptable building blocks (embeddings, norms, activations, rotary embeddings), computed with
//! the same ops in the same order as transformers.
//!
//! Parameters are allocated uninitialised-but-zeroed in the var store's dtype and device; loading a
//! checkpoint fills them.

use crate::error::{ModelError, Result};
use peft_core::nn::{LinearBase, LinearConfig};
use peft_core::AdaptedLayer;
use tch::nn::Path;
use tch::{Kind, Tensor};

fn param(p: &Path<'_>, name: &str, shape: &[i64], fill: f64) -> Result<Tensor> {
    let t = Tensor::f_full(shape, fill, (p.kind(), p.device()))
        .map_err(ModelError::torch("allocating a weight"))?;
    Ok(p.add(name, t, true))
}

/// An adaptable linear layer whose weights come from a checkpoint (no random init).
///
/// # Errors
/// A libtorch failure.
pub fn linear(p: Path<'_>, in_f: i64, out_f: i64, bias: bool) -> Result<peft_core::nn::Linear> {
    Ok(peft_core::nn::linear(p, in_f, out_f, LinearConfig { bias, init: false })?)
}

/// An adaptable transformers `Conv1D(nf, nx)` whose weights come from a checkpoint.
///
/// # Errors
/// A libtorch failure.
pub fn conv1d(p: Path<'_>, nf: i64, nx: i64) -> Result<peft_core::nn::Linear> {
    let name = peft_core::nn::path_name(&p);
    let weight = param(&p, "weight", &[nx, nf], 0.0)?;
    let bias = Some(param(&p, "bias", &[nf], 0.0)?);
    Ok(AdaptedLayer::new(name, LinearBase::dense(weight, bias, true)))
}

/// A linear layer sharing an existing weight (a tied `lm_head`): no variable of its own.
pub fn tied_linear(name: &str, weight: &Tensor) -> peft_core::nn::Linear {
    AdaptedLayer::new(name, LinearBase::dense(weight.shallow_clone(), None, false))
}

/// An adaptable `nn.Embedding` whose weight comes from a checkpoint (LoRA, trainable tokens and
/// modules_to_save can target it).
///
/// # Errors
/// A libtorch failure.
pub fn embedding(p: Path<'_>, num: i64, dim: i64) -> Result<peft_core::nn::Embedding> {
    let cfg = peft_core::nn::EmbeddingConfig { padding_idx: None, init: false };
    Ok(peft_core::nn::embedding(p, num, dim, cfg)?)
}

/// A plain `nn.Embedding` for tables PEFT never adapts in practice (T5's relative attention buckets).
#[derive(Debug)]
pub struct Embedding {
    /// `(num_embeddings, dim)`.
    pub weight: Tensor,
}

impl Embedding {
    /// Allocates `p/weight`.
    ///
    /// # Errors
    /// A libtorch failure.
    pub fn new(p: Path<'_>, num: i64, dim: i64) -> Result<Self> {
        Ok(Self { weight: param(&p, "weight", &[num, dim], 0.0)? })
    }

    /// `F.embedding(ids, weight)`.
    pub fn forward(&self, ids: &Tensor) -> Tensor {
        Tensor::embedding(&self.weight, ids, -1, false, false)
    }
}

/// `nn.LayerNorm`.
#[derive(Debug)]
pub struct LayerNorm {
    /// Scale.
    pub weight: Tensor,
    /// Shift.
    pub bias: Tensor,
    /// Epsilon.
    pub eps: f64,
}

impl LayerNorm {
    /// The same norm, sharing its tensors (layer replication).
    pub fn share(&self) -> Self {
        Self { weight: self.weight.shallow_clone(), bias: self.bias.shallow_clone(), eps: self.eps }
    }

    /// Allocates `p/weight` and `p/bias`.
    ///
    /// # Errors
    /// A libtorch failure.
    pub fn new(p: Path<'_>, dim: i64, eps: f64) -> Result<Self> {
        Ok(Self { weight: param(&p, "weight", &[dim], 1.0)?, bias: param(&p, "bias", &[dim], 0.0)?, eps })
    }

    /// `F.layer_norm`.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        x.layer_norm([self.weight.size()[0]], Some(&self.weight), Some(&self.bias), self.eps, true)
    }
}

/// Llama's `RMSNorm`: statistics in fp32, result cast back, then scaled.
#[derive(Debug)]
pub struct RmsNorm {
    /// Scale.
    pub weight: Tensor,
    /// Epsilon.
    pub eps: f64,
}

impl RmsNorm {
    /// The same norm, sharing its tensor (layer replication).
    pub fn share(&self) -> Self {
        Self { weight: self.weight.shallow_clone(), eps: self.eps }
    }

    /// Allocates `p/weight`.
    ///
    /// # Errors
    /// A libtorch failure.
    pub fn new(p: Path<'_>, dim: i64, eps: f64) -> Result<Self> {
        Ok(Self { weight: param(&p, "weight", &[dim], 1.0)?, eps })
    }

    /// `weight * (x / sqrt(mean(x²) + eps)).to(x.dtype)`. In fp32 this is libtorch's fused `rms_norm`
    /// (the same values, one kernel instead of six in each direction).
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let kind = x.kind();
        if kind == Kind::Float && self.weight.kind() == Kind::Float {
            let dim = self.weight.size();
            return x.rms_norm(dim.as_slice(), Some(&self.weight), self.eps);
        }
        let h = x.to_kind(Kind::Float);
        let var = h.pow_tensor_scalar(2).mean_dim(-1, true, None::<Kind>);
        let h = &h * (var + self.eps).rsqrt();
        &self.weight * h.to_kind(kind)
    }

    /// T5's layer norm: the same statistics, but the product is taken in fp32 unless the weight is half
    /// precision.
    pub fn forward_t5(&self, x: &Tensor) -> Tensor {
        let var = x.to_kind(Kind::Float).pow_tensor_scalar(2).mean_dim(-1, true, None::<Kind>);
        let mut h = x * (var + self.eps).rsqrt();
        if matches!(self.weight.kind(), Kind::Half | Kind::BFloat16) {
            h = h.to_kind(self.weight.kind());
        }
        &self.weight * h
    }
}

/// transformers' `ACT2FN` (shared with the methods that name an activation, e.g. PEANuT).
pub use peft_core::Activation;

/// Rotary position embeddings (`LlamaRotaryEmbedding`), with the `default`, `linear` and `llama3`
/// rope types.
#[derive(Debug)]
pub struct Rotary {
    inv_freq: Tensor,
    attention_scaling: f64,
}

/// RoPE settings, from `rope_parameters` (transformers ≥ 5) or `rope_theta` + `rope_scaling`.
#[derive(Clone, Debug, PartialEq)]
pub struct RopeParameters {
    /// `rope_type`.
    pub rope_type: String,
    /// The base.
    pub theta: f64,
    /// `factor` (linear, llama3).
    pub factor: f64,
    /// llama3 `low_freq_factor`.
    pub low_freq_factor: f64,
    /// llama3 `high_freq_factor`.
    pub high_freq_factor: f64,
    /// llama3 `original_max_position_embeddings`.
    pub original_max_position_embeddings: f64,
}

impl RopeParameters {
    /// Reads either config form.
    ///
    /// # Errors
    /// A rope type peft-models does not implement, or a missing llama3 parameter.
    pub fn from_config(c: &crate::config::HfConfig) -> Result<Self> {
        let raw = c.raw();
        let params = raw
            .get("rope_parameters")
            .filter(|v| v.is_object())
            .or_else(|| raw.get("rope_scaling").filter(|v| v.is_object()));
        let get = |k: &str| params.and_then(|p| p.get(k)).and_then(serde_json::Value::as_f64);
        let rope_type = params
            .and_then(|p| p.get("rope_type").or_else(|| p.get("type")))
            .and_then(serde_json::Value::as_str)
            .unwrap_or("default")
            .to_string();
        let theta = get("rope_theta").or(c.opt_f64("rope_theta")?).unwrap_or(10000.0);
        let need = |k: &str| {
            get(k).ok_or_else(|| ModelError::Config {
                path: c.path().to_path_buf(),
                message: format!("rope type {rope_type:?} needs `{k}`"),
            })
        };
        let out = match rope_type.as_str() {
            "default" => Self::plain("default", theta),
            "linear" => Self { factor: need("factor")?, ..Self::plain("linear", theta) },
            "llama3" => Self {
                factor: need("factor")?,
                low_freq_factor: need("low_freq_factor")?,
                high_freq_factor: need("high_freq_factor")?,
                original_max_position_embeddings: need("original_max_position_embeddings")?,
                ..Self::plain("llama3", theta)
            },
            other => {
                return Err(ModelError::Config {
                    path: c.path().to_path_buf(),
                    message: format!("unsupported rope_type {other:?} (supported: default, linear, llama3)"),
                })
            }
        };
        Ok(out)
    }

    fn plain(rope_type: &str, theta: f64) -> Self {
        Self {
            rope_type: rope_type.into(),
            theta,
            factor: 1.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8192.0,
        }
    }
}

impl Rotary {
    /// The inverse frequencies for `head_dim`, computed in fp32 with transformers' ops.
    ///
    /// # Errors
    /// A libtorch failure.
    pub fn new(rope: &RopeParameters, head_dim: i64, device: tch::Device) -> Result<Self> {
        let f = || -> std::result::Result<Tensor, tch::TchError> {
            let exps = Tensor::f_arange_start_step(0, head_dim, 2, (Kind::Float, tch::Device::Cpu))?
                .f_div_scalar(head_dim as f64)?;
            let mut inv = Tensor::f_pow_scalar(rope.theta, &exps)?.f_reciprocal()?;
            match rope.rope_type.as_str() {
                "linear" => inv = inv.f_div_scalar(rope.factor)?,
                "llama3" => {
                    let old = rope.original_max_position_embeddings;
                    let low_wavelen = old / rope.low_freq_factor;
                    let high_wavelen = old / rope.high_freq_factor;
                    let wavelen = inv.f_reciprocal()?.f_mul_scalar(2.0 * std::f64::consts::PI)?;
                    let scaled = inv.f_div_scalar(rope.factor)?;
                    let inv_llama = scaled.f_where_self(&wavelen.f_gt(low_wavelen)?, &inv)?;
                    let smooth = wavelen
                        .f_reciprocal()?
                        .f_mul_scalar(old)?
                        .f_sub_scalar(rope.low_freq_factor)?
                        .f_div_scalar(rope.high_freq_factor - rope.low_freq_factor)?;
                    let smoothed = smooth
                        .f_neg()?
                        .f_add_scalar(1.0)?
                        .f_mul(&inv_llama)?
                        .f_div_scalar(rope.factor)?
                        .f_add(&smooth.f_mul(&inv_llama)?)?;
                    let medium = wavelen
                        .f_lt(high_wavelen)?
                        .f_logical_not()?
                        .f_logical_and(&wavelen.f_gt(low_wavelen)?.f_logical_not()?)?;
                    inv = smoothed.f_where_self(&medium, &inv_llama)?;
                }
                _ => {}
            }
            inv.f_to_device(device)
        };
        Ok(Self {
            inv_freq: f().map_err(ModelError::torch("computing rotary frequencies"))?,
            attention_scaling: 1.0,
        })
    }

    /// `(cos, sin)` of shape `(B, T, head_dim)` for integer `positions` `(B, T)`, in `kind`.
    pub fn cos_sin(&self, positions: &Tensor, kind: Kind) -> (Tensor, Tensor) {
        let freqs = positions.unsqueeze(-1).to_kind(Kind::Float) * &self.inv_freq;
        let emb = Tensor::cat(&[&freqs, &freqs], -1);
        let cos = emb.cos() * self.attention_scaling;
        let sin = emb.sin() * self.attention_scaling;
        (cos.to_kind(kind), sin.to_kind(kind))
    }
}

fn rotate_half(x: &Tensor) -> Tensor {
    let d = x.size()[x.dim() - 1];
    let x1 = x.narrow(-1, 0, d / 2);
    let x2 = x.narrow(-1, d / 2, d - d / 2);
    Tensor::cat(&[&x2.neg(), &x1], -1)
}

/// `sin` with its first half negated, for [`apply_rotary_signed`]: computed once per forward pass
/// instead of negating half of every query and key.
pub fn signed_sin(sin: &Tensor) -> Tensor {
    let d = sin.size()[sin.dim() - 1];
    Tensor::cat(&[&sin.narrow(-1, 0, d / 2).neg(), &sin.narrow(-1, d / 2, d - d / 2)], -1)
}

/// [`apply_rotary`] with [`signed_sin`]: `x·cos + swap_halves(x)·signed_sin`, bit-identical to
/// `x·cos + rotate_half(x)·sin` (a sign moves between the factors of a product exactly).
pub fn apply_rotary_signed(x: &Tensor, cos: &Tensor, signed_sin: &Tensor) -> Tensor {
    let d = x.size()[x.dim() - 1];
    let swapped = Tensor::cat(&[&x.narrow(-1, d / 2, d - d / 2), &x.narrow(-1, 0, d / 2)], -1);
    (x * cos.unsqueeze(1)) + (swapped * signed_sin.unsqueeze(1))
}

/// `apply_rotary_pos_emb` on `(B, H, T, D)` tensors with `(B, T, D)` cos/sin.
pub fn apply_rotary(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Tensor {
    let cos = cos.unsqueeze(1);
    let sin = sin.unsqueeze(1);
    (x * cos) + (rotate_half(x) * sin)
}
