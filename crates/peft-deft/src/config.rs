//! `DeftConfig`: PEFT 0.21.2's keys, defaults and checks.

use peft_core::config::{BiasMode, BiasOption, LayerInit};
use peft_core::peft_config::error::ConfigError;
use peft_core::peft_config::targets::dedupe_lists;
use peft_core::peft_config::{LayerIndices, LayersPattern, Num, PeftConfigCommon, TargetModules};
use peft_core::LayerMethod;
use peft_core::{AdapterConfig, MethodConfig, PeftError, Result, TunerLayer};
use serde::{Deserialize, Serialize};

/// `peft_type` of DEFT.
pub const PEFT_TYPE: &str = "DEFT";

/// PEFT 0.21.2's `DeftConfig`, field for field.
///
/// DEFT ("Decomposed Efficient Fine-Tuning") adapts a weight as `W' = (I − P_proj)·W + Q_P·R`: a trained
/// `P` `(out, r)` defines a rank-`r` projection of the output space that is removed from the frozen weight
/// (`P_proj = Q_P · rightᵀ`, with `Q_P = P`, `right = relu(P)` or `Q_P = right = qr(P).Q`), and a trained
/// `R` `(r, in)` injects a rank-`r` update along `Q_P`. `para: true` (PaRa) keeps only the removal.
///
/// ```
/// use peft_core::peft_config::TargetModules;
/// use peft_deft::DeftConfig;
///
/// let config = DeftConfig {
///     r: 4,
///     decomposition_method: "qr".into(),
///     target_modules: Some(TargetModules::list(["q_proj", "v_proj"])),
///     ..DeftConfig::default()
/// };
/// assert_eq!(config.scaling(4), 1.0); // no alpha: no scaling
/// assert_eq!(DeftConfig { alpha: Some(16.into()), ..config }.scaling(4), 4.0);
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DeftConfig {
    /// `peft_type`, `task_type`, `base_model_name_or_path`, `revision`, `inference_mode`, …
    #[serde(flatten)]
    pub common: PeftConfigCommon,
    /// The rank of the projection and of the injection (default 8; capped at `out_features` per layer).
    pub r: i64,
    /// Modules to adapt: names / dotted suffixes, a full-match regex, or `"all-linear"`.
    pub target_modules: Option<TargetModules>,
    /// Modules never to adapt.
    pub exclude_modules: Option<TargetModules>,
    /// How `P` becomes a projection: `"relu"` (`Q_P = P`, `right = relu(P)`) or `"qr"` (orthonormal).
    pub decomposition_method: String,
    /// The standard deviation factor of `R`'s random init (`init_weights: false`).
    pub init_scale: f64,
    /// Scaling numerator: the injection is multiplied by `alpha / r` (none: 1).
    pub alpha: Option<Num>,
    /// PaRa: only remove the projection, no injection (`R` absent).
    pub para: bool,
    /// `true` for weights stored `(in, out)` (GPT-2's `Conv1D`); corrected per layer as PEFT does.
    pub fan_in_fan_out: bool,
    /// Dropout on the injection's input (training only).
    pub deft_dropout: f64,
    /// `true`: `R` starts as `rightᵀ·W / scaling`, so the adapted layer starts as the base layer; `false`:
    /// `R ~ N(0, (0.02·init_scale)²)`.
    pub init_weights: bool,
    /// Only the layers with these indices are adapted.
    pub layers_to_transform: Option<LayerIndices>,
    /// The name of the layer list `layers_to_transform` indexes into.
    pub layers_pattern: Option<LayersPattern>,
    /// Which biases train with the adapter (`"none"`, `"all"`, `"deft_only"`).
    pub bias: BiasOption,
    /// Extra modules trained and saved in full.
    pub modules_to_save: Option<Vec<String>>,
}

impl Default for DeftConfig {
    fn default() -> Self {
        Self {
            common: PeftConfigCommon::new(PEFT_TYPE),
            r: 8,
            target_modules: None,
            exclude_modules: None,
            decomposition_method: "relu".into(),
            init_scale: 1.0,
            alpha: None,
            para: false,
            fan_in_fan_out: false,
            deft_dropout: 0.0,
            init_weights: true,
            layers_to_transform: None,
            layers_pattern: None,
            bias: BiasOption::default(),
            modules_to_save: None,
        }
    }
}

impl DeftConfig {
    /// `alpha / r` for a layer of rank `r` (1 without `alpha`, or with `alpha: 0`, as PEFT's truthiness test).
    pub fn scaling(&self, r: i64) -> f64 {
        match &self.alpha {
            Some(a) if a.value() != 0.0 => a.value() / r as f64,
            _ => 1.0,
        }
    }

    fn check(&self, location: &str) -> Result<()> {
        if !["qr", "relu"].contains(&self.decomposition_method.as_str()) {
            return Err(ConfigError::InvalidField {
                location: location.to_string(),
                field: "decomposition_method".into(),
                message: format!(
                    "Unknown decomposition_method '{}', must be one of ['qr', 'relu'].",
                    self.decomposition_method
                ),
            }
            .into());
        }
        Ok(self.target_spec().check_layer_selection(location)?)
    }
}

impl MethodConfig for DeftConfig {
    const PEFT_TYPE: &'static str = PEFT_TYPE;

    /// `DeftConfig.__post_init__`: target lists become sets; a known `decomposition_method`; the
    /// layer-selection rules.
    fn post_init(&mut self, location: &str, _warnings: &mut Vec<String>) -> Result<()> {
        dedupe_lists([&mut self.target_modules, &mut self.exclude_modules]);
        self.check(location)
    }
}

impl AdapterConfig for DeftConfig {
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
        self.bias.mode()?;
        if !(0.0..1.0).contains(&self.deft_dropout) {
            return Err(PeftError::Invalid(format!(
                "deft_dropout must be in [0, 1), got {}",
                self.deft_dropout
            )));
        }
        Ok(())
    }

    fn bias(&self) -> BiasMode {
        self.bias.mode().unwrap_or(BiasMode::None)
    }
}

impl LayerMethod for DeftConfig {
    fn create_layer(&mut self, ctx: &mut LayerInit<'_, '_>) -> Result<Box<dyn TunerLayer>> {
        crate::layer::DeftLayer::create(self, ctx).map(|l| Box::new(l) as Box<dyn TunerLayer>)
    }
}
