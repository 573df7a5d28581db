//! The method-agnostic view of an adapter config, and how a method creates its per-layer adapters.

use crate::error::{PeftError, Result};
use crate::layer::{BaseLayer, TunerLayer};
use peft_config::{PeftConfigCommon, TargetModules, TargetSpec};
use std::any::Any;
use std::fmt;
use tch::nn::Path;

/// Named tensors in checkpoint order: `(key, tensor)`.
pub type NamedTensors = Vec<(String, tch::Tensor)>;

/// A converted adapter: its tensors and the config to save them under.
pub type ConvertedAdapter = (NamedTensors, Box<dyn AdapterConfig>);

/// A config's ability to convert an adapter trained from an init that rewrote the base weights into one
/// for the original base (see [`AdapterConfig::initial_weight_conversion`]).
pub trait InitialWeightConversion {
    /// Step one: the config to write beside the initial weights (the init scheme reset to the default, so
    /// that loading them does not rewrite the base again).
    fn config_for_initial_weights(&self) -> Box<dyn AdapterConfig>;

    /// Step two: turns the trained state dict (checkpoint keys) into one that applies to the *original*
    /// base, given the state dict saved right after initialisation; returns it with the config to save it
    /// under.
    ///
    /// # Errors
    /// An init that did not rewrite the base; shape or key mismatches.
    fn convert_for_original_base(
        &self,
        trained: NamedTensors,
        initial: &std::collections::BTreeMap<String, tch::Tensor>,
    ) -> Result<ConvertedAdapter>;
}

