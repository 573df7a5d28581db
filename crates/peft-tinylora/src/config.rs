//! `TinyloraConfig`: PEFT 0.21.2's keys, defaults and checks, and the trainable vectors an adapter's
//! layers share.

use crate::groups::AdapterVectors;
use peft_core::config::{unsupported_option, BiasMode, BiasOption, LayerInit, NamedTensors, TargetLayer};
use peft_core::peft_config::targets::dedupe_lists;
use peft_core::peft_config::{LayerIndices, LayersPattern, Num, PeftConfigCommon, TargetModules};
use peft_core::{AdapterConfig, LayerMethod, MethodConfig, PeftError, Result, TunerLayer};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// `peft_type` of TinyLoRA.
pub const PEFT_TYPE: &str = "TINYLORA";

/// `init_weights`: how the trainable vectors `v` start (PEFT's `bool | "uniform"`, kept as written).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TinyloraInit {
    /// `true` (PEFT's default): `v = 0`, so every adapted layer starts as its base. `false`: `v` is left
    /// uninitialised (`torch.empty`), as PEFT leaves it.
    Bool(bool),
    /// `"uniform"`: `v ~ U(-init_v_bound, init_v_bound)` from the global generator. PEFT treats any other
    /// string as `false`; peft-rs refuses it by name instead (a misspelt scheme would otherwise start from
    /// uninitialised memory).
    Scheme(String),
}

impl Default for TinyloraInit {
    fn default() -> Self {
        TinyloraInit::Bool(true)
    }
}

/// PEFT 0.21.2's `TinyLoraConfig`, field for field.
///
/// TinyLoRA ("Learning to Reason in 13 Parameters") freezes the rank-`r` truncated SVD of each adapted
/// weight, `W ≈ B·A` with `B = U·√S` and `A = √S·Vᵀ`, and trains only a vector `v` of length `u` mapped to an
/// `r × r` matrix `R = Σᵢ vᵢ·Pᵢ` through fixed random projections `P` (`u × r × r`, one set per layer, drawn
/// from `projection_seed` plus the layer's index). `weight_tying` lets groups of layers share one `v`.
///
/// ```
/// use peft_core::peft_config::TargetModules;
/// use peft_tinylora::TinyloraConfig;
///
/// let config = TinyloraConfig {
///     u: 13,
///     target_modules: Some(TargetModules::list(["q_proj", "v_proj"])),
///     ..TinyloraConfig::default()
/// };
/// assert_eq!((config.r, config.projection_seed), (2, 42));
/// assert!(config.save_projection);
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TinyloraConfig {
    /// `peft_type`, `task_type`, `base_model_name_or_path`, `revision`, `inference_mode`, …
    #[serde(flatten)]
    pub common: PeftConfigCommon,
    /// The rank of the frozen truncated SVD (capped per layer by the weight's smaller side).
    pub r: i64,
    /// The length of each trainable vector `v`.
    pub u: i64,
    /// The share of layers that reuse another layer's `v`: `0` gives every layer its own, `1` one `v` for
    /// all; the targeted layers, in model order, form `max(1, round(n·(1 − weight_tying)))` groups.
    pub weight_tying: Num,
    /// The seed of the projections: layer `i` (in model order among the targets) draws from
    /// `projection_seed + i`.
    pub projection_seed: i64,
    /// Save the projections with the adapter (`false`: they are drawn again from the seed on load).
    pub save_projection: bool,
    /// The bound of `init_weights: "uniform"`.
    pub init_v_bound: Num,
    /// Modules to adapt: names / dotted suffixes, a full-match regex, or `"all-linear"`.
    pub target_modules: Option<TargetModules>,
    /// Dropout on the adapter's input (linear layers) or on the looked-up rows of `B` (embeddings).
    pub tinylora_dropout: Num,
    /// The base weight is stored `(in, out)` (GPT-2's `Conv1D`); corrected from the layer type on injection.
    pub fan_in_fan_out: bool,
    /// Which biases train with the adapter: `"none"`, `"all"` or `"tinylora_only"`.
    pub bias: BiasOption,
    /// Extra modules trained and saved in full.
    pub modules_to_save: Option<Vec<String>>,
    /// How `v` starts.
    pub init_weights: TinyloraInit,
    /// Only the layers with these indices are adapted.
    pub layers_to_transform: Option<LayerIndices>,
    /// The name of the layer list `layers_to_transform` indexes into.
    pub layers_pattern: Option<LayersPattern>,
    /// The vectors of this adapter and the grouping of its layers, made by [`AdapterConfig::before_layers`]
    /// (never saved here).
    #[serde(skip)]
    pub vectors: AdapterVectors,
}

