//! The prompt-learning configs: `PromptTuningConfig` (`PROMPT_TUNING`), `PromptEncoderConfig`
//! (`P_TUNING`) and `PrefixTuningConfig` (`PREFIX_TUNING`), PEFT 0.21.2's keys, defaults and checks.
//!
//! They parse through the registry like every method's config (so `adapter_config.json` files of these
//! types are read and written as PEFT writes them), but they adapt no layer: build a
//! [`crate::PromptModel`] with them.

use peft_core::peft_config::{ConfigError, PeftConfigCommon, TargetModules, TargetSpec};
use peft_core::{AdapterConfig, MethodConfig, PeftError, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// `peft_type` of prompt tuning.
pub const PROMPT_TUNING: &str = "PROMPT_TUNING";
/// `peft_type` of P-tuning.
pub const P_TUNING: &str = "P_TUNING";
/// `peft_type` of prefix tuning.
pub const PREFIX_TUNING: &str = "PREFIX_TUNING";

/// The keys every prompt-learning config has (PEFT's `PromptLearningConfig`). PEFT fills the `None` ones
/// from the model's `config.json` when the adapter is created, and saves them filled.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PromptLearningOptions {
    /// The number of virtual tokens.
    pub num_virtual_tokens: Option<i64>,
    /// Their dimension (the model's hidden size; for prefix tuning with grouped-query attention,
    /// `head_dim · num_key_value_heads`).
    pub token_dim: Option<i64>,
    /// 2 for encoder-decoder models (the prompt is doubled), 1 otherwise.
    pub num_transformer_submodules: Option<i64>,
    /// The attention heads the prefix is split into (prefix tuning).
    pub num_attention_heads: Option<i64>,
    /// The number of layers (prefix tuning: one key/value pair per layer).
    pub num_layers: Option<i64>,
    /// Extra modules trained and saved in full.
    pub modules_to_save: Option<Vec<String>>,
}

impl PromptLearningOptions {
    /// The options as a model fills them (PEFT's `_prepare_prompt_learning_config`): missing sizes from
    /// its `config.json`.
    ///
    /// # Errors
    /// `num_virtual_tokens` missing or not positive.
    pub fn virtual_tokens(&self) -> Result<i64> {
        match self.num_virtual_tokens {
            Some(n) if n > 0 => Ok(n),
            Some(n) => Err(PeftError::Invalid(format!("`num_virtual_tokens` must be positive, got {n}"))),
            None => Err(PeftError::Invalid("`num_virtual_tokens` must be set for prompt learning".into())),
        }
    }
}

/// `prompt_tuning_init`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum PromptTuningInit {
    /// `N(0, 1)` (an `nn.Embedding`'s init).
    #[default]
    #[serde(rename = "RANDOM")]
    Random,
    /// Embeddings of random vocabulary tokens.
    #[serde(rename = "SAMPLE_VOCAB")]
    SampleVocab,
    /// Embeddings of the tokens of `prompt_tuning_init_text` (repeated or cut to the prompt length).
    #[serde(rename = "TEXT")]
    Text,
}

/// PEFT 0.21.2's `PromptTuningConfig`, field for field.
///
/// ```
/// use peft_prompt::{MethodConfig, PromptTuningConfig};
///
/// let mut warnings = vec![];
/// let c = PromptTuningConfig::from_json_str(
///     r#"{"peft_type": "PROMPT_TUNING", "task_type": "CAUSAL_LM", "num_virtual_tokens": 8}"#, &mut warnings)?;
/// assert_eq!(c.prompt.num_virtual_tokens, Some(8));
/// # Ok::<(), peft_core::PeftError>(())
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PromptTuningConfig {
    /// `peft_type`, `task_type`, `base_model_name_or_path`, `revision`, `inference_mode`, …
    #[serde(flatten)]
    pub common: PeftConfigCommon,
    /// The prompt-learning keys.
    #[serde(flatten)]
    pub prompt: PromptLearningOptions,
    /// How the virtual tokens start.
    pub prompt_tuning_init: PromptTuningInit,
    /// The text whose token embeddings start the prompt (`TEXT`).
    pub prompt_tuning_init_text: Option<String>,
    /// The tokenizer for `TEXT` (a directory with `tokenizer.json` or a hub id in the local cache).
    pub tokenizer_name_or_path: Option<String>,
    /// Options of the tokenizer (`TEXT` only; peft-rs accepts none).
    pub tokenizer_kwargs: Option<Value>,
}

