//! Reading `adapter_config.json` the way PEFT does, and writing it byte-for-byte the way PEFT does.
//!
//! PEFT writes `json.dumps(config, indent=2, sort_keys=True)`: keys sorted at every level, two-space
//! indentation, ASCII-only output (`\uXXXX` escapes), Python's float repr (`1e-05`, `0.0`) and no trailing
//! newline. [`to_peft_json`] reproduces that, so a config saved by peft-rs is the file PEFT would write.

use crate::error::ConfigError;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{Map, Value};
use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::Path;

/// Reads a JSON object from `path`. A `runtime_config` key is removed with a warning, as PEFT does.
///
/// # Errors
/// [`ConfigError::Io`] when the file cannot be read, [`ConfigError::Json`] when it is not a JSON object.
pub fn read_json_object(path: &Path, warnings: &mut Vec<String>) -> Result<Map<String, Value>, ConfigError> {
    let text = crate::files::read_text_bounded(path, crate::files::MAX_JSON_BYTES)
        .map_err(|source| ConfigError::Io { path: path.to_path_buf(), source })?;
    parse_json_object(&text, &path.display().to_string(), warnings)
}

/// Parses a JSON object from text; `location` names its origin in errors and warnings.
///
/// # Errors
/// [`ConfigError::Json`] when the text is not a JSON object.
pub fn parse_json_object(
    text: &str,
    location: &str,
    warnings: &mut Vec<String>,
) -> Result<Map<String, Value>, ConfigError> {
    let value: Value = serde_json::from_str(text)
        .map_err(|e| ConfigError::Json { location: location.to_string(), message: e.to_string() })?;
    let Value::Object(mut map) = value else {
        return Err(ConfigError::Json {
            location: location.to_string(),
            message: format!("expected a JSON object, found {}", json_kind(&value)),
        });
    };
    if map.remove("runtime_config").is_some() {
        warnings.push(format!(
            "{location}: the configuration contains a `runtime_config` key; it is ignored (runtime \
             configurations are only valid at runtime)"
        ));
    }
    Ok(map)
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The keys a config type knows: those its default value serializes.
pub fn known_keys<T: Serialize + Default>() -> BTreeSet<String> {
    match serde_json::to_value(T::default()) {
        Ok(Value::Object(m)) => m.keys().cloned().collect(),
        _ => BTreeSet::new(),
    }
}

/// Deserializes a method config from a JSON object the way PEFT's `from_peft_type` does: keys the type
/// does not know are dropped with a warning (forward compatibility), missing keys take their defaults,
/// and a wrongly typed value is an error naming the key.
///
/// # Errors
/// [`ConfigError::InvalidField`] naming the offending key.
pub fn from_json_object<T>(
    mut map: Map<String, Value>,
    location: &str,
    warnings: &mut Vec<String>,
) -> Result<T, ConfigError>
where
    T: DeserializeOwned + Serialize + Default,
{
    let known = known_keys::<T>();
    let unknown: Vec<String> = map.keys().filter(|k| !known.contains(*k)).cloned().collect();
    if !unknown.is_empty() {
        for k in &unknown {
            map.remove(k);
        }
        warnings.push(format!(
            "{location}: unexpected keys {unknown:?} are ignored; the config was probably written by a newer \
             PEFT version"
        ));
    }
    let value = Value::Object(map.clone());
    serde_path_to_error::deserialize::<_, T>(value).map_err(|e| {
        let mut field = e.path().to_string();
        if field.is_empty() || field == "." {
            // Fields inside `#[serde(flatten)]` lose their path; find the key by trying each alone.
            field = map
                .iter()
                .find(|(k, v)| {
                    let one = Value::Object(Map::from_iter([((*k).clone(), (*v).clone())]));
                    serde_json::from_value::<T>(one).is_err()
                })
                .map(|(k, _)| k.clone())
                .unwrap_or(field);
        }
        ConfigError::InvalidField {
            location: location.to_string(),
            field,
            message: e.into_inner().to_string(),
        }
    })
}

/// Serializes `value` exactly like Python's `json.dumps(value, indent=2, sort_keys=True)`.
pub fn to_peft_json(value: &Value) -> String {
    let mut out = String::new();
    write_value(&mut out, value, 0);
    out
}

fn write_value(out: &mut String, value: &Value, depth: usize) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                let _ = write!(out, "{i}");
            } else if let Some(u) = n.as_u64() {
                let _ = write!(out, "{u}");
            } else {
                out.push_str(&python_float_repr(n.as_f64().unwrap_or(f64::NAN)));
            }
        }
        Value::String(s) => write_string(out, s),
        Value::Array(items) => {
            if items.is_empty() {
                out.push_str("[]");
                return;
            }
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                newline(out, depth + 1);
                write_value(out, item, depth + 1);
            }
            newline(out, depth);
            out.push(']');
        }
        Value::Object(map) => {
            if map.is_empty() {
                out.push_str("{}");
                return;
            }
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                newline(out, depth + 1);
                write_string(out, k);
                out.push_str(": ");
                write_value(out, &map[k.as_str()], depth + 1);
            }
            newline(out, depth);
            out.push('}');
        }
    }
}

