//! `PsoftConfig`: PEFT 0.21.2's keys, defaults and checks.

use peft_core::config::LayerInit;
use peft_core::peft_config::error::ConfigError;
use peft_core::peft_config::targets::dedupe_lists;
use peft_core::peft_config::{LayerIndices, LayersPattern, Num, PeftConfigCommon, TargetModules};
use peft_core::LayerMethod;
use peft_core::{AdapterConfig, MethodConfig, PeftError, Result, TunerLayer};
use serde::{Deserialize, Serialize};

/// `peft_type` of PSOFT.
pub const PEFT_TYPE: &str = "PSOFT";

/// `psoft_svd_lowrank_niter`'s default (PEFT warns when another value is given without `"lowrank"`).
const DEFAULT_LOWRANK_NITER: i64 = 10;
/// `num_cayley_neumann_terms`' default.
const DEFAULT_NEUMANN_TERMS: i64 = 5;

/// PEFT 0.21.2's `PsoftConfig`, field for field.
///
/// PSOFT ("Principal Subspace Orthogonal Fine-Tuning") takes the top-`r` singular subspace of each frozen
/// weight, `W ≈ B·A` with `A` `(r, in)` and `B` `(out, r)` from its SVD (frozen, rebuilt from the weight,
/// never saved), and trains only an `r × r` transform `R` between them: `ΔW = α/r · B·(R − I)·A`. `R` is
/// orthogonal through the Cayley transform of a skew-symmetric matrix (`psoft_orth`), optionally scaled by
/// trainable vectors on either side.
///
/// ```
/// use peft_core::peft_config::TargetModules;
/// use peft_psoft::PsoftConfig;
///
/// let config = PsoftConfig {
///     r: 8,
///     target_modules: Some(TargetModules::list(["q_proj", "v_proj"])),
///     ..PsoftConfig::default()
/// };
/// assert_eq!(config.scaling(), 4.0); // psoft_alpha 32 / r 8
/// assert_eq!(PsoftConfig::default().ab_svd_init, "psoft_init");
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PsoftConfig {
    /// `peft_type`, `task_type`, `base_model_name_or_path`, `revision`, `inference_mode`, …
    #[serde(flatten)]
    pub common: PeftConfigCommon,
    /// The size of the principal subspace and of `R` (default 32).
    pub r: i64,
    /// Modules to adapt: names / dotted suffixes, a full-match regex, or `"all-linear"`.
    pub target_modules: Option<TargetModules>,
    /// Modules never to adapt.
    pub exclude_modules: Option<TargetModules>,
    /// The scaling numerator: the update is multiplied by `psoft_alpha / r` (default 32).
    pub psoft_alpha: Num,
    /// Dropout on the adapter's input path (training only).
    pub psoft_dropout: f64,
    /// PSOFT adapts `nn.Linear` only, so PEFT resets `true` to `false` (with a warning) on every layer.
    pub fan_in_fan_out: bool,
    /// How `A` and `B` split the singular values: `"psoft_init"` (`A = Vhᵣ`, `B = Uᵣ·diag(S·r/α)`) or
    /// `"pissa_init"` (√ of the scaled values on each side).
    pub ab_svd_init: String,
    /// `"full"` (`torch.linalg.svd`) or `"lowrank"` (`torch.svd_lowrank` under `random_seed`).
    pub psoft_svd: String,
    /// Power iterations of the low-rank SVD (default 10).
    pub psoft_svd_lowrank_niter: i64,
    /// The seed of the low-rank SVD's draws (the global generator is restored afterwards, as PEFT's
    /// `fork_rng` does).
    pub random_seed: i64,
    /// `true`: `R` is the Cayley transform of a skew-symmetric matrix (`r(r−1)/2` values); `false`: a free
    /// `r × r` matrix.
    pub psoft_orth: bool,
    /// A trainable scale on `R`'s output side.
    pub psoft_mag_b: bool,
    /// A trainable scale on `R`'s input side.
    pub psoft_mag_a: bool,
    /// Approximate the Cayley transform by its Neumann series.
    pub use_cayley_neumann: bool,
    /// Terms of the Neumann series (default 5).
    pub num_cayley_neumann_terms: i64,
    /// A Frobenius-norm bound on the skew-symmetric matrix before the series (in `(0, 1)`).
    pub cayley_neumann_eps: Option<f64>,
    /// Extra modules trained and saved in full.
    pub modules_to_save: Option<Vec<String>>,
    /// `true`: `R` starts as the identity (the adapter is the identity); `false`: a random `R`.
    pub init_weights: bool,
    /// Only the layers with these indices are adapted.
    pub layers_to_transform: Option<LayerIndices>,
    /// The name of the layer list `layers_to_transform` indexes into.
    pub layers_pattern: Option<LayersPattern>,
}

