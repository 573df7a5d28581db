//! `LoHaConfig`: PEFT 0.21.2's keys, defaults and checks.

use peft_core::config::LayerInit;
use peft_core::peft_config::{defaults, PeftConfigCommon, TargetModules, TargetSpec};
use peft_core::MethodConfig;
use peft_core::{AdapterConfig, Result, TunerLayer};
use peft_lycoris::LycorisOptions;
use serde::{Deserialize, Serialize};

/// `peft_type` of LoHa.
pub const PEFT_TYPE: &str = "LOHA";

/// PEFT 0.21.2's `LoHaConfig`, key for key: the shared LyCORIS keys ([`LycorisOptions`]: `r`, `alpha`,
/// `rank_dropout`, `module_dropout`, `use_effective_conv2d`, `target_modules`, `exclude_modules`,
/// `layers_to_transform`, `layers_pattern`, `modules_to_save`, `rank_pattern`, `alpha_pattern`) and
/// `init_weights`.
///
/// ```
/// use peft_core::peft_config::TargetModules;
/// use peft_loha::LohaConfig;
/// use peft_lycoris::LycorisOptions;
///
/// let config = LohaConfig {
///     lycoris: LycorisOptions {
///         r: 4,
///         alpha: 8.into(),
///         target_modules: Some(TargetModules::list(["q_proj", "v_proj"])),
///         ..LycorisOptions::default()
///     },
///     ..LohaConfig::default()
/// };
/// assert!(config.init_weights);
/// let json = peft_core::AdapterConfig::to_json(&config);
/// assert_eq!(json["r"], 4);
/// assert_eq!(json["peft_type"], "LOHA");
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LohaConfig {
    /// `peft_type`, `task_type`, `base_model_name_or_path`, `revision`, `inference_mode`, …
    #[serde(flatten)]
    pub common: PeftConfigCommon,
    /// The keys LoHa shares with LoKr.
    #[serde(flatten)]
    pub lycoris: LycorisOptions,
    /// `true`: `hada_w2_b` starts at zero (the adapter is the identity); `false`: every factor keeps its
    /// Kaiming-uniform draw.
    pub init_weights: bool,
}

impl Default for LohaConfig {
    fn default() -> Self {
        Self {
            common: PeftConfigCommon::new(PEFT_TYPE),
            lycoris: LycorisOptions::default(),
            init_weights: true,
        }
    }
}

impl MethodConfig for LohaConfig {
    const PEFT_TYPE: &'static str = PEFT_TYPE;

    /// `LoHaConfig.__post_init__`: the LyCORIS checks.
    fn post_init(&mut self, location: &str, _warnings: &mut Vec<String>) -> Result<()> {
        self.lycoris.post_init(location)
    }
}

impl AdapterConfig for LohaConfig {
    peft_core::adapter_config_boilerplate!();

    fn validate(&self) -> Result<()> {
        self.lycoris.check(peft_core::peft_config::error::IN_MEMORY)
    }

    fn target_spec(&self) -> TargetSpec<'_> {
        self.lycoris.target_spec()
    }

    fn set_target_modules(&mut self, targets: TargetModules) {
        self.lycoris.target_modules = Some(targets);
    }

    fn default_target_modules(&self, model_type: &str) -> Option<TargetModules> {
        defaults::target_modules(PEFT_TYPE, model_type)
    }

    fn set_modules_to_save(&mut self, modules: Vec<String>) -> bool {
        self.lycoris.modules_to_save = Some(modules);
        true
    }

    fn create_layer(&mut self, ctx: &mut LayerInit<'_, '_>) -> Result<Box<dyn TunerLayer>> {
        crate::layer::create(self, ctx).map(|l| Box::new(l) as Box<dyn TunerLayer>)
    }
}
