//! `WaveftConfig`: PEFT 0.21.2's keys, defaults and checks, and the model-wide `n_frequency` allocation
//! (`proportional_parameters`).

use crate::wavelet;
use indexmap::IndexMap;
use peft_core::config::{unsupported_option, BiasMode, BiasOption, LayerInit, TargetLayer, TargetView};
use peft_core::peft_config::patterns::PatternMap;
use peft_core::peft_config::targets::dedupe_lists;
use peft_core::peft_config::{
    ConfigError, LayerIndices, LayersPattern, Num, PeftConfigCommon, TargetModules,
};
use peft_core::{AdapterConfig, LayerMethod, MethodConfig, PeftError, Result, TunerLayer};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// `peft_type` of WaveFT.
pub const PEFT_TYPE: &str = "WAVEFT";

/// PEFT 0.21.2's `WaveFTConfig`, field for field.
///
/// WaveFT learns `n_frequency` coefficients of the weight update's 2-D wavelet decomposition, at cells
/// drawn once from `random_loc_seed`; the update is their inverse discrete wavelet transform (or, with
/// `use_idwt: false`, the sparse coefficient matrix itself), times `scaling`.
///
/// ```
/// use peft_core::peft_config::TargetModules;
/// use peft_waveft::WaveftConfig;
///
/// let config = WaveftConfig {
///     n_frequency: 64,
///     wavelet_family: "sym2".into(),
///     target_modules: Some(TargetModules::list(["q_proj", "v_proj"])),
///     ..WaveftConfig::default()
/// };
/// assert_eq!((config.scaling.value(), config.random_loc_seed), (25.0, Some(777)));
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct WaveftConfig {
    /// `peft_type`, `task_type`, `base_model_name_or_path`, `revision`, `inference_mode`, …
    #[serde(flatten)]
    pub common: PeftConfigCommon,
    /// Learned wavelet coefficients per layer (at most `in · out`).
    pub n_frequency: i64,
    /// The factor the reconstructed update is multiplied by (kept as written: PEFT saves an integer as an
    /// integer).
    pub scaling: Num,
    /// The wavelet (`"db1"` … `"db38"`, `"sym2"` … `"sym20"`, `"coif1"` … `"coif17"`). PEFT 0.21.2's
    /// transform runs with `db1`–`db10`, `sym2`–`sym10` and `coif1`–`coif4` only; the others take
    /// PyWavelets' filters here (see [`wavelet::filters`]), and adapters using them do not run in PEFT.
    pub wavelet_family: String,
    /// Reconstruct the update with the inverse 2-D wavelet transform; `false`: the sparse coefficient
    /// matrix is the update.
    pub use_idwt: bool,
    /// The seed of the generator that picks the coefficients' cells (they are not saved: the same seed
    /// gives the same cells).
    pub random_loc_seed: Option<i64>,
    /// The base weight is stored `(in, out)` (GPT-2's `Conv1D`); corrected from the layer type on injection.
    pub fan_in_fan_out: bool,
    /// Modules to adapt: names / dotted suffixes, a full-match regex, or `"all-linear"`.
    pub target_modules: Option<TargetModules>,
    /// Modules never to adapt.
    pub exclude_modules: Option<TargetModules>,
    /// Which biases train with the adapter: `"none"`, `"all"` or `"waveft_only"`.
    pub bias: BiasOption,
    /// Extra modules trained and saved in full.
    pub modules_to_save: Option<Vec<String>>,
    /// Only the layers with these indices are adapted.
    pub layers_to_transform: Option<LayerIndices>,
    /// The name of the layer list `layers_to_transform` indexes into.
    pub layers_pattern: Option<LayersPattern>,
    /// Per-module `n_frequency`: the first entry `p` (in order) whose regex matches the module name at a
    /// dot boundary and to its end (`(.*\.)?(p)$`).
    pub n_frequency_pattern: IndexMap<String, i64>,
    /// Share `n_frequency · (number of targeted layers)` among the targeted layers in proportion to
    /// `in · out` (at least 1 each); overrides `n_frequency_pattern`.
    pub proportional_parameters: bool,
    /// Start the coefficients at zero (the identity, PEFT's default); `false`: `N(0, 1) · 0.01`.
    pub init_weights: bool,
    /// This adapter's `proportional_parameters` allocation, by module name (made in `before_layers`,
    /// PEFT's `_proportional_params_cache`; never saved).
    #[serde(skip)]
    pub proportional: IndexMap<String, i64>,
}

impl Default for WaveftConfig {
    fn default() -> Self {
        Self {
            common: PeftConfigCommon::new(PEFT_TYPE),
            n_frequency: 2592,
            scaling: Num::from(25.0),
            wavelet_family: "db1".into(),
            use_idwt: true,
            random_loc_seed: Some(777),
            fan_in_fan_out: false,
            target_modules: None,
            exclude_modules: None,
            bias: BiasOption::default(),
            modules_to_save: None,
            layers_to_transform: None,
            layers_pattern: None,
            n_frequency_pattern: IndexMap::new(),
            proportional_parameters: false,
            init_weights: true,
            proportional: IndexMap::new(),
        }
    }
}

