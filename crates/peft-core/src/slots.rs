//! [`AdapterSlots`]: the adapters of one layer and their state (PEFT's `BaseTunerLayer` bookkeeping).

use crate::error::{PeftError, Result};
use crate::layer::{BaseLayer, ForwardCtx, MergeCtx, TunerLayer};
use crate::mixed::{MixedCache, RowAdapters};
use indexmap::IndexMap;
use std::fmt;
use tch::Tensor;

/// The adapters of one layer and their state: which exist (in insertion order), which are active,
/// which are merged (in merge order), and whether adapters are disabled.
#[derive(Debug, Default)]
pub struct AdapterSlots {
    adapters: IndexMap<String, Box<dyn TunerLayer>>,
    active: Vec<String>,
    merged: Vec<String>,
    disabled: bool,
    mixed_cache: MixedCache,
    pub(crate) hook: HookSlot,
}

/// An optional forward hook (printed as whether one is set).
#[derive(Default)]
pub(crate) struct HookSlot(pub(crate) Option<ForwardHook>);

impl fmt::Debug for HookSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", if self.0.is_some() { "Some(hook)" } else { "None" })
    }
}

/// Called after a layer's forward pass with `(module name, input, output)` — PyTorch's forward hooks, for
/// data-driven initialisations (EVA, CorDA, LoRA-GA) that look at layer inputs. Set them with
/// [`crate::PeftModel::set_forward_hook`].
pub type ForwardHook = std::sync::Arc<dyn Fn(&str, &Tensor, &Tensor) + Send + Sync>;

impl AdapterSlots {
    /// The adapters on this layer, in the order they were added.
    pub fn adapters(&self) -> &IndexMap<String, Box<dyn TunerLayer>> {
        &self.adapters
    }

    /// One adapter.
    pub fn get(&self, name: &str) -> Option<&dyn TunerLayer> {
        self.adapters.get(name).map(|b| b.as_ref())
    }

    /// One adapter, mutably.
    pub fn get_mut(&mut self, name: &str) -> Option<&mut Box<dyn TunerLayer>> {
        self.adapters.get_mut(name)
    }

    /// The model-wide active adapters (those absent here are skipped in forward).
    pub fn active(&self) -> &[String] {
        &self.active
    }

    /// Adapters merged into the base weights, in merge order.
    pub fn merged(&self) -> &[String] {
        &self.merged
    }

    /// True when adapters are disabled on this layer.
    pub fn disabled(&self) -> bool {
        self.disabled
    }

    /// True when the layer has no adapters.
    pub fn is_empty(&self) -> bool {
        self.adapters.is_empty()
    }

    pub(crate) fn insert(&mut self, name: String, layer: Box<dyn TunerLayer>) {
        self.mixed_cache.clear();
        self.adapters.insert(name, layer);
    }

    pub(crate) fn remove(&mut self, name: &str) -> Option<Box<dyn TunerLayer>> {
        self.mixed_cache.clear();
        self.active.retain(|a| a != name);
        self.adapters.shift_remove(name)
    }

    pub(crate) fn set_active(&mut self, names: &[String]) {
        self.active = names.to_vec();
    }

    pub(crate) fn set_disabled(&mut self, disabled: bool) {
        self.disabled = disabled;
    }

    pub(crate) fn clear(&mut self) {
        self.adapters.clear();
        self.active.clear();
        self.merged.clear();
    }

