//! `PveraConfig`: PEFT 0.21.2's keys, defaults and checks, and the projections shared by an adapter's
//! layers.

use peft_core::config::{unsupported_option, BiasOption, LayerInit, TargetLayer};
use peft_core::peft_config::targets::dedupe_lists;
use peft_core::peft_config::{LayerIndices, LayersPattern, PeftConfigCommon, TargetModules};
use peft_core::LayerMethod;
use peft_core::{AdapterConfig, BiasMode, MethodConfig, PeftError, Result, TunerLayer};
use peft_projections::{self as shared, SharedProjections};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// `peft_type` of PVeRA.
pub const PEFT_TYPE: &str = "PVERA";

/// PEFT 0.21.2's `PveraConfig`, field for field.
///
/// PVeRA ("Probabilistic VeRA") keeps VeRA's frozen random projections and trained scaling vectors, but
/// its input-side projection has `2r` rows: the scaled code splits into a mean and a log-variance, and in
/// training (or with `sample_at_inference`) the code passed on is a sample `μ + ε·exp(logvar/2)`.
///
/// ```
/// use peft_core::peft_config::TargetModules;
/// use peft_pvera::PveraConfig;
///
/// let config = PveraConfig {
///     r: 64,
///     target_modules: Some(TargetModules::list(["q_proj", "v_proj"])),
///     ..PveraConfig::default()
/// };
/// assert!(config.save_projection && !config.sample_at_inference);
/// assert_eq!(PveraConfig::default().r, 256);
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PveraConfig {
    /// `peft_type`, `task_type`, `base_model_name_or_path`, `revision`, `inference_mode`, …
    #[serde(flatten)]
    pub common: PeftConfigCommon,
    /// The code size (default 256; `pvera_A` has `2r` rows).
    pub r: i64,
    /// Modules to adapt: names / dotted suffixes, a full-match regex, or `"all-linear"`.
    pub target_modules: Option<TargetModules>,
    /// The seed of the projections' generator.
    pub projection_prng_key: i64,
    /// Save `pvera_A` / `pvera_B` in the adapter file (else they are drawn again on load).
    pub save_projection: bool,
    /// Dropout on the adapter's input path (training only).
    pub pvera_dropout: f64,
    /// The initial value of `pvera_lambda_d` (default 0.1).
    pub d_initial: f64,
    /// `true` for weights stored `(in, out)` (GPT-2's `Conv1D`); corrected per layer as PEFT does.
    pub fan_in_fan_out: bool,
    /// Which biases train with the adapter.
    pub bias: BiasOption,
    /// Extra modules trained and saved in full.
    pub modules_to_save: Option<Vec<String>>,
    /// `true`: `λ_d = d_initial`, `λ_b = 0` (the identity); `false`: `λ_d ~ N(0, 1)`, `λ_b = 1`.
    pub init_weights: bool,
    /// Only the layers with these indices are adapted.
    pub layers_to_transform: Option<LayerIndices>,
    /// The name of the layer list `layers_to_transform` indexes into.
    pub layers_pattern: Option<LayersPattern>,
    /// Sample the code in evaluation too (else the mean is used outside training).
    pub sample_at_inference: bool,
    /// A seed for a generator of each layer's own (the noise then does not come from the global stream).
    pub generator_seed: Option<i64>,
    /// The projections of this adapter, made by [`AdapterConfig::before_layers`] (never saved here).
    #[serde(skip)]
    pub projections: SharedProjections,
}

impl Default for PveraConfig {
    fn default() -> Self {
        Self {
            common: PeftConfigCommon::new(PEFT_TYPE),
            r: 256,
            target_modules: None,
            projection_prng_key: 0,
            save_projection: true,
            pvera_dropout: 0.0,
            d_initial: 0.1,
            fan_in_fan_out: false,
            bias: BiasOption::default(),
            modules_to_save: None,
            init_weights: true,
            layers_to_transform: None,
            layers_pattern: None,
            sample_at_inference: false,
            generator_seed: None,
            projections: SharedProjections::default(),
        }
    }
}

