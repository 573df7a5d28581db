//! The error type of peft-quant.

use peft_core::PeftError;

/// What can go wrong when quantizing, dequantizing or reading a quantized checkpoint.
///
/// Errors name the tensor key (with its source file when known) and the shapes involved.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QuantError {
    /// A tensor has the wrong dtype.
    #[error("{what}: expected dtype {expected}, found {found:?}")]
    Dtype {
        /// Which tensor (key and file when known).
        what: String,
        /// The dtype(s) accepted.
        expected: &'static str,
        /// The dtype found.
        found: tch::Kind,
    },

    /// A tensor has the wrong shape.
    #[error("{what}: expected shape {expected}, found {found:?}")]
    Shape {
        /// Which tensor (key and file when known).
        what: String,
        /// The shape expected, in words or as a list.
        expected: String,
        /// The shape found.
        found: Vec<i64>,
    },

    /// A quantization parameter is not supported (block size, quant type, …).
    #[error("{0}")]
    Invalid(String),

    /// A quantized checkpoint lacks a quant-state tensor.
    #[error("{source_name}: missing quant-state tensor `{key}` (a bitsandbytes 4-bit layer saves it next to its weight)")]
    MissingKey {
        /// The file or state dict.
        source_name: String,
        /// The missing key.
        key: String,
    },

    /// The packed `quant_state.bitsandbytes__*` tensor does not hold valid quant-state JSON.
    #[error("{source_name}: `{key}` does not hold a valid bitsandbytes quant state: {reason}")]
    BadQuantState {
        /// The file or state dict.
        source_name: String,
        /// The tensor key.
        key: String,
        /// What is wrong.
        reason: String,
    },

    /// A libtorch operation failed.
    #[error("libtorch error while {context}: {source}")]
    Torch {
        /// What peft-quant was doing.
        context: String,
        /// libtorch's message.
        #[source]
        source: tch::TchError,
    },
}

impl QuantError {
    /// A closure that wraps a libtorch error with what was being done, for `map_err`.
    pub fn torch(context: impl Into<String>) -> impl FnOnce(tch::TchError) -> Self {
        let context = context.into();
        move |source| Self::Torch { context, source }
    }
}

impl From<QuantError> for PeftError {
    fn from(e: QuantError) -> Self {
        match e {
            QuantError::Torch { context, source } => PeftError::Torch { context, source },
            other => PeftError::Invalid(other.to_string()),
        }
    }
}

/// peft-quant's result type.
pub type Result<T, E = QuantError> = std::result::Result<T, E>;
