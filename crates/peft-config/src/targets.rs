//! Which modules an adapter goes on: PEFT's `check_target_module_exists`, reproduced exactly, plus the
//! stricter report peft-rs gives (every pattern entry that matched nothing is named).
//!
//! Rules (PEFT 0.21.2, `tuners_utils.check_target_module_exists`), for a module name `key` such as
//! `model.layers.0.self_attn.q_proj`:
//! 1. `exclude_modules`: a string is a full-match regex; a list excludes `key` when it equals an entry or
//!    ends with `"." + entry`.
//! 2. A module inside a `modules_to_save` entry (regex `(^|.*\.)<m>($|\..*)`) is never targeted.
//! 3. `target_modules` as a string: full-match regex, no layer filter.
//! 4. `target_modules` as a list: exact name (no layer filter), or `"." + entry` suffix, which then has to
//!    pass `layers_to_transform` / `layers_pattern` when those are set.

use crate::error::ConfigError;
use fancy_regex::Regex;
use serde::{Deserialize, Serialize};

/// The `"all-linear"` shorthand (matched case-insensitively).
pub const ALL_LINEAR: &str = "all-linear";
/// PEFT's `DUMMY_TARGET_MODULES`: a target that allows matching no module at all.
pub const DUMMY_TARGET_MODULES: &str = "dummy-target-modules";

/// `target_modules` / `exclude_modules`: a regex string or a list of names.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TargetModules {
    /// A regex that must match the whole module name (or the `all-linear` shorthand).
    Regex(String),
    /// Module names or dotted suffixes of module names.
    List(Vec<String>),
}

impl TargetModules {
    /// A list from names.
    pub fn list<I, S>(names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        TargetModules::List(names.into_iter().map(Into::into).collect())
    }

    /// True for the `all-linear` shorthand.
    pub fn is_all_linear(&self) -> bool {
        matches!(self, TargetModules::Regex(s) if s.eq_ignore_ascii_case(ALL_LINEAR))
    }

    /// True for PEFT's `dummy-target-modules`.
    pub fn is_dummy(&self) -> bool {
        matches!(self, TargetModules::Regex(s) if s == DUMMY_TARGET_MODULES)
    }

    /// True for an empty list.
    pub fn is_empty(&self) -> bool {
        matches!(self, TargetModules::List(v) if v.is_empty())
    }
}

/// `layers_to_transform`: one layer index or several.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum LayerIndices {
    /// A single index.
    One(i64),
    /// Several indices.
    Many(Vec<i64>),
}

impl LayerIndices {
    fn is_active(&self) -> bool {
        match self {
            LayerIndices::One(_) => true,
            LayerIndices::Many(v) => !v.is_empty(),
        }
    }

    fn contains(&self, idx: i64) -> bool {
        match self {
            LayerIndices::One(i) => *i == idx,
            LayerIndices::Many(v) => v.contains(&idx),
        }
    }
}

/// `layers_pattern`: the name of the module list holding the layers (`"layers"`, `"h"`), or several.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum LayersPattern {
    /// One name.
    One(String),
    /// Several names, tried in order.
    Many(Vec<String>),
}

impl LayersPattern {
    fn names(&self) -> Vec<&str> {
        match self {
            LayersPattern::One(s) => vec![s.as_str()],
            LayersPattern::Many(v) => v.iter().map(String::as_str).collect(),
        }
    }

    /// Whether it names nothing (`""` or `[]`: Python's falsy values, which PEFT treats as unset).
    pub fn is_empty(&self) -> bool {
        match self {
            LayersPattern::One(s) => s.is_empty(),
            LayersPattern::Many(v) => v.is_empty(),
        }
    }
}

/// The module-selection options of a config, borrowed from it.
#[derive(Clone, Copy, Debug, Default)]
pub struct TargetSpec<'a> {
    /// `target_modules`.
    pub target_modules: Option<&'a TargetModules>,
    /// `exclude_modules`.
    pub exclude_modules: Option<&'a TargetModules>,
    /// `layers_to_transform`.
    pub layers_to_transform: Option<&'a LayerIndices>,
    /// `layers_pattern`.
    pub layers_pattern: Option<&'a LayersPattern>,
    /// `modules_to_save` (their insides are never targeted).
    pub modules_to_save: Option<&'a [String]>,
    /// `target_parameters` is set (then `target_modules: null` matches nothing instead of failing).
    pub has_target_parameters: bool,
}

