//! [`PeftModel`]: a model with adapters — PEFT's `PeftModel` + `BaseTuner` operations.

use crate::adaptable::{layer_names, Adaptable};
use crate::config::{AdapterConfig, BiasMode, LayerInit};
use crate::error::{PeftError, Result};
use crate::io;
use crate::layer::{AdaptableLayer, TunerLayer};
use crate::modules_to_save::{self, ModulesToSave, MODULES_TO_SAVE};
use crate::registry;
use crate::status::{LayerStatus, ModelStatus, RequiresGrad, Tristate};
use indexmap::IndexMap;
use peft_config::keys::{self, CONFIG_NAME, DEFAULT_ADAPTER_NAME, PEFT_PREFIX, SAFETENSORS_WEIGHTS_NAME};
use peft_config::{MatchReport, TargetMatcher, TargetModules, TaskType};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use tch::nn::{self, ModuleT};
use tch::Tensor;

/// Options for creating or adding an adapter.
#[derive(Clone, Copy, Debug)]
pub struct AdapterOptions {
    /// Upcast fp16/bf16 adapter weights to fp32, as PEFT does by default.
    pub autocast_adapter_dtype: bool,
    /// Accept `target_modules` entries that match nothing (PEFT's behaviour). By default peft-rs fails
    /// naming each such entry, because a typo would otherwise train a different adapter than intended.
    pub allow_unmatched_targets: bool,
}

impl Default for AdapterOptions {
    fn default() -> Self {
        Self { autocast_adapter_dtype: true, allow_unmatched_targets: false }
    }
}

/// Options for loading an adapter directory.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// The name the adapter gets in the model.
    pub adapter_name: String,
    /// Load for training (`requires_grad`, `inference_mode: false`) instead of inference.
    pub is_trainable: bool,
    /// A sub-directory of the given directory holding the adapter (how PEFT saves non-default adapters).
    pub subfolder: Option<String>,
    /// Creation options.
    pub adapter: AdapterOptions,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            adapter_name: DEFAULT_ADAPTER_NAME.to_string(),
            is_trainable: false,
            subfolder: None,
            adapter: AdapterOptions::default(),
        }
    }
}

impl LoadOptions {
    /// Loads under `name`.
    pub fn named(name: impl Into<String>) -> Self {
        Self { adapter_name: name.into(), ..Self::default() }
    }

    /// Loads for training.
    pub fn trainable(mut self) -> Self {
        self.is_trainable = true;
        self
    }
}

/// What a load did.
#[derive(Clone, Debug)]
pub struct LoadReport {
    /// The adapter name in the model.
    pub adapter_name: String,
    /// The method.
    pub peft_type: String,
    /// True when the adapter's weights require gradients (loaded with `is_trainable`).
    pub trainable: bool,
    /// Number of tensors read from the file.
    pub tensors_loaded: usize,
    /// The directory the adapter came from.
    pub path: PathBuf,
    /// Warnings (unknown config keys, corrected options, …).
    pub warnings: Vec<String>,
}

/// Options of [`PeftModel::save_pretrained`].
#[derive(Clone, Debug, Default)]
pub struct SaveOptions {
    /// Save only these adapters (default: all).
    pub selected_adapters: Option<Vec<String>>,
    /// PEFT's `path_initial_model_for_weight_conversion`: the directory where the adapter was saved right
    /// after an initialisation that rewrote the base weights (PiSSA, OLoRA, …). The saved adapter is then
    /// converted into one that applies to the original base model (for LoRA: rank doubled,
    /// `[A; A₀]` and `[B, −B₀]`), and that directory's config gets the init scheme reset, as PEFT does.
    pub convert_initial_adapter: Option<std::path::PathBuf>,
    /// PEFT's `save_embedding_layers`: also save the base weights of the input/output embeddings.
    /// `None` (PEFT's `"auto"`): when the config targets `embed_tokens` or `lm_head` by name and does not
    /// use trainable tokens, the adapted embedding layers are saved.
    pub save_embedding_layers: Option<bool>,
}

/// A model with PEFT adapters.
///
/// It owns the user's model `M` (whose [`AdaptableLayer`]s carry the adapters) and the adapter var store
/// (the trainable tensors, named as PEFT names them in memory: `base_model.model.<module>.lora_A.<adapter>
/// .weight`). Build an optimizer from [`PeftModel::adapter_var_store`].
///
/// The method comes from a method crate; the `peft-lora` crate documentation has a complete, runnable
/// example (build a model, add LoRA, forward, save, reload). In outline:
///
/// ```text
/// let vs = VarStore::new(Device::Cpu);
/// let model = MyModel::new(&vs)?;                       // built from peft_core::nn layers
/// let mut peft = PeftModel::new(model, &vs, LoraConfig { .. }.boxed(), "default")?;
/// let mut opt = nn::AdamW::default().build(peft.adapter_var_store(), 1e-3)?;
/// // ... train with peft.forward_t(&x, true) ...
/// peft.save_pretrained("out/adapter", &SaveOptions::default())?;
/// let (peft, report) = PeftModel::from_pretrained(MyModel::new(&vs2)?, &vs2, "out/adapter", LoadOptions::default())?;
/// ```
pub struct PeftModel<M: Adaptable> {
    model: M,
    configs: IndexMap<String, Box<dyn AdapterConfig>>,
    active: Vec<String>,
    disabled: Option<Vec<(Tensor, bool)>>,
    adapter_vs: nn::VarStore,
    base_params: Vec<(String, Tensor)>,
    warnings: Vec<String>,
    /// The `layer_replication` map applied to the model, if any.
    replicated: Option<Vec<(usize, usize)>>,
}

impl<M: Adaptable + fmt::Debug> fmt::Debug for PeftModel<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeftModel")
            .field("adapters", &self.configs.keys().collect::<Vec<_>>())
            .field("active", &self.active)
            .field("disabled", &self.disabled.is_some())
            .field("model", &self.model)
            .finish_non_exhaustive()
    }
}

fn abbreviate(names: &[String]) -> String {
    const MAX: usize = 12;
    if names.len() <= MAX {
        format!("{names:?}")
    } else {
        format!("{:?} … ({} in all)", &names[..MAX], names.len())
    }
}

fn set_requires_grad(t: &Tensor, on: bool) {
    if t.requires_grad() != on {
        let _ = t.set_requires_grad(on);
    }
}

impl<M: Adaptable> PeftModel<M> {
    /// PEFT's `get_peft_model`: wraps `model` (whose base weights live in `base`) and adds the adapter
    /// `adapter_name` from `config`, active and trainable unless the config says `inference_mode`.
    ///
    /// Every base parameter is frozen (`requires_grad = false`), as PEFT does.
    ///
    /// # Errors
    /// See [`PeftModel::add_adapter_with`].
    pub fn new(
        model: M,
        base: &nn::VarStore,
        config: Box<dyn AdapterConfig>,
        adapter_name: &str,
    ) -> Result<Self> {
        Self::with_options(model, base, config, adapter_name, AdapterOptions::default())
    }

    /// [`PeftModel::new`] with explicit options.
    ///
    /// # Errors
    /// See [`PeftModel::add_adapter_with`].
    pub fn with_options(
        model: M,
        base: &nn::VarStore,
        config: Box<dyn AdapterConfig>,
        adapter_name: &str,
        options: AdapterOptions,
    ) -> Result<Self> {
        let mut peft = Self::wrap(model, base)?;
        let trainable = !config.common().inference_mode;
        peft.add_adapter_with(adapter_name, config, options)?;
        peft.activate(&[adapter_name.to_string()], trainable)?;
        Ok(peft)
    }

    /// PEFT's `PeftModel.from_pretrained`: wraps `model` and loads the adapter saved in `dir`, active.
    ///
    /// # Errors
    /// Missing or invalid config, unknown or unlinked method, corrupt weights, missing/unexpected keys,
    /// shape mismatches — each naming the file and key.
    pub fn from_pretrained(
        model: M,
        base: &nn::VarStore,
        dir: impl AsRef<Path>,
        options: LoadOptions,
    ) -> Result<(Self, LoadReport)> {
        let mut peft = Self::wrap(model, base)?;
        let report = peft.load_adapter(dir, options)?;
        peft.activate(std::slice::from_ref(&report.adapter_name), report.trainable)?;
        Ok((peft, report))
    }

    /// Wraps `model` with no adapter yet (add or load adapters next). Freezes every base parameter.
    ///
    /// # Errors
    /// Two adaptable layers with the same name, or an empty layer name.
    pub fn wrap(model: M, base: &nn::VarStore) -> Result<Self> {
        let names = layer_names(&model);
        let mut seen = BTreeSet::new();
        for name in &names {
            if name.is_empty() || name.split('.').any(str::is_empty) {
                return Err(PeftError::Invalid(format!(
                    "an adaptable layer has the module name {name:?}; build layers under a non-empty nn::Path"
                )));
            }
            if !seen.insert(name.as_str()) {
                return Err(PeftError::DuplicateModuleName { name: name.clone() });
            }
        }
        let mut base_params: Vec<(String, Tensor)> = base.variables().into_iter().collect();
        base_params.sort_by(|a, b| a.0.cmp(&b.0));
        for (_, t) in &base_params {
            set_requires_grad(t, false);
        }
        Ok(Self {
            model,
            configs: IndexMap::new(),
            active: Vec::new(),
            disabled: None,
            adapter_vs: nn::VarStore::new(base.device()),
            base_params,
            warnings: Vec::new(),
            replicated: None,
        })
    }

    /// The wrapped model (run its forward to use the adapters).
    pub fn model(&self) -> &M {
        &self.model
    }

    /// The wrapped model, mutably. Replacing its adaptable layers behind the PeftModel's back is not
    /// supported.
    pub fn model_mut(&mut self) -> &mut M {
        &mut self.model
    }

    /// The var store holding every adapter tensor; build the optimizer from it. Frozen (inactive or
    /// inference-mode) adapters have `requires_grad = false` and get no updates. An optimizer built
    /// before [`PeftModel::delete_adapter`] keeps the deleted tensors: rebuild it.
    pub fn adapter_var_store(&self) -> &nn::VarStore {
        &self.adapter_vs
    }

