//! GraLoRA for peft-rs — HuggingFace PEFT 0.21.2's `GRALORA` ("Granular Low-Rank Adaptation") on tch, with
//! the same numbers and the same files.
//!
//! GraLoRA replaces one rank-`r` LoRA by a `k × k` grid of small ones whose ranks are shared across the
//! grid: every input block has its own `A`, every output block its own `B`, and each `B` reads a slice of
//! every block's `A` output. At the same parameter count as LoRA it updates the weight with `k` times the
//! expressivity per block and avoids the gradient entanglement of one large LoRA; `hybrid_r` adds an
//! ordinary LoRA over the whole weight.
//!
//! * [`GraloraConfig`]: every key of PEFT's `GraloraConfig` (`r`, `hybrid_r`, `alpha`, `gralora_k`,
//!   `gralora_dropout`, `fan_in_fan_out`, `init_weights`, layer selection, `bias`, `modules_to_save`) and its
//!   checks.
//! * [`GraloraLayer`]: GraLoRA on `nn.Linear` (dense or quantized) and GPT-2's `Conv1D` — forward with PEFT's
//!   einsums, merge, unmerge.
//!
//! Linking this crate registers `peft_type: "GRALORA"`, so adapter directories saved by PEFT load by file
//! alone with `PeftModel::from_pretrained`.
//!
//! ```
//! use peft_core::{nn, Adaptable, LoadOptions, PeftModel, SaveOptions};
//! use peft_core::peft_config::TargetModules;
//! use peft_gralora::{GraloraConfig, MethodConfig};
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
//! let config = GraloraConfig {
//!     r: 4,
//!     gralora_k: 2,
//!     target_modules: Some(TargetModules::list(["lin0"])),
//!     ..GraloraConfig::default()
//! };
//! let mut peft = PeftModel::new(Mlp::new(&vs)?, &vs, config.boxed(), "default")?;
//! // A (2, 5, 4) and B (2, 4, 10): as many values as a rank-4 LoRA.
//! assert_eq!(peft.num_parameters().0, 40 + 80);
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

pub use config::{GraloraConfig, PEFT_TYPE};
pub use layer::GraloraLayer;
pub use peft_core::MethodConfig;

peft_core::register_method!(config::GraloraConfig, "peft-gralora");
