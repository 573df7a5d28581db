//! The index of a [`PeftModel`](super::PeftModel)'s adapted layers: what save, load, the parameter
//! lists and the status reports need from each layer, gathered in one walk of the model.
//!
//! The wrapped model sits in [`Indexed`], which hands out `&mut M` only through [`Indexed::mutate`]; that
//! drops the index, and the next reader rebuilds it. Training through the optimizer changes tensor
//! values, not which tensors a layer holds, so the handles kept here stay the layers' own tensors.

use crate::adaptable::Adaptable;
use crate::layer::{AdaptableLayer, TunerLayer};
use indexmap::IndexMap;
use peft_config::keys::PEFT_PREFIX;
use std::ops::Deref;
use std::sync::OnceLock;
use tch::Tensor;

/// One tensor of an adapter.
pub(super) struct IndexedTensor {
    /// The in-memory name relative to the layer (`lora_A.default.weight`).
    pub name: String,
    /// The layer's own tensor (a shallow clone).
    pub tensor: Tensor,
    /// A buffer: saved, never trained, not counted as a parameter.
    pub buffer: bool,
    /// Trains when the adapter does (`TunerLayer::is_trainable_tensor`).
    pub trainable: bool,
}

/// One adapter on one layer.
pub(super) struct IndexedAdapter {
    /// The method (`MODULES_TO_SAVE` for core's copies of whole modules).
    pub peft_type: &'static str,
    /// Every tensor under its in-memory name relative to the layer.
    pub named: Vec<IndexedTensor>,
    /// The tensors the adapter's file holds, under their checkpoint keys — when they are the layer's
    /// own tensors or views of them. `None` when the layer computes them afresh (AdaLoRA's kept
    /// triplets are gathered copies): a handle kept here would miss later training, so readers ask the
    /// layer again.
    pub state: Option<Vec<(String, Tensor)>>,
    /// A saved tensor has another shape than the one held under its name: the adapter is padded for
    /// hotswapping.
    pub padded: bool,
    /// Devices PEFT's status lists for other adapters through this one (shared buffers).
    pub shared_devices: Vec<(String, tch::Device)>,
    /// Parameters PEFT's status counts for other adapters (or this one) through this one (shared state).
    pub shared_parameters: Vec<(String, Tensor)>,
}

/// One layer that carries at least one adapter.
pub(super) struct IndexedLayer {
    /// The module name.
    pub name: String,
    /// The name PEFT's layer status reports (the module, or a sub-module of it).
    pub status_name: String,
    /// PEFT's class name of the adapted layer (`lora.Linear`).
    pub module_type: String,
    /// Adapters are on (not disabled).
    pub enabled: bool,
    /// The layer's active adapters.
    pub active: Vec<String>,
    /// The layer's merged adapters, in merge order.
    pub merged: Vec<String>,
    /// The adapters, in the order they were added.
    pub adapters: IndexMap<String, IndexedAdapter>,
}

/// Everything gathered in one walk.
#[derive(Default)]
pub(super) struct LayerIndex {
    /// The adapted layers, in module order.
    pub layers: Vec<IndexedLayer>,
    /// The original element count of quantized base weights (their var-store entries are placeholders).
    pub quantized_numel: i64,
}

impl LayerIndex {
    fn build<M: Adaptable>(model: &M) -> Self {
        let mut index = LayerIndex::default();
        model.visit_layers(&mut |layer| {
            if let Some(q) = layer
                .base()
                .as_any()
                .downcast_ref::<crate::nn::LinearBase>()
                .and_then(|b| b.quantized.as_ref())
            {
                index.quantized_numel += q.in_features() * q.out_features();
            }
            if !layer.slots().is_empty() {
                index.layers.push(indexed_layer(layer));
            }
        });
        index
    }

    /// The layers carrying `adapter`, with its entry.
    pub fn adapter<'a>(
        &'a self,
        adapter: &'a str,
    ) -> impl Iterator<Item = (&'a IndexedLayer, &'a IndexedAdapter)> {
        self.layers.iter().filter_map(move |l| l.adapters.get(adapter).map(|a| (l, a)))
    }
}

