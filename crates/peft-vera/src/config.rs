//! `VeraConfig`: PEFT 0.21.2's keys, defaults and checks, and the projections shared by an adapter's layers.

use peft_core::config::{unsupported_option, BiasOption, LayerInit, TargetLayer};
use peft_core::peft_config::targets::dedupe_lists;
use peft_core::peft_config::{LayerIndices, LayersPattern, PeftConfigCommon, TargetModules};
use peft_core::LayerMethod;
use peft_core::MethodConfig;
use peft_core::{AdapterConfig, BiasMode, PeftError, Result, TunerLayer};
use peft_projections::{self as shared, SharedProjections};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// `peft_type` of VeRA.
pub const PEFT_TYPE: &str = "VERA";

/// PEFT 0.21.2's `VeraConfig`, field for field.
///
/// ```
/// use peft_core::peft_config::TargetModules;
/// use peft_vera::VeraConfig;
///
/// let config = VeraConfig {
///     r: 64,
///     target_modules: Some(TargetModules::list(["q_proj", "v_proj"])),
///     ..VeraConfig::default()
/// };
/// assert!(config.save_projection && config.d_initial == 0.1);
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct VeraConfig {
    /// `peft_type`, `task_type`, `base_model_name_or_path`, `revision`, `inference_mode`, …
    #[serde(flatten)]
    pub common: PeftConfigCommon,
    /// The rank of the shared projections (VeRA uses far larger ranks than LoRA).
    pub r: i64,
    /// Modules to adapt: names / dotted suffixes, a full-match regex, or `"all-linear"`.
    pub target_modules: Option<TargetModules>,
    /// The seed of the generator the projections are drawn from.
    pub projection_prng_key: i64,
    /// Save the projections with the adapter (`false`: they are drawn again from the seed on load).
    pub save_projection: bool,
    /// Dropout on the adapter's input.
    pub vera_dropout: f64,
    /// The initial value of `vera_lambda_d`.
    pub d_initial: f64,
    /// The base weight is stored `(in, out)` (GPT-2's `Conv1D`); corrected from the layer type on injection.
    pub fan_in_fan_out: bool,
    /// Which biases train with the adapter: `"none"`, `"all"` or `"vera_only"`.
    pub bias: BiasOption,
    /// Extra modules trained and saved in full.
    pub modules_to_save: Option<Vec<String>>,
    /// PEFT's default init (`vera_lambda_b = 0`, `vera_lambda_d = d_initial`: the identity); `false` keeps
    /// `vera_lambda_b = 1` and `vera_lambda_d ~ N(0, 1)`.
    pub init_weights: bool,
    /// Only adapt layers with these indices.
    pub layers_to_transform: Option<LayerIndices>,
    /// The name of the layer list `layers_to_transform` indexes into.
    pub layers_pattern: Option<LayersPattern>,
    /// The projections of this adapter, made by [`AdapterConfig::before_layers`] (never saved here).
    #[serde(skip)]
    pub projections: SharedProjections,
}

impl Default for VeraConfig {
    fn default() -> Self {
        Self {
            common: PeftConfigCommon::new(PEFT_TYPE),
            r: 256,
            target_modules: None,
            projection_prng_key: 0,
            save_projection: true,
            vera_dropout: 0.0,
            d_initial: 0.1,
            fan_in_fan_out: false,
            bias: BiasOption::default(),
            modules_to_save: None,
            init_weights: true,
            layers_to_transform: None,
            layers_pattern: None,
            projections: SharedProjections::default(),
        }
    }
}

impl VeraConfig {
    fn check(&self, location: &str) -> Result<()> {
        Ok(self.target_spec().check_layers_pattern(location)?)
    }
}

impl MethodConfig for VeraConfig {
    const PEFT_TYPE: &'static str = PEFT_TYPE;

    /// `VeraConfig.__post_init__`: the target list becomes a set; the layer-selection rule; PEFT's
    /// warning when the projections are not saved.
    fn post_init(&mut self, location: &str, warnings: &mut Vec<String>) -> Result<()> {
        dedupe_lists([&mut self.target_modules]);
        self.check(location)?;
        if !self.save_projection {
            warnings.push(format!(
                "{location}: Specified to not save vera_A and vera_B within the state dictionary, instead they will be \
                 restored using the PRNG key store in `config.projection_prng_key`. Consider setting \
                 `config.save_projection` to `True` to guarantee restoring the checkpoint correctly on all system \
                 configurations."
            ));
        }
        Ok(())
    }
}

impl AdapterConfig for VeraConfig {
    peft_core::adapter_config_boilerplate!();
    peft_core::adapter_config_targets!(target_modules, layers_to_transform, layers_pattern, modules_to_save);

    fn validate(&self) -> Result<()> {
        self.check(peft_core::peft_config::error::IN_MEMORY)?;
        peft_core::config::require_positive("r", self.r)?;
        if !(0.0..1.0).contains(&self.vera_dropout) {
            return Err(PeftError::Invalid(format!(
                "vera_dropout must be in [0, 1), got {}",
                self.vera_dropout
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
        shared::check_same_projections::<VeraConfig>(
            existing,
            "VeRA",
            |c| (c.projection_prng_key, c.save_projection),
            (self.projection_prng_key, self.save_projection),
        )
    }

    /// PEFT's `_init_vera_A_vera_B`: the projections sized by the largest targeted linear layer, drawn from
    /// a generator seeded with `projection_prng_key` (A first, then B).
    fn before_layers(
        &mut self,
        _adapter: &str,
        targets: &[TargetLayer],
        existing: &[(&str, &dyn AdapterConfig)],
    ) -> Result<()> {
        if let Some(p) = shared::earlier::<VeraConfig>(existing, |c| &c.projections) {
            self.projections = p;
            return Ok(());
        }
        let (out_max, in_max) = shared::largest_linear(targets, "VeRA")?;
        self.projections =
            SharedProjections::draw(self.projection_prng_key as u64, [self.r, in_max], [out_max, self.r])?;
        Ok(())
    }
}

impl LayerMethod for VeraConfig {
    fn create_layer(&mut self, ctx: &mut LayerInit<'_, '_>) -> Result<Box<dyn TunerLayer>> {
        crate::layer::VeraLayer::create(self, ctx).map(|l| Box::new(l) as Box<dyn TunerLayer>)
    }
}
