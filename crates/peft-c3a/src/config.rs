//! `C3AConfig`: PEFT 0.21.2's keys, defaults and checks.

use indexmap::IndexMap;
use peft_core::config::{BiasMode, BiasOption, LayerInit};
use peft_core::peft_config::patterns::suffix_or_exact;
use peft_core::peft_config::targets::dedupe_lists;
use peft_core::peft_config::{LayerIndices, LayersPattern, PeftConfigCommon, TargetModules};
use peft_core::LayerMethod;
use peft_core::{AdapterConfig, MethodConfig, Result, TunerLayer};
use serde::{Deserialize, Serialize};

/// `peft_type` of C3A.
pub const PEFT_TYPE: &str = "C3A";

/// `init_weights`: how the kernels start.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum C3aInit {
    /// `true`: zero kernels (the adapter starts as the identity); `false`: as `"xavier_uniform"`.
    Bool(bool),
    /// `"xavier_uniform"` (PEFT's default), `"kaiming_uniform"` or `"gaussian"`.
    Scheme(String),
}

impl Default for C3aInit {
    fn default() -> Self {
        C3aInit::Scheme("xavier_uniform".into())
    }
}

/// PEFT 0.21.2's `C3AConfig`, field for field (it has no `exclude_modules`).
///
/// C3A ("Circular Convolution Adaptation") cuts each adapted weight `(out, in)` into `block_size ×
/// block_size` blocks and learns one circulant matrix per block — `block_size` values that the block
/// convolves its input piece with — applied with FFTs: the update can have full rank at a fraction of
/// LoRA's parameters.
///
/// ```
/// use peft_c3a::{C3AConfig, C3aInit};
/// use peft_core::peft_config::TargetModules;
///
/// let mut config = C3AConfig {
///     block_size: 64,
///     target_modules: Some(TargetModules::list(["q_proj", "v_proj"])),
///     ..C3AConfig::default()
/// };
/// config.block_size_pattern.insert("v_proj".into(), 32);
/// assert_eq!(config.block_size_for("model.layers.0.self_attn.v_proj")?, 32);
/// assert_eq!(config.init_weights, C3aInit::Scheme("xavier_uniform".into()));
/// # Ok::<(), peft_core::PeftError>(())
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct C3AConfig {
    /// `peft_type`, `task_type`, `base_model_name_or_path`, `revision`, `inference_mode`, …
    #[serde(flatten)]
    pub common: PeftConfigCommon,
    /// The circulant block size (must divide every adapted layer's input and output sizes).
    pub block_size: i64,
    /// Modules to adapt: names / dotted suffixes, a full-match regex, or `"all-linear"`.
    pub target_modules: Option<TargetModules>,
    /// Which biases train with the adapter.
    pub bias: BiasOption,
    /// Extra modules trained and saved in full.
    pub modules_to_save: Option<Vec<String>>,
    /// Only the layers with these indices are adapted.
    pub layers_to_transform: Option<LayerIndices>,
    /// The name of the layer list `layers_to_transform` indexes into.
    pub layers_pattern: Option<LayersPattern>,
    /// Per-module block sizes: the first entry `p` with `re.match(".*\.p$", name)`, else the entry named
    /// exactly as the module.
    pub block_size_pattern: IndexMap<String, i64>,
    /// How the kernels start.
    pub init_weights: C3aInit,
}

impl Default for C3AConfig {
    fn default() -> Self {
        Self {
            common: PeftConfigCommon::new(PEFT_TYPE),
            block_size: 256,
            target_modules: None,
            bias: BiasOption::default(),
            modules_to_save: None,
            layers_to_transform: None,
            layers_pattern: None,
            block_size_pattern: IndexMap::new(),
            init_weights: C3aInit::default(),
        }
    }
}

impl C3AConfig {
    /// The block size of module `key`.
    ///
    /// # Errors
    /// A `block_size_pattern` entry that is not a valid regex.
    pub fn block_size_for(&self, key: &str) -> Result<i64> {
        Ok(suffix_or_exact("block_size_pattern", &self.block_size_pattern, key)?
            .copied()
            .unwrap_or(self.block_size))
    }
}

impl MethodConfig for C3AConfig {
    const PEFT_TYPE: &'static str = PEFT_TYPE;

    /// `C3AConfig.__post_init__`: the target list becomes a set; no `layers_to_transform` or
    /// `layers_pattern` with a regex `target_modules`.
    fn post_init(&mut self, location: &str, _warnings: &mut Vec<String>) -> Result<()> {
        dedupe_lists([&mut self.target_modules]);
        Ok(self.target_spec().check_layer_selection(location)?)
    }
}

impl AdapterConfig for C3AConfig {
    peft_core::adapter_config_boilerplate!();
    peft_core::adapter_config_targets!(target_modules, layers_to_transform, layers_pattern, modules_to_save);

    fn validate(&self) -> Result<()> {
        self.target_spec().check_layer_selection(peft_core::peft_config::error::IN_MEMORY)?;
        self.bias.mode()?;
        suffix_or_exact("block_size_pattern", &self.block_size_pattern, "\0")?;
        if let C3aInit::Scheme(s) = &self.init_weights {
            if !["xavier_uniform", "kaiming_uniform", "gaussian"].contains(&s.as_str()) {
                return Err(peft_core::PeftError::Invalid(format!("Unknown init_weights: {s}")));
            }
        }
        Ok(())
    }

    fn bias(&self) -> BiasMode {
        self.bias.mode().unwrap_or(BiasMode::None)
    }
}

impl LayerMethod for C3AConfig {
    fn create_layer(&mut self, ctx: &mut LayerInit<'_, '_>) -> Result<Box<dyn TunerLayer>> {
        crate::layer::C3aLayer::create(self, ctx).map(|l| Box::new(l) as Box<dyn TunerLayer>)
    }
}
