//! DEFT for peft-rs — HuggingFace PEFT 0.21.2's `DEFT` ("Decomposed Efficient Fine-Tuning") on tch, with
//! the same numbers and the same files.
//!
//! DEFT adapts a weight as `W' = (I − P_proj)·W + Q_P·R`: a trained `P` `(out, r)` spans a rank-`r`
//! subspace of the output space that is projected out of the frozen layer's output, and a trained `R`
//! `(r, in)` writes a rank-`r` update back into that subspace. `P_proj` is `P·relu(P)ᵀ` or, with
//! `decomposition_method: "qr"`, the orthogonal projection `Q·Qᵀ`; `para: true` (PaRa) only removes.
//! `R` starts as `rightᵀ·W`, so by default the adapted layer starts as the base layer.
//!
//! * [`DeftConfig`]: every key of PEFT's `DeftConfig` and its checks.
//! * [`DeftLayer`]: DEFT on `nn.Linear` and GPT-2's `Conv1D` — forward from the base output (without its
//!   bias) in f32, merge from the weight as the merge call found it, unmerge with the kept factor, as PEFT
//!   computes them, with PEFT's draws under the same seed.
//!
//! Linking this crate registers `peft_type: "DEFT"`, so adapter directories saved by PEFT load by file
//! alone with `PeftModel::from_pretrained`.
//!
//! ```
//! use peft_core::{nn, Adaptable, LoadOptions, PeftModel, SaveOptions};
//! use peft_core::peft_config::TargetModules;
//! use peft_deft::{DeftConfig, MethodConfig};
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
//! let config = DeftConfig { r: 4, target_modules: Some(TargetModules::list(["lin0"])), ..DeftConfig::default() };
//! let mut peft = PeftModel::new(Mlp::new(&vs)?, &vs, config.boxed(), "default")?;
//! // P (20 × 4) and R (4 × 12).
//! assert_eq!(peft.num_parameters().0, 80 + 48);
//! let x = Tensor::randn([3, 12], (Kind::Float, Device::Cpu));
//! // R starts as rightᵀ·W: the removed projection is injected back, so the adapted model computes what
//! // the base does (up to rounding).
//! let y = peft.forward_t(&x, false);
//! let base = peft.disable_adapters()?.forward_t(&x, false);
//! assert!(y.allclose(&base, 1e-5, 1e-5, false));
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

pub use config::{DeftConfig, PEFT_TYPE};
pub use layer::DeftLayer;
pub use peft_core::MethodConfig;

peft_core::register_method!(config::DeftConfig, "peft-deft");
