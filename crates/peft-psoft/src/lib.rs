//! PSOFT for peft-rs — HuggingFace PEFT 0.21.2's `PSOFT` ("Efficient Orthogonal Fine-Tuning with Principal
//! Subspace Adaptation") on tch, with the same numbers and the same files.
//!
//! PSOFT restricts orthogonal fine-tuning to each weight's principal subspace: the top-`r` singular
//! vectors of the frozen weight give `A` `(r, in)` and `B` `(out, r)` (frozen, rebuilt from the weight, not
//! saved), and only an `r × r` transform `R` between them trains — `ΔW = α/r · B·(R − I)·A`. With
//! `psoft_orth` `R` is the Cayley transform of a skew-symmetric matrix (exact, or its Neumann series),
//! so it rotates the principal directions without changing their geometry; `psoft_mag_a` / `psoft_mag_b`
//! add trainable scales on either side.
//!
//! * [`PsoftConfig`]: every key of PEFT's `PsoftConfig` and its checks and warnings.
//! * [`PsoftLayer`]: PSOFT on dense `nn.Linear` — the subspace from `torch.linalg.svd` or
//!   `torch.svd_lowrank` (seeded inside a fork of the global generator, as PEFT does), forward with
//!   dropout in training, merge, unmerge, as PEFT computes them.
//!
//! Linking this crate registers `peft_type: "PSOFT"`, so adapter directories saved by PEFT load by file
//! alone with `PeftModel::from_pretrained`.
//!
//! ```
//! use peft_core::{nn, Adaptable, LoadOptions, PeftModel, SaveOptions};
//! use peft_core::peft_config::TargetModules;
//! use peft_psoft::{MethodConfig, PsoftConfig};
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
//! let config = PsoftConfig { r: 4, target_modules: Some(TargetModules::list(["lin0"])), ..PsoftConfig::default() };
//! let mut peft = PeftModel::new(Mlp::new(&vs)?, &vs, config.boxed(), "default")?;
//! // Only R trains: 4·3/2 Cayley values and the two 4-wide magnitude vectors.
//! assert_eq!(peft.num_parameters().0, 6 + 4 + 4);
//! let x = Tensor::randn([3, 12], (Kind::Float, Device::Cpu));
//! // R starts as the identity: the adapted model computes what the base does.
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

pub use config::{PsoftConfig, PEFT_TYPE};
pub use layer::{OrthOptions, PsoftLayer};
pub use peft_core::MethodConfig;

peft_core::register_method!(config::PsoftConfig, "peft-psoft");
