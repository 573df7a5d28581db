//! The Llama family: Llama (with llama3 RoPE scaling), Mistral (sliding window), Qwen2 (q/k/v bias),
//! Qwen3 (per-head RMSNorm `q_norm` / `k_norm` on queries and keys before RoPE).
//!
//! Parameter names equal transformers' (`model.layers.0.self_attn.q_proj.weight`, …), so checkpoints load
//! as they are and PEFT's module names line up. Attention is grouped-query (`num_key_value_heads`).

use crate::attention::{attend_causal, causal_mask_or_none, merge_heads, split_heads, KvCache, LayerCache};
use crate::config::HfConfig;
use crate::error::Result;
use crate::layers::{self, Activation, RmsNorm, RopeParameters, Rotary};
use crate::task::{default_positions, DecoderHeadDims, DecoderModel, Heads, Task};
use peft_core::nn::Linear;
use peft_core::{Adaptable, ForwardCtx};
use tch::nn::Path;
use tch::Tensor;

/// The model types this module implements.
pub const MODEL_TYPES: &[&str] = &["llama", "mistral", "qwen2", "qwen3"];

/// The hyper-parameters, read from `config.json` with transformers' defaults.
#[derive(Clone, Debug)]
pub struct LlamaArgs {
    /// `model_type`.
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
    /// Per-head size.
    pub head_dim: i64,
    /// MLP activation.
    pub hidden_act: Activation,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// RoPE.
    pub rope: RopeParameters,
    /// Bias on q/k/v.
    pub qkv_bias: bool,
    /// Bias on o_proj.
    pub o_bias: bool,
    /// Bias on the MLP.
    pub mlp_bias: bool,
    /// `lm_head` shares `embed_tokens`.
    pub tie_word_embeddings: bool,
    /// Sliding-window size per layer (`None` = full attention).
    pub sliding_window: Vec<Option<i64>>,
    /// Qwen3's per-head RMSNorm on queries and keys (`self_attn.q_norm` / `k_norm`, over `head_dim`).
    pub qk_norm: bool,
    /// Padding token.
    pub pad_token_id: Option<i64>,
}

