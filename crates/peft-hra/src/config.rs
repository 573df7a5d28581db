//! `HRAConfig`: PEFT 0.21.2's keys, defaults and checks.

use peft_core::config::{parse_method_config, BiasMode, LayerInit};
use peft_core::peft_config::targets::dedupe_lists;
use peft_core::peft_config::{
    defaults, ConfigError, LayerIndices, LayersPattern, PeftConfigCommon, TargetModules, TargetSpec,
};
use peft_core::{AdapterConfig, Result, TunerLayer};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// `peft_type` of HRA.
pub const PEFT_TYPE: &str = "HRA";

/// `bias`: which base biases train (and are saved) with the adapter.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum HraBias {
    /// `"none"`: no bias trains.
    #[default]
    #[serde(rename = "none")]
    None,
    /// `"all"`: every bias of the model.
    #[serde(rename = "all")]
    All,
    /// `"hra_only"`: the biases of the adapted layers.
    #[serde(rename = "hra_only")]
    HraOnly,
}

/// PEFT 0.21.2's `HRAConfig`, field for field.
///
/// Each adapted layer learns `r` Householder vectors `u_i` (the columns of `hra_u`, `(D, r)` with `D` the
/// layer's input dimension) and multiplies its weight by the orthogonal matrix
/// `H = (I − 2û₁û₁ᵀ)…(I − 2û_rû_rᵀ)`; with `apply_GS` the vectors are first orthonormalised
/// (Gram–Schmidt) and `H = I − 2UUᵀ`. The default init pairs the vectors (`u_{2k} = u_{2k+1}`) so that
/// `H = I`; it needs an even `r` (an odd one keeps the random draw, with PEFT's warning).
///
/// ```
/// use peft_core::peft_config::TargetModules;
/// use peft_hra::HraConfig;
///
/// let config = HraConfig {
///     target_modules: Some(TargetModules::list(["q_proj", "v_proj"])),
///     r: 4,
///     ..HraConfig::default()
/// };
/// assert!(config.init_weights && !config.apply_gs);
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct HraConfig {
    /// `peft_type`, `task_type`, `base_model_name_or_path`, `revision`, `inference_mode`, …
    #[serde(flatten)]
    pub common: PeftConfigCommon,
    /// The number of Householder reflections per layer (default 8; even for the symmetric init).
    pub r: i64,
    /// Orthonormalise the vectors (Gram–Schmidt) before building the reflection (`apply_GS`).
    #[serde(rename = "apply_GS")]
    pub apply_gs: bool,
    /// Modules to adapt: names / dotted suffixes, a full-match regex, or `"all-linear"`.
    pub target_modules: Option<TargetModules>,
    /// Modules never to adapt.
    pub exclude_modules: Option<TargetModules>,
    /// The symmetric init (`H = I` for even `r`); `false` keeps the Kaiming-uniform draw of every vector.
    pub init_weights: bool,
    /// Only the layers with these indices are adapted.
    pub layers_to_transform: Option<LayerIndices>,
    /// The name of the layer list `layers_to_transform` indexes into.
    pub layers_pattern: Option<LayersPattern>,
    /// Which biases train with the adapter.
    pub bias: HraBias,
    /// Extra modules trained and saved in full.
    pub modules_to_save: Option<Vec<String>>,
}

impl Default for HraConfig {
    fn default() -> Self {
        Self {
            common: PeftConfigCommon::new(PEFT_TYPE),
            r: 8,
            apply_gs: false,
            target_modules: None,
            exclude_modules: None,
            init_weights: true,
            layers_to_transform: None,
            layers_pattern: None,
            bias: HraBias::None,
            modules_to_save: None,
        }
    }
}

impl HraConfig {
    /// Parses PEFT's JSON with `HRAConfig.__post_init__`'s checks.
    ///
    /// # Errors
    /// Invalid values; `layers_to_transform` or `layers_pattern` with a regex `target_modules`;
    /// `layers_pattern` without `layers_to_transform`.
    pub fn from_json_map(
        map: Map<String, Value>,
        location: &str,
        warnings: &mut Vec<String>,
    ) -> Result<Self> {
        let mut config: Self =
            parse_method_config(map, PEFT_TYPE, location, warnings, |c: &mut Self| &mut c.common)?;
        config.post_init(location)?;
        Ok(config)
    }

