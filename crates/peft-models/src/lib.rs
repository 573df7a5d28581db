//! HF-compatible architectures for peft-rs, with transformers' parameter names.
//!
//! * Llama family ([`llama`]: Llama incl. llama3 RoPE scaling, Mistral, Qwen2, Qwen3), Phi-3 ([`phi3`],
//!   fused projections, LongRoPE), GPT-2 ([`gpt2`], `Conv1D` layers with `fan_in_fan_out`), BERT
//!   ([`bert`], covers MiniLM, RoBERTa and XLM-RoBERTa), T5 ([`t5`]).
//! * [`HfModel::load`] reads a local HF directory (`config.json` + `model.safetensors` or a sharded
//!   index) or a hub model id through the local HF cache ([`hub`]), in f32/bf16/f16, on CPU or CUDA,
//!   for a [`Task`]: causal LM, seq2seq LM, sequence/token classification, question answering, feature
//!   extraction.
//! * Every linear layer is a `peft_core` adaptable layer named as in transformers
//!   (`model.layers.0.self_attn.q_proj`), so `PeftModel` attaches adapters trained with Python PEFT and
//!   the files line up; [`auto`] builds the right model for an adapter directory (PEFT's
//!   `AutoPeftModel`).
//! * [`generate`]: greedy and sampled decoding with a KV cache; [`tokenizer`]: `tokenizer.json`.

// `a = a + b` on tch tensors allocates a new tensor; `a += b` would write in place into a tensor that
// autograd may still need for the backward pass (e.g. a residual stream that fed a norm).
#![allow(clippy::assign_op_pattern)]

pub mod attention;
pub mod auto;
pub mod bert;
pub mod config;
pub mod error;
pub mod gemma;
pub mod generate;
pub mod gguf;
pub mod gguf_tokenizer;
pub mod gpt2;
pub mod hub;
pub mod inputs;
pub mod layers;
pub mod llama;
pub mod opt;
pub mod phi3;
pub mod quantized;
pub mod t5;
pub mod task;
pub mod tokenizer;
pub mod weights;

pub use config::HfConfig;
pub use error::{ModelError, Result};
pub use inputs::InputLimits;
pub use task::{ModelInputs, Task};

use attention::KvCache;
use peft_core::{Adaptable, AdaptableLayer, ForwardCtx};
use std::path::{Path, PathBuf};
use task::DecoderModel;
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

peft_core::impl_no_layers!(
    layers::Embedding,
    layers::LayerNorm,
    layers::RmsNorm,
    layers::Rotary,
    Task,
    llama::LlamaArgs,
    phi3::Phi3Args,
    gpt2::Gpt2Args,
    bert::BertArgs,
    t5::T5Args,
);

/// Every supported `model_type`.
pub const SUPPORTED_MODEL_TYPES: &[&str] = &[
    "llama",
    "mistral",
    "qwen2",
    "gpt2",
    "bert",
    "t5",
    "qwen3",
    "phi3",
    "roberta",
    "xlm-roberta",
    "gemma2",
    "gemma3_text",
    "opt",
];

pub(crate) fn unsupported_task(model_type: &str, task: Task, tasks: &[Task]) -> ModelError {
    ModelError::UnsupportedTask {
        model_type: model_type.to_string(),
        task: task.to_string(),
        available: tasks.iter().map(|t| t.name()).collect::<Vec<_>>().join(", "),
    }
}

/// How to load a model.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Parameter dtype (`Float`, `BFloat16`, `Half`).
    pub kind: Kind,
    /// Device.
    pub device: Device,
    /// Hub revision (branch, tag or commit) for model ids.
    pub revision: Option<String>,
    /// Override the number of labels of a classification head.
    pub num_labels: Option<i64>,
    /// Quantize the linear layers on load (`load_in_4bit` / `load_in_8bit`); checkpoints saved already
    /// quantized (a bitsandbytes `quantization_config` in config.json) are loaded quantized regardless.
    pub quantize: Option<peft_quant::QuantizeSpec>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self { kind: Kind::Float, device: Device::Cpu, revision: None, num_labels: None, quantize: None }
    }
}