impl WaveftConfig {
    /// `__post_init__`'s checks: the layer-selection rules, then a family from `WAVELET_REDUCTIONS`.
    fn check(&self, location: &str) -> Result<()> {
        self.target_spec().check_layer_selection(location)?;
        if wavelet::reduction(&self.wavelet_family).is_none() {
            let names: Vec<String> = wavelet::families().map(|n| format!("'{n}'")).collect();
            return Err(ConfigError::InvalidField {
                location: location.to_string(),
                field: "wavelet_family".into(),
                message: format!(
                    "Wavelet family {} not supported. Supported wavelet families are: [{}]",
                    self.wavelet_family,
                    names.join(", ")
                ),
            }
            .into());
        }
        Ok(())
    }

    /// The number of coefficients for module `key`, in PEFT's order of precedence: this adapter's
    /// proportional allocation, then the first matching `n_frequency_pattern` entry, then `n_frequency`.
    ///
    /// # Errors
    /// A pattern that is not a valid regex.
    pub fn n_frequency_for(&self, key: &str) -> Result<i64> {
        if self.proportional_parameters {
            if let Some(n) = self.proportional.get(key) {
                return Ok(*n);
            }
        }
        let patterns = PatternMap::new("n_frequency_pattern", &self.n_frequency_pattern)?;
        Ok(patterns.lookup(key).map_or(self.n_frequency, |(_, n)| *n))
    }
}

/// PEFT's `_calculate_proportional_parameters`: the budget `n_frequency · L` over the `L` targeted linear
/// layers (dense or `Conv1D`), layer `i` getting `max(1, round(in_i · out_i / Σ in·out · budget))` with
/// Python's rounding (half to even), computed in `f64` as Python does.
///
/// # Errors
/// No linear layer among the targets (PEFT's message).
pub fn proportional_allocation(n_frequency: i64, targets: &[TargetLayer]) -> Result<IndexMap<String, i64>> {
    let linear: Vec<&TargetLayer> = targets.iter().filter(|t| t.view == TargetView::Linear).collect();
    if linear.is_empty() {
        return Err(PeftError::Invalid(
            "No target modules found for proportional parameter allocation.".into(),
        ));
    }
    let cells = |t: &TargetLayer| t.in_features * t.out_features;
    // Python's ints do not overflow; i128 keeps the sum exact for any layer sizes.
    let total: i128 = linear.iter().map(|t| i128::from(cells(t))).sum();
    let budget = n_frequency as f64 * linear.len() as f64;
    Ok(linear
        .iter()
        .map(|t| {
            // Python divides the exact integers, rounding once; below 2⁵³ both convert to f64 exactly and
            // IEEE division rounds the same way.
            let ratio = cells(t) as f64 / total as f64;
            let n = (ratio * budget).round_ties_even();
            (t.name.clone(), (n as i64).max(1))
        })
        .collect())
}

impl MethodConfig for WaveftConfig {
    const PEFT_TYPE: &'static str = PEFT_TYPE;

    /// `WaveFTConfig.__post_init__`: target lists become sets; the layer-selection rules; a known family.
    fn post_init(&mut self, location: &str, _warnings: &mut Vec<String>) -> Result<()> {
        dedupe_lists([&mut self.target_modules, &mut self.exclude_modules]);
        self.check(location)
    }
}

impl AdapterConfig for WaveftConfig {
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
        if self.random_loc_seed.is_none() {
            return Err(unsupported_option(
                PEFT_TYPE,
                "random_loc_seed",
                &Value::Null,
                "the coefficient cells are drawn from a generator seeded with it (PEFT fails without one)",
            ));
        }
        if !self.scaling.value().is_finite() {
            return Err(unsupported_option(
                PEFT_TYPE,
                "scaling",
                &Value::Number(self.scaling.0.clone()),
                "a number",
            ));
        }
        // PEFT 0.21.2 lists these names but ships no usable filter for them (its first forward pass fails);
        // the published PyWavelets filters make them work here, and the user should know PEFT cannot
        // run the adapter.
        if self.use_idwt && wavelet::beyond_peft(&self.wavelet_family) {
            log::warn!(
                "wavelet_family '{}' uses PyWavelets' filter: PEFT 0.21.2 loads such an adapter but its forward \
                 pass fails (it ships filters for db1-db10, sym2-sym10 and coif1-coif4 only)",
                self.wavelet_family
            );
        }
        // Every entry must compile.
        PatternMap::new("n_frequency_pattern", &self.n_frequency_pattern)?;
        Ok(())
    }

    fn bias(&self) -> BiasMode {
        self.bias.mode().unwrap_or(BiasMode::None)
    }

    /// PEFT computes the proportional allocation once per adapter, over every targeted module, before
    /// the first layer gets the adapter.
    fn before_layers(
        &mut self,
        _adapter: &str,
        targets: &[TargetLayer],
        _existing: &[(&str, &dyn AdapterConfig)],
    ) -> Result<()> {
        self.proportional = if self.proportional_parameters {
            proportional_allocation(self.n_frequency, targets)?
        } else {
            IndexMap::new()
        };
        Ok(())
    }
}

impl LayerMethod for WaveftConfig {
    fn create_layer(&mut self, ctx: &mut LayerInit<'_, '_>) -> Result<Box<dyn TunerLayer>> {
        crate::layer::WaveftLayer::create(self, ctx).map(|l| Box::new(l) as Box<dyn TunerLayer>)
    }
}