    /// Parses `adapter_config.json` text.
    ///
    /// # Errors
    /// As [`HraConfig::from_json_map`].
    pub fn from_json_str(text: &str, warnings: &mut Vec<String>) -> Result<Self> {
        let location = peft_core::peft_config::error::IN_MEMORY;
        let map = peft_core::peft_config::json::parse_json_object(text, location, warnings)?;
        Self::from_json_map(map, location, warnings)
    }

    fn post_init(&mut self, location: &str) -> Result<()> {
        dedupe_lists([&mut self.target_modules, &mut self.exclude_modules]);
        self.check(location)
    }

    /// `__post_init__`'s hard errors.
    fn check(&self, location: &str) -> Result<()> {
        let bad = |message: &str| -> Result<()> {
            Err(ConfigError::Inconsistent { location: location.to_string(), message: message.to_string() }
                .into())
        };
        let regex_targets = matches!(self.target_modules, Some(TargetModules::Regex(_)));
        if regex_targets && self.layers_to_transform.is_some() {
            return bad("`layers_to_transform` cannot be used when `target_modules` is a str.");
        }
        if regex_targets && self.layers_pattern.is_some() {
            return bad("`layers_pattern` cannot be used when `target_modules` is a str.");
        }
        let pattern_set = match &self.layers_pattern {
            Some(LayersPattern::One(s)) => !s.is_empty(),
            Some(LayersPattern::Many(v)) => !v.is_empty(),
            None => false,
        };
        if pattern_set && self.layers_to_transform.is_none() {
            return bad("When `layers_pattern` is specified, `layers_to_transform` must also be specified. ");
        }
        Ok(())
    }

    /// Boxes the config for [`peft_core::PeftModel`].
    pub fn boxed(self) -> Box<dyn AdapterConfig> {
        Box::new(self)
    }
}

impl AdapterConfig for HraConfig {
    peft_core::adapter_config_boilerplate!();

    fn target_spec(&self) -> TargetSpec<'_> {
        TargetSpec {
            target_modules: self.target_modules.as_ref(),
            exclude_modules: self.exclude_modules.as_ref(),
            layers_to_transform: self.layers_to_transform.as_ref(),
            layers_pattern: self.layers_pattern.as_ref(),
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
        self.check(peft_core::peft_config::error::IN_MEMORY)?;
        if self.r <= 0 {
            // PEFT raises this from `update_layer`, before any layer gets the adapter.
            return Err(ConfigError::InvalidField {
                location: peft_core::peft_config::error::IN_MEMORY.to_string(),
                field: "r".into(),
                message: format!("`r` should be a positive integer value but the value passed is {}", self.r),
            }
            .into());
        }
        Ok(())
    }

    fn default_target_modules(&self, model_type: &str) -> Option<TargetModules> {
        defaults::target_modules(PEFT_TYPE, model_type)
    }

    fn set_modules_to_save(&mut self, modules: Vec<String>) -> bool {
        self.modules_to_save = Some(modules);
        true
    }

    fn bias(&self) -> BiasMode {
        match self.bias {
            HraBias::None => BiasMode::None,
            HraBias::All => BiasMode::All,
            HraBias::HraOnly => BiasMode::AdaptedOnly,
        }
    }

    fn create_layer(&mut self, ctx: &mut LayerInit<'_, '_>) -> Result<Box<dyn TunerLayer>> {
        crate::layer::HraLayer::create(self, ctx).map(|l| Box::new(l) as Box<dyn TunerLayer>)
    }
}

/// The registry's parser for `peft_type: "HRA"`.
pub(crate) fn parse_boxed(
    map: Map<String, Value>,
    location: &str,
    warnings: &mut Vec<String>,
) -> Result<Box<dyn AdapterConfig>> {
    HraConfig::from_json_map(map, location, warnings).map(HraConfig::boxed)
}
