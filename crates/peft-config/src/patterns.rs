//! `rank_pattern` / `alpha_pattern` lookups (PEFT's `get_pattern_key`).
//!
//! The first pattern `p`, in the order the config lists them, for which `re.match(r"(.*\.)?(p)$", key)`
//! succeeds wins: a regex anchored at the end of the module name and starting at a dot boundary.

use crate::error::ConfigError;
use fancy_regex::Regex;
use indexmap::IndexMap;

/// Compiled per-module overrides, in config order.
#[derive(Debug)]
pub struct PatternMap<V> {
    entries: Vec<(Regex, String, V)>,
}

impl<V: Clone> PatternMap<V> {
    /// Compiles the patterns of `map`; `field` names the config key for errors.
    ///
    /// # Errors
    /// [`ConfigError::InvalidRegex`] when a pattern does not compile.
    pub fn new(field: &str, map: &IndexMap<String, V>) -> Result<Self, ConfigError> {
        let entries = map
            .iter()
            .map(|(p, v)| {
                Regex::new(&format!(r"^(?:.*\.)?(?:{p})$")).map(|re| (re, p.clone(), v.clone())).map_err(
                    |e| ConfigError::InvalidRegex {
                        field: field.to_string(),
                        pattern: p.clone(),
                        message: e.to_string(),
                    },
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { entries })
    }

    /// The value of the first pattern matching `key`, with that pattern.
    pub fn lookup(&self, key: &str) -> Option<(&str, &V)> {
        self.entries
            .iter()
            .find(|(re, _, _)| re.is_match(key).unwrap_or(false))
            .map(|(_, p, v)| (p.as_str(), v))
    }
}

/// The value for module `key` as FourierFT's `n_frequency_pattern` and C3A's `block_size_pattern` pick it:
/// the first entry `p` (in config order) with `re.match(rf".*\.{p}$", key)`, else the entry named exactly
/// `key`, else `None`.
///
/// # Errors
/// [`ConfigError::InvalidRegex`] for an entry that is not a valid regex.
pub fn suffix_or_exact<'m, V>(
    field: &str,
    map: &'m IndexMap<String, V>,
    key: &str,
) -> Result<Option<&'m V>, ConfigError> {
    for (pattern, value) in map {
        if crate::targets::full_match(field, &format!(r".*\.{pattern}"), key)? {
            return Ok(Some(value));
        }
    }
    Ok(map.get(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_matching_pattern_in_config_order_wins() {
        let mut m = IndexMap::new();
        m.insert("lin0".to_string(), 4usize);
        m.insert(r"layers\.\d+\.lin0".to_string(), 16);
        let p = PatternMap::new("rank_pattern", &m).unwrap();
        assert_eq!(p.lookup("layers.3.lin0"), Some(("lin0", &4)));
        assert_eq!(p.lookup("lin0"), Some(("lin0", &4)));
        assert_eq!(p.lookup("xlin0"), None, "patterns start at a dot boundary");
        assert_eq!(p.lookup("lin0.sub"), None, "patterns are anchored at the end");
        let mut m = IndexMap::new();
        m.insert(r"layers\.1\.lin0".to_string(), 2usize);
        m.insert("lin0".to_string(), 4);
        let p = PatternMap::new("rank_pattern", &m).unwrap();
        assert_eq!(p.lookup("model.layers.1.lin0").map(|x| *x.1), Some(2));
        assert_eq!(p.lookup("model.layers.2.lin0").map(|x| *x.1), Some(4));
    }
}
