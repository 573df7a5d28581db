//! Reports: parameter lists and counts, targeted modules and the layer / model status.

use super::index::IndexedLayer;
use super::PeftModel;
use crate::adaptable::Adaptable;
use crate::modules_to_save::MODULES_TO_SAVE;
use crate::status::{LayerStatus, ModelStatus, RequiresGrad, Tristate};
use peft_config::keys::PEFT_PREFIX;
use std::collections::{BTreeMap, BTreeSet};
use tch::Tensor;

impl<M: Adaptable> PeftModel<M> {
    /// Every parameter under PEFT's in-memory name, in the order PEFT's `named_parameters()` lists the
    /// adapter tensors (layer by layer, `lora_A` before `lora_B`), then the base parameters:
    /// `base_model.model.<module>.lora_A.<adapter>.weight`, `base_model.model.<module>.base_layer.weight`
    /// for adapted layers, `base_model.model.<name>` otherwise. An adapter tensor several layers hold (LiLy's
    /// shared `lily_A` / `lily_B`) is listed once, under the first of them, as torch lists a shared
    /// parameter once.
    pub fn named_parameters(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        let mut adapted = BTreeSet::new();
        let mut seen: BTreeSet<(usize, Vec<i64>)> = BTreeSet::new();
        for layer in &self.model.index().layers {
            if layer.adapters.values().any(|a| a.peft_type != MODULES_TO_SAVE) {
                adapted.insert(layer.name.as_str());
            }
            for entry in layer.adapters.values() {
                for t in &entry.named {
                    // The same memory and shape: the same tensor (empty tensors have no memory to compare).
                    let id = (t.tensor.data_ptr() as usize, t.tensor.size());
                    if t.tensor.numel() > 0 && !seen.insert(id) {
                        continue;
                    }
                    out.push((format!("{PEFT_PREFIX}{}.{}", layer.name, t.name), t.tensor.shallow_clone()));
                }
            }
        }
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

    /// `(trainable, total)` parameter counts (PEFT's `get_nb_trainable_parameters`).
    pub fn num_parameters(&self) -> (i64, i64) {
        let mut trainable = 0i64;
        let mut total = 0i64;
        let index = self.model.index();
        let buffers: std::collections::HashSet<usize> = index
            .layers
            .iter()
            .flat_map(|l| l.adapters.values())
            .flat_map(|a| a.named.iter().filter(|t| t.buffer).map(|t| t.tensor.data_ptr() as usize))
            .collect();
        // Quantized linears keep an empty placeholder in the var store; count their weights as PEFT does
        // (a packed 4-bit tensor counts twice its bytes, an int8 one its elements: the original numel).
        total += index.quantized_numel;
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
        self.model.index().adapter(adapter).map(|(l, _)| l.name.clone()).collect()
    }

    /// PEFT's `get_layer_status`: one entry per adapted layer.
    pub fn layer_status(&self) -> Vec<LayerStatus> {
        self.model.index().layers.iter().map(layer_status).collect()
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

/// The device type as PEFT's status reports name it (`cpu`, `cuda`, …).
pub(super) fn device_type(d: tch::Device) -> String {
    match d {
        tch::Device::Cpu => "cpu".into(),
        tch::Device::Cuda(_) => "cuda".into(),
        tch::Device::Mps => "mps".into(),
        tch::Device::Vulkan => "vulkan".into(),
    }
}

pub(super) fn thousands(n: i64) -> String {
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

/// One layer's PEFT status from the index.
fn layer_status(l: &IndexedLayer) -> LayerStatus {
    let mut flags: BTreeMap<String, BTreeSet<bool>> = BTreeMap::new();
    let mut devices: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut available: BTreeSet<String> = l.adapters.keys().cloned().collect();
    for (name, entry) in &l.adapters {
        let own = entry.named.iter().filter(|t| !t.buffer).map(|t| t.tensor.requires_grad());
        flags.entry(name.clone()).or_default().extend(own);
        let devs = entry.named.iter().map(|t| device_type(t.tensor.device()));
        devices.entry(name.clone()).or_default().extend(devs);
        for (other, device) in &entry.shared_devices {
            devices.entry(other.clone()).or_default().insert(device_type(*device));
        }
        for (other, t) in &entry.shared_parameters {
            flags.entry(other.clone()).or_default().insert(t.requires_grad());
            devices.entry(other.clone()).or_default().insert(device_type(t.device()));
            available.insert(other.clone());
        }
    }
    let requires_grad: BTreeMap<String, RequiresGrad> = flags
        .into_iter()
        .map(|(name, flags)| {
            let rg = match (flags.contains(&true), flags.contains(&false)) {
                (true, false) => RequiresGrad::True,
                (false, _) => RequiresGrad::False,
                (true, true) => RequiresGrad::Irregular,
            };
            (name, rg)
        })
        .collect();
    let available_adapters: Vec<String> = available.into_iter().collect();
    LayerStatus {
        name: l.status_name.clone(),
        module_type: l.module_type.clone(),
        enabled: l.enabled,
        // The model-wide active adapters, as PEFT's layers report them.
        active_adapters: l.active.clone(),
        merged_adapters: l.merged.clone(),
        requires_grad,
        available_adapters,
        devices: devices.into_iter().map(|(k, v)| (k, v.into_iter().collect())).collect(),
        quantization_backend: None,
    }
}
