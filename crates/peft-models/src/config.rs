//! Reading transformers' `config.json`.
//!
//! Configs are read through typed getters with transformers' defaults, so a missing key takes the value
//! transformers would use and a wrongly typed value is an error naming the key and the file.

use crate::error::{ModelError, Result};
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};

/// The largest model size [`HfConfig::size_or`] accepts (2^24: beyond any real vocabulary, width or
/// context, and small enough that products of two sizes cannot overflow).
pub const MAX_SIZE: i64 = 1 << 24;

/// The largest layer count [`HfConfig::layers_or`] accepts.
pub const MAX_LAYERS: i64 = 1 << 12;

/// A parsed `config.json`.
#[derive(Clone, Debug)]
pub struct HfConfig {
    path: PathBuf,
    map: Map<String, Value>,
}

impl HfConfig {
    /// Reads `dir/config.json`.
    ///
    /// # Errors
    /// [`ModelError::Config`] when the file is missing or not a JSON object.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("config.json");
        let text = peft_core::peft_config::files::read_text_bounded(
            &path,
            peft_core::peft_config::files::MAX_JSON_BYTES,
        )
        .map_err(|e| ModelError::Config { path: path.clone(), message: format!("cannot read: {e}") })?;
        Self::from_str(&text, path)
    }

    /// Parses config text; `path` names it in errors.
    ///
    /// # Errors
    /// [`ModelError::Config`] when the text is not a JSON object.
    pub fn from_str(text: &str, path: PathBuf) -> Result<Self> {
        match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(map)) => Ok(Self { path, map }),
            Ok(_) => Err(ModelError::Config { path, message: "not a JSON object".into() }),
            Err(e) => Err(ModelError::Config { path, message: format!("invalid JSON: {e}") }),
        }
    }

    /// A config built in memory (from a GGUF file's metadata); `path` names its source in errors.
    pub fn from_map(map: Map<String, Value>, path: PathBuf) -> Self {
        Self { path, map }
    }

    /// The file it came from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The raw JSON.
    pub fn raw(&self) -> &Map<String, Value> {
        &self.map
    }

    fn err(&self, key: &str, want: &str, v: &Value) -> ModelError {
        ModelError::Config {
            path: self.path.clone(),
            message: format!("`{key}` should be {want}, found {v}"),
        }
    }

    /// An integer, `None` when absent or null.
    ///
    /// # Errors
    /// A value that is not an integer.
    pub fn opt_i64(&self, key: &str) -> Result<Option<i64>> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v.as_i64().map(Some).ok_or_else(|| self.err(key, "an integer", v)),
        }
    }

    /// An integer with a default.
    ///
    /// # Errors
    /// A value that is not an integer.
    pub fn i64_or(&self, key: &str, default: i64) -> Result<i64> {
        Ok(self.opt_i64(key)?.unwrap_or(default))
    }

    /// A required integer.
    ///
    /// # Errors
    /// A missing or non-integer value.
    pub fn i64(&self, key: &str) -> Result<i64> {
        self.opt_i64(key)?.ok_or_else(|| ModelError::Config {
            path: self.path.clone(),
            message: format!("missing `{key}`"),
        })
    }

    /// A model size (a dimension, a vocabulary, a head count): an integer in `1..=MAX_SIZE`, `default`
    /// when absent or null.
    ///
    /// # Errors
    /// A value that is not an integer or out of range, naming the file and key.
    pub fn size_or(&self, key: &str, default: i64) -> Result<i64> {
        let v = self.i64_or(key, default)?;
        self.in_range(key, v, 1, MAX_SIZE)
    }

    /// An optional model size ([`HfConfig::size_or`] without a default).
    ///
    /// # Errors
    /// As [`HfConfig::size_or`].
    pub fn opt_size(&self, key: &str) -> Result<Option<i64>> {
        self.opt_i64(key)?.map(|v| self.in_range(key, v, 1, MAX_SIZE)).transpose()
    }

    /// A layer count: an integer in `0..=MAX_LAYERS`, `default` when absent or null.
    ///
    /// # Errors
    /// A value that is not an integer or out of range, naming the file and key.
    pub fn layers_or(&self, key: &str, default: i64) -> Result<i64> {
        let v = self.i64_or(key, default)?;
        self.in_range(key, v, 0, MAX_LAYERS)
    }

    fn in_range(&self, key: &str, v: i64, lo: i64, hi: i64) -> Result<i64> {
        if (lo..=hi).contains(&v) {
            Ok(v)
        } else {
            Err(ModelError::Config {
                path: self.path.clone(),
                message: format!("`{key}` is {v}, it must be between {lo} and {hi}"),
            })
        }
    }

    /// Checks that `key_a`'s value `a` is a multiple of `key_b`'s value `b` (heads splitting a hidden
    /// size, query heads sharing key/value heads).
    ///
    /// # Errors
    /// A value that is not a multiple, naming both keys.
    pub fn check_multiple(&self, key_a: &str, a: i64, key_b: &str, b: i64) -> Result<()> {
        if b > 0 && a % b == 0 {
            Ok(())
        } else {
            Err(ModelError::Config {
                path: self.path.clone(),
                message: format!("`{key_a}` ({a}) must be a multiple of `{key_b}` ({b})"),
            })
        }
    }

    /// A number, `None` when absent or null.
    ///
    /// # Errors
    /// A value that is not a number.
    pub fn opt_f64(&self, key: &str) -> Result<Option<f64>> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v.as_f64().map(Some).ok_or_else(|| self.err(key, "a number", v)),
        }
    }

    /// A number with a default.
    ///
    /// # Errors
    /// A value that is not a number.
    pub fn f64_or(&self, key: &str, default: f64) -> Result<f64> {
        Ok(self.opt_f64(key)?.unwrap_or(default))
    }

    /// A boolean with a default.
    ///
    /// # Errors
    /// A value that is not a boolean.
    pub fn bool_or(&self, key: &str, default: bool) -> Result<bool> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(v) => v.as_bool().ok_or_else(|| self.err(key, "a boolean", v)),
        }
    }

    /// A string, `None` when absent or null.
    ///
    /// # Errors
    /// A value that is not a string.
    pub fn opt_str(&self, key: &str) -> Result<Option<&str>> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v.as_str().map(Some).ok_or_else(|| self.err(key, "a string", v)),
        }
    }

    /// A string with a default.
    ///
    /// # Errors
    /// A value that is not a string.
    pub fn str_or<'a>(&'a self, key: &str, default: &'a str) -> Result<&'a str> {
        Ok(self.opt_str(key)?.unwrap_or(default))
    }

    /// `model_type`.
    ///
    /// # Errors
    /// A missing `model_type`.
    pub fn model_type(&self) -> Result<&str> {
        self.opt_str("model_type")?.ok_or_else(|| ModelError::Config {
            path: self.path.clone(),
            message: "missing `model_type`".into(),
        })
    }

    /// `architectures` (e.g. `["LlamaForCausalLM"]`).
    pub fn architectures(&self) -> Vec<String> {
        match self.map.get("architectures") {
            Some(Value::Array(a)) => a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect(),
            _ => Vec::new(),
        }
    }

    /// `num_labels`, as transformers derives it: the size of `id2label` when present, else
    /// `num_labels`, else 2.
    pub fn num_labels(&self) -> i64 {
        if let Some(Value::Object(m)) = self.map.get("id2label") {
            if !m.is_empty() {
                return m.len() as i64;
            }
        }
        self.map.get("num_labels").and_then(Value::as_i64).unwrap_or(2)
    }

    /// `eos_token_id` as a list (transformers allows an int or a list).
    pub fn eos_token_ids(&self) -> Vec<i64> {
        ids(self.map.get("eos_token_id"))
    }
}

