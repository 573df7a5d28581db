//! `TrainableTokensConfig`: PEFT 0.21.2's keys, defaults and checks, and the layer it creates.

use peft_core::config::LayerInit;
use peft_core::peft_config::{PeftConfigCommon, TargetModules, TargetSpec};
use peft_core::trainable_tokens::TrainableTokens;
use peft_core::LayerMethod;
use peft_core::{AdapterConfig, MethodConfig, PeftError, Result, TunerLayer};
use serde::{Deserialize, Serialize};

/// `peft_type` of trainable tokens.
pub const PEFT_TYPE: &str = peft_core::trainable_tokens::TRAINABLE_TOKENS;

/// PEFT 0.21.2's `TrainableTokensConfig`, field for field.
///
/// The rows `token_indices` of the targeted embedding (by default the model's input embedding) are
/// trained in full; every other row stays frozen. Heads tied to the input embedding (`lm_head` with
/// `tie_word_embeddings`) read the same trained rows.
///
/// ```
/// use peft_trainable_tokens::{MethodConfig, TrainableTokensConfig};
///
/// let mut warnings = vec![];
/// let config = TrainableTokensConfig::from_json_str(
///     r#"{"peft_type": "TRAINABLE_TOKENS", "token_indices": [3, 7]}"#, &mut warnings)?;
/// assert_eq!(config.token_indices, [3, 7]);
/// assert!(config.init_weights && config.target_modules.is_none()); // the input embedding, found on injection
/// # Ok::<(), peft_core::PeftError>(())
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TrainableTokensConfig {
    /// `peft_type`, `task_type`, `base_model_name_or_path`, `revision`, `inference_mode`, …
    #[serde(flatten)]
    pub common: PeftConfigCommon,
    /// The rows (token ids) to train.
    pub token_indices: Vec<i64>,
    /// The embedding(s) to adapt; `None`: the model's input embedding (`"embed_tokens"` when the model
    /// declares none), written into the config as PEFT writes it (a string).
    pub target_modules: Option<TargetModules>,
    /// Start the trained rows as the embedding's rows (the identity); `false` draws them from `randn`.
    pub init_weights: bool,
}

impl Default for TrainableTokensConfig {
    fn default() -> Self {
        Self {
            common: PeftConfigCommon::new(PEFT_TYPE),
            token_indices: Vec::new(),
            target_modules: None,
            init_weights: true,
        }
    }
}

impl MethodConfig for TrainableTokensConfig {
    const PEFT_TYPE: &'static str = PEFT_TYPE;
}

impl AdapterConfig for TrainableTokensConfig {
    peft_core::adapter_config_boilerplate!();

    fn target_spec(&self) -> TargetSpec<'_> {
        TargetSpec { target_modules: self.target_modules.as_ref(), ..TargetSpec::default() }
    }

    fn set_target_modules(&mut self, targets: TargetModules) {
        self.target_modules = Some(targets);
    }

    fn validate(&self) -> Result<()> {
        if let Some(bad) = self.token_indices.iter().find(|&&i| i < 0) {
            return Err(PeftError::Invalid(format!(
                "token_indices: {bad} is negative (token ids index the embedding's rows from 0)"
            )));
        }
        Ok(())
    }

    fn model_options(&self) -> Result<peft_core::ModelOptions> {
        Ok(peft_core::ModelOptions { adapts_input_embedding: true, ..Default::default() })
    }
}

impl LayerMethod for TrainableTokensConfig {
    fn create_layer(&mut self, ctx: &mut LayerInit<'_, '_>) -> Result<Box<dyn TunerLayer>> {
        if ctx.base.as_embedding().is_none() && ctx.base.as_linear().is_none_or(|l| l.fan_in_fan_out()) {
            return Err(ctx.unsupported(
                PEFT_TYPE,
                "trainable tokens replace rows of an `nn.Embedding` (or of an `nn.Linear` head tied to one)",
            ));
        }
        if ctx.base.as_weighted().is_some_and(|w| !w.weight_is_storage()) {
            return Err(ctx.unsupported(PEFT_TYPE, "the rows of a quantized weight cannot be trained"));
        }
        let (_, delta_kind, _) = ctx.placement()?;
        let tokens = TrainableTokens::standalone(
            &*ctx.base,
            ctx.module_name,
            ctx.adapter_name,
            &self.token_indices,
            &ctx.path,
            self.init_weights,
            delta_kind,
        )?;
        Ok(Box::new(tokens))
    }
}