impl Default for TinyloraConfig {
    fn default() -> Self {
        Self {
            common: PeftConfigCommon::new(PEFT_TYPE),
            r: 2,
            u: 64,
            weight_tying: Num::from(0.0),
            projection_seed: 42,
            save_projection: true,
            init_v_bound: Num::from(0.02),
            target_modules: None,
            tinylora_dropout: Num::from(0.0),
            fan_in_fan_out: false,
            bias: BiasOption::default(),
            modules_to_save: None,
            init_weights: TinyloraInit::default(),
            layers_to_transform: None,
            layers_pattern: None,
            vectors: AdapterVectors::default(),
        }
    }
}

impl TinyloraConfig {
    fn check(&self, location: &str) -> Result<()> {
        self.target_spec().check_layers_pattern(location)?;
        peft_core::config::require_positive("r", self.r)?;
        peft_core::config::require_positive("u", self.u)?;
        let tying = self.weight_tying.value();
        if !(0.0..=1.0).contains(&tying) {
            return Err(PeftError::Invalid(format!(
                "`weight_tying` should be a float between 0.0 and 1.0 but the value passed is {}",
                self.weight_tying.0
            )));
        }
        Ok(())
    }

    /// The scheme `init_weights` names: `Some(true)` zeros, `Some(false)` uninitialised, `None` uniform.
    pub(crate) fn zero_init(&self) -> Option<bool> {
        match &self.init_weights {
            TinyloraInit::Bool(b) => Some(*b),
            TinyloraInit::Scheme(_) => None,
        }
    }
}

impl MethodConfig for TinyloraConfig {
    const PEFT_TYPE: &'static str = PEFT_TYPE;

    /// `TinyLoraConfig.__post_init__`: the target list becomes a set; `layers_pattern` needs
    /// `layers_to_transform`; `r`, `u` positive and `weight_tying` in `[0, 1]`; PEFT's warning when the
    /// projections are not saved.
    fn post_init(&mut self, location: &str, warnings: &mut Vec<String>) -> Result<()> {
        dedupe_lists([&mut self.target_modules]);
        self.target_spec().check_layers_pattern(location)?;
        if !self.save_projection {
            warnings.push(format!(
                "{location}: Specified to not save projection tensors P within the state dictionary. They will be \
                 restored using the PRNG key stored in `config.projection_seed`. Consider setting \
                 `config.save_projection` to `True` to guarantee restoring the checkpoint correctly on all system \
                 configurations."
            ));
        }
        self.check(location)
    }
}

impl AdapterConfig for TinyloraConfig {
    peft_core::adapter_config_boilerplate!();
    peft_core::adapter_config_targets!(target_modules, layers_to_transform, layers_pattern, modules_to_save);

    fn validate(&self) -> Result<()> {
        self.check(peft_core::peft_config::error::IN_MEMORY)?;
        self.bias.mode()?;
        // `nn.Dropout`'s own check (PEFT builds one for any positive value).
        let p = self.tinylora_dropout.value();
        if !(0.0..=1.0).contains(&p) {
            return Err(PeftError::Invalid(format!(
                "tinylora_dropout: dropout probability has to be between 0 and 1, but got {p}"
            )));
        }
        if let TinyloraInit::Scheme(s) = &self.init_weights {
            if s != "uniform" {
                return Err(unsupported_option(
                    PEFT_TYPE,
                    "init_weights",
                    &Value::from(s.as_str()),
                    "only true, false and \"uniform\" (PEFT 0.21.2 silently leaves v uninitialised for other \
                     strings)",
                ));
            }
        }
        Ok(())
    }

