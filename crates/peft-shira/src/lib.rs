//! SHiRA for peft-rs — HuggingFace PEFT 0.21.2's `SHIRA` on tch, with the same numbers and the same files.
//!
//! SHiRA ("Sparse High Rank Adapter") trains `r · (in + out)` individual entries of each adapted weight —
//! as many values as LoRA of rank `r`, but a sparse update of high rank — at positions drawn once from a
//! seeded generator (libtorch's own, through [`peft_core::rng`]) and saved with the adapter.
//!
//! * [`ShiraConfig`]: every key of PEFT's `ShiraConfig` (`r`, `mask_type` "random", `random_seed`,
//!   `init_weights`, `modules_to_save`).
//! * [`ShiraLayer`]: SHiRA on `nn.Linear` (dense or quantized), several active adapters summed into one
//!   weight as PEFT does, merge / unmerge.
//!
//! ```
//! use peft_core::{nn, Adaptable, LoadOptions, PeftModel, SaveOptions};
//! use peft_core::peft_config::TargetModules;
//! use peft_shira::{ShiraConfig, MethodConfig};
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
//! let config = ShiraConfig { r: 1, random_seed: Some(3), target_modules: Some(TargetModules::list(["lin0"])),
//!                            ..ShiraConfig::default() };
//! let peft = PeftModel::new(Mlp::new(&vs)?, &vs, config.boxed(), "default")?;
//! assert_eq!(peft.num_parameters().0, 30); // r · (in + out) entries of the 20×10 weight
//! let x = Tensor::randn([3, 10], (Kind::Float, Device::Cpu));
//! let dir = tempfile::tempdir().unwrap();
//! peft.save_pretrained(dir.path(), &SaveOptions::default())?;
//! let mut vs2 = VarStore::new(Device::Cpu);
//! let base2 = Mlp::new(&vs2)?;
//! vs2.copy(&vs).map_err(peft_core::PeftError::torch("copying base weights"))?;
//! let (reloaded, _) = PeftModel::from_pretrained(base2, &vs2, dir.path(), LoadOptions::default())?;
//! assert!(reloaded.forward_t(&x, false).equal(&peft.forward_t(&x, false)));
//! # Ok(()) }
//! ```

pub mod config;
pub mod layer;

pub use config::{ShiraConfig, PEFT_TYPE, TORCH_DEFAULT_SEED};
pub use layer::{random_mask_indices, ShiraLayer};
pub use peft_core::MethodConfig;

peft_core::register_method!(config::ShiraConfig, "peft-shira");
