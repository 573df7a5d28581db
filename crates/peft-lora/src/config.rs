//! `LoraConfig`: PEFT 0.21.2's LoRA config, every key, same defaults, same value forms.

use indexmap::IndexMap;
use peft_core::config::{unsupported_option, AdapterConfig, BiasMode, InitialWeightConversion, LayerInit};
use peft_core::error::{PeftError, Result};
use peft_core::layer::TunerLayer;
use peft_core::model_options::{self, ModelOptions};
use peft_core::peft_config::targets::dedupe_lists;
use peft_core::peft_config::{
    ConfigError, LayerIndices, LayersPattern, PeftConfigCommon, TargetModules, TargetSpec,
};
use peft_core::MethodConfig;
use peft_core::{InputRowValues, LayerMethod};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::any::Any;

/// The method id.
pub const PEFT_TYPE: &str = "LORA";

/// `lora_alpha`: a JSON number that keeps its form (`8` stays an integer, `8.0` a float), so a config
/// round-trips to the same text PEFT wrote.
pub use peft_core::peft_config::Num as Alpha;

/// `bias`: which biases train with the adapter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum LoraBias {
    /// `"none"`.
    #[default]
    #[serde(rename = "none")]
    None,
    /// `"all"`: every bias of the model.
    #[serde(rename = "all")]
    All,
    /// `"lora_only"`: the biases of the LoRA-adapted layers.
    #[serde(rename = "lora_only")]
    LoraOnly,
}

/// `init_lora_weights`: `true`, `false`, or the name of an init scheme.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum InitLoraWeights {
    /// `true`: PEFT's default (A kaiming-uniform, B zero: the adapter starts as the identity); `false`:
    /// no reset (A and B keep `nn.Linear`'s init, so the adapter changes the output from the start).
    Bool(bool),
    /// `"gaussian"`, `"pissa"`, `"pissa_niter_4"`, `"olora"`, `"eva"`, `"corda"`, `"loftq"`,
    /// `"orthogonal"`, `"mica"`, `"lora_ga"`.
    Scheme(String),
}

impl Default for InitLoraWeights {
    fn default() -> Self {
        InitLoraWeights::Bool(true)
    }
}

impl InitLoraWeights {
    /// PEFT's `init_lora_weights == name` (case-sensitive).
    fn is_exactly(&self, name: &str) -> bool {
        matches!(self, InitLoraWeights::Scheme(s) if s == name)
    }

    /// Schemes that rewrite the base weight (and can be converted back to plain LoRA on save).
    pub fn mutates_base(&self) -> bool {
        match self {
            InitLoraWeights::Scheme(s) => {
                s.starts_with("pissa")
                    || s.starts_with("corda")
                    || s.eq_ignore_ascii_case("olora")
                    || s == "lora_ga"
            }
            InitLoraWeights::Bool(_) => false,
        }
    }
}

/// PEFT's `EvaConfig()` defaults, as `asdict` writes them.
pub fn default_eva_config() -> Value {
    serde_json::json!({
        "rho": 2.0,
        "tau": 0.99,
        "use_label_mask": true,
        "label_mask_value": -100,
        "whiten": false,
        "adjust_scaling_factors": true
    })
}

/// PEFT's `CordaConfig()` defaults.
pub fn default_corda_config() -> Value {
    serde_json::json!({
        "cache_file": null,
        "covariance_file": null,
        "corda_method": "ipm",
        "verbose": false,
        "use_float16_for_covariance": false,
        "prune_temporary_fields": true
    })
}

/// One of `LoraConfig`'s nested dataclass sub-configs: PEFT rebuilds it from the saved dict with
/// `_get_lora_subconfig`, which keeps only the dataclass' init fields and fills the rest with defaults.
struct SubConfig {
    /// The `LoraConfig` field.
    field: &'static str,
    /// The dataclass' fields with their defaults, as `asdict` writes them.
    defaults: fn() -> Value,
    /// Fields declared `init=False`: saved, but reset to their default when loading.
    not_init: &'static [&'static str],
    /// PEFT builds `MontecloraConfig(**dict)` directly: unknown keys are a `TypeError` there.
    unknown_is_error: bool,
}