impl TargetSpec<'_> {
    /// The `__post_init__` rule of every PEFT config with `layers_pattern`: a (non-empty) `layers_pattern`
    /// needs `layers_to_transform`.
    ///
    /// # Errors
    /// [`ConfigError::Inconsistent`] with PEFT's message.
    pub fn check_layers_pattern(&self, location: &str) -> Result<(), ConfigError> {
        if self.layers_pattern.is_some_and(|p| !p.is_empty()) && self.layers_to_transform.is_none() {
            return Err(ConfigError::Inconsistent {
                location: location.to_string(),
                message: "When `layers_pattern` is specified, `layers_to_transform` must also be specified."
                    .into(),
            });
        }
        Ok(())
    }

    /// The layer-selection rules of the configs that also refuse `layers_to_transform` and
    /// `layers_pattern` next to a regex `target_modules` (LoRA, AdaLoRA, HRA, FourierFT, …), then
    /// [`TargetSpec::check_layers_pattern`].
    ///
    /// # Errors
    /// [`ConfigError::Inconsistent`] with PEFT's message.
    pub fn check_layer_selection(&self, location: &str) -> Result<(), ConfigError> {
        self.check_regex_selection(location)?;
        self.check_layers_pattern(location)
    }

    /// The rule alone that `layers_to_transform` and `layers_pattern` cannot go with a regex
    /// `target_modules` (configs such as HiRA's check only this one).
    ///
    /// # Errors
    /// [`ConfigError::Inconsistent`] with PEFT's message.
    pub fn check_regex_selection(&self, location: &str) -> Result<(), ConfigError> {
        if let Some(TargetModules::Regex(_)) = self.target_modules {
            for (set, option) in [
                (self.layers_to_transform.is_some(), "layers_to_transform"),
                (self.layers_pattern.is_some(), "layers_pattern"),
            ] {
                if set {
                    return Err(ConfigError::Inconsistent {
                        location: location.to_string(),
                        message: format!("`{option}` cannot be used when `target_modules` is a str."),
                    });
                }
            }
        }
        Ok(())
    }
}

/// The verdict for one module name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TargetMatch {
    /// The module gets the adapter; `entry` is the index of the list entry (or 0 for a regex) that matched.
    Targeted {
        /// Which `target_modules` entry matched.
        entry: usize,
    },
    /// Removed by `exclude_modules` or because it lies inside a `modules_to_save` module.
    Excluded,
    /// Not selected.
    NotTargeted,
}

fn compile_full(field: &str, pattern: &str) -> Result<Regex, ConfigError> {
    compile(field, pattern, &format!("^(?:{pattern})$"))
}

/// Python's `re.fullmatch(pattern, key)`: whether the whole of `key` matches `pattern`. `field` names the
/// option in errors.
///
/// # Errors
/// [`ConfigError::InvalidRegex`] for a pattern that does not compile.
pub fn full_match(field: &str, pattern: &str, key: &str) -> Result<bool, ConfigError> {
    Ok(is_match(&compile_full(field, pattern)?, key))
}

/// Whether a module-name option (a regex string or a list) selects `key` the way most of PEFT's per-layer
/// options do (IA³'s `feedforward_modules`, …): a string must match all of `key`; a list entry matches when
/// `key` ends with it (a plain suffix, not a dotted one).
///
/// # Errors
/// [`ConfigError::InvalidRegex`] for a pattern that does not compile.
pub fn selects_by_suffix(field: &str, modules: &TargetModules, key: &str) -> Result<bool, ConfigError> {
    match modules {
        TargetModules::Regex(p) => full_match(field, p, key),
        TargetModules::List(v) => Ok(v.iter().any(|m| key.ends_with(m.as_str()))),
    }
}

/// Removes repeated entries of list-valued options, keeping the first (PEFT turns them into sets).
pub fn dedupe_lists<'a>(options: impl IntoIterator<Item = &'a mut Option<TargetModules>>) {
    for t in options.into_iter().flatten() {
        if let TargetModules::List(v) = t {
            let mut seen = std::collections::BTreeSet::new();
            v.retain(|x| seen.insert(x.clone()));
        }
    }
}

