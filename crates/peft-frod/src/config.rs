//! `FrodConfig`: PEFT 0.21.2's keys, defaults and checks, and the bases an adapter's layers share.

use crate::basis::SharedBases;
use peft_core::config::{BiasMode, BiasOption, LayerInit, TargetWeight};
use peft_core::peft_config::targets::dedupe_lists;
use peft_core::peft_config::{
    ConfigError, LayerIndices, LayersPattern, Num, PeftConfigCommon, TargetModules,
};
use peft_core::{AdapterConfig, LayerMethod, MethodConfig, PeftError, Result, TunerLayer};
use serde::{Deserialize, Serialize};

/// `peft_type` of FRoD.
pub const PEFT_TYPE: &str = "FROD";

/// PEFT 0.21.2's `FrodConfig`, field for field (it has no `exclude_modules`).
///
/// FRoD rewrites each adapted linear weight as `W' = U·(S + diag(λ))·Vᵀ`. The basis `V` `(in, in)` is
/// decomposed jointly from the weights of every adapted layer of one *category* (the modules that play
/// the same role in different blocks, e.g. all `q_proj`), `U` `(out, in)` and the initial `λ` `(in)` come
/// from each layer's own weight so that `W' = W` at the start, and `S` is a sparse `(in, in)` matrix of
/// `sparse_rate · in²` off-diagonal positions drawn from `projection_prng_key`. Only `λ` and the values of
/// `S` train.
///
/// ```
/// use peft_core::peft_config::TargetModules;
/// use peft_frod::FrodConfig;
///
/// let config = FrodConfig {
///     target_modules: Some(TargetModules::list(["q_proj", "v_proj"])),
///     ..FrodConfig::default()
/// };
/// assert_eq!((config.sparse_rate.value(), config.regularization_alpha.value()), (0.01, 1e-3));
/// assert!(config.save_projection && config.init_weights && !config.runtime_offload_base_weight);
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct FrodConfig {
    /// `peft_type`, `task_type`, `base_model_name_or_path`, `revision`, `inference_mode`, …
    #[serde(flatten)]
    pub common: PeftConfigCommon,
    /// Modules to adapt: names / dotted suffixes, a full-match regex, or `"all-linear"`.
    pub target_modules: Option<TargetModules>,
    /// The seed of the CPU generator that draws the positions of every sparse `S`.
    pub projection_prng_key: i64,
    /// Save `V`, the positions of `S` and its size with the adapter (`base_model.frod_V.<category>`, …);
    /// without it they are decomposed and drawn again from the base weights on load.
    pub save_projection: bool,
    /// Dropout on the adapter's input (training only).
    pub frod_dropout: f64,
    /// The base weight is stored `(in, out)` (GPT-2's `Conv1D`); corrected from the layer type on injection.
    pub fan_in_fan_out: bool,
    /// Which biases train with the adapter (`"none"`, `"all"`, `"frod_only"`).
    pub bias: BiasOption,
    /// Extra modules trained and saved in full.
    pub modules_to_save: Option<Vec<String>>,
    /// `true`: `S` starts at zero (the adapted layer is the base layer, up to rounding); `false`: `S` values
    /// `N(0, 0.1²)` and `λ` perturbed by `N(0, 0.1²)`.
    pub init_weights: bool,
    /// Only the layers with these indices are adapted.
    pub layers_to_transform: Option<LayerIndices>,
    /// The name of the layer list `layers_to_transform` indexes into.
    pub layers_pattern: Option<LayersPattern>,
    /// The fraction of the `in²` positions of `S` that train (at least one when positive), in `[0, 1]`.
    pub sparse_rate: Num,
    /// The ridge term added to each layer's `QᵢᵀQᵢ` before it is inverted in the joint decomposition.
    pub regularization_alpha: Num,
    /// PEFT shows a progress bar over the categories while decomposing; peft-rs logs each category at
    /// debug level instead (the value is kept and written back).
    pub progressbar: bool,
    /// Keep the base weights on the CPU while FRoD's forward pass does not need them (it computes the
    /// adapted layer from `U`, `S`, `λ` and `V` alone). A no-op for a model on the CPU, as in PEFT; refused
    /// on other devices (see the crate docs).
    pub runtime_offload_base_weight: bool,
    /// The bases of this adapter, made by [`AdapterConfig::before_layers_with_weights`] (never saved
    /// here).
    #[serde(skip)]
    pub bases: SharedBases,
}

impl Default for FrodConfig {
    fn default() -> Self {
        Self {
            common: PeftConfigCommon::new(PEFT_TYPE),
            target_modules: None,
            projection_prng_key: 0,
            save_projection: true,
            frod_dropout: 0.0,
            fan_in_fan_out: false,
            bias: BiasOption::default(),
            modules_to_save: None,
            init_weights: true,
            layers_to_transform: None,
            layers_pattern: None,
            sparse_rate: Num::from(0.01),
            regularization_alpha: Num::from(1e-3),
            progressbar: true,
            runtime_offload_base_weight: false,
            bases: SharedBases::default(),
        }
    }
}

impl FrodConfig {
    /// `FrodConfig.__post_init__`'s own check: `sparse_rate` within `[0, 1]`.
    fn check(&self, location: &str) -> Result<()> {
        let rate = self.sparse_rate.value();
        if !(0.0..=1.0).contains(&rate) {
            return Err(ConfigError::InvalidField {
                location: location.to_string(),
                field: "sparse_rate".into(),
                message: format!("`sparse_rate` should be between 0 and 1, got {}.", self.sparse_rate.0),
            }
            .into());
        }
        Ok(())
    }
}