fn newline(out: &mut String, depth: usize) {
    out.push('\n');
    for _ in 0..depth {
        out.push_str("  ");
    }
}

fn write_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || (c as u32) > 0x7e => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Python's `repr(float)`: the shortest round-tripping digits, positional for exponents in [-4, 16),
/// scientific otherwise with at least two exponent digits (`1e-05`, `1e+16`).
pub fn python_float_repr(x: f64) -> String {
    if x.is_nan() {
        return "NaN".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "Infinity".into() } else { "-Infinity".into() };
    }
    if x == 0.0 {
        return if x.is_sign_negative() { "-0.0".into() } else { "0.0".into() };
    }
    // `{:e}` gives the shortest round-trip digits: "1.2345e-5".
    let sci = format!("{x:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let negative = mantissa.starts_with('-');
    let digits: String = mantissa.chars().filter(|c| c.is_ascii_digit()).collect();
    let sign = if negative { "-" } else { "" };
    if (-4..16).contains(&exp) {
        let n = digits.len() as i32;
        let point = exp + 1; // digits before the decimal point
        let body = if point <= 0 {
            format!("0.{}{}", "0".repeat((-point) as usize), digits)
        } else if point >= n {
            format!("{}{}.0", digits, "0".repeat((point - n) as usize))
        } else {
            format!("{}.{}", &digits[..point as usize], &digits[point as usize..])
        };
        format!("{sign}{body}")
    } else {
        let m = if digits.len() > 1 { format!("{}.{}", &digits[..1], &digits[1..]) } else { digits };
        let esign = if exp < 0 { '-' } else { '+' };
        format!("{sign}{m}e{esign}{:02}", exp.abs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn floats_print_like_python_repr() {
        let cases = [
            (0.0, "0.0"),
            (0.1, "0.1"),
            (1e-5, "1e-05"),
            (0.0001, "0.0001"),
            (16.0, "16.0"),
            (1.5e16, "1.5e+16"),
            (123456789.125, "123456789.125"),
            (-2.5e-7, "-2.5e-07"),
            (1e22, "1e+22"),
        ];
        for (x, want) in cases {
            assert_eq!(python_float_repr(x), want, "{x}");
        }
    }

    #[test]
    fn writer_matches_python_json_dumps_layout() {
        let v = json!({"b": [1, "x"], "a": {}, "c": [], "d": {"z": 0.5, "y": null}, "é": "ü"});
        let want = "{\n  \"a\": {},\n  \"b\": [\n    1,\n    \"x\"\n  ],\n  \"c\": [],\n  \"d\": {\n    \"y\": null,\n    \"z\": 0.5\n  },\n  \"\\u00e9\": \"\\u00fc\"\n}";
        assert_eq!(to_peft_json(&v), want);
    }

    #[test]
    fn runtime_config_is_dropped_with_a_warning() {
        let mut w = vec![];
        let m =
            parse_json_object(r#"{"peft_type": "LORA", "runtime_config": {}}"#, "x.json", &mut w).unwrap();
        assert!(!m.contains_key("runtime_config"));
        assert_eq!(w.len(), 1);
        assert!(w[0].contains("runtime_config"));
    }

    #[test]
    fn non_object_json_is_an_error_naming_the_location() {
        let err = parse_json_object("[1, 2]", "cfg.json", &mut vec![]).unwrap_err();
        assert!(err.to_string().contains("cfg.json"), "{err}");
        let err = parse_json_object("{\"peft_type\": ", "cfg.json", &mut vec![]).unwrap_err();
        assert!(matches!(err, ConfigError::Json { .. }), "{err}");
    }
}
