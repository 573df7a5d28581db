//! `OsfConfig`: PEFT 0.21.2's keys, defaults and checks.

use indexmap::IndexMap;
use peft_core::config::LayerInit;
use peft_core::peft_config::{Num, PeftConfigCommon, TargetModules};
use peft_core::{AdapterConfig, LayerMethod, MethodConfig, PeftError, Result, TunerLayer};
use serde::{Deserialize, Serialize};

/// `peft_type` of OSF.
pub const PEFT_TYPE: &str = "OSF";

/// PEFT 0.21.2's `OSFConfig`, field for field (it has no `exclude_modules`, layer selection or `bias`).
///
/// OSF (Orthogonal Subspace Fine-tuning) splits each adapted weight by its SVD into the top
/// `effective_rank` singular directions, frozen, and the rest, trained with gradients projected
/// orthogonally to the frozen directions. Note that `effective_rank` is the *preserved* rank: the trained
/// rank of a layer is `min(out, in) − effective_rank`.
///
/// ```
/// use peft_core::peft_config::{Num, TargetModules};
/// use peft_osf::OsfConfig;
///
/// let config = OsfConfig {
///     effective_rank: Some(Num::from(0.25)),
///     target_modules: Some(TargetModules::list(["q_proj", "v_proj"])),
///     ..OsfConfig::default()
/// };
/// // A fraction in (0, 1] of the smaller dimension: 16 of a 64 × 128 weight.
/// assert_eq!(config.effective_rank_for("model.layers.0.q_proj", 64), 16);
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct OsfConfig {
    /// `peft_type`, `task_type`, `base_model_name_or_path`, `revision`, `inference_mode`, …
    #[serde(flatten)]
    pub common: PeftConfigCommon,
    /// The preserved (frozen) rank of every layer: an integer, a fraction in `(0, 1]` of the smaller weight
    /// dimension (a JSON float), or `None` for half the smaller dimension. Kept as written (`1` and `1.0`
    /// differ: one direction against all of them).
    pub effective_rank: Option<Num>,
    /// Modules to adapt: names / dotted suffixes, a full-match regex, or `"all-linear"`. Unset: PEFT's
    /// table for the model type, else every linear layer.
    pub target_modules: Option<TargetModules>,
    /// Per-module `effective_rank`: the first pattern (in the map's order) found anywhere in the module
    /// name by a regex search decides; values as `effective_rank`. Read from a file, the patterns come in
    /// key order (the order PEFT writes them in; a hand-written file with unsorted keys would be taken in
    /// its own order by Python's `json`).
    pub rank_pattern: Option<IndexMap<String, Num>>,
    /// `true` / `None`: the trained factors start as the SVD's low part (the adapter is the identity);
    /// `false`: they are drawn `N(0, 1)` (`randn_like`, in the order `U_low`, `S_low`, `V_low`).
    pub init_weights: Option<bool>,
    /// Extra modules trained and saved in full.
    pub modules_to_save: Option<Vec<String>>,
    /// Accepted and ignored, as PEFT does ("for forward compatibility").
    pub target_svd_config: Option<IndexMap<String, serde_json::Value>>,
}

impl Default for OsfConfig {
    fn default() -> Self {
        Self {
            common: PeftConfigCommon::new(PEFT_TYPE),
            effective_rank: None,
            target_modules: None,
            rank_pattern: None,
            init_weights: Some(true),
            modules_to_save: None,
            target_svd_config: None,
        }
    }
}

