//! [`PromptModel`]: an HF causal LM with a prompt-learning adapter — PEFT's `PeftModelForCausalLM` for
//! prompt tuning, P-tuning and prefix tuning.

use crate::config::{EncoderType, PromptConfig, PromptTuningInit};
use crate::encoder::{self, PromptEncoder};
use peft_core::peft_config::keys::{CONFIG_NAME, SAFETENSORS_WEIGHTS_NAME};
use peft_core::peft_config::TaskType;
use peft_core::{io, ForwardCtx, LoadOptions, PeftError, Result};
use peft_models::attention::KvCache;
use peft_models::task::{causal_lm_loss, DecoderModel, IGNORE_INDEX};
use peft_models::{HfModel, Loaded, ModelInputs, Task};
use std::path::Path;
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

/// The name of the single tensor a prompt-learning adapter file holds.
pub const PROMPT_EMBEDDINGS: &str = "prompt_embeddings";

/// An HF decoder-only causal LM (Llama family, GPT-2) with a prompt-learning adapter, as PEFT's
/// `PeftModelForCausalLM` runs one:
///
/// * prompt tuning and P-tuning: the prompt `(n, d)` is placed before the input's token embeddings,
///   the attention mask gets `n` leading ones, labels `n` leading `-100`; the logits cover the virtual
///   positions too (`(B, n + T, V)`), as transformers returns them;
/// * prefix tuning: the prefix `(n, 2·L·d)` becomes each layer's past keys and values (`(B, heads, n,
///   head_dim)`), the mask gets `n` leading ones and positions start at `n`; logits are `(B, T, V)`.
///
/// The base model is frozen; the encoder's parameters live in [`PromptModel::adapter_var_store`]. Files are
/// PEFT's: `adapter_config.json` (with the sizes filled from the model) and one tensor,
/// `prompt_embeddings`, the encoder's output.
#[derive(Debug)]
pub struct PromptModel {
    model: HfModel,
    base_vs: VarStore,
    vs: VarStore,
    config: PromptConfig,
    adapter: String,
    encoder: PromptEncoder,
    /// The virtual tokens `0..n·submodules`, `(1, n)`.
    tokens: Tensor,
}

fn filled(value: Option<i64>, keys: &[&str], model: &HfModel, what: &str) -> Result<i64> {
    if let Some(v) = value {
        return Ok(v);
    }
    for k in keys {
        if let Some(v) = model.config().opt_i64(k).map_err(|e| PeftError::Invalid(e.to_string()))? {
            return Ok(v);
        }
    }
    Err(PeftError::Invalid(format!("Please specify `{what}` in `peft_config`")))
}

/// PEFT's `_prepare_prompt_learning_config`: sizes the config leaves unset, from the model's `config.json`.
fn prepare(config: &mut PromptConfig, model: &HfModel) -> Result<()> {
    let seq2seq = config.as_adapter_config().common().task_type == Some(TaskType::Seq2SeqLm);
    let prefix = matches!(config, PromptConfig::PrefixTuning(_));
    let p = config.prompt_mut();
    p.num_layers =
        Some(filled(p.num_layers, &["num_hidden_layers", "num_layers", "n_layer"], model, "num_layers")?);
    p.token_dim = Some(filled(p.token_dim, &["hidden_size", "n_embd", "d_model"], model, "token_dim")?);
    p.num_attention_heads = Some(filled(
        p.num_attention_heads,
        &["num_attention_heads", "n_head", "num_heads", "encoder_attention_heads"],
        model,
        "num_attention_heads",
    )?);
    let cfg = model.config();
    let kv_heads = cfg.opt_i64("num_key_value_heads").map_err(|e| PeftError::Invalid(e.to_string()))?;
    if let (true, Some(kv)) = (prefix, kv_heads) {
        // Grouped-query attention: the prefix holds the key/value heads.
        let head_dim = match cfg.opt_i64("head_dim").map_err(|e| PeftError::Invalid(e.to_string()))? {
            Some(h) => h,
            None => p.token_dim.unwrap_or(0) / p.num_attention_heads.unwrap_or(1),
        };
        p.token_dim = Some(head_dim * kv);
        p.num_attention_heads = Some(kv);
    }
    let token_dim = p.token_dim;
    if p.num_transformer_submodules.is_none() {
        p.num_transformer_submodules = Some(if seq2seq { 2 } else { 1 });
    }
    match config {
        PromptConfig::PTuning(c) if c.encoder_hidden_size.is_none() => c.encoder_hidden_size = token_dim,
        PromptConfig::PrefixTuning(c) if c.encoder_hidden_size.is_none() => c.encoder_hidden_size = token_dim,
        _ => {}
    }
    Ok(())
}

