//! `BeftConfig`: PEFT 0.21.2's keys, defaults and checks.

use peft_core::config::LayerInit;
use peft_core::peft_config::targets::dedupe_lists;
use peft_core::peft_config::{PeftConfigCommon, TargetModules};
use peft_core::LayerMethod;
use peft_core::MethodConfig;
use peft_core::{AdapterConfig, Result, TunerLayer};
use serde::{Deserialize, Serialize};

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

impl MethodConfig for BeftConfig {
    const PEFT_TYPE: &'static str = PEFT_TYPE;

    /// `BeftConfig.__post_init__`: the target list becomes a set (it has no checks).
    fn post_init(&mut self, _location: &str, _warnings: &mut Vec<String>) -> Result<()> {
        dedupe_lists([&mut self.target_modules]);
        Ok(())
    }
}

impl AdapterConfig for BeftConfig {
    peft_core::adapter_config_boilerplate!();
    peft_core::adapter_config_targets!(target_modules, modules_to_save);

    fn validate(&self) -> Result<()> {
        Ok(())
    }
}

impl LayerMethod for BeftConfig {
    fn create_layer(&mut self, ctx: &mut LayerInit<'_, '_>) -> Result<Box<dyn TunerLayer>> {
        crate::layer::BeftLayer::create(self, ctx).map(|l| Box::new(l) as Box<dyn TunerLayer>)
    }
}