#[derive(Debug)]
enum Arch {
    Llama(Box<llama::Llama>),
    Phi3(Box<phi3::Phi3>),
    Gpt2(Box<gpt2::Gpt2>),
    Gemma(Box<gemma::Gemma>),
    Opt(Box<opt::Opt>),
    Bert(Box<bert::Bert>),
    T5(Box<t5::T5>),
}

/// An HF model for one task, loaded from a checkpoint.
#[derive(Debug)]
pub struct HfModel {
    arch: Arch,
    task: Task,
    config: HfConfig,
    dir: PathBuf,
    fresh: Vec<String>,
}

/// Result of [`HfModel::load`]: the model and the var store holding its weights (pass both to
/// `peft_core::PeftModel`).
#[derive(Debug)]
pub struct Loaded {
    /// The model.
    pub model: HfModel,
    /// Its weights.
    pub vs: VarStore,
}

fn default_task(config: &HfConfig, model_type: &str) -> Task {
    config.architectures().first().and_then(|a| Task::from_architecture(a)).unwrap_or(match model_type {
        "bert" | "roberta" | "xlm-roberta" => Task::FeatureExtraction,
        "t5" => Task::Seq2SeqLm,
        _ => Task::CausalLm,
    })
}

impl HfModel {
    /// Loads `model` (a directory, a `.gguf` file or a hub model id) for `task` (default: from the config's
    /// `architectures`).
    ///
    /// # Errors
    /// Unresolvable model, unsupported `model_type` or task, missing/unexpected/misshapen weights —
    /// each naming the file.
    pub fn load(model: &str, task: Option<Task>, options: &LoadOptions) -> Result<Loaded> {
        let path = hub::resolve(model, options.revision.as_deref())?;
        Self::load_path(&path, task, options)
    }

    /// Loads a Llama-family GGUF file (`llama`, `mistral`, `qwen2`) as transformers'
    /// `from_pretrained(dir, gguf_file=…)` does: config from the metadata, every tensor dequantized as the
    /// `gguf` package does (see [`gguf`]).
    ///
    /// # Errors
    /// A malformed file, an architecture peft-rs does not load, or weights that do not fit the config.
    pub fn load_gguf(path: &Path, task: Option<Task>, options: &LoadOptions) -> Result<Loaded> {
        let file = peft_gguf::Gguf::open(path)?;
        let config = gguf::config(&file)?;
        Self::build(config, path, &Default::default(), task, options, Some(&file))
    }

    /// Loads from a local directory or a `.gguf` file.
    ///
    /// # Errors
    /// As [`HfModel::load`].
    pub fn load_path(path: &Path, task: Option<Task>, options: &LoadOptions) -> Result<Loaded> {
        if gguf::is_gguf(path) {
            Self::load_gguf(path, task, options)
        } else {
            Self::load_dir(path, task, options)
        }
    }

    /// Loads from a local directory.
    ///
    /// # Errors
    /// As [`HfModel::load`].
    pub fn load_dir(dir: &Path, task: Option<Task>, options: &LoadOptions) -> Result<Loaded> {
        let config = HfConfig::from_dir(dir)?;
        let ckpt_keys = weights::checkpoint_keys(dir)?;
        Self::build(config, dir, &ckpt_keys, task, options, None)
    }