/// A method's config (`LoraConfig`, …): the Rust counterpart of PEFT's `PeftConfig` subclasses.
///
/// A method crate implements it for its serde config type. [`crate::PeftModel`] only talks to configs
/// through this trait, so it needs no knowledge of any method.
pub trait AdapterConfig: fmt::Debug + Send + Sync + 'static {
    /// The fields every PEFT config has.
    fn common(&self) -> &PeftConfigCommon;

    /// The fields every PEFT config has, mutably.
    fn common_mut(&mut self) -> &mut PeftConfigCommon;

    /// The module-selection options.
    fn target_spec(&self) -> TargetSpec<'_>;

    /// Replaces `target_modules` (used to expand `all-linear` into explicit names, as PEFT does in the
    /// config it saves).
    fn set_target_modules(&mut self, targets: TargetModules);

    /// The whole config as PEFT's JSON object (every key PEFT writes, with PEFT's value forms).
    fn to_json(&self) -> serde_json::Value;

    /// Rejects options that peft-rs does not implement yet, naming each. Called before any adapter is
    /// created, so nothing is ever silently ignored.
    ///
    /// # Errors
    /// [`PeftError::UnsupportedOption`] (or a config error) naming the option.
    fn validate(&self) -> Result<()>;

    /// PEFT's default `target_modules` for a transformers `model_type` (its constants table), used when
    /// the config gives none. `None` when the method has no default for it. The default looks the
    /// config's `peft_type` up in [`peft_config::defaults::target_modules`].
    fn default_target_modules(&self, model_type: &str) -> Option<TargetModules> {
        peft_config::defaults::target_modules(&self.common().peft_type, model_type)
    }

    /// `target_parameters`: full or trailing parameter names (`mlp.experts.gate_up_proj`) the adapter
    /// adapts directly (see [`crate::param`]). Empty for methods without that option.
    fn target_parameters(&self) -> &[String] {
        &[]
    }

    /// Sets `modules_to_save` (PEFT's task wrappers add their heads to it). Returns `false` for methods
    /// without that option.
    fn set_modules_to_save(&mut self, modules: Vec<String>) -> bool {
        let _ = modules;
        false
    }

    /// What the adapter asks of the model as a whole (trainable tokens, layer replication, weight tying,
    /// input-embedding targeting, invocation tokens, target condensing, mixed batches), as data. The
    /// default asks nothing.
    ///
    /// # Errors
    /// A malformed option value, naming it.
    fn model_options(&self) -> Result<crate::ModelOptions> {
        Ok(crate::ModelOptions::default())
    }

    /// PEFT's `_prepare_adapter_config`: fills defaults that depend on the model architecture besides
    /// `target_modules` (IA³'s `feedforward_modules`). Called before target matching with the model's
    /// transformers `model_type` (`None` for models that are not transformers-style).
    ///
    /// # Errors
    /// A default that is needed but unknown for the model, naming the option.
    fn prepare_for_model(&mut self, model_type: Option<&str>) -> Result<()> {
        let _ = model_type;
        Ok(())
    }

    /// PEFT's `_pre_injection_hook`: called once per adapter after target matching and before any layer is
    /// created, with every targeted layer and the adapters already on the model. Methods whose tensors
    /// are shared by all their layers (VeRA's projections, sized by the largest targeted layer, made once
    /// for the first adapter and reused by later ones) create or find them here and hand them to
    /// [`LayerMethod::create_layer`].
    ///
    /// # Errors
    /// The method's reason (no compatible layer among the targets, …).
    fn before_layers(
        &mut self,
        adapter: &str,
        targets: &[TargetLayer],
        existing: &[(&str, &dyn AdapterConfig)],
    ) -> Result<()> {
        let _ = (adapter, targets, existing);
        Ok(())
    }

    /// Whether [`AdapterConfig::before_layers_with_weights`] wants the targeted base weights (reading
    /// them dequantizes quantized bases, so only methods that decompose them ask). Default `false`.
    fn reads_target_weights(&self) -> bool {
        false
    }

    /// PEFT's `_pre_injection_hook` of methods that decompose the targeted base weights jointly before
    /// any layer is created (FRoD's basis shared by the layers of one module category): called right
    /// after [`AdapterConfig::before_layers`], only when [`AdapterConfig::reads_target_weights`], with
    /// every targeted layer and its weight, in model order.
    ///
    /// # Errors
    /// The method's reason.
    fn before_layers_with_weights(
        &mut self,
        adapter: &str,
        targets: &[TargetWeight],
        existing: &[(&str, &dyn AdapterConfig)],
    ) -> Result<()> {
        let _ = (adapter, targets, existing);
        Ok(())
    }

    /// PEFT's `_get_adapter_state_dict` for methods whose files hold another form of their tensors
    /// (VB-LoRA's `save_only_topk_weights`): the checkpoint tensors as the file stores them. The default
    /// leaves them as they are.
    ///
    /// # Errors
    /// The method's reason.
    fn to_file_tensors(&self, tensors: NamedTensors) -> Result<NamedTensors> {
        Ok(tensors)
    }

    /// The inverse of [`AdapterConfig::to_file_tensors`], applied to a file's tensors before they are
    /// matched to the adapter (PEFT's `_remap_adapter_state_dict_for_load`). `path` names the file for
    /// errors.
    ///
    /// # Errors
    /// Tensors of the file form that are missing or malformed, naming the file and key.
    fn read_file_tensors(&self, tensors: NamedTensors, path: &std::path::Path) -> Result<NamedTensors> {
        let _ = path;
        Ok(tensors)
    }

    /// The `bias` option: which base biases train with this adapter and are saved with it.
    fn bias(&self) -> BiasMode {
        BiasMode::None
    }

    /// The conversion of an adapter whose init rewrote the base weights (PiSSA, OLoRA, …) into one that
    /// applies to the original base ([`InitialWeightConversion`]; PEFT's
    /// `path_initial_model_for_weight_conversion`, [`SaveOptions::convert_initial_adapter`](crate::SaveOptions::convert_initial_adapter)).
    /// `None` (the default): the method has none.
    fn initial_weight_conversion(&self) -> Option<&dyn InitialWeightConversion> {
        None
    }

    /// PEFT's `_check_new_adapter_config`: refuses to add this adapter next to `existing` ones it cannot
    /// coexist with (e.g. KaSA, which rewrites the base, with anything else).
    ///
    /// # Errors
    /// [`PeftError::Invalid`] naming the conflicting adapter.
    fn check_new_adapter(&self, existing: &[(&str, &dyn AdapterConfig)]) -> Result<()> {
        let _ = existing;
        Ok(())
    }

    /// The per-row value this adapter computes from the input ids of each forward call (Activated
    /// LoRA's invocation offsets), collected by [`PeftModel::row_values`](crate::PeftModel::row_values).
    /// `None` (the default): the adapter needs none.
    fn input_row_values(&self) -> Option<&dyn crate::row_values::InputRowValues> {
        None
    }

    /// The config's layer side, for methods that adapt layers ([`PeftModel`](crate::PeftModel) holds only
    /// those). `None` for model-level methods (prompt learning), whose configs are parsed and written
    /// here but create no layer. [`adapter_config_boilerplate!`](crate::adapter_config_boilerplate) returns `Some(self)`.
    fn layer_method(&mut self) -> Option<&mut dyn LayerMethod> {
        None
    }

    /// A boxed copy.
    fn clone_box(&self) -> Box<dyn AdapterConfig>;

    /// The concrete config type.
    fn as_any(&self) -> &dyn Any;

    /// The concrete config type, mutably (data-driven inits record what they chose).
    fn as_any_mut(&mut self) -> &mut dyn Any;
}

