//! Reading transformers' `config.json`.
//!
//! Configs are read through typed getters with transformers' defaults, so a missing key takes the value
//! transformers would use and a wrongly typed value is an error naming the key and the file.

use crate::error::{ModelError, Result};
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};

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
        let text = std::fs::read_to_string(&path)
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
}
