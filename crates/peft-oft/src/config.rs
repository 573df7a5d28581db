//! `OFTConfig`: PEFT 0.21.2's keys, defaults and checks (`__post_init__` and the file-level
//! `check_kwargs`).

use peft_core::config::{parse_method_config, BiasMode, BiasOption, LayerInit};
use peft_core::peft_config::targets::dedupe_lists;
use peft_core::peft_config::{ConfigError, LayerIndices, LayersPattern, PeftConfigCommon, TargetModules};
use peft_core::LayerMethod;
use peft_core::MethodConfig;
use peft_core::{AdapterConfig, Result, TunerLayer};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// `peft_type` of OFT.
pub const PEFT_TYPE: &str = "OFT";

/// PEFT 0.21.2's `OFTConfig`, field for field.
///
/// Exactly one of `r` (blocks per layer) and `oft_block_size` (the size of each block) is non-zero; the
/// other follows from the rotated dimension of each layer (`in_features`, `in_channels · k²` for a
/// `Conv2d`, `embedding_dim` for an `Embedding`). A value that does not divide that dimension is replaced
/// per layer by the nearest divisor, with a warning, as PEFT does; the config keeps the value given.
///
/// ```
/// use peft_core::peft_config::TargetModules;
/// use peft_oft::OftConfig;
///
/// let config = OftConfig {
///     target_modules: Some(TargetModules::list(["q_proj", "v_proj"])),
///     oft_block_size: 16,
///     ..OftConfig::default()
/// };
/// assert!(config.use_cayley_neumann && config.init_weights);
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct OftConfig {
    /// `peft_type`, `task_type`, `base_model_name_or_path`, `revision`, `inference_mode`, …
    #[serde(flatten)]
    pub common: PeftConfigCommon,
    /// Number of blocks per layer (0: derived from `oft_block_size`).
    pub r: i64,
    /// Size of each block (0: derived from `r`). Default 32.
    pub oft_block_size: i64,
    /// PEFT's multiplicative block dropout. PEFT 0.21.2 creates the dropout module but never calls it, so
    /// it changes nothing (and draws no random numbers) — here too.
    pub module_dropout: f64,
    /// Modules to adapt: names / dotted suffixes, a full-match regex, or `"all-linear"`.
    pub target_modules: Option<TargetModules>,
    /// Set to `false` on injection: OFT adapts no layer stored `(in, out)` (GPT-2's `Conv1D` is refused).
    pub fan_in_fan_out: bool,
    /// Which biases train with the adapter.
    pub bias: BiasOption,
    /// Modules never to adapt.
    pub exclude_modules: Option<TargetModules>,
    /// Start at the identity rotation (zero skew parameters); `false` draws them from N(0, 0.1).
    pub init_weights: bool,
    /// Only the layers with these indices are adapted.
    pub layers_to_transform: Option<LayerIndices>,
    /// The name of the layer list `layers_to_transform` indexes into.
    pub layers_pattern: Option<LayersPattern>,
    /// Extra modules trained and saved in full.
    pub modules_to_save: Option<Vec<String>>,
    /// Constrained OFT: the skew parameters are projected onto a ball of radius `eps / sqrt(blocks)`
    /// (written back into the parameter) before every use.
    pub coft: bool,
    /// COFT's radius (only with `coft`).
    pub eps: f64,
    /// One block shared by all blocks of a layer.
    pub block_share: bool,
    /// The truncated Neumann series for `(I + Q)⁻¹` instead of an exact solve.
    pub use_cayley_neumann: bool,
    /// Terms of the Neumann series.
    pub num_cayley_neumann_terms: i64,
}

impl Default for OftConfig {
    fn default() -> Self {
        Self {
            common: PeftConfigCommon::new(PEFT_TYPE),
            r: 0,
            oft_block_size: 32,
            module_dropout: 0.0,
            target_modules: None,
            fan_in_fan_out: false,
            bias: BiasOption::default(),
            exclude_modules: None,
            init_weights: true,
            layers_to_transform: None,
            layers_pattern: None,
            modules_to_save: None,
            coft: false,
            eps: 6e-5,
            block_share: false,
            use_cayley_neumann: true,
            num_cayley_neumann_terms: 5,
        }
    }
}

