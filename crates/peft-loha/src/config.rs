//! `LoHaConfig`: PEFT 0.21.2's keys, defaults and checks.

use peft_core::peft_config::PeftConfigCommon;
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

peft_lycoris::lycoris_config_impls!(LohaConfig, PEFT_TYPE);
