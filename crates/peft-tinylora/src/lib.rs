//! TinyLoRA for peft-rs — HuggingFace PEFT 0.21.2's `TINYLORA` on tch, with the same numbers and the same
//! files.
//!
//! TinyLoRA ("Learning to Reason in 13 Parameters", arXiv:2602.04118) builds on LoRA-XS: each adapted
//! weight keeps the frozen factors of its rank-`r` truncated SVD, `B = U·√S` and `A = √S·Vᵀ`, and learns
//! only the `r × r` matrix between them, `R = Σᵢ vᵢ·Pᵢ`, a trained vector `v` of length `u` mapped through
//! frozen random projections `P`. With `weight_tying`, groups of layers share one `v`: a whole model can
//! train a handful of numbers.
//!
//! * [`TinyloraConfig`]: every key of PEFT's `TinyLoraConfig` (`r`, `u`, `weight_tying`,
//!   `projection_seed`, `save_projection`, `init_v_bound`, `tinylora_dropout`, `fan_in_fan_out`, `bias`,
//!   `init_weights`, layer selection, `modules_to_save`) and its checks.
//! * [`TinyloraLayer`]: TinyLoRA on `nn.Linear`, GPT-2's `Conv1D` and `nn.Embedding` — forward, delta
//!   weight, merge; the SVD and the seeded projections are PEFT's own ops ([`factors`]).
//! * [`groups`]: the model-level vectors — PEFT's grouping, saved once per group as
//!   `base_model.tinylora_v.<group>`.
//!
//! Linking this crate registers `peft_type: "TINYLORA"`, so adapter directories saved by PEFT load by file
//! alone with `PeftModel::from_pretrained`; the SVD factors (and the projections, with `save_projection`)
//! are read from the file, not recomputed.
//!
//! ```
//! use peft_core::{nn, Adaptable, LoadOptions, PeftModel, SaveOptions};
//! use peft_core::peft_config::{Num, TargetModules};
//! use peft_tinylora::{MethodConfig, TinyloraConfig};
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
//! let config = TinyloraConfig {
//!     u: 3,
//!     weight_tying: Num::from(1.0),
//!     target_modules: Some(TargetModules::list(["lin0", "lin1"])),
//!     ..TinyloraConfig::default()
//! };
//! let peft = PeftModel::new(Mlp::new(&vs)?, &vs, config.boxed(), "default")?;
//! // Both layers share one v of 3 values; A, B and P are frozen buffers.
//! assert_eq!(peft.num_parameters().0, 3);
//! let dir = tempfile::tempdir().unwrap();
//! peft.save_pretrained(dir.path(), &SaveOptions::default())?;
//! let saved = peft_core::io::read_safetensors(&dir.path().join("adapter_model.safetensors"))?;
//! assert!(saved.iter().any(|t| t.key == "base_model.tinylora_v.0"));
//!
//! let x = Tensor::randn([3, 10], (Kind::Float, Device::Cpu));
//! let mut vs2 = VarStore::new(Device::Cpu);
//! let base2 = Mlp::new(&vs2)?;
//! vs2.copy(&vs).map_err(peft_core::PeftError::torch("copying base weights"))?;
//! let (reloaded, _) = PeftModel::from_pretrained(base2, &vs2, dir.path(), LoadOptions::default())?;
//! assert!(reloaded.forward_t(&x, false).equal(&peft.forward_t(&x, false)));
//! # Ok(()) }
//! ```

pub mod config;
pub mod factors;
pub mod groups;
pub mod layer;

pub use config::{TinyloraConfig, TinyloraInit, PEFT_TYPE};
pub use layer::{TinyloraBase, TinyloraLayer};
pub use peft_core::MethodConfig;

peft_core::register_method!(config::TinyloraConfig, "peft-tinylora");
