//! Tasks (PEFT's `PeftModelFor*` / transformers' `*For*` classes) and their heads.

use crate::attention::KvCache;
use crate::config::HfConfig;
use crate::error::{ModelError, Result};
use peft_core::nn::Linear;
use peft_core::peft_config::TaskType;
use peft_core::{Adaptable, ForwardCtx};
use tch::{Kind, Tensor};

/// What the model computes on top of its backbone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Task {
    /// Next-token logits (`*ForCausalLM`).
    CausalLm,
    /// Encoder-decoder generation (`*ForConditionalGeneration`).
    Seq2SeqLm,
    /// One label per sequence (`*ForSequenceClassification`).
    SequenceClassification,
    /// One label per token (`*ForTokenClassification`).
    TokenClassification,
    /// Span start/end logits (`*ForQuestionAnswering`).
    QuestionAnswering,
    /// The backbone's last hidden state (`AutoModel`).
    FeatureExtraction,
}

impl Task {
    /// PEFT's `task_type` → task.
    pub fn from_task_type(t: TaskType) -> Self {
        match t {
            TaskType::CausalLm => Task::CausalLm,
            TaskType::Seq2SeqLm => Task::Seq2SeqLm,
            TaskType::SeqCls => Task::SequenceClassification,
            TaskType::TokenCls => Task::TokenClassification,
            TaskType::QuestionAns => Task::QuestionAnswering,
            TaskType::FeatureExtraction => Task::FeatureExtraction,
        }
    }

    /// The task of a transformers class name (`LlamaForCausalLM` → causal LM, `BertModel` → features).
    pub fn from_architecture(arch: &str) -> Option<Self> {
        let suffixes = [
            ("ForCausalLM", Task::CausalLm),
            ("LMHeadModel", Task::CausalLm),
            ("ForConditionalGeneration", Task::Seq2SeqLm),
            ("ForSequenceClassification", Task::SequenceClassification),
            ("ForTokenClassification", Task::TokenClassification),
            ("ForQuestionAnswering", Task::QuestionAnswering),
            ("Model", Task::FeatureExtraction),
        ];
        suffixes.iter().find(|(s, _)| arch.ends_with(s)).map(|(_, t)| *t)
    }

    /// Lower-case name (`causal-lm`, …).
    pub fn name(self) -> &'static str {
        match self {
            Task::CausalLm => "causal-lm",
            Task::Seq2SeqLm => "seq2seq-lm",
            Task::SequenceClassification => "sequence-classification",
            Task::TokenClassification => "token-classification",
            Task::QuestionAnswering => "question-answering",
            Task::FeatureExtraction => "feature-extraction",
        }
    }
}

impl std::fmt::Display for Task {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The inputs of a forward pass.
#[derive(Debug, Default)]
pub struct ModelInputs<'a> {
    /// Token ids `(B, T)`, int64.
    pub input_ids: Option<&'a Tensor>,
    /// 1 for real tokens, 0 for padding, `(B, T)`.
    pub attention_mask: Option<&'a Tensor>,
    /// BERT segment ids `(B, T)`.
    pub token_type_ids: Option<&'a Tensor>,
    /// Explicit positions `(B, T)` (generation with left padding).
    pub position_ids: Option<&'a Tensor>,
    /// Decoder ids `(B, T')` of encoder-decoder models.
    pub decoder_input_ids: Option<&'a Tensor>,
    /// Decoder mask `(B, T')`.
    pub decoder_attention_mask: Option<&'a Tensor>,
}

impl<'a> ModelInputs<'a> {
    /// Just token ids.
    pub fn ids(input_ids: &'a Tensor) -> Self {
        Self { input_ids: Some(input_ids), ..Self::default() }
    }

    /// Token ids with an attention mask.
    pub fn with_mask(input_ids: &'a Tensor, attention_mask: Option<&'a Tensor>) -> Self {
        Self { input_ids: Some(input_ids), attention_mask, ..Self::default() }
    }

    /// The token ids, checked: int64 `(B, T)`.
    ///
    /// # Errors
    /// [`ModelError::Input`] naming what is wrong.
    pub fn checked_ids(&self) -> Result<&'a Tensor> {
        let ids = self.input_ids.ok_or_else(|| ModelError::Input("`input_ids` is required".into()))?;
        if ids.dim() != 2 {
            return Err(ModelError::Input(format!(
                "`input_ids` must be (batch, seq), got shape {:?}",
                ids.size()
            )));
        }
        if ids.kind() != Kind::Int64 {
            return Err(ModelError::Input(format!("`input_ids` must be int64, got {:?}", ids.kind())));
        }
        if let Some(m) = self.attention_mask {
            if m.size() != ids.size() {
                return Err(ModelError::Input(format!(
                    "`attention_mask` has shape {:?}, `input_ids` {:?}",
                    m.size(),
                    ids.size()
                )));
            }
        }
        Ok(ids)
    }
}

