//! T5: encoder-decoder with relative position buckets, RMS layer norms and no attention scaling.

use crate::attention::{
    additive, attend_dropout, dropout, merge_heads, padding_mask, split_heads, KvCache, LayerCache,
};
use crate::config::HfConfig;
use crate::error::{ModelError, Result};
use crate::layers::{self, Activation, Embedding, RmsNorm};
use crate::task::{Heads, Task};
use crate::weights::LoadSpec;
use peft_core::nn::Linear;
use peft_core::{Adaptable, ForwardCtx};
use tch::nn::Path;
use tch::{Kind, Tensor};

/// The hyper-parameters.
#[derive(Clone, Debug)]
pub struct T5Args {
    /// Vocabulary size.
    pub vocab_size: i64,
    /// Model width.
    pub d_model: i64,
    /// Per-head size.
    pub d_kv: i64,
    /// MLP size.
    pub d_ff: i64,
    /// Encoder layers.
    pub num_layers: i64,
    /// Decoder layers.
    pub num_decoder_layers: i64,
    /// Heads.
    pub num_heads: i64,
    /// Relative position buckets.
    pub relative_attention_num_buckets: i64,
    /// Largest distinguished distance.
    pub relative_attention_max_distance: i64,
    /// Dropout.
    pub dropout_rate: f64,
    /// Norm epsilon.
    pub layer_norm_epsilon: f64,
    /// Feed-forward activation.
    pub act: Activation,
    /// Gated feed-forward (`wi_0`, `wi_1`).
    pub gated: bool,
    /// Scale decoder outputs by `d_model^-0.5` before the (tied) LM head.
    pub scale_decoder_outputs: bool,
    /// First decoder token.
    pub decoder_start_token_id: i64,
    /// End-of-sequence tokens.
    pub eos_token_ids: Vec<i64>,
}

impl T5Args {
    /// Reads the config.
    ///
    /// # Errors
    /// Wrongly typed values or an unsupported `feed_forward_proj`.
    pub fn from_config(c: &HfConfig) -> Result<Self> {
        let num_layers = c.layers_or("num_layers", 6)?;
        let ffp = c.str_or("feed_forward_proj", "relu")?;
        let (gated, act_name) = match ffp.strip_prefix("gated-") {
            Some(a) => (true, if a == "gelu" { "gelu_new" } else { a }),
            None => (false, ffp),
        };
        let act = Activation::from_name(act_name).map_err(|_| ModelError::Config {
            path: c.path().to_path_buf(),
            message: format!("unsupported feed_forward_proj {ffp:?}"),
        })?;
        let tie = c.raw().get("tie_word_embeddings").and_then(|v| v.as_bool());
        let scale_decoder_outputs = match c.raw().get("scale_decoder_outputs").and_then(|v| v.as_bool()) {
            Some(s) => s,
            None => tie != Some(false),
        };
        // The bucket formula divides by `log(max_distance / max_exact)` with `max_exact` up to half the
        // buckets: fewer than 4 buckets, or a distance not beyond half of them, would index garbage.
        let buckets = c.size_or("relative_attention_num_buckets", 32)?;
        let distance = c.size_or("relative_attention_max_distance", 128)?;
        if buckets < 4 || distance <= buckets / 2 {
            return Err(ModelError::Config {
                path: c.path().to_path_buf(),
                message: format!(
                    "`relative_attention_num_buckets` ({buckets}) must be at least 4 and \
                     `relative_attention_max_distance` ({distance}) above half of it"
                ),
            });
        }
        let pad = c.i64_or("pad_token_id", 0)?;
        let mut eos = c.eos_token_ids();
        if eos.is_empty() {
            eos.push(1);
        }
        Ok(Self {
            vocab_size: c.size_or("vocab_size", 32128)?,
            d_model: c.size_or("d_model", 512)?,
            d_kv: c.size_or("d_kv", 64)?,
            d_ff: c.size_or("d_ff", 2048)?,
            num_layers,
            num_decoder_layers: match c.opt_i64("num_decoder_layers")? {
                Some(_) => c.layers_or("num_decoder_layers", num_layers)?,
                None => num_layers,
            },
            num_heads: c.size_or("num_heads", 8)?,
            relative_attention_num_buckets: buckets,
            relative_attention_max_distance: distance,
            dropout_rate: c.f64_or("dropout_rate", 0.1)?,
            layer_norm_epsilon: c.f64_or("layer_norm_epsilon", 1e-6)?,
            act,
            gated,
            scale_decoder_outputs,
            decoder_start_token_id: c.i64_or("decoder_start_token_id", pad)?,
            eos_token_ids: eos,
        })
    }
}

