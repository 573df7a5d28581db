//! `AdamssConfig`: PEFT 0.21.2's keys, defaults and checks.

use peft_core::config::LayerInit;
use peft_core::peft_config::targets::dedupe_lists;
use peft_core::peft_config::{
    ConfigError, LayerIndices, LayersPattern, Num, PeftConfigCommon, TargetModules,
};
use peft_core::{AdapterConfig, LayerMethod, MethodConfig, Result, TunerLayer};
use serde::{Deserialize, Deserializer, Serialize};

/// `peft_type` of AdaMSS.
pub const PEFT_TYPE: &str = "ADAMSS";

/// PEFT 0.21.2's `AdamssConfig`, field for field (it has no `exclude_modules` and no `bias`).
///
/// AdaMSS ("Adaptive Multi-Subspaces") decomposes each frozen weight (with its bias as an extra column)
/// by a rank-`r` randomized SVD, clusters the rows of the left factor into `num_subspaces` groups with
/// scikit-learn's KMeans, and trains one low-rank pair `(Bᵢ, Aᵢ)` per group on the right factor.
/// With `use_asa`, a training callback ([`crate::Asa`]) prunes the least important subspaces on a
/// schedule.
///
/// ```
/// use peft_adamss::AdamssConfig;
/// let config = AdamssConfig::default();
/// assert_eq!((config.r, config.num_subspaces, config.subspace_rank), (100, 5, 1));
/// assert_eq!(config.init_weights.as_deref(), Some("orthogonal"));
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AdamssConfig {
    /// `peft_type`, `task_type`, `base_model_name_or_path`, `revision`, `inference_mode`, …
    #[serde(flatten)]
    pub common: PeftConfigCommon,
    /// The rank of the SVD (clamped per layer to `min(r, out, in + bias)`; default 100).
    pub r: i64,
    /// How many subspaces KMeans forms (clamped per layer to the number of rows; default 5).
    pub num_subspaces: i64,
    /// The rank of each subspace's `(Bᵢ, Aᵢ)` (at most the subspace's size; default 1).
    pub subspace_rank: i64,
    /// Modules to adapt: names / dotted suffixes, a full-match regex, or `"all-linear"`.
    pub target_modules: Option<TargetModules>,
    /// `"orthogonal"` (zero `Bᵢ`: the adapted layer starts as the base) or `None` (`false` in older
    /// files): `Bᵢ ~ 0.01·N(0, 1)`.
    #[serde(deserialize_with = "init_weights_form")]
    pub init_weights: Option<String>,
    /// Extra modules trained and saved in full.
    pub modules_to_save: Option<Vec<String>>,
    /// Only the layers with these indices are adapted.
    pub layers_to_transform: Option<LayerIndices>,
    /// The name of the layer list `layers_to_transform` indexes into.
    pub layers_pattern: Option<LayersPattern>,
    /// Adaptive Subspace Allocation: prune subspaces during training ([`crate::Asa`]).
    pub use_asa: bool,
    /// The number of subspaces (over all layers) ASA keeps at the end of its schedule.
    pub asa_target_subspaces: i64,
    /// The first step of ASA's schedule.
    pub init_warmup: i64,
    /// The last step of ASA's schedule.
    pub final_warmup: i64,
    /// Steps between two ASA maskings.
    pub mask_interval: i64,
    /// EMA coefficient of the importance `|w·∇w|`.
    pub asa_importance_beta: Num,
    /// EMA coefficient of the importance's uncertainty.
    pub asa_uncertainty_beta: Num,
    /// How fast the schedule falls from all subspaces to `asa_target_subspaces`.
    pub asa_schedule_exponent: Num,
    /// Each subspace's rank from its Gram matrix's singular values above `svd_threshold · σ₀` (at most
    /// `subspace_rank`).
    pub use_dynamic_rank: bool,
    /// The relative singular-value threshold of `use_dynamic_rank`.
    pub svd_threshold: Num,
    /// The seed of the weight's randomized SVD (a fork of the global generator, as PEFT).
    pub random_seed: i64,
}

/// PEFT's `init_weights` values: a string, `None`, or `False` (read as `None`). `True` is kept (as
/// `"True"`) for `__post_init__`'s refusal.
fn init_weights_form<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Option<String>, D::Error> {
    Ok(match serde_json::Value::deserialize(d)? {
        serde_json::Value::Null | serde_json::Value::Bool(false) => None,
        serde_json::Value::Bool(true) => Some("True".into()),
        serde_json::Value::String(s) => Some(s),
        other => Some(other.to_string()),
    })
}

