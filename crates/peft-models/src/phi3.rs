//! Phi-3 (`model_type: phi3`): the Llama layout with fused projections — `self_attn.qkv_proj` (queries,
//! keys and values in one `(H·D + 2·KV·D, hidden)` weight) and `mlp.gate_up_proj` (gate and up halves) —
//! partial rotary embeddings (`partial_rotary_factor`) and LongRoPE scaling (`longrope`, formerly `su`).
//!
//! Parameter names equal transformers' (`model.layers.0.self_attn.qkv_proj.weight`), so checkpoints load
//! as they are and PEFT's module names line up.

use crate::attention::{
    attend_causal, causal_mask_or_none, dropout, merge_heads, split_heads, KvCache, LayerCache,
};
use crate::config::HfConfig;
use crate::error::{ModelError, Result};
use crate::layers::{self, Activation, RmsNorm};
use crate::task::{default_positions, DecoderHeadDims, DecoderModel, Heads, Task};
use peft_core::nn::Linear;
use peft_core::{Adaptable, ForwardCtx};
use serde_json::Value;
use tch::nn::Path;
use tch::{Kind, Tensor};

/// The tasks transformers has for Phi-3 (it has no question-answering class).
pub const TASKS: &[Task] =
    &[Task::CausalLm, Task::SequenceClassification, Task::TokenClassification, Task::FeatureExtraction];

/// Phi-3's RoPE: `default` or `longrope` (`su` and `yarn` are read as `longrope`, as transformers does).
#[derive(Clone, Debug, PartialEq)]
pub struct Phi3Rope {
    /// The base.
    pub theta: f64,
    /// Rotated dimensions per head: `int(head_dim · partial_rotary_factor)`.
    pub rotary_dim: i64,
    /// LongRoPE's `(short_factor, long_factor)`, one per rotated frequency; `None` for `default`.
    pub factors: Option<(Vec<f64>, Vec<f64>)>,
    /// Sequences longer than this use the long factors (`original_max_position_embeddings`).
    pub original_max_position_embeddings: i64,
    /// cos/sin scale (LongRoPE's `attention_factor`; 1 for `default`).
    pub attention_factor: f64,
}