/// `SelfAttention` / `EncDecAttention`.
#[derive(Debug, Adaptable)]
pub struct Attention {
    /// Query.
    pub q: Linear,
    /// Key.
    pub k: Linear,
    /// Value.
    pub v: Linear,
    /// Output.
    pub o: Linear,
    #[peft(skip)]
    relative_attention_bias: Option<Embedding>,
}

/// `DenseReluDense`.
#[derive(Debug, Adaptable)]
pub struct FeedForward {
    /// `wi` (ungated).
    pub wi: Option<Linear>,
    /// `wi_0` (gated).
    pub wi_0: Option<Linear>,
    /// `wi_1` (gated).
    pub wi_1: Option<Linear>,
    /// `wo`.
    pub wo: Linear,
}

/// One block of the encoder (no cross attention) or the decoder.
#[derive(Debug, Adaptable)]
pub struct Block {
    /// `layer.0.SelfAttention`.
    pub self_attention: Attention,
    #[peft(skip)]
    self_norm: RmsNorm,
    /// `layer.1.EncDecAttention` (decoder only).
    pub cross_attention: Option<Attention>,
    #[peft(skip)]
    cross_norm: Option<RmsNorm>,
    /// `layer.{1,2}.DenseReluDense`.
    pub ff: FeedForward,
    #[peft(skip)]
    ff_norm: RmsNorm,
}

/// T5 for conditional generation.
#[derive(Debug, Adaptable)]
pub struct T5 {
    shared: peft_core::nn::Embedding,
    /// Encoder blocks.
    pub encoder: Vec<Block>,
    #[peft(skip)]
    encoder_norm: RmsNorm,
    /// Decoder blocks.
    pub decoder: Vec<Block>,
    #[peft(skip)]
    decoder_norm: RmsNorm,
    /// `lm_head` (tied to `shared` unless the checkpoint has its own).
    pub heads: Heads,
    #[peft(skip)]
    args: T5Args,
}

/// The tasks T5 provides.
pub const TASKS: &[Task] = &[Task::Seq2SeqLm];

/// How a T5 checkpoint maps onto the model.
pub fn load_spec() -> LoadSpec {
    LoadSpec {
        prefix: None,
        ignore_suffixes: vec![],
        ignore_keys: vec!["encoder.embed_tokens.weight".into(), "decoder.embed_tokens.weight".into()],
        ignore_prefixes: vec![],
        optional: vec![],
        provided_elsewhere: vec![],
    }
}

fn attention(p: &Path<'_>, a: &T5Args, bias: bool) -> Result<Attention> {
    let inner = a.num_heads * a.d_kv;
    Ok(Attention {
        q: layers::linear(p / "q", a.d_model, inner, false)?,
        k: layers::linear(p / "k", a.d_model, inner, false)?,
        v: layers::linear(p / "v", a.d_model, inner, false)?,
        o: layers::linear(p / "o", inner, a.d_model, false)?,
        relative_attention_bias: if bias {
            Some(Embedding::new(
                p / "relative_attention_bias",
                a.relative_attention_num_buckets,
                a.num_heads,
            )?)
        } else {
            None
        },
    })
}

fn feed_forward(p: &Path<'_>, a: &T5Args) -> Result<FeedForward> {
    let p = p / "DenseReluDense";
    Ok(if a.gated {
        FeedForward {
            wi: None,
            wi_0: Some(layers::linear(&p / "wi_0", a.d_model, a.d_ff, false)?),
            wi_1: Some(layers::linear(&p / "wi_1", a.d_model, a.d_ff, false)?),
            wo: layers::linear(&p / "wo", a.d_ff, a.d_model, false)?,
        }
    } else {
        FeedForward {
            wi: Some(layers::linear(&p / "wi", a.d_model, a.d_ff, false)?),
            wi_0: None,
            wi_1: None,
            wo: layers::linear(&p / "wo", a.d_ff, a.d_model, false)?,
        }
    })
}

/// transformers' `T5Attention._relative_position_bucket`.
pub fn relative_position_bucket(
    relative: &Tensor,
    bidirectional: bool,
    num_buckets: i64,
    max_distance: i64,
) -> Tensor {
    let mut num_buckets = num_buckets;
    let mut buckets = relative.zeros_like();
    let rel = if bidirectional {
        num_buckets /= 2;
        buckets = buckets + relative.gt(0).to_kind(Kind::Int64) * num_buckets;
        relative.abs()
    } else {
        -relative.minimum(&relative.zeros_like())
    };
    let max_exact = num_buckets / 2;
    let is_small = rel.lt(max_exact);
    let large = (rel.to_kind(Kind::Float) / max_exact as f64).log()
        / (max_distance as f64 / max_exact as f64).ln()
        * (num_buckets - max_exact) as f64;
    let large = large.to_kind(Kind::Int64) + max_exact;
    let large = large.minimum(&large.full_like(num_buckets - 1));
    buckets + rel.where_self(&is_small, &large)
}

