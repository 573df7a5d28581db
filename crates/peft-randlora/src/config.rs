//! `RandloraConfig`: PEFT 0.21.2's keys, defaults and checks, and the bases shared by an adapter's layers.

use peft_core::config::NamedTensors;
use peft_core::config::{unsupported_option, BiasOption, LayerInit, TargetLayer};
use peft_core::peft_config::targets::dedupe_lists;
use peft_core::peft_config::{LayerIndices, LayersPattern, Num, PeftConfigCommon, TargetModules};
use peft_core::{AdapterConfig, BiasMode, LayerMethod, MethodConfig, PeftError, Result, TunerLayer};
use peft_projections::{self as shared, SharedProjections};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// `peft_type` of RandLoRA.
pub const PEFT_TYPE: &str = "RANDLORA";

/// PEFT 0.21.2's `RandLoraConfig`, field for field.
///
/// ```
/// use peft_randlora::RandloraConfig;
///
/// let config = RandloraConfig::default();
/// assert_eq!((config.r, config.randlora_alpha.value()), (32, 640.0));
/// assert!(config.save_projection && !config.sparse && !config.very_sparse);
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RandloraConfig {
    /// `peft_type`, `task_type`, `base_model_name_or_path`, `revision`, `inference_mode`, …
    #[serde(flatten)]
    pub common: PeftConfigCommon,
    /// The rank of each random basis; a layer of smallest side `d` gets `⌈d / r⌉` bases, so a smaller `r`
    /// means more trainable values.
    pub r: i64,
    /// Modules to adapt: names / dotted suffixes, a full-match regex, or `"all-linear"`.
    pub target_modules: Option<TargetModules>,
    /// The seed of the generator the bases are drawn from.
    pub projection_prng_key: i64,
    /// Save the bases with the adapter (`false`: they are drawn again from the seed on load).
    pub save_projection: bool,
    /// Ternary bases: `±1` with probability 1/6 each, `0` otherwise, divided by their std.
    pub sparse: bool,
    /// Sparser ternary bases: `±1` with probability `1 / (2√d)` each (`d` the smallest side of the largest
    /// targeted layer); wins over `sparse`.
    pub very_sparse: bool,
    /// Dropout on the adapter's input.
    pub randlora_dropout: f64,
    /// The base weight is stored `(in, out)` (GPT-2's `Conv1D`); corrected from the layer type on injection.
    pub fan_in_fan_out: bool,
    /// The scaling is `randlora_alpha / r` (kept as written: PEFT declares an int but takes any number).
    pub randlora_alpha: Num,
    /// Which biases train with the adapter: `"none"`, `"all"` or `"randlora_only"`.
    pub bias: BiasOption,
    /// Extra modules trained and saved in full.
    pub modules_to_save: Option<Vec<String>>,
    /// PEFT's default init (`randlora_lambda = 0`: the identity, `randlora_gamma = 1 / max(gamma's shape)`);
    /// `false` keeps `randlora_lambda ~ N(0, 1)` and `randlora_gamma = 1 / max(in, out)`.
    pub init_weights: bool,
    /// Only adapt layers with these indices.
    pub layers_to_transform: Option<LayerIndices>,
    /// The name of the layer list `layers_to_transform` indexes into.
    pub layers_pattern: Option<LayersPattern>,
    /// The bases of this adapter, made by [`AdapterConfig::before_layers`] (never saved here).
    #[serde(skip)]
    pub projections: SharedProjections,
}

impl Default for RandloraConfig {
    fn default() -> Self {
        Self {
            common: PeftConfigCommon::new(PEFT_TYPE),
            r: 32,
            target_modules: None,
            projection_prng_key: 0,
            save_projection: true,
            sparse: false,
            very_sparse: false,
            randlora_dropout: 0.0,
            fan_in_fan_out: false,
            randlora_alpha: Num::from(640),
            bias: BiasOption::default(),
            modules_to_save: None,
            init_weights: true,
            layers_to_transform: None,
            layers_pattern: None,
            projections: SharedProjections::default(),
        }
    }
}

impl RandloraConfig {
    fn check(&self, location: &str) -> Result<()> {
        Ok(self.target_spec().check_layers_pattern(location)?)
    }