impl Phi3Rope {
    /// Reads `rope_scaling` (older configs) or `rope_parameters` with Phi3Config's precedence: the dict's own
    /// `rope_theta` / `partial_rotary_factor` before the top-level keys, the top-level
    /// `original_max_position_embeddings` before the dict's.
    ///
    /// # Errors
    /// A rope type other than default/longrope, missing or misshapen factors.
    pub fn from_config(c: &HfConfig, head_dim: i64, max_position_embeddings: i64) -> Result<Self> {
        let raw = c.raw();
        let params = raw
            .get("rope_scaling")
            .filter(|v| v.is_object())
            .or_else(|| raw.get("rope_parameters").filter(|v| v.is_object()));
        let bad = |message: String| ModelError::Config { path: c.path().to_path_buf(), message };
        let get = |k: &str| params.and_then(|p| p.get(k)).filter(|v| !v.is_null());
        let num = |k: &str| -> Result<Option<f64>> {
            get(k)
                .map(|v| {
                    v.as_f64()
                        .ok_or_else(|| bad(format!("rope parameter `{k}` should be a number, found {v}")))
                })
                .transpose()
        };
        let theta = match num("rope_theta")? {
            Some(t) => t,
            None => c.f64_or("rope_theta", 10000.0)?,
        };
        let partial = match num("partial_rotary_factor")? {
            Some(f) => f,
            None => c.f64_or("partial_rotary_factor", 1.0)?,
        };
        if !(partial > 0.0 && partial <= 1.0) {
            return Err(bad(format!("`partial_rotary_factor` is {partial}, it must be in (0, 1]")));
        }
        let rotary_dim = (head_dim as f64 * partial) as i64;
        if rotary_dim < 2 || rotary_dim % 2 != 0 {
            return Err(bad(format!(
                "head_dim {head_dim} × partial_rotary_factor {partial} gives {rotary_dim} rotated dimensions; \
                 it must be even and at least 2"
            )));
        }
        let rope_type =
            get("rope_type").or_else(|| get("type")).and_then(Value::as_str).unwrap_or("default").to_string();
        let ompe = c.size_or("original_max_position_embeddings", 4096)?;
        let plain = Self {
            theta,
            rotary_dim,
            factors: None,
            original_max_position_embeddings: ompe,
            attention_factor: 1.0,
        };
        match rope_type.as_str() {
            "default" => Ok(plain),
            "longrope" | "su" | "yarn" => {
                let list = |k: &str| -> Result<Vec<f64>> {
                    let v = get(k).ok_or_else(|| bad(format!("rope type {rope_type:?} needs `{k}`")))?;
                    let xs: Option<Vec<f64>> =
                        v.as_array().and_then(|a| a.iter().map(Value::as_f64).collect());
                    let xs =
                        xs.ok_or_else(|| bad(format!("rope parameter `{k}` should be a list of numbers")))?;
                    if xs.len() as i64 != rotary_dim / 2 {
                        return Err(bad(format!(
                            "rope parameter `{k}` has {} entries, the {rotary_dim} rotated dimensions need {}",
                            xs.len(),
                            rotary_dim / 2
                        )));
                    }
                    Ok(xs)
                };
                let factors = (list("short_factor")?, list("long_factor")?);
                let factor = num("factor")?.unwrap_or(max_position_embeddings as f64 / ompe as f64);
                // The paper's scale when none is given: sqrt(1 + ln(factor) / ln(original length)).
                let attention_factor = match num("attention_factor")? {
                    Some(a) => a,
                    None if factor <= 1.0 => 1.0,
                    None => (1.0 + factor.ln() / (ompe as f64).ln()).sqrt(),
                };
                Ok(Self { factors: Some(factors), attention_factor, ..plain })
            }
            other => {
                Err(bad(format!("unsupported rope_type {other:?} for phi3 (supported: default, longrope)")))
            }
        }
    }
}

/// The hyper-parameters, read from `config.json` with Phi3Config's defaults.
#[derive(Clone, Debug)]
pub struct Phi3Args {
    /// Vocabulary size.
    pub vocab_size: i64,
    /// Hidden size.
    pub hidden_size: i64,
    /// MLP size (each half of `gate_up_proj`).
    pub intermediate_size: i64,
    /// Layers.
    pub num_hidden_layers: i64,
    /// Query heads.
    pub num_attention_heads: i64,
    /// Key/value heads.
    pub num_key_value_heads: i64,
    /// Per-head size.
    pub head_dim: i64,
    /// MLP activation.
    pub hidden_act: Activation,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// RoPE.
    pub rope: Phi3Rope,
    /// Dropout on each residual branch (training only).
    pub resid_pdrop: f64,
    /// `lm_head` shares `embed_tokens`.
    pub tie_word_embeddings: bool,
    /// Sliding window of every layer (`None` = full attention).
    pub sliding_window: Option<i64>,
    /// Padding token.
    pub pad_token_id: Option<i64>,
}