    /// Runs the layer: the base, then every active, unmerged adapter present on it.
    ///
    /// As in PEFT: when adapters are disabled, or when any adapter is merged, only the base runs; the
    /// result has the base output's dtype.
    pub fn forward(&self, base: &dyn BaseLayer, x: &Tensor, ctx: &ForwardCtx<'_>) -> Tensor {
        if self.disabled || !self.merged.is_empty() || self.adapters.is_empty() {
            return base.forward(x);
        }
        let ctx = &ForwardCtx { siblings: Some(&self.adapters), active: Some(&self.active), ..*ctx };
        if let Some(rows) = ctx.rows {
            return self.forward_mixed(base, x, rows, ctx);
        }
        let active: Vec<&dyn TunerLayer> =
            self.active.iter().filter_map(|name| self.adapters.get(name)).map(|b| b.as_ref()).collect();
        if active.is_empty() {
            return base.forward(x);
        }
        let mut input: Option<Tensor> = None;
        for adapter in &active {
            let current = input.as_ref().unwrap_or(x);
            if let Some(t) = adapter.transform_input(base, current, ctx) {
                input = Some(t);
            }
        }
        let base_in = input.as_ref().unwrap_or(x);
        let mut y = active
            .iter()
            .find_map(|a| a.replace_base(base, base_in, ctx))
            .unwrap_or_else(|| base.forward(base_in));
        let kind = y.kind();
        for adapter in &active {
            y = adapter.transform_output(base, x, y, ctx);
        }
        if y.kind() != kind {
            y = y.to_kind(kind);
        }
        y
    }

    /// A mixed batch: the base output, replaced on the rows of `modules_to_save`-style adapters, plus each
    /// row's adapter contribution, batched per method where the method can, else adapter by adapter on
    /// its rows (PEFT's `_mixed_batch_forward`).
    fn forward_mixed(
        &self,
        base: &dyn BaseLayer,
        x: &Tensor,
        rows: &RowAdapters,
        ctx: &ForwardCtx<'_>,
    ) -> Tensor {
        let mut y = base.forward(x);
        let kind = y.kind();
        let present: Vec<(usize, &dyn TunerLayer)> = rows
            .names()
            .iter()
            .enumerate()
            .filter_map(|(k, n)| self.adapters.get(n).map(|t| (k, t.as_ref())))
            .collect();
        for (k, t) in present.iter().filter(|(_, t)| t.replaces_base()) {
            if let Some(r) = rows.rows(*k) {
                if let Some(ys) = t.replace_base(base, &x.index_select(0, r), ctx) {
                    y = y.index_copy(0, r, &ys.to_kind(kind));
                }
            }
        }
        let mut types: Vec<&'static str> = Vec::new();
        for (_, t) in present.iter().filter(|(_, t)| !t.replaces_base()) {
            if !types.contains(&t.peft_type()) {
                types.push(t.peft_type());
            }
        }
        for ty in types {
            let group: Vec<(usize, &dyn TunerLayer)> =
                present.iter().filter(|(_, t)| !t.replaces_base() && t.peft_type() == ty).copied().collect();
            let mut slots_of = vec![None; rows.names().len()];
            for (pos, (k, _)) in group.iter().enumerate() {
                slots_of[*k] = Some(pos);
            }
            let tuners: Vec<&dyn TunerLayer> = group.iter().map(|(_, t)| *t).collect();
            let index = rows.local_index(&slots_of);
            let batched = tuners[0]
                .as_mixed_batch()
                .and_then(|m| m.mixed_batch_output(base, x, &y, &tuners, &index, &self.mixed_cache, ctx));
            match batched {
                Some(out) => y = out,
                None => {
                    for (k, t) in &group {
                        if let Some(r) = rows.rows(*k) {
                            // The sub-batch sees its own rows' values.
                            let values = ctx
                                .row_values
                                .map(|v| v.select(&Vec::<i64>::try_from(r).unwrap_or_default()));
                            let sub = ForwardCtx { rows: None, row_values: values.as_ref(), ..*ctx };
                            let ys =
                                t.transform_output(base, &x.index_select(0, r), y.index_select(0, r), &sub);
                            y = y.index_copy(0, r, &ys.to_kind(kind));
                        }
                    }
                }
            }
        }
        if y.kind() != kind {
            y = y.to_kind(kind);
        }
        y
    }

    /// Sets (or with `None` removes) the forward hook of this layer (see
    /// [`crate::PeftModel::set_forward_hook`]; this is the same on a bare model).
    pub fn set_hook(&mut self, hook: Option<ForwardHook>) {
        self.hook = HookSlot(hook);
    }

    /// Drops caches derived from adapter weights (after weights changed in place).
    pub fn clear_caches(&self) {
        self.mixed_cache.clear();
    }

