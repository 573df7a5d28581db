//! The config keys every LyCORIS method has (PEFT's `LycorisConfig` plus the fields LoHa's and LoKr's
//! configs declare identically), their checks, and the per-module rank and alpha.

use indexmap::IndexMap;
use peft_core::peft_config::patterns::PatternMap;
use peft_core::peft_config::targets::dedupe_lists;
use peft_core::peft_config::{LayerIndices, LayersPattern, TargetModules, TargetSpec};
use peft_core::Result;
use serde::{Deserialize, Serialize};

/// `alpha`: a JSON number that keeps its form (PEFT declares `alpha: int` but keeps whatever number it was
/// given), so a config round-trips to the text PEFT wrote.
pub use peft_core::peft_config::Num as Alpha;

/// The keys LoHa and LoKr share, with PEFT 0.21.2's defaults. Method configs flatten it next to
/// [`peft_core::peft_config::PeftConfigCommon`], so the JSON has every key at the top level as PEFT
/// writes it.
///
/// ```
/// use peft_lycoris::LycorisOptions;
///
/// let mut o = LycorisOptions { r: 4, alpha: 8.into(), ..LycorisOptions::default() };
/// o.rank_pattern.insert(r"layers\.0\.lin0".into(), 2);
/// assert_eq!(o.rank_and_alpha("layers.0.lin0").unwrap(), (2, 8.0));
/// assert_eq!(o.rank_and_alpha("layers.1.lin0").unwrap(), (4, 8.0));
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LycorisOptions {
    /// The rank.
    pub r: i64,
    /// The scaling numerator: the delta is multiplied by `alpha / r`.
    pub alpha: Alpha,
    /// Training only: the probability of zeroing each output row of the delta weight.
    pub rank_dropout: f64,
    /// Training only: the probability of skipping the adapter of a layer for a whole forward pass.
    pub module_dropout: f64,
    /// The CP ("Proposition 3" of FedPara) decomposition for convolutions with a kernel larger than 1.
    pub use_effective_conv2d: bool,
    /// Modules to adapt: names / dotted suffixes, a full-match regex, or `"all-linear"`.
    pub target_modules: Option<TargetModules>,
    /// Modules never to adapt.
    pub exclude_modules: Option<TargetModules>,
    /// Only adapt layers with these indices (of the layer list `layers_pattern` names).
    pub layers_to_transform: Option<LayerIndices>,
    /// The name of the layer list `layers_to_transform` indexes into.
    pub layers_pattern: Option<LayersPattern>,
    /// Extra modules trained and saved in full.
    pub modules_to_save: Option<Vec<String>>,
    /// Per-module rank overrides `{regex: r}`, first match in file order wins.
    pub rank_pattern: IndexMap<String, i64>,
    /// Per-module alpha overrides `{regex: alpha}`.
    pub alpha_pattern: IndexMap<String, Alpha>,
}

impl Default for LycorisOptions {
    fn default() -> Self {
        Self {
            r: 8,
            alpha: Alpha::from(8i64),
            rank_dropout: 0.0,
            module_dropout: 0.0,
            use_effective_conv2d: false,
            target_modules: None,
            exclude_modules: None,
            layers_to_transform: None,
            layers_pattern: None,
            modules_to_save: None,
            rank_pattern: IndexMap::new(),
            alpha_pattern: IndexMap::new(),
        }
    }
}

impl LycorisOptions {
    /// `__post_init__`'s normalisation (target and exclude lists are sets in PEFT) and checks.
    ///
    /// # Errors
    /// As [`LycorisOptions::check`].
    pub fn post_init(&mut self, location: &str) -> Result<()> {
        dedupe_lists([&mut self.target_modules, &mut self.exclude_modules]);
        self.check(location)
    }

    /// The hard errors of `__post_init__`, and patterns that do not compile.
    ///
    /// # Errors
    /// `layers_pattern` without `layers_to_transform`; an invalid `rank_pattern` / `alpha_pattern` regex.
    pub fn check(&self, location: &str) -> Result<()> {
        self.target_spec().check_layers_pattern(location)?;
        PatternMap::new("rank_pattern", &self.rank_pattern)?;
        PatternMap::new("alpha_pattern", &self.alpha_pattern)?;
        Ok(())
    }

    /// The rank and alpha of module `key` (its full name), after `rank_pattern` / `alpha_pattern`
    /// (PEFT's `get_pattern_key`: the first pattern matching the end of the name at a dot boundary).
    ///
    /// # Errors
    /// An invalid pattern regex.
    pub fn rank_and_alpha(&self, key: &str) -> Result<(i64, f64)> {
        let r = PatternMap::new("rank_pattern", &self.rank_pattern)?.lookup(key).map_or(self.r, |(_, v)| *v);
        let alpha = PatternMap::new("alpha_pattern", &self.alpha_pattern)?
            .lookup(key)
            .map_or(self.alpha.value(), |(_, v)| v.value());
        Ok((r, alpha))
    }

    /// The module-selection options.
    pub fn target_spec(&self) -> TargetSpec<'_> {
        TargetSpec {
            target_modules: self.target_modules.as_ref(),
            exclude_modules: self.exclude_modules.as_ref(),
            layers_to_transform: self.layers_to_transform.as_ref(),
            layers_pattern: self.layers_pattern.as_ref(),
            modules_to_save: self.modules_to_save.as_deref(),
            ..TargetSpec::default()
        }
    }
}
