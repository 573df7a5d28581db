//! DeLoRA for peft-rs — HuggingFace PEFT 0.21.2's `DELORA` ("Decoupled Low-rank Adaptation") on tch, with
//! the same numbers and the same files.
//!
//! DeLoRA is LoRA with normalised factors: each rank-one component `bᵢ aᵢᵀ` is divided by its norms and the
//! whole update is scaled by a learned bound `λ` over the rank and by the base weight's column norms. The
//! update's direction and its strength train separately, which keeps fine-tuning from drifting far from
//! the base model at high learning rates.
//!
//! * [`DeloraConfig`]: every key of PEFT's `DeloraConfig` (`r`, `delora_lambda`, `module_dropout`,
//!   `rank_pattern`, `lambda_pattern`, `init_weights`, layer selection, `bias`, `modules_to_save`) and its
//!   checks.
//! * [`DeloraLayer`]: DeLoRA on `nn.Linear` — forward (several active adapters summed first, as PEFT does),
//!   merge, unmerge; the base weight's column norms are a buffer saved with the adapter.
//!
//! Linking this crate registers `peft_type: "DELORA"`, so adapter directories saved by PEFT load by file
//! alone with `PeftModel::from_pretrained`.
//!
//! ```
//! use peft_core::{nn, Adaptable, LoadOptions, PeftModel, SaveOptions};
//! use peft_core::peft_config::TargetModules;
//! use peft_delora::{DeloraConfig, MethodConfig};
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
//! let config = DeloraConfig { r: 4, target_modules: Some(TargetModules::list(["lin0"])), ..DeloraConfig::default() };
//! let mut peft = PeftModel::new(Mlp::new(&vs)?, &vs, config.boxed(), "default")?;
//! // A (4, 10), B (20, 4) and λ train; the column norms are a buffer.
//! assert_eq!(peft.num_parameters().0, 40 + 80 + 1);
//! let x = Tensor::randn([3, 10], (Kind::Float, Device::Cpu));
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

pub use config::{DeloraConfig, PEFT_TYPE};
pub use layer::DeloraLayer;
pub use peft_core::MethodConfig;

peft_core::register_method!(config::DeloraConfig, "peft-delora");
