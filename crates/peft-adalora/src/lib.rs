//! AdaLoRA for peft-rs — HuggingFace PEFT 0.21.2's `ADALORA` on tch, with the same numbers and the same
//! files.
//!
//! AdaLoRA ("Adaptive Budget Allocation for Parameter-Efficient Fine-Tuning", Zhang et al., ICLR 2023)
//! writes each layer's update in SVD form `B · diag(E) · A` and, during training, moves rank between
//! layers: the triplets (row of `A`, singular value in `E`, column of `B`) with the lowest importance get
//! their singular value zeroed until, on average, `target_r` remain per layer.
//!
//! * [`AdaLoraConfig`]: every key of PEFT's `AdaLoraConfig` (its own — `target_r`, `init_r`, `tinit`,
//!   `tfinal`, `deltaT`, `beta1`, `beta2`, `orth_reg_weight`, `total_step`, `rank_pattern` — and those it
//!   inherits from `LoraConfig`), PEFT's defaults per architecture and its checks.
//! * [`AdaLoraLayer`]: PEFT's `SVDLinear` (`nn.Linear`, GPT-2 `Conv1D`) and `SVDConv2d` — forward, merge,
//!   unmerge, safe merge.
//! * [`allocator`]: the training side — [`RankAllocator::update_and_allocate`], the
//!   [`orthogonal_regularization`] term `AdaLoraModel.forward` adds to the loss, and the `rank_pattern`
//!   that saving truncates the adapter to and loading resizes it by.
//!
//! Linking this crate registers `peft_type: "ADALORA"`, so adapter directories saved by PEFT load by file
//! alone with `PeftModel::from_pretrained`.
//!
//! ```
//! use peft_adalora::{orthogonal_regularization, AdaLoraConfig, RankAllocator, MethodConfig};
//! use peft_core::{nn, Adaptable, LoadOptions, PeftModel, SaveOptions};
//! use peft_core::peft_config::TargetModules;
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
//! let config = AdaLoraConfig {
//!     target_modules: Some(TargetModules::list(["lin0", "lin1"])),
//!     init_r: 4,
//!     target_r: 2,
//!     tinit: 1,
//!     tfinal: 1,
//!     total_step: Some(6),
//!     ..AdaLoraConfig::default()
//! };
//! let mut peft = PeftModel::new(Mlp::new(&vs)?, &vs, config.boxed(), "default")?;
//! let x = Tensor::randn([8, 10], (Kind::Float, Device::Cpu));
//! // lora_E starts at zero: the adapted model computes what the base does.
//! assert!(peft.forward_t(&x, false).equal(&peft.disable_adapters()?.forward_t(&x, false)));
//!
//! let mut opt = tch::nn::Sgd::default().build(peft.adapter_var_store(), 0.1).unwrap();
//! let mut allocator = RankAllocator::new(&peft, "default")?;
//! for step in 0..6 {
//!     let loss = peft.forward_t(&x, true).square().mean(Kind::Float);
//!     let loss = loss + orthogonal_regularization(&peft, "default")?;
//!     opt.zero_grad();
//!     loss.backward();
//!     opt.step();
//!     allocator.update_and_allocate(&mut peft, step)?;
//! }
//! // The final allocation keeps target_r = 2 triplets per layer on average (4 of 8).
//! let config = peft.config("default").unwrap().as_any().downcast_ref::<AdaLoraConfig>().unwrap();
//! let kept: usize = config.rank_pattern.as_ref().unwrap().values().flatten().filter(|k| **k).count();
//! assert_eq!(kept, 4);
//!
//! // Saving writes only the kept triplets; loading resizes the layers to them.
//! let dir = tempfile::tempdir().unwrap();
//! peft.save_pretrained(dir.path(), &SaveOptions::default())?;
//! let mut vs2 = VarStore::new(Device::Cpu);
//! let base2 = Mlp::new(&vs2)?;
//! vs2.copy(&vs).map_err(peft_core::PeftError::torch("copying base weights"))?;
//! let (reloaded, _) = PeftModel::from_pretrained(base2, &vs2, dir.path(), LoadOptions::default())?;
//! let y = peft.forward_t(&x, false);
//! assert!((reloaded.forward_t(&x, false) - &y).abs().max().double_value(&[]) < 1e-6);
//! # Ok(()) }
//! ```

pub mod allocator;
pub mod config;
pub mod layer;

pub use allocator::{
    orthogonal_regularization, rank_pattern_key, regularized_loss, set_rank_pattern, trainable_adapter,
    Allocation, RankAllocator,
};
pub use config::{AdaLoraConfig, InitLoraWeights, Num, RankPattern, PEFT_TYPE};
pub use layer::{AdaLoraLayer, SvdKind};
pub use peft_core::MethodConfig;

peft_core::register_method!(config::AdaLoraConfig, "peft-adalora");