fn decoder(model: &HfModel) -> Result<&dyn DecoderModel> {
    match (model.decoder(), model.task()) {
        (Some(d), Task::CausalLm) => Ok(d),
        _ => Err(PeftError::Invalid(format!(
            "prompt learning is implemented for decoder-only causal LMs (Llama family, GPT-2); this is a {:?} {}",
            model.task(),
            model.model_type_name()
        ))),
    }
}

impl PromptModel {
    /// Adds a new prompt-learning adapter to `loaded` (PEFT's `get_peft_model` with a prompt-learning
    /// config), drawing its parameters from libtorch's global generator as PEFT does; the base model is
    /// frozen.
    ///
    /// # Errors
    /// A model that is not a decoder-only causal LM, a config missing `num_virtual_tokens`, an init
    /// peft-rs does not implement.
    pub fn new(loaded: Loaded, config: impl Into<PromptConfig>, adapter: &str) -> Result<Self> {
        let mut config = config.into();
        let Loaded { model, vs: base_vs } = loaded;
        decoder(&model)?;
        prepare(&mut config, &model)?;
        let vs = VarStore::new(Device::Cpu);
        let encoder = Self::build_encoder(&config, &model, &base_vs, &vs, adapter)?;
        Self::assemble(model, base_vs, vs, config, adapter, encoder)
    }

    fn assemble(
        model: HfModel,
        mut base_vs: VarStore,
        mut vs: VarStore,
        config: PromptConfig,
        adapter: &str,
        encoder: PromptEncoder,
    ) -> Result<Self> {
        base_vs.freeze();
        let p = config.prompt();
        let n = p.virtual_tokens()? * p.num_transformer_submodules.unwrap_or(1);
        let device = base_vs.root().device();
        if device != Device::Cpu {
            vs.set_device(device);
        }
        let tokens = Tensor::arange(n, (Kind::Int64, device)).unsqueeze(0);
        if config.as_adapter_config().common().inference_mode {
            vs.freeze();
        }
        Ok(Self { model, base_vs, vs, config, adapter: adapter.to_string(), encoder, tokens })
    }

