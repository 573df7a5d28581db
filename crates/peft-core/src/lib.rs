//! Parameter-efficient fine-tuning on tch (libtorch), compatible with HuggingFace PEFT 0.21.2.
//!
//! `peft-core` is the method-agnostic part of peft-rs: adaptable layers ([`layer`], [`nn`]), the model
//! visitor ([`Adaptable`], with `#[derive(Adaptable)]`), the adapter registry ([`registry`]), and
//! [`PeftModel`] with PEFT's operations — add / set / delete adapters, disable them in a scope, merge,
//! unmerge, `merge_and_unload`, save and load in PEFT's exact file format. Methods live in their own
//! crates (`peft-lora`, …) and plug in through [`config::AdapterConfig`] and [`layer::TunerLayer`].
//!
//! The config types, target matching and key grammar come from the libtorch-free `peft-config` crate,
//! re-exported as [`peft_config`].
//!
//! A tour, end to end, with LoRA: see the `peft-lora` crate documentation and `cargo xtask demo`.

// Lets `#[derive(Adaptable)]` (which names `::peft_core`) work inside this crate's own tests.
#[allow(unused_extern_crates)]
extern crate self as peft_core;

pub mod activation;
pub mod adaptable;
pub mod config;
pub mod durable;
pub mod error;
pub mod hotswap;
pub mod init;
pub mod io;
pub mod layer;
pub mod linalg;
pub mod mixed;
pub mod model;
pub mod model_options;
pub mod modules_to_save;
pub mod nn;
pub mod numpy_random;
pub mod param;
pub mod registry;
pub mod rng;
pub mod row_values;
mod slots;
pub mod status;
pub mod trainable_tokens;

pub use activation::Activation;
pub use adaptable::Adaptable;
pub use config::{
    AdapterConfig, BiasMode, LayerInit, LayerMethod, MethodConfig, TargetLayer, TargetView, TargetWeight,
};
pub use error::{PeftError, Result};
pub use layer::{
    AdaptableLayer, AdaptedLayer, AdapterSlots, BaseLayer, ConvGeometry, ConvLike, EmbeddingLike, ForwardCtx,
    ForwardHook, LinearLike, MergeCtx, TunerLayer, WeightLike,
};
pub use model::{
    inspect_targets, AdapterOptions, AdaptersDisabled, LoadOptions, LoadReport, PeftModel, SaveOptions,
};
pub use model_options::ModelOptions;
pub use peft_config;
pub use row_values::{InputRowValues, RowValues};

#[doc(hidden)]
pub use inventory;
