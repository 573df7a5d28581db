//! Gemma 2 (`gemma2`) and Gemma 3's text model (`gemma3_text`, `Gemma3ForCausalLM`).
//!
//! Both are Llama-shaped decoders (same parameter names under `model.`) with Gemma's changes, computed
//! as transformers 5.24 computes them:
//!
//! * the token embedding is multiplied by `sqrt(hidden_size)`, rounded to the embedding's dtype first;
//! * every RMSNorm scales by `1 + weight`, all in float32, and casts back afterwards;
//! * each layer normalises before *and after* attention and the MLP (`pre_feedforward_layernorm`,
//!   `post_feedforward_layernorm`), the MLP is gated GELU-tanh;
//! * scores are scaled by `query_pre_attn_scalar^-1/2`, not `head_dim^-1/2`;
//! * layers alternate sliding-window and full attention (`layer_types`);
//! * Gemma 2 soft-caps attention scores (`attn_logit_softcapping`, eager attention) and both soft-cap the
//!   causal LM's logits (`final_logit_softcapping`): `cap · tanh(x / cap)`;
//! * Gemma 3 adds `q_norm` / `k_norm` on each head before RoPE, and gives sliding layers their own RoPE
//!   (`rope_local_base_freq`, never scaled) while `rope_scaling` applies to the full-attention layers. Its
//!   attention ignores `attn_logit_softcapping` (transformers 5.24 does not pass it on).

use crate::attention::{
    attend_causal, attend_softcapped, causal_mask, causal_mask_or_none, merge_heads, split_heads, KvCache,
    LayerCache,
};
use crate::config::HfConfig;
use crate::error::{ModelError, Result};
use crate::layers::{self, Activation, RopeParameters, Rotary};
use crate::task::{decoder_head, default_positions, DecoderHeadDims, DecoderModel, Heads, Task};
use peft_core::nn::{EmbeddingBase, Linear};
use peft_core::{Adaptable, AdaptedLayer, ForwardCtx};
use serde_json::Value;
use tch::nn::Path;
use tch::{Kind, Tensor};

/// The model types this module implements.
pub const MODEL_TYPES: &[&str] = &["gemma2", "gemma3_text"];

/// The hyper-parameters, read from `config.json` with transformers' defaults.
#[derive(Clone, Debug)]
pub struct GemmaArgs {
    /// `model_type` (`gemma2` or `gemma3_text`).
    pub model_type: String,
    /// Vocabulary size.
    pub vocab_size: i64,
    /// Hidden size.
    pub hidden_size: i64,
    /// MLP size.
    pub intermediate_size: i64,
    /// Layers.
    pub num_hidden_layers: i64,
    /// Query heads.
    pub num_attention_heads: i64,
    /// Key/value heads.
    pub num_key_value_heads: i64,
    /// Per-head size (256 unless given: not `hidden_size / heads`).
    pub head_dim: i64,
    /// MLP activation (`hidden_activation`).
    pub hidden_activation: Activation,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// Bias on q/k/v/o.
    pub attention_bias: bool,
    /// Scores are scaled by `query_pre_attn_scalar^-0.5`.
    pub query_pre_attn_scalar: f64,
    /// Attention score soft-capping (Gemma 2 only).
    pub attn_logit_softcapping: Option<f64>,
    /// Causal LM logit soft-capping.
    pub final_logit_softcapping: Option<f64>,
    /// Sliding window of the sliding layers, per layer (`None` = full attention).
    pub sliding_window: Vec<Option<i64>>,
    /// RoPE of the full-attention layers.
    pub rope_global: RopeParameters,
    /// RoPE of the sliding layers (Gemma 3); `None`: the same as the global one.
    pub rope_local: Option<RopeParameters>,
    /// `q_norm` / `k_norm` (Gemma 3).
    pub qk_norm: bool,
    /// `lm_head` shares `embed_tokens`.
    pub tie_word_embeddings: bool,
    /// Bias of the token classification `score`.
    pub token_classification_bias: bool,
    /// Padding token (also the embedding's `padding_idx`).
    pub pad_token_id: Option<i64>,
}

