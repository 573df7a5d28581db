//! LoRA for peft-rs — HuggingFace PEFT 0.21.2's LoRA on tch, with the same numbers and the same files.
//!
//! * [`LoraConfig`]: every key of PEFT's `LoraConfig`, same defaults, parsed from and written to
//!   `adapter_config.json` exactly as PEFT does.
//! * [`LoraLayer`]: LoRA on `nn.Linear`, GPT-2's `Conv1D` (`fan_in_fan_out`), `nn.Embedding` and
//!   `nn.Conv1d/2d/3d` ([`LoraKind`]), with rsLoRA, dropout, `lora_bias`, `rank_pattern` /
//!   `alpha_pattern`, `init_lora_weights` = `true` / `false` / `"gaussian"` drawing the same random
//!   numbers as PEFT under the same seed, and DoRA ([`Dora`], `use_dora`).
//!
//! Linking this crate registers `peft_type: "LORA"` with `peft_core`'s registry, so adapter directories
//! load by file alone. Options that are not implemented yet (other init schemes, LoRA variants, …) are
//! rejected with an error naming them — never ignored.
//!
//! ```
//! use peft_core::{nn, Adaptable, PeftModel, SaveOptions, LoadOptions};
//! use peft_core::peft_config::TargetModules;
//! use peft_lora::{LoraConfig, MethodConfig};
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
//! let config = LoraConfig {
//!     r: 4,
//!     lora_alpha: 8.into(),
//!     target_modules: Some(TargetModules::list(["lin0"])),
//!     ..LoraConfig::default()
//! };
//! let mut peft = PeftModel::new(Mlp::new(&vs)?, &vs, config.boxed(), "default")?;
//! assert_eq!(peft.trainable_parameters_line(),
//!            "trainable params: 120 || all params: 382 || trainable%: 31.4136");
//!
//! // ... train with an optimizer built from `peft.adapter_var_store()` ...
//! let x = Tensor::randn([3, 10], (Kind::Float, Device::Cpu));
//! let y = peft.forward_t(&x, false);
//!
//! let dir = tempfile::tempdir().unwrap();
//! peft.save_pretrained(dir.path(), &SaveOptions::default())?;
//!
//! // Reload onto a fresh copy of the same base model.
//! let mut vs2 = VarStore::new(Device::Cpu);
//! let base2 = Mlp::new(&vs2)?;
//! vs2.copy(&vs).map_err(peft_core::PeftError::torch("copying base weights"))?;
//! let (reloaded, report) = PeftModel::from_pretrained(base2, &vs2, dir.path(), LoadOptions::default())?;
//! assert!(!report.trainable);
//! assert!(reloaded.forward_t(&x, false).equal(&y));
//! # peft.merge_adapter(None, true)?;
//! # Ok(()) }
//! ```

pub mod alora;
pub mod arrow;
pub mod bdlora;
pub mod config;
pub mod convert;
pub mod corda;
pub mod dora;
pub mod eva;
mod ext;
mod hotswap;
pub mod init;
pub mod kasa;
pub mod layer;
pub mod loraga;
pub mod merge_utils;
pub mod mixed;
pub mod monteclora;
pub mod variant;
pub mod velora;
pub mod weighted;

pub use config::{Alpha, InitLoraWeights, LoraBias, LoraConfig, PEFT_TYPE};
pub use dora::Dora;
pub use ext::LoraModelExt;
pub use layer::{LoraKind, LoraLayer};
pub use peft_core::MethodConfig;
pub use weighted::{Combination, WeightedAdapterOptions};

peft_core::register_method!(config::LoraConfig, "peft-lora");
