//! UniLoRA for peft-rs — HuggingFace PEFT 0.21.2's `UNILORA` ("Uni-LoRA: One Vector Is All You Need") on
//! tch, with the same numbers and the same files.
//!
//! UniLoRA trains one vector θ per adapter. Every entry of every adapted layer's LoRA factors `A` `(r, in)`
//! and `B` `(out, r)` is an entry of θ, chosen by a fixed index map that NumPy draws from `proj_seed`
//! (each entry of θ used equally often, give or take one) and scaled by `1/√(uses)`; the layer adds
//! `B·A·x` as LoRA does. The file holds θ alone (`base_model.unilora_theta_d`), or θ with the maps and
//! scales when `save_indices` is set.
//!
//! * [`UniloraConfig`]: every key of PEFT's `UniLoraConfig` and its checks.
//! * [`UniloraLayer`]: UniLoRA on dense `nn.Linear` and GPT-2's `Conv1D` — forward for all active
//!   adapters, merge, unmerge, PEFT's draws under the same seed.
//! * [`numpy_rng`]: NumPy's `default_rng` (SeedSequence + PCG64) with `choice` and `shuffle`, which PEFT's
//!   index map uses.
//!
//! Linking this crate registers `peft_type: "UNILORA"`, so adapter directories saved by PEFT load by file
//! alone with `PeftModel::from_pretrained`.
//!
//! ```
//! use peft_core::{nn, Adaptable, LoadOptions, PeftModel, SaveOptions};
//! use peft_core::peft_config::TargetModules;
//! use peft_unilora::{MethodConfig, UniloraConfig};
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
//!             lin1: nn::linear(vs.root() / "lin1", 20, 10, Default::default())?,
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
//! let config = UniloraConfig {
//!     r: 2,
//!     theta_d_length: 32,
//!     target_modules: Some(TargetModules::list(["lin0", "lin1"])),
//!     ..UniloraConfig::default()
//! };
//! let mut peft = PeftModel::new(Mlp::new(&vs)?, &vs, config.boxed(), "default")?;
//! // θ is all that trains.
//! assert_eq!(peft.num_parameters().0, 32);
//! let x = Tensor::randn([3, 10], (Kind::Float, Device::Cpu));
//! let y = peft.forward_t(&x, false);
//!
//! let dir = tempfile::tempdir().unwrap();
//! peft.save_pretrained(dir.path(), &SaveOptions::default())?;
//! let mut vs2 = VarStore::new(Device::Cpu);
//! let base2 = Mlp::new(&vs2)?;
//! vs2.copy(&vs).map_err(peft_core::PeftError::torch("copying base weights"))?;
//! // The index map is drawn again from proj_seed: the same outputs.
//! let (mut reloaded, _) = PeftModel::from_pretrained(base2, &vs2, dir.path(), LoadOptions::default())?;
//! assert!(reloaded.forward_t(&x, false).equal(&y));
//! reloaded.merge_adapter(None, true)?;
//! assert!((reloaded.forward_t(&x, false) - &y).abs().max().double_value(&[]) < 1e-5);
//! # Ok(()) }
//! ```

pub mod config;
pub mod layer;
pub mod numpy_rng;
pub mod shared;

pub use config::{UniloraConfig, PEFT_TYPE};
pub use layer::UniloraLayer;
pub use peft_core::MethodConfig;
pub use shared::{AdapterPlan, SharedTheta};

peft_core::register_method!(config::UniloraConfig, "peft-unilora");
