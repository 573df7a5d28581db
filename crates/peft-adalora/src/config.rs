//! `AdaLoraConfig`: PEFT 0.21.2's keys (its own and every key it inherits from `LoraConfig`), defaults,
//! value forms and `__post_init__` checks.

use indexmap::IndexMap;
use peft_core::config::{unsupported_option, AdapterConfig, BiasMode, BiasOption, LayerInit};
use peft_core::model_options::{self, ModelOptions};
use peft_core::peft_config::{
    ConfigError, LayerIndices, LayersPattern, PeftConfigCommon, TargetModules, TargetSpec,
};
use peft_core::LayerMethod;
use peft_core::MethodConfig;
use peft_core::{PeftError, Result, TunerLayer};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// `peft_type` of AdaLoRA.
pub const PEFT_TYPE: &str = "ADALORA";

pub use peft_core::peft_config::Num;

/// `init_lora_weights`: a bool, or (inherited from LoRA) the name of a LoRA init scheme.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum InitLoraWeights {
    /// `true` (PEFT's default): `lora_E` zero, `lora_A` and `lora_B` N(0, 0.02) — the adapter starts as
    /// the identity. `false`: the `torch.randn` draws are kept.
    Bool(bool),
    /// A LoRA scheme name (`"gaussian"`, `"pissa"`, …). AdaLoRA has no schemes: PEFT treats any string
    /// as `true`; peft-rs rejects it (see [`AdaLoraConfig::validate`](AdapterConfig::validate)).
    Scheme(String),
}

impl Default for InitLoraWeights {
    fn default() -> Self {
        InitLoraWeights::Bool(true)
    }
}

impl InitLoraWeights {
    /// Python's truthiness of the value (what `if init_lora_weights:` sees).
    pub fn is_truthy(&self) -> bool {
        match self {
            InitLoraWeights::Bool(b) => *b,
            InitLoraWeights::Scheme(s) => !s.is_empty(),
        }
    }
}

/// `rank_pattern`: per `lora_E` parameter, which of its `init_r` triplets the rank allocator kept.
///
/// Keys are the parameter name without the adapter name, as PEFT saves them
/// (`model.layers.0.self_attn.q_proj.lora_E`); PEFT's in-memory form with the adapter name
/// (`….lora_E.default`) is accepted too. See [`crate::allocator`].
pub type RankPattern = IndexMap<String, Vec<bool>>;

