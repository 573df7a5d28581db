//! `SupertuningConfig`: PEFT 0.21.2's keys, defaults and checks.

use peft_core::config::LayerInit;
use peft_core::peft_config::targets::dedupe_lists;
use peft_core::peft_config::{ConfigError, Num, PeftConfigCommon, TargetModules};
use peft_core::{AdapterConfig, LayerMethod, MethodConfig, PeftError, Result, TunerLayer};
use serde::{Deserialize, Serialize};

/// `peft_type` of Super-Tuning.
pub const PEFT_TYPE: &str = "SUPERTUNING";

/// PEFT 0.21.2's `SupertuningConfig`, field for field (it derives from `PeftConfig` directly, so it has no
/// `exclude_modules` or layer selection).
///
/// Super-Tuning freezes the base weight and trains a sparse support: the `⌊numel · (1 − sparsity)⌋` entries
/// of largest (or, with `select_top: false`, smallest) magnitude. With `r` set, a LoRA pair of that rank is
/// added on top (the "Supra" hybrid).
///
/// ```
/// use peft_core::peft_config::TargetModules;
/// use peft_supertuning::SupertuningConfig;
///
/// let config = SupertuningConfig {
///     r: Some(4),
///     target_modules: Some(TargetModules::list(["q_proj", "v_proj"])),
///     ..SupertuningConfig::default()
/// };
/// assert_eq!(config.sparsity.value(), 0.99);
/// assert_eq!(config.alpha(), Some(8.0)); // 2 · r when lora_alpha is unset
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SupertuningConfig {
    /// `peft_type`, `task_type`, `base_model_name_or_path`, `revision`, `inference_mode`, …
    #[serde(flatten)]
    pub common: PeftConfigCommon,
    /// Modules to adapt: names / dotted suffixes, a full-match regex, or `"all-linear"`.
    pub target_modules: Option<TargetModules>,
    /// Extra modules trained and saved in full.
    pub modules_to_save: Option<Vec<String>>,
    /// The share of each weight that stays frozen, in `[0, 1)` (kept as written: `0.9` or `0`).
    pub sparsity: Num,
    /// `true`: train the largest-magnitude entries; `false`: the smallest.
    pub select_top: bool,
    /// The rank of the Supra LoRA pair; `None`: sparse support only.
    pub r: Option<i64>,
    /// The Supra pair's scale numerator (`alpha / r`); filled with `2 · r` when `r` is set and this is not.
    pub lora_alpha: Option<Num>,
    /// Dropout on the Supra pair's input (training only), in `[0, 1)`.
    pub lora_dropout: Num,
    /// `true`: the sparse values and LoRA `B` start at zero (the identity); `false`: values from N(0, 1),
    /// `B` Kaiming-uniform.
    pub init_weights: bool,
    /// Save the positions of the support with the adapter; `false`: they are recomputed from the base
    /// weight when the adapter is loaded.
    pub save_precomputed_indices: bool,
}

impl Default for SupertuningConfig {
    fn default() -> Self {
        Self {
            common: PeftConfigCommon::new(PEFT_TYPE),
            target_modules: None,
            modules_to_save: None,
            sparsity: Num::from(0.99),
            select_top: true,
            r: None,
            lora_alpha: None,
            lora_dropout: Num::from(0.0),
            init_weights: true,
            save_precomputed_indices: true,
        }
    }
}

impl SupertuningConfig {
    /// The Supra pair's `lora_alpha` as PEFT's layer uses it (`2 · r` when unset); `None` without `r`.
    pub fn alpha(&self) -> Option<f64> {
        let r = self.r?;
        Some(self.lora_alpha.as_ref().map_or(2.0 * r as f64, Num::value))
    }

    /// The number of trained entries of a weight with `numel` entries: PEFT's
    /// `int(numel * (1 - sparsity))`, the same double-precision product, truncated.
    pub fn num_trainable(&self, numel: i64) -> i64 {
        (numel as f64 * (1.0 - self.sparsity.value())) as i64
    }

