//! C3A for peft-rs — HuggingFace PEFT 0.21.2's `C3A` ("Circular Convolution Adaptation") on tch, with the
//! same numbers and the same files.
//!
//! C3A learns, for every `block_size × block_size` block of an adapted weight, one circulant matrix — a
//! single length-`block_size` kernel the block's input piece is circularly convolved with — and applies
//! them with FFTs. The update can have full rank while storing `in · out / block_size` values.
//!
//! * [`C3AConfig`]: every key of PEFT's `C3AConfig` (`block_size`, `block_size_pattern`, `init_weights`,
//!   layer selection, `bias`, `modules_to_save`) and its checks.
//! * [`C3aLayer`]: C3A on `nn.Linear` (dense or quantized) — forward with PEFT's FFTs and einsum, merge,
//!   unmerge.
//!
//! Training uses PEFT's hand-written backward of the convolution (a libtorch autograd function in
//! `csrc/c3a.cpp`), so optimizer steps equal PEFT's. Its kernel gradient is the true one; its input
//! gradient (what flows on to earlier layers) is PEFT's formula, which differs from autograd's — kept, for
//! the same numbers as PEFT (the behaviour tests pin both facts).
//!
//! Linking this crate registers `peft_type: "C3A"`, so adapter directories saved by PEFT load by file
//! alone with `PeftModel::from_pretrained`.
//!
//! ```
//! use peft_c3a::{C3AConfig, C3aInit, MethodConfig};
//! use peft_core::{nn, Adaptable, LoadOptions, PeftModel, SaveOptions};
//! use peft_core::peft_config::TargetModules;
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
//! let config = C3AConfig {
//!     block_size: 5,
//!     init_weights: C3aInit::Bool(true),
//!     target_modules: Some(TargetModules::list(["lin0"])),
//!     ..C3AConfig::default()
//! };
//! let mut peft = PeftModel::new(Mlp::new(&vs)?, &vs, config.boxed(), "default")?;
//! // One length-5 kernel per 5 × 5 block of the 20 × 10 weight.
//! assert_eq!(peft.num_parameters().0, 4 * 2 * 5);
//! let x = Tensor::randn([3, 10], (Kind::Float, Device::Cpu));
//! // Zero kernels: the adapted model computes what the base does.
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

pub use config::{C3AConfig, C3aInit, PEFT_TYPE};
pub use layer::{block_circular_convolution, C3aLayer};
pub use peft_core::MethodConfig;

peft_core::register_method!(config::C3AConfig, "peft-c3a");