fn config_error(c: &HfConfig, message: String) -> ModelError {
    ModelError::Config { path: c.path().to_path_buf(), message }
}

/// One RoPE parameter dict (`{"rope_type": …, "rope_theta": …, "factor": …}`) as [`RopeParameters`].
fn rope_from_object(c: &HfConfig, what: &str, p: &serde_json::Map<String, Value>) -> Result<RopeParameters> {
    let num = |k: &str| p.get(k).and_then(Value::as_f64);
    let rope_type = p.get("rope_type").or_else(|| p.get("type")).and_then(Value::as_str).unwrap_or("default");
    let theta =
        num("rope_theta").ok_or_else(|| config_error(c, format!("`{what}` has no numeric `rope_theta`")))?;
    let need = |k: &str| {
        num(k).ok_or_else(|| config_error(c, format!("`{what}`: rope type {rope_type:?} needs `{k}`")))
    };
    let mut r = RopeParameters {
        rope_type: rope_type.to_string(),
        theta,
        factor: 1.0,
        low_freq_factor: 1.0,
        high_freq_factor: 4.0,
        original_max_position_embeddings: 8192.0,
    };
    match rope_type {
        "default" => {}
        "linear" => r.factor = need("factor")?,
        "llama3" => {
            r.factor = need("factor")?;
            r.low_freq_factor = need("low_freq_factor")?;
            r.high_freq_factor = need("high_freq_factor")?;
            // transformers' standardize_rope_params fills it from max_position_embeddings.
            r.original_max_position_embeddings = match num("original_max_position_embeddings") {
                Some(v) => v,
                None => c.f64_or("max_position_embeddings", 131_072.0)?,
            };
        }
        other => {
            return Err(config_error(
                c,
                format!("`{what}`: unsupported rope_type {other:?} (supported: default, linear, llama3)"),
            ))
        }
    }
    Ok(r)
}

/// Gemma 3's two RoPEs as `Gemma3TextConfig.convert_rope_params_to_dict` builds them: `rope_parameters`
/// nested by layer type, or the legacy `rope_theta` (global, default 1e6), `rope_local_base_freq` (local,
/// default 1e4) and `rope_scaling` (global only).
fn gemma3_ropes(c: &HfConfig) -> Result<(RopeParameters, RopeParameters)> {
    let raw = c.raw();
    let nested = raw.get("rope_parameters").and_then(Value::as_object);
    let part = |layer_type: &str, theta_key: &str, default_theta: f64| -> Result<RopeParameters> {
        let mut p = nested
            .and_then(|n| n.get(layer_type))
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_else(|| serde_json::Map::from_iter([("rope_type".into(), "default".into())]));
        if layer_type == "full_attention" {
            if let Some(scaling) = raw.get("rope_scaling").and_then(Value::as_object) {
                p.extend(scaling.clone());
            }
        }
        if !p.contains_key("rope_theta") {
            p.insert("rope_theta".into(), c.f64_or(theta_key, default_theta)?.into());
        }
        rope_from_object(c, &format!("rope_parameters.{layer_type}"), &p)
    };
    Ok((part("full_attention", "rope_theta", 1e6)?, part("sliding_attention", "rope_local_base_freq", 1e4)?))
}