    /// Warnings collected while adding or loading adapters (PEFT's `warnings.warn`).
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// The adapters, in the order they were added.
    pub fn adapter_names(&self) -> Vec<String> {
        self.configs.keys().cloned().collect()
    }

    /// The config of one adapter.
    pub fn config(&self, adapter: &str) -> Option<&dyn AdapterConfig> {
        self.configs.get(adapter).map(|c| c.as_ref())
    }

    /// The active adapters.
    pub fn active_adapters(&self) -> &[String] {
        &self.active
    }

    fn unknown(&self, name: &str) -> PeftError {
        PeftError::UnknownAdapter { name: name.to_string(), available: self.adapter_names() }
    }

    /// PEFT's `add_adapter`: adds an inactive, frozen adapter (activate it with
    /// [`PeftModel::set_adapter`]).
    ///
    /// # Errors
    /// See [`PeftModel::add_adapter_with`].
    pub fn add_adapter(&mut self, name: &str, config: Box<dyn AdapterConfig>) -> Result<()> {
        self.add_adapter_with(name, config, AdapterOptions::default())
    }

    /// [`PeftModel::add_adapter`] with options. On error the model is left unchanged.
    ///
    /// # Errors
    /// [`PeftError::InvalidAdapterName`], [`PeftError::DuplicateAdapter`], [`PeftError::MixedPeftTypes`],
    /// [`PeftError::UnsupportedOption`] for options not implemented yet, [`PeftError::NoMatchingTargets`]
    /// naming every `target_modules` entry that matched nothing, [`PeftError::UnsupportedLayer`].
    pub fn add_adapter_with(
        &mut self,
        name: &str,
        mut config: Box<dyn AdapterConfig>,
        options: AdapterOptions,
    ) -> Result<()> {
        keys::validate_adapter_name(name).map_err(|reason| PeftError::InvalidAdapterName { reason })?;
        if self.configs.contains_key(name) {
            return Err(PeftError::DuplicateAdapter { name: name.to_string() });
        }
        let new_type = config.common().peft_type.clone();
        if let Some((_, existing)) = self.configs.first() {
            if existing.common().peft_type != new_type {
                return Err(PeftError::MixedPeftTypes {
                    existing: existing.common().peft_type.clone(),
                    new: new_type,
                });
            }
        }
        config.validate()?;
        let existing: Vec<(&str, &dyn AdapterConfig)> =
            self.configs.iter().map(|(n, c)| (n.as_str(), c.as_ref())).collect();
        config.check_new_adapter(&existing)?;
        // PEFT's task wrappers (PeftModelForSequenceClassification, …) add their heads to modules_to_save
        // before matching, so the heads are never targeted by the method itself.
        let heads: &[&str] = match config.common().task_type {
            Some(TaskType::SeqCls | TaskType::TokenCls) => &["classifier", "score"],
            Some(TaskType::QuestionAns) => &["qa_outputs"],
            _ => &[],
        };
        if !heads.is_empty() {
            let mut modules: Vec<String> =
                config.target_spec().modules_to_save.map(<[String]>::to_vec).unwrap_or_default();
            for h in heads {
                if !modules.iter().any(|m| m == h) {
                    modules.push(h.to_string());
                }
            }
            config.set_modules_to_save(modules);
        }
        if self.configs.values().filter(|c| c.bias() != BiasMode::None).count() > 0
            && config.bias() != BiasMode::None
        {
            return Err(PeftError::Invalid(format!(
                "adapter `{name}`: only one adapter of a model may have a `bias` other than \"none\""
            )));
        }
        if let Some(map) = config.layer_replication()? {
            // PEFT replicates in `_prepare_model` for every adapter; once is what is meant.
            match &self.replicated {
                Some(done) if *done == map => {}
                Some(done) => {
                    return Err(PeftError::Invalid(format!(
                        "the model's layers are already replicated as {done:?}; adapter `{name}` asks for {map:?}"
                    )))
                }
                None => {
                    self.model.replicate_layers(&map)?;
                    self.replicated = Some(map);
                }
            }
        }
        let report = resolve_targets(&self.model, config.as_mut(), name, options)?;
        for entry in &report.unused_excludes {
            self.warn(format!("adapter `{name}`: exclude_modules entry {entry:?} excluded nothing"));
        }
        let targeted: BTreeSet<String> = report.targeted.into_iter().collect();
        let mut target_layers = Vec::new();
        self.model.visit_layers(&mut |l| {
            if targeted.contains(l.name()) {
                target_layers.push(crate::config::TargetLayer::of(l.name(), l.base()));
            }
        });
        let existing: Vec<(&str, &dyn AdapterConfig)> =
            self.configs.iter().map(|(n, c)| (n.as_str(), c.as_ref())).collect();
        config.before_layers(name, &target_layers, &existing)?;
        let trainable = !config.common().inference_mode;
        let mut warnings = Vec::new();
        let vs_root = self.adapter_vs.root();
        let result = self.model.visit_layers_mut(&mut |layer: &mut dyn AdaptableLayer| {
            if !targeted.contains(layer.name()) {
                return Ok(());
            }
            let module_name = layer.name().to_string();
            let path = module_path(&vs_root, &module_name);
            let (base, slots) = layer.parts_mut();
            if !slots.merged().is_empty() {
                return Err(PeftError::Invalid(format!(
                    "cannot add adapter `{name}` to `{module_name}` while adapters are merged into it; unmerge first"
                )));
            }
            let mut init = LayerInit {
                module_name: &module_name,
                adapter_name: name,
                base,
                siblings: slots.adapters(),
                path,
                autocast_adapter_dtype: options.autocast_adapter_dtype,
                trainable,
                warnings: &mut warnings,
            };
            let tuner = config.create_layer(&mut init)?;
            for (_, t) in tuner.named_tensors() {
                set_requires_grad(&t, false);
            }
            slots.insert(name.to_string(), tuner);
            Ok(())
        });
        self.warnings.extend(warnings);
        let result = result
            .and_then(|()| {
                if config.adapts_input_embedding() {
                    self.tie_input_embedding_adapter(name)
                } else {
                    Ok(())
                }
            })
            .and_then(|()| self.attach_modules_to_save(name, config.as_ref()))
            .and_then(|()| self.attach_trainable_tokens(name, config.as_ref()));
        if let Err(e) = result {
            self.remove_layers(name);
            return Err(e);
        }
        self.configs.insert(name.to_string(), config);
        self.sync_active()?;
        Ok(())
    }

    /// Gives every layer selected by the config's `modules_to_save` a trainable copy for `name`.
    fn attach_modules_to_save(&mut self, name: &str, config: &dyn AdapterConfig) -> Result<()> {
        let entries: Vec<String> =
            config.target_spec().modules_to_save.map(<[String]>::to_vec).unwrap_or_default();
        if entries.is_empty() {
            return Ok(());
        }
        if config.bias() != BiasMode::None {
            return Err(crate::config::unsupported_option(
                &config.common().peft_type,
                "bias",
                &config.to_json()["bias"],
                "together with modules_to_save",
            ));
        }
        let vs_root = self.adapter_vs.root();
        let mut containers = BTreeSet::new();
        let mut covered = BTreeSet::new();
        self.model.visit_layers_mut(&mut |layer| {
            let Some(container) = modules_to_save::matches(layer.name(), &entries) else {
                return Ok(());
            };
            let module = layer.name().to_string();
            let path = module_path(&vs_root, &module);
            let (base, slots) = layer.parts_mut();
            for (p, _) in base.named_parameters() {
                covered.insert(format!("{module}.{p}"));
            }
            let copy = ModulesToSave::new(base, &module, name, &path)?;
            for (_, t) in copy.named_tensors() {
                set_requires_grad(&t, false);
            }
            slots.insert(name.to_string(), Box::new(copy));
            containers.insert(container);
            Ok(())
        })?;
        self.sync_active()?;
        // A container holding parameters outside adaptable layers cannot be copied faithfully.
        for c in &containers {
            let outside: Vec<&str> = self
                .base_params
                .iter()
                .map(|(n, _)| n.as_str())
                .filter(|n| n.starts_with(&format!("{c}.")) && !covered.contains(*n))
                .collect();
            if !outside.is_empty() {
                return Err(PeftError::Invalid(format!(
                    "modules_to_save module `{c}` holds parameters outside adaptable layers ({outside:?}); build \
                     them with peft_core::nn layers"
                )));
            }
        }
        for e in &entries {
            if !containers.iter().any(|c| c.ends_with(e.as_str())) {
                self.warn(format!(
                    "adapter `{name}`: modules_to_save entry {e:?} matches no adaptable module"
                ));
            }
        }
        Ok(())
    }

    /// Methods that adapt the input embedding (trainable tokens): every module tied to the embedding gets
    /// the embedding adapter's tied copy, replacing one it got as a target itself (PEFT's
    /// `TrainableTokensModel.inject_adapter`).
    fn tie_input_embedding_adapter(&mut self, name: &str) -> Result<()> {
        let tied = self.model.tied_with_input_embedding();
        let Some(input) = self.model.input_embedding().filter(|_| !tied.is_empty()) else {
            return Ok(());
        };
        let mut copies: Vec<(String, Box<dyn TunerLayer>)> = Vec::new();
        self.model.visit_layers(&mut |layer| {
            if layer.name() == input {
                if let Some(source) = layer.slots().get(name) {
                    copies.extend(tied.iter().filter_map(|m| source.tied_copy(m).map(|c| (m.clone(), c))));
                }
            }
        });
        for (module, _) in &copies {
            self.remove_from(name, Some(module));
        }
        self.model.visit_layers_mut(&mut |layer| {
            if let Some(i) = copies.iter().position(|(m, _)| m == layer.name()) {
                let (_, copy) = copies.swap_remove(i);
                layer.parts_mut().1.insert(name.to_string(), copy);
            }
            Ok(())
        })
    }

