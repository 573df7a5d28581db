//! Adapter status reports (PEFT's `get_layer_status` / `get_model_status`).

use serde_json::{json, Value};
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
    /// The quantization backend of the base (`None` for dense bases).
    pub quantization_backend: Option<String>,
}

impl RequiresGrad {
    fn to_json(self) -> Value {
        match self {
            RequiresGrad::True => Value::Bool(true),
            RequiresGrad::False => Value::Bool(false),
            RequiresGrad::Irregular => Value::from("irregular"),
        }
    }
}

impl Tristate {
    fn to_json(self) -> Value {
        match self {
            Tristate::True => Value::Bool(true),
            Tristate::False => Value::Bool(false),
            Tristate::Irregular => Value::from("irregular"),
        }
    }
}

fn grads_json(m: &BTreeMap<String, RequiresGrad>) -> Value {
    Value::Object(m.iter().map(|(k, v)| (k.clone(), v.to_json())).collect())
}

impl LayerStatus {
    /// The status as PEFT's `TunerLayerStatus` serialises (`dataclasses.asdict`); `name` is the module
    /// name (PEFT's is relative to the tuner, i.e. `model.` + this).
    pub fn to_json(&self) -> Value {
        json!({
            "name": self.name,
            "module_type": self.module_type,
            "enabled": self.enabled,
            "active_adapters": self.active_adapters,
            "merged_adapters": self.merged_adapters,
            "requires_grad": grads_json(&self.requires_grad),
            "available_adapters": self.available_adapters,
            "devices": self.devices,
            "quantization_backend": self.quantization_backend,
        })
    }
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
    /// The quantization backends of the adapted layers, if all agree.
    pub quantization_backend: Option<String>,
}

impl ModelStatus {
    /// The status as PEFT's `TunerModelStatus` serialises (`"irregular"` where layers disagree).
    pub fn to_json(&self) -> Value {
        json!({
            "base_model_type": self.base_model_type,
            "adapter_model_type": self.adapter_model_type,
            "peft_types": self.peft_types,
            "trainable_params": self.trainable_params,
            "total_params": self.total_params,
            "num_adapter_layers": self.num_adapter_layers,
            "enabled": self.enabled.to_json(),
            "active_adapters": self.active_adapters,
            "merged_adapters": match &self.merged_adapters {
                Some(m) => json!(m),
                None => Value::from("irregular"),
            },
            "requires_grad": grads_json(&self.requires_grad),
            "available_adapters": self.available_adapters,
            "devices": self.devices,
            "quantization_backend": self.quantization_backend,
        })
    }
}
