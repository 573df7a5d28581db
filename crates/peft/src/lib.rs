//! peft-rs in one dependency: [`peft_core`] (re-exported as [`core`]) and every method crate, each behind a
//! cargo feature named after it (all on by default), re-exported under the method's short name.
//!
//! Depending on this crate links every enabled method, so `PeftModel::from_pretrained` loads adapters of
//! any of them by file alone (a method crate registers its `peft_type` only when it is linked).
//!
//! ```
//! // Every enabled method is registered.
//! let linked = peft::linked_methods();
//! assert!(linked.contains(&"LORA") && linked.contains(&"IA3"));
//! ```

pub use peft_core as core;

// The method crates' re-exports and `linked_methods`, generated from their manifests.
mod methods;
pub use methods::*;
