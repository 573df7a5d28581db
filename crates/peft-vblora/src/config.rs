//! `VBLoRAConfig`: PEFT 0.21.2's keys, defaults and checks, and the vector bank an adapter's layers share.

use peft_core::config::{BiasMode, BiasOption, LayerInit, NamedTensors, TargetLayer};
use peft_core::peft_config::targets::dedupe_lists;
use peft_core::peft_config::{LayerIndices, LayersPattern, PeftConfigCommon, TargetModules};
use peft_core::LayerMethod;
use peft_core::{AdapterConfig, MethodConfig, PeftError, Result, TunerLayer};
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex};
use tch::{Kind, Tensor};

/// `peft_type` of VB-LoRA.
pub const PEFT_TYPE: &str = "VBLORA";

/// PEFT 0.21.2's `VBLoRAConfig`, field for field.
///
/// VB-LoRA ("Vector Bank LoRA") keeps one bank of `num_vectors` vectors of length `vector_length`, shared by
/// every adapted layer, and builds each layer's LoRA factors from it: every `vector_length`-long piece of
/// `A` and `B` is a softmax-weighted mixture of the `topk` bank vectors its learned logits select. Only
/// the logits (and the bank) train.
///
/// ```
/// use peft_core::peft_config::TargetModules;
/// use peft_vblora::VbloraConfig;
///
/// let config = VbloraConfig {
///     vector_length: 64,
///     target_modules: Some(TargetModules::list(["q_proj", "v_proj"])),
///     ..VbloraConfig::default()
/// };
/// assert_eq!((config.r, config.num_vectors, config.topk), (4, 256, 2));
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct VbloraConfig {
    /// `peft_type`, `task_type`, `base_model_name_or_path`, `revision`, `inference_mode`, …
    #[serde(flatten)]
    pub common: PeftConfigCommon,
    /// The rank of the composed factors.
    pub r: i64,
    /// The number of vectors in the bank.
    pub num_vectors: i64,
    /// The length of each vector (must divide every adapted layer's input and output sizes).
    pub vector_length: i64,
    /// How many bank vectors each piece mixes.
    pub topk: i64,
    /// Modules to adapt: names / dotted suffixes, a full-match regex, or `"all-linear"`.
    pub target_modules: Option<TargetModules>,
    /// Modules never to adapt.
    pub exclude_modules: Option<TargetModules>,
    /// Save only the top-k indices and weights instead of the logits: a smaller, inference-only file.
    pub save_only_topk_weights: bool,
    /// Dropout on the adapter's input path (training only).
    pub vblora_dropout: f64,
    /// The base weight is stored `(in, out)` (GPT-2's `Conv1D`); corrected from the layer type on injection.
    pub fan_in_fan_out: bool,
    /// Which biases train with the adapter.
    pub bias: BiasOption,
    /// Extra modules trained and saved in full.
    pub modules_to_save: Option<Vec<String>>,
    /// The bank starts `U(−bound, bound)`.
    pub init_vector_bank_bound: f64,
    /// The logits start `N(0, std²)`.
    pub init_logits_std: f64,
    /// Only the layers with these indices are adapted.
    pub layers_to_transform: Option<LayerIndices>,
    /// The name of the layer list `layers_to_transform` indexes into.
    pub layers_pattern: Option<LayersPattern>,
    /// The bank of this adapter, shared by its layers (never saved here).
    #[serde(skip)]
    pub bank: SharedBank,
}

/// The vector bank an adapter's layers share: made for each adapter before its layers (PEFT's
/// `_pre_injection_hook`), registered by the first layer (which saves it as `base_model.vblora_vector_bank`)
/// and drawn again by every layer as PEFT draws it (the last draw is the bank).
#[derive(Clone, Debug, Default)]
pub struct SharedBank(pub Option<Arc<Mutex<Option<Tensor>>>>);

impl PartialEq for SharedBank {
    /// Configs compare by what is saved; the bank is not part of the config.
    fn eq(&self, _other: &Self) -> bool {
        true
    }
}

impl Default for VbloraConfig {
    fn default() -> Self {
        Self {
            common: PeftConfigCommon::new(PEFT_TYPE),
            r: 4,
            num_vectors: 256,
            vector_length: 256,
            topk: 2,
            target_modules: None,
            exclude_modules: None,
            save_only_topk_weights: false,
            vblora_dropout: 0.0,
            fan_in_fan_out: false,
            bias: BiasOption::default(),
            modules_to_save: None,
            init_vector_bank_bound: 0.02,
            init_logits_std: 0.1,
            layers_to_transform: None,
            layers_pattern: None,
            bank: SharedBank::default(),
        }
    }
}

impl MethodConfig for VbloraConfig {
    const PEFT_TYPE: &'static str = PEFT_TYPE;

    /// `VBLoRAConfig.__post_init__`: target lists become sets; `layers_pattern` needs `layers_to_transform`.
    fn post_init(&mut self, location: &str, _warnings: &mut Vec<String>) -> Result<()> {
        dedupe_lists([&mut self.target_modules, &mut self.exclude_modules]);
        Ok(self.target_spec().check_layers_pattern(location)?)
    }
}

impl AdapterConfig for VbloraConfig {
    peft_core::adapter_config_boilerplate!();
    peft_core::adapter_config_targets!(
        target_modules,
        exclude_modules,
        layers_to_transform,
        layers_pattern,
        modules_to_save
    );

