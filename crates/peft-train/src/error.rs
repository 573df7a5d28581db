//! Errors of training.

use std::path::PathBuf;

/// What can go wrong while training.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrainError {
    /// A dataset record is malformed; `line` is 1-based.
    #[error("{}:{line}: {message}", path.display())]
    Data {
        /// The file.
        path: PathBuf,
        /// The line.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// The loss became NaN or infinite.
    #[error(
        "the loss is {loss} at step {step} (learning rate {lr:e}); training stopped. Lower the learning rate, \
         enable gradient clipping (max_grad_norm) or check the data"
    )]
    NonFiniteLoss {
        /// The optimizer step.
        step: usize,
        /// The loss value.
        loss: f64,
        /// The learning rate at that step.
        lr: f64,
    },
    /// Invalid training arguments.
    #[error("{0}")]
    Config(String),
    /// A checkpoint cannot be written or read back.
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A model error.
    #[error(transparent)]
    Model(#[from] peft_models::ModelError),
    /// An adapter error.
    #[error(transparent)]
    Peft(#[from] peft_core::PeftError),
    /// A libtorch failure.
    #[error("libtorch error while {context}: {source}")]
    Torch {
        /// What was being done.
        context: String,
        /// libtorch's message.
        #[source]
        source: tch::TchError,
    },
}

/// `Result` with [`TrainError`].
pub type Result<T, E = TrainError> = std::result::Result<T, E>;