fn indexed_layer(layer: &dyn AdaptableLayer) -> IndexedLayer {
    let slots = layer.slots();
    let mut status_name = layer.name().to_string();
    let mut module_type = String::new();
    if let Some(first) = slots.adapters().values().next() {
        module_type = first.describe().split('(').next().unwrap_or_default().to_string();
        if let Some(sub) = first.status_submodule() {
            status_name = format!("{status_name}.{sub}");
        }
    }
    let adapters = slots
        .adapters()
        .iter()
        .map(|(adapter, tuner)| (adapter.clone(), indexed_adapter(layer.name(), adapter, tuner.as_ref())))
        .collect();
    IndexedLayer {
        name: layer.name().to_string(),
        status_name,
        module_type,
        enabled: !slots.disabled(),
        active: slots.active().to_vec(),
        merged: slots.merged().to_vec(),
        adapters,
    }
}

fn indexed_adapter(module: &str, adapter: &str, tuner: &dyn TunerLayer) -> IndexedAdapter {
    let named: Vec<IndexedTensor> = tuner
        .named_tensors()
        .into_iter()
        .map(|(name, tensor)| IndexedTensor {
            buffer: tuner.is_buffer(&name),
            trainable: tuner.is_trainable_tensor(&name),
            name,
            tensor,
        })
        .collect();
    let state_raw = tuner.state_tensors();
    // Padded: a saved tensor differs in shape from the tensor of its name (or has no such tensor). A tensor
    // left out of the state altogether is a non-persistent buffer (Super-Tuning's positions without
    // `save_precomputed_indices`), not padding.
    let padded = state_raw
        .iter()
        .any(|(rel, t)| named.iter().find(|n| &n.name == rel).is_none_or(|n| n.tensor.size() != t.size()));
    let live = state_raw.iter().all(|(_, t)| named.iter().any(|n| same_storage(t, &n.tensor)));
    let state = live.then(|| {
        state_raw
            .into_iter()
            .map(|(rel, t)| (tuner.checkpoint_key(&format!("{PEFT_PREFIX}{module}.{rel}"), adapter), t))
            .collect()
    });
    IndexedAdapter {
        peft_type: tuner.peft_type(),
        named,
        state,
        padded,
        shared_devices: tuner.status_shared_devices(),
        shared_parameters: tuner.status_shared_parameters(),
    }
}

/// Whether `a` is `b` or a view of the same memory (tch has no `is_alias_of`): the storages' start
/// addresses agree. Empty tensors have no memory to share.
fn same_storage(a: &Tensor, b: &Tensor) -> bool {
    fn storage_start(t: &Tensor) -> usize {
        let elt = t.kind().elt_size_in_bytes() as isize;
        (t.data_ptr() as isize - t.storage_offset() as isize * elt) as usize
    }
    a.numel() > 0 && b.numel() > 0 && a.device() == b.device() && storage_start(a) == storage_start(b)
}

/// The wrapped model with its lazily built index. Reads go through `Deref`; every mutable access drops
/// the index.
pub(super) struct Indexed<M> {
    model: M,
    index: OnceLock<LayerIndex>,
}

impl<M: Adaptable> Indexed<M> {
    pub fn new(model: M) -> Self {
        Self { model, index: OnceLock::new() }
    }

    /// The model, mutably: the index is dropped, since layers or adapters may change.
    pub fn mutate(&mut self) -> &mut M {
        self.index.take();
        &mut self.model
    }

    /// The model, mutably, for a change that leaves every layer's adapters, tensors, merged and enabled
    /// state as they are (dropping caches, telling layers their weights were overwritten, setting the
    /// active adapters, which [`Indexed::set_active`] then records): the index is kept.
    pub fn mutate_same_tensors(&mut self) -> &mut M {
        &mut self.model
    }

    /// Records in the index (when there is one) that every layer's active adapters are now `active`.
    pub fn set_active(&mut self, active: &[String]) {
        if let Some(index) = self.index.get_mut() {
            index.layers.iter_mut().for_each(|l| l.active = active.to_vec());
        }
    }

    /// The index, built with one walk when the model changed since the last one.
    pub fn index(&self) -> &LayerIndex {
        self.index.get_or_init(|| LayerIndex::build(&self.model))
    }

    pub fn into_inner(self) -> M {
        self.model
    }
}

impl<M> Deref for Indexed<M> {
    type Target = M;
    fn deref(&self) -> &M {
        &self.model
    }
}