/// PEFT's error for configs written before 0.14 (no `oft_block_size`).
const OLD_OFT_MESSAGE: &str = "OFT has been updated since PEFT 0.14.0. Your trained adapter weights are \
     incompatible with the latest version of OFT. Please retrain your adapter weights with newer PEFT versions. \
     Alternatively, downgrade PEFT to version 0.13.0 to use the old adapter weights.";

/// PEFT's warning for Cayley–Neumann adapters written before 0.18.
const OLD_NEUMANN_MESSAGE: &str = "The cayley-neumann parameterization has been slightly changed to be more \
     numerically stable in PEFT 0.18.0. Please retrain your adapter weights with newer PEFT versions. \
     Alternatively, downgrade PEFT to version 0.17.0 to use the old parameterization.";

impl OftConfig {
    /// `__post_init__`'s hard errors, and negative sizes (which PEFT only trips over when it allocates
    /// the parameters).
    fn check(&self, location: &str) -> Result<()> {
        let bad = |message: String| -> Result<()> {
            Err(ConfigError::Inconsistent { location: location.to_string(), message }.into())
        };
        self.target_spec().check_layers_pattern(location)?;
        let (r, b) = (self.r, self.oft_block_size);
        if r == 0 && b == 0 {
            return bad(format!(
                "Either `r` or `oft_block_size` must be non-zero. Currently, r = {r} and oft_block_size = {b}."
            ));
        }
        if r != 0 && b != 0 {
            return bad(format!(
                "You can only specify either r ({r}) or oft_block_size ({b}), but not both simultaneously, \
                 because r x oft_block_size == in_features."
            ));
        }
        if r < 0 || b < 0 {
            return bad(format!("`r` ({r}) and `oft_block_size` ({b}) must not be negative"));
        }
        Ok(())
    }
}

/// Python truthiness of a JSON value (for `kwargs.get("use_cayley_neumann", False)`).
fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

/// `packaging.version.Version(v.partition("@")[0]) >= Version(min)` for the version forms PEFT writes
/// (`0.21.2`, `0.18.0.dev0`, `0.18.0rc1`, `0.18.0+local`, `0.18.0.post1`).
fn version_at_least(version: &str, min: (u64, u64, u64), location: &str) -> Result<bool> {
    let v = version.split('@').next().unwrap_or("").trim();
    let v = v.strip_prefix('v').unwrap_or(v);
    let v = v.split('+').next().unwrap_or("");
    let numeric_end = v.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(v.len());
    let (numeric, suffix) = v.split_at(numeric_end);
    let numeric = numeric.trim_end_matches('.');
    let parts: Option<Vec<u64>> = numeric.split('.').map(|p| p.parse().ok()).collect();
    let parts = match parts {
        Some(p) if !p.is_empty() => p,
        _ => {
            return Err(ConfigError::InvalidField {
                location: location.to_string(),
                field: "peft_version".into(),
                message: format!("invalid version {version:?}"),
            }
            .into())
        }
    };
    let get = |i: usize| parts.get(i).copied().unwrap_or(0);
    let extra_nonzero = parts.iter().skip(3).any(|&p| p != 0);
    let release = (get(0), get(1), get(2));
    Ok(match release.cmp(&min) {
        std::cmp::Ordering::Greater => true,
        std::cmp::Ordering::Less => false,
        std::cmp::Ordering::Equal => {
            // A pre- or dev-release of the minimum sorts before it; a post-release after.
            let s = suffix.trim_start_matches(['.', '-', '_']).to_ascii_lowercase();
            extra_nonzero
                || s.is_empty()
                || s.starts_with("post")
                || s.starts_with("rev")
                || (s.starts_with('r') && !s.starts_with("rc"))
        }
    })
}