impl GemmaArgs {
    /// Reads the config.
    ///
    /// # Errors
    /// Wrongly typed values, an unsupported activation or RoPE type, bidirectional attention, or
    /// `layer_types` naming something other than `sliding_attention` / `full_attention`.
    pub fn from_config(c: &HfConfig) -> Result<Self> {
        let model_type = c.model_type()?.to_string();
        let gemma3 = model_type == "gemma3_text";
        let hidden_size = c.size_or("hidden_size", 2304)?;
        let num_attention_heads = c.size_or("num_attention_heads", 8)?;
        let num_hidden_layers = c.layers_or("num_hidden_layers", 26)?;
        let num_key_value_heads = c.size_or("num_key_value_heads", 4)?;
        c.check_multiple(
            "num_attention_heads",
            num_attention_heads,
            "num_key_value_heads",
            num_key_value_heads,
        )?;
        if c.bool_or("use_bidirectional_attention", false)? {
            return Err(config_error(c, "use_bidirectional_attention is not supported".into()));
        }
        let layer_types: Vec<bool> = match c.raw().get("layer_types").filter(|v| !v.is_null()) {
            Some(v) => {
                let types = v
                    .as_array()
                    .ok_or_else(|| config_error(c, format!("`layer_types` should be a list, found {v}")))?;
                if types.len() as i64 != num_hidden_layers {
                    return Err(config_error(
                        c,
                        format!("`layer_types` has {} entries for {num_hidden_layers} layers", types.len()),
                    ));
                }
                types
                    .iter()
                    .map(|t| match t.as_str() {
                        Some("sliding_attention") => Ok(true),
                        Some("full_attention") => Ok(false),
                        _ => Err(config_error(c, format!("unsupported layer type {t} in `layer_types`"))),
                    })
                    .collect::<Result<_>>()?
            }
            None => {
                // Gemma 2 alternates (sliding first); Gemma 3 makes every `sliding_window_pattern`-th full.
                let pattern = if gemma3 { c.size_or("sliding_window_pattern", 6)? } else { 2 };
                (0..num_hidden_layers).map(|i| (i + 1) % pattern != 0).collect()
            }
        };
        let window = match c.raw().get("sliding_window") {
            None => Some(4096),
            Some(_) => c.opt_size("sliding_window")?,
        };
        let sliding_window = layer_types.iter().map(|&s| window.filter(|_| s)).collect();
        let (rope_global, rope_local) = if gemma3 {
            let (g, l) = gemma3_ropes(c)?;
            (g, Some(l))
        } else {
            (RopeParameters::from_config(c)?, None)
        };
        let softcap = |key: &str, default: Option<f64>| -> Result<Option<f64>> {
            Ok(match c.raw().get(key) {
                None => default,
                Some(_) => c.opt_f64(key)?,
            })
        };
        Ok(Self {
            vocab_size: c.size_or("vocab_size", if gemma3 { 262_208 } else { 256_000 })?,
            hidden_size,
            intermediate_size: c.size_or("intermediate_size", 9216)?,
            num_hidden_layers,
            num_attention_heads,
            num_key_value_heads,
            head_dim: c.size_or("head_dim", 256)?,
            hidden_activation: Activation::from_name(c.str_or("hidden_activation", "gelu_pytorch_tanh")?)?,
            rms_norm_eps: c.f64_or("rms_norm_eps", 1e-6)?,
            attention_bias: c.bool_or("attention_bias", false)?,
            query_pre_attn_scalar: c.f64_or("query_pre_attn_scalar", 256.0)?,
            attn_logit_softcapping: if gemma3 {
                None
            } else {
                softcap("attn_logit_softcapping", Some(50.0))?
            },
            final_logit_softcapping: softcap("final_logit_softcapping", (!gemma3).then_some(30.0))?,
            sliding_window,
            rope_global,
            rope_local,
            qk_norm: gemma3,
            tie_word_embeddings: c.bool_or("tie_word_embeddings", true)?,
            token_classification_bias: c.bool_or("token_classification_bias", true)?,
            pad_token_id: match c.raw().get("pad_token_id") {
                None => Some(0),
                Some(_) => c.opt_i64("pad_token_id")?,
            },
            model_type,
        })
    }

    /// The tasks transformers has for this model type.
    pub fn tasks(&self) -> &'static [Task] {
        if self.model_type == "gemma3_text" {
            &[Task::CausalLm, Task::SequenceClassification, Task::FeatureExtraction]
        } else {
            &[
                Task::CausalLm,
                Task::SequenceClassification,
                Task::TokenClassification,
                Task::FeatureExtraction,
            ]
        }
    }
}

