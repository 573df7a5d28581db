//! Which LoRA variant an adapter uses on a layer: PEFT's `LoraLayer.resolve_lora_variant`.
//!
//! Every variant is switched on by one config field (`use_dora`, `kasa_config`, …, or
//! `init_lora_weights="mica"`); at most one may be on, and each layer class supports its own subset:
//!
//! | layer | variants |
//! |---|---|
//! | Linear / Conv1D | DoRA, Arrow, BD-LoRA, aLoRA, VeLoRA, MonteCLoRA, MiCA, KaSA |
//! | Embedding | DoRA, MiCA |
//! | Conv1d/2d/3d | DoRA |

use crate::config::{InitLoraWeights, LoraConfig};
use crate::layer::LoraKind;
use peft_core::error::{PeftError, Result};
use serde_json::Value;

/// A LoRA variant (PEFT's `LoraVariant` subclasses), named by the config field that requests it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Variant {
    /// `alora_invocation_tokens`: activated LoRA.
    Alora,
    /// `arrow_config`: routing over task adapters.
    Arrow,
    /// `kasa_config`: singular-value adaptation on a truncated base.
    Kasa,
    /// `init_lora_weights="mica"`: frozen B.
    Mica,
    /// `monteclora_config`: Monte-Carlo perturbed A in training.
    MonteClora,
    /// `use_bdlora`: block-diagonal A or B.
    BdLora,
    /// `use_dora`: weight-decomposed LoRA.
    Dora,
    /// `velora_config`: compressed activations for A's gradient.
    Velora,
}

impl Variant {
    /// The config field that switches the variant on (PEFT's key in `lora_variants`).
    pub fn field(self) -> &'static str {
        match self {
            Variant::Alora => "alora_invocation_tokens",
            Variant::Arrow => "arrow_config",
            Variant::Kasa => "kasa_config",
            Variant::Mica => "mica",
            Variant::MonteClora => "monteclora_config",
            Variant::BdLora => "use_bdlora",
            Variant::Dora => "use_dora",
            Variant::Velora => "velora_config",
        }
    }

    /// The variants `kind` supports.
    fn supported_by(self, kind: &LoraKind) -> bool {
        match kind {
            LoraKind::Linear { .. } => true,
            LoraKind::Embedding { .. } => matches!(self, Variant::Dora | Variant::Mica),
            LoraKind::Conv { .. } => self == Variant::Dora,
        }
    }
}

/// The variants `config` requests, sorted by field name as PEFT's lookup key is.
pub fn requested(config: &LoraConfig) -> Vec<Variant> {
    let set = |v: &Option<Value>| v.as_ref().is_some_and(|v| !v.is_null());
    let mut out = Vec::new();
    if config.alora_invocation_tokens.as_ref().is_some_and(|t| !t.is_empty()) {
        out.push(Variant::Alora);
    }
    if set(&config.arrow_config) {
        out.push(Variant::Arrow);
    }
    if set(&config.kasa_config) {
        out.push(Variant::Kasa);
    }
    if matches!(&config.init_lora_weights, InitLoraWeights::Scheme(s) if s == "mica") {
        out.push(Variant::Mica);
    }
    if set(&config.monteclora_config) {
        out.push(Variant::MonteClora);
    }
    if set(&config.use_bdlora) {
        out.push(Variant::BdLora);
    }
    if config.use_dora {
        out.push(Variant::Dora);
    }
    if set(&config.velora_config) {
        out.push(Variant::Velora);
    }
    out.sort_by_key(|v| v.field());
    out
}

/// The variant of an adapter with `config` on a layer of `kind`, or PEFT's error for a combination
/// or layer class it does not support.
///
/// # Errors
/// `Invalid or unsupported variant combination: (…)`, listing the requested fields.
pub fn resolve(config: &LoraConfig, kind: &LoraKind) -> Result<Option<Variant>> {
    let wanted = requested(config);
    match wanted.as_slice() {
        [] => Ok(None),
        [one] if one.supported_by(kind) => Ok(Some(*one)),
        _ => {
            let names: Vec<String> = wanted.iter().map(|v| format!("'{}'", v.field())).collect();
            let tuple =
                if names.len() == 1 { format!("({},)", names[0]) } else { format!("({})", names.join(", ")) };
            Err(PeftError::Invalid(format!(
                "Invalid or unsupported variant combination: {tuple} on a {} layer",
                kind.class_name()
            )))
        }
    }
}