const SUBCONFIGS: [SubConfig; 8] = [
    SubConfig {
        field: "velora_config",
        defaults: || serde_json::json!({"num_groups": 64, "scale": 1.0, "init_type": "batch_average"}),
        not_init: &[],
        unknown_is_error: false,
    },
    SubConfig {
        field: "kasa_config",
        defaults: || serde_json::json!({"beta": 0.0001, "gamma": 0.001}),
        not_init: &[],
        unknown_is_error: false,
    },
    SubConfig { field: "eva_config", defaults: default_eva_config, not_init: &[], unknown_is_error: false },
    SubConfig {
        field: "corda_config",
        defaults: default_corda_config,
        not_init: &[],
        unknown_is_error: false,
    },
    SubConfig {
        field: "lora_ga_config",
        defaults: || serde_json::json!({"direction": "ArB2r", "scale": "stable", "stable_gamma": 16}),
        not_init: &[],
        unknown_is_error: false,
    },
    SubConfig {
        field: "arrow_config",
        defaults: || {
            serde_json::json!({"top_k": 3, "router_temperature": 1.0, "use_gks": false,
                "task_adapter_names": null, "gks_adapter_names": null, "rng_seed": null})
        },
        not_init: &["task_adapter_names", "gks_adapter_names"],
        unknown_is_error: false,
    },
    SubConfig {
        field: "use_bdlora",
        defaults: || {
            serde_json::json!({"target_modules_bd_a": null, "target_modules_bd_b": null, "nblocks": 1,
                "match_strict": true})
        },
        not_init: &[],
        unknown_is_error: false,
    },
    SubConfig {
        field: "monteclora_config",
        defaults: || {
            serde_json::json!({"num_samples": 8, "use_entropy": false, "dirichlet_prior": 0.1,
                "sample_scaler": 0.0001, "kl_loss_weight": 1e-05, "buffer_size": 150})
        },
        not_init: &[],
        unknown_is_error: true,
    },
];

impl LoraConfig {
    fn subconfig_slot(&mut self, field: &str) -> Option<&mut Option<Value>> {
        Some(match field {
            "velora_config" => &mut self.velora_config,
            "kasa_config" => &mut self.kasa_config,
            "eva_config" => &mut self.eva_config,
            "corda_config" => &mut self.corda_config,
            "lora_ga_config" => &mut self.lora_ga_config,
            "arrow_config" => &mut self.arrow_config,
            "use_bdlora" => &mut self.use_bdlora,
            "monteclora_config" => &mut self.monteclora_config,
            _ => return None,
        })
    }

    /// Each sub-config normalized as PEFT would hold it, checked; `dropped` collects unknown keys.
    /// `loading`: as `_get_lora_subconfig` rebuilds them from a file (`init=False` fields reset); else as
    /// held in memory and written by `asdict` (every field kept).
    fn normalized_subconfigs(
        &self,
        loading: bool,
        dropped: &mut Vec<String>,
    ) -> Result<Vec<(&'static str, Option<Value>)>> {
        let mut copy = self.clone();
        SUBCONFIGS
            .iter()
            .map(|sc| {
                let slot = copy.subconfig_slot(sc.field).map(|v| v.take()).unwrap_or_default();
                let v = sc.normalize(slot.as_ref(), loading, dropped)?;
                if let Some(v) = &v {
                    check_subconfig(sc.field, v)?;
                }
                Ok((sc.field, v))
            })
            .collect()
    }
}

impl SubConfig {
    /// The sub-config as PEFT holds it after `__post_init__`: `None`, or every field with unknown keys
    /// dropped (named in `dropped`) and missing ones defaulted.
    fn normalize(
        &self,
        value: Option<&Value>,
        loading: bool,
        dropped: &mut Vec<String>,
    ) -> Result<Option<Value>> {
        let given = match value {
            None | Some(Value::Null) => return Ok(None),
            Some(Value::Object(m)) => m,
            Some(other) => {
                return Err(PeftError::Invalid(format!(
                    "`{}` must be a dict or null, got {other}",
                    self.field
                )));
            }
        };
        let Value::Object(mut out) = (self.defaults)() else { return Ok(None) };
        for (k, v) in given {
            match out.get_mut(k) {
                Some(slot) if !loading || !self.not_init.contains(&k.as_str()) => *slot = v.clone(),
                Some(_) => {}
                None if self.unknown_is_error => {
                    return Err(PeftError::Invalid(format!("`{}` has no field `{k}`", self.field)));
                }
                None => dropped.push(format!("{}.{k}", self.field)),
            }
        }
        Ok(Some(Value::Object(out)))
    }
}