/// PEFT 0.21.2's `AdaLoraConfig`, field for field: AdaLoRA's own keys and every key of `LoraConfig`,
/// which it subclasses.
///
/// AdaLoRA has three phases: `tinit` warm-up steps at the full budget (`init_r` per layer), a budgeting
/// phase until `total_step - tfinal` in which the total rank shrinks cubically to `target_r` per layer
/// (triplets with the lowest importance are masked every `deltaT` steps), and `tfinal` steps that
/// fine-tune the final allocation. `total_step` is required.
///
/// ```
/// use peft_adalora::AdaLoraConfig;
/// use peft_core::peft_config::TargetModules;
///
/// let config = AdaLoraConfig {
///     target_modules: Some(TargetModules::list(["q_proj", "v_proj"])),
///     init_r: 12,
///     target_r: 4,
///     tinit: 200,
///     tfinal: 500,
///     total_step: Some(3000),
///     ..AdaLoraConfig::default()
/// };
/// assert_eq!(config.lora_alpha.value(), 8.0);
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AdaLoraConfig {
    /// `peft_type`, `task_type`, `base_model_name_or_path`, `revision`, `inference_mode`, …
    #[serde(flatten)]
    pub common: PeftConfigCommon,
    /// The target average rank per adapted layer at the end of the budgeting phase.
    pub target_r: i64,
    /// The initial rank of every adapted layer.
    pub init_r: i64,
    /// Warm-up steps at the full budget.
    pub tinit: i64,
    /// Final fine-tuning steps at the final allocation.
    pub tfinal: i64,
    /// Steps between two budget allocations.
    #[serde(rename = "deltaT")]
    pub delta_t: i64,
    /// EMA factor of the sensitivity smoothing.
    pub beta1: Num,
    /// EMA factor of the uncertainty quantification.
    pub beta2: Num,
    /// Weight of the orthogonal regularisation of `lora_A` and `lora_B`
    /// ([`crate::orthogonal_regularization`]).
    pub orth_reg_weight: Num,
    /// The total number of training steps (required, > 0).
    pub total_step: Option<i64>,
    /// The triplets the rank allocator kept, per `lora_E` (written by training, used when loading).
    pub rank_pattern: Option<RankPattern>,
    /// LoRA's rank: not used by AdaLoRA (PEFT warns when it is not 8); `init_r` is the rank.
    pub r: i64,
    /// Modules to adapt: names / dotted suffixes, a full-match regex, or `"all-linear"`.
    pub target_modules: Option<TargetModules>,
    /// Modules never to adapt.
    pub exclude_modules: Option<TargetModules>,
    /// The update is scaled by `lora_alpha / init_r` (by `1` with `lora_alpha <= 0`).
    pub lora_alpha: Num,
    /// Dropout on the adapter's input path.
    pub lora_dropout: Num,
    /// The base weight is stored `(in, out)` (GPT-2's `Conv1D`); corrected from the layer type on injection.
    pub fan_in_fan_out: bool,
    /// Which base biases train with the adapter.
    pub bias: BiasOption,
    /// rsLoRA (LoRA only; PEFT's AdaLoRA ignores it, peft-rs rejects `true`).
    pub use_rslora: bool,
    /// Extra modules trained and saved in full.
    pub modules_to_save: Option<Vec<String>>,
    /// Initialisation of the triplets.
    pub init_lora_weights: InitLoraWeights,
    /// Only adapt layers with these indices.
    pub layers_to_transform: Option<LayerIndices>,
    /// The name of the layer list `layers_to_transform` indexes into.
    pub layers_pattern: Option<LayersPattern>,
    /// LoRA's per-module alphas (ignored by PEFT's AdaLoRA; peft-rs rejects a non-empty one).
    pub alpha_pattern: Value,
    /// Megatron tensor-parallel layer config (not used by AdaLoRA's layers; rejected).
    pub megatron_config: Option<Value>,
    /// Megatron core module name.
    pub megatron_core: Option<String>,
    /// Token indices whose embeddings train (trainable tokens).
    pub trainable_token_indices: Option<Value>,
    /// LoftQ settings: AdaLoRA does not support LoftQ.
    pub loftq_config: Value,
    /// EVA settings (LoRA only).
    pub eva_config: Option<Value>,
    /// CorDA settings (LoRA only).
    pub corda_config: Option<Value>,
    /// DoRA: AdaLoRA does not support it.
    pub use_dora: bool,
    /// aLoRA invocation tokens (LoRA only).
    pub alora_invocation_tokens: Option<Value>,
    /// QA-LoRA (LoRA on GPTQ only).
    pub use_qalora: bool,
    /// QA-LoRA group size.
    pub qalora_group_size: i64,
    /// Layer replication ranges (`[[start, end], …]`), applied before the adapter is added.
    pub layer_replication: Option<Value>,
    /// A bias on `lora_B` (LoRA only).
    pub lora_bias: bool,
    /// LoRA on raw parameters (LoRA only).
    pub target_parameters: Option<Vec<String>>,
    /// Arrow routing settings (LoRA only).
    pub arrow_config: Option<Value>,
    /// Keep trainable tokens of tied embeddings tied.
    pub ensure_weight_tying: bool,
    /// LoRA-GA settings (LoRA only).
    pub lora_ga_config: Option<Value>,
    /// VeLoRA settings (LoRA only).
    pub velora_config: Option<Value>,
    /// MonteCLoRA settings (LoRA only).
    pub monteclora_config: Option<Value>,
    /// KaSA settings (LoRA only).
    pub kasa_config: Option<Value>,
    /// BD-LoRA settings (LoRA only).
    pub use_bdlora: Option<Value>,
}