/// The layer side of a method's config: what [`PeftModel`](crate::PeftModel) calls for each targeted
/// layer. Kept apart from [`AdapterConfig`] (parsing, writing, options) so that configs of model-level
/// methods implement only that.
pub trait LayerMethod {
    /// Creates this method's adapter for one targeted layer.
    ///
    /// The config is mutable because PEFT corrects some options while injecting (e.g. LoRA's
    /// `fan_in_fan_out` is set from the layer type), and the corrected value is what gets saved.
    ///
    /// # Errors
    /// [`PeftError::UnsupportedLayer`] for a base this method cannot adapt, or an init failure.
    fn create_layer(&mut self, ctx: &mut LayerInit<'_, '_>) -> Result<Box<dyn TunerLayer>>;
}

impl Clone for Box<dyn AdapterConfig> {
    fn clone(&self) -> Self {
        self.clone_box()
    }
}

/// A layer an adapter is about to be created on, as [`AdapterConfig::before_layers`] sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetLayer {
    /// The PEFT module name.
    pub name: String,
    /// The PyTorch class name of the base (`"Linear"`, `"Conv1D"`, `"Conv2d"`, `"Embedding"`, …).
    pub class: &'static str,
    /// Which capability view the base offers.
    pub view: TargetView,
    /// Input features (channels, vocabulary size).
    pub in_features: i64,
    /// Output features (channels, embedding width).
    pub out_features: i64,
}

/// A targeted layer with its base weight, as [`AdapterConfig::before_layers_with_weights`] sees it.
#[derive(Debug)]
pub struct TargetWeight {
    /// The layer's description.
    pub layer: TargetLayer,
    /// The weight of a linear base as `(out, in)` (GPT-2's `Conv1D` transposed, as PEFT reads
    /// `module.weight.T`), a shallow clone of dense storage or a dequantized copy; `None` for other bases.
    pub weight: Option<tch::Tensor>,
    /// The base stores its weight quantized (`weight` is then a dequantized copy).
    pub quantized: bool,
}

impl TargetWeight {
    /// The description and weight of a base layer.
    pub fn of(name: &str, base: &dyn BaseLayer) -> Self {
        let (weight, quantized) = match base.as_linear() {
            Some(l) => {
                let w = l.weight();
                (Some(if l.fan_in_fan_out() { w.tr() } else { w }), !l.weight_is_storage())
            }
            None => (None, false),
        };
        Self { layer: TargetLayer::of(name, base), weight, quantized }
    }
}

/// The capability view of a [`TargetLayer`]'s base.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TargetView {
    /// A linear layer (dense, GPT-2's `Conv1D` or quantized).
    Linear,
    /// A convolution.
    Conv,
    /// An embedding.
    Embedding,
    /// Something else.
    Other,
}