    /// The model of `config`, filled from the safetensors checkpoint in `dir` or from `gguf`.
    fn build(
        config: HfConfig,
        dir: &Path,
        ckpt_keys: &std::collections::BTreeSet<String>,
        task: Option<Task>,
        options: &LoadOptions,
        gguf: Option<&peft_gguf::Gguf>,
    ) -> Result<Loaded> {
        let model_type = config.model_type()?.to_string();
        let task = task.unwrap_or_else(|| default_task(&config, &model_type));
        let num_labels = options.num_labels.unwrap_or_else(|| config.num_labels());
        let mut vs = VarStore::new(options.device);
        vs.set_kind(options.kind);
        let root = vs.root();
        let (arch, spec) = match model_type.as_str() {
            "llama" | "mistral" | "qwen2" | "qwen3" => {
                let args = llama::LlamaArgs::from_config(&config)?;
                let tied = args.tie_word_embeddings;
                let m = llama::Llama::new(&root, args, task, num_labels)?;
                (
                    Arch::Llama(Box::new(m)),
                    decoder_spec(llama::prefix(task), tied, task, llama::IGNORED_SUFFIXES),
                )
            }
            "gpt2" => {
                let args = gpt2::Gpt2Args::from_config(&config)?;
                let m = gpt2::Gpt2::new(&root, args, task, num_labels)?;
                (
                    Arch::Gpt2(Box::new(m)),
                    decoder_spec(gpt2::prefix(task), true, task, gpt2::IGNORED_SUFFIXES),
                )
            }
            "phi3" => {
                let args = phi3::Phi3Args::from_config(&config)?;
                let tied = args.tie_word_embeddings;
                let m = phi3::Phi3::new(&root, args, task, num_labels)?;
                (
                    Arch::Phi3(Box::new(m)),
                    decoder_spec(phi3::prefix(task), tied, task, phi3::IGNORED_SUFFIXES),
                )
            }
            "bert" | "roberta" | "xlm-roberta" => {
                let args = bert::BertArgs::from_config(&config)?;
                let spec = bert::load_spec(&args, task);
                let m = bert::Bert::new(&root, args, task, num_labels)?;
                (Arch::Bert(Box::new(m)), spec)
            }
            "gemma2" | "gemma3_text" => {
                let args = gemma::GemmaArgs::from_config(&config)?;
                let tied = args.tie_word_embeddings;
                let m = gemma::Gemma::new(&root, args, task, num_labels)?;
                (
                    Arch::Gemma(Box::new(m)),
                    decoder_spec(gemma::prefix(task), tied, task, gemma::IGNORED_SUFFIXES),
                )
            }
            "opt" => {
                let args = opt::OptArgs::from_config(&config)?;
                let tied = args.tie_word_embeddings;
                let m = opt::Opt::new(&root, args, task, num_labels)?;
                (Arch::Opt(Box::new(m)), decoder_spec(opt::prefix(task), tied, task, &[]))
            }
            "t5" => {
                let args = t5::T5Args::from_config(&config)?;
                let m = t5::T5::new(&root, args, task, ckpt_keys.contains("lm_head.weight"))?;
                (Arch::T5(Box::new(m)), t5::load_spec())
            }
            other => {
                return Err(ModelError::UnsupportedModelType {
                    path: config.path().to_path_buf(),
                    model_type: other.to_string(),
                    supported: SUPPORTED_MODEL_TYPES.join(", "),
                })
            }
        };
        let mut spec = spec;
        let prequantized = match gguf {
            Some(_) => None,
            None => quantized::Prequantized::scan(dir, &config, &vs, &spec)?,
        };
        if let Some(pq) = &prequantized {
            pq.adjust_spec(&mut spec);
        }
        let mut model = HfModel { arch, task, config, dir: dir.to_path_buf(), fresh: Vec::new() };
        // Quantize on load layer by layer: each weight is converted and its dense storage released right
        // after it is read, so the dense model never exists in full.
        let quantize = options.quantize.filter(|_| prequantized.is_none());
        let targets = match &quantize {
            Some(_) => quantized::quantizable_weights(&model),
            None => Default::default(),
        };
        let mut storages = std::collections::BTreeMap::new();
        let mut after = |name: &str, var: &Tensor| {
            let (Some(q), Some(layer)) = (&quantize, targets.get(name)) else { return Ok(()) };
            let storage = q
                .quantize(&var.detach())
                .map_err(|e| ModelError::Input(format!("quantizing `{name}`: {e}")))?;
            quantized::release(var)?;
            storages.insert(layer.clone(), storage);
            Ok(())
        };
        let info = match gguf {
            Some(file) => {
                let tensors = gguf::tensors(file, &model.config)?;
                weights::load_tensors_with(&vs, dir, &spec, tensors, &mut after)?
            }
            None => weights::load_checkpoint_with(&vs, dir, &spec, &mut after)?,
        };
        if !info.newly_initialized.is_empty() {
            let std = model.config.f64_or("initializer_range", 0.02)?;
            init_new_heads(&vs, &info.newly_initialized, std)?;
            model.fresh = info.newly_initialized;
        }
        if let Some(pq) = prequantized {
            pq.install(&mut model)?;
        } else if quantize.is_some() {
            let n = storages.len();
            peft_quant::install_quantized(&mut model, storages)
                .map_err(|e| ModelError::Input(e.to_string()))?;
            log::info!("quantized {n} linear layers on load");
        }
        Ok(Loaded { model, vs })
    }