impl Attention {
    /// `(1, H, q, k)` relative-position bias for queries at `q` over `k_len` keys, in `like`'s dtype and
    /// device (zeros for layers without their own bias table).
    fn position_bias(
        &self,
        q: std::ops::Range<i64>,
        k_len: i64,
        bidirectional: bool,
        a: &T5Args,
        like: &Tensor,
    ) -> Tensor {
        let (kind, dev) = (like.kind(), like.device());
        let (q_start, q_len) = (q.start, q.end - q.start);
        match &self.relative_attention_bias {
            Some(emb) => {
                let ctx = Tensor::arange_start(q_start, q_start + q_len, (Kind::Int64, dev)).unsqueeze(1);
                let mem = Tensor::arange(k_len, (Kind::Int64, dev)).unsqueeze(0);
                let buckets = relative_position_bucket(
                    &(mem - ctx),
                    bidirectional,
                    a.relative_attention_num_buckets,
                    a.relative_attention_max_distance,
                );
                emb.forward(&buckets).permute([2, 0, 1]).unsqueeze(0)
            }
            None => Tensor::zeros([1, a.num_heads, q_len, k_len], (kind, dev)),
        }
    }

    fn forward(
        &self,
        x: &Tensor,
        kv_source: Option<&Tensor>,
        bias: &Tensor,
        cache: Option<&mut LayerCache>,
        a: &T5Args,
        ctx: &ForwardCtx<'_>,
    ) -> Tensor {
        let (h, d) = (a.num_heads, a.d_kv);
        let src = kv_source.unwrap_or(x);
        let q = split_heads(&self.q.forward_ctx(x, ctx), h, d);
        let k = split_heads(&self.k.forward_ctx(src, ctx), h, d);
        let v = split_heads(&self.v.forward_ctx(src, ctx), h, d);
        let (k, v) = LayerCache::update_opt(cache, k, v);
        let p = if ctx.train { a.dropout_rate } else { 0.0 };
        let o = attend_dropout(&q, &k, &v, Some(bias), 1.0, p);
        self.o.forward_ctx(&merge_heads(&o), ctx)
    }
}

impl FeedForward {
    fn forward(&self, x: &Tensor, a: &T5Args, ctx: &ForwardCtx<'_>) -> Tensor {
        let h = match (&self.wi, &self.wi_0, &self.wi_1) {
            (Some(wi), _, _) => a.act.forward(&wi.forward_ctx(x, ctx)),
            (None, Some(w0), Some(w1)) => a.act.forward(&w0.forward_ctx(x, ctx)) * w1.forward_ctx(x, ctx),
            _ => x.shallow_clone(),
        };
        self.wo.forward_ctx(&dropout(&h, a.dropout_rate, ctx), ctx)
    }
}

impl T5 {
    /// Encoder and decoder ids below `vocab_size`; relative positions have no table to overflow.
    pub fn input_limits(&self) -> crate::InputLimits {
        crate::InputLimits { vocab_size: self.args.vocab_size, max_positions: None, type_vocab_size: None }
    }

