//! `LilyConfig`: PEFT 0.21.2's keys, defaults and checks, and the hook that decides which layers share
//! which `lily_A` and `lily_B` before the layers are created.

use crate::sharing::SharingPlan;
use peft_core::config::{LayerInit, TargetLayer};
use peft_core::peft_config::targets::dedupe_lists;
use peft_core::peft_config::{ConfigError, LayerIndices, LayersPattern, PeftConfigCommon, TargetModules};
use peft_core::{AdapterConfig, LayerMethod, MethodConfig, Result, TunerLayer};
use serde::{Deserialize, Serialize};

/// `peft_type` of LiLy.
pub const PEFT_TYPE: &str = "LILY";

/// PEFT 0.21.2's `LilyConfig`, field for field.
///
/// LiLy ("Low-Rank Interconnected Adaptation Across Layers") gives each group of `stride_A` consecutive
/// targeted layers (of one target name and weight shape) one down-projection `lily_A` `(r, in)`, and all
/// layers of that target name and shape one pool of `num_B` up-projections `lily_B` `(num_B·r, out)`; a
/// per-layer router mixes the pool by the batch-mean softmax of `router(A·x)`. `lily_B` starts at zero
/// (`init_weights`), so the adapted model starts as the base model.
///
/// ```
/// use peft_core::peft_config::TargetModules;
/// use peft_lily::LilyConfig;
///
/// let config = LilyConfig {
///     stride_A: 2,
///     target_modules: Some(TargetModules::list(["q_proj", "v_proj"])),
///     ..LilyConfig::default()
/// };
/// assert_eq!((config.r, config.num_B, config.scaling), (32, 2, 1.0));
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
#[allow(non_snake_case)]
pub struct LilyConfig {
    /// `peft_type`, `task_type`, `base_model_name_or_path`, `revision`, `inference_mode`, …
    #[serde(flatten)]
    pub common: PeftConfigCommon,
    /// The rank: `lily_A` maps `in → r`, each of the `num_B` experts `r → out`.
    pub r: i64,
    /// How many consecutive layers of one target (name and weight shape) share a `lily_A`.
    pub stride_A: i64,
    /// The number of `lily_B` experts every layer of one target (name and shape) shares.
    pub num_B: i64,
    /// The factor of the adapter's output (no `alpha / r`).
    pub scaling: f64,
    /// Modules to adapt: names / suffixes, a full-match regex, or `"all-linear"`.
    pub target_modules: Option<TargetModules>,
    /// Modules never to adapt.
    pub exclude_modules: Option<TargetModules>,
    /// Extra modules trained and saved in full.
    pub modules_to_save: Option<Vec<String>>,
    /// Only the layers with these indices are adapted.
    pub layers_to_transform: Option<LayerIndices>,
    /// The name of the layer list `layers_to_transform` indexes into.
    pub layers_pattern: Option<LayersPattern>,
    /// `true`: `lily_B` starts at zero (the identity); `false`: Kaiming-uniform like `lily_A`.
    pub init_weights: bool,
    /// Which layers lead which shared `lily_A` / `lily_B` (from `before_layers` to the layers).
    #[serde(skip)]
    pub sharing: SharingPlan,
}

impl Default for LilyConfig {
    fn default() -> Self {
        Self {
            common: PeftConfigCommon::new(PEFT_TYPE),
            r: 32,
            stride_A: 1,
            num_B: 2,
            scaling: 1.0,
            target_modules: None,
            exclude_modules: None,
            modules_to_save: None,
            layers_to_transform: None,
            layers_pattern: None,
            init_weights: true,
            sharing: SharingPlan::default(),
        }
    }
}

impl LilyConfig {
    /// `LilyConfig.__post_init__`'s checks, with its messages.
    fn check(&self, location: &str) -> Result<()> {
        self.target_spec().check_layers_pattern(location)?;
        let invalid = |field: &str, message: &str| -> peft_core::PeftError {
            ConfigError::InvalidField {
                location: location.to_string(),
                field: field.to_string(),
                message: message.to_string(),
            }
            .into()
        };
        if self.stride_A < 1 {
            return Err(invalid("stride_A", "`stride_A` must be at least 1."));
        }
        if self.num_B < 2 {
            return Err(invalid("num_B", "`num_B` must be at least 2 for the router to be trained."));
        }
        Ok(())
    }
}

impl MethodConfig for LilyConfig {
    const PEFT_TYPE: &'static str = PEFT_TYPE;

    /// `LilyConfig.__post_init__`: target lists become sets; the value checks.
    fn post_init(&mut self, location: &str, _warnings: &mut Vec<String>) -> Result<()> {
        dedupe_lists([&mut self.target_modules, &mut self.exclude_modules]);
        self.check(location)
    }
}

impl AdapterConfig for LilyConfig {
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
        // PEFT's `update_layer` refuses it before any layer gets the adapter.
        peft_core::config::require_positive("r", self.r)
    }

    /// PEFT's `_post_injection_hook`, decided up front: which targeted layers share whose `lily_A` and
    /// `lily_B` (the layers draw their own first, as PEFT's do, and then take the shared ones).
    fn before_layers(
        &mut self,
        _adapter: &str,
        targets: &[TargetLayer],
        _existing: &[(&str, &dyn AdapterConfig)],
    ) -> Result<()> {
        self.sharing = SharingPlan::new(self.target_modules.as_ref(), self.stride_A, targets);
        Ok(())
    }
}

impl LayerMethod for LilyConfig {
    fn create_layer(&mut self, ctx: &mut LayerInit<'_, '_>) -> Result<Box<dyn TunerLayer>> {
        crate::layer::LilyLayer::create(self, ctx).map(|l| Box::new(l) as Box<dyn TunerLayer>)
    }
}
