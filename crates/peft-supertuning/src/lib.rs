//! Super-Tuning for peft-rs — HuggingFace PEFT 0.21.2's `SUPERTUNING` on tch, with the same numbers and the
//! same files.
//!
//! Super-Tuning freezes each adapted weight and trains a sparse support of its entries: the
//! `⌊numel · (1 − sparsity)⌋` positions of largest (or smallest) magnitude, chosen once by `topk` from the
//! base weight and saved with the adapter as int32 flat positions (`supertuning_indices`) next to the f32
//! values (`supertuning_values`). Setting `r` adds a LoRA pair on top (the "Supra" hybrid). By default the
//! values and LoRA `B` start at zero, so the adapted model starts as the base.
//!
//! * [`SupertuningConfig`]: every key of PEFT's `SupertuningConfig` and its checks.
//! * [`SupertuningLayer`]: Super-Tuning on dense `nn.Linear` layers — forward for all active adapters
//!   together, merge / unmerge, PEFT's draws under the same seed; [`magnitude_support`] is its selection.
//!
//! Linking this crate registers `peft_type: "SUPERTUNING"`, so adapter directories saved by PEFT load by
//! file alone with `PeftModel::from_pretrained`.
//!
//! ```
//! use peft_core::{nn, Adaptable, LoadOptions, PeftModel, SaveOptions};
//! use peft_core::peft_config::{Num, TargetModules};
//! use peft_supertuning::{SupertuningConfig, MethodConfig};
//! use tch::nn::{ModuleT, VarStore};
//! use tch::{Device, Kind, Tensor};
//!
//! #[derive(Debug, Adaptable)]
//! struct Mlp { lin0: nn::Linear, lin1: nn::Linear }
//!
//! impl Mlp {
//!     fn new(vs: &VarStore) -> peft_core::Result<Self> {
//!         Ok(Mlp {
//!             lin0: nn::linear(vs.root() / "lin0", 10, 20, Default::default())?,
//!             lin1: nn::linear(vs.root() / "lin1", 20, 2, Default::default())?,
//!         })
//!     }
//! }
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
//! let config = SupertuningConfig {
//!     sparsity: Num::from(0.95),
//!     r: Some(2),
//!     target_modules: Some(TargetModules::list(["lin0"])),
//!     ..SupertuningConfig::default()
//! };
//! let mut peft = PeftModel::new(Mlp::new(&vs)?, &vs, config.boxed(), "default")?;
//! // 10 of the 200 entries of lin0, plus A (2 × 10) and B (20 × 2).
//! assert_eq!(peft.num_parameters().0, 10 + 20 + 40);
//! let x = Tensor::randn([3, 10], (Kind::Float, Device::Cpu));
//! let y = peft.forward_t(&x, false);
//! let base = peft.disable_adapters()?.forward_t(&x, false);
//! assert!(y.equal(&base)); // the identity at init
//!
//! let dir = tempfile::tempdir().unwrap();
//! peft.save_pretrained(dir.path(), &SaveOptions::default())?;
//! let mut vs2 = VarStore::new(Device::Cpu);
//! let base2 = Mlp::new(&vs2)?;
//! vs2.copy(&vs).map_err(peft_core::PeftError::torch("copying base weights"))?;
//! let (reloaded, _) = PeftModel::from_pretrained(base2, &vs2, dir.path(), LoadOptions::default())?;
//! assert!(reloaded.forward_t(&x, false).equal(&y));
//! # Ok(()) }
//! ```

pub mod config;
pub mod layer;

pub use config::{SupertuningConfig, PEFT_TYPE};
pub use layer::{magnitude_support, SupertuningLayer, Supra};
pub use peft_core::MethodConfig;

peft_core::register_method!(config::SupertuningConfig, "peft-supertuning");