impl Default for AdaLoraConfig {
    fn default() -> Self {
        Self {
            common: PeftConfigCommon::new(PEFT_TYPE),
            target_r: 8,
            init_r: 12,
            tinit: 0,
            tfinal: 0,
            delta_t: 1,
            beta1: Num::from(0.85),
            beta2: Num::from(0.85),
            orth_reg_weight: Num::from(0.5),
            total_step: None,
            rank_pattern: None,
            r: 8,
            target_modules: None,
            exclude_modules: None,
            lora_alpha: Num::from(8i64),
            lora_dropout: Num::from(0.0),
            fan_in_fan_out: false,
            bias: BiasOption::default(),
            use_rslora: false,
            modules_to_save: None,
            init_lora_weights: InitLoraWeights::default(),
            layers_to_transform: None,
            layers_pattern: None,
            alpha_pattern: Value::Object(Map::new()),
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
        }
    }
}

fn inconsistent(location: &str, message: impl Into<String>) -> PeftError {
    ConfigError::Inconsistent { location: location.to_string(), message: message.into() }.into()
}

fn is_set(v: &Option<Value>) -> bool {
    v.as_ref().is_some_and(|v| !v.is_null())
}

fn non_empty(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Object(m) => !m.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Bool(b) => *b,
        Value::String(s) => !s.is_empty(),
        Value::Number(n) => n.as_f64() != Some(0.0),
    }
}

fn reject(option: &str, value: &impl Serialize, hint: &str) -> PeftError {
    unsupported_option(PEFT_TYPE, option, &serde_json::to_value(value).unwrap_or(Value::Null), hint)
}

impl AdaLoraConfig {
    /// The checks `LoraConfig.__post_init__` makes that still apply.
    fn check_lora(&self, location: &str) -> Result<()> {
        self.target_spec().check_layer_selection(location)?;
        if self.use_dora && is_set(&self.megatron_config) {
            return Err(inconsistent(
                location,
                "DoRA does not support megatron_core, please set `use_dora=False`.",
            ));
        }
        Ok(())
    }

    /// `AdaLoraConfig.__post_init__`'s hard errors (also checked for configs built in code).
    fn check(&self, location: &str) -> Result<()> {
        if self.use_dora {
            return Err(inconsistent(location, "PeftType.ADALORA does not support DoRA."));
        }
        if non_empty(&self.loftq_config) {
            return Err(inconsistent(location, "PeftType.ADALORA does not support LOFTQ."));
        }
        self.check_lora(location)?;
        let total_step = match self.total_step {
            Some(t) if t > 0 => t,
            _ => {
                return Err(inconsistent(
                    location,
                    "AdaLoRA does not work when `total_step` is None, supply a value > 0.",
                ))
            }
        };
        let w = self.orth_reg_weight.value();
        if w < 0.0 {
            return Err(inconsistent(
                location,
                format!(
                    "`orth_reg_weight` should be greater than or equal to 0, but the value passed is {}",
                    self.orth_reg_weight.0
                ),
            ));
        }
        if self.tinit >= total_step - self.tfinal {
            return Err(inconsistent(
                location,
                "The supplied schedule values don't allow for a budgeting phase. Decrease `tfinal`/`tinit` or \
                 increase `total_step`.",
            ));
        }
        Ok(())
    }

    /// The `total_step` after validation (PEFT requires it).
    ///
    /// # Errors
    /// `total_step` unset or not positive.
    pub fn total_step(&self) -> Result<i64> {
        match self.total_step {
            Some(t) if t > 0 => Ok(t),
            _ => Err(PeftError::Invalid(
                "AdaLoRA does not work when `total_step` is None, supply a value > 0.".into(),
            )),
        }
    }

    /// The scaling AdaLoRA multiplies the update by before dividing by the rank: `lora_alpha`, or the
    /// rank itself when `lora_alpha <= 0`.
    pub fn scaling_for(&self, r: i64) -> f64 {
        let alpha = self.lora_alpha.value();
        if alpha > 0.0 {
            alpha
        } else {
            r as f64
        }
    }

    /// The `rank_pattern` entry PEFT applies to `module` when loading adapter `adapter`
    /// (`resize_modules_by_rank_pattern`): `(key, kept triplets)`. PEFT derives the module from each key
    /// by dropping the last two dotted parts when the key contains the adapter name anywhere (a substring
    /// test, as PEFT does), else the last one.
    pub fn rank_pattern_entry(&self, module: &str, adapter: &str) -> Option<(&str, &[bool])> {
        self.rank_pattern.as_ref()?.iter().find_map(|(key, keep)| {
            let parts: Vec<&str> = key.split('.').collect();
            let drop = if key.contains(adapter) { 2 } else { 1 };
            let owner = parts[..parts.len().saturating_sub(drop)].join(".");
            (owner == module).then_some((key.as_str(), keep.as_slice()))
        })
    }

