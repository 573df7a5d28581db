//! BOFT for peft-rs — HuggingFace PEFT 0.21.2's `BOFT` (orthogonal finetuning with butterfly
//! factorization) on tch, with the same numbers and the same files.
//!
//! BOFT learns, per adapted layer, an orthogonal matrix that rotates the layer's input space and a scale
//! of its outputs. The rotation is a product of `boft_n_butterfly_factor` block-diagonal Cayley
//! rotations, each conjugated by a butterfly permutation, so a few small blocks reach a dense rotation.
//! At initialisation the blocks are zero and the scales one: the identity. It merges multiplicatively.
//!
//! * [`BoftConfig`]: every key of PEFT's `BOFTConfig` (`boft_block_size` / `boft_block_num`,
//!   `boft_n_butterfly_factor`, `boft_dropout`, `bias`, `init_weights`, `fan_in_fan_out`,
//!   `target_modules`, `exclude_modules`, `layers_to_transform`, `layers_pattern`, `modules_to_save`),
//!   PEFT's default targets per architecture, its checks.
//! * [`BoftLayer`]: BOFT on `nn.Linear` (dense or quantized) and `nn.Conv2d` — forward, merge, unmerge as
//!   PEFT computes them (see the [`layer`] and [`butterfly`] modules for the formulas). The Cayley
//!   transform and the block-diagonal assembly are `peft-orthogonal`'s, shared with OFT.
//!
//! **Butterfly factors.** PEFT builds the block-diagonal matrix of several factors only with its
//! optional CUDA extension (`fbd_cuda`, compiled at first use); without it, PEFT warns and silently uses
//! one factor (`boft_R` then has shape `(1, …)` although the saved config says more). peft-rs always
//! honours `boft_n_butterfly_factor`, computing what the extension computes with tensor ops, so its
//! files match those of PEFT with the extension. A file trained by PEFT without the extension and a
//! factor above 1 is refused on load as a shape mismatch; setting `boft_n_butterfly_factor` to 1 in its
//! config loads it as PEFT computed it.
//!
//! Linking this crate registers `peft_type: "BOFT"`, so adapter directories saved by PEFT load by file
//! alone with `PeftModel::from_pretrained`.
//!
//! ```
//! use peft_core::{nn, Adaptable, PeftModel};
//! use peft_core::peft_config::TargetModules;
//! use peft_boft::{BoftConfig, MethodConfig};
//! use tch::nn::{ModuleT, VarStore};
//! use tch::{Device, Kind, Tensor};
//!
//! #[derive(Debug, Adaptable)]
//! struct Mlp { lin0: nn::Linear, lin1: nn::Linear }
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
//! let mlp = Mlp {
//!     lin0: nn::linear(vs.root() / "lin0", 16, 8, Default::default())?,
//!     lin1: nn::linear(vs.root() / "lin1", 8, 2, Default::default())?,
//! };
//! let config = BoftConfig {
//!     target_modules: Some(TargetModules::list(["lin0", "lin1"])),
//!     boft_block_size: 2,
//!     boft_n_butterfly_factor: 2, // blocks of 2 reach chunks of 4 inputs
//!     ..BoftConfig::default()
//! };
//! let mut peft = PeftModel::new(mlp, &vs, config.boxed(), "default")?;
//! // lin0: 2 factors · 8 blocks · 2·2 + 8 scales; lin1: 2 · 4 · 2·2 + 2.
//! assert_eq!(peft.trainable_parameters_line(),
//!            "trainable params: 106 || all params: 260 || trainable%: 40.7692");
//! let x = Tensor::randn([3, 16], (Kind::Float, Device::Cpu));
//! let base = peft.disable_adapters()?.forward_t(&x, false);
//! assert!(peft.forward_t(&x, false).allclose(&base, 1e-6, 1e-6, false), "the identity at init");
//! # Ok(()) }
//! ```

pub mod butterfly;
pub mod config;
pub mod layer;

pub use config::{BoftConfig, PEFT_TYPE};
pub use layer::{BoftKind, BoftLayer};
pub use peft_core::MethodConfig;

peft_core::register_method!(config::BoftConfig, "peft-boft");