    fn bias(&self) -> BiasMode {
        self.bias.mode().unwrap_or(BiasMode::None)
    }

    /// PEFT's `_check_new_adapter_config`: all TinyLoRA adapters of a model save their projections, or none.
    fn check_new_adapter(&self, existing: &[(&str, &dyn AdapterConfig)]) -> Result<()> {
        let mut values: Vec<bool> = existing
            .iter()
            .filter_map(|(_, c)| c.as_any().downcast_ref::<TinyloraConfig>())
            .map(|c| c.save_projection)
            .chain([self.save_projection])
            .collect();
        values.sort_unstable();
        values.dedup();
        if values.len() > 1 {
            return Err(PeftError::Invalid(
                "TinyLoRA projection tensors must be saved for all adapters or none, but got multiple different \
                 values: [False, True]"
                    .into(),
            ));
        }
        Ok(())
    }

    /// PEFT's `_build_target_key_mapping`: the targeted linear, `Conv1D` and embedding layers in model order
    /// get their index (the projection seed offset) and their `weight_tying` group; the vectors are made by
    /// the first layer of each group.
    fn before_layers(
        &mut self,
        adapter: &str,
        targets: &[TargetLayer],
        existing: &[(&str, &dyn AdapterConfig)],
    ) -> Result<()> {
        let registry = existing
            .iter()
            .filter_map(|(_, c)| c.as_any().downcast_ref::<TinyloraConfig>())
            .find_map(|c| c.vectors.registry())
            .unwrap_or_default();
        self.vectors = AdapterVectors::plan(adapter, targets, self.weight_tying.value(), registry);
        Ok(())
    }

    /// PEFT's `_remap_adapter_state_dict_for_load` on projections: with `save_projection`, layers whose
    /// projections the file lacks keep the ones drawn from the seed (with PEFT's warning); without it,
    /// projections the file has are ignored (PEFT's `persistent=False` buffers take none).
    fn read_file_tensors(&self, mut tensors: NamedTensors, path: &std::path::Path) -> Result<NamedTensors> {
        let relative =
            |k: &str| k.strip_prefix(peft_core::peft_config::keys::PEFT_PREFIX).unwrap_or(k).to_string();
        if self.save_projection {
            let present: std::collections::HashSet<String> =
                tensors.iter().filter(|(k, _)| k.contains(".tinylora_P")).map(|(k, _)| relative(k)).collect();
            let missing: Vec<(String, tch::Tensor)> = self
                .vectors
                .projections()
                .into_iter()
                .filter(|(m, _)| !present.contains(&format!("{m}.tinylora_P")))
                .collect();
            if !missing.is_empty() {
                log::warn!(
                    "{}: Specified to load tinylora_P from state dictionary however it was not present! Projection                      tensors will be regenerated from the projection_seed ({} layers)",
                    path.display(),
                    missing.len()
                );
                let prefix = peft_core::peft_config::keys::PEFT_PREFIX;
                tensors.extend(missing.into_iter().map(|(m, p)| (format!("{prefix}{m}.tinylora_P"), p)));
            }
            return Ok(tensors);
        }
        let (dropped, kept): (NamedTensors, NamedTensors) =
            tensors.into_iter().partition(|(k, _)| k.contains(".tinylora_P"));
        if !dropped.is_empty() {
            log::warn!(
                "{}: Specified to not load tinylora_P from state dictionary however they are present in state \
                 dictionary! Consider using them to ensure checkpoint loading is correct on all platforms using \
                 `peft_config.save_projection = True` ({} projections ignored)",
                path.display(),
                dropped.len()
            );
        }
        Ok(kept)
    }
}

impl LayerMethod for TinyloraConfig {
    fn create_layer(&mut self, ctx: &mut LayerInit<'_, '_>) -> Result<Box<dyn TunerLayer>> {
        crate::layer::TinyloraLayer::create(self, ctx).map(|l| Box::new(l) as Box<dyn TunerLayer>)
    }
}
