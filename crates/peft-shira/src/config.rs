//! `ShiraConfig`: PEFT 0.21.2's keys, defaults and checks.

use peft_core::config::{unsupported_option, LayerInit};
use peft_core::peft_config::targets::dedupe_lists;
use peft_core::peft_config::{PeftConfigCommon, TargetModules};
use peft_core::LayerMethod;
use peft_core::MethodConfig;
use peft_core::{AdapterConfig, Result, TunerLayer};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// `peft_type` of SHiRA.
pub const PEFT_TYPE: &str = "SHIRA";

/// The seed of a fresh `torch.Generator()` (`default_rng_seed_val`), which SHiRA's random mask uses when
/// `random_seed` is unset.
pub const TORCH_DEFAULT_SEED: u64 = 67_280_421_310_721;

/// PEFT 0.21.2's `ShiraConfig`, field for field.
///
/// ```
/// use peft_core::peft_config::TargetModules;
/// use peft_shira::ShiraConfig;
///
/// let config = ShiraConfig { r: 16, target_modules: Some(TargetModules::list(["q_proj"])), ..ShiraConfig::default() };
/// assert_eq!(config.mask_type, "random");
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ShiraConfig {
    /// `peft_type`, `task_type`, `base_model_name_or_path`, `revision`, `inference_mode`, …
    #[serde(flatten)]
    pub common: PeftConfigCommon,
    /// Sizes the adapter like LoRA of rank `r`: `r · (in + out)` trained entries per layer (the update itself
    /// is of high rank).
    pub r: i64,
    /// How the entries are chosen: `"random"` (the only mask PEFT ships).
    pub mask_type: String,
    /// The seed of the random mask's generator (unset: a fresh `torch.Generator()`'s default seed).
    pub random_seed: Option<i64>,
    /// Modules to adapt: names / dotted suffixes, a full-match regex, or `"all-linear"`.
    pub target_modules: Option<TargetModules>,
    /// Set to `false` for `nn.Linear` (the only layer SHiRA adapts).
    pub fan_in_fan_out: bool,
    /// Start the entries at zero (the identity); `false` draws them from N(0, 1).
    pub init_weights: bool,
    /// Extra modules trained and saved in full.
    pub modules_to_save: Option<Vec<String>>,
}

impl Default for ShiraConfig {
    fn default() -> Self {
        Self {
            common: PeftConfigCommon::new(PEFT_TYPE),
            r: 32,
            mask_type: "random".into(),
            random_seed: None,
            target_modules: None,
            fan_in_fan_out: false,
            init_weights: true,
            modules_to_save: None,
        }
    }
}

impl ShiraConfig {
    /// The seed the random mask's generator starts from.
    pub fn mask_seed(&self) -> u64 {
        self.random_seed.map_or(TORCH_DEFAULT_SEED, |s| s as u64)
    }
}

impl MethodConfig for ShiraConfig {
    const PEFT_TYPE: &'static str = PEFT_TYPE;

    /// `ShiraConfig.__post_init__`: the target list becomes a set; a `mask_type` other than `"random"`
    /// warns (a custom mask function cannot come from a file).
    fn post_init(&mut self, location: &str, warnings: &mut Vec<String>) -> Result<()> {
        dedupe_lists([&mut self.target_modules]);
        if self.mask_type != "random" && !self.common.inference_mode {
            warnings.push(format!(
                "{location}: Argument mask_type={:?} is not recognized, please supply your own masking function",
                self.mask_type
            ));
        }
        Ok(())
    }
}

impl AdapterConfig for ShiraConfig {
    peft_core::adapter_config_boilerplate!();
    peft_core::adapter_config_targets!(target_modules, modules_to_save);

    fn validate(&self) -> Result<()> {
        peft_core::config::require_positive("r", self.r)?;
        if self.mask_type != "random" {
            return Err(unsupported_option(
                PEFT_TYPE,
                "mask_type",
                &Value::from(self.mask_type.clone()),
                "only the random mask is built in (PEFT needs a Python mask function for any other)",
            ));
        }
        if let Some(s) = self.random_seed.filter(|s| *s < 0) {
            return Err(unsupported_option(PEFT_TYPE, "random_seed", &Value::from(s), "a negative seed"));
        }
        Ok(())
    }
}

impl LayerMethod for ShiraConfig {
    fn create_layer(&mut self, ctx: &mut LayerInit<'_, '_>) -> Result<Box<dyn TunerLayer>> {
        crate::layer::ShiraLayer::create(self, ctx).map(|l| Box::new(l) as Box<dyn TunerLayer>)
    }
}