    /// Allocates the model (weights come from a checkpoint). `own_lm_head`: the checkpoint has an untied
    /// `lm_head.weight`.
    ///
    /// # Errors
    /// A task T5 does not have, or a libtorch failure.
    pub fn new(root: &Path<'_>, args: T5Args, task: Task, own_lm_head: bool) -> Result<Self> {
        if task != Task::Seq2SeqLm {
            return Err(crate::unsupported_task("t5", task, TASKS));
        }
        let a = &args;
        let eps = a.layer_norm_epsilon;
        let shared = layers::embedding(root / "shared", a.vocab_size, a.d_model)?;
        let encoder = (0..a.num_layers)
            .map(|i| {
                let p = root / "encoder" / "block" / i / "layer";
                Ok(Block {
                    self_attention: attention(&(&p / 0 / "SelfAttention"), a, i == 0)?,
                    self_norm: RmsNorm::new(&p / 0 / "layer_norm", a.d_model, eps)?,
                    cross_attention: None,
                    cross_norm: None,
                    ff: feed_forward(&(&p / 1), a)?,
                    ff_norm: RmsNorm::new(&p / 1 / "layer_norm", a.d_model, eps)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let encoder_norm = RmsNorm::new(root / "encoder" / "final_layer_norm", a.d_model, eps)?;
        let decoder = (0..a.num_decoder_layers)
            .map(|i| {
                let p = root / "decoder" / "block" / i / "layer";
                Ok(Block {
                    self_attention: attention(&(&p / 0 / "SelfAttention"), a, i == 0)?,
                    self_norm: RmsNorm::new(&p / 0 / "layer_norm", a.d_model, eps)?,
                    cross_attention: Some(attention(&(&p / 1 / "EncDecAttention"), a, false)?),
                    cross_norm: Some(RmsNorm::new(&p / 1 / "layer_norm", a.d_model, eps)?),
                    ff: feed_forward(&(&p / 2), a)?,
                    ff_norm: RmsNorm::new(&p / 2 / "layer_norm", a.d_model, eps)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let decoder_norm = RmsNorm::new(root / "decoder" / "final_layer_norm", a.d_model, eps)?;
        let mut heads = Heads::none();
        heads.lm_head = Some(if own_lm_head {
            layers::linear(root / "lm_head", a.d_model, a.vocab_size, false)?
        } else {
            layers::tied_linear("lm_head", &shared.base().weight)
        });
        Ok(Self { shared, encoder, encoder_norm, decoder, decoder_norm, heads, args })
    }

    /// The hyper-parameters.
    pub fn args(&self) -> &T5Args {
        &self.args
    }

    /// The encoder's output `(B, T, d_model)`.
    pub fn encode(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        ctx: &ForwardCtx<'_>,
    ) -> Tensor {
        let a = &self.args;
        let mut h = dropout(&self.shared.forward_ctx(input_ids, ctx), a.dropout_rate, ctx);
        let kind = h.kind();
        let t = input_ids.size()[1];
        let mut bias = self.encoder[0].self_attention.position_bias(0..t, t, true, a, &h);
        if let Some(m) = attention_mask {
            bias = bias + padding_mask(m, kind);
        }
        for b in &self.encoder {
            let x = b.self_attention.forward(&b.self_norm.forward_t5(&h), None, &bias, None, a, ctx);
            h = h + dropout(&x, a.dropout_rate, ctx);
            let x = b.ff.forward(&b.ff_norm.forward_t5(&h), a, ctx);
            h = h + dropout(&x, a.dropout_rate, ctx);
        }
        dropout(&self.encoder_norm.forward_t5(&h), a.dropout_rate, ctx)
    }

    /// Decoder logits `(B, T', vocab)` for `decoder_input_ids` given the encoder output; appends to the
    /// self-attention `cache` when given (cross-attention keys are recomputed from `encoded`).
    pub fn decode(
        &self,
        decoder_input_ids: &Tensor,
        decoder_attention_mask: Option<&Tensor>,
        encoded: &Tensor,
        encoder_attention_mask: Option<&Tensor>,
        mut cache: Option<&mut KvCache>,
        ctx: &ForwardCtx<'_>,
    ) -> Tensor {
        let a = &self.args;
        let (b, t) = (decoder_input_ids.size()[0], decoder_input_ids.size()[1]);
        let past = cache.as_ref().map_or(0, |c| c.len());
        let mut h = dropout(&self.shared.forward_ctx(decoder_input_ids, ctx), a.dropout_rate, ctx);
        let (kind, dev) = (h.kind(), h.device());
        let s = past + t;
        let mut self_bias = self.decoder[0].self_attention.position_bias(past..past + t, s, false, a, &h);
        self_bias =
            self_bias + crate::attention::causal_mask(decoder_attention_mask, b, t, past, None, kind, dev);
        let enc_len = encoded.size()[1];
        let cross_bias = match encoder_attention_mask {
            Some(m) => padding_mask(m, kind),
            None => additive(&Tensor::ones([1, 1, 1, enc_len], (Kind::Bool, dev)), kind),
        };
        for (i, blk) in self.decoder.iter().enumerate() {
            let layer_cache = cache.as_deref_mut().and_then(|c| c.layers.get_mut(i));
            let x = blk.self_attention.forward(
                &blk.self_norm.forward_t5(&h),
                None,
                &self_bias,
                layer_cache,
                a,
                ctx,
            );
            h = h + dropout(&x, a.dropout_rate, ctx);
            if let (Some(ca), Some(cn)) = (&blk.cross_attention, &blk.cross_norm) {
                let x = ca.forward(&cn.forward_t5(&h), Some(encoded), &cross_bias, None, a, ctx);
                h = h + dropout(&x, a.dropout_rate, ctx);
            }
            let x = blk.ff.forward(&blk.ff_norm.forward_t5(&h), a, ctx);
            h = h + dropout(&x, a.dropout_rate, ctx);
        }
        let mut h = dropout(&self.decoder_norm.forward_t5(&h), a.dropout_rate, ctx);
        if a.scale_decoder_outputs {
            h = h * (a.d_model as f64).powf(-0.5);
        }
        match &self.heads.lm_head {
            Some(lm) => lm.forward_ctx(&h, ctx),
            None => h,
        }
    }

    /// A decoder self-attention cache.
    pub fn new_cache(&self) -> KvCache {
        KvCache::new(self.decoder.len())
    }
}
