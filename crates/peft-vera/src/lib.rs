//! VeRA for peft-rs — HuggingFace PEFT 0.21.2's `VERA` on tch, with the same numbers and the same files.
//!
//! VeRA ("Vector-based Random Matrix Adaptation") freezes one pair of random low-rank projections shared
//! by every adapted layer and trains only two vectors per layer, which scale the projections' rows and
//! columns: far fewer trainable values than LoRA at the same rank.
//!
//! * [`VeraConfig`]: every key of PEFT's `VeraConfig` (`r`, `projection_prng_key`, `save_projection`,
//!   `vera_dropout`, `d_initial`, `bias`, `init_weights`, layer selection, `modules_to_save`) and its checks.
//! * [`VeraLayer`]: VeRA on `nn.Linear` and GPT-2's `Conv1D` — forward, delta weight, merge.
//! * The projections are drawn from a generator seeded with `projection_prng_key` (the numbers PyTorch
//!   draws, through [`peft_core::rng`]), sized by the largest targeted layer, and saved once as
//!   `base_model.vera_A` / `base_model.vera_B` (or drawn again on load with `save_projection: false`).
//!
//! ```
//! use peft_core::{nn, Adaptable, LoadOptions, PeftModel, SaveOptions};
//! use peft_core::peft_config::TargetModules;
//! use peft_vera::{VeraConfig, MethodConfig};
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
//! let config = VeraConfig { r: 8, target_modules: Some(TargetModules::list(["lin0", "lin1"])), ..VeraConfig::default() };
//! let peft = PeftModel::new(Mlp::new(&vs)?, &vs, config.boxed(), "default")?;
//! // lambda_b (20 + 2) and lambda_d (8 + 8); the shared 8×20 and 20×8 projections are frozen buffers.
//! assert_eq!(peft.trainable_parameters_line(),
//!            "trainable params: 38 || all params: 300 || trainable%: 12.6667");
//! let dir = tempfile::tempdir().unwrap();
//! peft.save_pretrained(dir.path(), &SaveOptions::default())?;
//! let saved = peft_core::io::read_safetensors(&dir.path().join("adapter_model.safetensors"))?;
//! assert!(saved.iter().any(|t| t.key == "base_model.vera_A"));
//!
//! let x = Tensor::randn([3, 10], (Kind::Float, Device::Cpu));
//! let mut vs2 = VarStore::new(Device::Cpu);
//! let base2 = Mlp::new(&vs2)?;
//! vs2.copy(&vs).map_err(peft_core::PeftError::torch("copying base weights"))?;
//! let (reloaded, _) = PeftModel::from_pretrained(base2, &vs2, dir.path(), LoadOptions::default())?;
//! assert!(reloaded.forward_t(&x, false).equal(&peft.forward_t(&x, false)));
//! # Ok(()) }
//! ```

pub mod config;
pub mod layer;

pub use config::{VeraConfig, PEFT_TYPE};
pub use layer::VeraLayer;
pub use peft_core::MethodConfig;
pub use peft_projections::{Projections, SharedProjections};

peft_core::register_method!(config::VeraConfig, "peft-vera");