/// The value checks of the sub-configs' own `__post_init__`s.
fn check_subconfig(field: &str, c: &Value) -> Result<()> {
    let num = |k: &str| c.get(k).and_then(Value::as_f64).unwrap_or(f64::NAN);
    // NaN (missing or not a number) fails every check.
    let gt = |k: &str, v: f64| num(k) > v;
    let ge = |k: &str, v: f64| num(k) >= v;
    let fail = |m: String| Err(PeftError::Invalid(format!("{field}: {m}")));
    match field {
        "velora_config" => {
            if !gt("num_groups", 0.0) {
                return fail(format!("`num_groups` should be positive, got {}.", c["num_groups"]));
            }
            if !gt("scale", 0.0) {
                return fail(format!("`scale` should be positive, got {}.", c["scale"]));
            }
            let init = c["init_type"].as_str().unwrap_or_default();
            if !["batch_average_once", "batch_average", "random"].contains(&init) {
                return fail(format!(
                    "Unsupported `init_type` {}. Supported values are 'batch_average_once', 'batch_average', and \
                     'random'.",
                    c["init_type"]
                ));
            }
        }
        "kasa_config" => {
            for key in ["beta", "gamma"] {
                if !ge(key, 0.0) {
                    return fail(format!("`{key}` must be non-negative, got {}.", c[key]));
                }
            }
        }
        "eva_config" => {
            if !ge("rho", 1.0) {
                return fail("`rho` must be >= 1.0".into());
            }
            if !(0.0..=1.0).contains(&num("tau")) {
                return fail("`tau` must be between 0.0 and 1.0.".into());
            }
        }
        "arrow_config" => {
            if !gt("top_k", 0.0) {
                return fail("top_k cannot be negative.".into());
            }
            if !gt("router_temperature", 0.0) {
                return fail("router_temperature must be greater than 0.".into());
            }
        }
        "use_bdlora" => {
            let names = |k: &str| -> Vec<String> {
                c.get(k).and_then(Value::as_array).map_or_else(Vec::new, |v| {
                    v.iter().filter_map(Value::as_str).map(str::to_string).collect()
                })
            };
            let b = names("target_modules_bd_b");
            if names("target_modules_bd_a").iter().any(|a| b.contains(a)) {
                return fail(format!(
                    "Found overlapping modules in target_modules_bd lists: {} (A) and {} (B).",
                    c["target_modules_bd_a"], c["target_modules_bd_b"]
                ));
            }
        }
        "monteclora_config" => {
            for key in ["num_samples", "dirichlet_prior", "buffer_size"] {
                if !gt(key, 0.0) {
                    return fail(format!("`{key}` must be greater than 0."));
                }
            }
        }
        _ => {}
    }
    Ok(())
}

