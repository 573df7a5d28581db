//! `FourierFTConfig`: PEFT 0.21.2's keys, defaults and checks.

use indexmap::IndexMap;
use peft_core::config::{unsupported_option, BiasOption, LayerInit};
use peft_core::peft_config::patterns::suffix_or_exact;
use peft_core::peft_config::targets::dedupe_lists;
use peft_core::peft_config::{LayerIndices, LayersPattern, PeftConfigCommon, TargetModules};
use peft_core::LayerMethod;
use peft_core::MethodConfig;
use peft_core::{AdapterConfig, BiasMode, Result, TunerLayer};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// `peft_type` of FourierFT.
pub const PEFT_TYPE: &str = "FOURIERFT";

/// PEFT 0.21.2's `FourierFTConfig`, field for field.
///
/// ```
/// use peft_core::peft_config::TargetModules;
/// use peft_fourierft::FourierFtConfig;
///
/// let config = FourierFtConfig {
///     n_frequency: 200,
///     target_modules: Some(TargetModules::list(["q_proj", "v_proj"])),
///     ..FourierFtConfig::default()
/// };
/// assert_eq!((config.scaling, config.random_loc_seed), (150.0, Some(777)));
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct FourierFtConfig {
    /// `peft_type`, `task_type`, `base_model_name_or_path`, `revision`, `inference_mode`, …
    #[serde(flatten)]
    pub common: PeftConfigCommon,
    /// Learned spectral coefficients per layer.
    pub n_frequency: i64,
    /// The factor the inverse FFT is multiplied by.
    pub scaling: f64,
    /// The seed of the generator that picks the coefficients' locations (they are not saved: the same seed
    /// gives the same locations).
    pub random_loc_seed: Option<i64>,
    /// The base weight is stored `(in, out)` (GPT-2's `Conv1D`); corrected from the layer type on injection.
    pub fan_in_fan_out: bool,
    /// Modules to adapt: names / dotted suffixes, a full-match regex, or `"all-linear"`.
    pub target_modules: Option<TargetModules>,
    /// Modules never to adapt.
    pub exclude_modules: Option<TargetModules>,
    /// Which biases train with the adapter: `"none"`, `"all"` or `"fourier_only"`.
    pub bias: BiasOption,
    /// Extra modules trained and saved in full.
    pub modules_to_save: Option<Vec<String>>,
    /// Only adapt layers with these indices.
    pub layers_to_transform: Option<LayerIndices>,
    /// The name of the layer list `layers_to_transform` indexes into.
    pub layers_pattern: Option<LayersPattern>,
    /// Per-module `n_frequency`: `{name: n}`; an entry applies to a module whose name ends with `.<name>`
    /// (the first such entry in order), or whose full name is `<name>`.
    pub n_frequency_pattern: IndexMap<String, i64>,
    /// Start the spectrum at zero (the identity); `false` (PEFT's default) keeps the N(0, 1) draw.
    pub init_weights: bool,
}

impl Default for FourierFtConfig {
    fn default() -> Self {
        Self {
            common: PeftConfigCommon::new(PEFT_TYPE),
            n_frequency: 1000,
            scaling: 150.0,
            random_loc_seed: Some(777),
            fan_in_fan_out: false,
            target_modules: None,
            exclude_modules: None,
            bias: BiasOption::default(),
            modules_to_save: None,
            layers_to_transform: None,
            layers_pattern: None,
            n_frequency_pattern: IndexMap::new(),
            init_weights: false,
        }
    }
}

impl FourierFtConfig {
    fn check(&self, location: &str) -> Result<()> {
        Ok(self.target_spec().check_layer_selection(location)?)
    }

    /// The number of coefficients for module `key`, as PEFT picks it: the first `n_frequency_pattern`
    /// entry `p` with `re.match(".*\.p$", key)`, else the entry named exactly `key`, else `n_frequency`.
    ///
    /// # Errors
    /// An entry that is not a valid regex.
    pub fn n_frequency_for(&self, key: &str) -> Result<i64> {
        let found = suffix_or_exact("n_frequency_pattern", &self.n_frequency_pattern, key)?;
        Ok(found.copied().unwrap_or(self.n_frequency))
    }
}

impl MethodConfig for FourierFtConfig {
    const PEFT_TYPE: &'static str = PEFT_TYPE;

    /// `FourierFTConfig.__post_init__`: target lists become sets; the layer-selection rules.
    fn post_init(&mut self, location: &str, _warnings: &mut Vec<String>) -> Result<()> {
        dedupe_lists([&mut self.target_modules, &mut self.exclude_modules]);
        self.check(location)
    }
}

impl AdapterConfig for FourierFtConfig {
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
        match self.random_loc_seed {
            None => {
                return Err(unsupported_option(
                    PEFT_TYPE,
                    "random_loc_seed",
                    &Value::Null,
                    "the coefficient locations are drawn from a generator seeded with it (PEFT fails without one)",
                ))
            }
            Some(s) if s < 0 => {
                return Err(unsupported_option(PEFT_TYPE, "random_loc_seed", &Value::from(s), "a negative seed"))
            }
            Some(_) => {}
        }
        // Every entry must compile (looked up with a key no entry is named after).
        suffix_or_exact("n_frequency_pattern", &self.n_frequency_pattern, "\0")?;
        Ok(())
    }

    fn bias(&self) -> BiasMode {
        self.bias.mode().unwrap_or(BiasMode::None)
    }
}

impl LayerMethod for FourierFtConfig {
    fn create_layer(&mut self, ctx: &mut LayerInit<'_, '_>) -> Result<Box<dyn TunerLayer>> {
        crate::layer::FourierFtLayer::create(self, ctx).map(|l| Box::new(l) as Box<dyn TunerLayer>)
    }
}