impl Phi3Args {
    /// Reads the config.
    ///
    /// # Errors
    /// Wrongly typed values, an unsupported activation or RoPE.
    pub fn from_config(c: &HfConfig) -> Result<Self> {
        let hidden_size = c.size_or("hidden_size", 3072)?;
        let num_attention_heads = c.size_or("num_attention_heads", 32)?;
        let num_key_value_heads = c.opt_size("num_key_value_heads")?.unwrap_or(num_attention_heads);
        c.check_multiple(
            "num_attention_heads",
            num_attention_heads,
            "num_key_value_heads",
            num_key_value_heads,
        )?;
        let head_dim = match c.opt_size("head_dim")? {
            Some(d) => d,
            None => {
                c.check_multiple("hidden_size", hidden_size, "num_attention_heads", num_attention_heads)?;
                hidden_size / num_attention_heads
            }
        };
        let max_position_embeddings = c.size_or("max_position_embeddings", 4096)?;
        Ok(Self {
            vocab_size: c.size_or("vocab_size", 32064)?,
            hidden_size,
            intermediate_size: c.size_or("intermediate_size", 8192)?,
            num_hidden_layers: c.layers_or("num_hidden_layers", 32)?,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            hidden_act: Activation::from_name(c.str_or("hidden_act", "silu")?)?,
            rms_norm_eps: c.f64_or("rms_norm_eps", 1e-5)?,
            rope: Phi3Rope::from_config(c, head_dim, max_position_embeddings)?,
            resid_pdrop: c.f64_or("resid_pdrop", 0.0)?,
            tie_word_embeddings: c.bool_or("tie_word_embeddings", false)?,
            sliding_window: c.opt_size("sliding_window")?,
            pad_token_id: match c.raw().get("pad_token_id") {
                None => Some(32000),
                Some(_) => c.opt_i64("pad_token_id")?,
            },
        })
    }
}

/// `self_attn`.
#[derive(Debug, Adaptable)]
pub struct Attention {
    /// Fused query/key/value projection.
    pub qkv_proj: Linear,
    /// Output projection.
    pub o_proj: Linear,
    #[peft(skip)]
    heads: (i64, i64, i64),
}

/// `mlp`.
#[derive(Debug, Adaptable)]
pub struct Mlp {
    /// Fused gate and up projection (gate first).
    pub gate_up_proj: Linear,
    /// Down projection.
    pub down_proj: Linear,
    #[peft(skip)]
    act: Activation,
}

/// One decoder layer.
#[derive(Debug, Adaptable)]
pub struct Layer {
    /// Attention.
    pub self_attn: Attention,
    /// MLP.
    pub mlp: Mlp,
    #[peft(skip)]
    input_layernorm: RmsNorm,
    #[peft(skip)]
    post_attention_layernorm: RmsNorm,
}

impl Layer {
    /// Layer `from` as layer `to`, sharing its weights (`layer_replication`).
    pub fn replicate(&self, from: usize, to: usize) -> Self {
        let l = |x: &Linear| x.replicate_at("layers", from, to);
        Layer {
            self_attn: Attention {
                qkv_proj: l(&self.self_attn.qkv_proj),
                o_proj: l(&self.self_attn.o_proj),
                heads: self.self_attn.heads,
            },
            mlp: Mlp {
                gate_up_proj: l(&self.mlp.gate_up_proj),
                down_proj: l(&self.mlp.down_proj),
                act: self.mlp.act,
            },
            input_layernorm: self.input_layernorm.share(),
            post_attention_layernorm: self.post_attention_layernorm.share(),
        }
    }
}

/// Phi-3's rotary embedding: the short-factor frequencies, and the long-factor ones LongRoPE switches to
/// when a forward pass reaches past `original_max_position_embeddings`.
#[derive(Debug)]
struct Rotary {
    short: Tensor,
    long: Option<Tensor>,
    switch_after: i64,
    scale: f64,
}

peft_core::impl_no_layers!(Rotary);

impl Rotary {
    /// transformers' `_compute_longrope_parameters` (and the default): `1 / (factor · θ^(2i/d))` in fp32.
    fn new(rope: &Phi3Rope, device: tch::Device) -> Result<Self> {
        let d = rope.rotary_dim;
        let f = |factors: Option<&[f64]>| -> std::result::Result<Tensor, tch::TchError> {
            let exps = Tensor::f_arange_start_step(0, d, 2, (Kind::Float, tch::Device::Cpu))?
                .f_div_scalar(d as f64)?;
            let base = Tensor::f_pow_scalar(rope.theta, &exps)?;
            let base = match factors {
                Some(fs) => Tensor::from_slice(fs).to_kind(Kind::Float).f_mul(&base)?,
                None => base,
            };
            base.f_reciprocal()?.f_to_device(device)
        };
        let both = || -> std::result::Result<(Tensor, Option<Tensor>), tch::TchError> {
            Ok(match &rope.factors {
                Some((s, l)) => (f(Some(s))?, Some(f(Some(l))?)),
                None => (f(None)?, None),
            })
        };
        let (short, long) = both().map_err(ModelError::torch("computing rotary frequencies"))?;
        Ok(Self {
            short,
            long,
            switch_after: rope.original_max_position_embeddings,
            scale: rope.attention_factor,
        })
    }

