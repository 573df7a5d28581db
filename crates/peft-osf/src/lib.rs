//! OSF for peft-rs — HuggingFace PEFT 0.21.2's `OSF` ("Orthogonal Subspace Fine-tuning") on tch, with
//! the same numbers and the same files.
//!
//! OSF splits each adapted weight by its SVD: the top `effective_rank` singular directions stay frozen
//! (what the model already knows), the remaining singular vectors and values are trained, and their
//! gradients are projected orthogonally to the frozen directions so training never moves them. The
//! adapter starts as the identity.
//!
//! * [`OsfConfig`]: every key of PEFT's `OSFConfig` (`effective_rank` as an integer or a fraction,
//!   `rank_pattern`, `init_weights`, `modules_to_save`, `target_svd_config`, which PEFT ignores) and its
//!   model-type defaults (every linear layer where PEFT has none).
//! * [`OsfLayer`]: OSF on plain `nn.Linear` — PEFT's factored forward, merge (PEFT cannot unmerge), the
//!   SVD with the same op and dtype as PEFT, and the gradient projection as a libtorch tensor hook
//!   (`csrc/osf.cpp`).
//!
//! **Training needs nothing extra.** The projection is registered on `U_low` and `V_low` when the adapter
//! is created or loaded, as PEFT's `register_hook` does, so `Trainer`, `peft train` and a plain tch loop
//! (`backward()`, `optimizer.step()`) all train in the orthogonal subspace. [`register_projection`] is
//! the hook for other uses.
//!
//! Linking this crate registers `peft_type: "OSF"`, so adapter directories saved by PEFT load by file
//! alone with `PeftModel::from_pretrained`.
//!
//! ```
//! use peft_core::peft_config::{Num, TargetModules};
//! use peft_core::{nn, Adaptable, LoadOptions, PeftModel, SaveOptions};
//! use peft_osf::{MethodConfig, OsfConfig};
//! use tch::nn::{ModuleT, OptimizerConfig, VarStore};
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
//! let config = OsfConfig {
//!     effective_rank: Some(Num::from(4)),
//!     target_modules: Some(TargetModules::list(["lin0"])),
//!     ..OsfConfig::default()
//! };
//! let mut peft = PeftModel::new(Mlp::new(&vs)?, &vs, config.boxed(), "default")?;
//! // 20 × 10: 4 directions kept, 6 trained (U_low 20 × 6, S_low 6, V_low 6 × 10).
//! assert_eq!(peft.num_parameters().0, 20 * 6 + 6 + 6 * 10);
//! let x = Tensor::randn([3, 10], (Kind::Float, Device::Cpu));
//! let y0 = peft.forward_t(&x, false);
//!
//! // A plain tch loop: the hooks keep the updates orthogonal to the frozen directions.
//! let mut opt = tch::nn::Sgd::default().build(peft.adapter_var_store(), 0.1).unwrap();
//! let loss = peft.forward_t(&x, true).square().mean(Kind::Float);
//! opt.backward_step(&loss);
//! assert!(!peft.forward_t(&x, false).allclose(&y0, 1e-6, 1e-6, false));
//!
//! let dir = tempfile::tempdir().unwrap();
//! peft.save_pretrained(dir.path(), &SaveOptions::default())?;
//! let mut vs2 = VarStore::new(Device::Cpu);
//! let base2 = Mlp::new(&vs2)?;
//! vs2.copy(&vs).map_err(peft_core::PeftError::torch("copying base weights"))?;
//! let (reloaded, _) = PeftModel::from_pretrained(base2, &vs2, dir.path(), LoadOptions::default())?;
//! assert!(reloaded.forward_t(&x, false).equal(&peft.forward_t(&x, false)));
//! # Ok(()) }
//! ```

pub mod config;
pub mod layer;

pub use config::{default_targets, OsfConfig, PEFT_TYPE};
pub use layer::{register_projection, OsfLayer, Projection};
pub use peft_core::MethodConfig;

peft_core::register_method!(config::OsfConfig, "peft-osf");