impl PveraConfig {
    fn check(&self, location: &str) -> Result<()> {
        Ok(self.target_spec().check_layers_pattern(location)?)
    }
}

impl MethodConfig for PveraConfig {
    const PEFT_TYPE: &'static str = PEFT_TYPE;

    /// `PveraConfig.__post_init__`: the target list becomes a set; the layer-selection rule; PEFT's
    /// warning when the projections are not saved.
    fn post_init(&mut self, location: &str, warnings: &mut Vec<String>) -> Result<()> {
        dedupe_lists([&mut self.target_modules]);
        self.check(location)?;
        if !self.save_projection {
            warnings.push(format!(
                "{location}: Specified to not save pvera_A and pvera_B within the state dictionary, instead they will \
                 be restored using the PRNG key store in `config.projection_prng_key`. Consider setting \
                 `config.save_projection` to `True` to guarantee restoring the checkpoint correctly on all system \
                 configurations."
            ));
        }
        Ok(())
    }
}

impl AdapterConfig for PveraConfig {
    peft_core::adapter_config_boilerplate!();
    peft_core::adapter_config_targets!(target_modules, layers_to_transform, layers_pattern, modules_to_save);

    fn validate(&self) -> Result<()> {
        self.check(peft_core::peft_config::error::IN_MEMORY)?;
        peft_core::config::require_positive("r", self.r)?;
        if !(0.0..1.0).contains(&self.pvera_dropout) {
            return Err(PeftError::Invalid(format!(
                "pvera_dropout must be in [0, 1), got {}",
                self.pvera_dropout
            )));
        }
        self.bias.mode()?;
        for (option, value) in
            [("projection_prng_key", Some(self.projection_prng_key)), ("generator_seed", self.generator_seed)]
        {
            if let Some(v) = value.filter(|v| *v < 0) {
                return Err(unsupported_option(
                    PEFT_TYPE,
                    option,
                    &Value::from(v),
                    "a negative seed (torch.Generator.manual_seed wraps it to 64 bits)",
                ));
            }
        }
        Ok(())
    }

    fn bias(&self) -> BiasMode {
        self.bias.mode().unwrap_or(BiasMode::None)
    }

    fn check_new_adapter(&self, existing: &[(&str, &dyn AdapterConfig)]) -> Result<()> {
        shared::check_same_projections::<PveraConfig>(
            existing,
            "PVeRA",
            |c| (c.projection_prng_key, c.save_projection),
            (self.projection_prng_key, self.save_projection),
        )
    }

    /// PEFT's `_init_pvera_A_pvera_B`: `pvera_A` `(2r, max in)` then `pvera_B` `(max out, r)`, Kaiming-uniform
    /// from a generator seeded with `projection_prng_key`; later adapters reuse the first adapter's.
    fn before_layers(
        &mut self,
        _adapter: &str,
        targets: &[TargetLayer],
        existing: &[(&str, &dyn AdapterConfig)],
    ) -> Result<()> {
        if let Some(p) = shared::earlier::<PveraConfig>(existing, |c| &c.projections) {
            self.projections = p;
            return Ok(());
        }
        let (out_max, in_max) = shared::largest_linear(targets, "PVeRA")?;
        self.projections = SharedProjections::draw(
            self.projection_prng_key as u64,
            [2 * self.r, in_max],
            [out_max, self.r],
        )?;
        Ok(())
    }
}

impl LayerMethod for PveraConfig {
    fn create_layer(&mut self, ctx: &mut LayerInit<'_, '_>) -> Result<Box<dyn TunerLayer>> {
        crate::layer::PveraLayer::create(self, ctx).map(|l| Box::new(l) as Box<dyn TunerLayer>)
    }
}