impl TargetLayer {
    /// The description of a base layer.
    pub fn of(name: &str, base: &dyn BaseLayer) -> Self {
        let (view, i, o) = if let Some(l) = base.as_linear() {
            (TargetView::Linear, l.in_features(), l.out_features())
        } else if let Some(c) = base.as_conv() {
            (TargetView::Conv, c.in_channels(), c.out_channels())
        } else if let Some(e) = base.as_embedding() {
            (TargetView::Embedding, e.num_embeddings(), e.embedding_dim())
        } else {
            (TargetView::Other, 0, 0)
        };
        Self { name: name.to_string(), class: base.kind(), view, in_features: i, out_features: o }
    }
}

/// The `bias` option of methods other than LoRA, as PEFT reads it: `"none"`, `"all"`, or any
/// `"<method>_only"` (`"vera_only"`, `"fourier_only"`, …: the biases of the adapted layers). Kept as written,
/// so configs round-trip; [`BiasOption::mode`] interprets it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct BiasOption(pub String);

impl Default for BiasOption {
    fn default() -> Self {
        Self("none".into())
    }
}

impl BiasOption {
    /// What the option selects.
    ///
    /// # Errors
    /// Any other string (PEFT's "Requested bias: …, is not implemented.").
    pub fn mode(&self) -> Result<BiasMode> {
        match self.0.as_str() {
            "none" => Ok(BiasMode::None),
            "all" => Ok(BiasMode::All),
            s if s.ends_with("_only") => Ok(BiasMode::AdaptedOnly),
            s => Err(PeftError::Invalid(format!(
                "Requested bias: {s}, is not implemented (use \"none\", \"all\" or \"<method>_only\")"
            ))),
        }
    }
}

/// PEFT's `bias` option.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum BiasMode {
    /// No bias trains or is saved.
    #[default]
    None,
    /// Every bias of the model trains and is saved.
    All,
    /// The biases of the adapted layers train and are saved.
    AdaptedOnly,
}

/// Everything a method needs to create its adapter on one layer.
pub struct LayerInit<'p, 'b> {
    /// The PEFT module name of the layer (`model.layers.0.self_attn.q_proj`).
    pub module_name: &'b str,
    /// The adapter name.
    pub adapter_name: &'b str,
    /// The base layer (mutable: some inits, e.g. PiSSA, rewrite the base weights).
    pub base: &'b mut dyn BaseLayer,
    /// The adapters already on this layer (methods whose layer-level state the first adapter decides,
    /// like IA³'s feed-forward flag, read it here).
    pub siblings: &'b indexmap::IndexMap<String, Box<dyn TunerLayer>>,
    /// Where the adapter's trainable tensors go: the adapter var store at `base_model.model.<module>`.
    /// Create tensors as `path / "lora_A" / adapter` → `weight`, mirroring PEFT's in-memory names.
    pub path: Path<'p>,
    /// Upcast fp16/bf16 adapter weights to fp32 (PEFT's `autocast_adapter_dtype=True`).
    pub autocast_adapter_dtype: bool,
    /// Whether the adapter will be trained (`!inference_mode`).
    pub trainable: bool,
    /// Warnings for the user (PEFT's `warnings.warn`), collected by the model.
    pub warnings: &'b mut Vec<String>,
    /// Set when the adapter targets a parameter of the layer (`target_parameters`, PEFT's
    /// `ParamWrapper`) rather than the layer: the method adapts that parameter, or refuses.
    pub parameter: Option<&'b crate::param::ParamTarget>,
}

impl fmt::Debug for LayerInit<'_, '_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LayerInit")
            .field("module_name", &self.module_name)
            .field("adapter_name", &self.adapter_name)
            .field("base", &self.base.kind())
            .finish_non_exhaustive()
    }
}

impl LayerInit<'_, '_> {
    /// The error for a base this method cannot adapt.
    pub fn unsupported(&self, peft_type: &str, hint: &str) -> PeftError {
        PeftError::UnsupportedLayer {
            module: self.module_name.to_string(),
            kind: self.base.kind().to_string(),
            peft_type: peft_type.to_string(),
            hint: if hint.is_empty() { String::new() } else { format!("; {hint}") },
        }
    }

