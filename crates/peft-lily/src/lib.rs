//! LiLy for peft-rs — HuggingFace PEFT 0.21.2's `LILY` ("Low-Rank Interconnected Adaptation Across
//! Layers") on tch, with the same numbers and the same files.
//!
//! LiLy shares its low-rank factors across layers: each run of `stride_A` consecutive layers of one target
//! (name and weight shape) uses one `lily_A`, every layer of that target one pool of `num_B` up-projection
//! experts `lily_B`, and each layer's router mixes the pool by the batch-mean softmax of its routing
//! logits. `lily_B` starts at zero, so the adapted model starts as the base model.
//!
//! * [`LilyConfig`]: every key of PEFT's `LilyConfig` and its checks.
//! * [`LilyLayer`]: LiLy on `nn.Linear` (dense or quantized) — PEFT's draws, sharing and forward for all
//!   active adapters. PEFT cannot merge LiLy; merges are refused with its message.
//! * [`sharing`]: which layers share whose factors (PEFT's `_post_injection_hook`).
//!
//! Linking this crate registers `peft_type: "LILY"`, so adapter directories saved by PEFT load by file
//! alone with `PeftModel::from_pretrained`.
//!
//! ```
//! use peft_core::{nn, Adaptable, LoadOptions, PeftModel, SaveOptions};
//! use peft_core::peft_config::TargetModules;
//! use peft_lily::{LilyConfig, MethodConfig};
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
//!             lin1: nn::linear(vs.root() / "lin1", 20, 10, Default::default())?,
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
//! let config = LilyConfig { r: 4, target_modules: Some(TargetModules::list(["lin0", "lin1"])), ..LilyConfig::default() };
//! let mut peft = PeftModel::new(Mlp::new(&vs)?, &vs, config.boxed(), "default")?;
//! // Per layer: A (4 × in), two experts B (8 × out), a router (2 × 4).
//! assert_eq!(peft.num_parameters().0, (40 + 160 + 8) + (80 + 80 + 8));
//! let x = Tensor::randn([3, 10], (Kind::Float, Device::Cpu));
//! // B starts at zero: the adapted model computes what the base does.
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
//! assert!(reloaded.merge_adapter(None, true).is_err(), "LiLy cannot be merged");
//! # Ok(()) }
//! ```

pub mod config;
pub mod layer;
pub mod sharing;

pub use config::{LilyConfig, PEFT_TYPE};
pub use layer::LilyLayer;
pub use peft_core::MethodConfig;
pub use sharing::{SharingPlan, Slot};

peft_core::register_method!(config::LilyConfig, "peft-lily");
