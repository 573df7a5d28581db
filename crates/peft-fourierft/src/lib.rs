//! FourierFT for peft-rs — HuggingFace PEFT 0.21.2's `FOURIERFT` on tch, with the same numbers and the same
//! files.
//!
//! FourierFT learns `n_frequency` coefficients of the weight update's 2-D Fourier spectrum, at positions
//! drawn once from a seeded generator; the update is the real part of the inverse FFT, scaled. The file
//! holds only the coefficients; the positions come back from `random_loc_seed` (drawn with libtorch's own
//! generator through [`peft_core::rng`], so they are PyTorch's).
//!
//! * [`FourierFtConfig`]: every key of PEFT's `FourierFTConfig` (`n_frequency`, `scaling`,
//!   `random_loc_seed`, `n_frequency_pattern`, `init_weights`, `bias`, layer selection, `modules_to_save`).
//! * [`FourierFtLayer`]: FourierFT on `nn.Linear` and GPT-2's `Conv1D`.
//!
//! ```
//! use peft_core::{nn, Adaptable, LoadOptions, PeftModel, SaveOptions};
//! use peft_core::peft_config::TargetModules;
//! use peft_fourierft::{FourierFtConfig, MethodConfig};
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
//! let config = FourierFtConfig {
//!     n_frequency: 16,
//!     target_modules: Some(TargetModules::list(["lin0", "lin1"])),
//!     ..FourierFtConfig::default()
//! };
//! let peft = PeftModel::new(Mlp::new(&vs)?, &vs, config.boxed(), "default")?;
//! assert_eq!(peft.num_parameters().0, 32); // 16 coefficients per layer
//! let x = Tensor::randn([3, 10], (Kind::Float, Device::Cpu));
//! let dir = tempfile::tempdir().unwrap();
//! peft.save_pretrained(dir.path(), &SaveOptions::default())?;
//! let mut vs2 = VarStore::new(Device::Cpu);
//! let base2 = Mlp::new(&vs2)?;
//! vs2.copy(&vs).map_err(peft_core::PeftError::torch("copying base weights"))?;
//! let (reloaded, _) = PeftModel::from_pretrained(base2, &vs2, dir.path(), LoadOptions::default())?;
//! // The positions were drawn again from the seed: the same outputs.
//! assert!(reloaded.forward_t(&x, false).equal(&peft.forward_t(&x, false)));
//! # Ok(()) }
//! ```

pub mod config;
pub mod layer;

pub use config::{FourierFtConfig, PEFT_TYPE};
pub use layer::FourierFtLayer;
pub use peft_core::MethodConfig;

peft_core::register_method!(config::FourierFtConfig, "peft-fourierft");