/// PEFT's `TRANSFORMERS_MODELS_TO_OSF_TARGET_MODULES_MAPPING`.
pub fn default_targets(model_type: &str) -> Option<TargetModules> {
    const ATTN_MLP: &[&str] = &["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "down_proj", "up_proj"];
    let names: &[&str] = match model_type {
        "llama" | "llama4" | "mistral" | "mixtral" | "gemma" | "gemma2" | "gemma3_text" | "qwen2"
        | "qwen3" | "phi" => ATTN_MLP,
        "gpt2" | "gpt_bigcode" => &["c_attn", "c_proj"],
        "bloom" | "gpt_neox" | "falcon" => &["query_key_value", "dense_4h_to_h"],
        "opt" => &["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"],
        "gptj" => &["q_proj", "k_proj", "v_proj", "out_proj", "fc_in", "fc_out"],
        _ => return None,
    };
    Some(TargetModules::list(names.iter().copied()))
}

/// PEFT's `_resolve_rank`: `None` → half of `min_dim`; a float in `(0, 1]` → that fraction (truncated);
/// anything else truncated to an integer; clamped to `[0, min_dim]`.
fn resolve_rank(value: Option<&Num>, min_dim: i64) -> i64 {
    let Some(value) = value else { return min_dim / 2 };
    let raw = value.value();
    let r = if value.0.is_f64() && raw > 0.0 && raw <= 1.0 {
        (min_dim as f64 * raw) as i64
    } else {
        // Python's `int()` truncates toward zero; saturating casts keep huge values in range.
        value.0.as_i64().unwrap_or(raw as i64)
    };
    r.clamp(0, min_dim)
}

impl OsfConfig {
    /// The preserved rank of the module `module` whose weight's smaller dimension is `min_dim`:
    /// `rank_pattern`'s first matching pattern, else `effective_rank`, resolved as PEFT's `_resolve_rank`.
    /// A pattern that is not a valid regex never matches (it is refused by [`AdapterConfig::validate`]).
    pub fn effective_rank_for(&self, module: &str, min_dim: i64) -> i64 {
        if let Some(patterns) = &self.rank_pattern {
            for (pattern, rank) in patterns {
                if fancy_regex::Regex::new(pattern).is_ok_and(|re| re.is_match(module).unwrap_or(false)) {
                    return resolve_rank(Some(rank), min_dim);
                }
            }
        }
        resolve_rank(self.effective_rank.as_ref(), min_dim)
    }

    /// `init_weights` as PEFT reads it (`config.init_weights is False` draws random factors).
    pub fn identity_init(&self) -> bool {
        self.init_weights != Some(false)
    }

    fn check(&self) -> Result<()> {
        for pattern in self.rank_pattern.iter().flat_map(IndexMap::keys) {
            fancy_regex::Regex::new(pattern).map_err(|e| {
                PeftError::Invalid(format!("OSF rank_pattern key {pattern:?} is not a valid regex: {e}"))
            })?;
        }
        Ok(())
    }
}

impl MethodConfig for OsfConfig {
    const PEFT_TYPE: &'static str = PEFT_TYPE;

    /// `OSFConfig.__post_init__` only sets the type: `target_modules` stays as written (a list is not
    /// turned into a set).
    fn post_init(&mut self, _location: &str, _warnings: &mut Vec<String>) -> Result<()> {
        self.check()
    }
}

impl AdapterConfig for OsfConfig {
    peft_core::adapter_config_boilerplate!();
    peft_core::adapter_config_targets!(target_modules, modules_to_save);

    fn validate(&self) -> Result<()> {
        self.check()
    }

    fn default_target_modules(&self, model_type: &str) -> Option<TargetModules> {
        default_targets(model_type)
    }

    /// `OSFModel._prepare_adapter_config`: without `target_modules`, PEFT's table for the model type, or
    /// every linear layer (`"all-linear"`) for a model type it has no entry for (custom models included).
    fn prepare_for_model(&mut self, model_type: Option<&str>) -> Result<()> {
        if self.target_modules.is_none() && model_type.and_then(default_targets).is_none() {
            self.target_modules =
                Some(TargetModules::Regex(peft_core::peft_config::targets::ALL_LINEAR.into()));
        }
        Ok(())
    }
}

impl LayerMethod for OsfConfig {
    fn create_layer(&mut self, ctx: &mut LayerInit<'_, '_>) -> Result<Box<dyn TunerLayer>> {
        crate::layer::OsfLayer::create(self, ctx).map(|l| Box::new(l) as Box<dyn TunerLayer>)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_resolve_as_peft() {
        assert_eq!(resolve_rank(None, 7), 3);
        assert_eq!(resolve_rank(Some(&Num::from(1)), 10), 1);
        assert_eq!(resolve_rank(Some(&Num::from(1.0)), 10), 10);
        assert_eq!(resolve_rank(Some(&Num::from(0.35)), 10), 3);
        assert_eq!(resolve_rank(Some(&Num::from(2.7)), 10), 2);
        assert_eq!(resolve_rank(Some(&Num::from(50)), 10), 10);
        assert_eq!(resolve_rank(Some(&Num::from(-3)), 10), 0);
    }
}
