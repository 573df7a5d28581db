//! `HiraConfig`: PEFT 0.21.2's keys, defaults and checks.

use indexmap::IndexMap;
use peft_core::config::LayerInit;
use peft_core::peft_config::patterns::PatternMap;
use peft_core::peft_config::targets::dedupe_lists;
use peft_core::peft_config::{LayerIndices, LayersPattern, PeftConfigCommon, TargetModules};
use peft_core::LayerMethod;
use peft_core::{AdapterConfig, MethodConfig, PeftError, Result, TunerLayer};
use serde::{Deserialize, Serialize};

/// `peft_type` of HiRA.
pub const PEFT_TYPE: &str = "HIRA";

/// `init_weights`: how `hira_A` and `hira_B` start (PEFT's `bool | "gaussian" | None`, kept as written).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum HiraInit {
    /// `true` (PEFT's default): Kaiming-uniform `hira_A` and a zero `hira_B` (embeddings: zero `A`,
    /// `N(0, 1)` `B`), so the adapter starts as the identity. `false`: both stay `N(0, 1)`.
    Bool(bool),
    /// `"gaussian"` (any case): on linear layers `hira_A ~ N(0, 1/r)` and a zero `hira_B`; embeddings and
    /// convolutions treat any string as `true`, as PEFT does. Other strings are refused on linear layers
    /// with PEFT's message.
    Scheme(String),
}

impl Default for HiraInit {
    fn default() -> Self {
        HiraInit::Bool(true)
    }
}

/// PEFT 0.21.2's `HiraConfig`, field for field.
///
/// HiRA ("Hadamard high-Rank Adaptation") multiplies the frozen weight element-wise by a low-rank
/// matrix: `ΔW = W ⊙ (B·A)`, an update of high rank from `r·(in + out)` trained values, with no
/// scaling factor.
///
/// ```
/// use peft_core::peft_config::TargetModules;
/// use peft_hira::{HiraConfig, HiraInit};
///
/// let config = HiraConfig {
///     r: 8,
///     target_modules: Some(TargetModules::list(["q_proj", "v_proj"])),
///     ..HiraConfig::default()
/// };
/// assert_eq!(config.init_weights, Some(HiraInit::Bool(true)));
/// assert_eq!(HiraConfig::default().r, 32);
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct HiraConfig {
    /// `peft_type`, `task_type`, `base_model_name_or_path`, `revision`, `inference_mode`, …
    #[serde(flatten)]
    pub common: PeftConfigCommon,
    /// The rank of the low-rank factor (default 32).
    pub r: i64,
    /// Modules to adapt: names / dotted suffixes, a full-match regex, or `"all-linear"`.
    pub target_modules: Option<TargetModules>,
    /// Modules never to adapt.
    pub exclude_modules: Option<TargetModules>,
    /// Dropout on the adapter's input path (training only; not on embeddings).
    pub hira_dropout: f64,
    /// `true` for weights stored `(in, out)` (GPT-2's `Conv1D`); corrected per layer as PEFT does.
    pub fan_in_fan_out: bool,
    /// Extra modules trained and saved in full.
    pub modules_to_save: Option<Vec<String>>,
    /// How the factors start (`true`, `false`, `"gaussian"`, `null`).
    pub init_weights: Option<HiraInit>,
    /// Only the layers with these indices are adapted.
    pub layers_to_transform: Option<LayerIndices>,
    /// The name of the layer list `layers_to_transform` indexes into.
    pub layers_pattern: Option<LayersPattern>,
    /// Per-module ranks `{pattern: r}` (a regex matched against the end of the module name). As in PEFT
    /// 0.21.2, it applies only to adapters added to a layer that already has a HiRA adapter; a layer's
    /// first adapter takes `r` (with a warning when the pattern asked for another rank).
    pub rank_pattern: IndexMap<String, i64>,
}

impl Default for HiraConfig {
    fn default() -> Self {
        Self {
            common: PeftConfigCommon::new(PEFT_TYPE),
            r: 32,
            target_modules: None,
            exclude_modules: None,
            hira_dropout: 0.0,
            fan_in_fan_out: false,
            modules_to_save: None,
            init_weights: Some(HiraInit::default()),
            layers_to_transform: None,
            layers_pattern: None,
            rank_pattern: IndexMap::new(),
        }
    }
}

impl HiraConfig {
    /// The rank of module `key` after `rank_pattern`.
    ///
    /// # Errors
    /// A pattern that is not a valid regex.
    pub fn rank_of(&self, key: &str) -> Result<i64> {
        Ok(PatternMap::new("rank_pattern", &self.rank_pattern)?.lookup(key).map_or(self.r, |(_, v)| *v))
    }

    fn check(&self, location: &str) -> Result<()> {
        self.target_spec().check_regex_selection(location)?;
        PatternMap::new("rank_pattern", &self.rank_pattern)?;
        Ok(())
    }
}

impl MethodConfig for HiraConfig {
    const PEFT_TYPE: &'static str = PEFT_TYPE;

    /// `HiraConfig.__post_init__`: target lists become sets; `layers_to_transform` and `layers_pattern`
    /// cannot go with a regex `target_modules`.
    fn post_init(&mut self, location: &str, _warnings: &mut Vec<String>) -> Result<()> {
        dedupe_lists([&mut self.target_modules, &mut self.exclude_modules]);
        self.check(location)
    }
}

impl AdapterConfig for HiraConfig {
    peft_core::adapter_config_boilerplate!();
    peft_core::adapter_config_targets!(
        target_modules,
        exclude_modules,
        layers_to_transform,
        layers_pattern,
        modules_to_save
    );

    fn validate(&self) -> Result<()> {
        self.check(peft_core::peft_config::error::IN_MEMORY)?;
        if !(0.0..1.0).contains(&self.hira_dropout) {
            return Err(PeftError::Invalid(format!(
                "hira_dropout must be in [0, 1), got {}",
                self.hira_dropout
            )));
        }
        Ok(())
    }
}

impl LayerMethod for HiraConfig {
    fn create_layer(&mut self, ctx: &mut LayerInit<'_, '_>) -> Result<Box<dyn TunerLayer>> {
        crate::layer::HiraLayer::create(self, ctx).map(|l| Box::new(l) as Box<dyn TunerLayer>)
    }
}
