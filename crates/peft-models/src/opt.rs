//! OPT (`facebook/opt-*`): learned positions offset by 2 and counted over the attention mask, pre- or
//! post-LayerNorm layers (`do_layer_norm_before`), ReLU `fc1`/`fc2`, optional `project_in` /
//! `project_out` when `word_embed_proj_dim != hidden_size` (opt-350m), `lm_head` tied to `embed_tokens`.
//!
//! Parameter names equal transformers' (`model.decoder.layers.0.self_attn.q_proj.weight`, …), so PEFT's
//! default LoRA targets (`q_proj`, `v_proj`) and saved keys line up.

use crate::attention::{attend_causal, attend_dropout, causal_mask, causal_mask_or_none, dropout};
use crate::attention::{merge_heads, split_heads, KvCache, LayerCache};
use crate::config::HfConfig;
use crate::error::Result;
use crate::layers::{self, Activation, LayerNorm};
use crate::task::{DecoderHeadDims, DecoderModel, Heads, Task};
use peft_core::nn::Linear;
use peft_core::{Adaptable, ForwardCtx};
use tch::nn::Path;
use tch::{Kind, Tensor};

/// transformers' `OPTLearnedPositionalEmbedding` offset: position `p` reads row `p + 2`.
pub const POSITION_OFFSET: i64 = 2;

/// The hyper-parameters, read from `config.json` with transformers' defaults.
#[derive(Clone, Debug)]
pub struct OptArgs {
    /// Vocabulary size.
    pub vocab_size: i64,
    /// Hidden size.
    pub hidden_size: i64,
    /// Layers.
    pub num_hidden_layers: i64,
    /// MLP size.
    pub ffn_dim: i64,
    /// Positions (the table has 2 more rows).
    pub max_position_embeddings: i64,
    /// Pre-LayerNorm (125m, 1.3b, …) or post-LayerNorm (350m).
    pub do_layer_norm_before: bool,
    /// No final LayerNorm (checkpoints fine-tuned before transformers 4.20.1).
    pub remove_final_layer_norm: bool,
    /// Width of the token embedding (and of `lm_head`'s input).
    pub word_embed_proj_dim: i64,
    /// Residual dropout (training only).
    pub dropout: f64,
    /// Attention-probability dropout (training only).
    pub attention_dropout: f64,
    /// Heads.
    pub num_attention_heads: i64,
    /// MLP activation.
    pub activation_function: Activation,
    /// Bias on every linear layer of the decoder.
    pub enable_bias: bool,
    /// LayerNorms have a weight and bias.
    pub layer_norm_elementwise_affine: bool,
    /// `lm_head` shares `embed_tokens`.
    pub tie_word_embeddings: bool,
    /// Padding token (also the embedding's `padding_idx`).
    pub pad_token_id: Option<i64>,
}

impl OptArgs {
    /// Reads the config.
    ///
    /// # Errors
    /// Wrongly typed values, an unsupported activation, or `hidden_size` not a multiple of the heads.
    pub fn from_config(c: &HfConfig) -> Result<Self> {
        let hidden_size = c.size_or("hidden_size", 768)?;
        let num_attention_heads = c.size_or("num_attention_heads", 12)?;
        c.check_multiple("hidden_size", hidden_size, "num_attention_heads", num_attention_heads)?;
        Ok(Self {
            vocab_size: c.size_or("vocab_size", 50272)?,
            hidden_size,
            num_hidden_layers: c.layers_or("num_hidden_layers", 12)?,
            ffn_dim: c.size_or("ffn_dim", 3072)?,
            max_position_embeddings: c.size_or("max_position_embeddings", 2048)?,
            do_layer_norm_before: c.bool_or("do_layer_norm_before", true)?,
            remove_final_layer_norm: c.bool_or("_remove_final_layer_norm", false)?,
            word_embed_proj_dim: c.opt_size("word_embed_proj_dim")?.unwrap_or(hidden_size),
            dropout: c.f64_or("dropout", 0.1)?,
            attention_dropout: c.f64_or("attention_dropout", 0.0)?,
            num_attention_heads,
            activation_function: Activation::from_name(c.str_or("activation_function", "relu")?)?,
            enable_bias: c.bool_or("enable_bias", true)?,
            layer_norm_elementwise_affine: c.bool_or("layer_norm_elementwise_affine", true)?,
            tie_word_embeddings: c.bool_or("tie_word_embeddings", true)?,
            pad_token_id: match c.raw().get("pad_token_id") {
                None => Some(1),
                Some(_) => c.opt_i64("pad_token_id")?,
            },
        })
    }
}