    /// Where the adapter's tensors live, as PEFT places them: the base weight's device, and its
    /// floating-point dtype (f32 for integer or quantized storage), upcast from fp16/bf16 to f32 when
    /// `autocast_adapter_dtype` (`_move_adapter_to_device_of_base_layer`, then `_cast_adapter_dtype`).
    /// Returns `(base kind, final kind, device)`.
    ///
    /// # Errors
    /// A base with no weight.
    pub fn placement(&self) -> Result<(tch::Kind, tch::Kind, tch::Device)> {
        let w = self.base.as_weighted().ok_or_else(|| {
            PeftError::Invalid(format!("`{}`: a {} layer has no weight", self.module_name, self.base.kind()))
        })?;
        let weight = w.weight();
        let base_kind = match weight.kind() {
            k @ (tch::Kind::Half | tch::Kind::BFloat16 | tch::Kind::Float | tch::Kind::Double) => k,
            _ => w.compute_kind(),
        };
        let base_kind = match base_kind {
            k @ (tch::Kind::Half | tch::Kind::BFloat16 | tch::Kind::Float | tch::Kind::Double) => k,
            _ => tch::Kind::Float,
        };
        let final_kind = match base_kind {
            tch::Kind::Half | tch::Kind::BFloat16 if self.autocast_adapter_dtype => tch::Kind::Float,
            k => k,
        };
        Ok((base_kind, final_kind, weight.device()))
    }

    /// Moves a freshly initialised (CPU, f32) adapter tensor to where [`LayerInit::placement`] says,
    /// rounding through the base dtype first as PEFT does.
    ///
    /// # Errors
    /// As [`LayerInit::placement`], or a libtorch failure.
    pub fn place(&self, t: tch::Tensor) -> Result<tch::Tensor> {
        let (base_kind, final_kind, device) = self.placement()?;
        t.f_to_device(device)
            .and_then(|t| t.f_to_kind(base_kind))
            .and_then(|t| t.f_to_kind(final_kind))
            .map_err(PeftError::torch("moving adapter weights to the base layer's device"))
    }

    /// PEFT's correction of a config's `fan_in_fan_out` to the layer it meets: `true` for transformers'
    /// `Conv1D` (weight stored `(in, out)`), `false` for `nn.Linear`, with PEFT's warning when the config
    /// said otherwise. PEFT corrects the config object itself, so the saved config carries the corrected
    /// value.
    pub fn match_fan_in_fan_out(&mut self, config_value: &mut bool, layer_is_conv1d: bool) {
        if *config_value != layer_is_conv1d {
            self.warn(if layer_is_conv1d {
                "fan_in_fan_out is set to False but the target module is `Conv1D`. Setting fan_in_fan_out to True."
            } else {
                "fan_in_fan_out is set to True but the target module is `torch.nn.Linear`. Setting fan_in_fan_out to False."
            });
            *config_value = layer_is_conv1d;
        }
    }

    /// Records a warning.
    pub fn warn(&mut self, message: impl Into<String>) {
        let message = message.into();
        log::warn!("{message}");
        self.warnings.push(message);
    }
}

/// The error for an option that is set to a value peft-rs does not implement.
pub fn unsupported_option(peft_type: &str, option: &str, value: &serde_json::Value, hint: &str) -> PeftError {
    PeftError::UnsupportedOption {
        peft_type: peft_type.to_string(),
        option: option.to_string(),
        value: value.to_string(),
        hint: if hint.is_empty() { String::new() } else { format!("; {hint}") },
    }
}