    /// `(cos, sin)` `(B, T, rotary_dim)` for `positions` `(B, T)`: the long factors when the largest
    /// position reaches past the original length (one choice for the whole batch, as transformers makes).
    fn cos_sin(&self, positions: &Tensor, kind: Kind) -> (Tensor, Tensor) {
        let inv = match &self.long {
            Some(long) if positions.max().int64_value(&[]) + 1 > self.switch_after => long,
            _ => &self.short,
        };
        let freqs = positions.unsqueeze(-1).to_kind(Kind::Float) * inv;
        let emb = Tensor::cat(&[&freqs, &freqs], -1);
        ((emb.cos() * self.scale).to_kind(kind), (emb.sin() * self.scale).to_kind(kind))
    }
}

/// The backbone (`Phi3Model`).
#[derive(Debug, Adaptable)]
pub struct Backbone {
    embed_tokens: peft_core::nn::Embedding,
    /// The layers.
    pub layers: Vec<Layer>,
    #[peft(skip)]
    norm: RmsNorm,
    #[peft(skip)]
    rotary: Rotary,
}

/// Phi-3 with its task head.
#[derive(Debug, Adaptable)]
pub struct Phi3 {
    /// The backbone.
    pub model: Backbone,
    /// The head.
    pub heads: Heads,
    #[peft(skip)]
    args: Phi3Args,
    #[peft(skip)]
    task: Task,
}

/// transformers' `base_model_prefix` for a task.
pub fn prefix(task: Task) -> Option<&'static str> {
    (task != Task::FeatureExtraction).then_some("model")
}

/// Checkpoint buffers transformers does not load.
pub const IGNORED_SUFFIXES: &[&str] = &["rotary_emb.inv_freq"];

