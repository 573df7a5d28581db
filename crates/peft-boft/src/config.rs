//! `BoftConfig`: PEFT 0.21.2's `BOFTConfig` keys, defaults and checks.

use peft_core::config::{BiasMode, BiasOption, LayerInit};
use peft_core::peft_config::targets::dedupe_lists;
use peft_core::peft_config::{ConfigError, LayerIndices, LayersPattern, PeftConfigCommon, TargetModules};
use peft_core::{AdapterConfig, LayerMethod, MethodConfig, PeftError, Result, TunerLayer};
use serde::{Deserialize, Serialize};

/// `peft_type` of BOFT.
pub const PEFT_TYPE: &str = "BOFT";

/// PEFT 0.21.2's `BOFTConfig`, field for field.
///
/// Exactly one of `boft_block_size` and `boft_block_num` is non-zero; the other follows per layer from
/// its rotated dimension (`in_features`, or `in_channels · k²` for a `Conv2d`), which the given value
/// must divide (no adjustment, unlike OFT). `boft_n_butterfly_factor = m` chains `m` block-diagonal
/// rotations, the `i`-th conjugated by PEFT's butterfly permutation, so the effective block size grows
/// to `2^(m−1)·boft_block_size`.
///
/// ```
/// use peft_core::peft_config::TargetModules;
/// use peft_boft::BoftConfig;
///
/// let config = BoftConfig {
///     target_modules: Some(TargetModules::list(["q_proj", "v_proj"])),
///     boft_block_size: 8,
///     boft_n_butterfly_factor: 2,
///     ..BoftConfig::default()
/// };
/// assert!(config.init_weights && config.boft_block_num == 0);
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct BoftConfig {
    /// `peft_type`, `task_type`, `base_model_name_or_path`, `revision`, `inference_mode`, …
    #[serde(flatten)]
    pub common: PeftConfigCommon,
    /// Size of each block (0: derived from `boft_block_num`). Default 4.
    pub boft_block_size: i64,
    /// Number of blocks per layer (0: derived from `boft_block_size`).
    pub boft_block_num: i64,
    /// Number of butterfly factors (1: plain block-diagonal OFT).
    pub boft_n_butterfly_factor: i64,
    /// Modules to adapt: names / dotted suffixes, a full-match regex, or `"all-linear"`.
    pub target_modules: Option<TargetModules>,
    /// Modules never to adapt.
    pub exclude_modules: Option<TargetModules>,
    /// BOFT's multiplicative dropout: in training, the share `p` of the blocks of one randomly chosen
    /// butterfly factor is replaced by the identity on every forward pass.
    pub boft_dropout: f64,
    /// Set to `false` on injection for `nn.Linear` (with PEFT's warning): BOFT adapts no layer stored
    /// `(in, out)` (GPT-2's `Conv1D` is refused).
    pub fan_in_fan_out: bool,
    /// Which biases train with the adapter (`"none"`, `"all"`, `"boft_only"`).
    pub bias: BiasOption,
    /// Extra modules trained and saved in full.
    pub modules_to_save: Option<Vec<String>>,
    /// Start at the identity (zero blocks, unit scales); `false` draws the blocks from N(0, 0.1) and the
    /// scales from N(1, 0.1).
    pub init_weights: bool,
    /// Only the layers with these indices are adapted.
    pub layers_to_transform: Option<LayerIndices>,
    /// The name of the layer list `layers_to_transform` indexes into.
    pub layers_pattern: Option<LayersPattern>,
}

impl Default for BoftConfig {
    fn default() -> Self {
        Self {
            common: PeftConfigCommon::new(PEFT_TYPE),
            boft_block_size: 4,
            boft_block_num: 0,
            boft_n_butterfly_factor: 1,
            target_modules: None,
            exclude_modules: None,
            boft_dropout: 0.0,
            fan_in_fan_out: false,
            bias: BiasOption::default(),
            modules_to_save: None,
            init_weights: true,
            layers_to_transform: None,
            layers_pattern: None,
        }
    }
}

impl BoftConfig {
    /// `__post_init__`'s errors, plus what PEFT only trips over later: negative block sizes (when it
    /// allocates the parameters) and a dropout above 1 (in its first training forward).
    fn check(&self, location: &str) -> Result<()> {
        let bad = |message: String| -> Result<()> {
            Err(ConfigError::Inconsistent { location: location.to_string(), message }.into())
        };
        self.target_spec().check_layer_selection(location)?;
        let (size, num) = (self.boft_block_size, self.boft_block_num);
        if size == 0 && num == 0 {
            return bad(format!(
                "Either `boft_block_size` or `boft_block_num` must be non-zero. Currently, boft_block_size = \
                 {size} and boft_block_num = {num}."
            ));
        }
        if size != 0 && num != 0 {
            return bad(format!(
                "You can only specify either boft_block_size ({size}) or boft_block_num ({num}), but not both \
                 simultaneously, because boft_block_size x boft_block_num == in_features."
            ));
        }
        if size < 0 || num < 0 {
            return bad(format!(
                "`boft_block_size` ({size}) and `boft_block_num` ({num}) must not be negative"
            ));
        }
        if !self.boft_dropout.is_finite() || self.boft_dropout > 1.0 {
            return bad(format!(
                "`boft_dropout` ({}) must be at most 1: it is the share of blocks replaced by the identity \
                 (PEFT fails in its first training forward)",
                self.boft_dropout
            ));
        }
        Ok(())
    }
}

impl MethodConfig for BoftConfig {
    const PEFT_TYPE: &'static str = PEFT_TYPE;

    /// `BOFTConfig.__post_init__`: target lists become sets; the layer-selection and block-size rules.
    fn post_init(&mut self, location: &str, _warnings: &mut Vec<String>) -> Result<()> {
        dedupe_lists([&mut self.target_modules, &mut self.exclude_modules]);
        self.check(location)
    }
}

impl AdapterConfig for BoftConfig {
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
        self.check(peft_core::peft_config::error::IN_MEMORY)
    }

    fn bias(&self) -> BiasMode {
        self.bias.mode().unwrap_or(BiasMode::None)
    }
}

impl LayerMethod for BoftConfig {
    fn create_layer(&mut self, ctx: &mut LayerInit<'_, '_>) -> Result<Box<dyn TunerLayer>> {
        crate::layer::BoftLayer::create(self, ctx).map(|l| Box::new(l) as Box<dyn TunerLayer>)
    }
}

/// The error for a block layout PEFT's `update_layer` refuses, with its message.
pub(crate) fn layout_error(module: &str, message: String) -> PeftError {
    PeftError::Invalid(format!("`{module}`: {message}"))
}