/// PEFT 0.21.2's `LoraConfig`, field for field.
///
/// Build one in code with struct-update syntax, or parse PEFT's `adapter_config.json` with
/// [`LoraConfig::from_json_str`] / `peft_core::registry::load_config`.
///
/// ```
/// use peft_lora::{LoraConfig, InitLoraWeights};
/// use peft_core::peft_config::TargetModules;
///
/// let config = LoraConfig {
///     r: 16,
///     lora_alpha: 32.into(),
///     target_modules: Some(TargetModules::list(["q_proj", "v_proj"])),
///     lora_dropout: 0.05,
///     ..LoraConfig::default()
/// };
/// assert_eq!(config.scaling_for(16, 32.0), 2.0);
/// assert_eq!(config.init_lora_weights, InitLoraWeights::Bool(true));
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LoraConfig {
    /// `peft_type`, `task_type`, `base_model_name_or_path`, `revision`, `inference_mode`, …
    #[serde(flatten)]
    pub common: PeftConfigCommon,
    /// LoRA rank.
    pub r: i64,
    /// Modules to adapt: a list of names / dotted suffixes, a full-match regex, or `"all-linear"`.
    pub target_modules: Option<TargetModules>,
    /// Modules never to adapt (same forms).
    pub exclude_modules: Option<TargetModules>,
    /// LoRA alpha; the scaling is `lora_alpha / r` (or `/ sqrt(r)` with rsLoRA).
    pub lora_alpha: Alpha,
    /// Dropout on the LoRA input path.
    pub lora_dropout: f64,
    /// The base weight is stored `(in, out)` (GPT-2's `Conv1D`); corrected from the layer type on injection.
    pub fan_in_fan_out: bool,
    /// Which biases train with the adapter.
    pub bias: LoraBias,
    /// rsLoRA: scaling `lora_alpha / sqrt(r)`.
    pub use_rslora: bool,
    /// Extra modules trained and saved in full.
    pub modules_to_save: Option<Vec<String>>,
    /// Initialisation of A and B.
    pub init_lora_weights: InitLoraWeights,
    /// Only adapt layers with these indices.
    pub layers_to_transform: Option<LayerIndices>,
    /// The name of the layer list `layers_to_transform` indexes into.
    pub layers_pattern: Option<LayersPattern>,
    /// Per-module rank overrides `{regex: r}`, first match in file order wins.
    pub rank_pattern: IndexMap<String, i64>,
    /// Per-module alpha overrides `{regex: alpha}`.
    pub alpha_pattern: IndexMap<String, Alpha>,
    /// Megatron tensor-parallel layer config.
    pub megatron_config: Option<Value>,
    /// Megatron core module name.
    pub megatron_core: Option<String>,
    /// Token indices whose embeddings train (trainable tokens).
    pub trainable_token_indices: Option<Value>,
    /// LoftQ settings (used with `init_lora_weights = "loftq"`).
    pub loftq_config: Value,
    /// EVA settings.
    pub eva_config: Option<Value>,
    /// CorDA settings.
    pub corda_config: Option<Value>,
    /// DoRA.
    pub use_dora: bool,
    /// aLoRA invocation tokens.
    pub alora_invocation_tokens: Option<Vec<i64>>,
    /// QA-LoRA (GPTQ bases).
    pub use_qalora: bool,
    /// QA-LoRA group size.
    pub qalora_group_size: i64,
    /// Layer replication ranges.
    pub layer_replication: Option<Value>,
    /// A bias on lora_B.
    pub lora_bias: bool,
    /// LoRA on raw parameters (e.g. MoE experts).
    pub target_parameters: Option<Vec<String>>,
    /// Arrow routing settings.
    pub arrow_config: Option<Value>,
    /// Tie adapters of tied embeddings.
    pub ensure_weight_tying: bool,
    /// LoRA-GA settings.
    pub lora_ga_config: Option<Value>,
    /// VeLoRA settings.
    pub velora_config: Option<Value>,
    /// MonteCLoRA settings.
    pub monteclora_config: Option<Value>,
    /// KaSA settings.
    pub kasa_config: Option<Value>,
    /// BD-LoRA settings.
    pub use_bdlora: Option<Value>,
    /// Data computed by a preprocessing pass for data-driven inits (LoRA-GA gradients, CorDA
    /// decompositions), per module; never saved. See [`crate::loraga`].
    #[serde(skip)]
    pub init_data: InitData,
}

/// Per-module results of a preprocessing pass, consumed when the adapter is created.
#[derive(Clone, Debug, Default)]
pub enum InitData {
    /// Nothing precomputed.
    #[default]
    None,
    /// LoRA-GA: the estimated gradient of each target module's weight.
    LoraGa(std::sync::Arc<std::sync::Mutex<std::collections::BTreeMap<String, tch::Tensor>>>),
    /// CorDA: `(U, S, V)` of each target module's weight times its input covariance.
    Corda(std::sync::Arc<std::sync::Mutex<CordaEigens>>),
}

/// CorDA's decomposition per module: `(U, S, V)`.
pub type CordaEigens = std::collections::BTreeMap<String, (tch::Tensor, tch::Tensor, tch::Tensor)>;

impl PartialEq for InitData {
    /// Configs compare by what is saved; preprocessing results are not.
    fn eq(&self, _other: &Self) -> bool {
        true
    }
}

