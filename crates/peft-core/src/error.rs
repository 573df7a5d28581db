//! The error type of peft-rs.

use std::path::PathBuf;

pub use peft_config::ConfigError;

/// Everything that can go wrong when attaching, training, merging, saving or loading adapters.
///
/// Errors name what the user can act on: the file, the tensor key, both shapes, the config option, the
/// crate that provides a method.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PeftError {
    /// A config problem (parsing, invalid value, bad regex, inconsistent options).
    #[error(transparent)]
    Config(#[from] ConfigError),

    /// A libtorch operation failed.
    #[error("libtorch error while {context}: {source}")]
    Torch {
        /// What peft-rs was doing.
        context: String,
        /// libtorch's message.
        #[source]
        source: tch::TchError,
    },

    /// A file or directory could not be read or written.
    #[error("{}: cannot {op}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The operation (`read`, `write`, `rename`, …).
        op: &'static str,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },

    /// A weights file is not a valid safetensors file (truncated, corrupt header, wrong offsets, …).
    #[error("{}: not a valid safetensors file: {reason}", path.display())]
    Safetensors {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// A tensor has a dtype peft-rs cannot hold (e.g. fp8 or fp4 in an adapter file).
    #[error("{}: tensor `{key}` has dtype {dtype}, which peft-rs does not support", path.display())]
    UnsupportedDtype {
        /// The file.
        path: PathBuf,
        /// The tensor key.
        key: String,
        /// The dtype as safetensors names it.
        dtype: String,
    },

    /// `peft_type` is not a PEFT method at all.
    #[error("{location}: unknown peft_type {peft_type:?}; PEFT 0.21.2 knows: {known}")]
    UnknownPeftType {
        /// Where the config came from.
        location: String,
        /// The value found.
        peft_type: String,
        /// The known types, comma-separated.
        known: String,
    },

    /// `peft_type` is a method whose crate is not linked into this program.
    #[error(
        "{location}: peft_type {peft_type} is provided by the crate `{crate_name}`, which this program does \
         not link; add `{crate_name}` to your [dependencies] (and use it, e.g. `use {crate_ident} as _;`)"
    )]
    MethodNotLinked {
        /// Where the config came from.
        location: String,
        /// The method.
        peft_type: String,
        /// The crate that provides it.
        crate_name: String,
        /// The crate's name as a Rust identifier.
        crate_ident: String,
    },

    /// `peft_type` is a PEFT method that peft-rs does not implement yet.
    #[error(
        "{location}: peft_type {peft_type} is a PEFT method that peft-rs does not implement yet (it is \
         planned as the crate `{crate_name}`); see the status table in the README"
    )]
    MethodNotImplemented {
        /// Where the config came from.
        location: String,
        /// The method.
        peft_type: String,
        /// The planned crate.
        crate_name: String,
    },

    /// A known config option is set to a value peft-rs does not implement yet. Never silently ignored.
    #[error("{peft_type}: `{option}` = {value} is not implemented in peft-rs yet{hint}")]
    UnsupportedOption {
        /// The method.
        peft_type: String,
        /// The option.
        option: String,
        /// Its value, as JSON.
        value: String,
        /// Extra advice, starting with "; " (may be empty).
        hint: String,
    },

    /// Entries of `target_modules` that match no module of the model (peft-rs is stricter than PEFT here,
    /// which only fails when nothing at all matches).
    #[error(
        "adapter `{adapter}`: these target_modules entries match no adaptable module of the model: \
         {entries:?}{}; adaptable modules are: {available}",
        if *.all_excluded { " (every matching module was excluded)" } else { "" }
    )]
    NoMatchingTargets {
        /// The adapter being added.
        adapter: String,
        /// The entries (or the regex) that matched nothing.
        entries: Vec<String>,
        /// True when modules matched but all of them were excluded.
        all_excluded: bool,
        /// The model's adaptable module names (abbreviated when long).
        available: String,
    },

    /// A module matched by `target_modules` cannot take this method (wrong layer kind).
    #[error("module `{module}` is a {kind}; {peft_type} cannot adapt that layer type{hint}")]
    UnsupportedLayer {
        /// The module name.
        module: String,
        /// The base layer kind.
        kind: String,
        /// The method.
        peft_type: String,
        /// Extra advice, starting with "; " (may be empty).
        hint: String,
    },

    /// Two adaptable layers of one model report the same name.
    #[error("two adaptable layers are both named `{name}`; build each layer under its own nn::Path")]
    DuplicateModuleName {
        /// The name.
        name: String,
    },

    /// An adapter with this name exists already.
    #[error("an adapter named `{name}` already exists; pick another name or delete it first")]
    DuplicateAdapter {
        /// The name.
        name: String,
    },

    /// No adapter with this name.
    #[error("no adapter named `{name}`; the model has {available:?}")]
    UnknownAdapter {
        /// The name asked for.
        name: String,
        /// The adapters the model has.
        available: Vec<String>,
    },

    /// An adapter name that cannot be used as a key segment or directory.
    #[error("invalid adapter name: {reason}")]
    InvalidAdapterName {
        /// Why.
        reason: String,
    },

    /// A PeftModel holds one PEFT method; adding another needs a mixed model.
    #[error(
        "cannot add a {new} adapter to a model whose adapters are {existing}; one PeftModel holds one method"
    )]
    MixedPeftTypes {
        /// The model's method.
        existing: String,
        /// The new adapter's method.
        new: String,
    },

    /// A tensor in a weights file has a shape that does not fit the model.
    #[error("{}: tensor `{key}` has shape {found:?} but the model expects {expected:?}", path.display())]
    ShapeMismatch {
        /// The file.
        path: PathBuf,
        /// The checkpoint key.
        key: String,
        /// The shape the model needs.
        expected: Vec<i64>,
        /// The shape in the file.
        found: Vec<i64>,
    },

    /// Adapter tensors the model needs are absent from the file.
    #[error("{}: missing adapter tensors: {keys:?}", path.display())]
    MissingKeys {
        /// The file.
        path: PathBuf,
        /// The checkpoint keys that are missing.
        keys: Vec<String>,
    },

    /// Tensors in the file that belong to no adapted module of the model.
    #[error(
        "{}: unexpected tensors (they belong to no adapted module of this model; is it the right base \
         model and config?): {keys:?}",
        path.display()
    )]
    UnexpectedKeys {
        /// The file.
        path: PathBuf,
        /// The checkpoint keys nobody consumed.
        keys: Vec<String>,
    },

    /// A tensor could not be allocated (out of memory, or a size libtorch refuses).
    #[error("cannot allocate `{tensor}` {shape:?} {size}: {reason}")]
    Allocation {
        /// The parameter (`module.weight`).
        tensor: String,
        /// Its shape.
        shape: Vec<i64>,
        /// Its dtype and size, readable (`Float (16.0 TiB)`).
        size: String,
        /// libtorch's reason, first line.
        reason: String,
    },

    /// A safe merge produced NaN or infinite weights; nothing was merged.
    #[error(
        "NaN or infinite values in the merged weights of `{module}`: the adapter `{adapter}` seems to be \
         broken; nothing was merged"
    )]
    NonFiniteMerge {
        /// The adapter.
        adapter: String,
        /// The module where it was detected.
        module: String,
    },

    /// The operation needs an unmerged adapter.
    #[error("adapter `{adapter}` is merged into the base weights; unmerge it first")]
    AdapterMerged {
        /// The adapter.
        adapter: String,
    },

    /// Something the method or model does not allow, with the reason.
    #[error("{0}")]
    Invalid(String),
}

impl PeftError {
    /// Wraps a libtorch error with what peft-rs was doing.
    pub fn torch(context: impl Into<String>) -> impl FnOnce(tch::TchError) -> PeftError {
        let context = context.into();
        move |source| PeftError::Torch { context, source }
    }
}

/// `Result` with [`PeftError`].
pub type Result<T, E = PeftError> = std::result::Result<T, E>;
