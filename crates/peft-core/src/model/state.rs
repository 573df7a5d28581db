//! Adapter state: which adapters are active, trainable or disabled, deletion, and per-call routing
//! (forward hooks, mixed batches, per-row values).

use super::{set_requires_grad, PeftModel};
use crate::adaptable::Adaptable;
use crate::error::{PeftError, Result};
use crate::layer::TunerLayer;
use crate::row_values::{InputRowValues, RowValues};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use tch::nn;
use tch::Tensor;

impl<M: Adaptable> PeftModel<M> {
    /// Takes the named tensors out of the adapter var store. tch's `VarStore` has no call that removes a
    /// variable, so a fresh store is built, through its public API, from the ones that stay: the same tensors
    /// (shallow clones, so the layers keep training them) under the same names, trainable as before, with
    /// their `requires_grad` flags kept. Trainable is told by identity (`is_set_to`: same storage, offset,
    /// sizes and strides), not by handle, since the store hands out shallow clones.
    pub(super) fn drop_vars(&mut self, var_names: &BTreeSet<String>) {
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

    pub(super) fn activate(&mut self, names: &[String], trainable: bool) -> Result<()> {
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
        for n in names {
            for (_, entry) in self.model.index().adapter(n) {
                for t in &entry.named {
                    set_requires_grad(&t.tensor, requires_grad && t.trainable);
                }
            }
        }
        for n in names {
            let bias = self.configs.get(*n).map(|c| c.bias()).unwrap_or_default();
            for t in self.trainable_biases(bias) {
                set_requires_grad(&t, requires_grad);
            }
        }
        Ok(())
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

    /// Tells every layer which adapters are active (after `self.active` or the layers changed).
    /// Asks every layer whether it can run `names` together ([`TunerLayer::check_active`]).
    pub(super) fn check_active(&self, names: &[String]) -> Result<()> {
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

    pub(super) fn sync_active(&mut self) -> Result<()> {
        let active = self.active.clone();
        self.model.mutate_same_tensors().visit_layers_mut(&mut |layer| {
            layer.parts_mut().1.set_active(&active);
            Ok(())
        })?;
        self.model.set_active(&active);
        Ok(())
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
        crate::adaptable::set_forward_hook(self.model.mutate(), modules, hook)
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
        let refusing =
            self.configs.iter().find(|(_, c)| c.model_options().map_or(true, |o| !o.mixed_batches));
        if let Some((name, config)) = refusing {
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

    /// The per-row values the adapters compute from `input_ids` `(B, T)` for one forward call (see
    /// [`crate::row_values`]; Activated LoRA's invocation offsets, PEFT's `calculate_alora_offsets`): each
    /// row's adapter (the row's in `rows`, else the first active one) with an
    /// [`InputRowValues`] capability gives that row its value; other
    /// rows get `None`. Pass them with [`ForwardCtx::with_row_values`](crate::ForwardCtx::with_row_values).
    /// Returns `None` when no row's adapter computes any (nothing to pass).
    ///
    /// # Errors
    /// Input ids that are not a 2-d integer tensor.
    pub fn row_values(
        &self,
        input_ids: &Tensor,
        rows: Option<&crate::mixed::RowAdapters>,
    ) -> Result<Option<RowValues>> {
        let active = self.active.first().cloned();
        let batch = input_ids.size().first().copied().unwrap_or(0) as usize;
        let per_row: Vec<Option<String>> = match rows {
            Some(r) => {
                r.positions().iter().map(|&p| (p >= 0).then(|| r.names()[p as usize].clone())).collect()
            }
            None => vec![active; batch],
        };
        // Each adapter's capability looked up once per call, not once per row (this runs at every
        // generation step).
        let names: BTreeSet<&str> = per_row.iter().flatten().map(String::as_str).collect();
        let sources: BTreeMap<&str, &dyn InputRowValues> =
            names.into_iter().filter_map(|n| Some((n, self.configs.get(n)?.input_row_values()?))).collect();
        if sources.is_empty() {
            return Ok(None);
        }
        if input_ids.dim() != 2 || !matches!(input_ids.kind(), tch::Kind::Int64 | tch::Kind::Int) {
            return Err(PeftError::Invalid(format!(
                "per-row values need input ids as a 2-d integer tensor, got {:?} of shape {:?}",
                input_ids.kind(),
                input_ids.size()
            )));
        }
        let ids: Vec<Vec<i64>> =
            Vec::<Vec<i64>>::try_from(&input_ids.to_device(tch::Device::Cpu).to_kind(tch::Kind::Int64))
                .map_err(PeftError::torch("reading input ids for per-row values"))?;
        let keys: BTreeSet<&'static str> = sources.values().map(|s| s.key()).collect();
        let mut out = RowValues::new();
        for key in keys {
            let column = per_row
                .iter()
                .zip(&ids)
                .map(|(name, seq)| {
                    let source = sources.get(name.as_deref()?).filter(|s| s.key() == key)?;
                    source.row_value(seq)
                })
                .collect();
            out.insert(key, column);
        }
        Ok(Some(out))
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
        self.model.mutate().visit_layers_mut(&mut |layer| {
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
        self.model.mutate().visit_layers_mut(&mut |layer| {
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