impl LlamaArgs {
    /// Reads the config.
    ///
    /// # Errors
    /// Wrongly typed values, unsupported activation or RoPE type.
    pub fn from_config(c: &HfConfig) -> Result<Self> {
        let model_type = c.model_type()?.to_string();
        let qwen3 = model_type == "qwen3";
        let (d_vocab, d_hidden, d_inter, d_kv) = match model_type.as_str() {
            "mistral" => (32000, 4096, 14336, Some(8)),
            "qwen2" => (151936, 4096, 22016, None),
            // Qwen3Config's default is 32 key/value heads, whatever `num_attention_heads` says.
            "qwen3" => (151936, 4096, 22016, Some(32)),
            _ => (32000, 4096, 11008, None),
        };
        let hidden_size = c.size_or("hidden_size", d_hidden)?;
        let num_attention_heads = c.size_or("num_attention_heads", 32)?;
        let num_hidden_layers = c.layers_or("num_hidden_layers", 32)?;
        let num_key_value_heads = c.opt_size("num_key_value_heads")?.or(d_kv).unwrap_or(num_attention_heads);
        c.check_multiple(
            "num_attention_heads",
            num_attention_heads,
            "num_key_value_heads",
            num_key_value_heads,
        )?;
        // transformers' default, computed only when `head_dim` is absent (Qwen3Config's is 128).
        let head_dim = match c.opt_size("head_dim")? {
            Some(d) => d,
            None if qwen3 => 128,
            None => {
                c.check_multiple("hidden_size", hidden_size, "num_attention_heads", num_attention_heads)?;
                hidden_size / num_attention_heads
            }
        };
        let attention_bias = c.bool_or("attention_bias", false)?;
        let (qkv_bias, o_bias) =
            if model_type == "qwen2" { (true, false) } else { (attention_bias, attention_bias) };
        let window = if !qwen3 {
            c.opt_size("sliding_window")?
        } else if c.bool_or("use_sliding_window", false)? {
            // Qwen3Config keeps `sliding_window` (default 4096) only with `use_sliding_window`.
            Some(c.opt_size("sliding_window")?.unwrap_or(4096))
        } else {
            None
        };
        let layer_types: Option<Vec<String>> = c
            .raw()
            .get("layer_types")
            .and_then(|v| v.as_array())
            .map(|a| a.iter().filter_map(|x| x.as_str().map(str::to_string)).collect());
        let sliding_window = (0..num_hidden_layers as usize)
            .map(|i| match (&layer_types, model_type.as_str()) {
                (Some(types), _) => types.get(i).filter(|t| t.as_str() == "sliding_attention").and(window),
                (None, "mistral") => window,
                (None, "qwen3") => {
                    let max_window_layers = c.i64_or("max_window_layers", 28).unwrap_or(28);
                    window.filter(|_| i as i64 >= max_window_layers)
                }
                (None, "qwen2") => {
                    let use_sw = c.bool_or("use_sliding_window", false).unwrap_or(false);
                    let max_window_layers = c.i64_or("max_window_layers", 28).unwrap_or(28);
                    window.filter(|_| use_sw && i as i64 >= max_window_layers)
                }
                _ => None,
            })
            .collect();
        Ok(Self {
            vocab_size: c.size_or("vocab_size", d_vocab)?,
            hidden_size,
            intermediate_size: c.size_or("intermediate_size", d_inter)?,
            num_hidden_layers,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            hidden_act: Activation::from_name(c.str_or("hidden_act", "silu")?)?,
            rms_norm_eps: c.f64_or("rms_norm_eps", 1e-6)?,
            rope: RopeParameters::from_config(c)?,
            qkv_bias,
            o_bias,
            mlp_bias: c.bool_or("mlp_bias", false)?,
            tie_word_embeddings: c.bool_or("tie_word_embeddings", false)?,
            sliding_window,
            qk_norm: qwen3,
            pad_token_id: c.opt_i64("pad_token_id")?,
            model_type,
        })
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
    heads: (i64, i64, i64),
    #[peft(skip)]
    sliding_window: Option<i64>,
    /// Qwen3's `q_norm` and `k_norm`.
    #[peft(skip)]
    qk_norm: Option<(RmsNorm, RmsNorm)>,
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
                q_proj: l(&self.self_attn.q_proj),
                k_proj: l(&self.self_attn.k_proj),
                v_proj: l(&self.self_attn.v_proj),
                o_proj: l(&self.self_attn.o_proj),
                heads: self.self_attn.heads,
                sliding_window: self.self_attn.sliding_window,
                qk_norm: self.self_attn.qk_norm.as_ref().map(|(q, k)| (q.share(), k.share())),
            },
            mlp: Mlp {
                gate_proj: l(&self.mlp.gate_proj),
                up_proj: l(&self.mlp.up_proj),
                down_proj: l(&self.mlp.down_proj),
                act: self.mlp.act,
            },
            input_layernorm: self.input_layernorm.share(),
            post_attention_layernorm: self.post_attention_layernorm.share(),
        }
    }
}

/// The backbone (`LlamaModel`).
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

/// A Llama-family model with its task head.
#[derive(Debug, Adaptable)]
pub struct Llama {
    /// The backbone.
    pub model: Backbone,
    /// The head.
    pub heads: Heads,
    #[peft(skip)]
    args: LlamaArgs,
    #[peft(skip)]
    task: Task,
}

impl Llama {
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

/// transformers' `base_model_prefix` for a task (QA keeps the historical `transformer`).
pub fn prefix(task: Task) -> Option<&'static str> {
    match task {
        Task::FeatureExtraction => None,
        Task::QuestionAnswering => Some("transformer"),
        _ => Some("model"),
    }
}