impl MethodConfig for OftConfig {
    const PEFT_TYPE: &'static str = PEFT_TYPE;

    /// `OFTConfig.__post_init__`: target lists become sets; the hard errors of its checks.
    fn post_init(&mut self, location: &str, _warnings: &mut Vec<String>) -> Result<()> {
        dedupe_lists([&mut self.target_modules, &mut self.exclude_modules]);
        self.check(location)
    }

    /// Parses PEFT's JSON. A config without `oft_block_size` is refused with PEFT's message when it sets
    /// `r` (an adapter from before PEFT 0.14, whose weights do not load); without `r` either it gets the
    /// default block size and a warning (PEFT refuses such files; keyword arguments without it are fine
    /// there). `use_cayley_neumann` written by a PEFT older than 0.18 warns, as PEFT does.
    ///
    /// # Errors
    /// Invalid values, both or neither of `r` and `oft_block_size`, `layers_pattern` without
    /// `layers_to_transform`, an old-format config.
    fn from_json_map(map: Map<String, Value>, location: &str, warnings: &mut Vec<String>) -> Result<Self> {
        let has_block_size = map.contains_key("oft_block_size");
        let old_neumann = match map.get("use_cayley_neumann") {
            Some(v) if truthy(v) => {
                let version = map.get("peft_version").and_then(Value::as_str).unwrap_or("0.0.0");
                !version_at_least(version, (0, 18, 0), location)?
            }
            _ => false,
        };
        let mut config: Self =
            parse_method_config(map, PEFT_TYPE, location, warnings, |c: &mut Self| &mut c.common)?;
        if !has_block_size {
            if config.r != 0 {
                return Err(ConfigError::Inconsistent {
                    location: location.to_string(),
                    message: OLD_OFT_MESSAGE.to_string(),
                }
                .into());
            }
            let msg = format!(
                "{location}: `oft_block_size` is missing; using the default {}. PEFT refuses such files \
                 (written before PEFT 0.14)",
                config.oft_block_size
            );
            log::warn!("{msg}");
            warnings.push(msg);
        }
        if old_neumann {
            log::warn!("{OLD_NEUMANN_MESSAGE}");
            warnings.push(OLD_NEUMANN_MESSAGE.to_string());
        }
        config.post_init(location, warnings)?;
        Ok(config)
    }
}

impl AdapterConfig for OftConfig {
    peft_core::adapter_config_boilerplate!();
    peft_core::adapter_config_targets!(
        target_modules,
        exclude_modules,
        layers_to_transform,
        layers_pattern,
        modules_to_save
    );

    fn validate(&self) -> Result<()> {
        self.bias.mode()?;
        self.check(peft_core::peft_config::error::IN_MEMORY)
    }

    fn bias(&self) -> BiasMode {
        self.bias.mode().unwrap_or(BiasMode::None)
    }
}

impl LayerMethod for OftConfig {
    fn create_layer(&mut self, ctx: &mut LayerInit<'_, '_>) -> Result<Box<dyn TunerLayer>> {
        crate::layer::OftLayer::create(self, ctx).map(|l| Box::new(l) as Box<dyn TunerLayer>)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_compare_like_packaging() {
        let min = (0, 18, 0);
        let at_least = |v: &str| version_at_least(v, min, "test").unwrap();
        assert!(at_least("0.21.2"));
        assert!(at_least("0.18.0"));
        assert!(at_least("0.18.0.post1"));
        assert!(at_least("0.18.0+local"));
        assert!(at_least("0.18.1.dev0"));
        assert!(at_least("0.18.0@abc123"));
        assert!(!at_least("0.18.0.dev0"));
        assert!(!at_least("0.18.0rc1"));
        assert!(!at_least("0.17.1"));
        assert!(!at_least("0.0.0"));
        assert!(version_at_least("not a version", min, "test").is_err());
    }
}