    /// Merges `names` (default: the active adapters that are not merged yet) into the base.
    ///
    /// With `safe`, a non-finite result is refused; adapters merged earlier in this call are unmerged
    /// again, so the layer is left as it was.
    ///
    /// # Errors
    /// [`PeftError::NonFiniteMerge`] or the method's reason.
    pub fn merge(&mut self, base: &mut dyn BaseLayer, names: Option<&[String]>, safe: bool) -> Result<()> {
        let wanted: Vec<String> = names.map(<[String]>::to_vec).unwrap_or_else(|| self.active.clone());
        let todo: Vec<String> = wanted
            .into_iter()
            .filter(|n| self.adapters.contains_key(n) && !self.merged.contains(n))
            .collect();
        let needs_start =
            todo.iter().any(|n| self.adapters.get(n).is_some_and(|a| a.merge_needs_call_start_weight()));
        let start = match (needs_start, base.as_weighted()) {
            (true, Some(w)) => Some(
                w.weight().f_detach_copy().map_err(PeftError::torch("copying the weight before merging"))?,
            ),
            _ => None,
        };
        let mut done = Vec::new();
        for name in todo {
            let res = self.merge_one(base, &name, safe, start.as_ref());
            if let Err(e) = res {
                for undo in done.iter().rev() {
                    if let Some(adapter) = self.adapters.get_mut(undo) {
                        adapter.unmerge(base)?;
                    }
                    self.merged.retain(|m| m != undo);
                }
                return Err(e);
            }
            self.merged.push(name.clone());
            done.push(name);
        }
        Ok(())
    }

    /// Merges one adapter. For tuners that need the unmerged base weight while others are merged, PEFT's
    /// procedure: unmerge the merged ones (last first), copy the weight, merge them again, then merge this
    /// one with the copy as its reference.
    fn merge_one(
        &mut self,
        base: &mut dyn BaseLayer,
        name: &str,
        safe: bool,
        call_start_weight: Option<&Tensor>,
    ) -> Result<()> {
        let needs = self.adapters.get(name).is_some_and(|a| a.merge_needs_unmerged_base());
        let reference = if needs && !self.merged.is_empty() {
            let merged = self.merged.clone();
            self.unmerge_to(base, 0)?;
            let weight = base
                .as_weighted()
                .ok_or_else(|| {
                    PeftError::Invalid(format!("a {} layer has no weight to merge into", base.kind()))
                })?
                .weight();
            let copy =
                weight.f_detach_copy().map_err(PeftError::torch("copying the unmerged base weight"))?;
            let ctx = MergeCtx { safe, unmerged_base_weight: Some(&copy), call_start_weight: None };
            for m in merged {
                if let Some(adapter) = self.adapters.get_mut(&m) {
                    adapter.merge(base, &ctx)?;
                }
                self.merged.push(m);
            }
            Some(copy)
        } else {
            None
        };
        let ctx = MergeCtx { safe, unmerged_base_weight: reference.as_ref(), call_start_weight };
        match self.adapters.get_mut(name) {
            Some(adapter) => adapter.merge(base, &ctx),
            None => Ok(()),
        }
    }

    /// Unmerges the adapters merged after the first `keep` ones, last merged first (rollback of a
    /// partial merge).
    ///
    /// # Errors
    /// The method's reason.
    pub fn unmerge_to(&mut self, base: &mut dyn BaseLayer, keep: usize) -> Result<()> {
        while self.merged.len() > keep {
            let Some(name) = self.merged.pop() else { break };
            if let Some(adapter) = self.adapters.get_mut(&name) {
                if let Err(e) = adapter.unmerge(base) {
                    self.merged.push(name);
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// Forgets merges after the first `keep` without touching weights (the caller restored them).
    pub(crate) fn truncate_merged(&mut self, keep: usize) {
        self.merged.truncate(keep);
    }

    /// Unmerges every merged adapter, last merged first.
    ///
    /// # Errors
    /// The method's reason.
    pub fn unmerge(&mut self, base: &mut dyn BaseLayer) -> Result<()> {
        self.unmerge_to(base, 0)
    }
}
