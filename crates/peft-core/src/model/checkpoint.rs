//! Checkpoints: the adapter state dict, `save_pretrained` (with embedding layers and initial-weight
//! conversion) and loading adapter files.

use super::{abbreviate, LoadOptions, LoadReport, PeftModel, SaveOptions};
use crate::adaptable::Adaptable;
use crate::config::AdapterConfig;
use crate::error::{PeftError, Result};
use crate::io;
use crate::registry;
use peft_config::keys::{self, CONFIG_NAME, DEFAULT_ADAPTER_NAME, PEFT_PREFIX, SAFETENSORS_WEIGHTS_NAME};
use peft_config::TargetModules;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use tch::Tensor;

impl<M: Adaptable> PeftModel<M> {
    /// The adapter's tensors under their checkpoint keys (the content of `adapter_model.safetensors`).
    ///
    /// # Errors
    /// [`PeftError::UnknownAdapter`].
    pub fn adapter_state_dict(&self, adapter: &str) -> Result<Vec<(String, Tensor)>> {
        let config = self.configs.get(adapter).ok_or_else(|| self.unknown(adapter))?;
        let mut out = self.adapter_tensors(adapter)?;
        out.extend(self.bias_params(adapter, config.bias()));
        Ok(out)
    }

    /// The adapter's own tensors under their checkpoint keys: its file without the base biases.
    fn adapter_tensors(&self, adapter: &str) -> Result<Vec<(String, Tensor)>> {
        let mut out: Vec<(String, Tensor)> = Vec::new();
        let index = self.model.index();
        if index.adapter(adapter).all(|(_, entry)| entry.state.is_some()) {
            for (_, entry) in index.adapter(adapter) {
                let state = entry.state.iter().flatten();
                out.extend(state.map(|(k, t)| (k.clone(), t.shallow_clone())));
            }
        } else {
            // Some layer computes its saved tensors: ask every layer now.
            self.model.visit_layers(&mut |layer| {
                if let Some(tuner) = layer.slots().get(adapter) {
                    for (rel, t) in tuner.state_tensors() {
                        let full = format!("{PEFT_PREFIX}{}.{rel}", layer.name());
                        out.push((tuner.checkpoint_key(&full, adapter), t));
                    }
                }
            });
        }
        Ok(out)
    }

    /// PEFT's `save_pretrained`: each adapter goes to `dir` (the one named `default`) or `dir/<name>`, as
    /// `adapter_config.json` (with `inference_mode: true`) and `adapter_model.safetensors` with PEFT's
    /// keys and `{"format": "pt"}` metadata. The whole save replaces `dir` in one step
    /// ([`crate::durable::StagedDir`]): a crash leaves the previous adapters or the new ones, never new
    /// weights beside an old config. What else `dir` holds is kept.
    ///
    /// # Errors
    /// [`PeftError::UnknownAdapter`] for a selected adapter that does not exist, [`PeftError::Io`].
    pub fn save_pretrained(&self, dir: impl AsRef<Path>, options: &SaveOptions) -> Result<()> {
        let names = self.adapters_to_save(options)?;
        let mut stage = crate::durable::StagedDir::new(dir.as_ref(), true)?;
        self.write_pretrained(&mut stage, &names, options)?;
        stage.commit()
    }

    fn adapters_to_save(&self, options: &SaveOptions) -> Result<Vec<String>> {
        match &options.selected_adapters {
            Some(sel) => {
                for n in sel {
                    if !self.configs.contains_key(n) {
                        return Err(self.unknown(n));
                    }
                }
                Ok(sel.clone())
            }
            None => Ok(self.adapter_names()),
        }
    }

    /// [`PeftModel::save_pretrained`] into a staged directory, for writers that add their own files to the
    /// same step (the trainer's checkpoints add the optimizer and trainer state).
    ///
    /// # Errors
    /// As [`PeftModel::save_pretrained`].
    pub fn save_pretrained_staged(
        &self,
        stage: &mut crate::durable::StagedDir,
        options: &SaveOptions,
    ) -> Result<()> {
        let names = self.adapters_to_save(options)?;
        self.write_pretrained(stage, &names, options)
    }

