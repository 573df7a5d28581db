//! The adapter registry: `peft_type` → the method that parses its config.
//!
//! Method crates register themselves with [`inventory`] (see [`register_method!`](crate::register_method)),
//! so a program that links `peft-lora` can load LoRA adapters by file alone, and a file whose method is
//! not linked gets an error naming the crate that provides it.
//!
//! ```
//! let mut warnings = Vec::new();
//! let err = peft_core::registry::config_from_str(r#"{"peft_type": "BOFT", "boft_block_size": 4}"#, &mut warnings)
//!     .unwrap_err();
//! assert!(err.to_string().contains("peft-boft"));
//! ```

use crate::config::AdapterConfig;
use crate::error::{PeftError, Result};
use peft_config::json;
use serde_json::{Map, Value};
use std::path::Path;

/// Parses one method's config from a JSON object (the parsed `adapter_config.json`). Unknown keys are
/// dropped with a warning pushed to `warnings`; `location` names the source in messages.
pub type ParseConfigFn =
    fn(Map<String, Value>, location: &str, warnings: &mut Vec<String>) -> Result<Box<dyn AdapterConfig>>;

/// One method, as a method crate registers it.
#[derive(Debug)]
pub struct MethodRegistration {
    /// PEFT's `peft_type` string, e.g. `"LORA"`.
    pub peft_type: &'static str,
    /// The crate providing it, e.g. `"peft-lora"`.
    pub crate_name: &'static str,
    /// The config parser.
    pub parse: ParseConfigFn,
}

inventory::collect!(MethodRegistration);

/// Registers a method with the registry: its config type (a [`crate::MethodConfig`], whose `PEFT_TYPE` is
/// the key) and the crate that provides it. Use it once in the method crate:
///
/// ```ignore
/// peft_core::register_method!(LoraConfig, "peft-lora");
/// ```
#[macro_export]
macro_rules! register_method {
    ($config:ty, $crate_name:expr) => {
        $crate::inventory::submit! {
            $crate::registry::MethodRegistration {
                peft_type: <$config as $crate::MethodConfig>::PEFT_TYPE,
                crate_name: $crate_name,
                parse: $crate::config::parse_boxed::<$config>,
            }
        }
    };
}

/// One of PEFT 0.21.2's `peft_type`s, as the table below lists it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeftTypeInfo {
    /// PEFT's `peft_type` string (`"LORA"`).
    pub peft_type: &'static str,
    /// PEFT's tuner class for it (`PEFT_TYPE_TO_TUNER_MAPPING`), which its model status reports as
    /// `adapter_model_type` (`"IA3"` → `"IA3Model"`).
    pub tuner_class: &'static str,
    /// The crate that provides it, or will.
    pub crate_name: &'static str,
    /// Whether that crate exists (`SHIPPED`) or is still to come (`PLANNED`).
    pub shipped: bool,
}

const SHIPPED: bool = true;
const PLANNED: bool = false;

const fn row(
    peft_type: &'static str,
    tuner_class: &'static str,
    crate_name: &'static str,
    shipped: bool,
) -> PeftTypeInfo {
    PeftTypeInfo { peft_type, tuner_class, crate_name, shipped }
}

/// The trainable-tokens method's type: core's own layer serves it and other methods' `trainable_token_indices`.
pub const TRAINABLE_TOKENS: &str = "TRAINABLE_TOKENS";