/// Parses a method's config object: unknown keys dropped with a warning (as PEFT does), `peft_type`
/// checked, `peft_version` filled. The method then mirrors its `__post_init__`.
///
/// # Errors
/// [`PeftError::Config`] for invalid values or another `peft_type`.
pub fn parse_method_config<T>(
    map: serde_json::Map<String, serde_json::Value>,
    peft_type: &str,
    location: &str,
    warnings: &mut Vec<String>,
    common: impl Fn(&mut T) -> &mut PeftConfigCommon,
) -> Result<T>
where
    T: serde::de::DeserializeOwned + serde::Serialize + Default,
{
    let mut config: T = peft_config::json::from_json_object(map, location, warnings)?;
    let c = common(&mut config);
    if c.peft_type != peft_type {
        return Err(peft_config::ConfigError::InvalidField {
            location: location.to_string(),
            field: "peft_type".into(),
            message: format!("expected {peft_type:?}, found {:?}", c.peft_type),
        }
        .into());
    }
    if c.peft_version.is_none() {
        c.peft_version = Some(peft_config::PEFT_VERSION.to_string());
    }
    Ok(config)
}

/// The typed side of a method's config: its `peft_type`, PEFT's `__post_init__`, and parsing from PEFT's
/// JSON. Every method config implements it (the [`AdapterConfig`] side is what [`crate::PeftModel`] sees);
/// [`crate::register_method!`] registers its parser. Bring it into scope to call `from_json_str` or
/// `boxed` on a method's config (every method crate re-exports it):
/// `peft_lora::LoraConfig::from_json_str(text, &mut warnings)?.boxed()`.
pub trait MethodConfig:
    AdapterConfig + Clone + Default + serde::Serialize + serde::de::DeserializeOwned + Sized
{
    /// The method's `peft_type` (`"LORA"`, `"IA3"`, …).
    const PEFT_TYPE: &'static str;

    /// PEFT's `__post_init__`: the normalisation (lists turned into sets, …), hard errors and warnings it
    /// applies to a config read from a file. The default does nothing.
    ///
    /// # Errors
    /// The config error PEFT raises, naming `location`.
    fn post_init(&mut self, location: &str, warnings: &mut Vec<String>) -> Result<()> {
        let _ = (location, warnings);
        Ok(())
    }

    /// Parses PEFT's JSON object: unknown keys dropped with a warning, `peft_type` checked,
    /// `peft_version` filled, then [`MethodConfig::post_init`].
    ///
    /// # Errors
    /// Wrongly typed values (naming the key), another `peft_type`, and the errors of `post_init`.
    fn from_json_map(
        map: serde_json::Map<String, serde_json::Value>,
        location: &str,
        warnings: &mut Vec<String>,
    ) -> Result<Self> {
        let mut config: Self =
            parse_method_config(map, Self::PEFT_TYPE, location, warnings, |c: &mut Self| c.common_mut())?;
        config.post_init(location, warnings)?;
        Ok(config)
    }

    /// Parses `adapter_config.json` text.
    ///
    /// # Errors
    /// Invalid JSON, and as [`MethodConfig::from_json_map`].
    fn from_json_str(text: &str, warnings: &mut Vec<String>) -> Result<Self> {
        let location = peft_config::error::IN_MEMORY;
        let map = peft_config::json::parse_json_object(text, location, warnings)?;
        Self::from_json_map(map, location, warnings)
    }

    /// Boxes the config for [`crate::PeftModel`].
    fn boxed(self) -> Box<dyn AdapterConfig> {
        Box::new(self)
    }
}

/// The registry's parser for a method config (what [`crate::register_method!`] registers).
///
/// # Errors
/// As [`MethodConfig::from_json_map`].
pub fn parse_boxed<T: MethodConfig>(
    map: serde_json::Map<String, serde_json::Value>,
    location: &str,
    warnings: &mut Vec<String>,
) -> Result<Box<dyn AdapterConfig>> {
    T::from_json_map(map, location, warnings).map(T::boxed)
}

/// PEFT's error for a size option that must be positive (`r`, `n_frequency`, …), raised where PEFT raises
/// it (`update_layer`, before any layer gets the adapter).
///
/// # Errors
/// [`PeftError::Invalid`] when `value <= 0`.
pub fn require_positive(option: &str, value: i64) -> Result<()> {
    if value <= 0 {
        return Err(PeftError::Invalid(format!(
            "`{option}` should be a positive integer value but the value passed is {value}"
        )));
    }
    Ok(())
}

