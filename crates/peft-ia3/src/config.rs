//! `IA3Config`: PEFT 0.21.2's keys, defaults and checks.

use peft_core::config::LayerInit;
use peft_core::peft_config::targets::{dedupe_lists, selects_by_suffix};
use peft_core::peft_config::{defaults, ConfigError, PeftConfigCommon, TargetModules};
use peft_core::LayerMethod;
use peft_core::MethodConfig;
use peft_core::{AdapterConfig, PeftError, Result, TunerLayer};
use serde::{Deserialize, Serialize};

/// `peft_type` of (IA)³.
pub const PEFT_TYPE: &str = "IA3";

/// PEFT 0.21.2's `IA3Config`, field for field.
///
/// `feedforward_modules` picks the layers whose vector scales the *input* (`(1, in)`, the paper's
/// feed-forward rescaling) instead of the output (`(out, 1)`); like `target_modules` it is a full-match
/// regex or a list, but a list entry matches any module name that *ends with* it.
///
/// ```
/// use peft_core::peft_config::TargetModules;
/// use peft_ia3::Ia3Config;
///
/// let config = Ia3Config {
///     target_modules: Some(TargetModules::list(["k_proj", "v_proj", "down_proj"])),
///     feedforward_modules: Some(TargetModules::list(["down_proj"])),
///     ..Ia3Config::default()
/// };
/// assert!(config.init_ia3_weights);
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Ia3Config {
    /// `peft_type`, `task_type`, `base_model_name_or_path`, `revision`, `inference_mode`, …
    #[serde(flatten)]
    pub common: PeftConfigCommon,
    /// Modules to adapt: names / dotted suffixes, a full-match regex, or `"all-linear"`.
    pub target_modules: Option<TargetModules>,
    /// Modules never to adapt.
    pub exclude_modules: Option<TargetModules>,
    /// Modules whose input is scaled (a subset of `target_modules` when both are lists).
    pub feedforward_modules: Option<TargetModules>,
    /// The base weight is stored `(in, out)` (GPT-2's `Conv1D`); corrected from the layer type on injection.
    pub fan_in_fan_out: bool,
    /// Extra modules trained and saved in full.
    pub modules_to_save: Option<Vec<String>>,
    /// Start the vectors at 1 (the identity); `false` keeps the N(0, 1) draw.
    pub init_ia3_weights: bool,
}

impl Default for Ia3Config {
    fn default() -> Self {
        Self {
            common: PeftConfigCommon::new(PEFT_TYPE),
            target_modules: None,
            exclude_modules: None,
            feedforward_modules: None,
            fan_in_fan_out: false,
            modules_to_save: None,
            init_ia3_weights: true,
        }
    }
}

impl Ia3Config {
    /// `__post_init__`'s hard errors.
    fn check(&self, location: &str) -> Result<()> {
        if let (Some(TargetModules::List(ff)), Some(TargetModules::List(t))) =
            (&self.feedforward_modules, &self.target_modules)
        {
            if let Some(extra) = ff.iter().find(|f| !t.contains(f)) {
                return Err(ConfigError::Inconsistent {
                    location: location.to_string(),
                    message: format!(
                        "`feedforward_modules` should be a subset of `target_modules` ({extra:?} is not a target)"
                    ),
                }
                .into());
            }
        }
        Ok(())
    }

    /// Whether the module `key` is treated as a feed-forward layer (its input is scaled).
    ///
    /// # Errors
    /// `feedforward_modules` unset (PEFT needs it, or a model type with a default), or an invalid regex.
    pub fn is_feedforward(&self, key: &str) -> Result<bool> {
        let ff = self.feedforward_modules.as_ref().ok_or_else(|| {
            PeftError::Invalid("Please specify `feedforward_modules` in the IA3 config".into())
        })?;
        Ok(selects_by_suffix("feedforward_modules", ff, key)?)
    }
}

impl MethodConfig for Ia3Config {
    const PEFT_TYPE: &'static str = PEFT_TYPE;

    /// `IA3Config.__post_init__`: target lists become sets; `feedforward_modules` must be targets.
    fn post_init(&mut self, location: &str, _warnings: &mut Vec<String>) -> Result<()> {
        dedupe_lists([&mut self.target_modules, &mut self.exclude_modules, &mut self.feedforward_modules]);
        self.check(location)
    }
}

impl AdapterConfig for Ia3Config {
    peft_core::adapter_config_boilerplate!();
    peft_core::adapter_config_targets!(target_modules, exclude_modules, modules_to_save);

    fn validate(&self) -> Result<()> {
        self.check(peft_core::peft_config::error::IN_MEMORY)?;
        if let Some(TargetModules::Regex(p)) = &self.feedforward_modules {
            peft_core::peft_config::targets::full_match("feedforward_modules", p, "")?;
        }
        Ok(())
    }

    /// PEFT's `IA3Model` keeps long target lists as given (it skips the tuner's suffix condensing).
    fn model_options(&self) -> Result<peft_core::ModelOptions> {
        Ok(peft_core::ModelOptions { condense_target_modules: false, ..Default::default() })
    }

    fn prepare_for_model(&mut self, model_type: Option<&str>) -> Result<()> {
        if self.feedforward_modules.is_some() {
            return Ok(());
        }
        let default = model_type.and_then(defaults::ia3_feedforward);
        if self.target_modules.is_none() && model_type.and_then(defaults::ia3).is_none() {
            // The missing target_modules is reported first (by the model), as PEFT does.
            return Ok(());
        }
        match default {
            Some(ff) => {
                self.feedforward_modules = Some(ff);
                Ok(())
            }
            None => Err(PeftError::Invalid(format!(
                "Please specify `feedforward_modules` in the IA3 config: there is no default for model_type {}",
                model_type.map_or("(none: not a transformers-style model)".to_string(), |t| format!("{t:?}"))
            ))),
        }
    }
}

impl LayerMethod for Ia3Config {
    fn create_layer(&mut self, ctx: &mut LayerInit<'_, '_>) -> Result<Box<dyn TunerLayer>> {
        crate::layer::Ia3Layer::create(self, ctx).map(|l| Box::new(l) as Box<dyn TunerLayer>)
    }
}