    /// The task.
    pub fn task(&self) -> Task {
        self.task
    }

    /// `config.json`.
    pub fn config(&self) -> &HfConfig {
        &self.config
    }

    /// The task-head weights the checkpoint lacked, freshly initialised as transformers' `_init_weights`
    /// does (e.g. `classifier.weight` of a sequence classifier made from a base model): random until
    /// trained or loaded from an adapter (`modules_to_save`).
    pub fn fresh_weights(&self) -> &[String] {
        &self.fresh
    }

    /// The directory the model was loaded from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `model_type`.
    pub fn model_type_name(&self) -> &str {
        self.config.model_type().unwrap_or("")
    }

    /// The task output: logits `(B, T, V)` for causal LMs (decoder logits for seq2seq), `(B, labels)`
    /// for sequence classification, `(B, T, labels)` for token classification, `(B, T, 2)` start/end
    /// logits for question answering, the last hidden state `(B, T, H)` for feature extraction.
    ///
    /// # Errors
    /// Malformed inputs (shapes, dtypes, a missing decoder input).
    pub fn forward(&self, inputs: &ModelInputs<'_>, ctx: &ForwardCtx<'_>) -> Result<Tensor> {
        let ids = inputs.check(&self.input_limits(), 0)?;
        match &self.arch {
            Arch::Llama(m) => m.forward(ids, inputs.attention_mask, inputs.position_ids, None, ctx),
            Arch::Phi3(m) => m.forward(ids, inputs.attention_mask, inputs.position_ids, None, ctx),
            Arch::Gpt2(m) => m.forward(ids, inputs.attention_mask, inputs.position_ids, None, ctx),
            Arch::Gemma(m) => m.forward(ids, inputs.attention_mask, inputs.position_ids, None, ctx),
            Arch::Opt(m) => m.forward(ids, inputs.attention_mask, inputs.position_ids, None, ctx),
            Arch::Bert(m) => m.forward(ids, inputs.attention_mask, inputs.token_type_ids, ctx),
            Arch::T5(m) => {
                let dec = inputs
                    .decoder_input_ids
                    .ok_or_else(|| ModelError::Input("T5 needs `decoder_input_ids`".into()))?;
                let enc = m.encode(ids, inputs.attention_mask, ctx);
                Ok(m.decode(dec, inputs.decoder_attention_mask, &enc, inputs.attention_mask, None, ctx))
            }
        }
    }

    /// What the model's embeddings can take (checked before every forward pass and decoding step).
    pub fn input_limits(&self) -> InputLimits {
        match &self.arch {
            Arch::Llama(m) => m.input_limits(),
            Arch::Phi3(m) => m.input_limits(),
            Arch::Gpt2(m) => m.input_limits(),
            Arch::Gemma(m) => m.input_limits(),
            Arch::Opt(m) => m.input_limits(),
            Arch::Bert(m) => m.input_limits(),
            Arch::T5(m) => m.input_limits(),
        }
    }

    /// The decoder-only view (Llama family, GPT-2).
    pub fn decoder(&self) -> Option<&dyn DecoderModel> {
        match &self.arch {
            Arch::Llama(m) => Some(m.as_ref()),
            Arch::Phi3(m) => Some(m.as_ref()),
            Arch::Gpt2(m) => Some(m.as_ref()),
            Arch::Gemma(m) => Some(m.as_ref()),
            Arch::Opt(m) => Some(m.as_ref()),
            _ => None,
        }
    }

    /// A fresh KV cache (decoder-only models and T5's decoder).
    pub fn new_cache(&self) -> KvCache {
        match (&self.arch, self.decoder()) {
            (_, Some(d)) => d.new_cache(),
            (Arch::T5(m), _) => m.new_cache(),
            _ => KvCache::new(0),
        }
    }