/// An int-or-list token id value as a list.
pub fn ids(v: Option<&Value>) -> Vec<i64> {
    match v {
        Some(Value::Number(n)) => n.as_i64().into_iter().collect(),
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_i64).collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_getters_use_defaults_and_name_bad_keys() {
        let c = HfConfig::from_str(
            r#"{"model_type": "llama", "hidden_size": 32, "rms_norm_eps": "x", "id2label": {"0": "a", "1": "b", "2": "c"}}"#,
            "config.json".into(),
        )
        .unwrap();
        assert_eq!(c.i64_or("hidden_size", 7).unwrap(), 32);
        assert_eq!(c.i64_or("intermediate_size", 7).unwrap(), 7);
        assert_eq!(c.num_labels(), 3);
        let err = c.f64_or("rms_norm_eps", 1e-6).unwrap_err().to_string();
        assert!(err.contains("rms_norm_eps") && err.contains("config.json"), "{err}");
        assert!(c.i64("vocab_size").unwrap_err().to_string().contains("vocab_size"));
    }

    #[test]
    fn sizes_are_checked_when_the_config_is_read() {
        let c = HfConfig::from_str(
            r#"{"a": 0, "b": -1, "c": 1000000000000, "d": 1.5, "e": "64", "f": 8, "g": -2}"#,
            "config.json".into(),
        )
        .unwrap();
        for key in ["a", "b", "c", "d", "e"] {
            let err = c.size_or(key, 4).unwrap_err().to_string();
            assert!(err.contains(&format!("`{key}`")) && err.contains("config.json"), "{err}");
        }
        assert_eq!(c.size_or("f", 4).unwrap(), 8);
        assert_eq!(c.size_or("absent", 4).unwrap(), 4);
        assert_eq!(c.layers_or("a", 4).unwrap(), 0);
        assert!(c.layers_or("g", 4).is_err());
        assert!(c.check_multiple("f", 8, "x", 3).unwrap_err().to_string().contains("multiple"));
        assert!(c.check_multiple("f", 8, "x", 0).is_err());
    }
}