fn compile(field: &str, pattern: &str, full: &str) -> Result<Regex, ConfigError> {
    Regex::new(full).map_err(|e| ConfigError::InvalidRegex {
        field: field.to_string(),
        pattern: pattern.to_string(),
        message: e.to_string(),
    })
}

fn is_match(re: &Regex, s: &str) -> bool {
    // Backtracking limits are the only runtime error of fancy-regex; treat them as no match.
    re.is_match(s).unwrap_or(false)
}

enum Names {
    /// The compiled full-match regex and the pattern as written.
    Regex(Regex, String),
    List(Vec<String>),
}

impl Names {
    fn new(field: &str, t: &TargetModules) -> Result<Self, ConfigError> {
        Ok(match t {
            TargetModules::Regex(p) => Names::Regex(compile_full(field, p)?, p.clone()),
            TargetModules::List(v) => Names::List(v.clone()),
        })
    }
}

/// A compiled [`TargetSpec`]: regexes are compiled once, then [`TargetMatcher::check`] is cheap.
pub struct TargetMatcher {
    targets: Option<Names>,
    exclude: Option<Names>,
    modules_to_save: Vec<Regex>,
    layers_to_transform: Option<LayerIndices>,
    layer_index_res: Vec<Regex>,
    has_target_parameters: bool,
    dummy: bool,
}

impl std::fmt::Debug for TargetMatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TargetMatcher").finish_non_exhaustive()
    }
}

impl TargetMatcher {
    /// Compiles the spec.
    ///
    /// # Errors
    /// [`ConfigError::InvalidRegex`] for a pattern that does not compile, [`ConfigError::Inconsistent`] for
    /// option combinations PEFT rejects (`layers_to_transform` or `layers_pattern` with a regex
    /// `target_modules`; `layers_pattern` without `layers_to_transform`).
    pub fn new(spec: &TargetSpec<'_>) -> Result<Self, ConfigError> {
        spec.check_layer_selection(crate::error::IN_MEMORY)?;
        let pattern_nonempty = spec.layers_pattern.is_some_and(|p| !p.is_empty());
        let dummy = spec.target_modules.is_some_and(TargetModules::is_dummy);
        let targets = spec.target_modules.map(|t| Names::new("target_modules", t)).transpose()?;
        let exclude = spec.exclude_modules.map(|t| Names::new("exclude_modules", t)).transpose()?;
        let modules_to_save = spec
            .modules_to_save
            .unwrap_or(&[])
            .iter()
            .map(|m| compile("modules_to_save", m, &format!(r"^(?:^|.*\.){m}(?:$|\..*)")))
            .collect::<Result<Vec<_>, _>>()?;
        let layer_index_res = match spec.layers_pattern {
            Some(p) if pattern_nonempty => p
                .names()
                .into_iter()
                .map(|name| compile("layers_pattern", name, &format!(r"^(?:^|.*?\.){name}\.(\d+)\.")))
                .collect::<Result<Vec<_>, _>>()?,
            // Lazy `.*?` picks the first numbered segment (the layer), not e.g. a nested expert index.
            _ => vec![compile("layers_to_transform", "", r"^.*?\.[^.]*\.(\d+)\.")?],
        };
        Ok(Self {
            targets,
            exclude,
            modules_to_save,
            layers_to_transform: spec.layers_to_transform.filter(|l| l.is_active()).cloned(),
            layer_index_res,
            has_target_parameters: spec.has_target_parameters,
            dummy,
        })
    }

    /// True when `target_modules` is PEFT's dummy value (an adapter allowed to match nothing).
    pub fn is_dummy(&self) -> bool {
        self.dummy
    }

    fn excluded(&self, key: &str) -> bool {
        let by_exclude = match &self.exclude {
            Some(Names::Regex(re, _)) => is_match(re, key),
            Some(Names::List(v)) => v.iter().any(|e| key == e || ends_with_dotted(key, e)),
            None => false,
        };
        by_exclude || self.modules_to_save.iter().any(|re| is_match(re, key))
    }

