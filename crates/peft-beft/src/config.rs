//! `BeftConfig`: PEFT 0.21.2's keys, defaults and checks.

use peft_core::config::{parse_method_config, LayerInit};
use peft_core::peft_config::targets::dedupe_lists;
use peft_core::peft_config::{PeftConfigCommon, TargetModules, TargetSpec};
use peft_core::{AdapterConfig, Result, TunerLayer};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// `peft_type` of BEFT.
pub const PEFT_TYPE: &str = "BEFT";

/// PEFT 0.21.2's `BeftConfig`, field for field.
///
/// BEFT trains one bias offset per output of each adapted linear layer (by default the attention value
/// projections of the architecture), added after the layer: `y = W·x + b + β`. It merges exactly into the
/// base bias, when the layer has one.
///
/// ```
/// use peft_beft::BeftConfig;
/// use peft_core::AdapterConfig;
///
/// let config = BeftConfig::default();
/// assert!(config.init_weights);
/// // PEFT's default targets: the value projections.
/// assert_eq!(config.default_target_modules("llama"),
///            Some(peft_core::peft_config::TargetModules::list(["v_proj"])));
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct BeftConfig {
    /// `peft_type`, `task_type`, `base_model_name_or_path`, `revision`, `inference_mode`, …
    #[serde(flatten)]
    pub common: PeftConfigCommon,
    /// Modules to adapt: names / dotted suffixes, a full-match regex, or `"all-linear"`.
    pub target_modules: Option<TargetModules>,
    /// Extra modules trained and saved in full.
    pub modules_to_save: Option<Vec<String>>,
    /// Start the offsets at 0 (the identity); `false` keeps their N(0, 1) draw.
    pub init_weights: bool,
}

impl Default for BeftConfig {
    fn default() -> Self {
        Self {
            common: PeftConfigCommon::new(PEFT_TYPE),
            target_modules: None,
            modules_to_save: None,
            init_weights: true,
        }
    }
}

impl BeftConfig {
    /// Parses PEFT's JSON with `BeftConfig.__post_init__`'s normalisation (it has no checks).
    ///
    /// # Errors
    /// Invalid values.
    pub fn from_json_map(
        map: Map<String, Value>,
        location: &str,
        warnings: &mut Vec<String>,
    ) -> Result<Self> {
        let mut config: Self =
            parse_method_config(map, PEFT_TYPE, location, warnings, |c: &mut Self| &mut c.common)?;
        dedupe_lists([&mut config.target_modules]);
        Ok(config)
    }

    /// Parses `adapter_config.json` text.
    ///
    /// # Errors
    /// As [`BeftConfig::from_json_map`].
    pub fn from_json_str(text: &str, warnings: &mut Vec<String>) -> Result<Self> {
        let location = peft_core::peft_config::error::IN_MEMORY;
        let map = peft_core::peft_config::json::parse_json_object(text, location, warnings)?;
        Self::from_json_map(map, location, warnings)
    }

    /// Boxes the config for [`peft_core::PeftModel`].
    pub fn boxed(self) -> Box<dyn AdapterConfig> {
        Box::new(self)
    }
}

/// PEFT's `TRANSFORMERS_MODELS_TO_BEFT_TARGET_MODULES_MAPPING` (its own table, not a copy of LoRA's):
/// the value projection of each architecture.
pub fn default_targets(model_type: &str) -> Option<TargetModules> {
    let name = match model_type {
        "t5" | "mt5" => "v",
        "roberta" | "bert" => "value",
        "deberta-v2" => "value_proj",
        "opt" | "gptj" | "gpt_neo" | "bart" | "llama" | "llama4" | "mistral" | "mixtral" | "phi"
        | "gemma" | "gemma2" | "gemma3_text" | "qwen2" | "qwen3" => "v_proj",
        _ => return None,
    };
    Some(TargetModules::list([name]))
}

impl AdapterConfig for BeftConfig {
    peft_core::adapter_config_boilerplate!();

    fn target_spec(&self) -> TargetSpec<'_> {
        TargetSpec {
            target_modules: self.target_modules.as_ref(),
            modules_to_save: self.modules_to_save.as_deref(),
            ..TargetSpec::default()
        }
    }

    fn set_target_modules(&mut self, targets: TargetModules) {
        self.target_modules = Some(targets);
    }

    fn to_json(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }

    fn validate(&self) -> Result<()> {
        Ok(())
    }

    fn default_target_modules(&self, model_type: &str) -> Option<TargetModules> {
        // `peft_config::defaults::target_modules` has no BEFT table yet; PEFT's lives here until it does.
        peft_core::peft_config::defaults::target_modules(PEFT_TYPE, model_type)
            .or_else(|| default_targets(model_type))
    }

    fn set_modules_to_save(&mut self, modules: Vec<String>) -> bool {
        self.modules_to_save = Some(modules);
        true
    }

    fn create_layer(&mut self, ctx: &mut LayerInit<'_, '_>) -> Result<Box<dyn TunerLayer>> {
        crate::layer::BeftLayer::create(self, ctx).map(|l| Box::new(l) as Box<dyn TunerLayer>)
    }
}

/// The registry's parser for `peft_type: "BEFT"`.
pub(crate) fn parse_boxed(
    map: Map<String, Value>,
    location: &str,
    warnings: &mut Vec<String>,
) -> Result<Box<dyn AdapterConfig>> {
    BeftConfig::from_json_map(map, location, warnings).map(BeftConfig::boxed)
}
