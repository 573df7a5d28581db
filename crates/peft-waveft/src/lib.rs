//! WaveFT for peft-rs — HuggingFace PEFT 0.21.2's `WAVEFT` (Wavelet Fine-Tuning) on tch, with the same
//! numbers and the same files.
//!
//! WaveFT learns `n_frequency` coefficients of the weight update's one-level 2-D wavelet decomposition, at
//! cells drawn once from a seeded generator; the update is their inverse discrete wavelet transform
//! (PEFT's own `waverec2d` and filter tables, ported op for op), times `scaling`. The file holds only the
//! coefficients; the cells come back from `random_loc_seed` (drawn with libtorch's own generator through
//! [`peft_core::rng`], so they are PyTorch's). The coefficients start at zero: the adapted model starts as
//! the base model.
//!
//! * [`WaveftConfig`]: every key of PEFT's `WaveFTConfig` (`n_frequency`, `scaling`, `wavelet_family`,
//!   `use_idwt`, `random_loc_seed`, `n_frequency_pattern`, `proportional_parameters`, `init_weights`,
//!   `bias`, layer selection, `modules_to_save`).
//! * [`WaveftLayer`]: WaveFT on `nn.Linear` and GPT-2's `Conv1D`.
//! * [`wavelet`]: the families, their filters and the inverse transform.
//!
//! Linking this crate registers `peft_type: "WAVEFT"`, so adapter directories saved by PEFT load by file
//! alone with `PeftModel::from_pretrained`.
//!
//! ```
//! use peft_core::{nn, Adaptable, LoadOptions, PeftModel, SaveOptions};
//! use peft_core::peft_config::TargetModules;
//! use peft_waveft::{MethodConfig, WaveftConfig};
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
//! let config = WaveftConfig {
//!     n_frequency: 16,
//!     wavelet_family: "db2".into(),
//!     init_weights: false,
//!     target_modules: Some(TargetModules::list(["lin0", "lin1"])),
//!     ..WaveftConfig::default()
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
//! // The cells were drawn again from the seed: the same outputs.
//! assert!(reloaded.forward_t(&x, false).equal(&peft.forward_t(&x, false)));
//! # Ok(()) }
//! ```

pub mod config;
pub mod layer;
mod tables;
mod tables_pywt;
pub mod wavelet;

pub use config::{proportional_allocation, WaveftConfig, PEFT_TYPE};
pub use layer::{Reconstruction, WaveftLayer};
pub use peft_core::MethodConfig;

peft_core::register_method!(config::WaveftConfig, "peft-waveft");