    /// PEFT's `scaling`: `randlora_alpha / r`.
    pub fn scaling(&self) -> f64 {
        self.randlora_alpha.value() / self.r as f64
    }
}

impl MethodConfig for RandloraConfig {
    const PEFT_TYPE: &'static str = PEFT_TYPE;

    /// `RandLoraConfig.__post_init__`: the target list becomes a set; the layer-selection rule; PEFT's
    /// warning when the bases are not saved.
    fn post_init(&mut self, location: &str, warnings: &mut Vec<String>) -> Result<()> {
        dedupe_lists([&mut self.target_modules]);
        self.check(location)?;
        if !self.save_projection {
            warnings.push(format!(
                "{location}: Specified to not save basis_A and basis_B within the state dictionary, instead they \
                 will be restored using the PRNG key store in `config.projection_prng_key`. Consider setting \
                 `config.save_projection` to `True` to guarantee restoring the checkpoint correctly on all system \
                 configurations."
            ));
        }
        Ok(())
    }
}

impl AdapterConfig for RandloraConfig {
    peft_core::adapter_config_boilerplate!();
    peft_core::adapter_config_targets!(target_modules, layers_to_transform, layers_pattern, modules_to_save);

    fn validate(&self) -> Result<()> {
        self.check(peft_core::peft_config::error::IN_MEMORY)?;
        if self.r <= 0 {
            return Err(PeftError::Invalid(format!(
                "`r` should be a positive integer value but the value passed is {}",
                self.r
            )));
        }
        if !(0.0..=1.0).contains(&self.randlora_dropout) {
            return Err(PeftError::Invalid(format!(
                "randlora_dropout: dropout probability has to be between 0 and 1, but got {}",
                self.randlora_dropout
            )));
        }
        if !self.randlora_alpha.value().is_finite() {
            return Err(PeftError::Invalid(format!(
                "randlora_alpha must be a finite number, got {}",
                self.randlora_alpha.0
            )));
        }
        self.bias.mode()?;
        if self.projection_prng_key < 0 {
            return Err(unsupported_option(
                PEFT_TYPE,
                "projection_prng_key",
                &Value::from(self.projection_prng_key),
                "a negative seed (torch.Generator.manual_seed wraps it to 64 bits)",
            ));
        }
        Ok(())
    }

    fn bias(&self) -> BiasMode {
        self.bias.mode().unwrap_or(BiasMode::None)
    }

    fn check_new_adapter(&self, existing: &[(&str, &dyn AdapterConfig)]) -> Result<()> {
        shared::check_same_projections::<RandloraConfig>(
            existing,
            "RandLora",
            |c| (c.projection_prng_key, c.save_projection),
            (self.projection_prng_key, self.save_projection),
        )
    }

    /// PEFT's `_pre_injection_hook`: the bases sized by the largest targeted linear layer, drawn from a
    /// generator seeded with `projection_prng_key` (dense, `sparse` or `very_sparse`), or the first
    /// adapter's for a later one.
    fn before_layers(
        &mut self,
        _adapter: &str,
        targets: &[TargetLayer],
        existing: &[(&str, &dyn AdapterConfig)],
    ) -> Result<()> {
        if let Some(p) = shared::earlier::<RandloraConfig>(existing, |c| &c.projections) {
            self.projections = p;
            return Ok(());
        }
        let (out_max, in_max) = shared::largest_linear(targets, "RandLora")?;
        let (a, b) = crate::bases::draw(self, out_max, in_max)?;
        self.projections = SharedProjections::from_tensors(a, b);
        Ok(())
    }

    /// Checks the per-layer copies of the bases against the model-level ones and drops those under
    /// layers this adapter does not have (PEFT writes them, see [`crate::bases::check_layer_copies`]).
    fn read_file_tensors(&self, tensors: NamedTensors, path: &std::path::Path) -> Result<NamedTensors> {
        crate::bases::check_layer_copies(tensors, path)
    }
}

impl LayerMethod for RandloraConfig {
    fn create_layer(&mut self, ctx: &mut LayerInit<'_, '_>) -> Result<Box<dyn TunerLayer>> {
        crate::layer::RandloraLayer::create(self, ctx).map(|l| Box::new(l) as Box<dyn TunerLayer>)
    }
}