impl Default for LoraConfig {
    fn default() -> Self {
        Self {
            common: PeftConfigCommon::new(PEFT_TYPE),
            r: 8,
            target_modules: None,
            exclude_modules: None,
            lora_alpha: Alpha::from(8i64),
            lora_dropout: 0.0,
            fan_in_fan_out: false,
            bias: LoraBias::None,
            use_rslora: false,
            modules_to_save: None,
            init_lora_weights: InitLoraWeights::default(),
            layers_to_transform: None,
            layers_pattern: None,
            rank_pattern: IndexMap::new(),
            alpha_pattern: IndexMap::new(),
            megatron_config: None,
            megatron_core: Some("megatron.core".into()),
            trainable_token_indices: None,
            loftq_config: Value::Object(Map::new()),
            eva_config: None,
            corda_config: None,
            use_dora: false,
            alora_invocation_tokens: None,
            use_qalora: false,
            qalora_group_size: 16,
            layer_replication: None,
            lora_bias: false,
            target_parameters: None,
            arrow_config: None,
            ensure_weight_tying: false,
            lora_ga_config: None,
            velora_config: None,
            monteclora_config: None,
            kasa_config: None,
            use_bdlora: None,
            init_data: InitData::None,
        }
    }
}

fn inconsistent(location: &str, message: &str) -> PeftError {
    ConfigError::Inconsistent { location: location.to_string(), message: message.to_string() }.into()
}

impl MethodConfig for LoraConfig {
    const PEFT_TYPE: &'static str = PEFT_TYPE;

    /// PEFT's `__post_init__`: normalisation, hard errors and warnings.
    fn post_init(&mut self, location: &str, warnings: &mut Vec<String>) -> Result<()> {
        // Lists are sets in PEFT.
        dedupe_lists([&mut self.target_modules, &mut self.exclude_modules]);
        self.target_spec().check_layer_selection(location)?;
        if self.use_dora && self.megatron_config.is_some() {
            return Err(inconsistent(
                location,
                "DoRA does not support megatron_core, please set `use_dora=False`",
            ));
        }
        let mut dropped = Vec::new();
        let normalized = self
            .normalized_subconfigs(true, &mut dropped)
            .map_err(|e| inconsistent(location, &e.to_string()))?;
        for key in dropped {
            warnings.push(format!("{location}: unknown key `{key}` ignored (as PEFT does)"));
        }
        for (field, v) in normalized {
            if let Some(slot) = self.subconfig_slot(field) {
                *slot = v;
            }
        }
        if self.init_lora_weights.is_exactly("loftq") {
            if self.loftq_config.as_object().is_none_or(Map::is_empty) {
                return Err(inconsistent(
                    location,
                    "`loftq_config` must be specified when `init_lora_weights` is 'loftq'",
                ));
            }
        } else if self.loftq_config.as_object().is_some_and(|m| !m.is_empty()) {
            warnings.push(format!(
                "{location}: `loftq_config` specified but will be ignored when `init_lora_weights` is not 'loftq'"
            ));
            self.loftq_config = Value::Object(Map::new());
        } else if self.init_lora_weights.is_exactly("eva") && self.eva_config.is_none() {
            warnings.push(format!(
                "{location}: `init_lora_weights` is 'eva' but `eva_config` is not specified. Using default EVA config."
            ));
            self.eva_config = Some(default_eva_config());
        } else if !self.init_lora_weights.is_exactly("eva") && self.eva_config.is_some() {
            warnings.push(format!(
                "{location}: `eva_config` specified but will be ignored when `init_lora_weights` is not 'eva'"
            ));
        } else if self.init_lora_weights.is_exactly("corda") && self.corda_config.is_none() {
            warnings.push(format!(
                "{location}: `init_lora_weights` is 'corda' but `corda_config` is not specified. Using default CorDA \
                 config."
            ));
            self.corda_config = Some(default_corda_config());
        } else if !self.init_lora_weights.is_exactly("corda") && self.corda_config.is_some() {
            warnings.push(format!(
                "{location}: `corda_config` specified but will be ignored when `init_lora_weights` is not 'corda'"
            ));
        }
        if self.alora_invocation_tokens.is_some()
            && self.common.task_type != Some(peft_core::peft_config::TaskType::CausalLm)
        {
            warnings.push(format!("{location}: aLoRA is currently only supported for CAUSAL_LM task."));
        }
        if self.use_rslora
            && (!self.rank_pattern.is_empty() || !self.alpha_pattern.is_empty())
            && self.init_lora_weights.mutates_base()
        {
            warnings.push(format!(
                "{location}: Using Rank-Stabilized LoRA with rank_pattern/alpha_pattern and post-training conversion of \
                 modified base weights PiSSA/CorDA/OLoRA/LoRA-GA means that you won't be able to pass \
                 `path_initial_model_for_weight_conversion` to `save_pretrained` to restore the initial values of the \
                 base weights; if you intend to do this, please ensure not to use rslora or rank_pattern/alpha_pattern."
            ));
        }
        if self.lora_bias {
            if !matches!(self.init_lora_weights, InitLoraWeights::Bool(_)) {
                return Err(inconsistent(
                    location,
                    "the argument lora_bias=True is only supported with init_lora_weights=True or False",
                ));
            }
            if self.use_dora {
                return Err(inconsistent(
                    location,
                    "the argument lora_bias=True is not supported for DoRA, please pass use_dora=False",
                ));
            }
        }
        Ok(())
    }
}

