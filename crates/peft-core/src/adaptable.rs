//! Making a model adaptable by name: a visitor over its adaptable layers.
//!
//! Rust has no runtime module tree, so a model lists its [`AdaptableLayer`]s through [`Adaptable`]. Each
//! layer already knows its PEFT module name (the `nn::Path` it was built under), so the visitor only
//! has to reach every layer; the order it does so in is the model's module order, which PEFT's
//! `named_modules()` order must equal for same-seed initialisation to match (define fields in the order
//! the PyTorch module registers them).
//!
//! `#[derive(Adaptable)]` writes the visitor for a struct: every field is visited (so a field type
//! without an `Adaptable` impl is a compile error, not a silently unadaptable layer); mark fields that
//! hold no layers with `#[peft(skip)]`. Impls are provided for adaptable layers, `Vec`, `Option`,
//! `Box`, arrays, and as no-ops for plain data and tch's own modules.
//!
//! ```
//! use peft_core::{nn, Adaptable};
//! use tch::nn::VarStore;
//!
//! #[derive(Debug, Adaptable)]
//! struct Block {
//!     lin0: nn::Linear,
//!     lin1: nn::Linear,
//!     #[peft(skip)]
//!     dropout: f64,
//! }
//!
//! let vs = VarStore::new(tch::Device::Cpu);
//! let p = vs.root();
//! let blocks: Vec<Block> = (0..2)
//!     .map(|i| {
//!         let b = &p / "layers" / i;
//!         Ok(Block {
//!             lin0: nn::linear(&b / "lin0", 4, 4, Default::default())?,
//!             lin1: nn::linear(&b / "lin1", 4, 4, Default::default())?,
//!             dropout: 0.1,
//!         })
//!     })
//!     .collect::<peft_core::Result<_>>()?;
//! let names = peft_core::adaptable::layer_names(&blocks);
//! assert_eq!(names, ["layers.0.lin0", "layers.0.lin1", "layers.1.lin0", "layers.1.lin1"]);
//! # Ok::<(), peft_core::PeftError>(())
//! ```

use crate::error::Result;
use crate::layer::{AdaptableLayer, AdaptedLayer, BaseLayer};

pub use peft_derive::Adaptable;

/// A model (or part of one) whose adaptable layers can be visited.
pub trait Adaptable {
    /// Calls `f` on every adaptable layer, in module order.
    fn visit_layers(&self, f: &mut dyn FnMut(&dyn AdaptableLayer));

    /// Calls `f` on every adaptable layer, mutably, in module order; stops at the first error.
    ///
    /// # Errors
    /// The first error `f` returns.
    fn visit_layers_mut(&mut self, f: &mut dyn FnMut(&mut dyn AdaptableLayer) -> Result<()>) -> Result<()>;

    /// The module name of the output embedding (`lm_head`) of a transformers-style model, which
    /// `all-linear` never targets. `None` for other models.
    fn output_embedding(&self) -> Option<String> {
        None
    }

    /// The module name of the input embedding (transformers' `get_input_embeddings()`), which list-form
    /// `trainable_token_indices` train. `None`: PEFT's fallback name `embed_tokens`.
    fn input_embedding(&self) -> Option<String> {
        None
    }

    /// Modules whose weight is the input embedding's (a tied `lm_head`), when the model ties them.
    fn tied_with_input_embedding(&self) -> Vec<String> {
        Vec::new()
    }

    /// PEFT's `replicate_layers` (LoRA's `layer_replication`): rebuilds the model's layer list from the
    /// `[start, end)` ranges of `map`, the copies sharing their weights with the originals, and names
    /// them by their new positions.
    ///
    /// # Errors
    /// The default: the model has no replicable layer list.
    fn replicate_layers(&mut self, map: &[(usize, usize)]) -> Result<()> {
        let _ = map;
        Err(crate::PeftError::Invalid(
            "Could not locate the layers attribute in the model. Expected Llama, Bert or Falcon compatible \
             architectures."
                .into(),
        ))
    }

    /// PEFT's `auto_mapping` for models with a Python counterpart (`{"base_model_class": "LlamaForCausalLM",
    /// "parent_library": "transformers.models.llama.modeling_llama"}`), written into saved configs whose
    /// `task_type` is null so that `AutoPeftModel` can rebuild the base model. `None` for models that
    /// exist only in Rust.
    fn auto_mapping(&self) -> Option<serde_json::Value> {
        None
    }

    /// The transformers `model_type` (`"llama"`, `"bert"`, …) of models that mirror a transformers
    /// architecture; methods use it to pick PEFT's default `target_modules` when a config gives none.
    fn model_type(&self) -> Option<String> {
        None
    }
}

