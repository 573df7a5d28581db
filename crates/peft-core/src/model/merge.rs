//! Merging adapters into the base weights and unloading them.

use super::PeftModel;
use crate::adaptable::Adaptable;
use crate::error::{PeftError, Result};
use std::collections::BTreeMap;
use tch::Tensor;

impl<M: Adaptable> PeftModel<M> {
    /// True when any layer has a merged adapter.
    pub fn is_merged(&self) -> bool {
        self.model.index().layers.iter().any(|l| !l.merged.is_empty())
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
            // PEFT's message, with the model's method in place of its `LORA`.
            let peft_type = self.configs.values().next().map_or("adapter", |c| c.common().peft_type.as_str());
            return Err(PeftError::Invalid(format!(
                "Cannot merge {peft_type} layers when base model layers are replicated"
            )));
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
        let result = self.model.mutate().visit_layers_mut(&mut |layer| {
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
            let _ = self.model.mutate().visit_layers_mut(&mut |layer| {
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
        self.model.mutate().visit_layers_mut(&mut |layer| {
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
        let _ = self.model.mutate().visit_layers_mut(&mut |layer| {
            layer.parts_mut().1.clear();
            Ok(())
        });
        self.model.into_inner()
    }
}
