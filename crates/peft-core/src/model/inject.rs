//! Injection: adding an adapter to the targeted layers, with modules_to_save and trainable tokens, and
//! removing or recreating its layers.

use super::{abbreviate, module_path, set_requires_grad, AdapterOptions, PeftModel};
use crate::adaptable::{layer_names, Adaptable};
use crate::config::{AdapterConfig, BiasMode, LayerInit};
use crate::error::{PeftError, Result};
use crate::layer::{AdaptableLayer, TunerLayer};
use crate::modules_to_save::{self, ModulesToSave};
use peft_config::keys::{self, PEFT_PREFIX};
use peft_config::{MatchReport, TargetMatcher, TargetModules, TaskType};
use std::collections::BTreeSet;

impl<M: Adaptable> PeftModel<M> {
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
        layer_side(config.as_mut())?;
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
        if let Some(map) = config.model_options()?.layer_replication {
            // PEFT replicates in `_prepare_model` for every adapter; once is what is meant.
            match &self.replicated {
                Some(done) if *done == map => {}
                Some(done) => {
                    return Err(PeftError::Invalid(format!(
                        "the model's layers are already replicated as {done:?}; adapter `{name}` asks for {map:?}"
                    )))
                }
                None => {
                    self.model.mutate().replicate_layers(&map)?;
                    self.replicated = Some(map);
                }
            }
        }
        let report = resolve_targets(&*self.model, config.as_mut(), name, options)?;
        for entry in &report.unused_excludes {
            self.warn(format!("adapter `{name}`: exclude_modules entry {entry:?} excluded nothing"));
        }
        let targeted: BTreeSet<String> = report.targeted.into_iter().collect();
        // `target_parameters`: their layers are in `targeted` too, and get their adapters after every
        // targeted module, as PEFT's `_inject_parameters` runs after the module loop (same-seed inits
        // draw in that order).
        let params: std::collections::BTreeMap<String, crate::param::ParamTarget> =
            crate::param::match_parameters(&*self.model, config.target_parameters())?.into_iter().collect();
        let params_wanted = !params.is_empty();
        let mut target_layers = Vec::new();
        self.model.visit_layers(&mut |l| {
            if targeted.contains(l.name()) {
                target_layers.push(crate::config::TargetLayer::of(l.name(), l.base()));
            }
        });
        let existing: Vec<(&str, &dyn AdapterConfig)> =
            self.configs.iter().map(|(n, c)| (n.as_str(), c.as_ref())).collect();
        config.before_layers(name, &target_layers, &existing)?;
        if config.reads_target_weights() {
            let mut weights = Vec::new();
            self.model.visit_layers(&mut |l| {
                if targeted.contains(l.name()) {
                    weights.push(crate::config::TargetWeight::of(l.name(), l.base()));
                }
            });
            config.before_layers_with_weights(name, &weights, &existing)?;
        }
        let trainable = !config.common().inference_mode;
        let mut warnings = Vec::new();
        let vs_root = self.adapter_vs.root();
        let mut create = |layer: &mut dyn AdaptableLayer, parameter_pass: bool| {
            let parameter = params.get(layer.name());
            if !targeted.contains(layer.name()) || parameter.is_some() != parameter_pass {
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
                parameter,
            };
            let tuner = layer_side(&mut *config)?.create_layer(&mut init)?;
            for (_, t) in tuner.named_tensors() {
                set_requires_grad(&t, false);
            }
            slots.insert(name.to_string(), tuner);
            Ok(())
        };
        let result = self.model.mutate().visit_layers_mut(&mut |layer| create(layer, false));
        // The second pass (parameter targets, after every module) only when there are any.
        let result = match params_wanted {
            true => {
                result.and_then(|()| self.model.mutate().visit_layers_mut(&mut |layer| create(layer, true)))
            }
            false => result,
        };
        self.warnings.extend(warnings);
        let result = result
            .and_then(|()| {
                if config.model_options()?.adapts_input_embedding {
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
    pub(super) fn attach_modules_to_save(&mut self, name: &str, config: &dyn AdapterConfig) -> Result<()> {
        let entries: Vec<String> =
            config.target_spec().modules_to_save.map(<[String]>::to_vec).unwrap_or_default();
        if entries.is_empty() {
            return Ok(());
        }
        let vs_root = self.adapter_vs.root();
        let mut containers = BTreeSet::new();
        let mut covered = BTreeSet::new();
        self.model.mutate().visit_layers_mut(&mut |layer| {
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
        // PEFT's task classes add every head name they know (`classifier`, `score`), so one entry matching
        // nothing is normal; only a list matching nothing at all is worth a warning.
        let unmatched: Vec<&String> =
            entries.iter().filter(|e| !containers.iter().any(|c| c.ends_with(e.as_str()))).collect();
        if unmatched.len() == entries.len() {
            self.warn(format!("adapter `{name}`: modules_to_save {entries:?} matches no adaptable module"));
        } else if !unmatched.is_empty() {
            log::debug!("adapter `{name}`: modules_to_save entries {unmatched:?} match no module");
        }
        Ok(())
    }

    /// Methods that adapt the input embedding (trainable tokens): every module tied to the embedding gets
    /// the embedding adapter's tied copy, replacing one it got as a target itself (PEFT's
    /// `TrainableTokensModel.inject_adapter`).
    pub(super) fn tie_input_embedding_adapter(&mut self, name: &str) -> Result<()> {
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
        self.model.mutate().visit_layers_mut(&mut |layer| {
            if let Some(i) = copies.iter().position(|(m, _)| m == layer.name()) {
                let (_, copy) = copies.swap_remove(i);
                layer.parts_mut().1.insert(name.to_string(), copy);
            }
            Ok(())
        })
    }

    /// `trainable_token_indices`: trained embedding rows for `name`, and tied heads reading them (PEFT's
    /// `set_additional_trainable_modules`).
    pub(super) fn attach_trainable_tokens(&mut self, name: &str, config: &dyn AdapterConfig) -> Result<()> {
        use crate::trainable_tokens::{TokenIndices, TrainableTokens};
        let options = config.model_options()?;
        let Some(indices) = options.trainable_token_indices else {
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
        let ensure = options.ensure_weight_tying;
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
            self.model.mutate().visit_layers_mut(&mut |layer| {
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
            self.model.mutate().visit_layers_mut(&mut |layer| {
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

    /// Removes `name` from every layer and its tensors from the adapter var store.
    pub(super) fn remove_layers(&mut self, name: &str) {
        self.remove_from(name, None);
    }

    /// Removes adapter `name` from every layer, or only from `module`, with its tensors.
    pub(super) fn remove_from(&mut self, name: &str, module: Option<&str>) {
        let mut var_names = BTreeSet::new();
        let _ = self.model.mutate().visit_layers_mut(&mut |layer| {
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
        let parameter = crate::param::match_parameters(&*self.model, config.target_parameters())?
            .into_iter()
            .find_map(|(layer, p)| (layer == module).then_some(p));
        let trainable = !config.common().inference_mode;
        let vs_root = self.adapter_vs.root();
        let mut warnings = Vec::new();
        let active = self.active.clone();
        self.model.mutate().visit_layers_mut(&mut |layer| {
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
                parameter: parameter.as_ref(),
            };
            let tuner = layer_side(&mut *config)?.create_layer(&mut init)?;
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
}

/// Expands `all-linear` and matches the config against the model's layers, as `add_adapter` will.
pub(super) fn resolve_targets<M: Adaptable>(
    model: &M,
    config: &mut dyn AdapterConfig,
    adapter: &str,
    options: AdapterOptions,
) -> Result<MatchReport> {
    // Parameter layers are no modules to PEFT: `target_parameters` selects them, below.
    let mut names = Vec::new();
    model.visit_layers(&mut |l| {
        if !crate::param::is_param_layer(l) {
            names.push(l.name().to_string());
        }
    });
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
    let needs = config.model_options()?;
    if spec.target_modules.is_none() && needs.adapts_input_embedding {
        // PEFT's `_get_input_embeddings_name(model, "embed_tokens")`, kept as PEFT keeps it: a string.
        let input = model.input_embedding().unwrap_or_else(|| "embed_tokens".to_string());
        config.set_target_modules(TargetModules::Regex(input));
    }
    let spec = config.target_spec();
    if spec.target_modules.is_none() {
        // PEFT's per-architecture defaults (e.g. q_proj/v_proj for llama), taken even beside
        // `target_parameters` (`target_modules=[]` targets no module).
        let model_type = model.model_type();
        match model_type.as_deref().and_then(|t| config.default_target_modules(t)) {
            Some(defaults) => config.set_target_modules(defaults),
            None if spec.has_target_parameters => {}
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
            && needs.condense_target_modules
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
    let mut report = matcher.report(names.iter().map(String::as_str));
    let params = crate::param::match_parameters(model, config.target_parameters())?;
    check_parameter_targets(model, config.target_parameters(), &params, &report.targeted, adapter, options)?;
    if matcher.is_dummy() {
        return Ok(report);
    }
    let nothing = report.targeted.is_empty() && params.is_empty();
    report.targeted.extend(params.into_iter().map(|(layer, _)| layer));
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

/// PEFT's refusals around `target_parameters`: a parameter of a layer that `target_modules` adapts
/// already, and (stricter than PEFT's warning, as for `target_modules`) entries that match no parameter.
fn check_parameter_targets<M: Adaptable>(
    model: &M,
    entries: &[String],
    params: &[(String, crate::param::ParamTarget)],
    modules: &[String],
    adapter: &str,
    options: AdapterOptions,
) -> Result<()> {
    if let Some((layer, _)) = params.iter().find(|(l, _)| modules.contains(l)) {
        let mut class = "";
        model.visit_layers(&mut |l| {
            if l.name() == layer {
                class = l.base().kind();
            }
        });
        return Err(PeftError::Invalid(format!(
            "Trying to wrap an `nn.Parameter` of layer '{layer}' of type {class}, which is not a valid target. \
             Make sure that this layer is not also targeted with `target_modules`. For some models, PEFT will do \
             this automatically, try setting `target_modules=[]` to prevent it."
        )));
    }
    let unmatched: Vec<String> = entries
        .iter()
        .filter(|t| !params.iter().any(|(_, p)| p.key == **t || p.key.ends_with(&format!(".{t}"))))
        .cloned()
        .collect();
    if !unmatched.is_empty() && !options.allow_unmatched_targets {
        let mut available = Vec::new();
        model.visit_layers(&mut |l| {
            if crate::param::is_param_layer(l) {
                available.push(l.name().to_string());
            }
        });
        return Err(PeftError::Invalid(format!(
            "adapter `{adapter}`: target_parameters entries {unmatched:?} match no parameter (adaptable \
             parameters: {})",
            if available.is_empty() {
                "none besides layer weights".to_string()
            } else {
                abbreviate(&available)
            }
        )));
    }
    Ok(())
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

/// The config's layer side, or the refusal of a config that adapts no layer.
fn layer_side(config: &mut dyn AdapterConfig) -> Result<&mut dyn crate::config::LayerMethod> {
    let peft_type = config.common().peft_type.clone();
    config.layer_method().ok_or_else(|| {
        PeftError::Invalid(format!("{peft_type} adapts no layer: `PeftModel` holds only layer methods"))
    })
}