    fn build_encoder(
        config: &PromptConfig,
        model: &HfModel,
        base_vs: &VarStore,
        vs: &VarStore,
        adapter: &str,
    ) -> Result<PromptEncoder> {
        let path = vs.root() / "prompt_encoder" / adapter;
        let p = config.prompt();
        let nvt = p.virtual_tokens()?;
        let total = nvt * p.num_transformer_submodules.unwrap_or(1);
        let d = p.token_dim.unwrap_or(0);
        match config {
            PromptConfig::PromptTuning(c) => {
                let mut weight = encoder::embedding(total, d)?;
                match c.prompt_tuning_init {
                    PromptTuningInit::Random => {}
                    PromptTuningInit::SampleVocab => {
                        let (words, vocab) = Self::word_embeddings(model, base_vs)?;
                        let ids = Tensor::randint(vocab, [total], (Kind::Int64, Device::Cpu));
                        weight = Tensor::embedding(&words.to_device(Device::Cpu), &ids, -1, false, false)
                            .detach()
                            .to_kind(Kind::Float);
                    }
                    PromptTuningInit::Text => {
                        return Err(peft_core::config::unsupported_option(
                            crate::config::PROMPT_TUNING,
                            "prompt_tuning_init",
                            &serde_json::Value::from("TEXT"),
                            "initialisation from a text is not implemented in peft-rs yet (use RANDOM or SAMPLE_VOCAB)",
                        ))
                    }
                }
                Ok(PromptEncoder::embedding_only(&path, weight))
            }
            PromptConfig::PTuning(c) => {
                let h = c.encoder_hidden_size.unwrap_or(d);
                match c.encoder_reparameterization_type {
                    EncoderType::Mlp => PromptEncoder::mlp(&path, total, d, h),
                    EncoderType::Lstm => {
                        PromptEncoder::lstm(&path, total, d, h, c.encoder_num_layers, c.encoder_dropout)
                    }
                }
            }
            PromptConfig::PrefixTuning(c) => {
                let out = p.num_layers.unwrap_or(0) * 2 * d;
                let zero = c.init_weights.as_deref() == Some("zero");
                if c.prefix_projection {
                    PromptEncoder::prefix_projection(
                        &path,
                        nvt,
                        d,
                        c.encoder_hidden_size.unwrap_or(d),
                        out,
                        zero,
                    )
                } else {
                    let mut weight = encoder::embedding(nvt, out)?;
                    if zero {
                        peft_core::init::zeros_(&mut weight)?;
                    }
                    Ok(PromptEncoder::embedding_only(&path, weight))
                }
            }
        }
    }

    /// The input word embeddings `(V, d)` and the vocabulary size.
    fn word_embeddings(model: &HfModel, base_vs: &VarStore) -> Result<(Tensor, i64)> {
        use peft_core::Adaptable;
        let name = model
            .input_embedding()
            .ok_or_else(|| PeftError::Invalid("the model has no input embedding".into()))?;
        let vars = base_vs.variables();
        let w = vars
            .get(&format!("{name}.weight"))
            .ok_or_else(|| PeftError::Invalid(format!("no `{name}.weight` among the model's weights")))?;
        let vocab = w.size()[0];
        Ok((w.shallow_clone(), vocab))
    }