/// Gemma's RMSNorm: `(x / sqrt(mean(x²) + eps)) · (1 + weight)`, all in float32, cast back at the end
/// (Llama casts before scaling; Gemma after).
#[derive(Debug)]
pub struct GemmaRmsNorm {
    /// The offset scale (`0` is the identity).
    pub weight: Tensor,
    eps: f64,
}

impl GemmaRmsNorm {
    fn new(p: Path<'_>, dim: i64, eps: f64) -> Result<Self> {
        let w = Tensor::f_zeros([dim], (p.kind(), p.device()))
            .map_err(ModelError::torch("allocating a norm weight"))?;
        Ok(Self { weight: p.add("weight", w, true), eps })
    }

    /// The norm over the last dimension.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let h = x.to_kind(Kind::Float);
        let var = h.pow_tensor_scalar(2).mean_dim(-1, true, None::<Kind>);
        let h = &h * (var + self.eps).rsqrt();
        (h * (self.weight.to_kind(Kind::Float) + 1.0)).to_kind(x.kind())
    }
}

/// `cap · tanh(x / cap)`.
fn softcap(x: Tensor, cap: Option<f64>) -> Tensor {
    match cap {
        Some(c) => (x / c).tanh() * c,
        None => x,
    }
}

/// `self_attn`.
#[derive(Debug, Adaptable)]
pub struct Attention {
    /// Query projection.
    pub q_proj: Linear,
    /// Key projection.
    pub k_proj: Linear,
    /// Value projection.
    pub v_proj: Linear,
    /// Output projection.
    pub o_proj: Linear,
    #[peft(skip)]
    q_norm: Option<GemmaRmsNorm>,
    #[peft(skip)]
    k_norm: Option<GemmaRmsNorm>,
    #[peft(skip)]
    heads: (i64, i64, i64),
    #[peft(skip)]
    sliding_window: Option<i64>,
}

/// `mlp`.
#[derive(Debug, Adaptable)]
pub struct Mlp {
    /// Gate projection.
    pub gate_proj: Linear,
    /// Up projection.
    pub up_proj: Linear,
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
    norms: [GemmaRmsNorm; 4],
}

/// The backbone (`Gemma2Model` / `Gemma3TextModel`).
#[derive(Debug, Adaptable)]
pub struct Backbone {
    embed_tokens: peft_core::nn::Embedding,
    /// The layers.
    pub layers: Vec<Layer>,
    #[peft(skip)]
    norm: GemmaRmsNorm,
    #[peft(skip)]
    rotary_global: Rotary,
    #[peft(skip)]
    rotary_local: Option<Rotary>,
}

/// A Gemma 2 / Gemma 3 text model with its task head.
#[derive(Debug, Adaptable)]
pub struct Gemma {
    /// The backbone.
    pub model: Backbone,
    /// The head.
    pub heads: Heads,
    #[peft(skip)]
    args: GemmaArgs,
    #[peft(skip)]
    task: Task,
}

/// transformers' `base_model_prefix` for a task.
pub fn prefix(task: Task) -> Option<&'static str> {
    match task {
        Task::FeatureExtraction => None,
        _ => Some("model"),
    }
}

/// Checkpoint buffers transformers does not load.
pub const IGNORED_SUFFIXES: &[&str] = &["rotary_emb.inv_freq", "embed_tokens.embed_scale"];