/// The heads a decoder-only or encoder backbone can carry, named as transformers names them.
#[derive(Debug, Adaptable)]
pub struct Heads {
    /// `lm_head` (causal LM); may share the input embedding's weight.
    pub lm_head: Option<Linear>,
    /// `score` (Llama/GPT-2 sequence classification, Llama token classification).
    pub score: Option<Linear>,
    /// BERT's `pooler.dense`.
    pub pooler: Option<Linear>,
    /// `classifier` (BERT classification, GPT-2 token classification).
    pub classifier: Option<Linear>,
    /// `qa_outputs` (question answering).
    pub qa_outputs: Option<Linear>,
}

impl Heads {
    /// No heads.
    pub fn none() -> Self {
        Heads { lm_head: None, score: None, pooler: None, classifier: None, qa_outputs: None }
    }

    /// The head a decoder-only model of transformers carries for `task`, on `hidden`-wide states:
    /// `lm_head` (sharing `tied`, the input embedding's weight, when given), a bias-free `score` for
    /// sequence classification, `score` with `token_cls_bias` for token classification, `qa_outputs`
    /// with a bias for question answering; none for the other tasks (each model checks its tasks).
    ///
    /// # Errors
    /// A head that cannot be created under `root`.
    pub fn decoder(
        root: &tch::nn::Path<'_>,
        task: Task,
        dims: DecoderHeadDims,
        tied: Option<&Tensor>,
    ) -> Result<Self> {
        let DecoderHeadDims { hidden, vocab, num_labels, token_cls_bias } = dims;
        let mut heads = Heads::none();
        match task {
            Task::CausalLm => {
                heads.lm_head = Some(match tied {
                    Some(w) => crate::layers::tied_linear("lm_head", w),
                    None => crate::layers::linear(root / "lm_head", hidden, vocab, false)?,
                })
            }
            Task::SequenceClassification => {
                heads.score = Some(crate::layers::linear(root / "score", hidden, num_labels, false)?)
            }
            Task::TokenClassification => {
                heads.score = Some(crate::layers::linear(root / "score", hidden, num_labels, token_cls_bias)?)
            }
            Task::QuestionAnswering => {
                heads.qa_outputs = Some(crate::layers::linear(root / "qa_outputs", hidden, 2, true)?)
            }
            Task::FeatureExtraction | Task::Seq2SeqLm => {}
        }
        Ok(heads)
    }
}

/// The sizes [`Heads::decoder`] needs.
#[derive(Clone, Copy, Debug)]
pub struct DecoderHeadDims {
    /// Width of the final hidden states.
    pub hidden: i64,
    /// Vocabulary size (`lm_head` outputs).
    pub vocab: i64,
    /// Labels of the classification heads.
    pub num_labels: i64,
    /// Whether the token-classification `score` has a bias (Llama's does, Gemma's is configurable).
    pub token_cls_bias: bool,
}

/// Positions `past..past + t` for each of `b` rows: the position ids a decoder uses when the caller
/// gives none.
pub fn default_positions(past: i64, b: i64, t: i64, device: tch::Device) -> Tensor {
    Tensor::arange_start(past, past + t, (Kind::Int64, device)).unsqueeze(0).expand([b, t], false)
}

fn head<'a>(h: &'a Option<Linear>, name: &str) -> Result<&'a Linear> {
    h.as_ref().ok_or_else(|| ModelError::Input(format!("the model has no `{name}` head")))
}

/// Sequence classification of decoders: logits of the last non-padding token (transformers'
/// `GenericForSequenceClassification`: the rightmost token that is not `pad_token_id`, or the last
/// token when there is no pad token).
pub fn last_token_logits(logits: &Tensor, input_ids: &Tensor, pad_token_id: Option<i64>) -> Tensor {
    let (b, t) = (input_ids.size()[0], input_ids.size()[1]);
    let last = match pad_token_id {
        Some(pad) => {
            let non_pad = input_ids.ne(pad).to_kind(Kind::Int);
            let idx = Tensor::arange(t, (Kind::Int, input_ids.device()));
            (idx * non_pad).argmax(-1, false)
        }
        None => Tensor::full([b], t - 1, (Kind::Int64, input_ids.device())),
    };
    let rows = Tensor::arange(b, (Kind::Int64, input_ids.device()));
    logits.index(&[Some(rows), Some(last)])
}

/// Applies the decoder-style head of `task` to the backbone's hidden states.
///
/// # Errors
/// A task the heads do not provide.
pub fn decoder_head(
    heads: &Heads,
    task: Task,
    hidden: &Tensor,
    input_ids: &Tensor,
    pad_token_id: Option<i64>,
    ctx: &ForwardCtx<'_>,
) -> Result<Tensor> {
    Ok(match task {
        Task::CausalLm => head(&heads.lm_head, "lm_head")?.forward_ctx(hidden, ctx),
        Task::SequenceClassification => {
            let logits = head(&heads.score, "score")?.forward_ctx(hidden, ctx);
            last_token_logits(&logits, input_ids, pad_token_id)
        }
        Task::TokenClassification => match (&heads.score, &heads.classifier) {
            (Some(s), _) => s.forward_ctx(hidden, ctx),
            (None, Some(c)) => c.forward_ctx(hidden, ctx),
            _ => return Err(ModelError::Input("the model has no token classification head".into())),
        },
        Task::QuestionAnswering => head(&heads.qa_outputs, "qa_outputs")?.forward_ctx(hidden, ctx),
        Task::FeatureExtraction => hidden.shallow_clone(),
        Task::Seq2SeqLm => return Err(ModelError::Input("seq2seq needs an encoder-decoder model".into())),
    })
}