impl Default for AdamssConfig {
    fn default() -> Self {
        Self {
            common: PeftConfigCommon::new(PEFT_TYPE),
            r: 100,
            num_subspaces: 5,
            subspace_rank: 1,
            target_modules: None,
            init_weights: Some("orthogonal".into()),
            modules_to_save: None,
            layers_to_transform: None,
            layers_pattern: None,
            use_asa: false,
            asa_target_subspaces: 50,
            init_warmup: 50,
            final_warmup: 1000,
            mask_interval: 100,
            asa_importance_beta: Num::from(0.85),
            asa_uncertainty_beta: Num::from(0.85),
            asa_schedule_exponent: Num::from(3.0),
            use_dynamic_rank: false,
            svd_threshold: Num::from(0.1),
            random_seed: 0,
        }
    }
}

impl AdamssConfig {
    /// `__post_init__`'s checks, with its messages.
    fn check(&self, location: &str) -> Result<()> {
        let invalid = |field: &str, message: String| -> Result<()> {
            Err(ConfigError::InvalidField {
                location: location.to_string(),
                field: field.to_string(),
                message,
            }
            .into())
        };
        if let Some(v) = &self.init_weights {
            if v != "orthogonal" {
                return invalid(
                    "init_weights",
                    format!("init_weights must be 'orthogonal' or None, got {v}"),
                );
            }
        }
        if !self.use_asa {
            return Ok(());
        }
        if self.mask_interval <= 0 {
            return invalid(
                "mask_interval",
                format!(
                    "`mask_interval` must be a positive integer when `use_asa=True`, got {}.",
                    self.mask_interval
                ),
            );
        }
        if self.init_warmup >= self.final_warmup {
            return invalid(
                "init_warmup",
                format!(
                    "`init_warmup` must be smaller than `final_warmup` when `use_asa=True` so that ASA has a \
                     non-empty pruning ramp, got init_warmup={} and final_warmup={}.",
                    self.init_warmup, self.final_warmup
                ),
            );
        }
        if self.asa_target_subspaces <= 0 {
            return invalid(
                "asa_target_subspaces",
                format!(
                    "`asa_target_subspaces` must be a positive integer when `use_asa=True`, got {}.",
                    self.asa_target_subspaces
                ),
            );
        }
        if self.asa_schedule_exponent.value() <= 0.0 || self.asa_schedule_exponent.value().is_nan() {
            return invalid(
                "asa_schedule_exponent",
                format!(
                    "`asa_schedule_exponent` must be a positive number when `use_asa=True`, got {}.",
                    self.asa_schedule_exponent.0
                ),
            );
        }
        Ok(())
    }

    /// Checks PEFT leaves to its layer code, which fails there with a torch or scikit-learn error: sizes
    /// that cannot form tensors or clusters. (`subspace_rank: 0` is fine: PEFT raises every rank to 1.)
    fn check_sizes(&self, location: &str) -> Result<()> {
        for (field, v, min) in [
            ("r", self.r, 1),
            ("num_subspaces", self.num_subspaces, 1),
            ("subspace_rank", self.subspace_rank, 0),
        ] {
            if v < min {
                return Err(ConfigError::InvalidField {
                    location: location.to_string(),
                    field: field.to_string(),
                    message: format!(
                        "`{field}` must be at least {min}, got {v} (PEFT fails creating the layer)"
                    ),
                }
                .into());
            }
        }
        Ok(())
    }

    /// Whether `Bᵢ` starts at zero (`init_weights="orthogonal"`).
    pub fn zero_init(&self) -> bool {
        self.init_weights.is_some()
    }
}

impl MethodConfig for AdamssConfig {
    const PEFT_TYPE: &'static str = PEFT_TYPE;

    /// `AdamssConfig.__post_init__`: the target list becomes a set; `init_weights` and (with `use_asa`)
    /// the schedule are checked.
    fn post_init(&mut self, location: &str, _warnings: &mut Vec<String>) -> Result<()> {
        dedupe_lists([&mut self.target_modules]);
        self.check(location)
    }
}

impl AdapterConfig for AdamssConfig {
    peft_core::adapter_config_boilerplate!();
    peft_core::adapter_config_targets!(target_modules, layers_to_transform, layers_pattern, modules_to_save);

    fn validate(&self) -> Result<()> {
        let location = peft_core::peft_config::error::IN_MEMORY;
        self.check(location)?;
        self.check_sizes(location)
    }
}

impl LayerMethod for AdamssConfig {
    fn create_layer(&mut self, ctx: &mut LayerInit<'_, '_>) -> Result<Box<dyn TunerLayer>> {
        crate::layer::AdamssLayer::create(self, ctx).map(|l| Box::new(l) as Box<dyn TunerLayer>)
    }
}
