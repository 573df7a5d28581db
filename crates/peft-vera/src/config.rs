//! `VeraConfig`: PEFT 0.21.2's keys, defaults and checks, and the projections shared by an adapter's layers.

use peft_core::config::{unsupported_option, BiasOption, LayerInit, TargetLayer, TargetView};
use peft_core::peft_config::targets::dedupe_lists;
use peft_core::peft_config::{LayerIndices, LayersPattern, PeftConfigCommon, TargetModules};
use peft_core::rng::Generator;
use peft_core::MethodConfig;
use peft_core::{AdapterConfig, BiasMode, PeftError, Result, TunerLayer};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::sync::{Arc, Mutex};
use tch::{Device, Kind, Tensor};

/// `peft_type` of VeRA.
pub const PEFT_TYPE: &str = "VERA";

/// PEFT 0.21.2's `VeraConfig`, field for field.
///
/// ```
/// use peft_core::peft_config::TargetModules;
/// use peft_vera::VeraConfig;
///
/// let config = VeraConfig {
///     r: 64,
///     target_modules: Some(TargetModules::list(["q_proj", "v_proj"])),
///     ..VeraConfig::default()
/// };
/// assert!(config.save_projection && config.d_initial == 0.1);
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct VeraConfig {
    /// `peft_type`, `task_type`, `base_model_name_or_path`, `revision`, `inference_mode`, …
    #[serde(flatten)]
    pub common: PeftConfigCommon,
    /// The rank of the shared projections (VeRA uses far larger ranks than LoRA).
    pub r: i64,
    /// Modules to adapt: names / dotted suffixes, a full-match regex, or `"all-linear"`.
    pub target_modules: Option<TargetModules>,
    /// The seed of the generator the projections are drawn from.
    pub projection_prng_key: i64,
    /// Save the projections with the adapter (`false`: they are drawn again from the seed on load).
    pub save_projection: bool,
    /// Dropout on the adapter's input.
    pub vera_dropout: f64,
    /// The initial value of `vera_lambda_d`.
    pub d_initial: f64,
    /// The base weight is stored `(in, out)` (GPT-2's `Conv1D`); corrected from the layer type on injection.
    pub fan_in_fan_out: bool,
    /// Which biases train with the adapter: `"none"`, `"all"` or `"vera_only"`.
    pub bias: BiasOption,
    /// Extra modules trained and saved in full.
    pub modules_to_save: Option<Vec<String>>,
    /// PEFT's default init (`vera_lambda_b = 0`, `vera_lambda_d = d_initial`: the identity); `false` keeps
    /// `vera_lambda_b = 1` and `vera_lambda_d ~ N(0, 1)`.
    pub init_weights: bool,
    /// Only adapt layers with these indices.
    pub layers_to_transform: Option<LayerIndices>,
    /// The name of the layer list `layers_to_transform` indexes into.
    pub layers_pattern: Option<LayersPattern>,
    /// The projections of this adapter, made by [`AdapterConfig::before_layers`] (never saved here).
    #[serde(skip)]
    pub projections: SharedProjections,
}

/// The projections `vera_A` `(r, max in)` and `vera_B` `(max out, r)` the layers share: drawn once (CPU, f32)
/// for the first VeRA adapter of a model, before its layers are created, and reused by every later adapter
/// (as PEFT does); moved to the base device and dtype by the first layer created. Each adapter's first layer
/// saves them in that adapter's state dict (`base_model.vera_A` / `base_model.vera_B`).
#[derive(Clone, Debug, Default)]
pub struct SharedProjections(pub Option<Arc<Mutex<Projections>>>);

impl PartialEq for SharedProjections {
    /// Configs compare by what is saved; the projections are not part of the config.
    fn eq(&self, _other: &Self) -> bool {
        true
    }
}

/// The shared projections of one adapter.
#[derive(Debug)]
pub struct Projections {
    /// `vera_A`, `(r, max in_features)`.
    pub a: Tensor,
    /// `vera_B`, `(max out_features, r)`.
    pub b: Tensor,
    /// Whether the first layer moved them to the base device and dtype.
    pub placed: bool,
    /// The adapters whose first layer has been created (that layer saves the projections for it).
    pub owners: Vec<String>,
}

impl Default for VeraConfig {
    fn default() -> Self {
        Self {
            common: PeftConfigCommon::new(PEFT_TYPE),
            r: 256,
            target_modules: None,
            projection_prng_key: 0,
            save_projection: true,
            vera_dropout: 0.0,
            d_initial: 0.1,
            fan_in_fan_out: false,
            bias: BiasOption::default(),
            modules_to_save: None,
            init_weights: true,
            layers_to_transform: None,
            layers_pattern: None,
            projections: SharedProjections::default(),
        }
    }
}