/// PEFT's checks on the number of sparse coefficients of an `(out, in)` weight (FourierFT's and WaveFT's
/// `n_frequency`), raised where their `update_layer` raises them: positive, and at most `in · out` (the
/// coefficients sit on distinct cells). `module` is named in the second message.
///
/// # Errors
/// [`PeftError::Invalid`] with PEFT's message.
pub fn require_coefficient_count(
    option: &str,
    n: i64,
    in_features: i64,
    out_features: i64,
    module: &str,
) -> Result<()> {
    require_positive(option, n)?;
    let cells = in_features * out_features;
    if n > cells {
        return Err(PeftError::Invalid(format!(
            "`{option}` should be less than or equal to the product of the input and output dimensions but the \
             value passed is {n} and the product is {cells} (`{module}`)"
        )));
    }
    Ok(())
}

/// The `AdapterConfig` methods that are the same for every method config with a `common` field,
/// `Clone` and `Serialize`: `common`, `common_mut`, `clone_box`, `as_any`, `as_any_mut`, `to_json`.
/// Use it inside the impl block:
///
/// ```ignore
/// impl AdapterConfig for Ia3Config {
///     peft_core::adapter_config_boilerplate!();
///     // ... the method's own items ...
/// }
/// ```
#[macro_export]
macro_rules! adapter_config_boilerplate {
    () => {
        $crate::adapter_config_boilerplate!(no_layers);
        fn layer_method(&mut self) -> Option<&mut dyn $crate::config::LayerMethod> {
            Some(self)
        }
    };
    // A model-level method's config: no layer side.
    (no_layers) => {
        fn common(&self) -> &$crate::peft_config::PeftConfigCommon {
            &self.common
        }
        fn common_mut(&mut self) -> &mut $crate::peft_config::PeftConfigCommon {
            &mut self.common
        }
        fn clone_box(&self) -> Box<dyn $crate::AdapterConfig> {
            Box::new(self.clone())
        }
        fn as_any(&self) -> &dyn std::any::Any {
            self
        }
        fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
            self
        }
        fn to_json(&self) -> serde_json::Value {
            serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
        }
    };
}

/// The module-selection items of `AdapterConfig` for a config whose selection options are plain fields
/// named as in PEFT: `target_spec` (from the listed fields), `set_target_modules` and
/// `set_modules_to_save`. List the fields the method's PEFT config has, out of `target_modules`,
/// `exclude_modules`, `layers_to_transform`, `layers_pattern` and `modules_to_save` (the first and the last
/// are required). Use it inside the impl block, after [`adapter_config_boilerplate!`](crate::adapter_config_boilerplate):
///
/// ```ignore
/// impl AdapterConfig for BeftConfig {
///     peft_core::adapter_config_boilerplate!();
///     peft_core::adapter_config_targets!(target_modules, modules_to_save);
///     // ... the method's own items ...
/// }
/// ```
#[macro_export]
macro_rules! adapter_config_targets {
    ($($field:ident),+ $(,)?) => {
        fn target_spec(&self) -> $crate::peft_config::TargetSpec<'_> {
            $crate::peft_config::TargetSpec {
                $($field: $crate::__target_spec_field!($field, self.$field),)+
                ..$crate::peft_config::TargetSpec::default()
            }
        }
        fn set_target_modules(&mut self, targets: $crate::peft_config::TargetModules) {
            self.target_modules = Some(targets);
        }
        fn set_modules_to_save(&mut self, modules: Vec<String>) -> bool {
            self.modules_to_save = Some(modules);
            true
        }
    };
}

/// How [`adapter_config_targets!`] borrows one field.
#[doc(hidden)]
#[macro_export]
macro_rules! __target_spec_field {
    (modules_to_save, $value:expr) => {
        $value.as_deref()
    };
    ($field:ident, $value:expr) => {
        $value.as_ref()
    };
}

/// Writes `config` as `adapter_config.json` text exactly as PEFT would (sorted keys, two-space indent).
pub fn to_config_file_text(config: &dyn AdapterConfig) -> String {
    peft_config::json::to_peft_json(&config.to_json())
}
