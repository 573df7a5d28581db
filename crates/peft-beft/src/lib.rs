//! BEFT for peft-rs — HuggingFace PEFT 0.21.2's `BEFT` (bias-efficient fine-tuning) on tch, with the same
//! numbers and the same files.
//!
//! BEFT trains only an offset to the bias of the adapted linear layers — by default the attention value
//! projections — which is among the cheapest adapters there is and merges exactly into the base bias.
//!
//! * [`BeftConfig`]: every key of PEFT's `BeftConfig` (`target_modules`, `modules_to_save`,
//!   `init_weights`) and PEFT's default targets per architecture.
//! * [`BeftLayer`]: BEFT on `nn.Linear` (dense or quantized) — forward (several active adapters sum their
//!   offsets first), merge into and unmerge from the base bias, as PEFT computes them.
//!
//! Linking this crate registers `peft_type: "BEFT"`, so adapter directories saved by PEFT load by file
//! alone with `PeftModel::from_pretrained`.
//!
//! ```
//! use peft_beft::{BeftConfig, MethodConfig};
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
//! let config = BeftConfig { target_modules: Some(TargetModules::list(["lin0", "lin1"])), ..BeftConfig::default() };
//! let mut peft = PeftModel::new(Mlp::new(&vs)?, &vs, config.boxed(), "default")?;
//! // One offset per output: 20 + 2.
//! assert_eq!(peft.trainable_parameters_line(),
//!            "trainable params: 22 || all params: 284 || trainable%: 7.7465");
//! let x = Tensor::randn([3, 10], (Kind::Float, Device::Cpu));
//! // The offsets start at 0: the adapted model computes what the base does.
//! let y = peft.forward_t(&x, false);
//! assert!(y.equal(&peft.disable_adapters()?.forward_t(&x, false)));
//!
//! let dir = tempfile::tempdir().unwrap();
//! peft.save_pretrained(dir.path(), &SaveOptions::default())?;
//! let mut vs2 = VarStore::new(Device::Cpu);
//! let base2 = Mlp::new(&vs2)?;
//! vs2.copy(&vs).map_err(peft_core::PeftError::torch("copying base weights"))?;
//! let (mut reloaded, _) = PeftModel::from_pretrained(base2, &vs2, dir.path(), LoadOptions::default())?;
//! assert!(reloaded.forward_t(&x, false).equal(&y));
//! // Merging adds the offsets to the base biases.
//! reloaded.merge_adapter(None, true)?;
//! assert!((reloaded.forward_t(&x, false) - &y).abs().max().double_value(&[]) < 1e-6);
//! # Ok(()) }
//! ```

pub mod config;
pub mod layer;

pub use config::{BeftConfig, PEFT_TYPE};
pub use layer::BeftLayer;
pub use peft_core::MethodConfig;

peft_core::register_method!(config::BeftConfig, "peft-beft");