/// PEFT's `_kaiming_init`: `U(-b, b)` with `b = sqrt(3) · sqrt(2) / sqrt(fan_in)` drawn from `g`.
fn kaiming(shape: [i64; 2], g: &mut Generator) -> Result<Tensor> {
    let mut t = Tensor::f_empty(shape, (Kind::Float, Device::Cpu))
        .map_err(PeftError::torch("allocating a projection"))?;
    let fan = peft_core::init::fan_in(&t) as f64;
    let bound = 3f64.sqrt() * (2f64.sqrt() / fan.sqrt());
    g.uniform_(&mut t, -bound, bound)?;
    Ok(t)
}

impl VeraConfig {
    fn check(&self, location: &str) -> Result<()> {
        Ok(self.target_spec().check_layers_pattern(location)?)
    }
}

impl MethodConfig for VeraConfig {
    const PEFT_TYPE: &'static str = PEFT_TYPE;

    /// `VeraConfig.__post_init__`: the target list becomes a set; the layer-selection rule; PEFT's
    /// warning when the projections are not saved.
    fn post_init(&mut self, location: &str, warnings: &mut Vec<String>) -> Result<()> {
        dedupe_lists([&mut self.target_modules]);
        self.check(location)?;
        if !self.save_projection {
            warnings.push(format!(
                "{location}: Specified to not save vera_A and vera_B within the state dictionary, instead they will be \
                 restored using the PRNG key store in `config.projection_prng_key`. Consider setting \
                 `config.save_projection` to `True` to guarantee restoring the checkpoint correctly on all system \
                 configurations."
            ));
        }
        Ok(())
    }
}

impl AdapterConfig for VeraConfig {
    peft_core::adapter_config_boilerplate!();
    peft_core::adapter_config_targets!(target_modules, layers_to_transform, layers_pattern, modules_to_save);

    fn validate(&self) -> Result<()> {
        self.check(peft_core::peft_config::error::IN_MEMORY)?;
        peft_core::config::require_positive("r", self.r)?;
        if !(0.0..1.0).contains(&self.vera_dropout) {
            return Err(PeftError::Invalid(format!(
                "vera_dropout must be in [0, 1), got {}",
                self.vera_dropout
            )));
        }
        self.bias.mode()?;
        if self.projection_prng_key < 0 {
            return Err(unsupported_option(
                PEFT_TYPE,
                "projection_prng_key",
                &Value::from(self.projection_prng_key),
                "a negative seed (torch.Generator.manual_seed wraps it to 64 bits)",
            ));
        }
        Ok(())
    }

    fn bias(&self) -> BiasMode {
        self.bias.mode().unwrap_or(BiasMode::None)
    }

    fn check_new_adapter(&self, existing: &[(&str, &dyn AdapterConfig)]) -> Result<()> {
        for (name, other) in existing {
            let Some(other) = other.as_any().downcast_ref::<VeraConfig>() else { continue };
            if other.projection_prng_key != self.projection_prng_key {
                return Err(PeftError::Invalid(format!(
                    "Vera PRNG initialisation key must be the same for all adapters. Got projection_prng_key={} but \
                     adapter '{name}' had {}.",
                    self.projection_prng_key, other.projection_prng_key
                )));
            }
            if other.save_projection != self.save_projection {
                return Err(PeftError::Invalid(format!(
                    "VeRA projection weights must be saved for all adapters or none, but adapter '{name}' has \
                     save_projection={} and the new one {}",
                    other.save_projection, self.save_projection
                )));
            }
        }
        Ok(())
    }

    /// PEFT's `_init_vera_A_vera_B`: the projections sized by the largest targeted linear layer, drawn from
    /// a generator seeded with `projection_prng_key` (A first, then B).
    fn before_layers(
        &mut self,
        _adapter: &str,
        targets: &[TargetLayer],
        existing: &[(&str, &dyn AdapterConfig)],
    ) -> Result<()> {
        let earlier = existing
            .iter()
            .filter_map(|(_, c)| c.as_any().downcast_ref::<VeraConfig>())
            .find_map(|c| c.projections.0.clone());
        if let Some(shared) = earlier {
            self.projections = SharedProjections(Some(shared));
            return Ok(());
        }
        let mut largest: Option<(i64, i64)> = None;
        for t in targets.iter().filter(|t| t.view == TargetView::Linear) {
            largest = Some(match largest {
                None => (t.out_features, t.in_features),
                Some((o, i)) => (o.max(t.out_features), i.max(t.in_features)),
            });
        }
        let Some((out_max, in_max)) = largest else {
            return Err(PeftError::Invalid(
                "No layers types compatible with VeRA were found. Please check `peft_config.target_modules`."
                    .into(),
            ));
        };
        let mut g = Generator::new(self.projection_prng_key as u64)?;
        let a = kaiming([self.r, in_max], &mut g)?;
        let b = kaiming([out_max, self.r], &mut g)?;
        self.projections = SharedProjections(Some(Arc::new(Mutex::new(Projections {
            a,
            b,
            placed: false,
            owners: Vec::new(),
        }))));
        Ok(())
    }

    fn create_layer(&mut self, ctx: &mut LayerInit<'_, '_>) -> Result<Box<dyn TunerLayer>> {
        crate::layer::VeraLayer::create(self, ctx).map(|l| Box::new(l) as Box<dyn TunerLayer>)
    }
}