    /// `trainable_token_indices`: trained embedding rows for `name`, and tied heads reading them (PEFT's
    /// `set_additional_trainable_modules`).
    fn attach_trainable_tokens(&mut self, name: &str, config: &dyn AdapterConfig) -> Result<()> {
        use crate::trainable_tokens::{TokenIndices, TrainableTokens};
        let Some(indices) = config.trainable_token_indices()? else {
            return Ok(());
        };
        let input = self.model.input_embedding();
        let targets: Vec<(String, Vec<i64>)> = match indices {
            TokenIndices::PerModule(m) => m,
            TokenIndices::List(l) => vec![(input.clone().unwrap_or_else(|| "embed_tokens".into()), l)],
        };
        if let Some(mts) = config.target_spec().modules_to_save {
            if let Some((t, _)) = targets.iter().find(|(t, _)| mts.contains(t)) {
                return Err(PeftError::Invalid(format!(
                    "The embedding layer is already marked to be trained fully, either specify \
                     `modules_to_save=[..., \"{t}\", ...]` or `trainable_tokens={{'{t}': x}}` but not both."
                )));
            }
        }
        let tied = self.model.tied_with_input_embedding();
        let ensure = config.ensure_weight_tying();
        // Several targets on tied weights: the tied heads follow the embedding only with equal indices.
        let mut skip: BTreeSet<String> = BTreeSet::new();
        let mut mismatch = false;
        if targets.len() > 1 && !tied.is_empty() {
            let input_name = input.clone().unwrap_or_else(|| "embed_tokens".into());
            let tied_keys: Vec<&(String, Vec<i64>)> = targets
                .iter()
                .filter(|(t, _)| {
                    input_name.ends_with(t.as_str()) || tied.iter().any(|m| m.ends_with(t.as_str()))
                })
                .collect();
            if tied_keys.len() >= 2 {
                mismatch = tied_keys.iter().any(|(_, l)| *l != tied_keys[0].1);
                if mismatch && ensure {
                    let info: Vec<String> = tied_keys.iter().map(|(t, l)| format!("{t}: {l:?}")).collect();
                    return Err(PeftError::Invalid(format!(
                        "Cannot ensure weight tying when different token indices are specified for tied layers. \
                         Conflicting layers: {}. Please use the same indices for all tied layers or set \
                         ensure_weight_tying=False.",
                        info.join(", ")
                    )));
                }
                if !mismatch {
                    skip = tied_keys.iter().map(|(t, _)| t.clone()).filter(|t| tied.contains(t)).collect();
                }
            }
        }
        if tied.is_empty() && ensure {
            self.warn(
                "ensure_weight_tying=True but the model does not have tied weights (tie_word_embeddings=False). \
                 Weight tying will not be applied for trainable_token_indices."
                    .into(),
            );
        }
        let vs_root = self.adapter_vs.root();
        let mut input_adapter: Option<TrainableTokens> = None;
        for (target, idx) in targets.iter().filter(|(t, _)| !skip.contains(t)) {
            let mut found = false;
            self.model.visit_layers_mut(&mut |layer| {
                if !layer.name().ends_with(target.as_str()) {
                    return Ok(());
                }
                let module = layer.name().to_string();
                let path = module_path(&vs_root, &module);
                let (base, slots) = layer.parts_mut();
                if slots.get(name).is_some() {
                    return Err(PeftError::Invalid(format!(
                        "`{module}` already has adapter `{name}`; trainable tokens cannot be added on top of it"
                    )));
                }
                let tt = TrainableTokens::new(base, &module, name, idx, &path)?;
                for (_, t) in tt.named_tensors() {
                    set_requires_grad(&t, false);
                }
                if input.as_deref() == Some(module.as_str()) || (input.is_none() && module.ends_with("embed_tokens")) {
                    input_adapter = Some(TrainableTokens::tied_to(&tt, &module));
                }
                slots.insert(name.to_string(), Box::new(tt));
                found = true;
                Ok(())
            })?;
            if !found {
                return Err(PeftError::Invalid(format!(
                    "trainable_token_indices: no module matches `{target}` (the input embedding is {})",
                    input.as_deref().unwrap_or("not declared by the model")
                )));
            }
        }
        if let Some(source) = input_adapter.filter(|_| !tied.is_empty() && (ensure || !mismatch)) {
            self.model.visit_layers_mut(&mut |layer| {
                if !tied.iter().any(|t| layer.name() == t) {
                    return Ok(());
                }
                let module = layer.name().to_string();
                let (_, slots) = layer.parts_mut();
                if slots.get(name).is_none() {
                    slots.insert(name.to_string(), Box::new(TrainableTokens::tied_to(&source, &module)));
                }
                Ok(())
            })?;
        }
        self.sync_active()?;
        Ok(())
    }

    fn warn(&mut self, message: String) {
        log::warn!("{message}");
        self.warnings.push(message);
    }

    /// Removes `name` from every layer and its tensors from the adapter var store.
    fn remove_layers(&mut self, name: &str) {
        self.remove_from(name, None);
    }

    /// Removes adapter `name` from every layer, or only from `module`, with its tensors.
    fn remove_from(&mut self, name: &str, module: Option<&str>) {
        let mut var_names = BTreeSet::new();
        let _ = self.model.visit_layers_mut(&mut |layer| {
            if module.is_some_and(|m| m != layer.name()) {
                return Ok(());
            }
            let module = layer.name().to_string();
            if let Some(tuner) = layer.parts_mut().1.remove(name) {
                for (rel, _) in tuner.named_tensors() {
                    var_names.insert(format!("{PEFT_PREFIX}{module}.{rel}"));
                }
            }
            Ok(())
        });
        self.drop_vars(&var_names);
    }

    /// Removes adapter `adapter` from the layer `module` (its tensors leave the adapter var store); with
    /// `config`, creates it there again from that config — PEFT's `update_layer` on an existing adapter,
    /// used by data-driven inits that change ranks (EVA). The adapter keeps its active/trainable state.
    ///
    /// # Errors
    /// [`PeftError::UnknownAdapter`], an unknown module, or the method's creation errors.
    pub fn recreate_adapter_layer(
        &mut self,
        module: &str,
        adapter: &str,
        config: Option<&mut dyn AdapterConfig>,
    ) -> Result<()> {
        if !self.configs.contains_key(adapter) {
            return Err(self.unknown(adapter));
        }
        let mut found = false;
        self.model.visit_layers(&mut |l| found |= l.name() == module);
        if !found {
            return Err(PeftError::Invalid(format!("no adaptable layer named `{module}`")));
        }
        self.remove_from(adapter, Some(module));
        let Some(config) = config else { return Ok(()) };
        let trainable = !config.common().inference_mode;
        let vs_root = self.adapter_vs.root();
        let mut warnings = Vec::new();
        let active = self.active.clone();
        self.model.visit_layers_mut(&mut |layer| {
            if layer.name() != module {
                return Ok(());
            }
            let path = module_path(&vs_root, module);
            let (base, slots) = layer.parts_mut();
            let mut init = LayerInit {
                module_name: module,
                adapter_name: adapter,
                base,
                siblings: slots.adapters(),
                path,
                autocast_adapter_dtype: true,
                trainable,
                warnings: &mut warnings,
            };
            let tuner = config.create_layer(&mut init)?;
            let on = trainable && active.iter().any(|a| a == adapter);
            for (rel, t) in tuner.named_tensors() {
                set_requires_grad(&t, on && tuner.is_trainable_tensor(&rel));
            }
            slots.insert(adapter.to_string(), tuner);
            slots.set_active(&active);
            Ok(())
        })?;
        self.warnings.extend(warnings);
        Ok(())
    }

    /// Mutable access to an adapter's config (data-driven inits record the ranks they chose).
    pub fn config_mut(&mut self, adapter: &str) -> Option<&mut Box<dyn AdapterConfig>> {
        self.configs.get_mut(adapter)
    }

