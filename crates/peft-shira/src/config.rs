//! `ShiraConfig`: PEFT 0.21.2's keys, defaults and checks.

use peft_core::config::{parse_method_config, unsupported_option, LayerInit};
use peft_core::peft_config::targets::dedupe_lists;
use peft_core::peft_config::{defaults, PeftConfigCommon, TargetModules, TargetSpec};
use peft_core::{AdapterConfig, PeftError, Result, TunerLayer};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// `peft_type` of SHiRA.
pub const PEFT_TYPE: &str = "SHIRA";

/// The seed of a fresh `torch.Generator()` (`default_rng_seed_val`), which SHiRA's random mask uses when
/// `random_seed` is unset.
pub const TORCH_DEFAULT_SEED: u64 = 67_280_421_310_721;

/// PEFT 0.21.2's `ShiraConfig`, field for field.
///
/// ```
/// use peft_core::peft_config::TargetModules;
/// use peft_shira::ShiraConfig;
///
/// let config = ShiraConfig { r: 16, target_modules: Some(TargetModules::list(["q_proj"])), ..ShiraConfig::default() };
/// assert_eq!(config.mask_type, "random");
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ShiraConfig {
    /// `peft_type`, `task_type`, `base_model_name_or_path`, `revision`, `inference_mode`, …
    #[serde(flatten)]
    pub common: PeftConfigCommon,
    /// Sizes the adapter like LoRA of rank `r`: `r · (in + out)` trained entries per layer (the update itself
    /// is of high rank).
    pub r: i64,
    /// How the entries are chosen: `"random"` (the only mask PEFT ships).
    pub mask_type: String,
    /// The seed of the random mask's generator (unset: a fresh `torch.Generator()`'s default seed).
    pub random_seed: Option<i64>,
    /// Modules to adapt: names / dotted suffixes, a full-match regex, or `"all-linear"`.
    pub target_modules: Option<TargetModules>,
    /// Set to `false` for `nn.Linear` (the only layer SHiRA adapts).
    pub fan_in_fan_out: bool,
    /// Start the entries at zero (the identity); `false` draws them from N(0, 1).
    pub init_weights: bool,
    /// Extra modules trained and saved in full.
    pub modules_to_save: Option<Vec<String>>,
}

impl Default for ShiraConfig {
    fn default() -> Self {
        Self {
            common: PeftConfigCommon::new(PEFT_TYPE),
            r: 32,
            mask_type: "random".into(),
            random_seed: None,
            target_modules: None,
            fan_in_fan_out: false,
            init_weights: true,
            modules_to_save: None,
        }
    }
}

impl ShiraConfig {
    /// Parses PEFT's JSON with `ShiraConfig.__post_init__`'s warnings.
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
        if config.mask_type != "random" && !config.common.inference_mode {
            warnings.push(format!(
                "{location}: Argument mask_type={:?} is not recognized, please supply your own masking function",
                config.mask_type
            ));
        }
        Ok(config)
    }

    /// Parses `adapter_config.json` text.
    ///
    /// # Errors
    /// As [`ShiraConfig::from_json_map`].
    pub fn from_json_str(text: &str, warnings: &mut Vec<String>) -> Result<Self> {
        let location = peft_core::peft_config::error::IN_MEMORY;
        let map = peft_core::peft_config::json::parse_json_object(text, location, warnings)?;
        Self::from_json_map(map, location, warnings)
    }

    /// The seed the random mask's generator starts from.
    pub fn mask_seed(&self) -> u64 {
        self.random_seed.map_or(TORCH_DEFAULT_SEED, |s| s as u64)
    }

    /// Boxes the config for [`peft_core::PeftModel`].
    pub fn boxed(self) -> Box<dyn AdapterConfig> {
        Box::new(self)
    }
}

impl AdapterConfig for ShiraConfig {
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
        if self.r <= 0 {
            return Err(PeftError::Invalid(format!(
                "`r` should be a positive integer value but the value passed is {}",
                self.r
            )));
        }
        if self.mask_type != "random" {
            return Err(unsupported_option(
                PEFT_TYPE,
                "mask_type",
                &Value::from(self.mask_type.clone()),
                "only the random mask is built in (PEFT needs a Python mask function for any other)",
            ));
        }
        if let Some(s) = self.random_seed.filter(|s| *s < 0) {
            return Err(unsupported_option(PEFT_TYPE, "random_seed", &Value::from(s), "a negative seed"));
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

    fn create_layer(&mut self, ctx: &mut LayerInit<'_, '_>) -> Result<Box<dyn TunerLayer>> {
        crate::layer::ShiraLayer::create(self, ctx).map(|l| Box::new(l) as Box<dyn TunerLayer>)
    }
}

/// The registry's parser for `peft_type: "SHIRA"`.
pub(crate) fn parse_boxed(
    map: Map<String, Value>,
    location: &str,
    warnings: &mut Vec<String>,
) -> Result<Box<dyn AdapterConfig>> {
    ShiraConfig::from_json_map(map, location, warnings).map(ShiraConfig::boxed)
}
