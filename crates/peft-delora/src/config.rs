//! `DeloraConfig`: PEFT 0.21.2's keys, defaults and checks.

use indexmap::IndexMap;
use peft_core::config::{BiasMode, BiasOption, LayerInit};
use peft_core::peft_config::patterns::PatternMap;
use peft_core::peft_config::targets::dedupe_lists;
use peft_core::peft_config::{
    ConfigError, LayerIndices, LayersPattern, Num, PeftConfigCommon, TargetModules,
};
use peft_core::LayerMethod;
use peft_core::{AdapterConfig, MethodConfig, Result, TunerLayer};
use serde::{Deserialize, Serialize};

/// `peft_type` of DeLoRA.
pub const PEFT_TYPE: &str = "DELORA";

/// PEFT 0.21.2's `DeloraConfig`, field for field.
///
/// DeLoRA ("Decoupled Low-rank Adaptation") writes the update as `ΔW = B · diag(λ / (r·‖aᵢ‖·‖bᵢ‖)) · A`
/// times the base weight's column norms: the factors are normalised, so only the learned bound `λ`
/// (`delora_lambda`, one per layer) sets the update's size — angle and strength are decoupled.
///
/// ```
/// use peft_core::peft_config::TargetModules;
/// use peft_delora::DeloraConfig;
///
/// let config = DeloraConfig {
///     r: 4,
///     target_modules: Some(TargetModules::list(["q_proj", "v_proj"])),
///     ..DeloraConfig::default()
/// };
/// assert_eq!(config.delora_lambda.value(), 15.0);
/// assert_eq!(config.rank_and_lambda("model.layers.0.q_proj")?, (4, 15.0));
/// # Ok::<(), peft_core::PeftError>(())
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DeloraConfig {
    /// `peft_type`, `task_type`, `base_model_name_or_path`, `revision`, `inference_mode`, …
    #[serde(flatten)]
    pub common: PeftConfigCommon,
    /// The rank.
    pub r: i64,
    /// The initial bound `λ` of the update's norm (kept as written: `15` or `15.0`).
    pub delora_lambda: Num,
    /// Dropout on the adapter's input path (training only).
    pub module_dropout: f64,
    /// Modules to adapt: names / dotted suffixes, a full-match regex, or `"all-linear"`.
    pub target_modules: Option<TargetModules>,
    /// Modules never to adapt.
    pub exclude_modules: Option<TargetModules>,
    /// Which biases train with the adapter.
    pub bias: BiasOption,
    /// `B` starts at zero (the identity); `false` draws it Kaiming-uniform like `A`.
    pub init_weights: bool,
    /// Only the layers with these indices are adapted.
    pub layers_to_transform: Option<LayerIndices>,
    /// The name of the layer list `layers_to_transform` indexes into.
    pub layers_pattern: Option<LayersPattern>,
    /// Per-module ranks `{pattern: r}` (PEFT's `get_pattern_key`: the first pattern matching the end of
    /// the module name).
    pub rank_pattern: IndexMap<String, i64>,
    /// Per-module initial bounds `{pattern: λ}`.
    pub lambda_pattern: IndexMap<String, Num>,
    /// Extra modules trained and saved in full.
    pub modules_to_save: Option<Vec<String>>,
}

impl Default for DeloraConfig {
    fn default() -> Self {
        Self {
            common: PeftConfigCommon::new(PEFT_TYPE),
            r: 8,
            delora_lambda: Num::from(15),
            module_dropout: 0.0,
            target_modules: None,
            exclude_modules: None,
            bias: BiasOption::default(),
            init_weights: true,
            layers_to_transform: None,
            layers_pattern: None,
            rank_pattern: IndexMap::new(),
            lambda_pattern: IndexMap::new(),
            modules_to_save: None,
        }
    }
}

impl DeloraConfig {
    /// The rank and initial bound of module `key` after `rank_pattern` / `lambda_pattern`.
    ///
    /// # Errors
    /// A pattern that is not a valid regex.
    pub fn rank_and_lambda(&self, key: &str) -> Result<(i64, f64)> {
        let r = PatternMap::new("rank_pattern", &self.rank_pattern)?.lookup(key).map_or(self.r, |(_, v)| *v);
        let lambda = PatternMap::new("lambda_pattern", &self.lambda_pattern)?
            .lookup(key)
            .map_or(self.delora_lambda.value(), |(_, v)| v.value());
        Ok((r, lambda))
    }

    fn check(&self, location: &str) -> Result<()> {
        self.target_spec().check_layer_selection(location)?;
        if self.r <= 0 {
            return Err(ConfigError::InvalidField {
                location: location.to_string(),
                field: "r".into(),
                message: format!("`r` must be a positive integer; got {}.", self.r),
            }
            .into());
        }
        PatternMap::new("rank_pattern", &self.rank_pattern)?;
        PatternMap::new("lambda_pattern", &self.lambda_pattern)?;
        Ok(())
    }
}

impl MethodConfig for DeloraConfig {
    const PEFT_TYPE: &'static str = PEFT_TYPE;

    /// `DeloraConfig.__post_init__`: target lists become sets; the layer-selection rules; a positive `r`.
    fn post_init(&mut self, location: &str, _warnings: &mut Vec<String>) -> Result<()> {
        dedupe_lists([&mut self.target_modules, &mut self.exclude_modules]);
        self.check(location)
    }
}

impl AdapterConfig for DeloraConfig {
    peft_core::adapter_config_boilerplate!();
    peft_core::adapter_config_targets!(
        target_modules,
        exclude_modules,
        layers_to_transform,
        layers_pattern,
        modules_to_save
    );

    fn validate(&self) -> Result<()> {
        self.check(peft_core::peft_config::error::IN_MEMORY)?;
        self.bias.mode()?;
        if !(0.0..1.0).contains(&self.module_dropout) {
            return Err(peft_core::PeftError::Invalid(format!(
                "module_dropout must be in [0, 1), got {}",
                self.module_dropout
            )));
        }
        Ok(())
    }

    fn bias(&self) -> BiasMode {
        self.bias.mode().unwrap_or(BiasMode::None)
    }
}

impl LayerMethod for DeloraConfig {
    fn create_layer(&mut self, ctx: &mut LayerInit<'_, '_>) -> Result<Box<dyn TunerLayer>> {
        crate::layer::DeloraLayer::create(self, ctx).map(|l| Box::new(l) as Box<dyn TunerLayer>)
    }
}