/// Every `peft_type` of PEFT 0.21.2 (45), in PEFT's `PeftType` order. The method crates are the source
/// of truth for the crate names and the `SHIPPED` marks: each declares its types in its manifest
/// (`[package.metadata.peft] peft-types`), `cargo xtask sync-methods` writes them here and
/// `cargo xtask lint` fails when they disagree. Core names no method anywhere else.
pub const PEFT_TYPE_TABLE: &[PeftTypeInfo] = &[
    row("PROMPT_TUNING", "PromptEmbedding", "peft-prompt", SHIPPED),
    row("MULTITASK_PROMPT_TUNING", "MultitaskPromptEmbedding", "peft-multitask-prompt-tuning", PLANNED),
    row("P_TUNING", "PromptEncoder", "peft-prompt", SHIPPED),
    row("PREFIX_TUNING", "PrefixEncoder", "peft-prompt", SHIPPED),
    row("LORA", "LoraModel", "peft-lora", SHIPPED),
    row("ADALORA", "AdaLoraModel", "peft-adalora", SHIPPED),
    row("ADAMSS", "AdamssModel", "peft-adamss", SHIPPED),
    row("BOFT", "BOFTModel", "peft-boft", SHIPPED),
    row("ADAPTION_PROMPT", "AdaptionPromptModel", "peft-adaption-prompt", PLANNED),
    row("IA3", "IA3Model", "peft-ia3", SHIPPED),
    row("BEFT", "BeftModel", "peft-beft", SHIPPED),
    row("LILY", "LilyModel", "peft-lily", SHIPPED),
    row("LOHA", "LoHaModel", "peft-loha", SHIPPED),
    row("LOKR", "LoKrModel", "peft-lokr", SHIPPED),
    row("OFT", "OFTModel", "peft-oft", SHIPPED),
    row("POLY", "PolyModel", "peft-poly", PLANNED),
    row("LN_TUNING", "LNTuningModel", "peft-ln-tuning", PLANNED),
    row("VERA", "VeraModel", "peft-vera", SHIPPED),
    row("FROD", "FrodModel", "peft-frod", SHIPPED),
    row("PVERA", "PveraModel", "peft-pvera", SHIPPED),
    row("FOURIERFT", "FourierFTModel", "peft-fourierft", SHIPPED),
    row("GLORA", "GloraModel", "peft-glora", SHIPPED),
    row("XLORA", "XLoraModel", "peft-xlora", PLANNED),
    row("HRA", "HRAModel", "peft-hra", SHIPPED),
    row("VBLORA", "VBLoRAModel", "peft-vblora", SHIPPED),
    row("UNILORA", "UniLoraModel", "peft-unilora", SHIPPED),
    row("CPT", "CPTEmbedding", "peft-cpt", PLANNED),
    row("MISS", "MissModel", "peft-miss", SHIPPED),
    row("RANDLORA", "RandLoraModel", "peft-randlora", SHIPPED),
    row("ROAD", "RoadModel", "peft-road", SHIPPED),
    row("TRAINABLE_TOKENS", "TrainableTokensModel", "peft-trainable-tokens", SHIPPED),
    row("HIRA", "HiraModel", "peft-hira", SHIPPED),
    row("SHIRA", "ShiraModel", "peft-shira", SHIPPED),
    row("C3A", "C3AModel", "peft-c3a", SHIPPED),
    row("WAVEFT", "WaveFTModel", "peft-waveft", SHIPPED),
    row("OSF", "OSFModel", "peft-osf", SHIPPED),
    row("DELORA", "DeloraModel", "peft-delora", SHIPPED),
    row("GRALORA", "GraloraModel", "peft-gralora", SHIPPED),
    row("CARTRIDGE", "CartridgeEncoder", "peft-cartridge", PLANNED),
    row("TINYLORA", "TinyLoraModel", "peft-tinylora", SHIPPED),
    row("PSOFT", "PsoftModel", "peft-psoft", SHIPPED),
    row("PEANUT", "PeanutModel", "peft-peanut", SHIPPED),
    row("SUPERTUNING", "SupertuningModel", "peft-supertuning", SHIPPED),
    row("DEFT", "DeftModel", "peft-deft", SHIPPED),
    row("SHADOW", "ShadowModel", "peft-shadow", PLANNED),
];

/// The table entry of a `peft_type`.
pub fn info(peft_type: &str) -> Option<&'static PeftTypeInfo> {
    PEFT_TYPE_TABLE.iter().find(|i| i.peft_type == peft_type)
}

