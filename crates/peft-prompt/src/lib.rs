//! Prompt learning for peft-rs — HuggingFace PEFT 0.21.2's `PROMPT_TUNING`, `P_TUNING` and `PREFIX_TUNING`
//! on tch, with the same numbers and the same files.
//!
//! These methods adapt no layer: they learn a few *virtual tokens*. Prompt tuning learns their embeddings
//! directly, P-tuning produces them with a small encoder (an MLP or an LSTM), and both place them before the
//! input's token embeddings; prefix tuning learns, for every layer, keys and values the attention reads as
//! if they were past tokens. The base model stays frozen and the file holds one tensor.
//!
//! * [`PromptTuningConfig`], [`PromptEncoderConfig`], [`PrefixTuningConfig`]: every key of PEFT's configs
//!   (registered, so the registry reads and writes them as PEFT does).
//! * [`PromptModel`]: an HF decoder-only causal LM (Llama family, GPT-2 from `peft-models`) with one such
//!   adapter — creation with PEFT's initialisation, forward, loss, `save_pretrained` / `from_pretrained`.
//!
//! ```no_run
//! use peft_models::HfModel;
//! use peft_prompt::{PromptModel, PromptTuningConfig};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let loaded = HfModel::load("HuggingFaceTB/SmolLM2-135M", None, &Default::default())?;
//! let mut config = PromptTuningConfig::default();
//! config.prompt.num_virtual_tokens = Some(20);
//! let model = PromptModel::new(loaded, config, "default")?;
//! println!("{}", model.trainable_parameters_line()); // 20 × 576 values train
//! model.save_pretrained("out/prompt")?;
//! # Ok(()) }
//! ```

pub mod config;
pub mod encoder;
pub mod model;

pub use config::{
    EncoderType, PrefixTuningConfig, PromptConfig, PromptEncoderConfig, PromptLearningOptions,
    PromptTuningConfig, PromptTuningInit, PREFIX_TUNING, PROMPT_TUNING, P_TUNING,
};
pub use model::{PromptModel, PROMPT_EMBEDDINGS};
pub use peft_core::MethodConfig;

/// The `peft_type`s this crate provides.
pub const PEFT_TYPES: [&str; 3] = [PROMPT_TUNING, P_TUNING, PREFIX_TUNING];

peft_core::register_method!(config::PromptTuningConfig, "peft-prompt");
peft_core::register_method!(config::PromptEncoderConfig, "peft-prompt");
peft_core::register_method!(config::PrefixTuningConfig, "peft-prompt");
