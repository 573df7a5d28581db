//! PEANuT for peft-rs — HuggingFace PEFT 0.21.2's `PEANUT` ("Parameter-Efficient Adaptation with
//! Weight-aware Neural Tweakers") on tch, with the same numbers and the same files.
//!
//! Where LoRA learns `ΔW = B·A` independently of the weight it updates, PEANuT computes the update *from*
//! the frozen weight: a small network — `A` `(out → r)`, `depth` encoder/decoder pairs with residual
//! connections, `B` `(r → out)`, an `ACT2FN` activation after every projection but `B` — maps the rows of
//! `Wᵀ` to the rows of `ΔWᵀ`. With `init_weights: true` (the default) `B` starts at zero, so the adapted
//! model starts as the base model.
//!
//! * [`PeanutConfig`]: every key of PEFT's `PeanutConfig` (`r`, `depth`, `act_fn`, `scaling`,
//!   `init_weights`, layer selection, `modules_to_save`) and its checks.
//! * [`PeanutLayer`]: PEANuT on dense `nn.Linear` — forward, merge and exact unmerge as PEFT computes
//!   them, with PEFT's random draws under the same seed.
//!
//! Linking this crate registers `peft_type: "PEANUT"`, so adapter directories saved by PEFT load by file
//! alone with `PeftModel::from_pretrained`.
//!
//! ```
//! use peft_core::{nn, Adaptable, LoadOptions, PeftModel, SaveOptions};
//! use peft_core::peft_config::TargetModules;
//! use peft_peanut::{MethodConfig, PeanutConfig};
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
//! let config = PeanutConfig {
//!     r: 4,
//!     depth: 1,
//!     target_modules: Some(TargetModules::list(["lin0"])),
//!     ..PeanutConfig::default()
//! };
//! let mut peft = PeftModel::new(Mlp::new(&vs)?, &vs, config.boxed(), "default")?;
//! // A (4 × 20), one encoder and one decoder (4 × 4 each), B (20 × 4).
//! assert_eq!(peft.num_parameters().0, 80 + 16 + 16 + 80);
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

pub use config::{PeanutConfig, PEFT_TYPE};
pub use layer::PeanutLayer;
pub use peft_core::MethodConfig;

peft_core::register_method!(config::PeanutConfig, "peft-peanut");