impl Llama {
    /// Allocates the model for `task` under the var store root (weights come from a checkpoint).
    ///
    /// # Errors
    /// A task Llama models do not have, or a libtorch failure.
    pub fn new(root: &Path<'_>, args: LlamaArgs, task: Task, num_labels: i64) -> Result<Self> {
        let base = match prefix(task) {
            Some(p) => root / p,
            None => root.clone(),
        };
        let (h, a) = (args.hidden_size, &args);
        let embed_tokens = layers::embedding(&base / "embed_tokens", a.vocab_size, h)?;
        let layers = (0..a.num_hidden_layers)
            .map(|i| {
                let p = &base / "layers" / i;
                let sa = &p / "self_attn";
                let mp = &p / "mlp";
                let (nh, nkv, hd) = (a.num_attention_heads, a.num_key_value_heads, a.head_dim);
                Ok(Layer {
                    self_attn: Attention {
                        q_proj: layers::linear(&sa / "q_proj", h, nh * hd, a.qkv_bias)?,
                        k_proj: layers::linear(&sa / "k_proj", h, nkv * hd, a.qkv_bias)?,
                        v_proj: layers::linear(&sa / "v_proj", h, nkv * hd, a.qkv_bias)?,
                        o_proj: layers::linear(&sa / "o_proj", nh * hd, h, a.o_bias)?,
                        heads: (nh, nkv, hd),
                        sliding_window: a.sliding_window.get(i as usize).copied().flatten(),
                        qk_norm: if a.qk_norm {
                            Some((
                                RmsNorm::new(&sa / "q_norm", hd, a.rms_norm_eps)?,
                                RmsNorm::new(&sa / "k_norm", hd, a.rms_norm_eps)?,
                            ))
                        } else {
                            None
                        },
                    },
                    mlp: Mlp {
                        gate_proj: layers::linear(&mp / "gate_proj", h, a.intermediate_size, a.mlp_bias)?,
                        up_proj: layers::linear(&mp / "up_proj", h, a.intermediate_size, a.mlp_bias)?,
                        down_proj: layers::linear(&mp / "down_proj", a.intermediate_size, h, a.mlp_bias)?,
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
        let rotary = Rotary::new(&a.rope, a.head_dim, root.device())?;
        if task == Task::Seq2SeqLm {
            return Err(crate::unsupported_task(&a.model_type, task, TASKS));
        }
        let dims = DecoderHeadDims { hidden: h, vocab: a.vocab_size, num_labels, token_cls_bias: true };
        let tied = a.tie_word_embeddings.then(|| &embed_tokens.base().weight);
        let heads = Heads::decoder(root, task, dims, tied)?;
        Ok(Self { model: Backbone { embed_tokens, layers, norm, rotary }, heads, args, task })
    }

    /// The hyper-parameters.
    pub fn args(&self) -> &LlamaArgs {
        &self.args
    }
}

/// The tasks Llama-family models provide.
pub const TASKS: &[Task] = &[
    Task::CausalLm,
    Task::SequenceClassification,
    Task::TokenClassification,
    Task::QuestionAnswering,
    Task::FeatureExtraction,
];

impl DecoderModel for Llama {
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
        let t = h.size()[1];
        let kind = h.kind();
        let positions = match position_ids {
            Some(p) => p.shallow_clone(),
            None => default_positions(past, b, t, h.device()),
        };
        let (cos, sin) = self.model.rotary.cos_sin(&positions, kind);
        let sin = layers::signed_sin(&sin);
        let full = causal_mask_or_none(attention_mask, b, t, past, None, kind, h.device());
        for (i, layer) in self.model.layers.iter().enumerate() {
            let window = layer.self_attn.sliding_window;
            let mask = match window {
                Some(w) => causal_mask_or_none(attention_mask, b, t, past, Some(w), kind, h.device()),
                None => full.as_ref().map(Tensor::shallow_clone),
            };
            let layer_cache = cache.as_deref_mut().and_then(|c| c.layers.get_mut(i));
            let x = layer.input_layernorm.forward(&h);
            let x = layer.self_attn.forward(&x, &cos, &sin, mask.as_ref(), layer_cache, ctx);
            h = h + x;
            let x = layer.post_attention_layernorm.forward(&h);
            let x = layer.mlp.forward(&x, ctx);
            h = h + x;
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
        let q = split_heads(&self.q_proj.forward_ctx(x, ctx), nh, hd);
        let k = split_heads(&self.k_proj.forward_ctx(x, ctx), nkv, hd);
        let v = split_heads(&self.v_proj.forward_ctx(x, ctx), nkv, hd);
        // The norm is over `head_dim`, the last axis either side of the head transpose.
        let (q, k) = match &self.qk_norm {
            Some((qn, kn)) => (qn.forward(&q), kn.forward(&k)),
            None => (q, k),
        };
        let q = layers::apply_rotary_signed(&q, cos, signed_sin);
        let k = layers::apply_rotary_signed(&k, cos, signed_sin);
        let (k, v) = LayerCache::update_opt(cache, k, v);
        let o = attend_causal(&q, &k, &v, mask, (hd as f64).powf(-0.5));
        self.o_proj.forward_ctx(&merge_heads(&o), ctx)
    }
}

impl Mlp {
    fn forward(&self, x: &Tensor, ctx: &ForwardCtx<'_>) -> Tensor {
        let gate = self.act.forward(&self.gate_proj.forward_ctx(x, ctx));
        self.down_proj.forward_ctx(&(gate * self.up_proj.forward_ctx(x, ctx)), ctx)
    }
}

/// Checkpoint buffers transformers does not load.
pub const IGNORED_SUFFIXES: &[&str] = &["rotary_emb.inv_freq"];