    /// Takes the named tensors out of the adapter var store. tch's `VarStore` has no call that removes a
    /// variable, so a fresh store is built, through its public API, from the ones that stay: the same tensors
    /// (shallow clones, so the layers keep training them) under the same names, trainable as before, with
    /// their `requires_grad` flags kept. Trainable is told by identity (`is_set_to`: same storage, offset,
    /// sizes and strides), not by handle, since the store hands out shallow clones.
    fn drop_vars(&mut self, var_names: &BTreeSet<String>) {
        if var_names.is_empty() {
            return;
        }
        let trainable = self.adapter_vs.trainable_variables();
        let fresh = nn::VarStore::new(self.adapter_vs.device());
        let mut kept: Vec<(String, Tensor)> =
            self.adapter_vs.variables().into_iter().filter(|(n, _)| !var_names.contains(n)).collect();
        kept.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, t) in kept {
            let grad = t.requires_grad();
            let is_trainable = trainable.iter().any(|v| v.is_set_to(&t));
            let (parent, leaf) = name.rsplit_once('.').unwrap_or(("", name.as_str()));
            let path = parent.split('.').filter(|s| !s.is_empty()).fold(fresh.root(), |p, seg| &p / seg);
            let added = path.add(leaf, t, is_trainable);
            set_requires_grad(&added, grad);
        }
        self.adapter_vs = fresh;
    }

    /// PEFT's `set_adapter`: makes `name` the only active adapter, trainable (as PEFT does; freeze it
    /// with [`PeftModel::set_requires_grad`]). Merged layers are unmerged first, with a warning.
    ///
    /// # Errors
    /// [`PeftError::UnknownAdapter`].
    pub fn set_adapter(&mut self, name: &str) -> Result<()> {
        self.set_adapters(&[name])
    }

    /// Activates several adapters at once (PEFT's `base_model.set_adapter([...])`): their outputs add up.
    ///
    /// # Errors
    /// [`PeftError::UnknownAdapter`].
    pub fn set_adapters(&mut self, names: &[&str]) -> Result<()> {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        self.activate(&names, true)
    }

    /// [`PeftModel::set_adapters`] with PEFT's `inference_mode=True`: the adapters become active but stay
    /// frozen (and every other adapter too), which is what serving wants — frozen adapters take the
    /// cached inference paths (DoRA's norm, in-place low-rank updates).
    ///
    /// # Errors
    /// [`PeftError::UnknownAdapter`].
    pub fn set_adapters_for_inference(&mut self, names: &[&str]) -> Result<()> {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        self.activate(&names, false)
    }

    fn activate(&mut self, names: &[String], trainable: bool) -> Result<()> {
        for n in names {
            if !self.configs.contains_key(n) {
                return Err(self.unknown(n));
            }
        }
        self.check_active(names)?;
        if self.is_merged() {
            self.warn("adapters cannot be switched while merged; unmerging the model first".into());
            self.unmerge_adapter()?;
        }
        self.active = names.to_vec();
        self.sync_active()?;
        let all = self.adapter_names();
        for n in &all {
            let on = trainable && self.active.contains(n);
            self.set_requires_grad(&[n.as_str()], on)?;
        }
        Ok(())
    }

    /// Turns gradients of the named adapters on or off (PEFT's `set_requires_grad`).
    ///
    /// # Errors
    /// [`PeftError::UnknownAdapter`].
    pub fn set_requires_grad(&mut self, names: &[&str], requires_grad: bool) -> Result<()> {
        for n in names {
            if !self.configs.contains_key(*n) {
                return Err(self.unknown(n));
            }
        }
        self.model.visit_layers(&mut |layer| {
            for n in names {
                if let Some(tuner) = layer.slots().get(n) {
                    for (rel, t) in tuner.named_tensors() {
                        set_requires_grad(&t, requires_grad && tuner.is_trainable_tensor(&rel));
                    }
                }
            }
        });
        for n in names {
            let bias = self.configs.get(*n).map(|c| c.bias()).unwrap_or_default();
            for t in self.bias_params(bias) {
                set_requires_grad(&t.1, requires_grad);
            }
        }
        Ok(())
    }

    /// The base biases an adapter with this `bias` mode trains and saves: `(checkpoint key, tensor)`.
    fn bias_params(&self, bias: BiasMode) -> Vec<(String, Tensor)> {
        if bias == BiasMode::None {
            return Vec::new();
        }
        let mut adapted = BTreeSet::new();
        self.model.visit_layers(&mut |layer| {
            if layer.slots().adapters().values().any(|t| t.peft_type() != MODULES_TO_SAVE) {
                adapted.insert(layer.name().to_string());
            }
        });
        let mut out = Vec::new();
        for (name, t) in &self.base_params {
            if name != "bias" && !name.ends_with(".bias") {
                continue;
            }
            let module = name.strip_suffix(".bias").unwrap_or("");
            let key = if adapted.contains(module) {
                format!("{PEFT_PREFIX}{module}.base_layer.bias")
            } else if bias == BiasMode::All {
                format!("{PEFT_PREFIX}{name}")
            } else {
                continue;
            };
            out.push((key, t.shallow_clone()));
        }
        out
    }

    /// PEFT's `delete_adapter`. The active adapter becomes the remaining active ones, else the first
    /// remaining adapter in alphabetical order (with a warning), else none.
    ///
    /// # Errors
    /// [`PeftError::UnknownAdapter`]; [`PeftError::AdapterMerged`] when it is merged anywhere.
    pub fn delete_adapter(&mut self, name: &str) -> Result<()> {
        if !self.configs.contains_key(name) {
            return Err(self.unknown(name));
        }
        let mut merged = false;
        self.model.visit_layers(&mut |l| merged |= l.slots().merged().iter().any(|m| m == name));
        if merged {
            return Err(PeftError::AdapterMerged { adapter: name.to_string() });
        }
        self.remove_layers(name);
        self.configs.shift_remove(name);
        let mut remaining: Vec<String> = self.active.iter().filter(|a| *a != name).cloned().collect();
        if remaining.is_empty() && !self.active.is_empty() {
            let mut all = self.adapter_names();
            all.sort();
            if let Some(first) = all.into_iter().next() {
                self.warn(format!("deleted the active adapter `{name}`; `{first}` is now active"));
                remaining.push(first);
            }
        }
        let trainable =
            remaining.iter().all(|n| self.configs.get(n).is_some_and(|c| !c.common().inference_mode));
        self.activate(&remaining, trainable)
    }

    /// True when any layer has a merged adapter.
    pub fn is_merged(&self) -> bool {
        let mut merged = false;
        self.model.visit_layers(&mut |l| merged |= !l.slots().merged().is_empty());
        merged
    }

    /// PEFT's `merge_adapter`: merges `names` (default: the active adapters) into the base weights, keeping
    /// the adapters so they can be unmerged. With `safe`, non-finite results are refused and nothing is
    /// merged.
    ///
    /// # Errors
    /// [`PeftError::UnknownAdapter`], [`PeftError::NonFiniteMerge`], or the method's reason; the model is
    /// left unmerged-as-before on error.
    pub fn merge_adapter(&mut self, names: Option<&[&str]>, safe: bool) -> Result<()> {
        if self.replicated.is_some() {
            // Replicated layers share their base weights: merging one copy's adapter would change the others.
            // (PEFT 0.21.2 means to refuse too, but its check looks the option up in the wrong dict.)
            return Err(PeftError::Invalid(
                "Cannot merge LORA layers when base model layers are replicated".into(),
            ));
        }
        let names: Option<Vec<String>> = names.map(|n| n.iter().map(|s| s.to_string()).collect());
        if let Some(ns) = &names {
            for n in ns {
                if !self.configs.contains_key(n) {
                    return Err(self.unknown(n));
                }
            }
        }
        // Safe merges are all-or-nothing: the weights of each layer are copied before it merges and
        // restored bit for bit if any layer refuses. Unsafe merges roll back by unmerging.
        let mut snapshots: BTreeMap<usize, Vec<(Tensor, Tensor)>> = BTreeMap::new();
        let mut counts: Vec<usize> = Vec::new();
        let result = self.model.visit_layers_mut(&mut |layer| {
            let (base, slots) = layer.parts_mut();
            counts.push(slots.merged().len());
            if safe && !slots.is_empty() {
                let copies = base
                    .named_parameters()
                    .into_iter()
                    .map(|(_, t)| t.f_detach_copy().map(|c| (t, c)))
                    .collect::<std::result::Result<Vec<_>, _>>()
                    .map_err(PeftError::torch("copying weights before a safe merge"))?;
                snapshots.insert(counts.len() - 1, copies);
            }
            slots.merge(base, names.as_deref(), safe)
        });
        if let Err(e) = result {
            let mut i = 0;
            let _ = self.model.visit_layers_mut(&mut |layer| {
                let idx = i;
                i += 1;
                let Some(&keep) = counts.get(idx) else { return Ok(()) };
                let (base, slots) = layer.parts_mut();
                match snapshots.get(&idx) {
                    Some(copies) => {
                        for (dst, src) in copies {
                            let mut dst = dst.shallow_clone();
                            tch::no_grad(|| dst.f_copy_(src))
                                .map_err(PeftError::torch("restoring weights"))?;
                        }
                        slots.truncate_merged(keep);
                        Ok(())
                    }
                    None => slots.unmerge_to(base, keep),
                }
            });
            return Err(e);
        }
        Ok(())
    }

    /// PEFT's `unmerge_adapter`: restores the base weights.
    ///
    /// # Errors
    /// The method's reason.
    pub fn unmerge_adapter(&mut self) -> Result<()> {
        self.model.visit_layers_mut(&mut |layer| {
            let (base, slots) = layer.parts_mut();
            slots.unmerge(base)
        })
    }

    /// PEFT's `merge_and_unload`: merges the active adapters (or `names`) and returns the bare model.
    /// The base var store given at creation now holds the merged weights.
    ///
    /// # Errors
    /// As [`PeftModel::merge_adapter`]; on error nothing is merged.
    pub fn merge_and_unload(mut self, names: Option<&[&str]>, safe: bool) -> Result<M> {
        self.merge_adapter(names, safe)?;
        Ok(self.unload())
    }

    /// PEFT's `unload`: removes every adapter and returns the bare model. As in PEFT, weights of layers
    /// that are merged stay merged.
    pub fn unload(mut self) -> M {
        let _ = self.model.visit_layers_mut(&mut |layer| {
            layer.parts_mut().1.clear();
            Ok(())
        });
        self.model
    }

    /// Disables every adapter until [`PeftModel::enable_adapter_layers`]: the model computes the base
    /// output, and adapter gradients are off. Merged layers are unmerged first (PEFT does that inside the
    /// next forward).
    ///
    /// # Errors
    /// The method's unmerge failure.
    pub fn disable_adapter_layers(&mut self) -> Result<()> {
        if self.disabled.is_some() {
            return Ok(());
        }
        if self.is_merged() {
            self.unmerge_adapter()?;
        }
        let mut saved = Vec::new();
        self.model.visit_layers_mut(&mut |layer| {
            let slots = layer.parts_mut().1;
            slots.set_disabled(true);
            for tuner in slots.adapters().values() {
                for (_, t) in tuner.named_tensors() {
                    saved.push((t.shallow_clone(), t.requires_grad()));
                    set_requires_grad(&t, false);
                }
            }
            Ok(())
        })?;
        self.disabled = Some(saved);
        Ok(())
    }

    /// Re-enables the adapters and restores their gradient flags.
    ///
    /// # Errors
    /// Never in practice; kept fallible for methods with enable hooks.
    pub fn enable_adapter_layers(&mut self) -> Result<()> {
        let Some(saved) = self.disabled.take() else {
            return Ok(());
        };
        self.model.visit_layers_mut(&mut |layer| {
            layer.parts_mut().1.set_disabled(false);
            Ok(())
        })?;
        for (t, flag) in saved {
            set_requires_grad(&t, flag);
        }
        Ok(())
    }

    /// PEFT's `with model.disable_adapter():` — the adapters are disabled while the guard lives.
    ///
    /// # Errors
    /// As [`PeftModel::disable_adapter_layers`].
    pub fn disable_adapters(&mut self) -> Result<AdaptersDisabled<'_, M>> {
        let was_disabled = self.disabled.is_some();
        self.disable_adapter_layers()?;
        Ok(AdaptersDisabled { peft: self, was_disabled })
    }

    /// True while adapters are disabled.
    pub fn adapters_disabled(&self) -> bool {
        self.disabled.is_some()
    }

    /// The adapter's tensors under their checkpoint keys (the content of `adapter_model.safetensors`).
    ///
    /// # Errors
    /// [`PeftError::UnknownAdapter`].
    pub fn adapter_state_dict(&self, adapter: &str) -> Result<Vec<(String, Tensor)>> {
        let config = self.configs.get(adapter).ok_or_else(|| self.unknown(adapter))?;
        let mut out = Vec::new();
        self.model.visit_layers(&mut |layer| {
            if let Some(tuner) = layer.slots().get(adapter) {
                for (rel, t) in tuner.state_tensors() {
                    let full = format!("{PEFT_PREFIX}{}.{rel}", layer.name());
                    out.push((tuner.checkpoint_key(&full, adapter), t));
                }
            }
        });
        out.extend(self.bias_params(config.bias()));
        Ok(out)
    }

    /// PEFT's `save_pretrained`: each adapter goes to `dir` (the one named `default`) or `dir/<name>`, as
    /// `adapter_config.json` (with `inference_mode: true`) and `adapter_model.safetensors` with PEFT's
    /// keys and `{"format": "pt"}` metadata. Files are written atomically.
    ///
    /// # Errors
    /// [`PeftError::UnknownAdapter`] for a selected adapter that does not exist, [`PeftError::Io`].
    pub fn save_pretrained(&self, dir: impl AsRef<Path>, options: &SaveOptions) -> Result<()> {
        let dir = dir.as_ref();
        if dir.is_file() {
            return Err(PeftError::Io {
                path: dir.to_path_buf(),
                op: "save into (it is a file, not a directory)",
                source: std::io::Error::from(std::io::ErrorKind::AlreadyExists),
            });
        }
        let names = match &options.selected_adapters {
            Some(sel) => {
                for n in sel {
                    if !self.configs.contains_key(n) {
                        return Err(self.unknown(n));
                    }
                }
                sel.clone()
            }
            None => self.adapter_names(),
        };
        for name in names {
            let target = if name == DEFAULT_ADAPTER_NAME { dir.to_path_buf() } else { dir.join(&name) };
            std::fs::create_dir_all(&target).map_err(|source| PeftError::Io {
                path: target.clone(),
                op: "create directory",
                source,
            })?;
            let mut tensors = self.adapter_state_dict(&name)?;
            tensors.extend(
                self.embedding_layers_to_save(self.configs[&name].as_ref(), options.save_embedding_layers)?,
            );
            let mut config = self.configs[&name].clone_box();
            if let Some(initial_dir) = &options.convert_initial_adapter {
                let (converted, converted_config) =
                    self.convert_initial(config.as_ref(), tensors, initial_dir)?;
                tensors = converted;
                config = converted_config;
            }
            let tensors = config.to_file_tensors(tensors)?;
            io::write_safetensors(&target.join(SAFETENSORS_WEIGHTS_NAME), &tensors)?;
            config.common_mut().inference_mode = true;
            if config.common().task_type.is_none() {
                if let Some(mapping) = self.model.auto_mapping() {
                    config.common_mut().auto_mapping = Some(mapping);
                }
            }
            let text = crate::config::to_config_file_text(config.as_ref());
            io::atomic_write(&target.join(CONFIG_NAME), text.as_bytes())?;
        }
        Ok(())
    }

    /// The base weights of the input and output embeddings under PEFT's keys, and whether each layer is
    /// adapted (its keys then carry `base_layer`).
    fn embedding_base_params(&self) -> Vec<(String, Tensor, bool)> {
        let layers: Vec<String> =
            [self.model.input_embedding(), self.model.output_embedding()].into_iter().flatten().collect();
        let mut adapted = BTreeSet::new();
        self.model.visit_layers(&mut |l| {
            if layers.iter().any(|n| n == l.name()) && !l.slots().is_empty() {
                adapted.insert(l.name().to_string());
            }
        });
        self.named_parameters()
            .into_iter()
            .filter_map(|(key, t)| {
                let rest = key.strip_prefix(PEFT_PREFIX)?;
                let module = layers.iter().find(|m| rest.starts_with(&format!("{m}.")))?;
                let is_base =
                    rest == format!("{module}.base_layer.weight") || rest == format!("{module}.weight");
                is_base.then(|| (key.clone(), t, adapted.contains(module)))
            })
            .collect()
    }

    /// What [`SaveOptions::save_embedding_layers`] adds to an adapter's file (PEFT's rules).
    fn embedding_layers_to_save(
        &self,
        config: &dyn AdapterConfig,
        option: Option<bool>,
    ) -> Result<Vec<(String, Tensor)>> {
        const NAMES: [&str; 2] = ["embed_tokens", "lm_head"];
        let targeted = match config.target_spec().target_modules {
            Some(TargetModules::List(v)) => v.iter().any(|t| NAMES.contains(&t.as_str())),
            Some(TargetModules::Regex(r)) => {
                let re = fancy_regex::Regex::new(&format!("^(?:{r})$"))
                    .map_err(|e| PeftError::Invalid(format!("target_modules regex: {e}")))?;
                let mut any = false;
                self.model.visit_layers(&mut |l| {
                    let last = l.name().rsplit('.').next().unwrap_or("");
                    any |= NAMES.contains(&last) && re.is_match(l.name()).unwrap_or(false);
                });
                any
            }
            None => false,
        };
        let save = match option {
            Some(v) => v,
            // Not for trainable tokens, whose point is a small file (the method, or LoRA's
            // `trainable_token_indices`).
            None => {
                targeted
                    && config.trainable_token_indices()?.is_none()
                    && config.common().peft_type != crate::trainable_tokens::TRAINABLE_TOKENS
            }
        };
        if !save {
            return Ok(Vec::new());
        }
        if self.model.input_embedding().is_none() {
            log::warn!(
                "Could not identify embedding layer(s) because the model declares no input embedding."
            );
            return Ok(Vec::new());
        }
        Ok(self
            .embedding_base_params()
            .into_iter()
            .filter(|(_, _, adapted)| !targeted || *adapted)
            .map(|(k, t, _)| (k, t))
            .collect())
    }

    /// The conversion of [`SaveOptions::convert_initial_adapter`].
    fn convert_initial(
        &self,
        config: &dyn AdapterConfig,
        trained: crate::config::NamedTensors,
        initial_dir: &Path,
    ) -> Result<crate::config::ConvertedAdapter> {
        let initial_config = config.config_for_initial_weights().ok_or_else(|| {
            crate::config::unsupported_option(
                &config.common().peft_type,
                "path_initial_model_for_weight_conversion",
                &serde_json::Value::String(initial_dir.display().to_string()),
                "this method has no conversion of mutated base weights",
            )
        })?;
        let weights = initial_dir.join(SAFETENSORS_WEIGHTS_NAME);
        let initial: BTreeMap<String, Tensor> =
            io::read_safetensors(&weights)?.into_iter().map(|t| (t.key, t.tensor)).collect();
        let converted = config.convert_for_original_base(trained, &initial)?;
        let text = crate::config::to_config_file_text(initial_config.as_ref());
        io::atomic_write(&initial_dir.join(CONFIG_NAME), text.as_bytes())?;
        Ok(converted)
    }

    /// PEFT's `prepare_model_for_compiled_hotswap(model, target_rank=…)`: pads every adapter's tensors
    /// to `target_rank` with zeros (outputs unchanged), once, so that [`PeftModel::hotswap_adapter`] can
    /// later swap in adapters of any rank up to it without reallocating. Saving still writes each adapter
    /// with its own rank.
    ///
    /// # Errors
    /// No adapter with ranks in the model, or a target below an adapter's rank.
    pub fn prepare_for_hotswap(&mut self, target_rank: i64) -> Result<()> {
        let mut found = false;
        self.model.visit_layers_mut(&mut |layer| {
            let (_, slots) = layer.parts_mut();
            let names: Vec<String> = slots.adapters().keys().cloned().collect();
            for n in names {
                if let Some(t) = slots.get_mut(&n) {
                    found |= t.pad_rank(target_rank)?;
                }
            }
            Ok(())
        })?;
        if !found {
            return Err(PeftError::Invalid(
                "No adapter layers found on the model, make sure to call `prepare_for_hotswap` after loading the \
                 first adapter"
                    .into(),
            ));
        }
        Ok(())
    }

    /// PEFT's `hotswap_adapter`: replaces the weights of the loaded adapter `adapter_name` in place with
    /// those of the adapter saved in `dir` (same method, same targeted layers; layers the new adapter does
    /// not target get zero weights), recomputing the scaling, without reallocating any tensor. Adapters of
    /// a higher rank than the loaded one need [`PeftModel::prepare_for_hotswap`] first. The adapter keeps
    /// its name; its config becomes the new one. Nothing changes if any check fails.
    ///
    /// # Errors
    /// [`PeftError::UnknownAdapter`]; [`PeftError::AdapterMerged`]; a config of another method or with
    /// options that change the output beyond the weights (PEFT's list); keys the loaded adapter does not
    /// have ([`PeftError::UnexpectedKeys`]); tensors larger than the allocated ones.
    pub fn hotswap_adapter(&mut self, dir: impl AsRef<Path>, adapter_name: &str) -> Result<()> {
        let dir = dir.as_ref();
        let old = self.configs.get(adapter_name).ok_or_else(|| self.unknown(adapter_name))?;
        let mut merged = false;
        self.model.visit_layers(&mut |l| merged |= l.slots().merged().iter().any(|m| m == adapter_name));
        if merged {
            return Err(PeftError::AdapterMerged { adapter: adapter_name.to_string() });
        }
        let mut warnings = Vec::new();
        let mut config = crate::registry::load_config(dir, &mut warnings)?;
        if config.common().peft_type != old.common().peft_type {
            return Err(PeftError::MixedPeftTypes {
                existing: old.common().peft_type.clone(),
                new: config.common().peft_type.clone(),
            });
        }
        old.check_hotswap_compatible(config.as_ref())?;
        if config.bias() != BiasMode::None {
            return Err(PeftError::Invalid(
                "hotswapping an adapter that trains base biases would overwrite the base model".into(),
            ));
        }
        // Where each checkpoint key lives: (module, tensor name relative to the layer).
        let mut places: BTreeMap<String, (String, String)> = BTreeMap::new();
        self.model.visit_layers(&mut |layer| {
            if let Some(tuner) = layer.slots().get(adapter_name) {
                for (rel, _) in tuner.named_tensors() {
                    let full = format!("{PEFT_PREFIX}{}.{rel}", layer.name());
                    places.insert(tuner.checkpoint_key(&full, adapter_name), (layer.name().to_string(), rel));
                }
            }
        });
        let path = dir.join(SAFETENSORS_WEIGHTS_NAME);
        // The new weights are read as views of the file's memory map and copied straight into the
        // adapter's tensors: one copy, no allocation.
        let model = &mut self.model;
        let config_ref = config.as_ref();
        io::with_tensor_views(&path, |views| {
            let mut per_layer: BTreeMap<String, BTreeMap<String, Tensor>> = BTreeMap::new();
            let mut unexpected = Vec::new();
            for (file_key, tensor) in views {
                // Model-level keys (`base_model.vera_A`) are kept as they are.
                let key = if file_key.starts_with(PEFT_PREFIX) || places.contains_key(file_key.as_str()) {
                    file_key.clone()
                } else {
                    format!("{PEFT_PREFIX}{file_key}")
                };
                match places.get(&key) {
                    Some((module, rel)) => {
                        per_layer.entry(module.clone()).or_default().insert(rel.clone(), tensor);
                    }
                    None => unexpected.push(file_key),
                }
            }
            if !unexpected.is_empty() {
                return Err(PeftError::UnexpectedKeys { path: path.clone(), keys: unexpected });
            }
            let empty = BTreeMap::new();
            let mut refused: Option<PeftError> = None;
            model.visit_layers(&mut |layer| {
                if let Some(tuner) = layer.slots().get(adapter_name) {
                    if let Err(e) = tuner.hotswap_check(per_layer.get(layer.name()).unwrap_or(&empty)) {
                        refused.get_or_insert(e);
                    }
                }
            });
            if let Some(e) = refused {
                return Err(e);
            }
            model.visit_layers_mut(&mut |layer| {
                let name = layer.name().to_string();
                let slots = layer.parts_mut().1;
                slots.clear_caches();
                if let Some(tuner) = slots.get_mut(adapter_name) {
                    tuner.hotswap(per_layer.get(&name).unwrap_or(&empty), config_ref)?;
                }
                Ok(())
            })
        })?;
        config.common_mut().inference_mode = old.common().inference_mode;
        self.configs.insert(adapter_name.to_string(), config);
        self.warnings.extend(warnings);
        Ok(())
    }

    /// PEFT's `load_adapter`: adds the adapter saved in `dir` under `options.adapter_name`, inactive
    /// (activate it with [`PeftModel::set_adapter`]). On error the model is unchanged.
    ///
    /// # Errors
    /// As [`PeftModel::from_pretrained`].
    pub fn load_adapter(&mut self, dir: impl AsRef<Path>, options: LoadOptions) -> Result<LoadReport> {
        let mut dir = dir.as_ref().to_path_buf();
        if let Some(sub) = &options.subfolder {
            dir = dir.join(sub);
        }
        let mut warnings = Vec::new();
        let mut config = registry::load_config(&dir, &mut warnings)?;
        config.common_mut().inference_mode = !options.is_trainable;
        let peft_type = config.common().peft_type.clone();
        let name = options.adapter_name.clone();
        let before = self.warnings.len();
        self.add_adapter_with(&name, config, options.adapter)?;
        let weights = dir.join(SAFETENSORS_WEIGHTS_NAME);
        let tensors_loaded = match self.load_weights(&name, &weights) {
            Ok(n) => n,
            Err(e) => {
                self.remove_layers(&name);
                self.configs.shift_remove(&name);
                self.warnings.truncate(before);
                return Err(e);
            }
        };
        let trainable = options.is_trainable;
        self.set_requires_grad(&[name.as_str()], trainable && self.active.contains(&name))?;
        for w in &warnings {
            self.warn(w.clone());
        }
        let warnings = self.warnings[before..].to_vec();
        log::info!(
            "loaded {peft_type} adapter `{name}` from {} ({tensors_loaded} tensors, {})",
            dir.display(),
            if trainable { "trainable" } else { "frozen for inference" }
        );
        Ok(LoadReport { adapter_name: name, peft_type, trainable, tensors_loaded, path: dir, warnings })
    }

    /// Copies the tensors of a weights file into the adapter `name`. Every adapter tensor must be present
    /// with its exact shape, and every tensor of the file must belong to the adapter.
    fn load_weights(&mut self, name: &str, path: &Path) -> Result<usize> {
        if !path.exists() {
            let legacy = path.with_file_name(keys::WEIGHTS_NAME);
            let hint = if legacy.exists() {
                " (found the legacy pickle `adapter_model.bin`; re-save the adapter with safetensors)"
            } else {
                ""
            };
            return Err(PeftError::Io {
                path: path.to_path_buf(),
                op: if hint.is_empty() { "read" } else { "read the safetensors weights" },
                source: std::io::Error::new(std::io::ErrorKind::NotFound, format!("no such file{hint}")),
            });
        }
        let mut padded = Vec::new();
        self.model.visit_layers(&mut |layer| {
            if let Some(t) = layer.slots().get(name) {
                let full: Vec<Vec<i64>> = t.named_tensors().iter().map(|(_, t)| t.size()).collect();
                let used: Vec<Vec<i64>> = t.state_tensors().iter().map(|(_, t)| t.size()).collect();
                if full != used {
                    padded.push(layer.name().to_string());
                }
            }
        });
        if !padded.is_empty() {
            return Err(PeftError::Invalid(format!(
                "adapter `{name}` is padded for hotswapping (layers {}); load weights into it with \
                 `hotswap_adapter`",
                abbreviate(&padded)
            )));
        }
        let file = io::read_safetensors(path)?;
        let file = self.configs[name]
            .read_file_tensors(file.into_iter().map(|lt| (lt.key, lt.tensor)).collect(), path)?
            .into_iter()
            .map(|(key, tensor)| io::LoadedTensor { key, tensor });
        let mut expected: BTreeMap<String, Tensor> = self.adapter_state_dict(name)?.into_iter().collect();
        // Base embedding weights PEFT saves with `save_embedding_layers` are loaded into the base, as PEFT does.
        let embeddings: BTreeMap<String, Tensor> =
            self.embedding_base_params().into_iter().map(|(k, t, _)| (k, t)).collect();
        let mut base_weights_loaded = Vec::new();
        // Check everything before writing anything, so a bad file leaves the adapter as it was.
        let mut unexpected = Vec::new();
        let mut pairs = Vec::new();
        for lt in file {
            // Files written by `inject_adapter_in_model` (transformers/diffusers integrations) lack the
            // `base_model.model.` prefix.
            // Model-level keys (`base_model.vera_A`) are kept as they are.
            let key = if lt.key.starts_with(PEFT_PREFIX) || expected.contains_key(&lt.key) {
                lt.key.clone()
            } else {
                format!("{PEFT_PREFIX}{}", lt.key)
            };
            let Some(dst) = expected.remove(&key).or_else(|| embeddings.get(&key).map(Tensor::shallow_clone))
            else {
                unexpected.push(lt.key);
                continue;
            };
            if embeddings.contains_key(&key) {
                base_weights_loaded.push(key.clone());
            }
            if dst.size() != lt.tensor.size() {
                return Err(PeftError::ShapeMismatch {
                    path: path.to_path_buf(),
                    key: lt.key,
                    expected: dst.size(),
                    found: lt.tensor.size(),
                });
            }
            pairs.push((dst, lt));
        }
        if !unexpected.is_empty() {
            return Err(PeftError::UnexpectedKeys { path: path.to_path_buf(), keys: unexpected });
        }
        if !expected.is_empty() {
            return Err(PeftError::MissingKeys {
                path: path.to_path_buf(),
                keys: expected.into_keys().collect(),
            });
        }
        let count = pairs.len();
        if !base_weights_loaded.is_empty() {
            self.warn(format!(
                "{}: loading base embedding weights saved with the adapter (save_embedding_layers): {}",
                path.display(),
                base_weights_loaded.join(", ")
            ));
        }
        for (mut dst, lt) in pairs {
            tch::no_grad(|| dst.f_copy_(&lt.tensor)).map_err(PeftError::torch(format!(
                "loading `{}` from {}",
                lt.key,
                path.display()
            )))?;
        }
        self.weights_changed(name);
        Ok(count)
    }

    /// Tells every layer of adapter `name` that its tensors were overwritten (caches derived from them
    /// are dropped).
    fn weights_changed(&mut self, name: &str) {
        let _ = self.model.visit_layers_mut(&mut |layer| {
            let slots = layer.parts_mut().1;
            slots.clear_caches();
            if let Some(t) = slots.get_mut(name) {
                t.weights_changed();
            }
            Ok(())
        });
    }

    /// Activated LoRA offsets for `input_ids` `(B, T)` (PEFT's `calculate_alora_offsets`): for each row
    /// whose adapter (the row's in `rows`, else the first active one) has `alora_invocation_tokens`, the
    /// number of trailing positions from the last occurrence of that sequence; `None` where it does not
    /// occur or the adapter is not an aLoRA. Pass them with
    /// [`ForwardCtx::with_alora_offsets`](crate::ForwardCtx::with_alora_offsets). Returns `None` when no
    /// row's adapter is an aLoRA (nothing to pass).
    ///
    /// # Errors
    /// Input ids that are not a 2-d integer tensor.
    pub fn alora_offsets(
        &self,
        input_ids: &Tensor,
        rows: Option<&crate::mixed::RowAdapters>,
    ) -> Result<Option<Vec<Option<i64>>>> {
        let active = self.active.first().cloned();
        let batch = input_ids.size().first().copied().unwrap_or(0) as usize;
        let per_row: Vec<Option<String>> = match rows {
            Some(r) => {
                r.positions().iter().map(|&p| (p >= 0).then(|| r.names()[p as usize].clone())).collect()
            }
            None => vec![active; batch],
        };
        let relevant = per_row
            .iter()
            .flatten()
            .any(|n| self.configs.get(n).is_some_and(|c| c.alora_invocation_tokens().is_some()));
        if !relevant {
            return Ok(None);
        }
        let ids: Vec<Vec<i64>> =
            Vec::<Vec<i64>>::try_from(&input_ids.to_device(tch::Device::Cpu).to_kind(tch::Kind::Int64))
                .map_err(PeftError::torch("reading input ids for aLoRA offsets"))?;
        Ok(Some(
            per_row
                .iter()
                .zip(&ids)
                .map(|(name, seq)| {
                    let tokens = name
                        .as_ref()
                        .and_then(|n| self.configs.get(n))
                        .and_then(|c| c.alora_invocation_tokens())?;
                    let start = (0..seq.len()).rev().find(|&i| seq[i..].starts_with(tokens))?;
                    let offset = (seq.len() - start) as i64;
                    (offset > 0).then_some(offset)
                })
                .collect(),
        ))
    }

    /// Tells every layer which adapters are active (after `self.active` or the layers changed).
    /// Asks every layer whether it can run `names` together ([`TunerLayer::check_active`]).
    fn check_active(&self, names: &[String]) -> Result<()> {
        let mut result = Ok(());
        self.model.visit_layers(&mut |layer| {
            let adapters = layer.slots().adapters();
            let active: Vec<(&str, &dyn TunerLayer)> = names
                .iter()
                .filter_map(|n| adapters.get_key_value(n).map(|(k, t)| (k.as_str(), t.as_ref())))
                .collect();
            for (_, tuner) in &active {
                if result.is_ok() {
                    result = tuner.check_active(&active);
                }
            }
        });
        result
    }

    fn sync_active(&mut self) -> Result<()> {
        let active = self.active.clone();
        self.model.visit_layers_mut(&mut |layer| {
            layer.parts_mut().1.set_active(&active);
            Ok(())
        })
    }

    /// Sets `hook` on the layers named in `modules` (PyTorch's `register_forward_hook`), or removes the
    /// hooks of those layers with `None`. Every later forward pass calls it with `(module, input, output)`.
    ///
    /// # Errors
    /// A name that is no adaptable layer of the model.
    pub fn set_forward_hook(
        &mut self,
        modules: &[String],
        hook: Option<crate::layer::ForwardHook>,
    ) -> Result<()> {
        crate::adaptable::set_forward_hook(&mut self.model, modules, hook)
    }

    /// The per-row adapters of a mixed batch (PEFT's `adapter_names=[…]`): `per_row[i]` names the adapter
    /// of row `i`, [`crate::mixed::BASE`] (`"__base__"`) for the base model. Pass the result with
    /// [`ForwardCtx::with_rows`](crate::ForwardCtx::with_rows) to the model's forward. Any adapter may be
    /// named, active or not; disabled adapters give the base output for every row.
    ///
    /// # Errors
    /// [`PeftError::UnknownAdapter`]; [`PeftError::Invalid`] while adapters are merged (as PEFT).
    pub fn row_adapters(&self, per_row: &[&str]) -> Result<crate::mixed::RowAdapters> {
        for n in per_row {
            if *n != crate::mixed::BASE && !self.configs.contains_key(*n) {
                return Err(self.unknown(n));
            }
        }
        if let Some((name, config)) = self.configs.iter().find(|(_, c)| !c.supports_mixed_batches()) {
            return Err(PeftError::Invalid(format!(
                "mixed batches (a different adapter per row) are not supported for {} adapters (`{name}`); PEFT \
                 ignores `adapter_names` for them and runs every row with the active adapters",
                config.common().peft_type
            )));
        }
        if self.is_merged() {
            return Err(PeftError::Invalid(
                "Cannot pass `adapter_names` when there are merged adapters, please call `unmerge_adapter` first."
                    .into(),
            ));
        }
        Ok(crate::mixed::RowAdapters::new(per_row, self.adapter_vs.device()))
    }

    /// Every parameter under PEFT's in-memory name, in the order PEFT's `named_parameters()` lists the
    /// adapter tensors (layer by layer, `lora_A` before `lora_B`), then the base parameters:
    /// `base_model.model.<module>.lora_A.<adapter>.weight`, `base_model.model.<module>.base_layer.weight`
    /// for adapted layers, `base_model.model.<name>` otherwise.
    pub fn named_parameters(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        let mut adapted = BTreeSet::new();
        self.model.visit_layers(&mut |layer| {
            let slots = layer.slots();
            if slots.adapters().values().any(|t| t.peft_type() != MODULES_TO_SAVE) {
                adapted.insert(layer.name().to_string());
            }
            for tuner in slots.adapters().values() {
                for (rel, t) in tuner.named_tensors() {
                    out.push((format!("{PEFT_PREFIX}{}.{rel}", layer.name()), t));
                }
            }
        });
        for (name, t) in &self.base_params {
            let key = match name.rsplit_once('.') {
                Some((module, p)) if adapted.contains(module) => {
                    format!("{PEFT_PREFIX}{module}.base_layer.{p}")
                }
                _ => format!("{PEFT_PREFIX}{name}"),
            };
            out.push((key, t.shallow_clone()));
        }
        out
    }

    /// The parameters that train (`requires_grad`), with [`PeftModel::named_parameters`]'s names.
    pub fn named_trainable_parameters(&self) -> Vec<(String, Tensor)> {
        self.named_parameters().into_iter().filter(|(_, t)| t.requires_grad()).collect()
    }

    /// Copies the tensors of a weights file into the existing adapter `name` (a checkpoint resume or a
    /// manual reload), with the same strict key and shape checks as loading.
    ///
    /// # Errors
    /// [`PeftError::UnknownAdapter`], or the load errors of [`PeftModel::load_adapter`].
    pub fn load_adapter_weights(&mut self, name: &str, weights: &Path) -> Result<usize> {
        if !self.configs.contains_key(name) {
            return Err(self.unknown(name));
        }
        self.load_weights(name, weights)
    }

    /// `(trainable, total)` parameter counts (PEFT's `get_nb_trainable_parameters`).
    pub fn num_parameters(&self) -> (i64, i64) {
        let mut trainable = 0i64;
        let mut total = 0i64;
        let mut buffers = std::collections::HashSet::new();
        self.model.visit_layers(&mut |l| {
            for (_, tuner) in l.slots().adapters() {
                for (n, t) in tuner.named_tensors() {
                    if tuner.is_buffer(&n) {
                        buffers.insert(t.data_ptr() as usize);
                    }
                }
            }
        });
        // Quantized linears keep an empty placeholder in the var store; count their weights as PEFT does
        // (a packed 4-bit tensor counts twice its bytes, an int8 one its elements: the original numel).
        self.model.visit_layers(&mut |l| {
            if let Some(q) =
                l.base().as_any().downcast_ref::<crate::nn::LinearBase>().and_then(|b| b.quantized.as_ref())
            {
                total += q.in_features() * q.out_features();
            }
        });
        let base = self.base_params.iter().map(|(_, t)| t.shallow_clone());
        let adapters = self.adapter_vs.variables().into_values();
        for t in base.chain(adapters).filter(|t| !buffers.contains(&(t.data_ptr() as usize))) {
            let n = t.numel() as i64;
            total += n;
            if t.requires_grad() {
                trainable += n;
            }
        }
        (trainable, total)
    }

    /// PEFT's `print_trainable_parameters` line:
    /// `trainable params: 1,234 || all params: 5,678 || trainable%: 21.7330`.
    pub fn trainable_parameters_line(&self) -> String {
        let (t, a) = self.num_parameters();
        let pct = if a > 0 { 100.0 * t as f64 / a as f64 } else { 0.0 };
        format!("trainable params: {} || all params: {} || trainable%: {pct:.4}", thousands(t), thousands(a))
    }

    /// Prints [`PeftModel::trainable_parameters_line`].
    #[allow(clippy::print_stdout)]
    pub fn print_trainable_parameters(&self) {
        println!("{}", self.trainable_parameters_line());
    }

    /// The modules an adapter is attached to, in module order.
    pub fn targeted_modules(&self, adapter: &str) -> Vec<String> {
        let mut v = Vec::new();
        self.model.visit_layers(&mut |l| {
            if l.slots().get(adapter).is_some() {
                v.push(l.name().to_string());
            }
        });
        v
    }

    /// PEFT's `get_layer_status`: one entry per adapted layer.
    pub fn layer_status(&self) -> Vec<LayerStatus> {
        let mut out = Vec::new();
        self.model.visit_layers(&mut |l| {
            let slots = l.slots();
            if slots.is_empty() {
                return;
            }
            let mut requires_grad = BTreeMap::new();
            let mut devices = BTreeMap::new();
            let mut module_type = String::new();
            let mut status_name = l.name().to_string();
            for (name, tuner) in slots.adapters() {
                let flags: BTreeSet<bool> = tuner
                    .named_tensors()
                    .iter()
                    .filter(|(n, _)| !tuner.is_buffer(n))
                    .map(|(_, t)| t.requires_grad())
                    .collect();
                let rg = match (flags.contains(&true), flags.contains(&false)) {
                    (true, false) => RequiresGrad::True,
                    (false, _) => RequiresGrad::False,
                    (true, true) => RequiresGrad::Irregular,
                };
                requires_grad.insert(name.clone(), rg);
                let devs: BTreeSet<String> =
                    tuner.named_tensors().iter().map(|(_, t)| device_type(t.device())).collect();
                devices.entry(name.clone()).or_insert_with(BTreeSet::new).extend(devs);
                for (other, device) in tuner.status_shared_devices() {
                    devices.entry(other).or_insert_with(BTreeSet::new).insert(device_type(device));
                }
                if module_type.is_empty() {
                    module_type = tuner.describe().split('(').next().unwrap_or_default().to_string();
                    if let Some(sub) = tuner.status_submodule() {
                        status_name = format!("{status_name}.{sub}");
                    }
                }
            }
            out.push(LayerStatus {
                name: status_name,
                module_type,
                enabled: !slots.disabled(),
                // The model-wide active adapters, as PEFT's layers report them.
                active_adapters: slots.active().to_vec(),
                merged_adapters: slots.merged().to_vec(),
                requires_grad,
                available_adapters: {
                    let mut v: Vec<String> = slots.adapters().keys().cloned().collect();
                    v.sort();
                    v
                },
                devices: devices.into_iter().map(|(k, v)| (k, v.into_iter().collect())).collect(),
                quantization_backend: None,
            });
        });
        out
    }

    /// PEFT's `get_model_status`: the layer statuses collapsed to one value each (or `Irregular`).
    pub fn model_status(&self) -> ModelStatus {
        let layers = self.layer_status();
        let (trainable_params, total_params) = self.num_parameters();
        let enabled = Tristate::collapse(layers.iter().map(|l| l.enabled));
        let mut merged_sets: BTreeSet<Vec<String>> = BTreeSet::new();
        let mut requires_grad: BTreeMap<String, RequiresGrad> = BTreeMap::new();
        let mut devices: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for l in &layers {
            let mut m = l.merged_adapters.clone();
            m.sort();
            merged_sets.insert(m);
            for (a, rg) in &l.requires_grad {
                requires_grad
                    .entry(a.clone())
                    .and_modify(|cur| {
                        if cur != rg {
                            *cur = RequiresGrad::Irregular
                        }
                    })
                    .or_insert(*rg);
            }
            for (a, ds) in &l.devices {
                devices.entry(a.clone()).or_default().extend(ds.iter().cloned());
            }
        }
        // An adapter counts as merged only when it is merged on every layer that has it.
        let merged_adapters = if merged_sets.len() <= 1 {
            Some(merged_sets.into_iter().next().unwrap_or_default())
        } else {
            let names = self.adapter_names();
            let fully: Vec<String> = names
                .into_iter()
                .filter(|a| {
                    layers
                        .iter()
                        .filter(|l| l.available_adapters.contains(a))
                        .all(|l| l.merged_adapters.contains(a))
                })
                .collect();
            let partially = layers.iter().any(|l| l.merged_adapters.iter().any(|m| !fully.contains(m)));
            if partially {
                None
            } else {
                Some(fully)
            }
        };
        let peft_types =
            self.configs.iter().map(|(n, c)| (n.clone(), c.common().peft_type.clone())).collect();
        let adapter_model_type = self
            .configs
            .first()
            .map(|(_, c)| {
                let t = &c.common().peft_type;
                crate::registry::tuner_class(t).map_or_else(|| format!("{t}Model"), str::to_string)
            })
            .unwrap_or_default();
        ModelStatus {
            base_model_type: std::any::type_name::<M>().rsplit("::").next().unwrap_or_default().to_string(),
            adapter_model_type,
            peft_types,
            trainable_params,
            total_params,
            num_adapter_layers: layers.len(),
            enabled,
            active_adapters: self.active.clone(),
            merged_adapters,
            requires_grad,
            available_adapters: self.adapter_names(),
            devices: devices.into_iter().map(|(k, v)| (k, v.into_iter().collect())).collect(),
            quantization_backend: None,
        }
    }
}