    /// One decoding step of a causal LM with a KV cache: logits `(B, T, V)` of the new tokens.
    /// `attention_mask` covers cached and new positions `(B, past + T)`.
    ///
    /// # Errors
    /// Models that are not causal LMs.
    pub fn step(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        position_ids: Option<&Tensor>,
        cache: &mut KvCache,
        ctx: &ForwardCtx<'_>,
    ) -> Result<Tensor> {
        let inputs = ModelInputs { position_ids, ..ModelInputs::ids(input_ids) };
        inputs.check(&self.input_limits(), cache.len())?;
        match (&self.arch, self.task) {
            (Arch::Llama(m), Task::CausalLm) => {
                m.forward(input_ids, attention_mask, position_ids, Some(cache), ctx)
            }
            (Arch::Phi3(m), Task::CausalLm) => {
                m.forward(input_ids, attention_mask, position_ids, Some(cache), ctx)
            }
            (Arch::Gpt2(m), Task::CausalLm) => {
                m.forward(input_ids, attention_mask, position_ids, Some(cache), ctx)
            }
            (Arch::Gemma(m), Task::CausalLm) => {
                m.forward(input_ids, attention_mask, position_ids, Some(cache), ctx)
            }
            (Arch::Opt(m), Task::CausalLm) => {
                m.forward(input_ids, attention_mask, position_ids, Some(cache), ctx)
            }
            _ => Err(ModelError::Input(format!(
                "step() needs a causal LM, this is {} for {}",
                self.model_type_name(),
                self.task
            ))),
        }
    }

    /// The T5 model, for seq2seq generation.
    pub fn as_t5(&self) -> Option<&t5::T5> {
        match &self.arch {
            Arch::T5(m) => Some(m.as_ref()),
            _ => None,
        }
    }
}

fn decoder_spec(prefix: Option<&str>, tied: bool, task: Task, ignored: &[&str]) -> weights::LoadSpec {
    let mut ignore_keys = vec![];
    let mut optional = vec![];
    // Heads of other tasks in the checkpoint are not used (transformers drops them with a warning);
    // a head of this task missing from the checkpoint is freshly initialised.
    for head in [
        "lm_head.weight",
        "score.weight",
        "score.bias",
        "qa_outputs.weight",
        "qa_outputs.bias",
        "classifier.weight",
        "classifier.bias",
    ] {
        ignore_keys.push(head.to_string());
    }
    match task {
        Task::CausalLm if !tied => ignore_keys.retain(|k| k != "lm_head.weight"),
        Task::SequenceClassification | Task::TokenClassification | Task::QuestionAnswering => {
            for h in ["score", "qa_outputs", "classifier"] {
                for p in ["weight", "bias"] {
                    optional.push(format!("{h}.{p}"));
                }
            }
            let keep = |k: &String| !optional.contains(k);
            ignore_keys.retain(keep);
        }
        _ => {}
    }
    weights::LoadSpec {
        prefix: prefix.map(str::to_string),
        ignore_suffixes: ignored.iter().map(|s| s.to_string()).collect(),
        ignore_keys,
        ignore_prefixes: vec![],
        optional,
        provided_elsewhere: vec![],
    }
}

/// transformers' `_init_weights` for heads the checkpoint lacks: normal(0, initializer_range) weights,
/// zero biases.
fn init_new_heads(vs: &VarStore, names: &[String], std: f64) -> Result<()> {
    let vars = vs.variables();
    for n in names {
        if let Some(t) = vars.get(n) {
            let mut t = t.shallow_clone();
            let r = if n.ends_with(".bias") {
                tch::no_grad(|| t.f_zero_())
            } else {
                tch::no_grad(|| t.f_normal_(0.0, std))
            };
            r.map(drop).map_err(ModelError::torch(format!("initialising `{n}`")))?;
        }
    }
    Ok(())
}

/// PEFT's `replicate_layers`: the layers of `map`'s `[start, end)` ranges, in order, each a weight-sharing
/// copy named by its new index.
pub(crate) fn replicate<L>(
    layers: &[L],
    map: &[(usize, usize)],
    copy: impl Fn(&L, usize, usize) -> L,
) -> peft_core::Result<Vec<L>> {
    let mut out = Vec::new();
    for &(start, end) in map {
        if end > layers.len() || start >= end {
            return Err(peft_core::PeftError::Invalid(format!(
                "layer_replication range [{start}, {end}) does not fit the model's {} layers",
                layers.len()
            )));
        }
        for (i, layer) in layers.iter().enumerate().take(end).skip(start) {
            out.push(copy(layer, i, out.len()));
        }
    }
    Ok(out)
}

