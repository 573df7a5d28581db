//! `PeanutConfig`: PEFT 0.21.2's keys, defaults and checks.

use peft_core::config::LayerInit;
use peft_core::peft_config::error::ConfigError;
use peft_core::peft_config::targets::dedupe_lists;
use peft_core::peft_config::{LayerIndices, LayersPattern, PeftConfigCommon, TargetModules};
use peft_core::LayerMethod;
use peft_core::{Activation, AdapterConfig, MethodConfig, Result, TunerLayer};
use serde::{Deserialize, Serialize};

/// `peft_type` of PEANuT.
pub const PEFT_TYPE: &str = "PEANUT";

/// PEFT 0.21.2's `PeanutConfig`, field for field.
///
/// PEANuT ("Parameter-Efficient Adaptation with Weight-aware Neural Tweakers") computes each adapted
/// layer's update from its frozen weight: `ΔW = (B · f(… f(Wᵀ · Aᵀ) …))ᵀ · scaling`, a small network
/// (`A`, `depth` encoder/decoder pairs with residuals, `B`) applied to the weight's columns.
///
/// ```
/// use peft_core::peft_config::TargetModules;
/// use peft_peanut::PeanutConfig;
///
/// let config = PeanutConfig {
///     r: 8,
///     depth: 2,
///     act_fn: "gelu".into(),
///     target_modules: Some(TargetModules::list(["q_proj", "v_proj"])),
///     ..PeanutConfig::default()
/// };
/// assert_eq!(config.scaling, 1.0);
/// assert_eq!(PeanutConfig::default().r, 32);
/// assert_eq!(PeanutConfig::default().act_fn, "relu");
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PeanutConfig {
    /// `peft_type`, `task_type`, `base_model_name_or_path`, `revision`, `inference_mode`, …
    #[serde(flatten)]
    pub common: PeftConfigCommon,
    /// The width of the adapter network (default 32).
    pub r: i64,
    /// How many encoder/decoder pairs sit between `A` and `B` (default 0).
    pub depth: i64,
    /// The activation after every projection but `B`: a key of transformers' `ACT2FN` (default `"relu"`).
    pub act_fn: String,
    /// The factor on the update (default 1.0).
    pub scaling: f64,
    /// Modules to adapt: names / dotted suffixes, a full-match regex, or `"all-linear"`.
    pub target_modules: Option<TargetModules>,
    /// Modules never to adapt.
    pub exclude_modules: Option<TargetModules>,
    /// Extra modules trained and saved in full.
    pub modules_to_save: Option<Vec<String>>,
    /// Only the layers with these indices are adapted.
    pub layers_to_transform: Option<LayerIndices>,
    /// The name of the layer list `layers_to_transform` indexes into.
    pub layers_pattern: Option<LayersPattern>,
    /// `true` (default): `B` starts at zero, so the adapter starts as the identity; `false`: `B` is
    /// Kaiming-uniform too.
    pub init_weights: bool,
}

impl Default for PeanutConfig {
    fn default() -> Self {
        Self {
            common: PeftConfigCommon::new(PEFT_TYPE),
            r: 32,
            depth: 0,
            act_fn: "relu".into(),
            scaling: 1.0,
            target_modules: None,
            exclude_modules: None,
            modules_to_save: None,
            layers_to_transform: None,
            layers_pattern: None,
            init_weights: true,
        }
    }
}

impl PeanutConfig {
    /// `act_fn` parsed.
    ///
    /// # Errors
    /// A name that is no key of `ACT2FN`.
    pub fn activation(&self) -> Result<Activation> {
        Activation::from_name(&self.act_fn)
    }

    fn check(&self, location: &str) -> Result<()> {
        self.target_spec().check_layers_pattern(location)?;
        let invalid = |field: &str, message: String| ConfigError::InvalidField {
            location: location.to_string(),
            field: field.into(),
            message,
        };
        if self.r <= 0 {
            return Err(invalid("r", format!("`r` must be a positive integer; got {}.", self.r)).into());
        }
        if self.depth < 0 {
            return Err(invalid(
                "depth",
                format!("`depth` can only be a non-negative integer; got {}.", self.depth),
            )
            .into());
        }
        if Activation::from_name(&self.act_fn).is_err() {
            return Err(invalid(
                "act_fn",
                format!(
                    "Unsupported `act_fn`: {}. Must be one of {:?}.",
                    self.act_fn,
                    Activation::names().collect::<Vec<_>>()
                ),
            )
            .into());
        }
        Ok(())
    }
}

impl MethodConfig for PeanutConfig {
    const PEFT_TYPE: &'static str = PEFT_TYPE;

    /// `PeanutConfig.__post_init__`: target lists become sets; `layers_pattern` needs
    /// `layers_to_transform`; a positive `r`, a non-negative `depth`, an `act_fn` from `ACT2FN`.
    fn post_init(&mut self, location: &str, _warnings: &mut Vec<String>) -> Result<()> {
        dedupe_lists([&mut self.target_modules, &mut self.exclude_modules]);
        self.check(location)
    }
}

impl AdapterConfig for PeanutConfig {
    peft_core::adapter_config_boilerplate!();
    peft_core::adapter_config_targets!(
        target_modules,
        exclude_modules,
        layers_to_transform,
        layers_pattern,
        modules_to_save
    );

    fn validate(&self) -> Result<()> {
        self.check(peft_core::peft_config::error::IN_MEMORY)
    }
}

impl LayerMethod for PeanutConfig {
    fn create_layer(&mut self, ctx: &mut LayerInit<'_, '_>) -> Result<Box<dyn TunerLayer>> {
        crate::layer::PeanutLayer::create(self, ctx).map(|l| Box::new(l) as Box<dyn TunerLayer>)
    }
}