/// PEFT's class-name casing for the model type (`LORA` → `Lora`, as in `LoraModel`).
fn device_type(d: tch::Device) -> String {
    match d {
        tch::Device::Cpu => "cpu".into(),
        tch::Device::Cuda(_) => "cuda".into(),
        tch::Device::Mps => "mps".into(),
        tch::Device::Vulkan => "vulkan".into(),
    }
}

fn thousands(n: i64) -> String {
    let s = n.abs().to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}

/// Expands `all-linear` and matches the config against the model's layers, as `add_adapter` will.
fn resolve_targets<M: Adaptable>(
    model: &M,
    config: &mut dyn AdapterConfig,
    adapter: &str,
    options: AdapterOptions,
) -> Result<MatchReport> {
    let names = layer_names(model);
    config.prepare_for_model(model.model_type().as_deref())?;
    if config.target_spec().target_modules.is_some_and(TargetModules::is_all_linear) {
        let output = model.output_embedding();
        let mut linear = Vec::new();
        model.visit_layers(&mut |l| {
            if l.base().as_linear().is_some() && Some(l.name()) != output.as_deref() {
                linear.push(l.name().to_string());
            }
        });
        config.set_target_modules(TargetModules::List(linear));
    }
    let spec = config.target_spec();
    if spec.target_modules.is_none() && config.adapts_input_embedding() {
        // PEFT's `_get_input_embeddings_name(model, "embed_tokens")`, kept as PEFT keeps it: a string.
        let input = model.input_embedding().unwrap_or_else(|| "embed_tokens".to_string());
        config.set_target_modules(TargetModules::Regex(input));
    }
    let spec = config.target_spec();
    if spec.target_modules.is_none() && !spec.has_target_parameters {
        // PEFT's per-architecture defaults (e.g. q_proj/v_proj for llama).
        let model_type = model.model_type();
        match model_type.as_deref().and_then(|t| config.default_target_modules(t)) {
            Some(defaults) => config.set_target_modules(defaults),
            None => {
                return Err(PeftError::Invalid(format!(
                    "adapter `{adapter}`: `target_modules` is not set and there are no default targets for \
                     model_type {}; name the modules to adapt (adaptable modules are: {})",
                    model_type
                        .as_deref()
                        .map_or("(none: not a transformers-style model)".to_string(), |t| format!("{t:?}")),
                    abbreviate(&names)
                )));
            }
        }
    }
    // PEFT condenses long explicit lists to distinguishing suffixes (and saves them so).
    if let Some(TargetModules::List(list)) = config.target_spec().target_modules {
        if list.len() >= peft_config::targets::MIN_TARGET_MODULES_FOR_OPTIMIZATION
            && config.common().peft_type != "IA3"
        {
            let list = list.clone();
            let mut all: BTreeSet<String> = BTreeSet::new();
            for n in &names {
                let parts: Vec<&str> = n.split('.').collect();
                for i in 1..=parts.len() {
                    all.insert(parts[..i].join("."));
                }
            }
            let dotted: Vec<String> = list.iter().map(|t| format!(".{t}")).collect();
            let others: Vec<String> = all
                .into_iter()
                .filter(|n| !list.contains(n) && !dotted.iter().any(|d| n.ends_with(d.as_str())))
                .collect();
            let condensed = peft_config::targets::find_minimal_target_modules(&list, &others);
            if condensed.len() < list.len() {
                config.set_target_modules(TargetModules::List(condensed.into_iter().collect()));
            }
        }
    }
    let spec = config.target_spec();
    let matcher = TargetMatcher::new(&spec)?;
    let report = matcher.report(names.iter().map(String::as_str));
    if matcher.is_dummy() {
        return Ok(report);
    }
    let nothing = report.targeted.is_empty() && !report.target_parameters_only;
    if nothing || (!report.unmatched_entries.is_empty() && !options.allow_unmatched_targets) {
        let entries = if report.unmatched_entries.is_empty() {
            match spec.target_modules {
                Some(TargetModules::List(v)) => v.clone(),
                Some(TargetModules::Regex(r)) => vec![r.clone()],
                None => vec![],
            }
        } else {
            report.unmatched_entries.clone()
        };
        return Err(PeftError::NoMatchingTargets {
            adapter: adapter.to_string(),
            entries,
            all_excluded: report.targeted.is_empty()
                && !report.excluded.is_empty()
                && report.unmatched.is_empty(),
            available: abbreviate(&names),
        });
    }
    Ok(report)
}

