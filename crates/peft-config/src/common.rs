//! The fields every PEFT config has (`PeftConfigMixin` + `PeftConfig` in Python).

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The PEFT version whose file format and numbers peft-rs reproduces; written as `peft_version`.
pub const PEFT_VERSION: &str = "0.21.2";

/// `task_type`: which `PeftModelFor*` wrapper a config is meant for. Any other string is an error, as in PEFT.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TaskType {
    /// Sequence classification (`PeftModelForSequenceClassification`).
    #[serde(rename = "SEQ_CLS")]
    SeqCls,
    /// Sequence-to-sequence language modelling.
    #[serde(rename = "SEQ_2_SEQ_LM")]
    Seq2SeqLm,
    /// Causal language modelling.
    #[serde(rename = "CAUSAL_LM")]
    CausalLm,
    /// Token classification.
    #[serde(rename = "TOKEN_CLS")]
    TokenCls,
    /// Extractive question answering.
    #[serde(rename = "QUESTION_ANS")]
    QuestionAns,
    /// Feature extraction (embeddings).
    #[serde(rename = "FEATURE_EXTRACTION")]
    FeatureExtraction,
}

/// The keys shared by every method's config.
///
/// Method configs embed it with `#[serde(flatten)]`, so the JSON stays flat like PEFT's.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PeftConfigCommon {
    /// The method id, e.g. `"LORA"`. The only key PEFT requires in a file.
    pub peft_type: String,
    /// The task wrapper the adapter was trained with, if any.
    pub task_type: Option<TaskType>,
    /// Base-model class information for `AutoPeftModel`, written only when `task_type` is null.
    pub auto_mapping: Option<Value>,
    /// The PEFT version that wrote the config; filled with [`PEFT_VERSION`] for new configs.
    pub peft_version: Option<String>,
    /// The base model the adapter belongs to (a hub id or a path).
    pub base_model_name_or_path: Option<String>,
    /// The base model's revision.
    pub revision: Option<String>,
    /// Whether the adapter is frozen. PEFT always writes `true` on save and sets it to
    /// `!is_trainable` on load.
    pub inference_mode: bool,
}

impl Default for PeftConfigCommon {
    fn default() -> Self {
        Self {
            peft_type: String::new(),
            task_type: None,
            auto_mapping: None,
            peft_version: Some(PEFT_VERSION.to_string()),
            base_model_name_or_path: None,
            revision: None,
            inference_mode: false,
        }
    }
}

impl PeftConfigCommon {
    /// The common part of a fresh config of the given method.
    pub fn new(peft_type: &str) -> Self {
        Self { peft_type: peft_type.to_string(), ..Self::default() }
    }
}

/// A JSON number that keeps its form: `8` stays an integer and `8.0` a float, so a config round-trips to
/// the text PEFT wrote (PEFT declares `lora_alpha: int` and the like but keeps whatever number it was
/// given). LoRA's `lora_alpha`, LyCORIS' `alpha`, AdaLoRA's `beta1`, … are of this type.
///
/// ```
/// use peft_config::Num;
///
/// assert_eq!(serde_json::to_string(&Num::from(8)).unwrap(), "8");
/// assert_eq!(serde_json::to_string(&Num::from(8.0)).unwrap(), "8.0");
/// assert_eq!(Num::from(5.5).value(), 5.5);
/// ```
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct Num(pub serde_json::Number);

impl Num {
    /// The value as a float.
    pub fn value(&self) -> f64 {
        self.0.as_f64().unwrap_or(f64::NAN)
    }
}

impl From<i64> for Num {
    fn from(v: i64) -> Self {
        Num(serde_json::Number::from(v))
    }
}

impl From<f64> for Num {
    /// A float (non-finite values, which JSON cannot hold, become `0`).
    fn from(v: f64) -> Self {
        Num(serde_json::Number::from_f64(v).unwrap_or_else(|| serde_json::Number::from(0)))
    }
}
