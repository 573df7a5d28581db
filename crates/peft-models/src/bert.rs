//! BERT (covers MiniLM) and RoBERTa / XLM-RoBERTa: embeddings, encoder, pooler, and the classification /
//! QA heads.
//!
//! RoBERTa is BERT with three differences: parameters under `roberta.`, position ids counted from
//! `pad_token_id + 1` over non-padding tokens (padding keeps position `pad_token_id`), and a sequence
//! classifier `classifier.dense` → tanh → `classifier.out_proj` on the first token instead of a pooler.

use crate::attention::{attend_dropout, dropout, merge_heads, padding_mask, split_heads};
use crate::config::HfConfig;
use crate::error::{ModelError, Result};
use crate::layers::{self, Activation, LayerNorm};
use crate::task::{Heads, Task};
use crate::weights::LoadSpec;
use peft_core::nn::Embedding;
use peft_core::nn::Linear;
use peft_core::{Adaptable, ForwardCtx};
use tch::nn::Path;
use tch::{Kind, Tensor};

/// The hyper-parameters.
#[derive(Clone, Debug)]
pub struct BertArgs {
    /// `model_type` (`bert`, `roberta`, `xlm-roberta`).
    pub model_type: String,
    /// RoBERTa's padding token: positions start after it. `None` for BERT.
    pub padding_idx: Option<i64>,
    /// Vocabulary size.
    pub vocab_size: i64,
    /// Hidden size.
    pub hidden_size: i64,
    /// Layers.
    pub num_hidden_layers: i64,
    /// Heads.
    pub num_attention_heads: i64,
    /// MLP size.
    pub intermediate_size: i64,
    /// Activation.
    pub hidden_act: Activation,
    /// Positions.
    pub max_position_embeddings: i64,
    /// Segment types.
    pub type_vocab_size: i64,
    /// LayerNorm epsilon.
    pub layer_norm_eps: f64,
    /// Dropout on hidden states.
    pub hidden_dropout_prob: f64,
    /// Dropout on attention probabilities.
    pub attention_probs_dropout_prob: f64,
    /// Dropout before the classifier.
    pub classifier_dropout: f64,
}

impl BertArgs {
    /// Reads the config.
    ///
    /// # Errors
    /// Wrongly typed values, an unsupported activation or position embedding type.
    pub fn from_config(c: &HfConfig) -> Result<Self> {
        let pet = c.str_or("position_embedding_type", "absolute")?;
        if pet != "absolute" {
            return Err(ModelError::Config {
                path: c.path().to_path_buf(),
                message: format!("position_embedding_type {pet:?} is not supported (only \"absolute\")"),
            });
        }
        let model_type = c.model_type()?.to_string();
        let roberta = matches!(model_type.as_str(), "roberta" | "xlm-roberta");
        let padding_idx = match (roberta, c.raw().get("pad_token_id")) {
            (false, _) => None,
            (true, None) => Some(1),
            (true, Some(_)) => Some(c.opt_i64("pad_token_id")?.ok_or_else(|| ModelError::Config {
                path: c.path().to_path_buf(),
                message: format!("{model_type} needs `pad_token_id`: its position ids count from it"),
            })?),
        };
        let max_position_embeddings = c.size_or("max_position_embeddings", 512)?;
        if let Some(p) = padding_idx {
            if p < 0 || p + 1 >= max_position_embeddings {
                return Err(ModelError::Config {
                    path: c.path().to_path_buf(),
                    message: format!(
                        "`pad_token_id` {p} leaves no position below `max_position_embeddings` \
                         {max_position_embeddings} (positions start at pad_token_id + 1)"
                    ),
                });
            }
        }
        let d_vocab = match model_type.as_str() {
            "roberta" => 50265,
            _ => 30522,
        };
        let hidden_dropout_prob = c.f64_or("hidden_dropout_prob", 0.1)?;
        let hidden_size = c.size_or("hidden_size", 768)?;
        let num_attention_heads = c.size_or("num_attention_heads", 12)?;
        c.check_multiple("hidden_size", hidden_size, "num_attention_heads", num_attention_heads)?;
        Ok(Self {
            model_type,
            padding_idx,
            vocab_size: c.size_or("vocab_size", d_vocab)?,
            hidden_size,
            num_hidden_layers: c.layers_or("num_hidden_layers", 12)?,
            num_attention_heads,
            intermediate_size: c.size_or("intermediate_size", 3072)?,
            hidden_act: Activation::from_name(c.str_or("hidden_act", "gelu")?)?,
            max_position_embeddings,
            type_vocab_size: c.size_or("type_vocab_size", 2)?,
            layer_norm_eps: c.f64_or("layer_norm_eps", 1e-12)?,
            hidden_dropout_prob,
            attention_probs_dropout_prob: c.f64_or("attention_probs_dropout_prob", 0.1)?,
            classifier_dropout: c.opt_f64("classifier_dropout")?.unwrap_or(hidden_dropout_prob),
        })
    }
}

