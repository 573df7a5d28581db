//! GLoRA for peft-rs — HuggingFace PEFT 0.21.2's `GLORA` ("Generalized LoRA") on tch, with the same
//! numbers and the same files.
//!
//! GLoRA rewrites a frozen linear layer as `W' = W + W⊙A + B`, `b' = b + b⊙D + E + W·C`, each of the five
//! terms a rank-`r` product, a vector, a scalar or absent, as `config_A_B`, `config_C` and `config_D_E`
//! choose. By default every term starts at zero, so the adapted layer starts as the base layer.
//!
//! * [`GloraConfig`]: every key of PEFT's `GloraConfig` and its checks.
//! * [`GloraLayer`]: GLoRA on plain `nn.Linear` layers — forward for all active adapters together, mixed
//!   batches, and PEFT's layer-wide merge and unmerge (all merged adapters from the original weights), with
//!   PEFT's draws under the same seed.
//!
//! Linking this crate registers `peft_type: "GLORA"`, so adapter directories saved by PEFT load by file
//! alone with `PeftModel::from_pretrained`.
//!
//! ```
//! use peft_core::{nn, Adaptable, LoadOptions, PeftModel, SaveOptions};
//! use peft_core::peft_config::TargetModules;
//! use peft_glora::{GloraConfig, MethodConfig};
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
//! let config = GloraConfig { r: 4, target_modules: Some(TargetModules::list(["lin0"])), ..GloraConfig::default() };
//! let mut peft = PeftModel::new(Mlp::new(&vs)?, &vs, config.boxed(), "default")?;
//! // A and B: (20 × 4) and (4 × 12) each; C: (12 × 4) and (4 × 1); D, E: one scalar each.
//! assert_eq!(peft.num_parameters().0, 2 * (80 + 48) + (48 + 4) + 2);
//! let x = Tensor::randn([3, 12], (Kind::Float, Device::Cpu));
//! // Every term starts at zero: the adapted model computes what the base does.
//! let y = peft.forward_t(&x, false);
//! let base = peft.disable_adapters()?.forward_t(&x, false);
//! assert!(y.allclose(&base, 1e-6, 1e-6, false));
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

pub use config::{GloraConfig, PathKind, PEFT_TYPE};
pub use layer::{GloraLayer, LayerState, Term, Terms};
pub use peft_core::MethodConfig;

peft_core::register_method!(config::GloraConfig, "peft-glora");
