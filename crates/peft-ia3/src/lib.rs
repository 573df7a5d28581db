//! (IA)³ for peft-rs — HuggingFace PEFT 0.21.2's `IA3` on tch, with the same numbers and the same files.
//!
//! (IA)³ ("Infused Adapter by Inhibiting and Amplifying Inner Activations") learns one vector per adapted
//! layer that rescales its output, or its input for the layers named in `feedforward_modules`. It has
//! the fewest trainable parameters of the additive-free methods and merges exactly into the weights.
//!
//! * [`Ia3Config`]: every key of PEFT's `IA3Config` (`target_modules`, `exclude_modules`,
//!   `feedforward_modules`, `fan_in_fan_out`, `modules_to_save`, `init_ia3_weights`), PEFT's defaults per
//!   architecture for targets and feed-forward modules, and its checks.
//! * [`Ia3Layer`]: (IA)³ on `nn.Linear`, GPT-2's `Conv1D` and `nn.Conv2d/3d` — forward, merge, unmerge, as
//!   PEFT computes them (several active adapters multiply their vectors first).
//!
//! Linking this crate registers `peft_type: "IA3"`, so adapter directories saved by PEFT load by file
//! alone with `PeftModel::from_pretrained`.
//!
//! ```
//! use peft_core::{nn, Adaptable, LoadOptions, PeftModel, SaveOptions};
//! use peft_core::peft_config::TargetModules;
//! use peft_ia3::{Ia3Config, MethodConfig};
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
//! let config = Ia3Config {
//!     target_modules: Some(TargetModules::list(["lin0", "lin1"])),
//!     feedforward_modules: Some(TargetModules::list(["lin1"])), // lin1's input is scaled
//!     ..Ia3Config::default()
//! };
//! let mut peft = PeftModel::new(Mlp::new(&vs)?, &vs, config.boxed(), "default")?;
//! // 20 (lin0's outputs) + 20 (lin1's inputs) trainable values.
//! assert_eq!(peft.trainable_parameters_line(),
//!            "trainable params: 40 || all params: 302 || trainable%: 13.2450");
//! let x = Tensor::randn([3, 10], (Kind::Float, Device::Cpu));
//! // The vectors start at 1: the adapted model computes what the base does.
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

pub use config::{Ia3Config, PEFT_TYPE};
pub use layer::{Ia3Kind, Ia3Layer};
pub use peft_core::MethodConfig;

peft_core::register_method!(config::Ia3Config, "peft-ia3");
