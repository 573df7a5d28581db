//! What can go wrong reading a GGUF file: always one line naming the file and what in it is wrong.

use std::path::PathBuf;

/// A GGUF file that cannot be read, or a tensor that cannot be dequantized.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    /// The file could not be opened or mapped.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The bytes are not a GGUF file peft-rs can read: what is wrong and at which byte offset.
    #[error("{}: not a valid GGUF file: {what} (at byte {offset})", path.display())]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
        /// Where in the file.
        offset: u64,
    },
    /// A tensor whose type peft-rs does not dequantize.
    #[error("{}: tensor `{tensor}` has type {kind}, which peft-rs does not dequantize (it reads F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K and Q6_K)", path.display())]
    UnsupportedType {
        /// The file.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// The type's GGUF name, or its number for a code GGUF does not define.
        kind: String,
    },
    /// A tensor the caller asked for that the file does not hold.
    #[error("{}: no tensor `{tensor}`", path.display())]
    MissingTensor {
        /// The file.
        path: PathBuf,
        /// The tensor.
        tensor: String,
    },
    /// A metadata key that is missing or has another type than the caller needs.
    #[error("{}: metadata `{key}`: {what}", path.display())]
    Metadata {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
        /// What is wrong with it.
        what: String,
    },
    /// libtorch refused to build the tensor (out of memory).
    #[error("{}: tensor `{tensor}`: {message}", path.display())]
    Torch {
        /// The file.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// libtorch's message.
        message: String,
    },
}

/// `Result` with [`GgufError`].
pub type Result<T> = std::result::Result<T, GgufError>;
