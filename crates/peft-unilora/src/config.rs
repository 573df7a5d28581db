//! `UniLoraConfig`: PEFT 0.21.2's keys, defaults and checks, and the hook that draws an adapter's θ and
//! index map before its layers.

use crate::shared::{AdapterPlan, SharedTheta};
use peft_core::config::{BiasMode, BiasOption, LayerInit, TargetLayer};
use peft_core::peft_config::targets::dedupe_lists;
use peft_core::peft_config::{ConfigError, LayerIndices, LayersPattern, PeftConfigCommon, TargetModules};
use peft_core::{AdapterConfig, LayerMethod, MethodConfig, PeftError, Result, TunerLayer};
use serde::{Deserialize, Serialize};

/// `peft_type` of UniLoRA.
pub const PEFT_TYPE: &str = "UNILORA";

/// PEFT 0.21.2's `UniLoraConfig`, field for field (it has no `exclude_modules`).
///
/// UniLoRA ("Uni-LoRA: One Vector Is All You Need") trains one vector θ of `theta_d_length` values per
/// adapter; every entry of every layer's rank-`r` LoRA factors `A` and `B` is one entry of θ, picked by a
/// fixed index map drawn from `proj_seed` and scaled by `1/√(uses of that entry)`.
///
/// ```
/// use peft_core::peft_config::TargetModules;
/// use peft_unilora::UniloraConfig;
///
/// let config = UniloraConfig {
///     theta_d_length: 1024,
///     target_modules: Some(TargetModules::list(["q_proj", "v_proj"])),
///     ..UniloraConfig::default()
/// };
/// assert_eq!((config.r, config.proj_seed, config.save_indices), (4, 42, false));
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct UniloraConfig {
    /// `peft_type`, `task_type`, `base_model_name_or_path`, `revision`, `inference_mode`, …
    #[serde(flatten)]
    pub common: PeftConfigCommon,
    /// The rank of the factors `A` `(r, in)` and `B` `(out, r)`.
    pub r: i64,
    /// The seed of NumPy's generator that draws the index map (`np.random.default_rng(proj_seed)`).
    pub proj_seed: i64,
    /// The length of the trained vector θ.
    pub theta_d_length: i64,
    /// Modules to adapt: names / dotted suffixes, a full-match regex, or `"all-linear"`.
    pub target_modules: Option<TargetModules>,
    /// Dropout on the adapter's input path (training only).
    pub unilora_dropout: f64,
    /// The base weight is stored `(in, out)` (GPT-2's `Conv1D`); corrected from the layer type on injection.
    pub fan_in_fan_out: bool,
    /// Which biases train with the adapter (`"none"`, `"all"`, `"unilora_only"`).
    pub bias: BiasOption,
    /// Extra modules trained and saved in full.
    pub modules_to_save: Option<Vec<String>>,
    /// With `init_weights`, θ starts `U(−bound, bound)`.
    pub init_theta_d_bound: f64,
    /// `true`: θ starts `U(−init_theta_d_bound, init_theta_d_bound)`; `false`: `N(0, 1)`.
    pub init_weights: bool,
    /// Save the index map and its scales with θ (otherwise they are drawn again from `proj_seed` on load).
    pub save_indices: bool,
    /// Only the layers with these indices are adapted.
    pub layers_to_transform: Option<LayerIndices>,
    /// The name of the layer list `layers_to_transform` indexes into.
    pub layers_pattern: Option<LayersPattern>,
    /// The model's θ vectors (one per UniLoRA adapter, PEFT's model-level `unilora_theta_d`), shared by
    /// every adapter's config; never saved here.
    #[serde(skip)]
    pub shared: SharedTheta,
    /// This adapter's θ as drawn and its index map, from `before_layers` to its layers.
    #[serde(skip)]
    pub plan: AdapterPlan,
}

impl Default for UniloraConfig {
    fn default() -> Self {
        Self {
            common: PeftConfigCommon::new(PEFT_TYPE),
            r: 4,
            proj_seed: 42,
            theta_d_length: 256,
            target_modules: None,
            unilora_dropout: 0.0,
            fan_in_fan_out: false,
            bias: BiasOption::default(),
            modules_to_save: None,
            init_theta_d_bound: 0.02,
            init_weights: true,
            save_indices: false,
            layers_to_transform: None,
            layers_pattern: None,
            shared: SharedTheta::default(),
            plan: AdapterPlan::default(),
        }
    }
}

