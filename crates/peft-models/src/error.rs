//! Errors of model loading and running.

use std::path::PathBuf;

/// What can go wrong loading or running an HF model.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    /// A `model_type` peft-models does not implement.
    #[error("{}: unsupported model_type {model_type:?}; supported: {supported}", path.display())]
    UnsupportedModelType {
        /// The `config.json`.
        path: PathBuf,
        /// The value found.
        model_type: String,
        /// The supported types.
        supported: String,
    },
    /// A task the architecture does not provide.
    #[error("model_type {model_type:?} has no {task} head in peft-models (it has: {available})")]
    UnsupportedTask {
        /// The architecture.
        model_type: String,
        /// The task asked for.
        task: String,
        /// The tasks it has.
        available: String,
    },
    /// `config.json` is missing, unreadable, or has a wrong value.
    #[error("{}: {message}", path.display())]
    Config {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// No weights in the model directory.
    #[error(
        "{}: no model.safetensors or model.safetensors.index.json (peft-models reads safetensors \
         checkpoints only)",
        dir.display()
    )]
    NoCheckpoint {
        /// The directory.
        dir: PathBuf,
    },
    /// The checkpoint lacks weights the model needs.
    #[error("{}: missing weights: {keys:?}", path.display())]
    MissingWeights {
        /// The checkpoint (file or directory).
        path: PathBuf,
        /// The missing keys.
        keys: Vec<String>,
    },
    /// The checkpoint has weights the model does not know.
    #[error("{}: unexpected weights (wrong architecture or config?): {keys:?}", path.display())]
    UnexpectedWeights {
        /// The checkpoint.
        path: PathBuf,
        /// The unknown keys.
        keys: Vec<String>,
    },
    /// A weight has the wrong shape.
    #[error("{}: weight `{key}` has shape {found:?}, the config implies {expected:?}", path.display())]
    ShapeMismatch {
        /// The checkpoint file.
        path: PathBuf,
        /// The key.
        key: String,
        /// From the config.
        expected: Vec<i64>,
        /// In the file.
        found: Vec<i64>,
    },
    /// A hub model id could not be resolved.
    #[error("model {model_id:?}: {message}")]
    Hub {
        /// The model id.
        model_id: String,
        /// What happened.
        message: String,
    },
    /// A tokenizer could not be loaded or used.
    #[error("{}: tokenizer: {message}", path.display())]
    Tokenizer {
        /// The tokenizer file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// Bad input to a forward or generate call.
    #[error("{0}")]
    Input(String),
    /// An adapter error.
    #[error(transparent)]
    Peft(#[from] peft_core::PeftError),
    /// A GGUF checkpoint that cannot be read (the message names the file).
    #[error(transparent)]
    Gguf(#[from] peft_gguf::GgufError),
    /// A libtorch failure.
    #[error("libtorch error while {context}: {source}")]
    Torch {
        /// What peft-models was doing.
        context: String,
        /// libtorch's message.
        #[source]
        source: tch::TchError,
    },
}

impl ModelError {
    /// Wraps a libtorch error with context.
    pub fn torch(context: impl Into<String>) -> impl FnOnce(tch::TchError) -> ModelError {
        let context = context.into();
        move |source| ModelError::Torch { context, source }
    }
}

/// `Result` with [`ModelError`].
pub type Result<T, E = ModelError> = std::result::Result<T, E>;
