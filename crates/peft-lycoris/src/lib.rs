//! The LyCORIS machinery of peft-rs: what HuggingFace PEFT 0.21.2's `LycorisConfig`, `LycorisLayer` and
//! `LycorisTuner` share between LoHa (`peft-loha`) and LoKr (`peft-lokr`). It registers no method.
//!
//! * [`LycorisOptions`]: the config keys both methods have (`r`, `alpha`, `rank_dropout`,
//!   `module_dropout`, `use_effective_conv2d`, target selection, `modules_to_save`, `rank_pattern`,
//!   `alpha_pattern`), their `__post_init__` checks and the per-module rank and alpha.
//! * [`LycorisLayer`]: one adapter on one `nn.Linear`, `nn.Conv1d` or `nn.Conv2d` — the additive forward
//!   `y = base(x) + op(x, ΔW)`, module and rank dropout drawn as PEFT draws them, merge and unmerge
//!   `W ± ΔW` — around a method's factors ([`LycorisAdapter`]), which only say how `ΔW` is built.
//!
//! ```
//! use peft_lycoris::layer::{LycorisAdapter, MaskKind};
//! use tch::Tensor;
//!
//! /// A toy method whose delta is one full matrix.
//! #[derive(Debug)]
//! struct Full(Tensor);
//!
//! impl LycorisAdapter for Full {
//!     const PEFT_TYPE: &'static str = "FULL";
//!     const CLASS_PREFIX: &'static str = "full";
//!     const MASK_KIND: MaskKind = MaskKind::Float;
//!     fn tensors(&self) -> Vec<(&'static str, &Tensor)> {
//!         vec![("full_w", &self.0)]
//!     }
//!     fn delta(&self, scaling: f64) -> Tensor {
//!         &self.0 * scaling
//!     }
//! }
//!
//! let f = Full(Tensor::ones([2, 3], (tch::Kind::Float, tch::Device::Cpu)));
//! assert_eq!(f.delta(0.5).sum(None).double_value(&[]), 3.0);
//! ```

pub mod config;
pub mod layer;

pub use config::{Alpha, LycorisOptions};
pub use layer::{LycorisAdapter, LycorisKind, LycorisLayer, LycorisParams, LycorisTarget, MaskKind};

/// The `MethodConfig` and `AdapterConfig` impls of a LyCORIS method config — a serde struct with
/// `common: PeftConfigCommon` and `lycoris: LycorisOptions` — whose layers come from
/// `crate::layer::create(&config, ctx)`: `__post_init__`, validation and target selection are
/// [`LycorisOptions`]'. Both LoHa and LoKr are declared this way:
///
/// ```ignore
/// peft_lycoris::lycoris_config_impls!(LohaConfig, PEFT_TYPE);
/// ```
// `crate::layer::create` is the calling method crate's layer constructor, on purpose.
#[allow(clippy::crate_in_macro_def)]
#[macro_export]
macro_rules! lycoris_config_impls {
    ($config:ty, $peft_type:expr) => {
        impl peft_core::MethodConfig for $config {
            const PEFT_TYPE: &'static str = $peft_type;

            /// `__post_init__`: the LyCORIS checks ([`peft_lycoris::LycorisOptions::post_init`]).
            fn post_init(&mut self, location: &str, _warnings: &mut Vec<String>) -> peft_core::Result<()> {
                self.lycoris.post_init(location)
            }
        }

        impl peft_core::AdapterConfig for $config {
            peft_core::adapter_config_boilerplate!();

            fn validate(&self) -> peft_core::Result<()> {
                self.lycoris.check(peft_core::peft_config::error::IN_MEMORY)
            }

            fn target_spec(&self) -> peft_core::peft_config::TargetSpec<'_> {
                self.lycoris.target_spec()
            }

            fn set_target_modules(&mut self, targets: peft_core::peft_config::TargetModules) {
                self.lycoris.target_modules = Some(targets);
            }

            fn set_modules_to_save(&mut self, modules: Vec<String>) -> bool {
                self.lycoris.modules_to_save = Some(modules);
                true
            }
        }

        impl peft_core::LayerMethod for $config {
            fn create_layer(
                &mut self,
                ctx: &mut peft_core::LayerInit<'_, '_>,
            ) -> peft_core::Result<Box<dyn peft_core::TunerLayer>> {
                crate::layer::create(self, ctx).map(|l| Box::new(l) as Box<dyn peft_core::TunerLayer>)
            }
        }
    };
}