    fn write_pretrained(
        &self,
        stage: &mut crate::durable::StagedDir,
        names: &[String],
        options: &SaveOptions,
    ) -> Result<()> {
        for name in names {
            let rel = if name == DEFAULT_ADAPTER_NAME { PathBuf::new() } else { PathBuf::from(name) };
            let mut tensors = self.adapter_state_dict(name)?;
            tensors.extend(
                self.embedding_layers_to_save(self.configs[name].as_ref(), options.save_embedding_layers)?,
            );
            let mut config = self.configs[name].clone_box();
            if let Some(initial_dir) = &options.convert_initial_adapter {
                let (converted, converted_config) =
                    self.convert_initial(config.as_ref(), tensors, initial_dir)?;
                tensors = converted;
                config = converted_config;
            }
            let tensors = config.to_file_tensors(tensors)?;
            let weights = io::safetensors_bytes(&tensors).map_err(|e| match e {
                PeftError::Invalid(m) => PeftError::Invalid(format!(
                    "{}: {m}",
                    stage.target().join(&rel).join(SAFETENSORS_WEIGHTS_NAME).display()
                )),
                other => other,
            })?;
            stage.write(rel.join(SAFETENSORS_WEIGHTS_NAME), &weights)?;
            config.common_mut().inference_mode = true;
            if config.common().task_type.is_none() {
                if let Some(mapping) = self.model.auto_mapping() {
                    config.common_mut().auto_mapping = Some(mapping);
                }
            }
            let text = crate::config::to_config_file_text(config.as_ref());
            stage.write(rel.join(CONFIG_NAME), text.as_bytes())?;
        }
        Ok(())
    }

    /// The base weights of the input and output embeddings under PEFT's keys, and whether each layer is
    /// adapted (its keys then carry `base_layer`).
    pub(super) fn embedding_base_params(&self) -> Vec<(String, Tensor, bool)> {
        let layers: Vec<String> =
            [self.model.input_embedding(), self.model.output_embedding()].into_iter().flatten().collect();
        let adapted: BTreeSet<&str> = self
            .model
            .index()
            .layers
            .iter()
            .filter(|l| layers.contains(&l.name))
            .map(|l| l.name.as_str())
            .collect();
        self.named_parameters()
            .into_iter()
            .filter_map(|(key, t)| {
                let rest = key.strip_prefix(PEFT_PREFIX)?;
                let module = layers.iter().find(|m| rest.starts_with(&format!("{m}.")))?;
                let is_base =
                    rest == format!("{module}.base_layer.weight") || rest == format!("{module}.weight");
                is_base.then(|| (key.clone(), t, adapted.contains(module.as_str())))
            })
            .collect()
    }

