//! Adapter status reports (PEFT's `get_layer_status` / `get_model_status`).

use std::collections::BTreeMap;

/// Whether an adapter's tensors require gradients.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequiresGrad {
    /// All of them.
    True,
    /// None of them.
    False,
    /// Some do, some do not.
    Irregular,
}

/// A boolean that differs across layers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tristate {
    /// True on every layer.
    True,
    /// False on every layer.
    False,
    /// Different on different layers.
    Irregular,
}

impl Tristate {
    /// Collapses per-layer values (no layers → `False`).
    pub fn collapse(values: impl IntoIterator<Item = bool>) -> Self {
        let (mut t, mut f) = (false, false);
        for v in values {
            if v {
                t = true
            } else {
                f = true
            }
        }
        match (t, f) {
            (true, false) => Tristate::True,
            (true, true) => Tristate::Irregular,
            _ => Tristate::False,
        }
    }
}

/// The state of one adapted layer.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerStatus {
    /// Module name.
    pub name: String,
    /// PEFT's layer class, e.g. `lora.Linear`.
    pub module_type: String,
    /// False while adapters are disabled.
    pub enabled: bool,
    /// Active adapters present on this layer.
    pub active_adapters: Vec<String>,
    /// Adapters merged into this layer's weights, in merge order.
    pub merged_adapters: Vec<String>,
    /// Gradient state per adapter.
    pub requires_grad: BTreeMap<String, RequiresGrad>,
    /// Adapters present on this layer, sorted.
    pub available_adapters: Vec<String>,
    /// Device types of each adapter's tensors.
    pub devices: BTreeMap<String, Vec<String>>,
}

/// The state of the whole model.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelStatus {
    /// The Rust type name of the wrapped model.
    pub base_model_type: String,
    /// PEFT's tuner class name, e.g. `LoraModel`.
    pub adapter_model_type: String,
    /// Method of each adapter.
    pub peft_types: BTreeMap<String, String>,
    /// Trainable parameters.
    pub trainable_params: i64,
    /// All parameters.
    pub total_params: i64,
    /// Number of adapted layers.
    pub num_adapter_layers: usize,
    /// Whether adapters are enabled.
    pub enabled: Tristate,
    /// The model-wide active adapters.
    pub active_adapters: Vec<String>,
    /// Adapters merged on every layer that has them; `None` when layers disagree (PEFT's "irregular").
    pub merged_adapters: Option<Vec<String>>,
    /// Gradient state per adapter across layers.
    pub requires_grad: BTreeMap<String, RequiresGrad>,
    /// All adapters of the model.
    pub available_adapters: Vec<String>,
    /// Device types per adapter.
    pub devices: BTreeMap<String, Vec<String>>,
}