impl Gemma {
    /// Allocates the model for `task` under the var store root (weights come from a checkpoint).
    ///
    /// # Errors
    /// A task transformers does not have for this model type, or a libtorch failure.
    pub fn new(root: &Path<'_>, args: GemmaArgs, task: Task, num_labels: i64) -> Result<Self> {
        if !args.tasks().contains(&task) {
            return Err(crate::unsupported_task(&args.model_type, task, args.tasks()));
        }
        let base = match prefix(task) {
            Some(p) => root / p,
            None => root.clone(),
        };
        let (h, a) = (args.hidden_size, &args);
        let eps = a.rms_norm_eps;
        let cfg = peft_core::nn::EmbeddingConfig { padding_idx: a.pad_token_id, init: false };
        let plain = peft_core::nn::embedding(&base / "embed_tokens", a.vocab_size, h, cfg)?;
        // `hidden_size**0.5` is a Python float held in a float32 buffer, then cast to the weight's dtype.
        let scale = (h as f64).sqrt() as f32 as f64;
        let embed_tokens = AdaptedLayer::new(
            plain.name(),
            EmbeddingBase {
                weight: plain.base().weight.shallow_clone(),
                padding_idx: plain.base().padding_idx,
                embed_scale: Some(scale),
            },
        );
        let layers = (0..a.num_hidden_layers)
            .map(|i| {
                let p = &base / "layers" / i;
                let sa = &p / "self_attn";
                let mp = &p / "mlp";
                let (nh, nkv, hd) = (a.num_attention_heads, a.num_key_value_heads, a.head_dim);
                let bias = a.attention_bias;
                let qk_norm = |name: &str| -> Result<Option<GemmaRmsNorm>> {
                    a.qk_norm.then(|| GemmaRmsNorm::new(&sa / name, hd, eps)).transpose()
                };
                let norm = |name: &str| GemmaRmsNorm::new(&p / name, h, eps);
                Ok(Layer {
                    self_attn: Attention {
                        q_proj: layers::linear(&sa / "q_proj", h, nh * hd, bias)?,
                        k_proj: layers::linear(&sa / "k_proj", h, nkv * hd, bias)?,
                        v_proj: layers::linear(&sa / "v_proj", h, nkv * hd, bias)?,
                        o_proj: layers::linear(&sa / "o_proj", nh * hd, h, bias)?,
                        q_norm: qk_norm("q_norm")?,
                        k_norm: qk_norm("k_norm")?,
                        heads: (nh, nkv, hd),
                        sliding_window: a.sliding_window.get(i as usize).copied().flatten(),
                    },
                    mlp: Mlp {
                        gate_proj: layers::linear(&mp / "gate_proj", h, a.intermediate_size, false)?,
                        up_proj: layers::linear(&mp / "up_proj", h, a.intermediate_size, false)?,
                        down_proj: layers::linear(&mp / "down_proj", a.intermediate_size, h, false)?,
                        act: a.hidden_activation,
                    },
                    norms: [
                        norm("input_layernorm")?,
                        norm("post_attention_layernorm")?,
                        norm("pre_feedforward_layernorm")?,
                        norm("post_feedforward_layernorm")?,
                    ],
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let norm = GemmaRmsNorm::new(&base / "norm", h, eps)?;
        let rotary_global = Rotary::new(&a.rope_global, a.head_dim, root.device())?;
        let rotary_local =
            a.rope_local.as_ref().map(|r| Rotary::new(r, a.head_dim, root.device())).transpose()?;
        let token_cls_bias = a.token_classification_bias;
        let dims = DecoderHeadDims { hidden: h, vocab: a.vocab_size, num_labels, token_cls_bias };
        let tied = a.tie_word_embeddings.then(|| &embed_tokens.base().weight);
        let heads = Heads::decoder(root, task, dims, tied)?;
        let model = Backbone { embed_tokens, layers, norm, rotary_global, rotary_local };
        Ok(Self { model, heads, args, task })
    }

    /// The hyper-parameters.
    pub fn args(&self) -> &GemmaArgs {
        &self.args
    }

    /// Token ids below `vocab_size`; rotary positions have no table to overflow.
    pub fn input_limits(&self) -> crate::InputLimits {
        crate::InputLimits { vocab_size: self.args.vocab_size, max_positions: None, type_vocab_size: None }
    }

    /// PEFT's `replicate_layers` would copy the layers, but transformers then picks each copy's mask
    /// by its new index in `config.layer_types` (an index error past the original count): refused.
    ///
    /// # Errors
    /// Always.
    pub fn replicate_blocks(&mut self, _map: &[(usize, usize)]) -> peft_core::Result<()> {
        Err(peft_core::PeftError::Invalid(format!(
            "layer_replication is not supported for {}: transformers selects each layer's sliding or full \
             attention by its index in config.layer_types, which replication does not extend",
            self.args.model_type
        )))
    }

    fn softcapped(&self, out: Tensor) -> Tensor {
        match self.task {
            Task::CausalLm => softcap(out, self.args.final_logit_softcapping),
            _ => out,
        }
    }
}

impl DecoderModel for Gemma {
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
        let (t, kind, dev) = (h.size()[1], h.kind(), h.device());
        let positions = match position_ids {
            Some(p) => p.shallow_clone(),
            None => default_positions(past, b, t, dev),
        };
        let rope = |r: &Rotary| {
            let (cos, sin) = r.cos_sin(&positions, kind);
            (cos, layers::signed_sin(&sin))
        };
        let global = rope(&self.model.rotary_global);
        let local = self.model.rotary_local.as_ref().map(rope);
        // Eager attention (soft-capping) adds an explicit mask even where is_causal would do.
        let eager = self.args.attn_logit_softcapping.is_some();
        let make_mask = |w: Option<i64>| match eager {
            true => Some(causal_mask(attention_mask, b, t, past, w, kind, dev)),
            false => causal_mask_or_none(attention_mask, b, t, past, w, kind, dev),
        };
        let full = make_mask(None);
        let mut sliding: Option<Option<Tensor>> = None;
        for (i, layer) in self.model.layers.iter().enumerate() {
            let window = layer.self_attn.sliding_window;
            let mask = match window {
                Some(w) => sliding.get_or_insert_with(|| make_mask(Some(w))).as_ref(),
                None => full.as_ref(),
            };
            let (cos, sin) = match (window, &local) {
                (Some(_), Some(l)) => l,
                _ => &global,
            };
            let layer_cache = cache.as_deref_mut().and_then(|c| c.layers.get_mut(i));
            let [input_ln, post_attn_ln, pre_ff_ln, post_ff_ln] = &layer.norms;
            let x =
                layer.self_attn.forward(&input_ln.forward(&h), cos, sin, mask, layer_cache, &self.args, ctx);
            h = h + post_attn_ln.forward(&x);
            let x = layer.mlp.forward(&pre_ff_ln.forward(&h), ctx);
            h = h + post_ff_ln.forward(&x);
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

    /// The task output, with the causal LM's logits soft-capped.
    fn forward(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        position_ids: Option<&Tensor>,
        cache: Option<&mut KvCache>,
        ctx: &ForwardCtx<'_>,
    ) -> Result<Tensor> {
        let h = self.hidden_states(input_ids, None, attention_mask, position_ids, cache, ctx);
        let out = decoder_head(&self.heads, self.task, &h, input_ids, self.args.pad_token_id, ctx)?;
        Ok(self.softcapped(out))
    }

    /// [`DecoderModel::forward_prompted`] with the causal LM's logits soft-capped.
    fn forward_prompted(
        &self,
        input_ids: &Tensor,
        prefix: &Tensor,
        attention_mask: Option<&Tensor>,
        cache: Option<&mut KvCache>,
        ctx: &ForwardCtx<'_>,
    ) -> Result<Tensor> {
        let h = self.hidden_states(input_ids, Some(prefix), attention_mask, None, cache, ctx);
        let out = match self.task {
            Task::SequenceClassification => {
                let score =
                    self.heads.score.as_ref().ok_or_else(|| ModelError::Input("no `score` head".into()))?;
                score.forward_ctx(&h, ctx).select(1, -1)
            }
            task => decoder_head(&self.heads, task, &h, input_ids, None, ctx)?,
        };
        Ok(self.softcapped(out))
    }
}

impl Attention {
    #[allow(clippy::too_many_arguments)]
    fn forward(
        &self,
        x: &Tensor,
        cos: &Tensor,
        signed_sin: &Tensor,
        mask: Option<&Tensor>,
        cache: Option<&mut LayerCache>,
        args: &GemmaArgs,
        ctx: &ForwardCtx<'_>,
    ) -> Tensor {
        let (nh, nkv, hd) = self.heads;
        let mut q = split_heads(&self.q_proj.forward_ctx(x, ctx), nh, hd);
        let mut k = split_heads(&self.k_proj.forward_ctx(x, ctx), nkv, hd);
        let v = split_heads(&self.v_proj.forward_ctx(x, ctx), nkv, hd);
        if let (Some(qn), Some(kn)) = (&self.q_norm, &self.k_norm) {
            q = qn.forward(&q);
            k = kn.forward(&k);
        }
        let q = layers::apply_rotary_signed(&q, cos, signed_sin);
        let k = layers::apply_rotary_signed(&k, cos, signed_sin);
        let (k, v) = LayerCache::update_opt(cache, k, v);
        let scale = args.query_pre_attn_scalar.powf(-0.5);
        let o = match (args.attn_logit_softcapping, mask) {
            (Some(cap), Some(m)) => attend_softcapped(&q, &k, &v, m, scale, cap),
            _ => attend_causal(&q, &k, &v, mask, scale),
        };
        self.o_proj.forward_ctx(&merge_heads(&o), ctx)
    }
}

impl Mlp {
    fn forward(&self, x: &Tensor, ctx: &ForwardCtx<'_>) -> Tensor {
        let gate = self.act.forward(&self.gate_proj.forward_ctx(x, ctx));
        self.down_proj.forward_ctx(&(gate * self.up_proj.forward_ctx(x, ctx)), ctx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(json: &str) -> Result<GemmaArgs> {
        GemmaArgs::from_config(&HfConfig::from_str(json, "config.json".into())?)
    }

    /// The values `Gemma3TextConfig(num_hidden_layers=7, rope_theta=1e6, rope_local_base_freq=1e4,
    /// rope_scaling={"rope_type": "linear", "factor": 8.0}, sliding_window_pattern=3)` holds in
    /// transformers 5.24: layer_types S S F S S F S, linear RoPE on the full layers only.
    #[test]
    fn gemma3_legacy_config_reads_as_transformers_converts_it() {
        let a = args(
            r#"{"model_type": "gemma3_text", "num_hidden_layers": 7, "rope_theta": 1e6,
                "rope_local_base_freq": 1e4, "rope_scaling": {"rope_type": "linear", "factor": 8.0},
                "sliding_window_pattern": 3}"#,
        )
        .unwrap();
        let sliding: Vec<bool> = a.sliding_window.iter().map(Option::is_some).collect();
        assert_eq!(sliding, [true, true, false, true, true, false, true]);
        assert_eq!(
            (a.rope_global.rope_type.as_str(), a.rope_global.factor, a.rope_global.theta),
            ("linear", 8.0, 1e6)
        );
        let local = a.rope_local.unwrap();
        assert_eq!((local.rope_type.as_str(), local.theta), ("default", 1e4));
        assert_eq!((a.attn_logit_softcapping, a.final_logit_softcapping, a.head_dim), (None, None, 256));
    }

    #[test]
    fn gemma2_defaults_alternate_and_softcap() {
        let a = args(r#"{"model_type": "gemma2", "num_hidden_layers": 3}"#).unwrap();
        assert_eq!(a.sliding_window, [Some(4096), None, Some(4096)]);
        assert_eq!((a.attn_logit_softcapping, a.final_logit_softcapping), (Some(50.0), Some(30.0)));
        assert_eq!((a.rope_global.theta, a.pad_token_id, a.tie_word_embeddings), (10000.0, Some(0), true));
    }

    #[test]
    fn bad_layer_types_and_bidirectional_attention_are_refused() {
        let e =
            args(r#"{"model_type": "gemma2", "num_hidden_layers": 1, "layer_types": ["chunked_attention"]}"#);
        assert!(e.unwrap_err().to_string().contains("chunked_attention"));
        let e =
            args(r#"{"model_type": "gemma2", "num_hidden_layers": 2, "layer_types": ["full_attention"]}"#);
        assert!(e.unwrap_err().to_string().contains("1 entries for 2 layers"));
        let e = args(r#"{"model_type": "gemma3_text", "use_bidirectional_attention": true}"#);
        assert!(e.unwrap_err().to_string().contains("use_bidirectional_attention"));
    }
}