    fn validate(&self) -> Result<()> {
        self.target_spec().check_layers_pattern(peft_core::peft_config::error::IN_MEMORY)?;
        self.bias.mode()?;
        if self.r <= 0 {
            return Err(PeftError::Invalid(format!("`r` {} should be a positive integer value", self.r)));
        }
        if self.topk <= 0 || self.topk > self.num_vectors {
            return Err(PeftError::Invalid(format!(
                "`topk` {} should be a positive integer value no larger than num_vectors ({})",
                self.topk, self.num_vectors
            )));
        }
        peft_core::config::require_positive("vector_length", self.vector_length)?;
        if !(0.0..1.0).contains(&self.vblora_dropout) {
            return Err(PeftError::Invalid(format!(
                "vblora_dropout must be in [0, 1), got {}",
                self.vblora_dropout
            )));
        }
        Ok(())
    }

    fn bias(&self) -> BiasMode {
        self.bias.mode().unwrap_or(BiasMode::None)
    }

    /// With `save_only_topk_weights`, each `vblora_logits_*` tensor is written as its top-k indices (in the
    /// smallest integer dtype that holds `num_vectors`) and the softmax of its top-k logits without the last
    /// (PEFT's `_get_adapter_state_dict`).
    fn to_file_tensors(&self, tensors: NamedTensors) -> Result<NamedTensors> {
        if !self.save_only_topk_weights {
            return Ok(tensors);
        }
        let index_kind = match self.num_vectors {
            n if n < 1 << 8 => Kind::Uint8,
            n if n < 1 << 15 => Kind::Int16,
            n if n < 1 << 31 => Kind::Int,
            _ => Kind::Int64,
        };
        let mut out = Vec::with_capacity(tensors.len() + 2);
        for (key, t) in tensors {
            if !key.contains("vblora_logits") {
                out.push((key, t));
                continue;
            }
            let topk = |t: &Tensor| -> std::result::Result<(Tensor, Tensor), tch::TchError> {
                let (logits, indices) = t.f_topk(self.topk, -1, true, true)?;
                let weights = logits.f_softmax(-1, None::<Kind>)?;
                let keep = weights.size().last().copied().unwrap_or(1) - 1;
                Ok((indices.f_to_kind(index_kind)?, weights.f_narrow(-1, 0, keep)?.f_contiguous()?))
            };
            let (indices, weights) =
                tch::no_grad(|| topk(&t)).map_err(PeftError::torch("taking the top-k logits"))?;
            out.push((format!("{key}_topk_indices"), indices));
            out.push((format!("{key}_topk_weights"), weights));
        }
        Ok(out)
    }

    /// Logits rebuilt from a `save_only_topk_weights` file: `log` of the top-k weights (the last one
    /// `1 − Σ` the others) at their indices, `−∞` elsewhere (PEFT's `_remap_adapter_state_dict_for_load`).
    /// Such an adapter cannot train (PEFT refuses it in its first training forward; peft-rs on load).
    fn read_file_tensors(&self, tensors: NamedTensors, path: &std::path::Path) -> Result<NamedTensors> {
        if !self.save_only_topk_weights {
            return Ok(tensors);
        }
        if !self.common.inference_mode {
            return Err(PeftError::Invalid(format!(
                "{}: a VB-LoRA adapter saved with save_only_topk_weights holds no logits to train (load it for \
                 inference)",
                path.display()
            )));
        }
        let mut weights: std::collections::BTreeMap<String, Tensor> = std::collections::BTreeMap::new();
        let mut rest = Vec::with_capacity(tensors.len());
        for (key, t) in tensors {
            if key.ends_with("_topk_weights") {
                weights.insert(key, t);
            } else {
                rest.push((key, t));
            }
        }
        let mut out = Vec::with_capacity(rest.len());
        for (key, t) in rest {
            let Some(base) = key.strip_suffix("_topk_indices") else {
                out.push((key, t));
                continue;
            };
            let weights_key = format!("{base}_topk_weights");
            let w = weights.remove(&weights_key).ok_or_else(|| PeftError::MissingKeys {
                path: path.to_path_buf(),
                keys: vec![weights_key.clone()],
            })?;
            let rebuild = || -> std::result::Result<Tensor, tch::TchError> {
                let last = w
                    .f_sum_dim_intlist([-1i64].as_slice(), true, None::<Kind>)?
                    .f_neg()?
                    .f_add_scalar(1.0)?;
                let logits = Tensor::f_cat(&[w.shallow_clone(), last], -1)?.f_log()?;
                let mut shape = logits.size();
                shape.pop();
                shape.push(self.num_vectors);
                Tensor::f_zeros(shape.as_slice(), (logits.kind(), logits.device()))?
                    .f_fill_(f64::NEG_INFINITY)?
                    .f_scatter(-1, &t.f_to_kind(Kind::Int64)?, &logits)
            };
            let logits = tch::no_grad(rebuild).map_err(|e| {
                PeftError::Invalid(format!(
                    "{}: rebuilding `{base}` from its top-k indices and weights: {e}",
                    path.display()
                ))
            })?;
            out.push((base.to_string(), logits));
        }
        if !weights.is_empty() {
            return Err(PeftError::UnexpectedKeys {
                path: path.to_path_buf(),
                keys: weights.into_keys().collect(),
            });
        }
        Ok(out)
    }

    /// PEFT's `_pre_injection_hook`: a fresh bank for this adapter.
    fn before_layers(
        &mut self,
        _adapter: &str,
        _targets: &[TargetLayer],
        _existing: &[(&str, &dyn AdapterConfig)],
    ) -> Result<()> {
        self.bank = SharedBank(Some(Arc::new(Mutex::new(None))));
        Ok(())
    }
}

impl LayerMethod for VbloraConfig {
    fn create_layer(&mut self, ctx: &mut LayerInit<'_, '_>) -> Result<Box<dyn TunerLayer>> {
        crate::layer::VbloraLayer::create(self, ctx).map(|l| Box::new(l) as Box<dyn TunerLayer>)
    }
}