impl Phi3 {
    /// Allocates the model for `task` under the var store root (weights come from a checkpoint).
    ///
    /// # Errors
    /// A task Phi-3 does not have, or a libtorch failure.
    pub fn new(root: &Path<'_>, args: Phi3Args, task: Task, num_labels: i64) -> Result<Self> {
        if !TASKS.contains(&task) {
            return Err(crate::unsupported_task("phi3", task, TASKS));
        }
        let base = match prefix(task) {
            Some(p) => root / p,
            None => root.clone(),
        };
        let a = &args;
        let h = a.hidden_size;
        let (nh, nkv, hd) = (a.num_attention_heads, a.num_key_value_heads, a.head_dim);
        let embed_tokens = layers::embedding(&base / "embed_tokens", a.vocab_size, h)?;
        let layers = (0..a.num_hidden_layers)
            .map(|i| {
                let p = &base / "layers" / i;
                let sa = &p / "self_attn";
                let mp = &p / "mlp";
                Ok(Layer {
                    self_attn: Attention {
                        qkv_proj: layers::linear(&sa / "qkv_proj", h, (nh + 2 * nkv) * hd, false)?,
                        o_proj: layers::linear(&sa / "o_proj", nh * hd, h, false)?,
                        heads: (nh, nkv, hd),
                    },
                    mlp: Mlp {
                        gate_up_proj: layers::linear(
                            &mp / "gate_up_proj",
                            h,
                            2 * a.intermediate_size,
                            false,
                        )?,
                        down_proj: layers::linear(&mp / "down_proj", a.intermediate_size, h, false)?,
                        act: a.hidden_act,
                    },
                    input_layernorm: RmsNorm::new(&p / "input_layernorm", h, a.rms_norm_eps)?,
                    post_attention_layernorm: RmsNorm::new(
                        &p / "post_attention_layernorm",
                        h,
                        a.rms_norm_eps,
                    )?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let norm = RmsNorm::new(&base / "norm", h, a.rms_norm_eps)?;
        let rotary = Rotary::new(&a.rope, root.device())?;
        // Phi-3 has no question-answering head in transformers (its tasks are checked on load).
        let dims = DecoderHeadDims { hidden: h, vocab: a.vocab_size, num_labels, token_cls_bias: true };
        let tied = a.tie_word_embeddings.then(|| &embed_tokens.base().weight);
        let heads = Heads::decoder(root, task, dims, tied)?;
        Ok(Self { model: Backbone { embed_tokens, layers, norm, rotary }, heads, args, task })
    }

    /// The hyper-parameters.
    pub fn args(&self) -> &Phi3Args {
        &self.args
    }

    /// Token ids below `vocab_size`; rotary positions have no table to overflow.
    pub fn input_limits(&self) -> crate::InputLimits {
        crate::InputLimits { vocab_size: self.args.vocab_size, max_positions: None, type_vocab_size: None }
    }

    /// PEFT's `replicate_layers` on `model.layers`.
    pub fn replicate_blocks(&mut self, map: &[(usize, usize)]) -> peft_core::Result<()> {
        self.model.layers = crate::replicate(&self.model.layers, map, Layer::replicate)?;
        Ok(())
    }
}

impl DecoderModel for Phi3 {
    /// The backbone's final hidden states `(B, T, hidden)`; appends to `cache` when given.
    fn hidden_states(
        &self,
        input_ids: &Tensor,
        prefix: Option<&Tensor>,
        attention_mask: Option<&Tensor>,
        position_ids: Option<&Tensor>,
        mut cache: Option<&mut KvCache>,
        ctx: &ForwardCtx<'_>,
    ) -> Tensor {
        let b = input_ids.size()[0];
        let past = cache.as_ref().map_or(0, |c| c.len());
        let mut h = self.model.embed_tokens.forward_ctx(input_ids, ctx);
        if let Some(p) = prefix {
            h = Tensor::cat(&[p.to_kind(h.kind()), h], 1);
        }
        let (t, kind) = (h.size()[1], h.kind());
        let positions = match position_ids {
            Some(p) => p.shallow_clone(),
            None => default_positions(past, b, t, h.device()),
        };
        let (cos, sin) = self.model.rotary.cos_sin(&positions, kind);
        let sin = layers::signed_sin(&sin);
        let window = self.args.sliding_window;
        let mask = causal_mask_or_none(attention_mask, b, t, past, window, kind, h.device());
        let p = self.args.resid_pdrop;
        for (i, layer) in self.model.layers.iter().enumerate() {
            let layer_cache = cache.as_deref_mut().and_then(|c| c.layers.get_mut(i));
            let x = layer.input_layernorm.forward(&h);
            let x = layer.self_attn.forward(&x, &cos, &sin, mask.as_ref(), layer_cache, ctx);
            h = h + dropout(&x, p, ctx);
            let x = layer.post_attention_layernorm.forward(&h);
            let x = layer.mlp.forward(&x, ctx);
            h = h + dropout(&x, p, ctx);
        }
        self.model.norm.forward(&h)
    }

    fn heads(&self) -> &Heads {
        &self.heads
    }

    fn task(&self) -> Task {
        self.task
    }

    fn pad_token_id(&self) -> Option<i64> {
        self.args.pad_token_id
    }

    fn num_layers(&self) -> usize {
        self.model.layers.len()
    }
}

/// Rotates the first `cos.size(-1)` dimensions of `(B, H, T, D)` heads and passes the rest through.
fn rotate_partial(x: &Tensor, cos: &Tensor, signed_sin: &Tensor) -> Tensor {
    let (d, rd) = (x.size()[3], cos.size()[2]);
    if rd == d {
        return layers::apply_rotary_signed(x, cos, signed_sin);
    }
    let rotated = layers::apply_rotary_signed(&x.narrow(-1, 0, rd), cos, signed_sin);
    Tensor::cat(&[rotated, x.narrow(-1, rd, d - rd)], -1)
}

impl Attention {
    fn forward(
        &self,
        x: &Tensor,
        cos: &Tensor,
        signed_sin: &Tensor,
        mask: Option<&Tensor>,
        cache: Option<&mut LayerCache>,
        ctx: &ForwardCtx<'_>,
    ) -> Tensor {
        let (nh, nkv, hd) = self.heads;
        let qkv = self.qkv_proj.forward_ctx(x, ctx);
        let q = split_heads(&qkv.narrow(-1, 0, nh * hd), nh, hd);
        let k = split_heads(&qkv.narrow(-1, nh * hd, nkv * hd), nkv, hd);
        let v = split_heads(&qkv.narrow(-1, (nh + nkv) * hd, nkv * hd), nkv, hd);
        let q = rotate_partial(&q, cos, signed_sin);
        let k = rotate_partial(&k, cos, signed_sin);
        let (k, v) = LayerCache::update_opt(cache, k, v);
        let o = attend_causal(&q, &k, &v, mask, (hd as f64).powf(-0.5));
        self.o_proj.forward_ctx(&merge_heads(&o), ctx)
    }
}

impl Mlp {
    fn forward(&self, x: &Tensor, ctx: &ForwardCtx<'_>) -> Tensor {
        let gate_up = self.gate_up_proj.forward_ctx(x, ctx);
        let n = gate_up.size()[gate_up.dim() - 1] / 2;
        let up = gate_up.narrow(-1, n, n) * self.act.forward(&gate_up.narrow(-1, 0, n));
        self.down_proj.forward_ctx(&up, ctx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(json: &str) -> HfConfig {
        HfConfig::from_str(json, "config.json".into()).unwrap_or_else(|e| unreachable!("{e}"))
    }

    #[test]
    fn longrope_reads_factors_and_the_paper_scale() {
        let c = config(
            r#"{"model_type": "phi3", "hidden_size": 64, "num_attention_heads": 4, "max_position_embeddings": 64,
                "original_max_position_embeddings": 16, "partial_rotary_factor": 0.5,
                "rope_scaling": {"type": "su", "short_factor": [1, 2, 3, 4], "long_factor": [5, 6, 7, 8]}}"#,
        );
        let a = Phi3Args::from_config(&c).unwrap_or_else(|e| unreachable!("{e}"));
        assert_eq!(a.rope.rotary_dim, 8);
        assert_eq!(a.rope.original_max_position_embeddings, 16);
        let want = (1.0 + 4f64.ln() / 16f64.ln()).sqrt();
        assert!((a.rope.attention_factor - want).abs() < 1e-12);
        assert_eq!(a.rope.factors.as_ref().map(|f| f.1[3]), Some(8.0));
        assert_eq!(a.pad_token_id, Some(32000), "Phi3Config's default pad token");
    }

    #[test]
    fn bad_rope_settings_name_the_key() {
        let short = r#"{"model_type": "phi3", "hidden_size": 64, "num_attention_heads": 4,
            "rope_parameters": {"rope_type": "longrope", "short_factor": [1], "long_factor": [1]}}"#;
        let err = Phi3Args::from_config(&config(short)).map(|_| ()).unwrap_err().to_string();
        assert!(err.contains("short_factor") && err.contains("need 8"), "{err}");
        let dynamic = r#"{"model_type": "phi3", "rope_parameters": {"rope_type": "dynamic", "factor": 2.0}}"#;
        let err = Phi3Args::from_config(&config(dynamic)).map(|_| ()).unwrap_err().to_string();
        assert!(err.contains("dynamic") && err.contains("config.json"), "{err}");
    }
}