    fn layer_index(&self, key: &str) -> Option<i64> {
        self.layer_index_res.iter().find_map(|re| {
            let caps = re.captures(key).ok().flatten()?;
            caps.get(1)?.as_str().parse().ok()
        })
    }

    /// Whether target entry `i` names `key` (exact name, or dotted suffix passing the layer filter; for
    /// a regex, a full match), regardless of exclusions.
    fn entry_matches(&self, i: usize, key: &str) -> bool {
        match &self.targets {
            None => false,
            Some(Names::Regex(re, _)) => is_match(re, key),
            Some(Names::List(v)) => {
                let t = &v[i];
                if t == key {
                    return true;
                }
                if !ends_with_dotted(key, t) {
                    return false;
                }
                match &self.layers_to_transform {
                    None => true,
                    Some(layers) => self.layer_index(key).is_some_and(|idx| layers.contains(idx)),
                }
            }
        }
    }

    /// PEFT's verdict for one module name.
    pub fn check(&self, key: &str) -> TargetMatch {
        if self.excluded(key) {
            return TargetMatch::Excluded;
        }
        if self.dummy {
            return TargetMatch::NotTargeted;
        }
        match &self.targets {
            None => TargetMatch::NotTargeted,
            Some(Names::Regex(re, _)) => {
                if is_match(re, key) {
                    TargetMatch::Targeted { entry: 0 }
                } else {
                    TargetMatch::NotTargeted
                }
            }
            Some(Names::List(v)) => {
                // An exact name wins (and skips the layer filter), then the first suffix match.
                if let Some(entry) = v.iter().position(|t| t == key) {
                    return TargetMatch::Targeted { entry };
                }
                match (0..v.len()).find(|&i| self.entry_matches(i, key)) {
                    Some(entry) => TargetMatch::Targeted { entry },
                    None => TargetMatch::NotTargeted,
                }
            }
        }
    }

    fn entries(names: Option<&Names>) -> Vec<String> {
        match names {
            Some(Names::List(v)) => v.clone(),
            Some(Names::Regex(_, p)) => vec![p.clone()],
            None => vec![],
        }
    }

    /// Classifies every module name and reports which names are targeted, which config entries match
    /// no module at all (a likely typo), and which excludes excluded nothing.
    pub fn report<'n, I>(&self, names: I) -> MatchReport
    where
        I: IntoIterator<Item = &'n str>,
    {
        let mut report = MatchReport::default();
        let entries = Self::entries(self.targets.as_ref());
        let mut hits = vec![0usize; entries.len()];
        let exclude_entries = Self::entries(self.exclude.as_ref());
        let mut exclude_hits = vec![0usize; exclude_entries.len()];
        for key in names {
            for (i, h) in hits.iter_mut().enumerate() {
                if self.entry_matches(i, key) {
                    *h += 1;
                }
            }
            match &self.exclude {
                Some(Names::List(v)) => {
                    for (i, e) in v.iter().enumerate() {
                        if key == e || ends_with_dotted(key, e) {
                            exclude_hits[i] += 1;
                        }
                    }
                }
                Some(Names::Regex(re, _)) if is_match(re, key) => exclude_hits[0] += 1,
                _ => {}
            }
            match self.check(key) {
                TargetMatch::Targeted { .. } => report.targeted.push(key.to_string()),
                TargetMatch::Excluded => report.excluded.push(key.to_string()),
                TargetMatch::NotTargeted => report.unmatched.push(key.to_string()),
            }
        }
        report.unmatched_entries =
            entries.iter().zip(&hits).filter(|(_, h)| **h == 0).map(|(e, _)| e.clone()).collect();
        report.unused_excludes = exclude_entries
            .iter()
            .zip(&exclude_hits)
            .filter(|(_, h)| **h == 0)
            .map(|(e, _)| e.clone())
            .collect();
        report.target_parameters_only = self.targets.is_none() && self.has_target_parameters;
        report
    }
}

fn ends_with_dotted(key: &str, suffix: &str) -> bool {
    key.len() > suffix.len() && key.ends_with(suffix) && key.as_bytes()[key.len() - suffix.len() - 1] == b'.'
}

