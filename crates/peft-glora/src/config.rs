//! `GloraConfig`: PEFT 0.21.2's keys, defaults and checks.

use peft_core::config::{BiasMode, BiasOption, LayerInit};
use peft_core::peft_config::targets::dedupe_lists;
use peft_core::peft_config::{ConfigError, PeftConfigCommon, TargetModules};
use peft_core::{AdapterConfig, LayerMethod, MethodConfig, Result, TunerLayer};
use serde::{Deserialize, Serialize};

/// `peft_type` of GLoRA.
pub const PEFT_TYPE: &str = "GLORA";

/// How one of GLoRA's five terms is parameterised (PEFT's `config_A_B`, `config_C`, `config_D_E` values).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathKind {
    /// `"lora"`: a rank-`r` product `Xd·Xu`.
    Lora,
    /// `"vector"`: one value per output (per input for `C`), broadcast.
    Vector,
    /// `"constant"`: one scalar.
    Constant,
    /// `"none"`: a zero buffer, nothing trained.
    None,
}

impl PathKind {
    /// Parses PEFT's name of a parameterisation.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "lora" => Some(Self::Lora),
            "vector" => Some(Self::Vector),
            "constant" => Some(Self::Constant),
            "none" => Some(Self::None),
            _ => None,
        }
    }
}

/// PEFT 0.21.2's `GloraConfig`, field for field (it has no `exclude_modules` or layer selection).
///
/// GLoRA ("Generalized LoRA") rewrites a frozen linear layer as `W' = W + W⊙A + B` and
/// `b' = b + b⊙D + E + W·C`; each of the five terms is a rank-`r` product (`"lora"`), a vector
/// (`"vector"`), a scalar (`"constant"`) or absent (`"none"`), chosen per pair by `config_A_B`, `config_C`
/// and `config_D_E`.
///
/// ```
/// use peft_core::peft_config::TargetModules;
/// use peft_glora::{GloraConfig, PathKind};
///
/// let config = GloraConfig {
///     r: 4,
///     config_A_B: "vector".into(),
///     target_modules: Some(TargetModules::list(["q_proj", "v_proj"])),
///     ..GloraConfig::default()
/// };
/// assert_eq!(config.paths(), (PathKind::Vector, PathKind::Lora, PathKind::Constant));
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
#[allow(non_snake_case)]
pub struct GloraConfig {
    /// `peft_type`, `task_type`, `base_model_name_or_path`, `revision`, `inference_mode`, …
    #[serde(flatten)]
    pub common: PeftConfigCommon,
    /// The rank of every `"lora"` term (default 8).
    pub r: i64,
    /// Modules to adapt: names / dotted suffixes, a full-match regex, or `"all-linear"`.
    pub target_modules: Option<TargetModules>,
    /// Which biases train with the adapter (`"none"`, `"all"`, `"glora_only"`).
    pub bias: BiasOption,
    /// Extra modules trained and saved in full.
    pub modules_to_save: Option<Vec<String>>,
    /// `A` and `B` (the weight's multiplicative and additive terms): `"lora"`, `"vector"`, `"constant"`,
    /// `"none"`.
    pub config_A_B: String,
    /// `C` (the weight-to-bias term `W·C`): `"lora"`, `"vector"`, `"none"`.
    pub config_C: String,
    /// `D` and `E` (the bias's multiplicative and additive terms): `"vector"`, `"constant"`, `"none"`.
    pub config_D_E: String,
    /// `true`: every term starts at zero (the adapted layer is the base layer); `false`: Kaiming-uniform
    /// factors and vectors, `N(0, 0.02²)` scalars.
    pub init_weights: bool,
}

impl Default for GloraConfig {
    fn default() -> Self {
        Self {
            common: PeftConfigCommon::new(PEFT_TYPE),
            r: 8,
            target_modules: None,
            bias: BiasOption::default(),
            modules_to_save: None,
            config_A_B: "lora".into(),
            config_C: "lora".into(),
            config_D_E: "constant".into(),
            init_weights: true,
        }
    }
}

/// The parameterisations each key accepts, sorted as PEFT's message lists them.
const VALID: [(&str, &[&str]); 3] = [
    ("config_A_B", &["constant", "lora", "none", "vector"]),
    ("config_C", &["lora", "none", "vector"]),
    ("config_D_E", &["constant", "none", "vector"]),
];

impl GloraConfig {
    /// The parameterisations of `(A and B, C, D and E)`. Unknown names read as `None` (they are refused
    /// by [`MethodConfig::post_init`] and [`AdapterConfig::validate`]).
    pub fn paths(&self) -> (PathKind, PathKind, PathKind) {
        let kind = |s: &str| PathKind::parse(s).unwrap_or(PathKind::None);
        (kind(&self.config_A_B), kind(&self.config_C), kind(&self.config_D_E))
    }

    fn check(&self, location: &str) -> Result<()> {
        for ((field, valid), value) in VALID.iter().zip([&self.config_A_B, &self.config_C, &self.config_D_E])
        {
            if !valid.contains(&value.as_str()) {
                return Err(ConfigError::InvalidField {
                    location: location.to_string(),
                    field: (*field).to_string(),
                    message: format!(
                        "Invalid {field} value: '{value}'. Valid values are: {}.",
                        valid.join(", ")
                    ),
                }
                .into());
            }
        }
        Ok(())
    }
}

impl MethodConfig for GloraConfig {
    const PEFT_TYPE: &'static str = PEFT_TYPE;

    /// `GloraConfig.__post_init__`: the target list becomes a set; the three parameterisations are known.
    fn post_init(&mut self, location: &str, _warnings: &mut Vec<String>) -> Result<()> {
        dedupe_lists([&mut self.target_modules]);
        self.check(location)
    }
}

impl AdapterConfig for GloraConfig {
    peft_core::adapter_config_boilerplate!();
    peft_core::adapter_config_targets!(target_modules, modules_to_save);

    fn validate(&self) -> Result<()> {
        self.check(peft_core::peft_config::error::IN_MEMORY)?;
        self.bias.mode()?;
        Ok(())
    }

    fn bias(&self) -> BiasMode {
        self.bias.mode().unwrap_or(BiasMode::None)
    }

    /// PEFT's GLoRA takes `adapter_names` (its `_enable_peft_forward_hooks`): each row of a batch may use
    /// its own GLoRA adapter, or none.
    fn model_options(&self) -> Result<peft_core::ModelOptions> {
        Ok(peft_core::ModelOptions { mixed_batches: true, ..Default::default() })
    }
}

impl LayerMethod for GloraConfig {
    fn create_layer(&mut self, ctx: &mut LayerInit<'_, '_>) -> Result<Box<dyn TunerLayer>> {
        crate::layer::GloraLayer::create(self, ctx).map(|l| Box::new(l) as Box<dyn TunerLayer>)
    }
}
