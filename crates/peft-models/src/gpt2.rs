//! GPT-2: transformers' `Conv1D` layers (`c_attn`, `c_proj`, `c_fc`; weights stored `(in, out)`, so LoRA
//! runs with `fan_in_fan_out`), learned positions, tied `lm_head`.

use crate::attention::{attend_causal, causal_mask_or_none, merge_heads, split_heads, KvCache, LayerCache};
use crate::config::HfConfig;
use crate::error::Result;
use crate::layers::{self, Activation, LayerNorm};
use crate::task::{default_positions, DecoderModel, Heads, Task};
use peft_core::nn::Linear;
use peft_core::{Adaptable, ForwardCtx};
use tch::nn::Path;
use tch::Tensor;

/// The hyper-parameters.
#[derive(Clone, Debug)]
pub struct Gpt2Args {
    /// Vocabulary size.
    pub vocab_size: i64,
    /// Positions.
    pub n_positions: i64,
    /// Hidden size.
    pub n_embd: i64,
    /// Layers.
    pub n_layer: i64,
    /// Heads.
    pub n_head: i64,
    /// MLP size.
    pub n_inner: i64,
    /// Activation.
    pub activation: Activation,
    /// LayerNorm epsilon.
    pub layer_norm_epsilon: f64,
    /// Scale scores by `1/sqrt(head_dim)`.
    pub scale_attn_weights: bool,
    /// Also divide scores by `layer_idx + 1`.
    pub scale_attn_by_inverse_layer_idx: bool,
    /// Padding token.
    pub pad_token_id: Option<i64>,
}

impl Gpt2Args {
    /// Reads the config.
    ///
    /// # Errors
    /// Wrongly typed values or an unsupported activation.
    pub fn from_config(c: &HfConfig) -> Result<Self> {
        let n_embd = c.size_or("n_embd", 768)?;
        let n_head = c.size_or("n_head", 12)?;
        c.check_multiple("n_embd", n_embd, "n_head", n_head)?;
        Ok(Self {
            vocab_size: c.size_or("vocab_size", 50257)?,
            n_positions: c.size_or("n_positions", 1024)?,
            n_embd,
            n_layer: c.layers_or("n_layer", 12)?,
            n_head,
            n_inner: c.opt_size("n_inner")?.unwrap_or(4 * n_embd),
            activation: Activation::from_name(c.str_or("activation_function", "gelu_new")?)?,
            layer_norm_epsilon: c.f64_or("layer_norm_epsilon", 1e-5)?,
            scale_attn_weights: c.bool_or("scale_attn_weights", true)?,
            scale_attn_by_inverse_layer_idx: c.bool_or("scale_attn_by_inverse_layer_idx", false)?,
            pad_token_id: c.opt_i64("pad_token_id")?,
        })
    }
}

/// `attn`.
#[derive(Debug, Adaptable)]
pub struct Attention {
    /// q, k and v in one `Conv1D(3·E, E)`.
    pub c_attn: Linear,
    /// Output `Conv1D(E, E)`.
    pub c_proj: Linear,
}

/// `mlp`.
#[derive(Debug, Adaptable)]
pub struct Mlp {
    /// `Conv1D(inner, E)`.
    pub c_fc: Linear,
    /// `Conv1D(E, inner)`.
    pub c_proj: Linear,
}

/// One block `h.<i>`.
#[derive(Debug, Adaptable)]
pub struct Block {
    #[peft(skip)]
    ln_1: LayerNorm,
    /// Attention.
    pub attn: Attention,
    #[peft(skip)]
    ln_2: LayerNorm,
    /// MLP.
    pub mlp: Mlp,
}

impl Block {
    /// Block `from` as block `to`, sharing its weights (`layer_replication`).
    pub fn replicate(&self, from: usize, to: usize) -> Self {
        let l = |x: &Linear| x.replicate_at("h", from, to);
        Block {
            ln_1: self.ln_1.share(),
            attn: Attention { c_attn: l(&self.attn.c_attn), c_proj: l(&self.attn.c_proj) },
            ln_2: self.ln_2.share(),
            mlp: Mlp { c_fc: l(&self.mlp.c_fc), c_proj: l(&self.mlp.c_proj) },
        }
    }
}

/// `GPT2Model`.
#[derive(Debug, Adaptable)]
pub struct Backbone {
    wte: peft_core::nn::Embedding,
    wpe: peft_core::nn::Embedding,
    /// The blocks.
    pub h: Vec<Block>,
    #[peft(skip)]
    ln_f: LayerNorm,
}

/// GPT-2 with its task head.
#[derive(Debug, Adaptable)]
pub struct Gpt2 {
    /// The backbone (`transformer`).
    pub transformer: Backbone,
    /// The head.
    pub heads: Heads,
    #[peft(skip)]
    args: Gpt2Args,
    #[peft(skip)]
    task: Task,
}

/// The tasks GPT-2 provides.
pub const TASKS: &[Task] =
    &[Task::CausalLm, Task::SequenceClassification, Task::TokenClassification, Task::FeatureExtraction];

/// Checkpoint buffers transformers does not load.
pub const IGNORED_SUFFIXES: &[&str] = &[".attn.bias", ".attn.masked_bias"];

/// transformers' `base_model_prefix` for a task.
pub fn prefix(task: Task) -> Option<&'static str> {
    match task {
        Task::FeatureExtraction => None,
        _ => Some("transformer"),
    }
}

