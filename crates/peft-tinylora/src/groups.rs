//! TinyLoRA's model-level state: the trainable vectors `v`, one per `weight_tying` group of an adapter's
//! layers, and the registry of every TinyLoRA adapter's vectors on a model.
//!
//! PEFT keeps the vectors in one `ModuleDict` on the tuner (`base_model.tinylora_v.<adapter>.<group>`)
//! that every TinyLoRA layer also references. Hence:
//!
//! * the checkpoint holds each vector once, under `base_model.tinylora_v.<group>`;
//! * `named_parameters()` lists them under the first TinyLoRA layer of the model
//!   (`base_model.model.<first>.tinylora_v.<adapter>.<group>`): here the first layer of each group
//!   makes and registers its vector and the adapter's first layer lists them all (PEFT's names whenever
//!   the adapters share their first layer);
//! * every layer's status lists every adapter's vectors (available, `requires_grad`, device), through
//!   [`peft_core::TunerLayer::status_shared_parameters`] and the [`Registry`].
//!
//! The grouping is PEFT's `_create_and_replace`: with `n` targeted linear, `Conv1D` and embedding layers
//! in model order, `groups = max(1, round(n·(1 − weight_tying)))` (Python's `round`, ties to even),
//! `size = max(1, n // groups)`, and layer `i` joins group `min(i // size, groups − 1)`.

use peft_core::config::{TargetLayer, TargetView};
use peft_core::{PeftError, Result};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use tch::Tensor;

/// Where one targeted layer sits in its adapter's plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slot {
    /// The layer's index among the adapter's targets (the offset of its projection seed).
    pub index: i64,
    /// Its `weight_tying` group (the key of its `v`).
    pub group: usize,
}

/// One adapter's grouping and vectors.
#[derive(Debug)]
pub struct Plan {
    /// The adapter.
    pub adapter: String,
    /// Each targeted layer's index and group, by module name.
    pub slots: HashMap<String, Slot>,
    /// The number of groups.
    pub num_groups: usize,
    /// Each group's `v` once its first layer made it.
    pub vectors: Vec<Option<Tensor>>,
    /// The module whose layer registered the first vector and lists them all.
    pub owner: Option<String>,
    /// Each layer's projections, as drawn from the seed (what PEFT keeps when a file lacks them).
    pub projections: Vec<(String, Tensor)>,
}

#[derive(Debug)]
struct Shared {
    plan: Mutex<Plan>,
}

/// The vectors of every TinyLoRA adapter on one model, in creation order (PEFT's `tinylora_v`
/// `ModuleDict`). Adapters that were deleted (or failed to be created) drop out by themselves: the
/// registry holds their plans weakly.
#[derive(Clone, Debug, Default)]
pub struct Registry(Arc<Mutex<Vec<Weak<Shared>>>>);

impl Registry {
    /// `(adapter, v)` for every vector of every live adapter.
    pub fn parameters(&self) -> Vec<(String, Tensor)> {
        let plans: Vec<Arc<Shared>> = lock(&self.0).iter().filter_map(Weak::upgrade).collect();
        let mut out = Vec::new();
        for shared in plans {
            let plan = lock(&shared.plan);
            for v in plan.vectors.iter().flatten() {
                out.push((plan.adapter.clone(), v.shallow_clone()));
            }
        }
        out
    }
}

/// One adapter's plan and the model's registry (absent until `before_layers` made them).
#[derive(Clone, Debug, Default)]
pub struct AdapterVectors(Option<(Arc<Shared>, Registry)>);

impl PartialEq for AdapterVectors {
    /// Configs compare by what is saved; the vectors are not part of the config.
    fn eq(&self, _other: &Self) -> bool {
        true
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// PEFT's layer types for the grouping (`nn.Linear`, `Conv1D`, `nn.Embedding`): other targets take no
/// index (and are refused when their layer is created).
fn counts(t: &TargetLayer) -> bool {
    matches!(t.view, TargetView::Linear | TargetView::Embedding)
}

/// `(groups, size)` for `n` layers: Python's `max(1, round(n * (1.0 - weight_tying)))` and
/// `max(1, n // groups)`.
pub fn group_layout(n: usize, weight_tying: f64) -> (usize, usize) {
    let groups = ((n as f64) * (1.0 - weight_tying)).round_ties_even().max(1.0) as usize;
    (groups, (n / groups).max(1))
}

impl AdapterVectors {
    /// Plans `adapter`'s groups over its targets (in model order) and enters it in `registry`.
    pub fn plan(adapter: &str, targets: &[TargetLayer], weight_tying: f64, registry: Registry) -> Self {
        let counted: Vec<&TargetLayer> = targets.iter().filter(|t| counts(t)).collect();
        let (num_groups, size) = group_layout(counted.len(), weight_tying);
        let slots = counted
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), Slot { index: i as i64, group: (i / size).min(num_groups - 1) }))
            .collect();
        let shared = Arc::new(Shared {
            plan: Mutex::new(Plan {
                adapter: adapter.to_string(),
                slots,
                num_groups,
                vectors: (0..num_groups).map(|_| None).collect(),
                owner: None,
                projections: Vec::new(),
            }),
        });
        lock(&registry.0).push(Arc::downgrade(&shared));
        Self(Some((shared, registry)))
    }

    /// The model's registry, once planned.
    pub fn registry(&self) -> Option<Registry> {
        self.0.as_ref().map(|(_, r)| r.clone())
    }

    fn shared(&self) -> Result<&(Arc<Shared>, Registry)> {
        self.0
            .as_ref()
            .ok_or_else(|| PeftError::Invalid("TinyLoRA's vectors were not planned before its layers".into()))
    }

    /// The plan, locked.
    ///
    /// # Errors
    /// Not planned yet.
    pub fn plan_mut(&self) -> Result<MutexGuard<'_, Plan>> {
        Ok(lock(&self.shared()?.0.plan))
    }

    /// `(group, v)` for every vector made so far.
    pub fn vectors(&self) -> Vec<(usize, Tensor)> {
        match self.plan_mut() {
            Ok(p) => p
                .vectors
                .iter()
                .enumerate()
                .filter_map(|(g, v)| v.as_ref().map(|v| (g, v.shallow_clone())))
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    /// `(module, P)` for every layer of the adapter, as drawn from the seed.
    pub fn projections(&self) -> Vec<(String, Tensor)> {
        match self.plan_mut() {
            Ok(p) => p.projections.iter().map(|(m, t)| (m.clone(), t.shallow_clone())).collect(),
            Err(_) => Vec::new(),
        }
    }

    /// Every TinyLoRA adapter's vectors on the model (see [`Registry::parameters`]).
    pub fn model_parameters(&self) -> Vec<(String, Tensor)> {
        self.registry().map(|r| r.parameters()).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::group_layout;

    #[test]
    fn groups_follow_pythons_rounding() {
        assert_eq!(group_layout(8, 0.0), (8, 1));
        assert_eq!(group_layout(8, 1.0), (1, 8));
        assert_eq!(group_layout(8, 0.5), (4, 2));
        // 5 · 0.5 = 2.5 rounds to 2 (ties to even); the last group takes the remainder.
        assert_eq!(group_layout(5, 0.5), (2, 2));
        assert_eq!(group_layout(7, 0.5), (4, 1));
        assert_eq!(group_layout(0, 0.0), (1, 1));
    }
}