impl Default for PromptTuningConfig {
    fn default() -> Self {
        Self {
            common: PeftConfigCommon::new(PROMPT_TUNING),
            prompt: PromptLearningOptions::default(),
            prompt_tuning_init: PromptTuningInit::Random,
            prompt_tuning_init_text: None,
            tokenizer_name_or_path: None,
            tokenizer_kwargs: None,
        }
    }
}

/// `encoder_reparameterization_type`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum EncoderType {
    /// Three linear layers with ReLUs (PEFT's recommendation).
    #[default]
    #[serde(rename = "MLP")]
    Mlp,
    /// A bidirectional LSTM and two linear layers.
    #[serde(rename = "LSTM")]
    Lstm,
}

/// PEFT 0.21.2's `PromptEncoderConfig` (P-tuning), field for field.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PromptEncoderConfig {
    /// `peft_type`, `task_type`, `base_model_name_or_path`, `revision`, `inference_mode`, …
    #[serde(flatten)]
    pub common: PeftConfigCommon,
    /// The prompt-learning keys.
    #[serde(flatten)]
    pub prompt: PromptLearningOptions,
    /// The encoder that turns the virtual tokens into the prompt.
    pub encoder_reparameterization_type: EncoderType,
    /// Its hidden size (`token_dim` when unset).
    pub encoder_hidden_size: Option<i64>,
    /// LSTM layers (the MLP always has three linear layers).
    pub encoder_num_layers: i64,
    /// LSTM dropout.
    pub encoder_dropout: f64,
}

impl Default for PromptEncoderConfig {
    fn default() -> Self {
        Self {
            common: PeftConfigCommon::new(P_TUNING),
            prompt: PromptLearningOptions::default(),
            encoder_reparameterization_type: EncoderType::Mlp,
            encoder_hidden_size: None,
            encoder_num_layers: 2,
            encoder_dropout: 0.0,
        }
    }
}

/// PEFT 0.21.2's `PrefixTuningConfig`, field for field.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PrefixTuningConfig {
    /// `peft_type`, `task_type`, `base_model_name_or_path`, `revision`, `inference_mode`, …
    #[serde(flatten)]
    pub common: PeftConfigCommon,
    /// The prompt-learning keys.
    #[serde(flatten)]
    pub prompt: PromptLearningOptions,
    /// `"zero"`: the prefix (or the projection's last layer) starts at zero.
    pub init_weights: Option<String>,
    /// The projection's hidden size (`token_dim` when unset).
    pub encoder_hidden_size: Option<i64>,
    /// Learn virtual-token embeddings and project them to the key/value prefix with a two-layer MLP.
    pub prefix_projection: bool,
}

impl Default for PrefixTuningConfig {
    fn default() -> Self {
        Self {
            common: PeftConfigCommon::new(PREFIX_TUNING),
            prompt: PromptLearningOptions::default(),
            init_weights: None,
            encoder_hidden_size: None,
            prefix_projection: false,
        }
    }
}

fn not_a_layer_method(peft_type: &str) -> PeftError {
    PeftError::Invalid(format!(
        "{peft_type} is a prompt-learning method: it adapts no layer, so `PeftModel` cannot hold it; build a \
         `peft_prompt::PromptModel` (or load it with `PromptModel::from_pretrained`)"
    ))
}

/// The `AdapterConfig` of a prompt-learning config: registry parsing and PEFT's JSON; `validate` says
/// where the config belongs.
macro_rules! prompt_adapter_config {
    ($config:ty, $peft_type:expr) => {
        impl AdapterConfig for $config {
            peft_core::adapter_config_boilerplate!(no_layers);

            fn target_spec(&self) -> TargetSpec<'_> {
                TargetSpec {
                    modules_to_save: self.prompt.modules_to_save.as_deref(),
                    ..TargetSpec::default()
                }
            }

            fn set_target_modules(&mut self, _targets: TargetModules) {}

            fn validate(&self) -> Result<()> {
                Err(not_a_layer_method($peft_type))
            }
        }
    };
}

prompt_adapter_config!(PromptTuningConfig, PROMPT_TUNING);
prompt_adapter_config!(PromptEncoderConfig, P_TUNING);
prompt_adapter_config!(PrefixTuningConfig, PREFIX_TUNING);

impl MethodConfig for PromptTuningConfig {
    const PEFT_TYPE: &'static str = PROMPT_TUNING;

