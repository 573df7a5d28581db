//! The LyCORIS machinery of peft-rs: what HuggingFace PEFT 0.21.2's `LycorisConfig`, `LycorisLayer` and
//! `LycorisTuner` share between LoHa (`peft-loha`) and LoKr (`peft-lokr`). It registers no method.
//!
//! * [`LycorisOptions`]: the config keys both methods have (`r`, `alpha`, `rank_dropout`,
//!   `module_dropout`, `use_effective_conv2d`, target selection, `modules_to_save`, `rank_pattern`,
//!   `alpha_pattern`), their `__post_init__` checks and the per-module rank and alpha.
//! * [`LycorisLayer`]: one adapter on one `nn.Linear`, `nn.Conv1d` or `nn.Conv2d` — the additive forward
//!   `y = base(x) + op(x, ΔW)`, module and rank dropout drawn as PEFT draws them, merge and unmerge
//!   `W ± ΔW` — around a method's factors ([`LycorisAdapter`]), which only say how `ΔW` is built.
//!
//! ```
//! use peft_lycoris::layer::{LycorisAdapter, MaskKind};
//! use tch::Tensor;
//!
//! /// A toy method whose delta is one full matrix.
//! #[derive(Debug)]
//! struct Full(Tensor);
//!
//! impl LycorisAdapter for Full {
//!     const PEFT_TYPE: &'static str = "FULL";
//!     const CLASS_PREFIX: &'static str = "full";
//!     const MASK_KIND: MaskKind = MaskKind::Float;
//!     fn tensors(&self) -> Vec<(&'static str, &Tensor)> {
//!         vec![("full_w", &self.0)]
//!     }
//!     fn delta(&self, scaling: f64) -> Tensor {
//!         &self.0 * scaling
//!     }
//! }
//!
//! let f = Full(Tensor::ones([2, 3], (tch::Kind::Float, tch::Device::Cpu)));
//! assert_eq!(f.delta(0.5).sum(None).double_value(&[]), 3.0);
//! ```

pub mod config;
pub mod layer;

pub use config::{Alpha, LycorisOptions};
pub use layer::{LycorisAdapter, LycorisKind, LycorisLayer, LycorisParams, LycorisTarget, MaskKind};
