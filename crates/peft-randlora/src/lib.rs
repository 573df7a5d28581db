//! RandLoRA for peft-rs — HuggingFace PEFT 0.21.2's `RANDLORA` on tch, with the same numbers and the same
//! files.
//!
//! RandLoRA ("full-rank parameter-efficient fine-tuning of large models") freezes one pair of random bases
//! shared by every adapted layer and trains two small diagonals per layer (`randlora_lambda` `(r, n)`,
//! `randlora_gamma` `(n, min(in, out))`) that scale `n = ⌈min(in, out) / r⌉` rank-`r` bases, so the sum of
//! the scaled bases can reach full rank.
//!
//! * [`RandloraConfig`]: every key of PEFT's `RandLoraConfig` (`r`, `projection_prng_key`,
//!   `save_projection`, `sparse`, `very_sparse`, `randlora_dropout`, `randlora_alpha`, `fan_in_fan_out`,
//!   `bias`, `init_weights`, layer selection, `modules_to_save`) and its checks.
//! * [`RandloraLayer`]: RandLoRA on `nn.Linear`, GPT-2's `Conv1D` and quantized linear bases — forward,
//!   delta weight, merge (dense bases only: PEFT's bitsandbytes merge is refused, see the layer).
//! * [`bases`]: the bases drawn from a generator seeded with `projection_prng_key` (the numbers PyTorch
//!   draws, bf16 for the dense ones as in PEFT), sized by the largest targeted layer and shared through
//!   `peft-projections`; saved as `base_model.randlora_A` / `randlora_B` plus PEFT's per-layer copies, or
//!   drawn again on load with `save_projection: false`.
//! * [`layer::unique_base_grad`]: PEFT's `UniqueBaseGrad` autograd function, whose backward (two einsums)
//!   is not autograd's, so training steps match PEFT's bit for bit (`csrc/randlora.cpp`).
//!
//! ```
//! use peft_core::{nn, Adaptable, PeftModel};
//! use peft_core::peft_config::TargetModules;
//! use peft_randlora::{RandloraConfig, MethodConfig};
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
//! let vs = VarStore::new(Device::Cpu);
//! let mlp = Mlp {
//!     lin0: nn::linear(vs.root() / "lin0", 10, 20, Default::default())?,
//!     lin1: nn::linear(vs.root() / "lin1", 20, 2, Default::default())?,
//! };
//! let config = RandloraConfig { r: 4, target_modules: Some(TargetModules::list(["lin0", "lin1"])), ..RandloraConfig::default() };
//! let mut peft = PeftModel::new(mlp, &vs, config.boxed(), "default")?;
//! // lin0: lambda (4, 3) + gamma (3, 10); lin1: lambda (4, 1) + gamma (1, 2).
//! assert_eq!(peft.num_parameters().0, 12 + 30 + 4 + 2);
//! let x = Tensor::randn([3, 10], (Kind::Float, Device::Cpu));
//! // lambda starts at zero: the identity.
//! let base = tch::no_grad(|| peft.disable_adapters().map(|m| m.forward_t(&x, false)))?;
//! assert!(tch::no_grad(|| peft.forward_t(&x, false)).equal(&base));
//! # Ok(()) }
//! ```

pub mod bases;
pub mod config;
pub mod layer;

pub use config::{RandloraConfig, PEFT_TYPE};
pub use layer::RandloraLayer;
pub use peft_core::MethodConfig;
pub use peft_projections::SharedProjections;

peft_core::register_method!(config::RandloraConfig, "peft-randlora");