impl Gpt2 {
    /// Token ids below `vocab_size`, positions below `n_positions`.
    pub fn input_limits(&self) -> crate::InputLimits {
        crate::InputLimits {
            vocab_size: self.args.vocab_size,
            max_positions: Some(self.args.n_positions),
            type_vocab_size: None,
        }
    }

    /// Allocates the model for `task` (weights come from a checkpoint).
    ///
    /// # Errors
    /// A task GPT-2 does not have, or a libtorch failure.
    pub fn new(root: &Path<'_>, args: Gpt2Args, task: Task, num_labels: i64) -> Result<Self> {
        if !TASKS.contains(&task) {
            return Err(crate::unsupported_task("gpt2", task, TASKS));
        }
        let base = match prefix(task) {
            Some(p) => root / p,
            None => root.clone(),
        };
        let e = args.n_embd;
        let eps = args.layer_norm_epsilon;
        let wte = layers::embedding(&base / "wte", args.vocab_size, e)?;
        let wpe = layers::embedding(&base / "wpe", args.n_positions, e)?;
        let h = (0..args.n_layer)
            .map(|i| {
                let p = &base / "h" / i;
                Ok(Block {
                    ln_1: LayerNorm::new(&p / "ln_1", e, eps)?,
                    attn: Attention {
                        c_attn: layers::conv1d(&p / "attn" / "c_attn", 3 * e, e)?,
                        c_proj: layers::conv1d(&p / "attn" / "c_proj", e, e)?,
                    },
                    ln_2: LayerNorm::new(&p / "ln_2", e, eps)?,
                    mlp: Mlp {
                        c_fc: layers::conv1d(&p / "mlp" / "c_fc", args.n_inner, e)?,
                        c_proj: layers::conv1d(&p / "mlp" / "c_proj", e, args.n_inner)?,
                    },
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let ln_f = LayerNorm::new(&base / "ln_f", e, eps)?;
        let mut heads = Heads::none();
        match task {
            Task::CausalLm => heads.lm_head = Some(layers::tied_linear("lm_head", &wte.base().weight)),
            Task::SequenceClassification => {
                heads.score = Some(layers::linear(root / "score", e, num_labels, false)?)
            }
            Task::TokenClassification => {
                heads.classifier = Some(layers::linear(root / "classifier", e, num_labels, true)?)
            }
            _ => {}
        }
        Ok(Self { transformer: Backbone { wte, wpe, h, ln_f }, heads, args, task })
    }
}

impl DecoderModel for Gpt2 {
    /// The backbone's final hidden states; appends to `cache` when given.
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
        let mut tokens = self.transformer.wte.forward_ctx(input_ids, ctx);
        if let Some(p) = prefix {
            tokens = Tensor::cat(&[p.to_kind(tokens.kind()), tokens], 1);
        }
        let t = tokens.size()[1];
        let positions = match position_ids {
            Some(p) => p.shallow_clone(),
            None => default_positions(past, b, t, input_ids.device()),
        };
        let mut h = tokens + self.transformer.wpe.forward_ctx(&positions, ctx);
        let mask = causal_mask_or_none(attention_mask, b, t, past, None, h.kind(), h.device());
        let hd = self.args.n_embd / self.args.n_head;
        for (i, block) in self.transformer.h.iter().enumerate() {
            let mut scale = if self.args.scale_attn_weights { (hd as f64).powf(-0.5) } else { 1.0 };
            if self.args.scale_attn_by_inverse_layer_idx {
                scale /= (i + 1) as f64;
            }
            let layer_cache = cache.as_deref_mut().and_then(|c| c.layers.get_mut(i));
            let x = block.attn.forward(
                &block.ln_1.forward(&h),
                self.args.n_head,
                mask.as_ref(),
                scale,
                layer_cache,
                ctx,
            );
            h = x + h;
            let x = block.ln_2.forward(&h);
            let x = block.mlp.c_fc.forward_ctx(&x, ctx);
            let x = block.mlp.c_proj.forward_ctx(&self.args.activation.forward(&x), ctx);
            h = h + x;
        }
        self.transformer.ln_f.forward(&h)
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
        self.transformer.h.len()
    }
}

impl Gpt2 {
    /// PEFT's `replicate_layers` on `transformer.h` (its "falcon" branch).
    pub fn replicate_blocks(&mut self, map: &[(usize, usize)]) -> peft_core::Result<()> {
        self.transformer.h = crate::replicate(&self.transformer.h, map, Block::replicate)?;
        Ok(())
    }
}

impl Attention {
    fn forward(
        &self,
        x: &Tensor,
        heads: i64,
        mask: Option<&Tensor>,
        scale: f64,
        cache: Option<&mut LayerCache>,
        ctx: &ForwardCtx<'_>,
    ) -> Tensor {
        let qkv = self.c_attn.forward_ctx(x, ctx);
        let e = qkv.size()[2] / 3;
        let hd = e / heads;
        let parts = qkv.split(e, 2);
        let q = split_heads(&parts[0], heads, hd);
        let k = split_heads(&parts[1], heads, hd);
        let v = split_heads(&parts[2], heads, hd);
        let (k, v) = LayerCache::update_opt(cache, k, v);
        let o = attend_causal(&q, &k, &v, mask, scale);
        self.c_proj.forward_ctx(&merge_heads(&o), ctx)
    }
}