/// `attention.self`.
#[derive(Debug, Adaptable)]
pub struct SelfAttention {
    /// Query.
    pub query: Linear,
    /// Key.
    pub key: Linear,
    /// Value.
    pub value: Linear,
}

/// One encoder layer `encoder.layer.<i>`.
#[derive(Debug, Adaptable)]
pub struct Layer {
    /// `attention.self`.
    pub attention_self: SelfAttention,
    /// `attention.output.dense`.
    pub attention_output_dense: Linear,
    #[peft(skip)]
    attention_output_norm: LayerNorm,
    /// `intermediate.dense`.
    pub intermediate_dense: Linear,
    /// `output.dense`.
    pub output_dense: Linear,
    #[peft(skip)]
    output_norm: LayerNorm,
}

impl Layer {
    /// Layer `from` as layer `to`, sharing its weights (`layer_replication`).
    pub fn replicate(&self, from: usize, to: usize) -> Self {
        let l = |x: &Linear| x.replicate_at("layer", from, to);
        Layer {
            attention_self: SelfAttention {
                query: l(&self.attention_self.query),
                key: l(&self.attention_self.key),
                value: l(&self.attention_self.value),
            },
            attention_output_dense: l(&self.attention_output_dense),
            attention_output_norm: self.attention_output_norm.share(),
            intermediate_dense: l(&self.intermediate_dense),
            output_dense: l(&self.output_dense),
            output_norm: self.output_norm.share(),
        }
    }
}

/// RoBERTa's sequence classifier `classifier`: `out_proj(tanh(dense(h[:, 0])))`.
#[derive(Debug, Adaptable)]
pub struct ClassificationHead {
    /// `classifier.dense` `(H, H)`.
    pub dense: Linear,
    /// `classifier.out_proj` `(labels, H)`.
    pub out_proj: Linear,
}

/// BERT with its task head.
#[derive(Debug, Adaptable)]
pub struct Bert {
    word_embeddings: Embedding,
    position_embeddings: Embedding,
    token_type_embeddings: Embedding,
    #[peft(skip)]
    embeddings_norm: LayerNorm,
    /// The encoder layers.
    pub layers: Vec<Layer>,
    /// Pooler and task heads.
    pub heads: Heads,
    /// RoBERTa's sequence classifier (BERT's is `heads.classifier` on the pooler).
    pub classification_head: Option<ClassificationHead>,
    #[peft(skip)]
    args: BertArgs,
    #[peft(skip)]
    task: Task,
}

/// The tasks BERT provides.
pub const TASKS: &[Task] = &[
    Task::FeatureExtraction,
    Task::SequenceClassification,
    Task::TokenClassification,
    Task::QuestionAnswering,
];

impl BertArgs {
    /// RoBERTa or XLM-RoBERTa.
    pub fn is_roberta(&self) -> bool {
        self.padding_idx.is_some()
    }

    /// transformers' `base_model_prefix`: `bert` or `roberta`.
    pub fn prefix(&self) -> &'static str {
        if self.is_roberta() {
            "roberta"
        } else {
            "bert"
        }
    }

    /// The model has `pooler.dense` for `task` (RoBERTa's task models are built without one).
    fn uses_pooler(&self, task: Task) -> bool {
        match task {
            Task::FeatureExtraction => true,
            Task::SequenceClassification => !self.is_roberta(),
            _ => false,
        }
    }
}

/// How a BERT or RoBERTa checkpoint maps onto the model for `task`.
pub fn load_spec(args: &BertArgs, task: Task) -> LoadSpec {
    let prefix = args.prefix();
    let mut ignore_keys = vec![];
    if !args.uses_pooler(task) {
        for p in [String::new(), format!("{prefix}.")] {
            ignore_keys.push(format!("{p}pooler.dense.weight"));
            ignore_keys.push(format!("{p}pooler.dense.bias"));
        }
    }
    let mut optional = vec![];
    if args.is_roberta() {
        // The head of this task may be missing (freshly initialised); those of other tasks are dropped.
        let ours: &[&str] = match task {
            Task::SequenceClassification => &["classifier.dense", "classifier.out_proj"],
            Task::TokenClassification => &["classifier"],
            Task::QuestionAnswering => &["qa_outputs"],
            _ => &[],
        };
        for head in ["classifier", "classifier.dense", "classifier.out_proj", "qa_outputs"] {
            for p in ["weight", "bias"] {
                let key = format!("{head}.{p}");
                if ours.contains(&head) {
                    optional.push(key);
                } else {
                    ignore_keys.push(key);
                }
            }
        }
    } else {
        for head in ["classifier", "qa_outputs"] {
            for p in ["weight", "bias"] {
                optional.push(format!("{head}.{p}"));
                if task == Task::FeatureExtraction {
                    ignore_keys.push(format!("{head}.{p}"));
                }
            }
        }
    }
    LoadSpec {
        prefix: (task != Task::FeatureExtraction).then(|| prefix.to_string()),
        ignore_suffixes: vec!["embeddings.position_ids".into(), "embeddings.token_type_ids".into()],
        ignore_keys,
        // Masked-LM heads (BERT's `cls.`, RoBERTa's `lm_head.`) belong to a task peft-models does not ship.
        ignore_prefixes: vec![if args.is_roberta() { "lm_head." } else { "cls." }.into()],
        optional,
        provided_elsewhere: vec![],
    }
}