/// Every `peft_type` of PEFT 0.21.2, in PEFT's order.
pub fn peft_types() -> Vec<&'static str> {
    PEFT_TYPE_TABLE.iter().map(|i| i.peft_type).collect()
}

/// The `peft_type`s peft-rs ships (their crates exist), in PEFT's order.
pub fn shipped() -> Vec<&'static str> {
    PEFT_TYPE_TABLE.iter().filter(|i| i.shipped).map(|i| i.peft_type).collect()
}

/// PEFT's tuner class for a `peft_type` (see [`PeftTypeInfo::tuner_class`]).
pub fn tuner_class(peft_type: &str) -> Option<&'static str> {
    info(peft_type).map(|i| i.tuner_class)
}

/// The crate that provides (or will provide) a method: the table's, else `peft-` + the lower-cased type
/// with `_` → `-`.
pub fn crate_for(peft_type: &str) -> String {
    info(peft_type)
        .map(|i| i.crate_name.to_string())
        .unwrap_or_else(|| format!("peft-{}", peft_type.to_ascii_lowercase().replace('_', "-")))
}

/// The registered methods, sorted by type.
pub fn registered() -> Vec<&'static MethodRegistration> {
    let mut v: Vec<_> = inventory::iter::<MethodRegistration>.into_iter().collect();
    v.sort_by_key(|r| r.peft_type);
    v
}

/// The registration of a method, if its crate is linked.
pub fn find(peft_type: &str) -> Option<&'static MethodRegistration> {
    inventory::iter::<MethodRegistration>.into_iter().find(|r| r.peft_type == peft_type)
}

/// Parses a config object of any registered method.
///
/// # Errors
/// [`PeftError::Config`] for a missing `peft_type` or invalid values, [`PeftError::UnknownPeftType`],
/// [`PeftError::MethodNotLinked`] or [`PeftError::MethodNotImplemented`].
pub fn parse_config(
    map: Map<String, Value>,
    location: &str,
    warnings: &mut Vec<String>,
) -> Result<Box<dyn AdapterConfig>> {
    let peft_type = match map.get("peft_type") {
        Some(Value::String(s)) => s.clone(),
        Some(other) => {
            return Err(peft_config::ConfigError::InvalidField {
                location: location.to_string(),
                field: "peft_type".into(),
                message: format!("expected a string, found {other}"),
            }
            .into())
        }
        None => {
            return Err(peft_config::ConfigError::MissingPeftType { location: location.to_string() }.into())
        }
    };
    if let Some(reg) = find(&peft_type) {
        return (reg.parse)(map, location, warnings);
    }
    let crate_name = crate_for(&peft_type);
    let Some(entry) = info(&peft_type) else {
        return Err(PeftError::UnknownPeftType {
            location: location.to_string(),
            peft_type,
            known: peft_types().join(", "),
        });
    };
    if entry.shipped {
        let crate_ident = crate_name.replace('-', "_");
        return Err(PeftError::MethodNotLinked {
            location: location.to_string(),
            peft_type,
            crate_name,
            crate_ident,
        });
    }
    Err(PeftError::MethodNotImplemented { location: location.to_string(), peft_type, crate_name })
}

/// Reads and parses `dir/adapter_config.json`.
///
/// # Errors
/// As [`parse_config`], plus [`PeftError::Config`] when the file is missing or not JSON.
pub fn load_config(dir: &Path, warnings: &mut Vec<String>) -> Result<Box<dyn AdapterConfig>> {
    let path = dir.join(peft_config::keys::CONFIG_NAME);
    let map = json::read_json_object(&path, warnings)?;
    parse_config(map, &path.display().to_string(), warnings)
}

/// Parses `adapter_config.json` text (e.g. embedded in a program).
///
/// # Errors
/// As [`parse_config`].
pub fn config_from_str(text: &str, warnings: &mut Vec<String>) -> Result<Box<dyn AdapterConfig>> {
    let map = json::parse_json_object(text, peft_config::error::IN_MEMORY, warnings)?;
    parse_config(map, peft_config::error::IN_MEMORY, warnings)
}
