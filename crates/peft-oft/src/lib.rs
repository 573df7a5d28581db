//! OFT for peft-rs — HuggingFace PEFT 0.21.2's `OFT` (orthogonal finetuning, OFTv2) on tch, with the same
//! numbers and the same files.
//!
//! OFT learns, per adapted layer, a block-diagonal orthogonal matrix that rotates the layer's input space
//! (its input features, the patches of a convolution, or an embedding's vectors). Each block is the
//! Cayley transform of a skew-symmetric matrix, of which only the upper triangle is stored and trained;
//! at initialisation it is zero, so the rotation is the identity. The rotation merges multiplicatively
//! into the weight.
//!
//! * [`OftConfig`]: every key of PEFT's `OFTConfig` (`r` / `oft_block_size`, `module_dropout`, `coft` and
//!   `eps`, `block_share`, `use_cayley_neumann` and `num_cayley_neumann_terms`, `bias`, `init_weights`,
//!   `target_modules`, `exclude_modules`, `layers_to_transform`, `layers_pattern`, `modules_to_save`,
//!   `fan_in_fan_out`), PEFT's default targets per architecture, its checks and warnings.
//! * [`OftLayer`]: OFT on `nn.Linear` (dense or quantized), `nn.Conv2d` and `nn.Embedding` — forward,
//!   merge, unmerge, as PEFT computes them (see the [`layer`] module for the formulas).
//!
//! Linking this crate registers `peft_type: "OFT"`, so adapter directories saved by PEFT load by file
//! alone with `PeftModel::from_pretrained`.
//!
//! ```
//! use peft_core::{nn, Adaptable, LoadOptions, PeftModel, SaveOptions};
//! use peft_core::peft_config::TargetModules;
//! use peft_oft::{OftConfig, MethodConfig};
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
//! let config = OftConfig {
//!     target_modules: Some(TargetModules::list(["lin0", "lin1"])),
//!     oft_block_size: 5, // lin0: 2 blocks of 5 inputs, lin1: 4 blocks
//!     ..OftConfig::default()
//! };
//! let mut peft = PeftModel::new(Mlp::new(&vs)?, &vs, config.boxed(), "default")?;
//! // 2·(5·4/2) + 4·(5·4/2) trainable values.
//! assert_eq!(peft.trainable_parameters_line(),
//!            "trainable params: 60 || all params: 322 || trainable%: 18.6335");
//! let x = Tensor::randn([3, 10], (Kind::Float, Device::Cpu));
//! // The rotations start at the identity: the adapted model computes what the base does.
//! let base = peft.disable_adapters()?.forward_t(&x, false);
//! assert!(peft.forward_t(&x, false).equal(&base));
//!
//! // Turn the rotations, save, reload.
//! for (_, mut t) in peft.adapter_var_store().variables() {
//!     let noise = Tensor::randn_like(&t) * 0.2;
//!     tch::no_grad(|| t.f_add_(&noise)).map_err(peft_core::PeftError::torch("perturbing"))?;
//! }
//! let y = peft.forward_t(&x, false);
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

pub use config::{OftConfig, PEFT_TYPE};
pub use layer::{OftKind, OftLayer};
pub use peft_core::MethodConfig;

peft_core::register_method!(config::OftConfig, "peft-oft");