    /// The options PEFT's AdaLoRA silently ignores although they change a LoRA's numbers, and LoRA-only
    /// features its layers lack: rejected by name, so nobody trains believing they apply.
    fn reject_unimplemented(&self) -> Result<()> {
        const LORA_ONLY: &str = "a LoRA option that PEFT's AdaLoRA layers ignore";
        if let InitLoraWeights::Scheme(s) = &self.init_lora_weights {
            return Err(reject(
                "init_lora_weights",
                s,
                "AdaLoRA has no init schemes (PEFT treats any string as `true`); use true or false",
            ));
        }
        if self.use_rslora {
            return Err(reject("use_rslora", &true, LORA_ONLY));
        }
        if non_empty(&self.alpha_pattern) {
            return Err(reject("alpha_pattern", &self.alpha_pattern, LORA_ONLY));
        }
        if self.lora_bias {
            return Err(reject("lora_bias", &true, LORA_ONLY));
        }
        if self.use_qalora {
            return Err(reject("use_qalora", &true, LORA_ONLY));
        }
        if let Some(t) = self.target_parameters.as_ref().filter(|t| !t.is_empty()) {
            return Err(reject("target_parameters", t, "PEFT would add plain LoRA parameter wrappers"));
        }
        let subconfigs = [
            ("megatron_config", &self.megatron_config),
            ("alora_invocation_tokens", &self.alora_invocation_tokens),
            ("eva_config", &self.eva_config),
            ("corda_config", &self.corda_config),
            ("lora_ga_config", &self.lora_ga_config),
            ("arrow_config", &self.arrow_config),
            ("velora_config", &self.velora_config),
            ("monteclora_config", &self.monteclora_config),
            ("kasa_config", &self.kasa_config),
            ("use_bdlora", &self.use_bdlora),
        ];
        if let Some((name, Some(v))) = subconfigs.into_iter().find(|(_, v)| is_set(v)) {
            return Err(reject(name, v, LORA_ONLY));
        }
        if self.ensure_weight_tying && self.trainable_token_indices.is_none() {
            return Err(reject(
                "ensure_weight_tying",
                &true,
                "implemented for trainable_token_indices; tying modules_to_save is not yet",
            ));
        }
        Ok(())
    }
}

impl MethodConfig for AdaLoraConfig {
    const PEFT_TYPE: &'static str = PEFT_TYPE;

    /// `LoraConfig.__post_init__` then `AdaLoraConfig.__post_init__`: normalisation and warnings, then the
    /// hard errors of its checks.
    fn post_init(&mut self, location: &str, warnings: &mut Vec<String>) -> Result<()> {
        peft_core::peft_config::targets::dedupe_lists([&mut self.target_modules, &mut self.exclude_modules]);
        self.check_lora(location)?;
        let loftq_given = non_empty(&self.loftq_config);
        let init_is = |name: &str| matches!(&self.init_lora_weights, InitLoraWeights::Scheme(s) if s == name);
        if init_is("loftq") {
            if !loftq_given {
                return Err(inconsistent(
                    location,
                    "`loftq_config` must be specified when `init_lora_weights` is 'loftq'.",
                ));
            }
        } else if loftq_given {
            warnings.push(format!(
                "{location}: `loftq_config` specified but will be ignored when `init_lora_weights` is not 'loftq'."
            ));
            self.loftq_config = Value::Object(Map::new());
        } else if !init_is("eva") && is_set(&self.eva_config) {
            warnings.push(format!(
                "{location}: `eva_config` specified but will be ignored when `init_lora_weights` is not 'eva'."
            ));
        } else if !init_is("corda") && is_set(&self.corda_config) {
            warnings.push(format!(
                "{location}: `corda_config` specified but will be ignored when `init_lora_weights` is not 'corda'."
            ));
        }
        if self.lora_bias && !matches!(self.init_lora_weights, InitLoraWeights::Bool(_)) {
            return Err(inconsistent(
                location,
                "The argument lora_bias=True is only supported with init_lora_weights=True or False",
            ));
        }
        if self.r != 8 {
            // PEFT's message, missing space included.
            warnings.push(format!(
                "{location}: Note that `r` is not used in AdaLora and will be ignored.If you intended to set the \
                 initial rank, use `init_r` instead."
            ));
        }
        self.check(location)
    }
}