/// The outcome of matching a config against all module names of a model.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MatchReport {
    /// Modules that get the adapter, in model order.
    pub targeted: Vec<String>,
    /// Modules removed by `exclude_modules` / `modules_to_save`.
    pub excluded: Vec<String>,
    /// Modules not selected.
    pub unmatched: Vec<String>,
    /// `target_modules` entries (or the regex) that selected no module.
    pub unmatched_entries: Vec<String>,
    /// `exclude_modules` entries that excluded nothing (PEFT warns about these).
    pub unused_excludes: Vec<String>,
    /// `target_modules` is null and `target_parameters` is set.
    pub target_parameters_only: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matcher(t: TargetModules) -> TargetMatcher {
        TargetMatcher::new(&TargetSpec { target_modules: Some(&t), ..Default::default() }).unwrap()
    }

    #[test]
    fn list_entries_match_exact_names_or_dotted_suffixes() {
        let m = matcher(TargetModules::list(["q_proj", "mlp.fc"]));
        assert_eq!(m.check("model.layers.0.self_attn.q_proj"), TargetMatch::Targeted { entry: 0 });
        assert_eq!(m.check("q_proj"), TargetMatch::Targeted { entry: 0 });
        assert_eq!(m.check("layers.1.mlp.fc"), TargetMatch::Targeted { entry: 1 });
        // No dot boundary: `xq_proj` is not `q_proj`.
        assert_eq!(m.check("model.xq_proj"), TargetMatch::NotTargeted);
        assert_eq!(m.check("model.q_proj.lora_A"), TargetMatch::NotTargeted);
    }

    #[test]
    fn a_string_is_a_full_match_regex() {
        let m = matcher(TargetModules::Regex(r".*\.q_proj".into()));
        assert!(matches!(m.check("model.layers.0.q_proj"), TargetMatch::Targeted { .. }));
        assert_eq!(m.check("q_proj"), TargetMatch::NotTargeted);
        assert_eq!(m.check("model.layers.0.q_proj_extra"), TargetMatch::NotTargeted);
        let m = matcher(TargetModules::Regex("lin0".into()));
        assert!(matches!(m.check("lin0"), TargetMatch::Targeted { .. }));
        assert_eq!(m.check("a.lin0"), TargetMatch::NotTargeted);
    }

    #[test]
    fn python_regex_features_work() {
        // Lookahead (not supported by the plain `regex` crate).
        let m = matcher(TargetModules::Regex(r"^(?!.*mlp).*proj$".into()));
        assert!(matches!(m.check("attn.q_proj"), TargetMatch::Targeted { .. }));
        assert_eq!(m.check("mlp.up_proj"), TargetMatch::NotTargeted);
    }

    #[test]
    fn exclude_modules_win_over_targets() {
        let t = TargetModules::list(["lin0", "lin1"]);
        let e = TargetModules::list(["layers.1.lin0"]);
        let m = TargetMatcher::new(&TargetSpec {
            target_modules: Some(&t),
            exclude_modules: Some(&e),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(m.check("layers.1.lin0"), TargetMatch::Excluded);
        assert_eq!(m.check("model.layers.1.lin0"), TargetMatch::Excluded);
        assert!(matches!(m.check("layers.2.lin0"), TargetMatch::Targeted { .. }));
        let e = TargetModules::Regex(r".*1\..*".into());
        let m = TargetMatcher::new(&TargetSpec {
            target_modules: Some(&t),
            exclude_modules: Some(&e),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(m.check("layers.1.lin1"), TargetMatch::Excluded);
        assert!(matches!(m.check("layers.2.lin1"), TargetMatch::Targeted { .. }));
    }

    #[test]
    fn modules_to_save_insides_are_never_targeted() {
        let t = TargetModules::Regex(".*".into());
        let mts = vec!["classifier".to_string()];
        let m = TargetMatcher::new(&TargetSpec {
            target_modules: Some(&t),
            modules_to_save: Some(&mts),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(m.check("classifier"), TargetMatch::Excluded);
        assert_eq!(m.check("model.classifier.dense"), TargetMatch::Excluded);
        assert!(matches!(m.check("model.classifier_x"), TargetMatch::Targeted { .. }));
    }

    #[test]
    fn layers_to_transform_without_pattern_uses_the_first_index_after_two_segments() {
        let t = TargetModules::list(["q_proj", "lin0"]);
        let l = LayerIndices::Many(vec![1]);
        let m = TargetMatcher::new(&TargetSpec {
            target_modules: Some(&t),
            layers_to_transform: Some(&l),
            ..Default::default()
        })
        .unwrap();
        assert!(matches!(m.check("model.layers.1.self_attn.q_proj"), TargetMatch::Targeted { .. }));
        assert_eq!(m.check("model.layers.0.self_attn.q_proj"), TargetMatch::NotTargeted);
        // MoE: the layer index is the first number, not the expert index.
        assert_eq!(m.check("model.layers.0.experts.1.q_proj"), TargetMatch::NotTargeted);
        // PEFT quirk: `layers.1.lin0` has no segment before `layers`, so no index is found.
        assert_eq!(m.check("layers.1.lin0"), TargetMatch::NotTargeted);
        // An exact name skips the layer filter.
        assert!(matches!(m.check("q_proj"), TargetMatch::Targeted { .. }));
    }

    #[test]
    fn layers_pattern_names_the_layer_list() {
        let t = TargetModules::list(["lin0"]);
        let l = LayerIndices::One(2);
        let p = LayersPattern::One("layers".into());
        let m = TargetMatcher::new(&TargetSpec {
            target_modules: Some(&t),
            layers_to_transform: Some(&l),
            layers_pattern: Some(&p),
            ..Default::default()
        })
        .unwrap();
        assert!(matches!(m.check("layers.2.lin0"), TargetMatch::Targeted { .. }));
        assert_eq!(m.check("layers.3.lin0"), TargetMatch::NotTargeted);
        assert!(matches!(m.check("model.layers.2.lin0"), TargetMatch::Targeted { .. }));
        assert_eq!(m.check("model.blocks.2.lin0"), TargetMatch::NotTargeted);
    }

    #[test]
    fn peft_rejects_layer_options_with_a_regex_and_pattern_without_layers() {
        let t = TargetModules::Regex("lin0".into());
        let l = LayerIndices::One(0);
        let err = TargetMatcher::new(&TargetSpec {
            target_modules: Some(&t),
            layers_to_transform: Some(&l),
            ..Default::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("layers_to_transform"), "{err}");
        let t = TargetModules::list(["lin0"]);
        let p = LayersPattern::One("layers".into());
        let err = TargetMatcher::new(&TargetSpec {
            target_modules: Some(&t),
            layers_pattern: Some(&p),
            ..Default::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("layers_pattern"), "{err}");
    }

    #[test]
    fn report_names_every_entry_that_matched_nothing() {
        let t = TargetModules::list(["lin0", "lin9", "typo"]);
        let e = TargetModules::list(["nothing_here"]);
        let m = TargetMatcher::new(&TargetSpec {
            target_modules: Some(&t),
            exclude_modules: Some(&e),
            ..Default::default()
        })
        .unwrap();
        let r = m.report(["lin0", "lin1", "block.lin0"]);
        assert_eq!(r.targeted, vec!["lin0", "block.lin0"]);
        assert_eq!(r.unmatched, vec!["lin1"]);
        assert_eq!(r.unmatched_entries, vec!["lin9", "typo"]);
        assert_eq!(r.unused_excludes, vec!["nothing_here"]);
        // An entry whose modules are all excluded did match: the exclusion is deliberate.
        let t = TargetModules::list(["lin0", "lin1"]);
        let e = TargetModules::list(["lin1"]);
        let m = TargetMatcher::new(&TargetSpec {
            target_modules: Some(&t),
            exclude_modules: Some(&e),
            ..Default::default()
        })
        .unwrap();
        let r = m.report(["lin0", "lin1"]);
        assert!(r.unmatched_entries.is_empty(), "{r:?}");
        assert_eq!(r.excluded, vec!["lin1"]);
        let m = matcher(TargetModules::Regex("nope.*".into()));
        assert_eq!(m.report(["lin0"]).unmatched_entries, vec!["nope.*"]);
    }

    #[test]
    fn invalid_regex_is_an_error_naming_the_field() {
        let t = TargetModules::Regex("lin(".into());
        let err =
            TargetMatcher::new(&TargetSpec { target_modules: Some(&t), ..Default::default() }).unwrap_err();
        assert!(
            matches!(err, ConfigError::InvalidRegex { ref field, .. } if field == "target_modules"),
            "{err}"
        );
    }

    #[test]
    fn all_linear_is_recognised_case_insensitively() {
        assert!(TargetModules::Regex("ALL-Linear".into()).is_all_linear());
        assert!(!TargetModules::list(["all-linear"]).is_all_linear());
    }

    #[test]
    fn json_forms_round_trip() {
        let t: TargetModules = serde_json::from_str(r#"["a","b"]"#).unwrap();
        assert_eq!(t, TargetModules::list(["a", "b"]));
        let t: TargetModules = serde_json::from_str(r#"".*a""#).unwrap();
        assert_eq!(t, TargetModules::Regex(".*a".into()));
        let l: LayerIndices = serde_json::from_str("3").unwrap();
        assert_eq!(l, LayerIndices::One(3));
        let l: LayerIndices = serde_json::from_str("[0, 2]").unwrap();
        assert_eq!(l, LayerIndices::Many(vec![0, 2]));
    }
}

/// PEFT's `MIN_TARGET_MODULES_FOR_OPTIMIZATION`: from this many `target_modules` entries on, PEFT
/// condenses the list to the suffixes that suffice (and saves the condensed list).
pub const MIN_TARGET_MODULES_FOR_OPTIMIZATION: usize = 20;

/// PEFT's `_find_minimal_target_modules`: the smallest set of dotted suffixes that selects every name in
/// `targets` and no name in `others` (shortest suffixes first, targets in the order of their suffix lists).
/// Returns the targets unchanged when no suffix qualifies.
pub fn find_minimal_target_modules(
    targets: &[String],
    others: &[String],
) -> std::collections::BTreeSet<String> {
    use std::collections::BTreeSet;
    fn suffixes(s: &str) -> Vec<String> {
        let parts: Vec<&str> = s.split('.').collect();
        let mut v: Vec<String> = (0..parts.len()).map(|i| parts[i..].join(".")).collect();
        v.reverse();
        v
    }
    let other_suffixes: BTreeSet<String> = others.iter().flat_map(|o| suffixes(o)).collect();
    let unique: BTreeSet<&String> = targets.iter().collect();
    let mut items: Vec<(&String, Vec<String>)> = unique.into_iter().map(|t| (t, suffixes(t))).collect();
    // Python sorts (item, suffixes) pairs by the suffix lists.
    items.sort_by(|a, b| a.1.cmp(&b.1));
    let mut required: BTreeSet<String> = BTreeSet::new();
    for (item, sufs) in items {
        for suffix in sufs {
            if required.contains(&suffix) || other_suffixes.contains(&suffix) {
                continue;
            }
            if !required.iter().any(|r| item.ends_with(&format!(".{r}"))) {
                required.insert(suffix);
                break;
            }
        }
    }
    if required.is_empty() {
        return targets.iter().cloned().collect();
    }
    required
}

#[cfg(test)]
mod minimal_tests {
    use super::find_minimal_target_modules;

    #[test]
    fn condenses_to_distinguishing_suffixes() {
        let mut targets: Vec<String> =
            (0..100).map(|i| format!("model.decoder.layers.{i}.self_attn.q_proj")).collect();
        targets.extend((0..100).map(|i| format!("model.decoder.layers.{i}.self_attn.v_proj")));
        let others: Vec<String> =
            (0..100).map(|i| format!("model.encoder.layers.{i}.self_attn.k_proj")).collect();
        let got: Vec<String> = find_minimal_target_modules(&targets, &others).into_iter().collect();
        assert_eq!(got, ["q_proj", "v_proj"]);
        // A suffix shared with another module is not enough (PEFT's answer for the same input).
        let others = vec!["model.encoder.layers.0.self_attn.q_proj".to_string()];
        let got: Vec<String> = find_minimal_target_modules(&targets[..2], &others).into_iter().collect();
        assert_eq!(got, ["1.self_attn.q_proj", "decoder.layers.0.self_attn.q_proj"]);
    }
}
