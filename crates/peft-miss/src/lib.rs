//! MiSS for peft-rs — HuggingFace PEFT 0.21.2's `MISS` ("Matrix Shard Sharing", the successor of Bone) on
//! tch, with the same numbers and the same files.
//!
//! MiSS cuts each adapted weight into shards of `r` input columns and trains one block shared by all of
//! them: the update is `W[:, k·r + j] += B[j, :]`, so the unmerged forward pass only adds
//! `(Σ_k x_k) · B` — the input's shards summed, times an `(r, out)` block — to the base output. The "mini"
//! variant shares a narrower block along the outputs too; the "bat" variant multiplies a block per output
//! shard into the weight (`W ← W + W·B + B`), a non-linear update across shards.
//!
//! * [`MissConfig`]: every key of PEFT's `MissConfig` (`r`, `miss_dropout`, `mini_r`, `init_weights` —
//!   `true`, `false`, `"bat"`, `"mini"` —, layer selection, `bias`, `modules_to_save`) and its checks.
//! * [`MissLayer`]: MiSS on `nn.Linear` (dense, or quantized for the additive variants) — forward with
//!   dropout in training, merge, unmerge, as PEFT computes them.
//!
//! Linking this crate registers `peft_type: "MISS"`, so adapter directories saved by PEFT load by file
//! alone with `PeftModel::from_pretrained`.
//!
//! ```
//! use peft_core::{nn, Adaptable, LoadOptions, PeftModel, SaveOptions};
//! use peft_core::peft_config::TargetModules;
//! use peft_miss::{MethodConfig, MissConfig};
//! use tch::nn::{ModuleT, VarStore};
//! use tch::{Device, Kind, Tensor};
//!
//! #[derive(Debug, Adaptable)]
//! struct Mlp { lin0: nn::Linear, lin1: nn::Linear }
//!
//! impl Mlp {
//!     fn new(vs: &VarStore) -> peft_core::Result<Self> {
//!         Ok(Mlp {
//!             lin0: nn::linear(vs.root() / "lin0", 12, 20, Default::default())?,
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
//! let config = MissConfig { r: 4, target_modules: Some(TargetModules::list(["lin0"])), ..MissConfig::default() };
//! let mut peft = PeftModel::new(Mlp::new(&vs)?, &vs, config.boxed(), "default")?;
//! // One (r, out) block: 4 · 20 values.
//! assert_eq!(peft.num_parameters().0, 80);
//! let x = Tensor::randn([3, 12], (Kind::Float, Device::Cpu));
//! // The block starts at zero: the adapted model computes what the base does.
//! let y = peft.forward_t(&x, false);
//! assert!(y.equal(&peft.disable_adapters()?.forward_t(&x, false)));
//!
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

pub use config::{MissConfig, MissInit, PEFT_TYPE};
pub use layer::{MissLayer, MissVariant};
pub use peft_core::MethodConfig;

peft_core::register_method!(config::MissConfig, "peft-miss");
