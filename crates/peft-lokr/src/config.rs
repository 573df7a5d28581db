//! `LoKrConfig`: PEFT 0.21.2's keys, defaults and checks.

use peft_core::peft_config::PeftConfigCommon;
use peft_lycoris::LycorisOptions;
use serde::{Deserialize, Serialize};

/// `peft_type` of LoKr.
pub const PEFT_TYPE: &str = "LOKR";

/// PEFT 0.21.2's `LoKrConfig`, key for key: the shared LyCORIS keys ([`LycorisOptions`]: `r`, `alpha`,
/// `rank_dropout`, `module_dropout`, `use_effective_conv2d`, `target_modules`, `exclude_modules`,
/// `layers_to_transform`, `layers_pattern`, `modules_to_save`, `rank_pattern`, `alpha_pattern`),
/// `decompose_both`, `decompose_factor`, `rank_dropout_scale` and `init_weights`.
///
/// ```
/// use peft_core::peft_config::TargetModules;
/// use peft_lokr::{LokrConfig, LokrInitWeights};
/// use peft_lycoris::LycorisOptions;
///
/// let config = LokrConfig {
///     lycoris: LycorisOptions {
///         r: 4,
///         alpha: 8.into(),
///         target_modules: Some(TargetModules::list(["q_proj", "v_proj"])),
///         ..LycorisOptions::default()
///     },
///     ..LokrConfig::default()
/// };
/// assert_eq!(config.init_weights, LokrInitWeights::Bool(true));
/// assert_eq!(config.decompose_factor, -1);
/// let json = peft_core::AdapterConfig::to_json(&config);
/// assert_eq!(json["r"], 4);
/// assert_eq!(json["peft_type"], "LOKR");
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LokrConfig {
    /// `peft_type`, `task_type`, `base_model_name_or_path`, `revision`, `inference_mode`, …
    #[serde(flatten)]
    pub common: PeftConfigCommon,
    /// The keys LoKr shares with LoHa.
    #[serde(flatten)]
    pub lycoris: LycorisOptions,
    /// Decompose the left Kronecker factor too (`lokr_w1_a @ lokr_w1_b`) when `r` is below half of its
    /// larger side.
    pub decompose_both: bool,
    /// The factor the dimensions are split by (`-1`: as close to the square root as possible).
    pub decompose_factor: i64,
    /// Divide the rank-dropout mask by its mean in training.
    pub rank_dropout_scale: bool,
    /// How the factors start (see [`LokrInitWeights`]).
    pub init_weights: LokrInitWeights,
}

/// `init_weights`: `true`, `false` or `"lycoris"`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum LokrInitWeights {
    /// `true`: the left factor (`lokr_w1`, or `lokr_w1_a`) starts at zero, the adapter is the identity;
    /// `false`: every factor keeps its Kaiming-uniform draw.
    Bool(bool),
    /// `"lycoris"`: as the LyCORIS repository, the right factor (`lokr_w2`, or `lokr_w2_b`) starts at
    /// zero.
    Scheme(LokrInitScheme),
}

/// The named init schemes of `init_weights`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LokrInitScheme {
    /// `"lycoris"`.
    #[serde(rename = "lycoris")]
    Lycoris,
}

impl Default for LokrInitWeights {
    fn default() -> Self {
        LokrInitWeights::Bool(true)
    }
}

impl Default for LokrConfig {
    fn default() -> Self {
        Self {
            common: PeftConfigCommon::new(PEFT_TYPE),
            lycoris: LycorisOptions::default(),
            decompose_both: false,
            decompose_factor: -1,
            rank_dropout_scale: false,
            init_weights: LokrInitWeights::default(),
        }
    }
}

peft_lycoris::lycoris_config_impls!(LokrConfig, PEFT_TYPE);