impl Bert {
    /// Token ids below `vocab_size`, positions below `max_position_embeddings`, segments below
    /// `type_vocab_size`.
    pub fn input_limits(&self) -> crate::InputLimits {
        // RoBERTa's positions run from padding_idx + 1, so that many fewer tokens fit the table.
        let offset = self.args.padding_idx.map_or(0, |p| p + 1);
        crate::InputLimits {
            vocab_size: self.args.vocab_size,
            max_positions: Some(self.args.max_position_embeddings - offset),
            type_vocab_size: Some(self.args.type_vocab_size),
        }
    }

    /// PEFT's `replicate_layers` on `encoder.layer`.
    pub fn replicate_blocks(&mut self, map: &[(usize, usize)]) -> peft_core::Result<()> {
        self.layers = crate::replicate(&self.layers, map, Layer::replicate)?;
        Ok(())
    }

    /// Allocates the model for `task` (weights come from a checkpoint).
    ///
    /// # Errors
    /// A task BERT does not have, or a libtorch failure.
    pub fn new(root: &Path<'_>, args: BertArgs, task: Task, num_labels: i64) -> Result<Self> {
        if !TASKS.contains(&task) {
            return Err(crate::unsupported_task(&args.model_type, task, TASKS));
        }
        let base = if task == Task::FeatureExtraction { root.clone() } else { root / args.prefix() };
        let (h, eps) = (args.hidden_size, args.layer_norm_eps);
        let emb = &base / "embeddings";
        let layers = (0..args.num_hidden_layers)
            .map(|i| {
                let p = &base / "encoder" / "layer" / i;
                let att = &p / "attention";
                Ok(Layer {
                    attention_self: SelfAttention {
                        query: layers::linear(&att / "self" / "query", h, h, true)?,
                        key: layers::linear(&att / "self" / "key", h, h, true)?,
                        value: layers::linear(&att / "self" / "value", h, h, true)?,
                    },
                    attention_output_dense: layers::linear(&att / "output" / "dense", h, h, true)?,
                    attention_output_norm: LayerNorm::new(&att / "output" / "LayerNorm", h, eps)?,
                    intermediate_dense: layers::linear(
                        &p / "intermediate" / "dense",
                        h,
                        args.intermediate_size,
                        true,
                    )?,
                    output_dense: layers::linear(&p / "output" / "dense", args.intermediate_size, h, true)?,
                    output_norm: LayerNorm::new(&p / "output" / "LayerNorm", h, eps)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let mut heads = Heads::none();
        if args.uses_pooler(task) {
            heads.pooler = Some(layers::linear(&base / "pooler" / "dense", h, h, true)?);
        }
        let mut classification_head = None;
        match task {
            Task::SequenceClassification if args.is_roberta() => {
                let c = root / "classifier";
                classification_head = Some(ClassificationHead {
                    dense: layers::linear(&c / "dense", h, h, true)?,
                    out_proj: layers::linear(&c / "out_proj", h, num_labels, true)?,
                })
            }
            Task::SequenceClassification | Task::TokenClassification => {
                heads.classifier = Some(layers::linear(root / "classifier", h, num_labels, true)?)
            }
            Task::QuestionAnswering => {
                heads.qa_outputs = Some(layers::linear(root / "qa_outputs", h, 2, true)?)
            }
            _ => {}
        }
        Ok(Self {
            word_embeddings: layers::embedding(&emb / "word_embeddings", args.vocab_size, h)?,
            position_embeddings: layers::embedding(
                &emb / "position_embeddings",
                args.max_position_embeddings,
                h,
            )?,
            token_type_embeddings: layers::embedding(
                &emb / "token_type_embeddings",
                args.type_vocab_size,
                h,
            )?,
            embeddings_norm: LayerNorm::new(&emb / "LayerNorm", h, eps)?,
            layers,
            heads,
            classification_head,
            args,
            task,
        })
    }

    /// The encoder's last hidden state `(B, T, H)`.
    pub fn hidden_states(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        token_type_ids: Option<&Tensor>,
        ctx: &ForwardCtx<'_>,
    ) -> Tensor {
        let (b, t) = (input_ids.size()[0], input_ids.size()[1]);
        let dev = input_ids.device();
        let positions = match self.args.padding_idx {
            // transformers' `create_position_ids_from_input_ids`: cumsum of non-padding, padding kept at
            // `padding_idx`.
            Some(p) => {
                let mask = input_ids.ne(p).to_kind(Kind::Int);
                (mask.cumsum(1, Kind::Int) * &mask).to_kind(Kind::Int64) + p
            }
            None => Tensor::arange(t, (Kind::Int64, dev)).unsqueeze(0),
        };
        let zeros;
        let types = match token_type_ids {
            Some(tt) => tt,
            None => {
                zeros = Tensor::zeros([b, t], (Kind::Int64, dev));
                &zeros
            }
        };
        let e = self.word_embeddings.forward_ctx(input_ids, ctx)
            + self.token_type_embeddings.forward_ctx(types, ctx);
        let e = e + self.position_embeddings.forward_ctx(&positions, ctx);
        let mut h = dropout(&self.embeddings_norm.forward(&e), self.args.hidden_dropout_prob, ctx);
        let mask = attention_mask.map(|m| padding_mask(m, h.kind()));
        let heads = self.args.num_attention_heads;
        let hd = self.args.hidden_size / heads;
        let attn_p = if ctx.train { self.args.attention_probs_dropout_prob } else { 0.0 };
        let p = self.args.hidden_dropout_prob;
        for l in &self.layers {
            let q = split_heads(&l.attention_self.query.forward_ctx(&h, ctx), heads, hd);
            let k = split_heads(&l.attention_self.key.forward_ctx(&h, ctx), heads, hd);
            let v = split_heads(&l.attention_self.value.forward_ctx(&h, ctx), heads, hd);
            let a = merge_heads(&attend_dropout(&q, &k, &v, mask.as_ref(), (hd as f64).powf(-0.5), attn_p));
            let a = dropout(&l.attention_output_dense.forward_ctx(&a, ctx), p, ctx);
            let a = l.attention_output_norm.forward(&(a + &h));
            let i = self.args.hidden_act.forward(&l.intermediate_dense.forward_ctx(&a, ctx));
            let o = dropout(&l.output_dense.forward_ctx(&i, ctx), p, ctx);
            h = l.output_norm.forward(&(o + &a));
        }
        h
    }

    /// The pooled `[CLS]` representation: `tanh(pooler.dense(h[:, 0]))`.
    ///
    /// # Errors
    /// A model loaded without the pooler (token classification, QA).
    pub fn pooled(&self, hidden: &Tensor, ctx: &ForwardCtx<'_>) -> Result<Tensor> {
        let pooler =
            self.heads.pooler.as_ref().ok_or_else(|| ModelError::Input("no pooler for this task".into()))?;
        Ok(pooler.forward_ctx(&hidden.select(1, 0), ctx).tanh())
    }

    /// The task output.
    ///
    /// # Errors
    /// A task without a head.
    pub fn forward(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        token_type_ids: Option<&Tensor>,
        ctx: &ForwardCtx<'_>,
    ) -> Result<Tensor> {
        let h = self.hidden_states(input_ids, attention_mask, token_type_ids, ctx);
        let missing = |n: &str| ModelError::Input(format!("no `{n}` head"));
        let p = self.args.classifier_dropout;
        Ok(match self.task {
            Task::FeatureExtraction => h,
            Task::SequenceClassification if self.classification_head.is_some() => {
                let head = self.classification_head.as_ref().ok_or_else(|| missing("classifier"))?;
                let x = dropout(&h.select(1, 0), p, ctx);
                let x = dropout(&head.dense.forward_ctx(&x, ctx).tanh(), p, ctx);
                head.out_proj.forward_ctx(&x, ctx)
            }
            Task::SequenceClassification => {
                let pooled = dropout(&self.pooled(&h, ctx)?, self.args.classifier_dropout, ctx);
                self.heads.classifier.as_ref().ok_or_else(|| missing("classifier"))?.forward_ctx(&pooled, ctx)
            }
            Task::TokenClassification => {
                let h = dropout(&h, self.args.classifier_dropout, ctx);
                self.heads.classifier.as_ref().ok_or_else(|| missing("classifier"))?.forward_ctx(&h, ctx)
            }
            Task::QuestionAnswering => {
                self.heads.qa_outputs.as_ref().ok_or_else(|| missing("qa_outputs"))?.forward_ctx(&h, ctx)
            }
            other => return Err(crate::unsupported_task(&self.args.model_type, other, TASKS)),
        })
    }
}
