//! `MissConfig`: PEFT 0.21.2's keys, defaults and checks.

use peft_core::config::{BiasMode, BiasOption, LayerInit};
use peft_core::peft_config::targets::dedupe_lists;
use peft_core::peft_config::{LayerIndices, LayersPattern, PeftConfigCommon, TargetModules};
use peft_core::LayerMethod;
use peft_core::{AdapterConfig, MethodConfig, PeftError, Result, TunerLayer};
use serde::{Deserialize, Serialize};

/// `peft_type` of MiSS.
pub const PEFT_TYPE: &str = "MISS";

/// `init_weights`: which MiSS variant the adapter is, and how its block starts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum MissInit {
    /// `true` (PEFT's default, "balance"): a zero `(r, out)` block, added to every shard of the input
    /// dimension — the adapter starts as the identity. `false`: the same variant with a Kaiming-uniform
    /// block.
    Bool(bool),
    /// `"bat"`: a `(out/r, r, r)` block per output shard, multiplied into the weight's `r × r` blocks
    /// (`W ← W + W·B + B`, a non-linear update across shards); `"mini"`: a `(r, mini_r)` block repeated
    /// along the outputs (fewer trainable values). Any other string is refused.
    Variant(String),
}

impl Default for MissInit {
    fn default() -> Self {
        MissInit::Bool(true)
    }
}

/// PEFT 0.21.2's `MissConfig`, field for field.
///
/// MiSS ("Matrix Shard Sharing") splits each adapted weight `(out, in)` into shards of `r` input columns
/// and adds one trained block to all of them: `W[:, k·r + j] += B[j, :]`, so the forward pass needs only
/// `y = W·x + (Σ_k x_k) · B` with `x_k` the `r`-wide slices of the input.
///
/// ```
/// use peft_core::peft_config::TargetModules;
/// use peft_miss::{MissConfig, MissInit};
///
/// let config = MissConfig {
///     r: 16,
///     target_modules: Some(TargetModules::list(["q_proj", "v_proj"])),
///     ..MissConfig::default()
/// };
/// assert_eq!(config.init_weights, MissInit::Bool(true));
/// assert_eq!(MissConfig::default().r, 64);
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct MissConfig {
    /// `peft_type`, `task_type`, `base_model_name_or_path`, `revision`, `inference_mode`, …
    #[serde(flatten)]
    pub common: PeftConfigCommon,
    /// The shard width along the input dimension (default 64).
    pub r: i64,
    /// Dropout on the adapter's input path (training only).
    pub miss_dropout: f64,
    /// The block's width along the outputs with `init_weights: "mini"` (must divide `out_features`).
    pub mini_r: i64,
    /// Modules to adapt: names / dotted suffixes, a full-match regex, or `"all-linear"`.
    pub target_modules: Option<TargetModules>,
    /// Modules never to adapt.
    pub exclude_modules: Option<TargetModules>,
    /// The variant and initialisation (`true`, `false`, `"bat"`, `"mini"`).
    pub init_weights: MissInit,
    /// Only the layers with these indices are adapted.
    pub layers_to_transform: Option<LayerIndices>,
    /// The name of the layer list `layers_to_transform` indexes into.
    pub layers_pattern: Option<LayersPattern>,
    /// Which biases train with the adapter.
    pub bias: BiasOption,
    /// Extra modules trained and saved in full.
    pub modules_to_save: Option<Vec<String>>,
}

impl Default for MissConfig {
    fn default() -> Self {
        Self {
            common: PeftConfigCommon::new(PEFT_TYPE),
            r: 64,
            miss_dropout: 0.0,
            mini_r: 1,
            target_modules: None,
            exclude_modules: None,
            init_weights: MissInit::default(),
            layers_to_transform: None,
            layers_pattern: None,
            bias: BiasOption::default(),
            modules_to_save: None,
        }
    }
}

impl MethodConfig for MissConfig {
    const PEFT_TYPE: &'static str = PEFT_TYPE;

    /// `MissConfig.__post_init__`: target lists become sets; `layers_to_transform` and `layers_pattern`
    /// cannot go with a regex `target_modules`.
    fn post_init(&mut self, location: &str, _warnings: &mut Vec<String>) -> Result<()> {
        dedupe_lists([&mut self.target_modules, &mut self.exclude_modules]);
        Ok(self.target_spec().check_layer_selection(location)?)
    }
}

impl AdapterConfig for MissConfig {
    peft_core::adapter_config_boilerplate!();
    peft_core::adapter_config_targets!(
        target_modules,
        exclude_modules,
        layers_to_transform,
        layers_pattern,
        modules_to_save
    );

    fn validate(&self) -> Result<()> {
        self.target_spec().check_layer_selection(peft_core::peft_config::error::IN_MEMORY)?;
        self.bias.mode()?;
        if let MissInit::Variant(v) = &self.init_weights {
            if v != "bat" && v != "mini" {
                return Err(peft_core::config::unsupported_option(
                    PEFT_TYPE,
                    "init_weights",
                    &serde_json::Value::from(v.as_str()),
                    "MiSS knows true, false, \"bat\" and \"mini\"",
                ));
            }
        }
        if !(0.0..1.0).contains(&self.miss_dropout) {
            return Err(PeftError::Invalid(format!(
                "miss_dropout must be in [0, 1), got {}",
                self.miss_dropout
            )));
        }
        Ok(())
    }

    fn bias(&self) -> BiasMode {
        self.bias.mode().unwrap_or(BiasMode::None)
    }
}

impl LayerMethod for MissConfig {
    fn create_layer(&mut self, ctx: &mut LayerInit<'_, '_>) -> Result<Box<dyn TunerLayer>> {
        crate::layer::MissLayer::create(self, ctx).map(|l| Box::new(l) as Box<dyn TunerLayer>)
    }
}