impl MethodConfig for FrodConfig {
    const PEFT_TYPE: &'static str = PEFT_TYPE;

    /// `FrodConfig.__post_init__`: the target list becomes a set; `layers_pattern` needs
    /// `layers_to_transform`; `sparse_rate` in `[0, 1]`.
    fn post_init(&mut self, location: &str, _warnings: &mut Vec<String>) -> Result<()> {
        dedupe_lists([&mut self.target_modules]);
        self.target_spec().check_layers_pattern(location)?;
        self.check(location)
    }
}

impl AdapterConfig for FrodConfig {
    peft_core::adapter_config_boilerplate!();
    peft_core::adapter_config_targets!(target_modules, layers_to_transform, layers_pattern, modules_to_save);

    fn validate(&self) -> Result<()> {
        let location = peft_core::peft_config::error::IN_MEMORY;
        self.target_spec().check_layers_pattern(location)?;
        self.check(location)?;
        self.bias.mode()?;
        if self.frod_dropout > 1.0 || self.frod_dropout.is_nan() {
            // PEFT hands a positive value to `nn.Dropout`, which refuses it (zero or less means no dropout).
            return Err(PeftError::Invalid(format!(
                "dropout probability has to be between 0 and 1, but got {}",
                self.frod_dropout
            )));
        }
        let alpha = self.regularization_alpha.value();
        if !alpha.is_finite() {
            return Err(PeftError::Invalid(format!("`regularization_alpha` must be finite, got {alpha}")));
        }
        Ok(())
    }

    fn bias(&self) -> BiasMode {
        self.bias.mode().unwrap_or(BiasMode::None)
    }

    /// PEFT's `_check_new_adapter_config`: every FRoD adapter of a model uses the same
    /// `projection_prng_key`, `save_projection` and `runtime_offload_base_weight`.
    fn check_new_adapter(&self, existing: &[(&str, &dyn AdapterConfig)]) -> Result<()> {
        peft_projections::check_same_projections::<FrodConfig>(
            existing,
            "FRoD",
            |c| (c.projection_prng_key, c.save_projection),
            (self.projection_prng_key, self.save_projection),
        )?;
        for (name, other) in existing {
            let Some(other) = other.as_any().downcast_ref::<FrodConfig>() else { continue };
            if other.runtime_offload_base_weight != self.runtime_offload_base_weight {
                return Err(PeftError::Invalid(format!(
                    "FRoD runtime base-weight offloading must be enabled for all adapters or none, but adapter \
                     '{name}' has runtime_offload_base_weight={} and the new one {}",
                    other.runtime_offload_base_weight, self.runtime_offload_base_weight
                )));
            }
        }
        Ok(())
    }

    fn reads_target_weights(&self) -> bool {
        true
    }

    /// PEFT's `_pre_injection_hook` (`_init_frod_projections`) for the model's first FRoD adapter: the
    /// basis `V` of every category from the targeted weights, and the positions of each category's `S`,
    /// drawn in sorted category order. Later adapters share the first one's registry (PEFT runs the hook
    /// only for the adapter its tuner is built with; see [`crate::basis::Registry::attach`]).
    fn before_layers_with_weights(
        &mut self,
        adapter: &str,
        targets: &[TargetWeight],
        existing: &[(&str, &dyn AdapterConfig)],
    ) -> Result<()> {
        let earlier = existing
            .iter()
            .filter_map(|(_, c)| c.as_any().downcast_ref::<FrodConfig>())
            .find_map(|c| c.bases.0.clone().map(|r| SharedBases(Some(r))));
        let options = (self.regularization_alpha.value(), self.sparse_rate.value(), self.projection_prng_key);
        self.bases = SharedBases::for_adapter(earlier, adapter, targets, options)?;
        Ok(())
    }

    /// PEFT's `_remap_adapter_state_dict_for_load`: with `save_projection` off, projection tensors in the
    /// file are not loaded (PEFT warns and its `strict=False` load drops them; the bases decomposed from
    /// the base weights stay). With it on, a file without them is refused with PEFT's reason.
    fn read_file_tensors(
        &self,
        tensors: peft_core::config::NamedTensors,
        path: &std::path::Path,
    ) -> Result<peft_core::config::NamedTensors> {
        if self.save_projection {
            if !tensors.iter().any(|(k, _)| crate::basis::is_model_level_key(k)) {
                return Err(PeftError::Invalid(format!(
                    "{}: specified to load FRoD projection tensors from state dictionary however they were not \
                     present; if this checkpoint was saved with `save_projection=False`, set `save_projection` to \
                     false before loading so the projections are regenerated from the base model weights",
                    path.display()
                )));
            }
            return Ok(tensors);
        }
        let (projection, rest): (Vec<_>, Vec<_>) =
            tensors.into_iter().partition(|(k, _)| crate::basis::is_model_level_key(k));
        if !projection.is_empty() {
            log::warn!(
                "{}: specified to not load FRoD projection tensors from state dictionary however they are present; \
                 consider setting `save_projection = True` to use them",
                path.display()
            );
        }
        Ok(rest)
    }
}

impl LayerMethod for FrodConfig {
    fn create_layer(&mut self, ctx: &mut LayerInit<'_, '_>) -> Result<Box<dyn TunerLayer>> {
        crate::layer::FrodLayer::create(self, ctx).map(|l| Box::new(l) as Box<dyn TunerLayer>)
    }
}
