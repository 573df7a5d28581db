//! Hotswapping a loaded adapter for another one in place (PEFT's `hotswap_adapter`).

use super::PeftModel;
use crate::adaptable::Adaptable;
use crate::config::BiasMode;
use crate::error::{PeftError, Result};
use crate::io;
use peft_config::keys::{PEFT_PREFIX, SAFETENSORS_WEIGHTS_NAME};
use std::collections::BTreeMap;
use std::path::Path;
use tch::Tensor;

impl<M: Adaptable> PeftModel<M> {
    /// PEFT's `prepare_model_for_compiled_hotswap(model, target_rank=…)`: pads every adapter's tensors
    /// to `target_rank` with zeros (outputs unchanged), once, so that [`PeftModel::hotswap_adapter`] can
    /// later swap in adapters of any rank up to it without reallocating. Saving still writes each adapter
    /// with its own rank.
    ///
    /// # Errors
    /// No adapter with ranks in the model, or a target below an adapter's rank.
    pub fn prepare_for_hotswap(&mut self, target_rank: i64) -> Result<()> {
        let mut found = false;
        self.model.mutate().visit_layers_mut(&mut |layer| {
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
        let model = self.model.mutate();
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
}
