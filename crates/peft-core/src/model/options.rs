//! The options and reports of creating, loading and saving adapters.

use peft_config::keys::DEFAULT_ADAPTER_NAME;
use std::path::PathBuf;

/// Options for creating or adding an adapter.
#[derive(Clone, Copy, Debug)]
pub struct AdapterOptions {
    /// Upcast fp16/bf16 adapter weights to fp32, as PEFT does by default.
    pub autocast_adapter_dtype: bool,
    /// Accept `target_modules` entries that match nothing (PEFT's behaviour). By default peft-rs fails
    /// naming each such entry, because a typo would otherwise train a different adapter than intended.
    pub allow_unmatched_targets: bool,
}

impl Default for AdapterOptions {
    fn default() -> Self {
        Self { autocast_adapter_dtype: true, allow_unmatched_targets: false }
    }
}

/// Options for loading an adapter directory.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// The name the adapter gets in the model.
    pub adapter_name: String,
    /// Load for training (`requires_grad`, `inference_mode: false`) instead of inference.
    pub is_trainable: bool,
    /// A sub-directory of the given directory holding the adapter (how PEFT saves non-default adapters).
    pub subfolder: Option<String>,
    /// Creation options.
    pub adapter: AdapterOptions,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            adapter_name: DEFAULT_ADAPTER_NAME.to_string(),
            is_trainable: false,
            subfolder: None,
            adapter: AdapterOptions::default(),
        }
    }
}

impl LoadOptions {
    /// Loads under `name`.
    pub fn named(name: impl Into<String>) -> Self {
        Self { adapter_name: name.into(), ..Self::default() }
    }

    /// Loads for training.
    pub fn trainable(mut self) -> Self {
        self.is_trainable = true;
        self
    }
}

/// What a load did.
#[derive(Clone, Debug)]
pub struct LoadReport {
    /// The adapter name in the model.
    pub adapter_name: String,
    /// The method.
    pub peft_type: String,
    /// True when the adapter's weights require gradients (loaded with `is_trainable`).
    pub trainable: bool,
    /// Number of tensors read from the file.
    pub tensors_loaded: usize,
    /// The directory the adapter came from.
    pub path: PathBuf,
    /// Warnings (unknown config keys, corrected options, …).
    pub warnings: Vec<String>,
}

/// Options of [`PeftModel::save_pretrained`](crate::PeftModel::save_pretrained).
#[derive(Clone, Debug, Default)]
pub struct SaveOptions {
    /// Save only these adapters (default: all).
    pub selected_adapters: Option<Vec<String>>,
    /// PEFT's `path_initial_model_for_weight_conversion`: the directory where the adapter was saved right
    /// after an initialisation that rewrote the base weights (PiSSA, OLoRA, …). The saved adapter is then
    /// converted into one that applies to the original base model (for LoRA: rank doubled,
    /// `[A; A₀]` and `[B, −B₀]`), and that directory's config gets the init scheme reset, as PEFT does.
    pub convert_initial_adapter: Option<std::path::PathBuf>,
    /// PEFT's `save_embedding_layers`: also save the base weights of the input/output embeddings.
    /// `None` (PEFT's `"auto"`): when the config targets `embed_tokens` or `lm_head` by name and does not
    /// use trainable tokens, the adapted embedding layers are saved.
    pub save_embedding_layers: Option<bool>,
}
