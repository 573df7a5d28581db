//! Reports: parameter lists and counts, targeted modules and the layer / model status.

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
