//! RoAd for peft-rs — HuggingFace PEFT 0.21.2's `ROAD` (2-D rotation adaptation) on tch, with the same
//! numbers and the same files.
//!
//! RoAd pairs up the outputs of each adapted linear layer and rotates every pair by a learned angle,
//! scaled by a learned factor: elementwise multiplications only, so batches may mix adapters row by row
//! cheaply. It merges exactly into the weight and bias (`W ← R·W`, `b ← R·b`).
//!
//! * [`RoadConfig`]: every key of PEFT's `RoadConfig` (`variant`, `group_size`, `init_weights`,
//!   `target_modules`, `modules_to_save`) and its checks.
//! * [`RoadLayer`]: RoAd on `nn.Linear` — forward, mixed-adapter batches (PEFT's `adapter_names`), merge
//!   and unmerge, as PEFT computes them.
//!
//! Linking this crate registers `peft_type: "ROAD"`, so adapter directories saved by PEFT load by file
//! alone with `PeftModel::from_pretrained`.
//!
//! ```
//! use peft_core::{nn, Adaptable, ForwardCtx, LoadOptions, PeftModel, SaveOptions};
//! use peft_core::peft_config::TargetModules;
//! use peft_road::{RoadConfig, RoadVariant, MethodConfig};
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
//!     fn forward_ctx(&self, x: &Tensor, ctx: &ForwardCtx<'_>) -> Tensor {
//!         self.lin1.forward_ctx(&self.lin0.forward_ctx(x, ctx).relu(), ctx)
//!     }
//! }
//!
//! impl ModuleT for Mlp {
//!     fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
//!         self.forward_ctx(x, &ForwardCtx::from_train(train))
//!     }
//! }
//!
//! # fn main() -> peft_core::Result<()> {
//! tch::manual_seed(0);
//! let vs = VarStore::new(Device::Cpu);
//! let config = RoadConfig {
//!     target_modules: Some(TargetModules::list(["lin0"])),
//!     variant: RoadVariant::Road2,
//!     group_size: 4, // must divide lin0's 20 outputs
//!     ..RoadConfig::default()
//! };
//! let mut peft = PeftModel::new(Mlp::new(&vs)?, &vs, config.clone().boxed(), "first")?;
//! // road_2: one angle and one scale per output.
//! assert_eq!(peft.trainable_parameters_line(),
//!            "trainable params: 40 || all params: 302 || trainable%: 13.2450");
//! let x = Tensor::randn([3, 10], (Kind::Float, Device::Cpu));
//! // Angles 0 and scales 1: the adapted model computes what the base does.
//! let y = peft.forward_t(&x, false);
//! assert!(y.equal(&peft.disable_adapters()?.forward_t(&x, false)));
//!
//! // A second adapter, and a batch whose rows use different adapters (or none).
//! peft.add_adapter("second", RoadConfig { init_weights: false, ..config }.boxed())?;
//! let rows = peft.row_adapters(&["first", "second", "__base__"])?;
//! let mixed = peft.model().forward_ctx(&x, &ForwardCtx::eval().with_rows(&rows));
//! peft.set_adapter("second")?;
//! let second = peft.forward_t(&x, false);
//! assert!(mixed.get(1).equal(&second.get(1)) && mixed.get(0).equal(&y.get(0)));
//!
//! let dir = tempfile::tempdir().unwrap();
//! peft.save_pretrained(dir.path(), &SaveOptions::default())?;
//! let mut vs2 = VarStore::new(Device::Cpu);
//! let base2 = Mlp::new(&vs2)?;
//! vs2.copy(&vs).map_err(peft_core::PeftError::torch("copying base weights"))?;
//! let options = LoadOptions { subfolder: Some("second".into()), ..LoadOptions::named("second") };
//! let (reloaded, _) = PeftModel::from_pretrained(base2, &vs2, dir.path(), options)?;
//! assert!(reloaded.forward_t(&x, false).equal(&second));
//! # Ok(()) }
//! ```

pub mod config;
pub mod layer;

pub use config::{RoadConfig, RoadVariant, PEFT_TYPE};
pub use layer::RoadLayer;
pub use peft_core::MethodConfig;

peft_core::register_method!(config::RoadConfig, "peft-road");
