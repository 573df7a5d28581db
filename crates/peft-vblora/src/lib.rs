//! VB-LoRA for peft-rs — HuggingFace PEFT 0.21.2's `VBLORA` ("Vector Bank LoRA") on tch, with the same
//! numbers and the same files.
//!
//! VB-LoRA shares one small bank of vectors across every adapted layer and composes each layer's LoRA
//! factors from it: every `vector_length`-long piece of `A` and `B` mixes the `topk` bank vectors its learned
//! logits rank highest, weighted by their softmax. The adapter stores the logits and the bank — a small
//! fraction of a LoRA of the same rank.
//!
//! * [`VbloraConfig`]: every key of PEFT's `VBLoRAConfig` (`r`, `num_vectors`, `vector_length`, `topk`,
//!   `vblora_dropout`, `init_vector_bank_bound`, `init_logits_std`, `fan_in_fan_out`, layer selection,
//!   `bias`, `modules_to_save`, `save_only_topk_weights`: the inference-only file of top-k indices and
//!   weights, written and read as PEFT writes and reads it).
//! * [`VbloraLayer`]: VB-LoRA on `nn.Linear` (dense or quantized) and GPT-2's `Conv1D` — forward, merge,
//!   unmerge; the bank is saved once under `base_model.vblora_vector_bank`.
//!
//! Linking this crate registers `peft_type: "VBLORA"`, so adapter directories saved by PEFT load by file
//! alone with `PeftModel::from_pretrained`.
//!
//! ```
//! use peft_core::{nn, Adaptable, LoadOptions, PeftModel, SaveOptions};
//! use peft_core::peft_config::TargetModules;
//! use peft_vblora::{MethodConfig, VbloraConfig};
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
//! let config = VbloraConfig {
//!     r: 2,
//!     num_vectors: 8,
//!     vector_length: 5,
//!     target_modules: Some(TargetModules::list(["lin0", "lin1"])),
//!     ..VbloraConfig::default()
//! };
//! let mut peft = PeftModel::new(Mlp::new(&vs)?, &vs, config.boxed(), "default")?;
//! // Logits (2·2·8 + 4·2·8 per layer, twice) and one bank of 8 × 5.
//! assert_eq!(peft.num_parameters().0, 2 * (32 + 64) + 40);
//! let x = Tensor::randn([3, 10], (Kind::Float, Device::Cpu));
//! let y = peft.forward_t(&x, false);
//!
//! let dir = tempfile::tempdir().unwrap();
//! peft.save_pretrained(dir.path(), &SaveOptions::default())?;
//! let mut vs2 = VarStore::new(Device::Cpu);
//! let base2 = Mlp::new(&vs2)?;
//! vs2.copy(&vs).map_err(peft_core::PeftError::torch("copying base weights"))?;
//! let (mut reloaded, _) = PeftModel::from_pretrained(base2, &vs2, dir.path(), LoadOptions::default())?;
//! assert!(reloaded.forward_t(&x, false).equal(&y));
//! // Merging adds B·A to each weight.
//! reloaded.merge_adapter(None, true)?;
//! assert!((reloaded.forward_t(&x, false) - &y).abs().max().double_value(&[]) < 1e-5);
//! # Ok(()) }
//! ```

pub mod config;
pub mod layer;

pub use config::{SharedBank, VbloraConfig, PEFT_TYPE};
pub use layer::VbloraLayer;
pub use peft_core::MethodConfig;

peft_core::register_method!(config::VbloraConfig, "peft-vblora");
