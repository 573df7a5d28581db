//! `HRAConfig`: PEFT 0.21.2's keys, defaults and checks.

use peft_core::config::{BiasMode, BiasOption, LayerInit};
use peft_core::peft_config::targets::dedupe_lists;
use peft_core::peft_config::{LayerIndices, LayersPattern, PeftConfigCommon, TargetModules};
use peft_core::LayerMethod;
use peft_core::MethodConfig;
use peft_core::{AdapterConfig, Result, TunerLayer};
use serde::{Deserialize, Serialize};

/// `peft_type` of HRA.
pub const PEFT_TYPE: &str = "HRA";

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
    pub bias: BiasOption,
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
            bias: BiasOption::default(),
            modules_to_save: None,
        }
    }
}

impl HraConfig {
    /// `__post_init__`'s hard errors.
    fn check(&self, location: &str) -> Result<()> {
        Ok(self.target_spec().check_layer_selection(location)?)
    }
}

impl MethodConfig for HraConfig {
    const PEFT_TYPE: &'static str = PEFT_TYPE;

    /// `HRAConfig.__post_init__`: target lists become sets; the hard errors of its checks.
    fn post_init(&mut self, location: &str, _warnings: &mut Vec<String>) -> Result<()> {
        dedupe_lists([&mut self.target_modules, &mut self.exclude_modules]);
        self.check(location)
    }
}

impl AdapterConfig for HraConfig {
    peft_core::adapter_config_boilerplate!();
    peft_core::adapter_config_targets!(
        target_modules,
        exclude_modules,
        layers_to_transform,
        layers_pattern,
        modules_to_save
    );

    fn validate(&self) -> Result<()> {
        self.bias.mode()?;
        self.check(peft_core::peft_config::error::IN_MEMORY)?;
        // PEFT raises this from `update_layer`, before any layer gets the adapter.
        peft_core::config::require_positive("r", self.r)
    }

    fn bias(&self) -> BiasMode {
        self.bias.mode().unwrap_or(BiasMode::None)
    }
}

impl LayerMethod for HraConfig {
    fn create_layer(&mut self, ctx: &mut LayerInit<'_, '_>) -> Result<Box<dyn TunerLayer>> {
        crate::layer::HraLayer::create(self, ctx).map(|l| Box::new(l) as Box<dyn TunerLayer>)
    }
}