    /// PEFT's `__post_init__` checks (the order in which it raises them).
    fn check(&self, location: &str) -> Result<()> {
        let invalid = |field: &str, message: String| -> PeftError {
            ConfigError::InvalidField { location: location.to_string(), field: field.to_string(), message }
                .into()
        };
        let sparsity = self.sparsity.value();
        if !(0.0..1.0).contains(&sparsity) {
            return Err(invalid(
                "sparsity",
                format!("sparsity must be in [0.0, 1.0), got {}", self.sparsity.0),
            ));
        }
        match self.r {
            Some(r) if r <= 0 => {
                return Err(invalid("r", format!("r must be a positive integer or None, got {r}")));
            }
            None if self.lora_alpha.is_some() => {
                return Err(invalid(
                    "lora_alpha",
                    "lora_alpha is set but r is None — Supra mode requires an explicit r.".into(),
                ));
            }
            _ => {}
        }
        if !(0.0..1.0).contains(&self.lora_dropout.value()) {
            return Err(invalid(
                "lora_dropout",
                format!("lora_dropout must be in [0.0, 1.0), got {}", self.lora_dropout.0),
            ));
        }
        Ok(())
    }

    /// PEFT fills an unset `lora_alpha` with the integer `2 · r` at construction, so the saved config
    /// carries it.
    fn fill_alpha(&mut self) {
        if let (Some(r), None) = (self.r, &self.lora_alpha) {
            self.lora_alpha = Some(Num::from(2 * r));
        }
    }
}

impl MethodConfig for SupertuningConfig {
    const PEFT_TYPE: &'static str = PEFT_TYPE;

    /// `SupertuningConfig.__post_init__`: the target list becomes a set; the range checks; `lora_alpha`
    /// defaults to `2 · r`; `save_precomputed_indices: false` warns that loading recomputes the support.
    fn post_init(&mut self, location: &str, warnings: &mut Vec<String>) -> Result<()> {
        dedupe_lists([&mut self.target_modules]);
        self.check(location)?;
        self.fill_alpha();
        if !self.save_precomputed_indices {
            warnings.push(format!(
                "{location}: save_precomputed_indices=False: sparse-support indices will be recomputed from base \
                 weight magnitudes at load time. This assumes the base model is identical to training time; \
                 numerical drift can cause topk tie-breaks to differ."
            ));
        }
        Ok(())
    }
}

impl AdapterConfig for SupertuningConfig {
    peft_core::adapter_config_boilerplate!();
    peft_core::adapter_config_targets!(target_modules, modules_to_save);

    fn validate(&self) -> Result<()> {
        self.check(peft_core::peft_config::error::IN_MEMORY)
    }

    /// A config built in memory skipped `__post_init__`; its `lora_alpha` default is filled here, before
    /// any layer is created, so the saved config is PEFT's.
    fn prepare_for_model(&mut self, _model_type: Option<&str>) -> Result<()> {
        self.fill_alpha();
        Ok(())
    }

    /// `SupertuningModel._check_new_adapter_config`: a layer keeps the positions of all its adapters in
    /// one buffer dict whose persistence the first adapter fixed, so every adapter must agree on
    /// `save_precomputed_indices`.
    fn check_new_adapter(&self, existing: &[(&str, &dyn AdapterConfig)]) -> Result<()> {
        let mut values: Vec<bool> = existing
            .iter()
            .filter_map(|(_, c)| c.as_any().downcast_ref::<SupertuningConfig>())
            .map(|c| c.save_precomputed_indices)
            .chain([self.save_precomputed_indices])
            .collect();
        values.sort_unstable();
        values.dedup();
        if values.len() > 1 {
            return Err(PeftError::Invalid(
                "Super-Tuning indices must be saved for all adapters or none, but got multiple different values: \
                 [False, True]"
                    .into(),
            ));
        }
        Ok(())
    }
}

impl LayerMethod for SupertuningConfig {
    fn create_layer(&mut self, ctx: &mut LayerInit<'_, '_>) -> Result<Box<dyn TunerLayer>> {
        crate::layer::SupertuningLayer::create(self, ctx).map(|l| Box::new(l) as Box<dyn TunerLayer>)
    }
}