impl LoraConfig {
    /// `lora_alpha / r`, or `lora_alpha / sqrt(r)` with rsLoRA.
    pub fn scaling_for(&self, r: i64, alpha: f64) -> f64 {
        if self.use_rslora {
            alpha / (r as f64).sqrt()
        } else {
            alpha / r as f64
        }
    }

    /// Rank and alpha for one module, after `rank_pattern` / `alpha_pattern`.
    ///
    /// # Errors
    /// An invalid pattern regex.
    pub fn rank_and_alpha(&self, module: &str) -> Result<(i64, f64)> {
        use peft_core::peft_config::patterns::PatternMap;
        let r = if self.rank_pattern.is_empty() {
            self.r
        } else {
            PatternMap::new("rank_pattern", &self.rank_pattern)?
                .lookup(module)
                .map(|(_, v)| *v)
                .unwrap_or(self.r)
        };
        let alpha = if self.alpha_pattern.is_empty() {
            self.lora_alpha.value()
        } else {
            PatternMap::new("alpha_pattern", &self.alpha_pattern)?
                .lookup(module)
                .map(|(_, v)| v.value())
                .unwrap_or(self.lora_alpha.value())
        };
        Ok((r, alpha))
    }
}

fn reject(option: &str, value: &impl Serialize, hint: &str) -> PeftError {
    unsupported_option(PEFT_TYPE, option, &serde_json::to_value(value).unwrap_or(Value::Null), hint)
}

impl AdapterConfig for LoraConfig {
    fn common(&self) -> &PeftConfigCommon {
        &self.common
    }

    fn common_mut(&mut self) -> &mut PeftConfigCommon {
        &mut self.common
    }

