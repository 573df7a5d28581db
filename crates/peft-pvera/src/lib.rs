//! PVeRA for peft-rs — HuggingFace PEFT 0.21.2's `PVERA` ("Probabilistic Vector-based Random Matrix
//! Adaptation") on tch, with the same numbers and the same files.
//!
//! Like VeRA, every adapted layer uses slices of two frozen random projections shared by the whole adapter
//! (`pvera_A` `(2r, max in)`, `pvera_B` `(max out, r)`, drawn from `projection_prng_key`) and trains only
//! two vectors, `λ_d` `(2r)` and `λ_b` `(out)`. The scaled code `λ_d ⊙ A_s·x` splits into a mean and a
//! log-variance; training (and inference with `sample_at_inference`) passes a reparameterised sample on,
//! evaluation the mean, and merging folds in the mean path.
//!
//! * [`PveraConfig`]: every key of PEFT's `PveraConfig` and its checks.
//! * [`PveraLayer`]: PVeRA on `nn.Linear` (dense or quantized) and GPT-2's `Conv1D` — forward with dropout
//!   and sampling (from the global stream or a per-layer generator seeded with `generator_seed`), merge,
//!   unmerge, as PEFT computes them; the projections shared through `peft_projections`, saved once as
//!   `base_model.pvera_A` / `pvera_B` or drawn again on load.
//!
//! Linking this crate registers `peft_type: "PVERA"`, so adapter directories saved by PEFT load by file
//! alone with `PeftModel::from_pretrained`.
//!
//! ```
//! use peft_core::{nn, Adaptable, LoadOptions, PeftModel, SaveOptions};
//! use peft_core::peft_config::TargetModules;
//! use peft_pvera::{MethodConfig, PveraConfig};
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
//! let config = PveraConfig { r: 4, target_modules: Some(TargetModules::list(["lin0"])), ..PveraConfig::default() };
//! let mut peft = PeftModel::new(Mlp::new(&vs)?, &vs, config.boxed(), "default")?;
//! // Only the vectors train: λ_b (20) and λ_d (2r = 8); the projections are frozen.
//! assert_eq!(peft.num_parameters().0, 20 + 8);
//! let x = Tensor::randn([3, 12], (Kind::Float, Device::Cpu));
//! // λ_b starts at zero: the adapted model computes what the base does.
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

pub use config::{PveraConfig, PEFT_TYPE};
pub use layer::PveraLayer;
pub use peft_core::MethodConfig;

peft_core::register_method!(config::PveraConfig, "peft-pvera");
