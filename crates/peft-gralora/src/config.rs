//! `GraloraConfig`: PEFT 0.21.2's keys, defaults and checks.

use peft_core::config::{BiasMode, BiasOption, LayerInit};
use peft_core::peft_config::targets::dedupe_lists;
use peft_core::peft_config::{
    ConfigError, LayerIndices, LayersPattern, Num, PeftConfigCommon, TargetModules,
};
use peft_core::LayerMethod;
use peft_core::{AdapterConfig, MethodConfig, Result, TunerLayer};
use serde::{Deserialize, Serialize};

/// `peft_type` of GraLoRA.
pub const PEFT_TYPE: &str = "GRALORA";

/// PEFT 0.21.2's `GraloraConfig`, field for field (it has no `exclude_modules`).
///
/// GraLoRA ("Granular Low-Rank Adaptation") cuts the weight into a `gralora_k × gralora_k` grid and gives
/// every input block its own rank-`r` factor `A_i` and every output block its own `B_j`; the rank of each
/// `A_i` is split into `k` slices routed to the `k` output blocks, so the blocks exchange information while
/// the total rank stays `r`. `hybrid_r` adds an ordinary LoRA of that rank over the whole weight. The
/// update is scaled by `alpha / (r + hybrid_r)`.
///
/// ```
/// use peft_core::peft_config::TargetModules;
/// use peft_gralora::GraloraConfig;
///
/// let config = GraloraConfig {
///     r: 16,
///     gralora_k: 4,
///     target_modules: Some(TargetModules::list(["q_proj", "v_proj"])),
///     ..GraloraConfig::default()
/// };
/// assert_eq!(config.scaling(), 64.0 / 16.0);
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct GraloraConfig {
    /// `peft_type`, `task_type`, `base_model_name_or_path`, `revision`, `inference_mode`, …
    #[serde(flatten)]
    pub common: PeftConfigCommon,
    /// The total rank of the block factors (divisible by `gralora_k`).
    pub r: i64,
    /// The rank of the additional whole-weight LoRA (0: none).
    pub hybrid_r: i64,
    /// Modules to adapt: names / dotted suffixes, a full-match regex, or `"all-linear"`.
    pub target_modules: Option<TargetModules>,
    /// The scaling numerator (kept as written).
    pub alpha: Num,
    /// Dropout on the adapter's input path (training only).
    pub gralora_dropout: f64,
    /// The grid size: inputs and outputs are cut into this many blocks.
    pub gralora_k: i64,
    /// The base weight is stored `(in, out)` (GPT-2's `Conv1D`); corrected from the layer type on injection.
    pub fan_in_fan_out: bool,
    /// Which biases train with the adapter.
    pub bias: BiasOption,
    /// Extra modules trained and saved in full.
    pub modules_to_save: Option<Vec<String>>,
    /// `B` factors start at zero (the identity); `false` draws them Kaiming-uniform like `A`.
    pub init_weights: bool,
    /// Only the layers with these indices are adapted.
    pub layers_to_transform: Option<LayerIndices>,
    /// The name of the layer list `layers_to_transform` indexes into.
    pub layers_pattern: Option<LayersPattern>,
}

impl Default for GraloraConfig {
    fn default() -> Self {
        Self {
            common: PeftConfigCommon::new(PEFT_TYPE),
            r: 32,
            hybrid_r: 0,
            target_modules: None,
            alpha: Num::from(64),
            gralora_dropout: 0.0,
            gralora_k: 2,
            fan_in_fan_out: false,
            bias: BiasOption::default(),
            modules_to_save: None,
            init_weights: true,
            layers_to_transform: None,
            layers_pattern: None,
        }
    }
}

impl GraloraConfig {
    /// `alpha / (r + hybrid_r)`.
    pub fn scaling(&self) -> f64 {
        self.alpha.value() / (self.r + self.hybrid_r) as f64
    }

    fn check(&self, location: &str) -> Result<()> {
        let bad = |message: String| ConfigError::Inconsistent { location: location.to_string(), message };
        if self.gralora_k <= 0 {
            return Err(bad(format!(
                "`gralora_k` should be a positive integer value but the value passed is {}",
                self.gralora_k
            ))
            .into());
        }
        if self.r % self.gralora_k != 0 {
            return Err(bad(format!(
                "r should be divisible by gralora_k, but got {} and {}",
                self.r, self.gralora_k
            ))
            .into());
        }
        Ok(self.target_spec().check_layers_pattern(location)?)
    }
}

impl MethodConfig for GraloraConfig {
    const PEFT_TYPE: &'static str = PEFT_TYPE;

    /// `GraloraConfig.__post_init__`: the target list becomes a set; `gralora_k` positive and dividing `r`.
    fn post_init(&mut self, location: &str, _warnings: &mut Vec<String>) -> Result<()> {
        dedupe_lists([&mut self.target_modules]);
        self.check(location)
    }
}

impl AdapterConfig for GraloraConfig {
    peft_core::adapter_config_boilerplate!();
    peft_core::adapter_config_targets!(target_modules, layers_to_transform, layers_pattern, modules_to_save);

    fn validate(&self) -> Result<()> {
        self.check(peft_core::peft_config::error::IN_MEMORY)?;
        self.bias.mode()?;
        peft_core::config::require_positive("r", self.r)?;
        if self.hybrid_r < 0 {
            return Err(peft_core::PeftError::Invalid(format!(
                "`hybrid_r` should be a non-negative integer value but the value passed is {}",
                self.hybrid_r
            )));
        }
        if !(0.0..1.0).contains(&self.gralora_dropout) {
            return Err(peft_core::PeftError::Invalid(format!(
                "gralora_dropout must be in [0, 1), got {}",
                self.gralora_dropout
            )));
        }
        Ok(())
    }

    fn bias(&self) -> BiasMode {
        self.bias.mode().unwrap_or(BiasMode::None)
    }
}

impl LayerMethod for GraloraConfig {
    fn create_layer(&mut self, ctx: &mut LayerInit<'_, '_>) -> Result<Box<dyn TunerLayer>> {
        crate::layer::GraloraLayer::create(self, ctx).map(|l| Box::new(l) as Box<dyn TunerLayer>)
    }
}
