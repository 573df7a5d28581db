//! HRA for peft-rs — HuggingFace PEFT 0.21.2's `HRA` (Householder reflection adaptation) on tch, with the
//! same numbers and the same files.
//!
//! HRA multiplies each adapted weight on its input side by an orthogonal matrix built from `r` learned
//! Householder vectors (`W' = W·H`), a weight transform between OFT's rotations and LoRA's low rank. Its
//! default init pairs the vectors so that `H = I`: a fresh adapter computes what the base does.
//!
//! * [`HraConfig`]: every key of PEFT's `HRAConfig` (`r`, `apply_GS`, `target_modules`,
//!   `exclude_modules`, `init_weights`, `layers_to_transform`, `layers_pattern`, `bias`,
//!   `modules_to_save`) and its checks.
//! * [`HraLayer`]: HRA on `nn.Linear` and `nn.Conv2d` — forward with the reflected weight, merge and
//!   unmerge (reflections in reverse order), as PEFT computes them; several active adapters multiply
//!   their matrices in activation order.
//!
//! Linking this crate registers `peft_type: "HRA"`, so adapter directories saved by PEFT load by file
//! alone with `PeftModel::from_pretrained`.
//!
//! ```
//! use peft_core::{nn, Adaptable, LoadOptions, PeftModel, SaveOptions};
//! use peft_core::peft_config::TargetModules;
//! use peft_hra::{HraConfig, MethodConfig};
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
//! let config = HraConfig {
//!     target_modules: Some(TargetModules::list(["lin0", "lin1"])),
//!     r: 4,
//!     ..HraConfig::default()
//! };
//! let mut peft = PeftModel::new(Mlp::new(&vs)?, &vs, config.boxed(), "default")?;
//! // 4 vectors of lin0's 10 inputs + 4 of lin1's 20 inputs.
//! assert_eq!(peft.trainable_parameters_line(),
//!            "trainable params: 120 || all params: 382 || trainable%: 31.4136");
//! let x = Tensor::randn([3, 10], (Kind::Float, Device::Cpu));
//! // Paired vectors: the reflections cancel, the adapted model computes what the base does (up to
//! // rounding in the product of reflections).
//! let y = peft.forward_t(&x, false);
//! let base = peft.disable_adapters()?.forward_t(&x, false);
//! assert!((&y - &base).abs().max().double_value(&[]) < 1e-5);
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

pub use config::{HraConfig, PEFT_TYPE};
pub use layer::{HraKind, HraLayer};
pub use peft_core::MethodConfig;

peft_core::register_method!(config::HraConfig, "peft-hra");
