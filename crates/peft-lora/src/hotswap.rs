//! Hotswapping a loaded LoRA adapter for another one in place: PEFT's `hotswap_adapter` and
//! `prepare_model_for_compiled_hotswap` (`peft.utils.hotswap`), offered through
//! [`LoraModelExt`](crate::LoraModelExt). Each layer takes part through core's
//! [`Hotswap`](peft_core::hotswap::Hotswap) capability (LoRA layers and `modules_to_save` copies).

use crate::config::LoraConfig;
use peft_core::adaptable::Adaptable;
use peft_core::config::{AdapterConfig, BiasMode};
use peft_core::error::{PeftError, Result};
use peft_core::peft_config::keys::{PEFT_PREFIX, SAFETENSORS_WEIGHTS_NAME};
use peft_core::{io, registry, PeftModel};
use std::collections::BTreeMap;
use std::path::Path;
use tch::Tensor;

/// See [`LoraModelExt::prepare_for_hotswap`](crate::LoraModelExt::prepare_for_hotswap).
pub(crate) fn prepare<M: Adaptable>(peft: &mut PeftModel<M>, target_rank: i64) -> Result<()> {
    let mut found = false;
    peft.model_mut().visit_layers_mut(&mut |layer| {
        let (_, slots) = layer.parts_mut();
        let names: Vec<String> = slots.adapters().keys().cloned().collect();
        for n in names {
            if let Some(h) = slots.get_mut(&n).and_then(|t| t.as_hotswap_mut()) {
                found |= h.pad_rank(target_rank)?;
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

/// PEFT's `check_hotswap_configs_compatible`: the options that change the output beyond the weights
/// (its `CONFIG_KEYS_TO_CHECK` for LoRA) must agree.
fn check_compatible(old: &LoraConfig, new: &LoraConfig) -> Result<()> {
    let (a, b) = (old.to_json(), new.to_json());
    for key in ["use_rslora", "lora_dropout", "alpha_pattern", "use_dora"] {
        if a[key] != b[key] {
            return Err(PeftError::Invalid(format!(
                "Configs are incompatible: for {key}, {} != {}",
                a[key], b[key]
            )));
        }
    }
    Ok(())
}

fn as_lora<'a>(config: &'a dyn AdapterConfig, what: &str) -> Result<&'a LoraConfig> {
    config.as_any().downcast_ref::<LoraConfig>().ok_or_else(|| {
        PeftError::Invalid(format!(
            "hotswapping needs LoRA adapters; {what} is a {} adapter",
            config.common().peft_type
        ))
    })
}

/// See [`LoraModelExt::hotswap_adapter`](crate::LoraModelExt::hotswap_adapter).
pub(crate) fn hotswap<M: Adaptable>(peft: &mut PeftModel<M>, dir: &Path, adapter_name: &str) -> Result<()> {
    let old = peft.config(adapter_name).ok_or_else(|| PeftError::UnknownAdapter {
        name: adapter_name.to_string(),
        available: peft.adapter_names(),
    })?;
    let mut merged = false;
    peft.model().visit_layers(&mut |l| merged |= l.slots().merged().iter().any(|m| m == adapter_name));
    if merged {
        return Err(PeftError::AdapterMerged { adapter: adapter_name.to_string() });
    }
    let mut warnings = Vec::new();
    let mut config = registry::load_config(dir, &mut warnings)?;
    if config.common().peft_type != old.common().peft_type {
        return Err(PeftError::MixedPeftTypes {
            existing: old.common().peft_type.clone(),
            new: config.common().peft_type.clone(),
        });
    }
    check_compatible(
        as_lora(old, &format!("adapter `{adapter_name}`"))?,
        as_lora(config.as_ref(), &dir.display().to_string())?,
    )?;
    if config.bias() != BiasMode::None {
        return Err(PeftError::Invalid(
            "hotswapping an adapter that trains base biases would overwrite the base model".into(),
        ));
    }
    let inference_mode = old.common().inference_mode;
    // Where each checkpoint key lives: (module, tensor name relative to the layer).
    let mut places: BTreeMap<String, (String, String)> = BTreeMap::new();
    peft.model().visit_layers(&mut |layer| {
        if let Some(tuner) = layer.slots().get(adapter_name) {
            for (rel, _) in tuner.named_tensors() {
                let full = format!("{PEFT_PREFIX}{}.{rel}", layer.name());
                places.insert(tuner.checkpoint_key(&full, adapter_name), (layer.name().to_string(), rel));
            }
        }
    });
    let path = dir.join(SAFETENSORS_WEIGHTS_NAME);
    // The new weights are read into fresh CPU tensors (an adapter's worth of memory, freed after the
    // copy into the adapter's own tensors); zero-copy views of the memory map could outlive it.
    let config_ref = config.as_ref();
    let model = peft.model_mut();
    let views: Vec<(String, Tensor)> =
        io::read_safetensors(&path)?.into_iter().map(|t| (t.key, t.tensor)).collect();
    (|| -> Result<()> {
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
                let checked = match tuner.as_hotswap() {
                    Some(h) => h.hotswap_check(per_layer.get(layer.name()).unwrap_or(&empty)),
                    None => Err(PeftError::Invalid(format!(
                        "`{}`: {} layers cannot be hotswapped",
                        layer.name(),
                        tuner.peft_type()
                    ))),
                };
                if let Err(e) = checked {
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
            if let Some(h) = slots.get_mut(adapter_name).and_then(|t| t.as_hotswap_mut()) {
                h.hotswap(per_layer.get(&name).unwrap_or(&empty), config_ref)?;
            }
            Ok(())
        })
    })()?;
    config.common_mut().inference_mode = inference_mode;
    if let Some(slot) = peft.config_mut(adapter_name) {
        *slot = config;
    }
    for w in warnings {
        peft.warn(w);
    }
    Ok(())
}