/// The dry run of `add_adapter`: which modules a config would adapt on `model`, which entries match
/// nothing and which excludes are unused — without changing anything.
///
/// # Errors
/// Invalid regexes or option combinations in the config.
pub fn inspect_targets<M: Adaptable>(model: &M, config: &dyn AdapterConfig) -> Result<MatchReport> {
    let mut config = config.clone_box();
    match resolve_targets(
        model,
        config.as_mut(),
        "dry-run",
        AdapterOptions { allow_unmatched_targets: true, ..Default::default() },
    ) {
        Ok(r) => Ok(r),
        Err(PeftError::NoMatchingTargets { .. }) => {
            let spec = config.target_spec();
            let matcher = TargetMatcher::new(&spec)?;
            let names = layer_names(model);
            Ok(matcher.report(names.iter().map(String::as_str)))
        }
        Err(e) => Err(e),
    }
}

/// Guard returned by [`PeftModel::disable_adapters`]: adapters are off until it is dropped. It derefs to
/// the wrapped model for forwards.
pub struct AdaptersDisabled<'a, M: Adaptable> {
    peft: &'a mut PeftModel<M>,
    was_disabled: bool,
}

impl<M: Adaptable> fmt::Debug for AdaptersDisabled<'_, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdaptersDisabled").field("was_disabled", &self.was_disabled).finish_non_exhaustive()
    }
}

impl<M: Adaptable> std::ops::Deref for AdaptersDisabled<'_, M> {
    type Target = M;
    fn deref(&self) -> &M {
        &self.peft.model
    }
}

impl<M: Adaptable> Drop for AdaptersDisabled<'_, M> {
    fn drop(&mut self) {
        if !self.was_disabled {
            if let Err(e) = self.peft.enable_adapter_layers() {
                log::error!("re-enabling adapters failed: {e}");
            }
        }
    }
}

impl<M: Adaptable + ModuleT> ModuleT for PeftModel<M> {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        self.model.forward_t(xs, train)
    }
}

/// The var-store path of `module`'s adapter tensors: `base_model.model.<module>` (PEFT's in-memory names).
fn module_path<'a>(root: &tch::nn::Path<'a>, module: &str) -> tch::nn::Path<'a> {
    module.split('.').fold(root / "base_model" / "model", |path, seg| &path / seg)
}
