//! Which of an adapter's layers share whose `lily_A` and `lily_B` — PEFT's `_post_injection_hook`,
//! worked out from the targets before the layers are created.
//!
//! PEFT groups the adapted layers, in model order, by `(matched target, weight shape)`: the target is the
//! `target_modules` entry the module name ends with (the regex itself when `target_modules` is one, so a
//! regex groups by shape alone). In each group every layer uses the first layer's `lily_B`, and each run
//! of `stride_A` consecutive layers the `lily_A` of the run's first layer. The other layers' own factors,
//! drawn when they were created, are dropped.

use peft_core::config::{TargetLayer, TargetView};
use peft_core::peft_config::TargetModules;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use tch::Tensor;

/// A layer's place in its group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slot {
    /// The group (one per matched target and weight shape).
    pub group: usize,
    /// The layer's position in its group.
    pub position: usize,
    /// The position of the layer whose `lily_A` this one uses (`position` rounded down to a multiple of
    /// `stride_A`).
    pub a_leader: usize,
}

impl Slot {
    /// This layer keeps (registers and trains) its own `lily_A`.
    pub fn leads_a(&self) -> bool {
        self.position == self.a_leader
    }

    /// This layer keeps its own `lily_B` (the group's first layer).
    pub fn leads_b(&self) -> bool {
        self.position == 0
    }
}

/// The groups of one adapter and the shared factors registered so far.
#[derive(Debug, Default)]
pub struct Sharing {
    /// Each targeted linear layer's slot, by module name.
    pub slots: HashMap<String, Slot>,
    /// `lily_A` of each leader, by `(group, leader position)`.
    pub a: HashMap<(usize, usize), Tensor>,
    /// `lily_B` of each group.
    pub b: HashMap<usize, Tensor>,
}

/// The [`Sharing`] of the adapter being created (absent outside `before_layers` … `create_layer`).
#[derive(Clone, Debug, Default)]
pub struct SharingPlan(pub Option<Arc<Mutex<Sharing>>>);

impl PartialEq for SharingPlan {
    /// Configs compare by what is saved.
    fn eq(&self, _other: &Self) -> bool {
        true
    }
}

/// The `target_modules` entry PEFT files a module under: the regex itself, or an entry the name ends with
/// (a plain string suffix, as PEFT tests it). Where several entries match, PEFT keeps the last one its
/// set yields — an order Python's string hashing decides — so the longest is taken here, as PEFT's own
/// comment intends.
fn matched_target(targets: Option<&TargetModules>, name: &str) -> Option<String> {
    match targets? {
        TargetModules::Regex(r) => Some(r.clone()),
        TargetModules::List(list) => {
            list.iter().filter(|s| name.ends_with(s.as_str())).max_by_key(|s| s.len()).cloned()
        }
    }
}

impl SharingPlan {
    /// Groups `targets` (model order) as PEFT's `_post_injection_hook` does.
    pub fn new(targets_modules: Option<&TargetModules>, stride_a: i64, targets: &[TargetLayer]) -> Self {
        let stride = stride_a.max(1) as usize;
        let mut keys: Vec<(String, i64, i64)> = Vec::new();
        let mut sizes: Vec<usize> = Vec::new();
        let mut slots = HashMap::new();
        for t in targets.iter().filter(|t| t.view == TargetView::Linear) {
            let Some(target) = matched_target(targets_modules, &t.name) else { continue };
            let key = (target, t.out_features, t.in_features);
            let group = keys.iter().position(|k| *k == key).unwrap_or_else(|| {
                keys.push(key);
                sizes.push(0);
                keys.len() - 1
            });
            let position = sizes[group];
            sizes[group] += 1;
            slots.insert(t.name.clone(), Slot { group, position, a_leader: position / stride * stride });
        }
        Self(Some(Arc::new(Mutex::new(Sharing { slots, ..Sharing::default() }))))
    }

    /// The plan, locked (`None` when `before_layers` did not run).
    pub fn lock(&self) -> Option<MutexGuard<'_, Sharing>> {
        self.0.as_ref().map(|m| m.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn linear(name: &str, out_features: i64, in_features: i64) -> TargetLayer {
        TargetLayer {
            name: name.into(),
            class: "Linear",
            view: TargetView::Linear,
            in_features,
            out_features,
        }
    }

    /// PEFT's grouping on a DeepMLP-like model with `stride_A = 3`: per target name, runs of three.
    #[test]
    fn layers_group_by_target_and_shape_in_runs_of_stride_a() {
        let targets: Vec<TargetLayer> = (0..4)
            .flat_map(|i| {
                [linear(&format!("layers.{i}.lin0"), 10, 10), linear(&format!("layers.{i}.lin1"), 10, 10)]
            })
            .chain([linear("out", 2, 10)])
            .collect();
        let list = TargetModules::list(["lin0", "lin1", "out"]);
        let plan = SharingPlan::new(Some(&list), 3, &targets);
        let s = plan.lock().unwrap();
        let slot = |n: &str| s.slots[n];
        assert_eq!(slot("layers.0.lin0"), Slot { group: 0, position: 0, a_leader: 0 });
        assert_eq!(slot("layers.0.lin1"), Slot { group: 1, position: 0, a_leader: 0 });
        assert_eq!(slot("layers.2.lin0"), Slot { group: 0, position: 2, a_leader: 0 });
        assert_eq!(slot("layers.3.lin1"), Slot { group: 1, position: 3, a_leader: 3 });
        assert_eq!(slot("out"), Slot { group: 2, position: 0, a_leader: 0 });
        // A regex groups by shape alone.
        let plan = SharingPlan::new(Some(&TargetModules::Regex(r".*lin\d".into())), 2, &targets);
        let s = plan.lock().unwrap();
        assert_eq!(s.slots["layers.0.lin1"], Slot { group: 0, position: 1, a_leader: 0 });
        assert_eq!(s.slots["layers.1.lin0"], Slot { group: 0, position: 2, a_leader: 2 });
        assert_eq!(s.slots["out"].group, 1);
    }
}
