//! `RoadConfig`: PEFT 0.21.2's keys, defaults and checks.

use peft_core::config::LayerInit;
use peft_core::peft_config::targets::dedupe_lists;
use peft_core::peft_config::{ConfigError, PeftConfigCommon, TargetModules};
use peft_core::LayerMethod;
use peft_core::MethodConfig;
use peft_core::{AdapterConfig, Result, TunerLayer};
use serde::{Deserialize, Serialize};

/// `peft_type` of RoAd.
pub const PEFT_TYPE: &str = "ROAD";

/// How many angles and scales RoAd learns per output pair (`variant`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum RoadVariant {
    /// `"road_1"`: one angle and one scale per pair, shared by both of its elements (`out/2` each).
    #[default]
    Road1,
    /// `"road_2"`: one angle and one scale per element (`out` each).
    Road2,
    /// `"road_4"`: two angles and two scales per element, one for each column of its rotation (`2·out`).
    Road4,
}

impl RoadVariant {
    /// PEFT's name (`"road_1"`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            RoadVariant::Road1 => "road_1",
            RoadVariant::Road2 => "road_2",
            RoadVariant::Road4 => "road_4",
        }
    }

    /// The number of angles (and of scales) on a layer with `out_features` outputs.
    pub fn parameters(self, out_features: i64) -> i64 {
        match self {
            RoadVariant::Road1 => out_features / 2,
            RoadVariant::Road2 => out_features,
            RoadVariant::Road4 => out_features * 2,
        }
    }
}

impl TryFrom<String> for RoadVariant {
    type Error = String;

    fn try_from(s: String) -> std::result::Result<Self, String> {
        match s.as_str() {
            "road_1" => Ok(RoadVariant::Road1),
            "road_2" => Ok(RoadVariant::Road2),
            "road_4" => Ok(RoadVariant::Road4),
            other => {
                Err(format!("Invalid variant {other} specified. Please choose from road_1, road_2 or road_4"))
            }
        }
    }
}

impl From<RoadVariant> for String {
    fn from(v: RoadVariant) -> String {
        v.as_str().to_string()
    }
}

/// PEFT 0.21.2's `RoadConfig`, field for field.
///
/// RoAd cuts each adapted layer's output into groups of `group_size` elements and rotates the pairs
/// `(y_i, y_{i+group_size/2})` of each group by a learned angle, scaled by a learned factor. `group_size`
/// must be even and divide every adapted layer's `out_features`.
///
/// ```
/// use peft_core::peft_config::TargetModules;
/// use peft_road::{RoadConfig, RoadVariant};
///
/// let config = RoadConfig {
///     target_modules: Some(TargetModules::list(["q_proj", "v_proj"])),
///     variant: RoadVariant::Road2,
///     ..RoadConfig::default()
/// };
/// assert_eq!(config.group_size, 64);
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RoadConfig {
    /// `peft_type`, `task_type`, `base_model_name_or_path`, `revision`, `inference_mode`, …
    #[serde(flatten)]
    pub common: PeftConfigCommon,
    /// `road_1` (default), `road_2` or `road_4`.
    pub variant: RoadVariant,
    /// Elements per rotation group (even; default 64): element `i` of a group pairs with `i + group_size/2`.
    pub group_size: i64,
    /// Start at the identity (angles 0, scales 1); `false` draws angles from N(0, 0.5) and scales from
    /// N(1, 0.5).
    pub init_weights: bool,
    /// Modules to adapt: names / dotted suffixes, a full-match regex, or `"all-linear"`.
    pub target_modules: Option<TargetModules>,
    /// Extra modules trained and saved in full.
    pub modules_to_save: Option<Vec<String>>,
}

impl Default for RoadConfig {
    fn default() -> Self {
        Self {
            common: PeftConfigCommon::new(PEFT_TYPE),
            variant: RoadVariant::Road1,
            group_size: 64,
            init_weights: true,
            target_modules: None,
            modules_to_save: None,
        }
    }
}

impl RoadConfig {
    /// `__post_init__`'s hard errors (the variant is checked when it is parsed).
    fn check(&self, location: &str) -> Result<()> {
        if self.group_size <= 0 || self.group_size % 2 != 0 {
            return Err(ConfigError::InvalidField {
                location: location.to_string(),
                field: "group_size".into(),
                message: format!(
                    "The group_size must be divisible by 2 when using RoadLayer, but got {}.",
                    self.group_size
                ),
            }
            .into());
        }
        Ok(())
    }
}

impl MethodConfig for RoadConfig {
    const PEFT_TYPE: &'static str = PEFT_TYPE;

    /// `RoadConfig.__post_init__`: the target list becomes a set; `group_size` must be even.
    fn post_init(&mut self, location: &str, _warnings: &mut Vec<String>) -> Result<()> {
        dedupe_lists([&mut self.target_modules]);
        self.check(location)
    }
}

impl AdapterConfig for RoadConfig {
    peft_core::adapter_config_boilerplate!();
    peft_core::adapter_config_targets!(target_modules, modules_to_save);

    fn validate(&self) -> Result<()> {
        self.check(peft_core::peft_config::error::IN_MEMORY)
    }

    /// PEFT's RoAd takes `adapter_names` (its `_enable_peft_forward_hooks`): each row of a batch may use
    /// its own RoAd adapter, or none.
    fn model_options(&self) -> Result<peft_core::ModelOptions> {
        Ok(peft_core::ModelOptions { mixed_batches: true, ..Default::default() })
    }
}

impl LayerMethod for RoadConfig {
    fn create_layer(&mut self, ctx: &mut LayerInit<'_, '_>) -> Result<Box<dyn TunerLayer>> {
        crate::layer::RoadLayer::create(self, ctx).map(|l| Box::new(l) as Box<dyn TunerLayer>)
    }
}