impl Adaptable for HfModel {
    fn visit_layers(&self, f: &mut dyn FnMut(&dyn AdaptableLayer)) {
        match &self.arch {
            Arch::Llama(m) => m.visit_layers(f),
            Arch::Phi3(m) => m.visit_layers(f),
            Arch::Gpt2(m) => m.visit_layers(f),
            Arch::Gemma(m) => m.visit_layers(f),
            Arch::Opt(m) => m.visit_layers(f),
            Arch::Bert(m) => m.visit_layers(f),
            Arch::T5(m) => m.visit_layers(f),
        }
    }

    fn visit_layers_mut(
        &mut self,
        f: &mut dyn FnMut(&mut dyn AdaptableLayer) -> peft_core::Result<()>,
    ) -> peft_core::Result<()> {
        match &mut self.arch {
            Arch::Llama(m) => m.visit_layers_mut(f),
            Arch::Phi3(m) => m.visit_layers_mut(f),
            Arch::Gpt2(m) => m.visit_layers_mut(f),
            Arch::Gemma(m) => m.visit_layers_mut(f),
            Arch::Opt(m) => m.visit_layers_mut(f),
            Arch::Bert(m) => m.visit_layers_mut(f),
            Arch::T5(m) => m.visit_layers_mut(f),
        }
    }

    fn output_embedding(&self) -> Option<String> {
        matches!(self.task, Task::CausalLm | Task::Seq2SeqLm).then(|| "lm_head".to_string())
    }

    fn model_type(&self) -> Option<String> {
        self.config.model_type().ok().map(str::to_string)
    }

    fn input_embedding(&self) -> Option<String> {
        let suffix = match &self.arch {
            Arch::Llama(_) | Arch::Phi3(_) => "embed_tokens",
            Arch::Gpt2(_) => "wte",
            Arch::Gemma(_) | Arch::Opt(_) => "embed_tokens",
            Arch::Bert(_) => "word_embeddings",
            Arch::T5(_) => "shared",
        };
        let mut found = None;
        self.visit_layers(&mut |l| {
            if found.is_none() && (l.name() == suffix || l.name().ends_with(&format!(".{suffix}"))) {
                found = Some(l.name().to_string());
            }
        });
        found
    }

    fn replicate_layers(&mut self, map: &[(usize, usize)]) -> peft_core::Result<()> {
        match &mut self.arch {
            Arch::Llama(m) => m.replicate_blocks(map),
            Arch::Phi3(m) => m.replicate_blocks(map),
            Arch::Gpt2(m) => m.replicate_blocks(map),
            Arch::Gemma(m) => m.replicate_blocks(map),
            Arch::Opt(m) => m.replicate_blocks(map),
            Arch::Bert(m) => m.replicate_blocks(map),
            Arch::T5(_) => Err(peft_core::PeftError::Invalid(
                "Could not locate the layers attribute in the model. Expected Llama, Bert or Falcon compatible \
                 architectures (T5 has none)."
                    .into(),
            )),
        }
    }

    fn tied_with_input_embedding(&self) -> Vec<String> {
        // A head is tied when it computes with the embedding's very storage.
        let Some(input) = self.input_embedding() else { return Vec::new() };
        let mut ptrs: Vec<(String, usize)> = Vec::new();
        self.visit_layers(&mut |l| {
            if let Some(w) = l.base().as_weighted() {
                ptrs.push((l.name().to_string(), w.weight().data_ptr() as usize));
            }
        });
        let Some(&(_, emb)) = ptrs.iter().find(|(n, _)| *n == input) else { return Vec::new() };
        ptrs.into_iter().filter(|(n, p)| *p == emb && *n != input).map(|(n, _)| n).collect()
    }

    fn auto_mapping(&self) -> Option<serde_json::Value> {
        let class = self.config.architectures().into_iter().next()?;
        let mt = self.config.model_type().ok()?;
        Some(serde_json::json!({
            "base_model_class": class,
            "parent_library": format!("transformers.models.{mt}.modeling_{mt}"),
        }))
    }
}
