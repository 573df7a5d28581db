//! AdaMSS for peft-rs — HuggingFace PEFT 0.21.2's `ADAMSS` ("Adaptive Multi-Subspaces") on tch, with the
//! same numbers and the same files.
//!
//! Each adapted linear layer's `[W | b]` is decomposed by a seeded rank-`r` randomized SVD; the rows of
//! its left factor are clustered by scikit-learn's KMeans (replayed in [`kmeans`]) into subspaces, and
//! each subspace trains a low-rank pair on the frozen right factor. With the default
//! `init_weights="orthogonal"` every `Bᵢ` starts at zero, so the adapted layer starts as the base layer.
//!
//! * [`AdamssConfig`]: every key of PEFT's `AdamssConfig` and its checks.
//! * [`AdamssLayer`]: AdaMSS on plain `nn.Linear` (the only layer PEFT supports), forward for all active
//!   adapters, merge and unmerge of weight and bias.
//! * [`Asa`] / [`AsaCallback`]: PEFT's Adaptive Subspace Allocation (`update_and_allocate`, its
//!   `AdamssAsaCallback`) for hand-written loops and for `peft_train::Trainer`.
//!
//! Linking this crate registers `peft_type: "ADAMSS"`, so adapter directories saved by PEFT load by file
//! alone with `PeftModel::from_pretrained`.
//!
//! ```
//! use peft_core::{nn, Adaptable, PeftModel};
//! use peft_core::peft_config::TargetModules;
//! use peft_adamss::{AdamssConfig, MethodConfig};
//! use tch::nn::{ModuleT, VarStore};
//! use tch::{Device, Kind, Tensor};
//!
//! #[derive(Debug, Adaptable)]
//! struct Mlp { lin0: nn::Linear, lin1: nn::Linear }
//!
//! impl ModuleT for Mlp {
//!     fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
//!         self.lin1.forward_t(&self.lin0.forward_t(x, train).relu(), train)
//!     }
//! }
//!
//! # fn main() -> peft_core::Result<()> {
//! tch::manual_seed(0);
//! let vs = VarStore::new(Device::Cpu);
//! let mlp = Mlp {
//!     lin0: nn::linear(vs.root() / "lin0", 12, 20, Default::default())?,
//!     lin1: nn::linear(vs.root() / "lin1", 20, 2, Default::default())?,
//! };
//! let config = AdamssConfig { r: 8, num_subspaces: 3, target_modules: Some(TargetModules::list(["lin0"])), ..Default::default() };
//! let mut peft = PeftModel::new(mlp, &vs, config.boxed(), "default")?;
//! // Three subspaces of rank 1: each Aᵢ is (1 × 8), the Bᵢ together cover the 20 output rows.
//! assert_eq!(peft.num_parameters().0, 3 * 8 + 20);
//! let x = Tensor::randn([3, 12], (Kind::Float, Device::Cpu));
//! let y = peft.forward_t(&x, false);
//! let base = peft.disable_adapters()?.forward_t(&x, false);
//! assert!(y.allclose(&base, 1e-6, 1e-6, false));
//! # Ok(()) }
//! ```

pub mod asa;
pub mod config;
pub mod decompose;
pub mod kmeans;
pub mod layer;

pub use asa::{Asa, AsaCallback, AsaStep};
pub use config::{AdamssConfig, PEFT_TYPE};
pub use layer::AdamssLayer;
pub use peft_core::MethodConfig;

peft_core::register_method!(config::AdamssConfig, "peft-adamss");