/// `nn.LayerNorm(dim, elementwise_affine=…)`: without the affine part it holds no parameters.
#[derive(Debug)]
pub struct OptLayerNorm {
    affine: Option<LayerNorm>,
    dim: i64,
}

impl OptLayerNorm {
    fn new(p: Path<'_>, dim: i64, affine: bool) -> Result<Self> {
        Ok(Self { affine: affine.then(|| LayerNorm::new(p, dim, 1e-5)).transpose()?, dim })
    }

    /// `F.layer_norm` over the last dimension.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        match &self.affine {
            Some(ln) => ln.forward(x),
            None => x.layer_norm([self.dim], None::<&Tensor>, None::<&Tensor>, 1e-5, true),
        }
    }
}

/// `self_attn`.
#[derive(Debug, Adaptable)]
pub struct Attention {
    /// Key projection.
    pub k_proj: Linear,
    /// Value projection.
    pub v_proj: Linear,
    /// Query projection.
    pub q_proj: Linear,
    /// Output projection.
    pub out_proj: Linear,
    #[peft(skip)]
    heads: i64,
}

/// One decoder layer.
#[derive(Debug, Adaptable)]
pub struct Layer {
    /// Attention.
    pub self_attn: Attention,
    /// MLP input projection.
    pub fc1: Linear,
    /// MLP output projection.
    pub fc2: Linear,
    #[peft(skip)]
    self_attn_layer_norm: OptLayerNorm,
    #[peft(skip)]
    final_layer_norm: OptLayerNorm,
}

/// `OPTDecoder`.
#[derive(Debug, Adaptable)]
pub struct Decoder {
    embed_tokens: peft_core::nn::Embedding,
    /// `word_embed_proj_dim → hidden_size` (when they differ).
    pub project_in: Option<Linear>,
    /// `hidden_size → word_embed_proj_dim` (when they differ).
    pub project_out: Option<Linear>,
    /// The layers.
    pub layers: Vec<Layer>,
    #[peft(skip)]
    embed_positions: layers::Embedding,
    #[peft(skip)]
    final_layer_norm: Option<OptLayerNorm>,
}

/// `OPTModel`: the decoder under `decoder`.
#[derive(Debug, Adaptable)]
pub struct Backbone {
    /// The decoder.
    pub decoder: Decoder,
}

/// OPT with its task head.
#[derive(Debug, Adaptable)]
pub struct Opt {
    /// The backbone (`model`).
    pub model: Backbone,
    /// The head.
    pub heads: Heads,
    #[peft(skip)]
    args: OptArgs,
    #[peft(skip)]
    task: Task,
}

/// The tasks OPT provides.
pub const TASKS: &[Task] =
    &[Task::CausalLm, Task::SequenceClassification, Task::QuestionAnswering, Task::FeatureExtraction];

/// transformers' `base_model_prefix` for a task.
pub fn prefix(task: Task) -> Option<&'static str> {
    match task {
        Task::FeatureExtraction => None,
        _ => Some("model"),
    }
}