impl AdapterConfig for AdaLoraConfig {
    peft_core::adapter_config_boilerplate!();

    fn validate(&self) -> Result<()> {
        self.bias.mode()?;
        self.check(peft_core::peft_config::error::IN_MEMORY)?;
        self.reject_unimplemented()?;
        if self.init_r < 0 {
            return Err(PeftError::Invalid(format!(
                "`r` should be a positive integer or 0, but the value passed is {}",
                self.init_r
            )));
        }
        let p = self.lora_dropout.value();
        if !(0.0..=1.0).contains(&p) {
            return Err(PeftError::Invalid(format!(
                "`lora_dropout`: dropout probability has to be between 0 and 1, but got {}",
                self.lora_dropout.0
            )));
        }
        if self.delta_t == 0 {
            return Err(PeftError::Invalid(
                "`deltaT` must not be 0 (it is the step interval of allocations)".into(),
            ));
        }
        if !self.common.inference_mode {
            // PEFT builds the rank allocator for the trainable adapter, which asserts this.
            for (name, b) in [("beta1", &self.beta1), ("beta2", &self.beta2)] {
                if !(b.value() > 0.0 && b.value() < 1.0) {
                    return Err(PeftError::Invalid(format!(
                        "`{name}` must be in (0, 1) for a trainable AdaLoRA adapter (the rank allocator's \
                         EMA), got {}",
                        b.0
                    )));
                }
            }
        }
        if let Some(t) = &self.trainable_token_indices {
            peft_core::trainable_tokens::TokenIndices::from_json(t)?;
        }
        model_options::parse_layer_replication(self.layer_replication.as_ref())?;
        if let Some(rp) = &self.rank_pattern {
            if let Some(key) = rp.keys().find(|k| !k.contains("lora_E")) {
                return Err(PeftError::Invalid(format!(
                    "rank_pattern key {key:?} does not name a `lora_E` parameter"
                )));
            }
        }
        Ok(())
    }

    fn target_spec(&self) -> TargetSpec<'_> {
        TargetSpec {
            target_modules: self.target_modules.as_ref(),
            exclude_modules: self.exclude_modules.as_ref(),
            layers_to_transform: self.layers_to_transform.as_ref(),
            layers_pattern: self.layers_pattern.as_ref(),
            modules_to_save: self.modules_to_save.as_deref(),
            has_target_parameters: false,
        }
    }

    fn set_target_modules(&mut self, targets: TargetModules) {
        self.target_modules = Some(targets);
    }

    fn set_modules_to_save(&mut self, modules: Vec<String>) -> bool {
        self.modules_to_save = Some(modules);
        true
    }

    fn model_options(&self) -> Result<ModelOptions> {
        Ok(ModelOptions {
            trainable_token_indices: model_options::parse_token_indices(
                self.trainable_token_indices.as_ref(),
            )?,
            layer_replication: model_options::parse_layer_replication(self.layer_replication.as_ref())?,
            ensure_weight_tying: self.ensure_weight_tying,
            ..ModelOptions::default()
        })
    }

    fn bias(&self) -> BiasMode {
        self.bias.mode().unwrap_or(BiasMode::None)
    }

    fn check_new_adapter(&self, existing: &[(&str, &dyn AdapterConfig)]) -> Result<()> {
        let trainable = existing.iter().filter(|(_, c)| !c.common().inference_mode).count()
            + usize::from(!self.common.inference_mode);
        if trainable > 1 {
            return Err(PeftError::Invalid(
                "AdaLoraModel supports only 1 trainable adapter. When using multiple adapters, set inference_mode \
                 to True for all adapters except the one you want to train."
                    .into(),
            ));
        }
        Ok(())
    }
}

impl LayerMethod for AdaLoraConfig {
    fn create_layer(&mut self, ctx: &mut LayerInit<'_, '_>) -> Result<Box<dyn TunerLayer>> {
        crate::layer::AdaLoraLayer::create(self, ctx).map(|l| Box::new(l) as Box<dyn TunerLayer>)
    }
}