    /// What [`SaveOptions::save_embedding_layers`] adds to an adapter's file (PEFT's rules).
    pub(super) fn embedding_layers_to_save(
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
            // Not for trainable tokens, whose point is a small file (the method, which adapts the input
            // embedding, or another method's `trainable_token_indices`).
            None => {
                let options = config.model_options()?;
                targeted && options.trainable_token_indices.is_none() && !options.adapts_input_embedding
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
    pub(super) fn convert_initial(
        &self,
        config: &dyn AdapterConfig,
        trained: crate::config::NamedTensors,
        initial_dir: &Path,
    ) -> Result<crate::config::ConvertedAdapter> {
        let conversion = config.initial_weight_conversion().ok_or_else(|| {
            crate::config::unsupported_option(
                &config.common().peft_type,
                "path_initial_model_for_weight_conversion",
                &serde_json::Value::String(initial_dir.display().to_string()),
                "this method has no conversion of mutated base weights",
            )
        })?;
        let initial_config = conversion.config_for_initial_weights();
        let weights = initial_dir.join(SAFETENSORS_WEIGHTS_NAME);
        let initial: BTreeMap<String, Tensor> =
            io::read_safetensors(&weights)?.into_iter().map(|t| (t.key, t.tensor)).collect();
        let converted = conversion.convert_for_original_base(trained, &initial)?;
        let text = crate::config::to_config_file_text(initial_config.as_ref());
        io::atomic_write(&initial_dir.join(CONFIG_NAME), text.as_bytes())?;
        Ok(converted)
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
    pub(super) fn load_weights(&mut self, name: &str, path: &Path) -> Result<usize> {
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
        let padded: Vec<String> =
            self.model.index().adapter(name).filter(|(_, a)| a.padded).map(|(l, _)| l.name.clone()).collect();
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
        let state = self.adapter_tensors(name)?;
        // Tensors are copied in the model's module order, as torch's `load_state_dict` does: where two keys
        // share one tensor (a head tied to the embedding saves the embedding's rows under its own key too),
        // the later module's copy is what stays, as in PEFT.
        let order: BTreeMap<String, usize> =
            state.iter().enumerate().map(|(i, (k, _))| (k.clone(), i)).collect();
        let mut expected: BTreeMap<String, Tensor> = state.into_iter().collect();
        // Base embedding weights PEFT saves with `save_embedding_layers` are loaded into the base, as PEFT does.
        let embeddings: BTreeMap<String, Tensor> =
            self.embedding_base_params().into_iter().map(|(k, t, _)| (k, t)).collect();
        // Base biases PEFT saves with `bias` options load into the base when the file names them as the
        // model does now; other forms of bias keys PEFT drops (see `bias.rs`). None is required.
        let biases = self.loadable_biases();
        let mut biases_loaded = Vec::new();
        let mut biases_dropped = Vec::new();
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
            let dst = expected.remove(&key).or_else(|| embeddings.get(&key).map(Tensor::shallow_clone));
            let dst = match dst {
                Some(t) => t,
                None if biases.contains_key(&key) => {
                    biases_loaded.push(key.clone());
                    biases[&key].shallow_clone()
                }
                // PEFT's `"all"` writes each modules_to_save copy's bias twice; this form never loads.
                None if key.contains(".modules_to_save.") && self.is_stale_bias_key(&key) => {
                    log::debug!(
                        "{}: `{}` duplicates a modules_to_save bias; not loaded",
                        path.display(),
                        lt.key
                    );
                    continue;
                }
                None if self.is_stale_bias_key(&key) => {
                    biases_dropped.push(lt.key);
                    continue;
                }
                None => {
                    unexpected.push(lt.key);
                    continue;
                }
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
        let rank = |key: &str| {
            order
                .get(key)
                .or_else(|| order.get(&format!("{PEFT_PREFIX}{key}")))
                .copied()
                .unwrap_or(usize::MAX)
        };
        pairs.sort_by_key(|(_, lt)| rank(&lt.key));
        if !biases_loaded.is_empty() {
            log::info!(
                "{}: loading {} base biases saved with the adapter (bias option): {}",
                path.display(),
                biases_loaded.len(),
                abbreviate(&biases_loaded)
            );
        }
        if !biases_dropped.is_empty() {
            self.warn(format!(
                "{}: base biases saved for modules the model holds in another form now (adapted, wrapped for \
                 modules_to_save, or not) are not loaded, as in PEFT: {}",
                path.display(),
                abbreviate(&biases_dropped)
            ));
        }
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
    pub(super) fn weights_changed(&mut self, name: &str) {
        let _ = self.model.mutate_same_tensors().visit_layers_mut(&mut |layer| {
            let slots = layer.parts_mut().1;
            slots.clear_caches();
            if let Some(t) = slots.get_mut(name) {
                t.weights_changed();
            }
            Ok(())
        });
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
}
