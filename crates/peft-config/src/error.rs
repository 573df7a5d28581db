//! Errors of config parsing and target matching.

use std::path::PathBuf;

/// Everything that can be wrong with an `adapter_config.json` or with the module-selection options in it.
///
/// `location` is the file the config came from, or `<memory>` for a config built in code.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{}: cannot read adapter config: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The text is not JSON, or not a JSON object.
    #[error("{location}: not a valid adapter config: {message}")]
    Json {
        /// Where the config came from.
        location: String,
        /// What the JSON parser said.
        message: String,
    },
    /// `peft_type` is missing (PEFT requires it: it is the only mandatory key).
    #[error("{location}: missing required key `peft_type`")]
    MissingPeftType {
        /// Where the config came from.
        location: String,
    },
    /// A key has a value of the wrong type or an invalid value.
    #[error("{location}: invalid value for `{field}`: {message}")]
    InvalidField {
        /// Where the config came from.
        location: String,
        /// The key (a dotted path for nested values).
        field: String,
        /// What is wrong.
        message: String,
    },
    /// A regular expression in the config does not compile.
    #[error("invalid regular expression {pattern:?} in `{field}`: {message}")]
    InvalidRegex {
        /// The config key holding the pattern.
        field: String,
        /// The pattern.
        pattern: String,
        /// The regex engine's message.
        message: String,
    },
    /// Options that PEFT itself rejects in combination.
    #[error("{location}: {message}")]
    Inconsistent {
        /// Where the config came from.
        location: String,
        /// What is wrong.
        message: String,
    },
}

/// A location string for configs that did not come from a file.
pub const IN_MEMORY: &str = "<memory>";