    /// Loads the prompt-learning adapter saved in `dir` (by PEFT or peft-rs) onto `loaded` (PEFT's
    /// `PeftModel.from_pretrained`). For inference the saved prompt is used as it is; loading for
    /// training is possible for prompt tuning and prefix tuning without projection, whose parameter is
    /// the prompt itself.
    ///
    /// # Errors
    /// A config of another method, a file whose `prompt_embeddings` does not fit the config and model
    /// (naming the key and shapes), or training asked of an adapter whose encoder the file does not hold.
    pub fn from_pretrained(loaded: Loaded, dir: impl AsRef<Path>, options: LoadOptions) -> Result<Self> {
        let dir = dir.as_ref();
        let mut warnings = Vec::new();
        let any = peft_core::registry::load_config(dir, &mut warnings)?;
        for w in &warnings {
            log::warn!("{w}");
        }
        let mut config = PromptConfig::from_adapter_config(any.as_ref())?;
        let encoded = match &config {
            PromptConfig::PTuning(_) => true,
            PromptConfig::PrefixTuning(c) => c.prefix_projection,
            PromptConfig::PromptTuning(_) => false,
        };
        if options.is_trainable && encoded {
            return Err(PeftError::Invalid(format!(
                "{}: a {} file holds the encoder's output, not the encoder: it loads for inference only (PEFT \
                 would train a freshly drawn encoder on top of the saved prompt)",
                dir.display(),
                config.peft_type()
            )));
        }
        config.as_adapter_config_mut().common_mut().inference_mode = !options.is_trainable;
        let Loaded { model, vs: base_vs } = loaded;
        decoder(&model)?;
        prepare(&mut config, &model)?;
        let path = dir.join(SAFETENSORS_WEIGHTS_NAME);
        let file = io::read_safetensors(&path)?;
        let mut saved = None;
        let mut unexpected = Vec::new();
        for lt in file {
            if lt.key == PROMPT_EMBEDDINGS {
                saved = Some(lt.tensor);
            } else {
                unexpected.push(lt.key);
            }
        }
        if !unexpected.is_empty() {
            return Err(PeftError::UnexpectedKeys { path, keys: unexpected });
        }
        let saved = saved.ok_or_else(|| PeftError::MissingKeys {
            path: path.clone(),
            keys: vec![PROMPT_EMBEDDINGS.into()],
        })?;
        let p = config.prompt();
        let rows = if config.is_embedding_prompt() {
            p.virtual_tokens()? * p.num_transformer_submodules.unwrap_or(1)
        } else {
            p.virtual_tokens()?
        };
        let cols = if config.is_embedding_prompt() {
            p.token_dim.unwrap_or(0)
        } else {
            p.num_layers.unwrap_or(0) * 2 * p.token_dim.unwrap_or(0)
        };
        if saved.size() != [rows, cols] {
            return Err(PeftError::ShapeMismatch {
                path,
                key: PROMPT_EMBEDDINGS.into(),
                expected: vec![rows, cols],
                found: saved.size(),
            });
        }
        let vs = VarStore::new(Device::Cpu);
        let weight = saved.to_kind(Kind::Float);
        let adapter = options.adapter_name.clone();
        let encoder =
            PromptEncoder::embedding_only(&(vs.root() / "prompt_encoder" / adapter.as_str()), weight);
        Self::assemble(model, base_vs, vs, config, &adapter, encoder)
    }

