//! HiRA for peft-rs — HuggingFace PEFT 0.21.2's `HIRA` ("Hadamard High-Rank Adaptation") on tch, with the
//! same numbers and the same files.
//!
//! LoRA's update `B·A` has rank at most `r`. HiRA multiplies it element-wise into the frozen weight,
//! `ΔW = W ⊙ (B·A)`, which keeps the parameter count of a rank-`r` LoRA but gives an update of high rank
//! that follows the structure of `W`. There is no scaling factor; with `init_weights: true` (the default)
//! `B` starts at zero and the adapter starts as the identity.
//!
//! * [`HiraConfig`]: every key of PEFT's `HiraConfig` (`r`, `rank_pattern`, `hira_dropout`,
//!   `init_weights` — `true`, `false`, `"gaussian"`, `null` —, `fan_in_fan_out`, layer selection,
//!   `modules_to_save`) and its checks.
//! * [`HiraLayer`]: HiRA on `nn.Linear`, GPT-2's `Conv1D`, `nn.Embedding` and `nn.Conv1d/2d/3d` — forward
//!   with dropout in training, merge from the unmerged weight, exact unmerge, as PEFT computes them, with
//!   PEFT's random draws under the same seed.
//!
//! Linking this crate registers `peft_type: "HIRA"`, so adapter directories saved by PEFT load by file
//! alone with `PeftModel::from_pretrained`.
//!
//! ```
//! use peft_core::{nn, Adaptable, LoadOptions, PeftModel, SaveOptions};
//! use peft_core::peft_config::TargetModules;
//! use peft_hira::{HiraConfig, MethodConfig};
//! use tch::nn::{ModuleT, VarStore};
//! use tch::{Device, Kind, Tensor};
//!
//! #[derive(Debug, Adaptable)]
//! struct Mlp { lin0: nn::Linear, lin1: nn::Linear }
//!
//! impl Mlp {
//!     fn new(vs: &VarStore) -> peft_core::Result<Self> {
//!         Ok(Mlp {
//!             lin0: nn::linear(vs.root() / "lin0", 12, 20, Default::default())?,
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
//! let config = HiraConfig { r: 4, target_modules: Some(TargetModules::list(["lin0"])), ..HiraConfig::default() };
//! let mut peft = PeftModel::new(Mlp::new(&vs)?, &vs, config.boxed(), "default")?;
//! // A (4 × 12) and B (20 × 4): 128 values for a rank-12 update.
//! assert_eq!(peft.num_parameters().0, 48 + 80);
//! let x = Tensor::randn([3, 12], (Kind::Float, Device::Cpu));
//! // B starts at zero: the adapted model computes what the base does.
//! let y = peft.forward_t(&x, false);
//! assert!(y.equal(&peft.disable_adapters()?.forward_t(&x, false)));
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

pub use config::{HiraConfig, HiraInit, PEFT_TYPE};
pub use layer::{HiraBase, HiraLayer};
pub use peft_core::MethodConfig;

peft_core::register_method!(config::HiraConfig, "peft-hira");