impl Default for PsoftConfig {
    fn default() -> Self {
        Self {
            common: PeftConfigCommon::new(PEFT_TYPE),
            r: 32,
            target_modules: None,
            exclude_modules: None,
            psoft_alpha: Num::from(32),
            psoft_dropout: 0.0,
            fan_in_fan_out: false,
            ab_svd_init: "psoft_init".into(),
            psoft_svd: "full".into(),
            psoft_svd_lowrank_niter: DEFAULT_LOWRANK_NITER,
            random_seed: 0,
            psoft_orth: true,
            psoft_mag_b: true,
            psoft_mag_a: true,
            use_cayley_neumann: false,
            num_cayley_neumann_terms: DEFAULT_NEUMANN_TERMS,
            cayley_neumann_eps: None,
            modules_to_save: None,
            init_weights: true,
            layers_to_transform: None,
            layers_pattern: None,
        }
    }
}

impl PsoftConfig {
    /// `psoft_alpha / r`.
    pub fn scaling(&self) -> f64 {
        self.psoft_alpha.value() / self.r as f64
    }

    fn check(&self, location: &str) -> Result<()> {
        self.target_spec().check_layer_selection(location)?;
        let invalid = |field: &str, message: String| -> PeftError {
            ConfigError::InvalidField { location: location.to_string(), field: field.into(), message }.into()
        };
        if self.r <= 0 {
            return Err(invalid("r", format!("`r` must be a positive integer; got {}.", self.r)));
        }
        if !["pissa_init", "psoft_init"].contains(&self.ab_svd_init.as_str()) {
            return Err(invalid(
                "ab_svd_init",
                format!(
                    "`ab_svd_init` must be one of ['pissa_init', 'psoft_init']; got '{}'.",
                    self.ab_svd_init
                ),
            ));
        }
        if !["full", "lowrank"].contains(&self.psoft_svd.as_str()) {
            return Err(invalid(
                "psoft_svd",
                format!("`psoft_svd` must be one of ['full', 'lowrank']; got '{}'.", self.psoft_svd),
            ));
        }
        if self.use_cayley_neumann {
            if self.num_cayley_neumann_terms <= 0 {
                return Err(invalid(
                    "num_cayley_neumann_terms",
                    format!(
                        "`num_cayley_neumann_terms` must be a positive integer; got {}.",
                        self.num_cayley_neumann_terms
                    ),
                ));
            }
            if let Some(eps) = self.cayley_neumann_eps.filter(|e| !(0.0 < *e && *e < 1.0)) {
                return Err(invalid(
                    "cayley_neumann_eps",
                    format!("`cayley_neumann_eps` must be in (0, 1) when set; got {eps}."),
                ));
            }
        }
        Ok(())
    }

    /// `__post_init__`'s warnings about options the other options make unused.
    fn unused_option_warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        if self.psoft_svd != "lowrank" && self.psoft_svd_lowrank_niter != DEFAULT_LOWRANK_NITER {
            w.push(format!(
                "`psoft_svd_lowrank_niter` is only used when `psoft_svd='lowrank'`. Got psoft_svd='{}', so \
                 psoft_svd_lowrank_niter={} will be ignored.",
                self.psoft_svd, self.psoft_svd_lowrank_niter
            ));
        }
        if !self.use_cayley_neumann {
            if self.num_cayley_neumann_terms != DEFAULT_NEUMANN_TERMS {
                w.push(format!(
                    "`num_cayley_neumann_terms` is only used when `use_cayley_neumann=True`. Since \
                     `use_cayley_neumann=False`, `num_cayley_neumann_terms={}` will be ignored.",
                    self.num_cayley_neumann_terms
                ));
            }
            if let Some(eps) = self.cayley_neumann_eps {
                w.push(format!(
                    "`cayley_neumann_eps` is only used when `use_cayley_neumann=True`. Since \
                     `use_cayley_neumann=False`, `cayley_neumann_eps={eps}` will be ignored."
                ));
            }
        }
        w
    }
}

impl MethodConfig for PsoftConfig {
    const PEFT_TYPE: &'static str = PEFT_TYPE;

    /// `PsoftConfig.__post_init__`: target lists become sets; the layer-selection rules; a positive `r`;
    /// known `ab_svd_init` and `psoft_svd`; the Neumann options checked when used and warned about when not.
    fn post_init(&mut self, location: &str, warnings: &mut Vec<String>) -> Result<()> {
        dedupe_lists([&mut self.target_modules, &mut self.exclude_modules]);
        self.check(location)?;
        for w in self.unused_option_warnings() {
            log::warn!("{w}");
            warnings.push(w);
        }
        Ok(())
    }
}

impl AdapterConfig for PsoftConfig {
    peft_core::adapter_config_boilerplate!();
    peft_core::adapter_config_targets!(
        target_modules,
        exclude_modules,
        layers_to_transform,
        layers_pattern,
        modules_to_save
    );

    fn validate(&self) -> Result<()> {
        self.check(peft_core::peft_config::error::IN_MEMORY)?;
        if !(0.0..1.0).contains(&self.psoft_dropout) {
            return Err(PeftError::Invalid(format!(
                "psoft_dropout must be in [0, 1), got {}",
                self.psoft_dropout
            )));
        }
        Ok(())
    }
}

impl LayerMethod for PsoftConfig {
    fn create_layer(&mut self, ctx: &mut LayerInit<'_, '_>) -> Result<Box<dyn TunerLayer>> {
        crate::layer::PsoftLayer::create(self, ctx).map(|l| Box::new(l) as Box<dyn TunerLayer>)
    }
}