    /// Saves `adapter_config.json` (sizes filled, `inference_mode: true`) and `adapter_model.safetensors`
    /// holding `prompt_embeddings`, the encoder's output, as PEFT does (atomically).
    ///
    /// # Errors
    /// I/O failures, naming the file.
    pub fn save_pretrained(&self, dir: impl AsRef<Path>) -> Result<()> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(|source| PeftError::Io {
            path: dir.to_path_buf(),
            op: "create directory",
            source,
        })?;
        let prompt = tch::no_grad(|| self.encoder_output(false)).to_device(Device::Cpu).contiguous();
        io::write_safetensors(
            &dir.join(SAFETENSORS_WEIGHTS_NAME),
            &[(PROMPT_EMBEDDINGS.to_string(), prompt)],
        )?;
        let mut config = self.config.as_adapter_config().clone_box();
        config.common_mut().inference_mode = true;
        let text = peft_core::config::to_config_file_text(config.as_ref());
        io::atomic_write(&dir.join(CONFIG_NAME), text.as_bytes())
    }

    /// The encoder's output for every virtual token: `(n, d)` (prompt) or `(n, 2·L·d)` (prefix).
    pub fn encoder_output(&self, train: bool) -> Tensor {
        let tokens = if self.config.is_embedding_prompt() {
            self.tokens.shallow_clone()
        } else {
            self.tokens.narrow(1, 0, self.config.prompt().num_virtual_tokens.unwrap_or(0))
        };
        self.encoder.forward(&tokens, train).squeeze_dim(0)
    }

    /// The forward pass (PEFT's `PeftModelForCausalLM.forward` for prompt learning): logits `(B, n + T, V)`
    /// for prompt and P-tuning, `(B, T, V)` for prefix tuning.
    ///
    /// # Errors
    /// Inputs without `input_ids`.
    pub fn forward(&self, inputs: &ModelInputs<'_>, train: bool) -> Result<Tensor> {
        let ids =
            inputs.input_ids.ok_or_else(|| PeftError::Invalid("prompt learning needs `input_ids`".into()))?;
        let dec = decoder(&self.model)?;
        let b = ids.size()[0];
        let nvt = self.config.prompt().virtual_tokens()?;
        let mask = inputs.attention_mask.map(|m| {
            let ones = Tensor::ones([b, nvt], (m.kind(), m.device()));
            Tensor::cat(&[ones, m.shallow_clone()], 1)
        });
        let ctx = ForwardCtx::from_train(train);
        let out = self.encoder_output(train);
        if self.config.is_embedding_prompt() {
            let prompts = out.unsqueeze(0).repeat([b, 1, 1]);
            dec.forward_prompted(ids, &prompts, mask.as_ref(), None, &ctx)
        } else {
            let mut cache = self.prefix_cache(&out, b)?;
            dec.forward(ids, mask.as_ref(), None, Some(&mut cache), &ctx)
        }
        .map_err(|e| PeftError::Invalid(e.to_string()))
    }

    /// Prefix tuning's past keys and values: the prefix viewed `(B, n, 2L, heads, head_dim)` in the base
    /// dtype, permuted to `(2L, B, heads, n, head_dim)`, one `(k, v)` per layer.
    fn prefix_cache(&self, prefix: &Tensor, b: i64) -> Result<KvCache> {
        let p = self.config.prompt();
        let (n, layers, heads, d) = (
            p.virtual_tokens()?,
            p.num_layers.unwrap_or(0),
            p.num_attention_heads.unwrap_or(1),
            p.token_dim.unwrap_or(0),
        );
        let kind = self.base_kind();
        let kv = prefix
            .unsqueeze(0)
            .repeat([b, 1, 1])
            .to_kind(kind)
            .view([b, n, layers * 2, heads, d / heads])
            .permute([2, 0, 3, 1, 4]);
        let per_layer = (0..layers).map(|l| (kv.get(2 * l), kv.get(2 * l + 1))).collect();
        Ok(KvCache::prefilled(per_layer))
    }

    fn base_kind(&self) -> Kind {
        self.base_vs.variables().values().next().map_or(Kind::Float, Tensor::kind)
    }

    /// transformers' causal LM loss of [`PromptModel::forward`]'s logits against `labels` `(B, T)`
    /// (`-100` ignored), with the virtual positions' labels `-100` (prompt and P-tuning).
    pub fn causal_lm_loss(&self, logits: &Tensor, labels: &Tensor) -> Tensor {
        if self.config.is_embedding_prompt() {
            let b = labels.size()[0];
            let nvt = self.config.prompt().num_virtual_tokens.unwrap_or(0);
            let prefix = Tensor::full([b, nvt], IGNORE_INDEX, (Kind::Int64, labels.device()));
            causal_lm_loss(logits, &Tensor::cat(&[prefix, labels.to_kind(Kind::Int64)], 1))
        } else {
            causal_lm_loss(logits, labels)
        }
    }

    /// The adapter's parameters (what an optimizer trains).
    pub fn adapter_var_store(&self) -> &VarStore {
        &self.vs
    }

    /// The base model.
    pub fn model(&self) -> &HfModel {
        &self.model
    }

    /// The config, with the sizes the model filled.
    pub fn config(&self) -> &PromptConfig {
        &self.config
    }

    /// The adapter's name.
    pub fn adapter_name(&self) -> &str {
        &self.adapter
    }

    /// `trainable params: … || all params: … || trainable%: …`, as PEFT prints it.
    pub fn trainable_parameters_line(&self) -> String {
        let count = |vs: &VarStore, trainable: bool| -> i64 {
            vs.variables()
                .values()
                .filter(|t| !trainable || t.requires_grad())
                .map(|t| t.numel() as i64)
                .sum()
        };
        let trainable = count(&self.vs, true);
        let all = count(&self.vs, false) + count(&self.base_vs, false);
        let pct = if all > 0 { 100.0 * trainable as f64 / all as f64 } else { 0.0 };
        format!("trainable params: {trainable} || all params: {all} || trainable%: {pct:.4}")
    }
}
