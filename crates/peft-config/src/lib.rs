//! Config types, target matching and key grammar of HuggingFace PEFT adapters — without libtorch.
//!
//! This crate holds everything about PEFT's adapter format that does not touch tensors, so hundreds of
//! table-style tests run in milliseconds and tools can read adapter directories without linking
//! libtorch:
//!
//! * [`json`]: reading `adapter_config.json` as PEFT does (unknown keys dropped with a warning) and
//!   writing it byte-for-byte as PEFT does.
//! * [`common`]: the fields shared by every method's config.
//! * [`defaults`]: PEFT's per-architecture default target modules, for every method.
//! * [`targets`]: `target_modules` / `exclude_modules` / `layers_to_transform` / `layers_pattern`
//!   matching, exactly as PEFT 0.21.2 does it, with a report of entries that matched nothing.
//! * [`patterns`]: `rank_pattern` / `alpha_pattern` lookups.
//! * [`keys`]: in-memory ↔ checkpoint tensor key mapping and file names.
//!
//! Method configs (`LoraConfig`, …) live in their method crates and embed [`PeftConfigCommon`].
//!
//! ```
//! use peft_config::targets::{TargetMatcher, TargetModules, TargetSpec, TargetMatch};
//!
//! let targets = TargetModules::list(["q_proj", "v_proj"]);
//! let matcher = TargetMatcher::new(&TargetSpec { target_modules: Some(&targets), ..Default::default() })?;
//! assert!(matches!(matcher.check("model.layers.0.self_attn.q_proj"), TargetMatch::Targeted { .. }));
//! assert_eq!(matcher.check("model.layers.0.self_attn.k_proj"), TargetMatch::NotTargeted);
//! # Ok::<(), peft_config::ConfigError>(())
//! ```

pub mod common;
pub mod defaults;
pub mod error;
pub mod files;
pub mod json;
pub mod keys;
pub mod patterns;
pub mod targets;

pub use common::{Num, PeftConfigCommon, TaskType, PEFT_VERSION};
pub use error::ConfigError;
pub use targets::{
    LayerIndices, LayersPattern, MatchReport, TargetMatch, TargetMatcher, TargetModules, TargetSpec,
};