impl UniloraConfig {
    /// `UniLoraConfig.__post_init__`'s checks, with its messages.
    fn check(&self, location: &str) -> Result<()> {
        let invalid = |field: &str, message: String| -> PeftError {
            ConfigError::InvalidField { location: location.to_string(), field: field.to_string(), message }
                .into()
        };
        if self.r <= 0 {
            return Err(invalid("r", format!("`r` should be a positive integer, got {}.", self.r)));
        }
        if self.theta_d_length <= 0 {
            return Err(invalid(
                "theta_d_length",
                format!("`theta_d_length` should be a positive integer, got {}.", self.theta_d_length),
            ));
        }
        if !(0.0..=1.0).contains(&self.unilora_dropout) {
            return Err(invalid(
                "unilora_dropout",
                format!("`unilora_dropout` should be between 0.0 and 1.0, got {}.", self.unilora_dropout),
            ));
        }
        // `not bound > 0` refuses NaN too, as PEFT's `bound <= 0` does not; NaN cannot come from JSON.
        if self.init_theta_d_bound.is_nan() || self.init_theta_d_bound <= 0.0 {
            return Err(invalid(
                "init_theta_d_bound",
                format!("`init_theta_d_bound` should be a positive float, got {}.", self.init_theta_d_bound),
            ));
        }
        if !["none", "all", "unilora_only"].contains(&self.bias.0.as_str()) {
            return Err(invalid(
                "bias",
                format!("`bias` should be 'none', 'all', or 'unilora_only', got {}.", self.bias.0),
            ));
        }
        Ok(self.target_spec().check_regex_selection(location)?)
    }
}

impl MethodConfig for UniloraConfig {
    const PEFT_TYPE: &'static str = PEFT_TYPE;

    /// `UniLoraConfig.__post_init__`: the target list becomes a set; the value checks.
    fn post_init(&mut self, location: &str, _warnings: &mut Vec<String>) -> Result<()> {
        dedupe_lists([&mut self.target_modules]);
        self.check(location)
    }
}

impl AdapterConfig for UniloraConfig {
    peft_core::adapter_config_boilerplate!();
    peft_core::adapter_config_targets!(target_modules, layers_to_transform, layers_pattern, modules_to_save);

    fn validate(&self) -> Result<()> {
        self.check(peft_core::peft_config::error::IN_MEMORY)?;
        // NumPy's SeedSequence refuses negative seeds when the model draws the map.
        if self.proj_seed < 0 {
            return Err(PeftError::Invalid(format!(
                "`proj_seed` {} must be non-negative: NumPy's SeedSequence refuses negative seeds",
                self.proj_seed
            )));
        }
        Ok(())
    }

    fn bias(&self) -> BiasMode {
        self.bias.mode().unwrap_or(BiasMode::None)
    }

    /// PEFT's `UniLoraModel.inject_adapter` before its layers: θ drawn from the global generator, and the
    /// index map of the whole adapter (every targeted layer's `A` then `B`, in model order) drawn from
    /// `proj_seed` with its per-entry scales. The θ vectors of the model's UniLoRA adapters live in one
    /// dict, which the first adapter creates and later ones join.
    fn before_layers(
        &mut self,
        _adapter: &str,
        targets: &[TargetLayer],
        existing: &[(&str, &dyn AdapterConfig)],
    ) -> Result<()> {
        self.shared = existing
            .iter()
            .filter_map(|(_, c)| c.as_any().downcast_ref::<UniloraConfig>())
            .find_map(|c| c.shared.0.clone())
            .map_or_else(SharedTheta::new, |s| SharedTheta(Some(s)));
        self.plan = AdapterPlan::draw(self, targets)?;
        Ok(())
    }
}

impl LayerMethod for UniloraConfig {
    fn create_layer(&mut self, ctx: &mut LayerInit<'_, '_>) -> Result<Box<dyn TunerLayer>> {
        crate::layer::UniloraLayer::create(self, ctx).map(|l| Box::new(l) as Box<dyn TunerLayer>)
    }
}