    /// `PromptTuningConfig.__post_init__`: `TEXT` needs a tokenizer and a text; `tokenizer_kwargs` only
    /// go with `TEXT`.
    fn post_init(&mut self, location: &str, _warnings: &mut Vec<String>) -> Result<()> {
        let bad = |message: String| -> PeftError {
            ConfigError::Inconsistent { location: location.to_string(), message }.into()
        };
        if self.prompt_tuning_init == PromptTuningInit::Text {
            if self.tokenizer_name_or_path.is_none() {
                return Err(bad(
                    "When prompt_tuning_init='TEXT', tokenizer_name_or_path can't be None.".to_string()
                ));
            }
            if self.prompt_tuning_init_text.is_none() {
                return Err(bad(
                    "When prompt_tuning_init='TEXT', prompt_tuning_init_text can't be None.".to_string()
                ));
            }
        } else if self.tokenizer_kwargs.as_ref().is_some_and(|v| !v.is_null()) {
            return Err(bad("tokenizer_kwargs only valid when using prompt_tuning_init='TEXT'.".to_string()));
        }
        Ok(())
    }
}

impl MethodConfig for PromptEncoderConfig {
    const PEFT_TYPE: &'static str = P_TUNING;
}

impl MethodConfig for PrefixTuningConfig {
    const PEFT_TYPE: &'static str = PREFIX_TUNING;
}

/// One of the prompt-learning configs.
#[derive(Clone, Debug, PartialEq)]
pub enum PromptConfig {
    /// `PROMPT_TUNING`.
    PromptTuning(PromptTuningConfig),
    /// `P_TUNING`.
    PTuning(PromptEncoderConfig),
    /// `PREFIX_TUNING`.
    PrefixTuning(PrefixTuningConfig),
}

impl PromptConfig {
    /// The shared prompt-learning keys.
    pub fn prompt(&self) -> &PromptLearningOptions {
        match self {
            PromptConfig::PromptTuning(c) => &c.prompt,
            PromptConfig::PTuning(c) => &c.prompt,
            PromptConfig::PrefixTuning(c) => &c.prompt,
        }
    }

    /// The shared prompt-learning keys, mutably.
    pub fn prompt_mut(&mut self) -> &mut PromptLearningOptions {
        match self {
            PromptConfig::PromptTuning(c) => &mut c.prompt,
            PromptConfig::PTuning(c) => &mut c.prompt,
            PromptConfig::PrefixTuning(c) => &mut c.prompt,
        }
    }

    /// The config as the registry's trait object.
    pub fn as_adapter_config(&self) -> &dyn AdapterConfig {
        match self {
            PromptConfig::PromptTuning(c) => c,
            PromptConfig::PTuning(c) => c,
            PromptConfig::PrefixTuning(c) => c,
        }
    }

    /// The config as the registry's trait object, mutably.
    pub fn as_adapter_config_mut(&mut self) -> &mut dyn AdapterConfig {
        match self {
            PromptConfig::PromptTuning(c) => c,
            PromptConfig::PTuning(c) => c,
            PromptConfig::PrefixTuning(c) => c,
        }
    }

    /// A prompt-learning config from the registry's trait object (what `registry::load_config` returns).
    ///
    /// # Errors
    /// A config of another method.
    pub fn from_adapter_config(config: &dyn AdapterConfig) -> Result<Self> {
        let any = config.as_any();
        if let Some(c) = any.downcast_ref::<PromptTuningConfig>() {
            return Ok(PromptConfig::PromptTuning(c.clone()));
        }
        if let Some(c) = any.downcast_ref::<PromptEncoderConfig>() {
            return Ok(PromptConfig::PTuning(c.clone()));
        }
        if let Some(c) = any.downcast_ref::<PrefixTuningConfig>() {
            return Ok(PromptConfig::PrefixTuning(c.clone()));
        }
        Err(PeftError::Invalid(format!(
            "a {} adapter is not prompt learning: load it with `PeftModel::from_pretrained`",
            config.common().peft_type
        )))
    }

    /// `peft_type`.
    pub fn peft_type(&self) -> &str {
        &self.as_adapter_config().common().peft_type
    }

    /// Whether the model's input gets virtual-token embeddings (prompt tuning, P-tuning) rather than a
    /// key/value prefix (prefix tuning).
    pub fn is_embedding_prompt(&self) -> bool {
        !matches!(self, PromptConfig::PrefixTuning(_))
    }
}

impl From<PromptTuningConfig> for PromptConfig {
    fn from(c: PromptTuningConfig) -> Self {
        PromptConfig::PromptTuning(c)
    }
}

impl From<PromptEncoderConfig> for PromptConfig {
    fn from(c: PromptEncoderConfig) -> Self {
        PromptConfig::PTuning(c)
    }
}

impl From<PrefixTuningConfig> for PromptConfig {
    fn from(c: PrefixTuningConfig) -> Self {
        PromptConfig::PrefixTuning(c)
    }
}