    fn target_spec(&self) -> TargetSpec<'_> {
        TargetSpec {
            target_modules: self.target_modules.as_ref(),
            exclude_modules: self.exclude_modules.as_ref(),
            layers_to_transform: self.layers_to_transform.as_ref(),
            layers_pattern: self.layers_pattern.as_ref(),
            modules_to_save: self.modules_to_save.as_deref(),
            has_target_parameters: self.target_parameters.as_ref().is_some_and(|t| !t.is_empty()),
        }
    }

    fn set_target_modules(&mut self, targets: TargetModules) {
        self.target_modules = Some(targets);
    }

    fn to_json(&self) -> Value {
        let mut json = serde_json::to_value(self).unwrap_or(Value::Null);
        // Sub-configs built in code are written as PEFT's `asdict` writes its dataclasses: every field.
        if let (Ok(subs), Some(map)) =
            (self.normalized_subconfigs(false, &mut Vec::new()), json.as_object_mut())
        {
            for (field, v) in subs {
                map.insert(field.to_string(), v.unwrap_or(Value::Null));
            }
        }
        json
    }

    fn validate(&self) -> Result<()> {
        peft_core::config::require_positive("r", self.r)?;
        if let Some((p, r)) = self.rank_pattern.iter().find(|(_, r)| **r <= 0) {
            return Err(PeftError::Invalid(format!("rank_pattern {p:?}: `r` must be positive, got {r}")));
        }
        if !(0.0..1.0).contains(&self.lora_dropout) {
            return Err(PeftError::Invalid(format!(
                "lora_dropout must be in [0, 1), got {}",
                self.lora_dropout
            )));
        }
        if let Some(t) = &self.trainable_token_indices {
            peft_core::trainable_tokens::TokenIndices::from_json(t)?;
        }
        if let Some(t) = self.target_parameters.as_ref().filter(|t| !t.is_empty()) {
            return Err(reject("target_parameters", t, ""));
        }
        model_options::parse_layer_replication(self.layer_replication.as_ref())?;
        self.normalized_subconfigs(false, &mut Vec::new())?;
        if let Some(v) = &self.megatron_config {
            return Err(reject("megatron_config", v, ""));
        }
        if let Some(v) = &self.alora_invocation_tokens {
            if v.is_empty() {
                return Err(PeftError::Invalid("alora_invocation_tokens must not be empty".into()));
            }
        }
        if self.use_qalora {
            return Err(reject("use_qalora", &true, "QA-LoRA needs a GPTQ-quantized base"));
        }
        if self.ensure_weight_tying && self.trainable_token_indices.is_none() {
            return Err(reject(
                "ensure_weight_tying",
                &true,
                "implemented for trainable_token_indices; tying modules_to_save / LoRA on tied layers is not yet",
            ));
        }
        Ok(())
    }

    fn default_target_modules(&self, model_type: &str) -> Option<TargetModules> {
        default_target_modules(model_type)
    }

    fn model_options(&self) -> Result<ModelOptions> {
        Ok(ModelOptions {
            trainable_token_indices: model_options::parse_token_indices(
                self.trainable_token_indices.as_ref(),
            )?,
            layer_replication: model_options::parse_layer_replication(self.layer_replication.as_ref())?,
            ensure_weight_tying: self.ensure_weight_tying,
            mixed_batches: true,
            ..ModelOptions::default()
        })
    }

    fn set_modules_to_save(&mut self, modules: Vec<String>) -> bool {
        self.modules_to_save = Some(modules);
        true
    }

    fn input_row_values(&self) -> Option<&dyn InputRowValues> {
        self.alora_invocation_tokens.as_ref().filter(|t| !t.is_empty()).map(|_| self as &dyn InputRowValues)
    }

    fn bias(&self) -> BiasMode {
        match self.bias {
            LoraBias::None => BiasMode::None,
            LoraBias::All => BiasMode::All,
            LoraBias::LoraOnly => BiasMode::AdaptedOnly,
        }
    }

    fn check_new_adapter(&self, existing: &[(&str, &dyn AdapterConfig)]) -> Result<()> {
        let new_uses_kasa = self.kasa_config.as_ref().is_some_and(|v| !v.is_null());
        for (name, other) in existing {
            let Some(other) = other.as_any().downcast_ref::<LoraConfig>() else { continue };
            let other_uses_kasa = other.kasa_config.as_ref().is_some_and(|v| !v.is_null());
            if new_uses_kasa != other_uses_kasa {
                return Err(PeftError::Invalid(format!(
                    "KaSA cannot be combined with adapters that don't use KaSA, since KaSA modifies the base weights: \
                     the new adapter {} KaSA but adapter '{name}' {}.",
                    if new_uses_kasa { "uses" } else { "does not use" },
                    if new_uses_kasa { "does not" } else { "does" }
                )));
            }
        }
        Ok(())
    }

    fn initial_weight_conversion(&self) -> Option<&dyn InitialWeightConversion> {
        Some(self)
    }

    fn layer_method(&mut self) -> Option<&mut dyn LayerMethod> {
        Some(self)
    }

    fn clone_box(&self) -> Box<dyn AdapterConfig> {
        Box::new(self.clone())
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

impl LayerMethod for LoraConfig {
    fn create_layer(&mut self, ctx: &mut LayerInit<'_, '_>) -> Result<Box<dyn TunerLayer>> {
        crate::layer::LoraLayer::create(self, ctx).map(|l| Box::new(l) as Box<dyn TunerLayer>)
    }
}

/// PEFT's `TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING`: the modules LoRA adapts when a config
/// names none, by transformers `model_type` (see [`peft_core::peft_config::defaults`]).
pub fn default_target_modules(model_type: &str) -> Option<TargetModules> {
    peft_core::peft_config::defaults::lora(model_type)
}