impl Opt {
    /// Allocates the model for `task` (weights come from a checkpoint).
    ///
    /// # Errors
    /// A task OPT does not have, or a libtorch failure.
    pub fn new(root: &Path<'_>, args: OptArgs, task: Task, num_labels: i64) -> Result<Self> {
        if !TASKS.contains(&task) {
            return Err(crate::unsupported_task("opt", task, TASKS));
        }
        let base = match prefix(task) {
            Some(p) => root / p / "decoder",
            None => root / "decoder",
        };
        let a = &args;
        let (e, w, bias, affine) =
            (a.hidden_size, a.word_embed_proj_dim, a.enable_bias, a.layer_norm_elementwise_affine);
        let cfg = peft_core::nn::EmbeddingConfig { padding_idx: a.pad_token_id, init: false };
        let embed_tokens = peft_core::nn::embedding(&base / "embed_tokens", a.vocab_size, w, cfg)?;
        let embed_positions = layers::Embedding::new(
            &base / "embed_positions",
            a.max_position_embeddings + POSITION_OFFSET,
            e,
        )?;
        let (project_in, project_out) = if w != e {
            (
                Some(layers::linear(&base / "project_in", w, e, false)?),
                Some(layers::linear(&base / "project_out", e, w, false)?),
            )
        } else {
            (None, None)
        };
        let final_layer_norm = (a.do_layer_norm_before && !a.remove_final_layer_norm)
            .then(|| OptLayerNorm::new(&base / "final_layer_norm", e, affine))
            .transpose()?;
        let layers = (0..a.num_hidden_layers)
            .map(|i| {
                let p = &base / "layers" / i;
                let sa = &p / "self_attn";
                Ok(Layer {
                    self_attn: Attention {
                        k_proj: layers::linear(&sa / "k_proj", e, e, bias)?,
                        v_proj: layers::linear(&sa / "v_proj", e, e, bias)?,
                        q_proj: layers::linear(&sa / "q_proj", e, e, bias)?,
                        out_proj: layers::linear(&sa / "out_proj", e, e, bias)?,
                        heads: a.num_attention_heads,
                    },
                    fc1: layers::linear(&p / "fc1", e, a.ffn_dim, bias)?,
                    fc2: layers::linear(&p / "fc2", a.ffn_dim, e, bias)?,
                    self_attn_layer_norm: OptLayerNorm::new(&p / "self_attn_layer_norm", e, affine)?,
                    final_layer_norm: OptLayerNorm::new(&p / "final_layer_norm", e, affine)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        // OPT has no token-classification head in transformers (its tasks are checked on load).
        let dims = DecoderHeadDims { hidden: w, vocab: a.vocab_size, num_labels, token_cls_bias: false };
        let tied = a.tie_word_embeddings.then(|| &embed_tokens.base().weight);
        let heads = Heads::decoder(root, task, dims, tied)?;
        let decoder =
            Decoder { embed_tokens, project_in, project_out, layers, embed_positions, final_layer_norm };
        Ok(Self { model: Backbone { decoder }, heads, args, task })
    }

    /// The hyper-parameters.
    pub fn args(&self) -> &OptArgs {
        &self.args
    }

    /// Token ids below `vocab_size`, positions below `max_position_embeddings`.
    pub fn input_limits(&self) -> crate::InputLimits {
        crate::InputLimits {
            vocab_size: self.args.vocab_size,
            max_positions: Some(self.args.max_position_embeddings),
            type_vocab_size: None,
        }
    }

    /// PEFT's `replicate_layers` finds no layer list in OPT (`model.decoder.layers` is none of the
    /// places it looks): refused with PEFT's message.
    ///
    /// # Errors
    /// Always.
    pub fn replicate_blocks(&mut self, _map: &[(usize, usize)]) -> peft_core::Result<()> {
        Err(peft_core::PeftError::Invalid(
            "Could not locate the layers attribute in the model. Expected Llama, Bert or Falcon compatible \
             architectures (OPT's are under model.decoder)."
                .into(),
        ))
    }
}

impl DecoderModel for Opt {
    /// The decoder's final hidden states `(B, T, word_embed_proj_dim)`; appends to `cache` when given.
    fn hidden_states(
        &self,
        input_ids: &Tensor,
        prefix: Option<&Tensor>,
        attention_mask: Option<&Tensor>,
        position_ids: Option<&Tensor>,
        mut cache: Option<&mut KvCache>,
        ctx: &ForwardCtx<'_>,
    ) -> Tensor {
        let d = &self.model.decoder;
        let b = input_ids.size()[0];
        let past = cache.as_ref().map_or(0, |c| c.len());
        let mut tokens = d.embed_tokens.forward_ctx(input_ids, ctx);
        if let Some(p) = prefix {
            tokens = Tensor::cat(&[p.to_kind(tokens.kind()), tokens], 1);
        }
        let (t, dev) = (tokens.size()[1], tokens.device());
        // Positions count the real tokens of each row (left padding shifts them), padding reads row 1.
        let positions = match position_ids {
            Some(p) => p.shallow_clone(),
            None => {
                let mask = match attention_mask {
                    Some(m) => m.to_device(dev).to_kind(Kind::Int64),
                    None => Tensor::ones([b, past + t], (Kind::Int64, dev)),
                };
                (mask.cumsum(1, Kind::Int64) * &mask - 1).narrow(1, past, t)
            }
        };
        if let Some(p) = &d.project_in {
            tokens = p.forward_ctx(&tokens, ctx);
        }
        let mut h = tokens + d.embed_positions.forward(&(positions + POSITION_OFFSET));
        let kind = h.kind();
        let attn_dropout = if ctx.train { self.args.attention_dropout } else { 0.0 };
        let mask = if attn_dropout > 0.0 {
            Some(causal_mask(attention_mask, b, t, past, None, kind, dev))
        } else {
            causal_mask_or_none(attention_mask, b, t, past, None, kind, dev)
        };
        let pre = self.args.do_layer_norm_before;
        let p = self.args.dropout;
        for (i, layer) in d.layers.iter().enumerate() {
            let layer_cache = cache.as_deref_mut().and_then(|c| c.layers.get_mut(i));
            let x = if pre { layer.self_attn_layer_norm.forward(&h) } else { h.shallow_clone() };
            let x = layer.self_attn.forward(&x, mask.as_ref(), attn_dropout, layer_cache, ctx);
            h = h + dropout(&x, p, ctx);
            if !pre {
                h = layer.self_attn_layer_norm.forward(&h);
            }
            let x = if pre { layer.final_layer_norm.forward(&h) } else { h.shallow_clone() };
            let x = layer.fc1.forward_ctx(&x, ctx);
            let x = layer.fc2.forward_ctx(&self.args.activation_function.forward(&x), ctx);
            h = h + dropout(&x, p, ctx);
            if !pre {
                h = layer.final_layer_norm.forward(&h);
            }
        }
        if let Some(ln) = &d.final_layer_norm {
            h = ln.forward(&h);
        }
        match &d.project_out {
            Some(p) => p.forward_ctx(&h, ctx),
            None => h,
        }
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
        self.model.decoder.layers.len()
    }
}

impl Attention {
    fn forward(
        &self,
        x: &Tensor,
        mask: Option<&Tensor>,
        attn_dropout: f64,
        cache: Option<&mut LayerCache>,
        ctx: &ForwardCtx<'_>,
    ) -> Tensor {
        let e = x.size()[2];
        let hd = e / self.heads;
        // transformers scales the query projection itself and attends with scale 1 (its order of rounding).
        let q = split_heads(&(self.q_proj.forward_ctx(x, ctx) * (hd as f64).powf(-0.5)), self.heads, hd);
        let k = split_heads(&self.k_proj.forward_ctx(x, ctx), self.heads, hd);
        let v = split_heads(&self.v_proj.forward_ctx(x, ctx), self.heads, hd);
        let (k, v) = LayerCache::update_opt(cache, k, v);
        let o = match (attn_dropout > 0.0, mask) {
            (true, Some(m)) => attend_dropout(&q, &k, &v, Some(m), 1.0, attn_dropout),
            _ => attend_causal(&q, &k, &v, mask, 1.0),
        };
        self.out_proj.forward_ctx(&merge_heads(&o), ctx)
    }
}
