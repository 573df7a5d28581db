//! LoHa for peft-rs — HuggingFace PEFT 0.21.2's `LOHA` on tch, with the same numbers and the same files.
//!
//! LoHa (low-rank Hadamard product, from FedPara and the LyCORIS project) learns a weight delta that is
//! the element-wise product of two rank-`r` matrices, `ΔW = (W1a W1b) ⊙ (W2a W2b) · α/r`: with the
//! parameters of two LoRA adapters it can reach rank `r²`. Convolutions can use the CP ("effective
//! conv") form with small cores over the kernel dimensions.
//!
//! * [`LohaConfig`]: every key of PEFT's `LoHaConfig` (the shared LyCORIS keys in
//!   [`peft_lycoris::LycorisOptions`] and `init_weights`), PEFT's default targets per architecture, its
//!   checks.
//! * [`LohaLayer`]: LoHa on `nn.Linear`, `nn.Conv1d` and `nn.Conv2d` — forward with module and rank
//!   dropout in training, merge, unmerge, as PEFT computes them (including the gradients of PEFT's custom
//!   autograd function for the CP form).
//!
//! Linking this crate registers `peft_type: "LOHA"`, so adapter directories saved by PEFT load by file
//! alone with `PeftModel::from_pretrained`.
//!
//! ```
//! use peft_core::{nn, Adaptable, LoadOptions, PeftModel, SaveOptions};
//! use peft_core::peft_config::TargetModules;
//! use peft_loha::{LohaConfig, MethodConfig};
//! use peft_lycoris::LycorisOptions;
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
//! let config = LohaConfig {
//!     lycoris: LycorisOptions {
//!         r: 4,
//!         target_modules: Some(TargetModules::list(["lin0", "lin1"])),
//!         ..LycorisOptions::default()
//!     },
//!     ..LohaConfig::default()
//! };
//! let mut peft = PeftModel::new(Mlp::new(&vs)?, &vs, config.boxed(), "default")?;
//! // Four factors per layer: lin0 2·(20·4 + 4·10), lin1 2·(2·4 + 4·20).
//! assert_eq!(peft.trainable_parameters_line(),
//!            "trainable params: 416 || all params: 678 || trainable%: 61.3569");
//! let x = Tensor::randn([3, 10], (Kind::Float, Device::Cpu));
//! // hada_w2_b starts at zero: the adapted model computes what the base does.
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

pub use config::{LohaConfig, PEFT_TYPE};
pub use layer::{LohaFactors, LohaLayer};
pub use peft_core::MethodConfig;

peft_core::register_method!(config::LohaConfig, "peft-loha");
