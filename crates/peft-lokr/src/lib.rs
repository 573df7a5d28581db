//! LoKr for peft-rs — HuggingFace PEFT 0.21.2's `LOKR` on tch, with the same numbers and the same files.
//!
//! LoKr (low-rank Kronecker product, from the LyCORIS project) learns a weight delta that is the
//! Kronecker product of a small left factor and a (possibly low-rank) right factor,
//! `ΔW = (W1 ⊗ W2) · α/r`: the factors have about `√out·√in` values each, far fewer than LoRA's for
//! the same expressiveness. Convolutions can use a CP form for the right factor.
//!
//! * [`LokrConfig`]: every key of PEFT's `LoKrConfig` (the shared LyCORIS keys in
//!   [`peft_lycoris::LycorisOptions`], `decompose_both`, `decompose_factor`, `rank_dropout_scale`,
//!   `init_weights` with `"lycoris"`), PEFT's default targets per architecture, its checks.
//! * [`LokrLayer`]: LoKr on `nn.Linear`, `nn.Conv1d` and `nn.Conv2d` — forward with module and rank
//!   dropout in training, merge, unmerge, as PEFT computes them.
//!
//! Linking this crate registers `peft_type: "LOKR"`, so adapter directories saved by PEFT load by file
//! alone with `PeftModel::from_pretrained`.
//!
//! ```
//! use peft_core::{nn, Adaptable, LoadOptions, PeftModel, SaveOptions};
//! use peft_core::peft_config::TargetModules;
//! use peft_lokr::{LokrConfig, MethodConfig};
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
//! let config = LokrConfig {
//!     lycoris: LycorisOptions {
//!         r: 4,
//!         target_modules: Some(TargetModules::list(["lin0", "lin1"])),
//!         ..LycorisOptions::default()
//!     },
//!     ..LokrConfig::default()
//! };
//! let mut peft = PeftModel::new(Mlp::new(&vs)?, &vs, config.boxed(), "default")?;
//! // lin0: 20 = 4·5 outputs, 10 = 2·5 inputs: lokr_w1 (4, 2) and, as r ≥ 5/2, a full lokr_w2 (5, 5);
//! // lin1: 2 = 1·2 outputs, 20 = 4·5 inputs: lokr_w1 (1, 4), lokr_w2 (2, 5).
//! assert_eq!(peft.trainable_parameters_line(),
//!            "trainable params: 47 || all params: 309 || trainable%: 15.2104");
//! let x = Tensor::randn([3, 10], (Kind::Float, Device::Cpu));
//! // lokr_w1 starts at zero: the adapted model computes what the base does.
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

pub use config::{LokrConfig, LokrInitScheme, LokrInitWeights, PEFT_TYPE};
pub use layer::{factorization, LeftFactor, LokrFactors, LokrLayer, RightFactor};
pub use peft_core::MethodConfig;

peft_core::register_method!(config::LokrConfig, "peft-lokr");