/// A decoder-only backbone with task heads (Llama family, GPT-2): the shared forward and cache logic.
pub trait DecoderModel {
    /// The backbone's final hidden states `(B, P + T, H)`; appends to `cache` when given. `prefix`
    /// `(B, P, H)` are embeddings placed before those of `input_ids` (prompt learning's virtual tokens:
    /// transformers' `inputs_embeds = cat(prompts, embed(input_ids))`); positions count them.
    fn hidden_states(
        &self,
        input_ids: &Tensor,
        prefix: Option<&Tensor>,
        attention_mask: Option<&Tensor>,
        position_ids: Option<&Tensor>,
        cache: Option<&mut KvCache>,
        ctx: &ForwardCtx<'_>,
    ) -> Tensor;
    /// The heads.
    fn heads(&self) -> &Heads;
    /// The task.
    fn task(&self) -> Task;
    /// `pad_token_id` (sequence classification pools the last non-pad token).
    fn pad_token_id(&self) -> Option<i64>;
    /// Number of layers (the KV cache size).
    fn num_layers(&self) -> usize;

    /// The task output: logits, or hidden states for feature extraction.
    ///
    /// # Errors
    /// A task without a head.
    fn forward(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        position_ids: Option<&Tensor>,
        cache: Option<&mut KvCache>,
        ctx: &ForwardCtx<'_>,
    ) -> Result<Tensor> {
        let h = self.hidden_states(input_ids, None, attention_mask, position_ids, cache, ctx);
        decoder_head(self.heads(), self.task(), &h, input_ids, self.pad_token_id(), ctx)
    }

    /// [`DecoderModel::forward`] with virtual-token embeddings `prefix` `(B, P, H)` before the input's
    /// (`attention_mask`, when given, covers `P + T` positions). Outputs cover every position, virtual ones
    /// included, as transformers' do for `inputs_embeds`; sequence classification pools the last position
    /// (transformers cannot find padding without `input_ids`).
    ///
    /// # Errors
    /// A task without a head.
    fn forward_prompted(
        &self,
        input_ids: &Tensor,
        prefix: &Tensor,
        attention_mask: Option<&Tensor>,
        cache: Option<&mut KvCache>,
        ctx: &ForwardCtx<'_>,
    ) -> Result<Tensor> {
        let h = self.hidden_states(input_ids, Some(prefix), attention_mask, None, cache, ctx);
        match self.task() {
            Task::SequenceClassification => {
                let logits = head(&self.heads().score, "score")?.forward_ctx(&h, ctx);
                Ok(logits.select(1, -1))
            }
            task => decoder_head(self.heads(), task, &h, input_ids, None, ctx),
        }
    }

    /// A KV cache sized for this model.
    fn new_cache(&self) -> KvCache {
        KvCache::new(self.num_layers())
    }
}

/// `pad_token_id` of a config (`None` when null or absent).
pub fn pad_token_id(c: &HfConfig) -> Option<i64> {
    c.opt_i64("pad_token_id").ok().flatten()
}

/// The label value losses ignore (transformers' `-100`).
pub const IGNORE_INDEX: i64 = -100;

/// transformers' causal LM loss: position `t` predicts label `t + 1`; labels equal to −100 are ignored;
/// mean over the rest, in fp32.
pub fn causal_lm_loss(logits: &Tensor, labels: &Tensor) -> Tensor {
    let v = logits.size()[2];
    let shifted = labels.constant_pad_nd([0, 1]).narrow(1, 1, labels.size()[1]);
    // constant_pad_nd pads with 0; the appended position must be ignored instead.
    let last = labels.size()[1] - 1;
    let shifted =
        shifted.index_fill(1, &Tensor::from_slice(&[last]).to_device(labels.device()), IGNORE_INDEX);
    logits.to_kind(Kind::Float).view([-1, v]).cross_entropy_loss::<Tensor>(
        &shifted.reshape([-1]),
        None,
        tch::Reduction::Mean,
        IGNORE_INDEX,
        0.0,
    )
}

/// Cross-entropy of `(…, C)` logits against `(…)` labels, ignoring −100: the loss of sequence
/// classification (single label), token classification and seq2seq LM (labels not shifted).
pub fn cross_entropy_loss(logits: &Tensor, labels: &Tensor) -> Tensor {
    let c = logits.size()[logits.dim() - 1];
    logits.to_kind(Kind::Float).reshape([-1, c]).cross_entropy_loss::<Tensor>(
        &labels.reshape([-1]),
        None,
        tch::Reduction::Mean,
        IGNORE_INDEX,
        0.0,
    )
}
