//! The base biases PEFT's `bias` option trains and saves (`"all"`, `"<method>_only"`), and how the bias
//! keys of PEFT's files load.
//!
//! PEFT 0.21.2 (`BaseTuner._get_learnable_bias_state_dict`) picks them from the whole model's state dict,
//! not from the saved adapter's layers: `"<method>_only"` saves `<module>.base_layer.bias` of every adapted
//! layer, whichever adapter adapted it; `"all"` saves every `.bias` of the model under its current name, so a
//! module wrapped for `modules_to_save` gives `<module>.original_module.bias` and, for the saved adapter's own
//! copy, `<module>.modules_to_save.bias`. Loading is torch's `load_state_dict(strict=False)`: a key naming a
//! base bias as the model names it now is written into the base (even when the adapter does not target that
//! module), and every other form of a bias key (the module was adapted or wrapped when the file was written
//! but is not now, or the reverse; the `modules_to_save.bias` copy, whose in-memory name carries the adapter)
//! is dropped. Biases are never required.

use super::PeftModel;
use crate::adaptable::Adaptable;
use crate::config::BiasMode;
use crate::modules_to_save::{self, MODULES_TO_SAVE};
use peft_config::keys::PEFT_PREFIX;
use std::collections::BTreeMap;
use tch::Tensor;

/// Where a base bias sits in PEFT's module tree, which decides its key.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Place {
    /// In a layer a method adapted: `<module>.base_layer.bias`.
    Adapted,
    /// In a module wrapped for `modules_to_save`: `<container>.original_module.<rest>.bias`.
    Wrapped,
    /// Anywhere else: its own name.
    Plain,
}

/// One base bias: its current PEFT key, its place and the tensor.
struct BaseBias {
    key: String,
    place: Place,
    tensor: Tensor,
}

impl<M: Adaptable> PeftModel<M> {
    /// The layers adapted by a method (any adapter) and, for each layer wrapped for `modules_to_save`, the
    /// wrapped container (PEFT wraps the outermost module an entry matches).
    fn bias_layout(&self) -> (Vec<String>, BTreeMap<String, String>) {
        let mut adapted = Vec::new();
        let mut wrapped = BTreeMap::new();
        for layer in &self.model.index().layers {
            if layer.adapters.values().any(|a| a.peft_type != MODULES_TO_SAVE) {
                adapted.push(layer.name.clone());
                continue;
            }
            let container = layer
                .adapters
                .keys()
                .filter_map(|a| self.configs.get(a))
                .filter_map(|c| {
                    let entries = c.target_spec().modules_to_save.map(<[String]>::to_vec).unwrap_or_default();
                    modules_to_save::matches(&layer.name, &entries)
                })
                .min_by_key(String::len)
                .unwrap_or_else(|| layer.name.clone());
            wrapped.insert(layer.name.clone(), container);
        }
        (adapted, wrapped)
    }

    /// Every base bias under the key PEFT's `state_dict()` gives it now.
    fn base_biases(&self) -> Vec<BaseBias> {
        let (adapted, wrapped) = self.bias_layout();
        let mut out = Vec::new();
        for (name, t) in &self.base_params {
            if name != "bias" && !name.ends_with(".bias") {
                continue;
            }
            let module = name.strip_suffix(".bias").unwrap_or("");
            let (key, place) = if adapted.iter().any(|m| m == module) {
                (format!("{module}.base_layer.bias"), Place::Adapted)
            } else if let Some(container) = wrapped.get(module) {
                let rest = &name[container.len()..];
                (format!("{container}.original_module{rest}"), Place::Wrapped)
            } else {
                (name.clone(), Place::Plain)
            };
            out.push(BaseBias { key: format!("{PEFT_PREFIX}{key}"), place, tensor: t.shallow_clone() });
        }
        out
    }

    /// The base biases an adapter with this `bias` mode saves, under PEFT's checkpoint keys (for `"all"`
    /// also its `modules_to_save` copies' biases once more, as `<container>.modules_to_save.<rest>.bias`).
    pub(super) fn bias_params(&self, adapter: &str, bias: BiasMode) -> Vec<(String, Tensor)> {
        let mut out: Vec<(String, Tensor)> = self
            .base_biases()
            .into_iter()
            .filter(|b| bias == BiasMode::All || (bias == BiasMode::AdaptedOnly && b.place == Place::Adapted))
            .map(|b| (b.key, b.tensor))
            .collect();
        if bias == BiasMode::All {
            let (_, wrapped) = self.bias_layout();
            for layer in &self.model.index().layers {
                let (Some(container), Some(copy)) = (wrapped.get(&layer.name), layer.adapters.get(adapter))
                else {
                    continue;
                };
                let prefix = format!("modules_to_save.{adapter}.");
                for t in &copy.named {
                    let Some(param) = t.name.strip_prefix(&prefix) else { continue };
                    if param != "bias" && !param.ends_with(".bias") {
                        continue;
                    }
                    let rest = &layer.name[container.len()..];
                    let key = format!("{PEFT_PREFIX}{container}.modules_to_save{rest}.{param}");
                    out.push((key, t.tensor.shallow_clone()));
                }
            }
        }
        out
    }

    /// The base biases an adapter with this `bias` mode trains: PEFT's `_mark_only_adapters_as_trainable`
    /// (the originals of `modules_to_save` modules stay frozen: the wrapper freezes them after).
    pub(super) fn trainable_biases(&self, bias: BiasMode) -> Vec<Tensor> {
        self.base_biases()
            .into_iter()
            .filter(|b| match bias {
                BiasMode::None => false,
                BiasMode::All => b.place != Place::Wrapped,
                BiasMode::AdaptedOnly => b.place == Place::Adapted,
            })
            .map(|b| b.tensor)
            .collect()
    }

    /// Every base bias a file may set, under its current PEFT key.
    pub(super) fn loadable_biases(&self) -> BTreeMap<String, Tensor> {
        self.base_biases().into_iter().map(|b| (b.key, b.tensor)).collect()
    }

    /// True for a key PEFT writes for a base bias in another form than the model's current one (see the
    /// module docs): PEFT's loader drops it as an unexpected key.
    pub(super) fn is_stale_bias_key(&self, key: &str) -> bool {
        let rest = key.strip_prefix(PEFT_PREFIX).unwrap_or(key);
        if rest != "bias" && !rest.ends_with(".bias") {
            return false;
        }
        let segments: Vec<&str> = rest.split('.').collect();
        segments.iter().enumerate().any(|(i, s)| {
            if !matches!(*s, "base_layer" | "original_module" | "modules_to_save") {
                return false;
            }
            let mut plain = segments.clone();
            plain.remove(i);
            let plain = plain.join(".");
            self.base_params.iter().any(|(n, _)| *n == plain)
        }) || self.base_params.iter().any(|(n, _)| n == rest)
    }
}
