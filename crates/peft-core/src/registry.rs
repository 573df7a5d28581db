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

/// Every `peft_type` of PEFT 0.21.2 (45), with the crate that provides (or will provide) it.
pub const PEFT_TYPES: &[&str] = &[
    "PROMPT_TUNING",
    "MULTITASK_PROMPT_TUNING",
    "P_TUNING",
    "PREFIX_TUNING",
    "LORA",
    "ADALORA",
    "ADAMSS",
    "BOFT",
    "ADAPTION_PROMPT",
    "IA3",
    "BEFT",
    "LILY",
    "LOHA",
    "LOKR",
    "OFT",
    "POLY",
    "LN_TUNING",
    "VERA",
    "FROD",
    "PVERA",
    "FOURIERFT",
    "GLORA",
    "XLORA",
    "HRA",
    "VBLORA",
    "UNILORA",
    "CPT",
    "MISS",
    "RANDLORA",
    "ROAD",
    "TRAINABLE_TOKENS",
    "HIRA",
    "SHIRA",
    "C3A",
    "WAVEFT",
    "OSF",
    "DELORA",
    "GRALORA",
    "CARTRIDGE",
    "TINYLORA",
    "PSOFT",
    "PEANUT",
    "SUPERTUNING",
    "DEFT",
    "SHADOW",
];

/// PEFT's tuner class for each `peft_type` (`PEFT_TYPE_TO_TUNER_MAPPING`), which its model status reports
/// as `adapter_model_type` (`"IA3"` → `"IA3Model"`).
pub fn tuner_class(peft_type: &str) -> Option<&'static str> {
    Some(match peft_type {
        "ADALORA" => "AdaLoraModel",
        "ADAMSS" => "AdamssModel",
        "ADAPTION_PROMPT" => "AdaptionPromptModel",
        "BEFT" => "BeftModel",
        "BOFT" => "BOFTModel",
        "C3A" => "C3AModel",
        "CARTRIDGE" => "CartridgeEncoder",
        "CPT" => "CPTEmbedding",
        "DEFT" => "DeftModel",
        "DELORA" => "DeloraModel",
        "FOURIERFT" => "FourierFTModel",
        "FROD" => "FrodModel",
        "GLORA" => "GloraModel",
        "GRALORA" => "GraloraModel",
        "HIRA" => "HiraModel",
        "HRA" => "HRAModel",
        "IA3" => "IA3Model",
        "LILY" => "LilyModel",
        "LN_TUNING" => "LNTuningModel",
        "LOHA" => "LoHaModel",
        "LOKR" => "LoKrModel",
        "LORA" => "LoraModel",
        "MISS" => "MissModel",
        "MULTITASK_PROMPT_TUNING" => "MultitaskPromptEmbedding",
        "OFT" => "OFTModel",
        "OSF" => "OSFModel",
        "PEANUT" => "PeanutModel",
        "POLY" => "PolyModel",
        "PREFIX_TUNING" => "PrefixEncoder",
        "PROMPT_TUNING" => "PromptEmbedding",
        "PSOFT" => "PsoftModel",
        "PVERA" => "PveraModel",
        "P_TUNING" => "PromptEncoder",
        "RANDLORA" => "RandLoraModel",
        "ROAD" => "RoadModel",
        "SHADOW" => "ShadowModel",
        "SHIRA" => "ShiraModel",
        "SUPERTUNING" => "SupertuningModel",
        "TINYLORA" => "TinyLoraModel",
        "TRAINABLE_TOKENS" => "TrainableTokensModel",
        "UNILORA" => "UniLoraModel",
        "VBLORA" => "VBLoRAModel",
        "VERA" => "VeraModel",
        "WAVEFT" => "WaveFTModel",
        "XLORA" => "XLoraModel",
        _ => return None,
    })
}

/// The methods peft-rs ships (their crates exist).
pub const SHIPPED: &[&str] = &[
    "LORA",
    "IA3",
    "OFT",
    "ADALORA",
    "HRA",
    "ROAD",
    "BEFT",
    "LOHA",
    "LOKR",
    "VERA",
    "FOURIERFT",
    "SHIRA",
    "TRAINABLE_TOKENS",
    "MISS",
    "DELORA",
    "GRALORA",
    "VBLORA",
    "C3A",
    "PROMPT_TUNING",
    "P_TUNING",
    "PREFIX_TUNING",
    "PEANUT",
    "HIRA",
    "PSOFT",
    "PVERA",
];

/// The crate name for a method: `peft-` + the lower-cased type with `_` → `-` (`TRAINABLE_TOKENS` →
/// `peft-trainable-tokens`), except the prompt-learning methods, which share `peft-prompt`.
pub fn crate_for(peft_type: &str) -> String {
    match peft_type {
        // One crate for the prompt-learning methods that share PEFT's prompt encoder plumbing.
        "PROMPT_TUNING" | "P_TUNING" | "PREFIX_TUNING" => "peft-prompt".to_string(),
        _ => format!("peft-{}", peft_type.to_ascii_lowercase().replace('_', "-")),
    }
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
    if !PEFT_TYPES.contains(&peft_type.as_str()) {
        return Err(PeftError::UnknownPeftType {
            location: location.to_string(),
            peft_type,
            known: PEFT_TYPES.join(", "),
        });
    }
    if SHIPPED.contains(&peft_type.as_str()) {
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
