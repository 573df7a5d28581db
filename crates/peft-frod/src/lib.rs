//! FRoD for peft-rs — HuggingFace PEFT 0.21.2's `FROD` on tch, with the same numbers and the same
//! files.
//!
//! FRoD rewrites each adapted linear weight as `W' = U·(S + diag(λ))·Vᵀ`: a basis `V` `(in, in)` shared
//! by the layers of one module category (all `q_proj`, all `lin0`, …) and decomposed jointly from their
//! base weights, a frozen per-layer `U` `(out, in)`, and the trained per-layer diagonal `λ` `(in)` and the
//! values of a sparse `S` `(in, in)` (`sparse_rate · in²` off-diagonal positions shared by the category).
//! At init `S = 0` and `U·diag(λ)·Vᵀ = W`.
//!
//! * [`FrodConfig`]: every key of PEFT's `FrodConfig` with its defaults and checks.
//! * [`FrodLayer`]: FRoD on `nn.Linear` and GPT-2's `Conv1D` — forward, merge, unmerge; every other base
//!   (quantized linear layers included) refused by name.
//! * [`basis`]: the categories, the joint decomposition (the same LAPACK calls as PEFT's, so CPU results
//!   are bit-identical) and the seeded sparse positions; saved at the model level as
//!   `base_model.frod_V.<category>`, `base_model.frod_s_indices.<category>` and
//!   `base_model.frod_s_size.<category>` (or decomposed again on load with `save_projection: false`).
//!
//! `runtime_offload_base_weight` moves a CUDA model's target base weights to the CPU while FRoD does not
//! need them. On a CPU model PEFT's offload does nothing, and neither does peft-rs; on other devices
//! peft-rs refuses the option by name, as its base weights live where the model's var store keeps them.
//! `progressbar` is accepted and written back; the decomposition logs each category at debug level.
//!
//! Linking this crate registers `peft_type: "FROD"`, so adapter directories saved by PEFT load by file
//! alone with `PeftModel::from_pretrained`.
//!
//! ```
//! use peft_core::{nn, Adaptable, PeftModel};
//! use peft_core::peft_config::TargetModules;
//! use peft_frod::{FrodConfig, MethodConfig};
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
//!     lin0: nn::linear(vs.root() / "lin0", 10, 20, Default::default())?,
//!     lin1: nn::linear(vs.root() / "lin1", 20, 10, Default::default())?,
//! };
//! let x = Tensor::randn([3, 10], (Kind::Float, Device::Cpu));
//! let before = mlp.forward_t(&x, false);
//! let config = FrodConfig { target_modules: Some(TargetModules::list(["lin0", "lin1"])), ..FrodConfig::default() };
//! let peft = PeftModel::new(mlp, &vs, config.boxed(), "default")?;
//! // λ (10 + 20) and the values of S (⌊0.01·10²⌋ = 1 and ⌊0.01·20²⌋ = 4).
//! assert_eq!(peft.num_parameters().0, 10 + 1 + 20 + 4);
//! // At init the adapted layers reproduce the base (up to rounding).
//! let after = peft.forward_t(&x, false);
//! assert!((after - before).abs().max().double_value(&[]) < 1e-4);
//! # Ok(()) }
//! ```

pub mod basis;
pub mod config;
pub mod layer;

pub use config::{FrodConfig, PEFT_TYPE};
pub use layer::FrodLayer;
pub use peft_core::MethodConfig;

peft_core::register_method!(config::FrodConfig, "peft-frod");