/// Sets `hook` on the layers of `model` named in `modules` (PyTorch's `register_forward_hook`), or removes
/// their hooks with `None`; every later forward pass calls it with `(module, input, output)`. Data-driven
/// initialisations (CorDA, LoRA-GA) use it on the bare model; [`crate::PeftModel::set_forward_hook`] on an
/// adapted one.
///
/// # Errors
/// A name that is no adaptable layer of the model.
pub fn set_forward_hook<M: Adaptable + ?Sized>(
    model: &mut M,
    modules: &[String],
    hook: Option<crate::layer::ForwardHook>,
) -> Result<()> {
    let mut missing: std::collections::BTreeSet<&str> = modules.iter().map(String::as_str).collect();
    model.visit_layers_mut(&mut |layer| {
        if missing.remove(layer.name()) {
            layer.parts_mut().1.set_hook(hook.clone());
        }
        Ok(())
    })?;
    if !missing.is_empty() {
        return Err(crate::PeftError::Invalid(format!("no adaptable layers named {missing:?} to hook")));
    }
    Ok(())
}

/// The names of all adaptable layers of a model, in module order.
pub fn layer_names<M: Adaptable + ?Sized>(model: &M) -> Vec<String> {
    let mut names = Vec::new();
    model.visit_layers(&mut |l| names.push(l.name().to_string()));
    names
}

impl<B: BaseLayer> Adaptable for AdaptedLayer<B> {
    fn visit_layers(&self, f: &mut dyn FnMut(&dyn AdaptableLayer)) {
        f(self)
    }
    fn visit_layers_mut(&mut self, f: &mut dyn FnMut(&mut dyn AdaptableLayer) -> Result<()>) -> Result<()> {
        f(self)
    }
}

impl<T: Adaptable> Adaptable for Vec<T> {
    fn visit_layers(&self, f: &mut dyn FnMut(&dyn AdaptableLayer)) {
        self.iter().for_each(|t| t.visit_layers(f))
    }
    fn visit_layers_mut(&mut self, f: &mut dyn FnMut(&mut dyn AdaptableLayer) -> Result<()>) -> Result<()> {
        self.iter_mut().try_for_each(|t| t.visit_layers_mut(f))
    }
}

impl<T: Adaptable, const N: usize> Adaptable for [T; N] {
    fn visit_layers(&self, f: &mut dyn FnMut(&dyn AdaptableLayer)) {
        self.iter().for_each(|t| t.visit_layers(f))
    }
    fn visit_layers_mut(&mut self, f: &mut dyn FnMut(&mut dyn AdaptableLayer) -> Result<()>) -> Result<()> {
        self.iter_mut().try_for_each(|t| t.visit_layers_mut(f))
    }
}

impl<T: Adaptable> Adaptable for Option<T> {
    fn visit_layers(&self, f: &mut dyn FnMut(&dyn AdaptableLayer)) {
        if let Some(t) = self {
            t.visit_layers(f)
        }
    }
    fn visit_layers_mut(&mut self, f: &mut dyn FnMut(&mut dyn AdaptableLayer) -> Result<()>) -> Result<()> {
        match self {
            Some(t) => t.visit_layers_mut(f),
            None => Ok(()),
        }
    }
}

impl<T: Adaptable + ?Sized> Adaptable for Box<T> {
    fn visit_layers(&self, f: &mut dyn FnMut(&dyn AdaptableLayer)) {
        (**self).visit_layers(f)
    }
    fn visit_layers_mut(&mut self, f: &mut dyn FnMut(&mut dyn AdaptableLayer) -> Result<()>) -> Result<()> {
        (**self).visit_layers_mut(f)
    }
    fn output_embedding(&self) -> Option<String> {
        (**self).output_embedding()
    }
    fn auto_mapping(&self) -> Option<serde_json::Value> {
        (**self).auto_mapping()
    }
    fn model_type(&self) -> Option<String> {
        (**self).model_type()
    }
    fn input_embedding(&self) -> Option<String> {
        (**self).input_embedding()
    }
    fn replicate_layers(&mut self, map: &[(usize, usize)]) -> Result<()> {
        (**self).replicate_layers(map)
    }
    fn tied_with_input_embedding(&self) -> Vec<String> {
        (**self).tied_with_input_embedding()
    }
}

/// Implements [`Adaptable`] as "holds no adaptable layer" for types that cannot contain one.
#[macro_export]
macro_rules! impl_no_layers {
    ($($t:ty),* $(,)?) => {
        $(
            impl $crate::Adaptable for $t {
                fn visit_layers(&self, _f: &mut dyn FnMut(&dyn $crate::AdaptableLayer)) {}
                fn visit_layers_mut(
                    &mut self,
                    _f: &mut dyn FnMut(&mut dyn $crate::AdaptableLayer) -> $crate::Result<()>,
                ) -> $crate::Result<()> {
                    Ok(())
                }
            }
        )*
    };
}

impl_no_layers!(
    bool,
    u8,
    u16,
    u32,
    u64,
    usize,
    i8,
    i16,
    i32,
    i64,
    isize,
    f32,
    f64,
    String,
    tch::Tensor,
    tch::Kind,
    tch::Device,
    crate::activation::Activation,
    tch::nn::LayerNorm,
    tch::nn::Embedding,
    tch::nn::BatchNorm,
    tch::nn::Conv1D,
    tch::nn::Conv2D,
    tch::nn::Conv3D,
);
