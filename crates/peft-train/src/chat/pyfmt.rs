//! Python's text forms of template values, so output matches jinja2's byte for byte: `str()` of what
//! `{{ … }}` prints (`None`, `True`, `1e-05`, `['a', 1]`), `json.dumps` behind transformers' `tojson`
//! filter, and `datetime.now().strftime` behind `strftime_now`.

use minijinja::value::{Value, ValueKind};
use minijinja::{Error, ErrorKind};
use std::fmt::Write;

/// Python's `repr(float)` (also its `str`): the shortest digits that round-trip, fixed notation for
/// decimal exponents −4 … 15, else `d.ddde±XX`; `nan`, `inf`, `-inf`.
pub fn float_repr(f: f64) -> String {
    if f.is_nan() {
        return "nan".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "inf".into() } else { "-inf".into() };
    }
    // Rust's `{:e}` gives the same shortest round-trip digits Python's repr uses.
    let e = format!("{f:e}");
    // `{:e}` always writes `<mantissa>e<exponent>`; the fallbacks are never taken.
    let (mantissa, exp) = e.split_once('e').unwrap_or((&e, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let (sign, mantissa) = mantissa.strip_prefix('-').map_or(("", mantissa), |m| ("-", m));
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    if !(-4..16).contains(&exp) {
        let frac = &digits[1..];
        let dot = if frac.is_empty() { String::new() } else { format!(".{frac}") };
        let esign = if exp < 0 { '-' } else { '+' };
        return format!("{sign}{}{dot}e{esign}{:02}", &digits[..1], exp.abs());
    }
    let point = exp + 1; // digits before the decimal point
    let out = if point <= 0 {
        format!("0.{}{digits}", "0".repeat((-point) as usize))
    } else if point as usize >= digits.len() {
        format!("{digits}{}.0", "0".repeat(point as usize - digits.len()))
    } else {
        format!("{}.{}", &digits[..point as usize], &digits[point as usize..])
    };
    format!("{sign}{out}")
}

fn number_str(v: &Value) -> String {
    if v.is_integer() {
        v.to_string()
    } else {
        f64::try_from(v.clone()).map_or_else(|_| v.to_string(), float_repr)
    }
}

/// Python's `repr(str)`: single quotes unless the text has `'` and no `"`.
fn str_repr(s: &str, out: &mut String) {
    let quote = if s.contains('\'') && !s.contains('"') { '"' } else { '\'' };
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push(quote);
}

fn repr(v: &Value, out: &mut String) {
    match v.kind() {
        ValueKind::String => str_repr(v.as_str().unwrap_or_default(), out),
        ValueKind::Seq | ValueKind::Iterable => {
            out.push('[');
            for (i, item) in v.try_iter().into_iter().flatten().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                repr(&item, out);
            }
            out.push(']');
        }
        ValueKind::Map => {
            out.push('{');
            for (i, key) in v.try_iter().into_iter().flatten().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                repr(&key, out);
                out.push_str(": ");
                repr(&v.get_item(&key).unwrap_or_default(), out);
            }
            out.push('}');
        }
        _ => out.push_str(&py_str(v)),
    }
}

/// Python's `str(value)`, what jinja2 prints for `{{ value }}`; undefined prints nothing (jinja2's
/// default `Undefined`).
pub fn py_str(v: &Value) -> String {
    match v.kind() {
        ValueKind::Undefined => String::new(),
        ValueKind::None => "None".into(),
        ValueKind::Bool => if v.is_true() { "True" } else { "False" }.into(),
        ValueKind::Number => number_str(v),
        ValueKind::String => v.as_str().unwrap_or_default().to_string(),
        ValueKind::Seq | ValueKind::Map => {
            let mut s = String::new();
            repr(v, &mut s);
            s
        }
        _ => v.to_string(),
    }
}

/// How `json.dumps` lays out its output.
pub struct JsonStyle {
    /// Escape every character outside printable ASCII as `\uXXXX` (surrogate pairs above U+FFFF).
    pub ensure_ascii: bool,
    /// The indent unit; `None` writes everything on one line.
    pub indent: Option<String>,
    /// Between items and between a key and its value.
    pub separators: (String, String),
    /// Keys in sorted order rather than insertion order.
    pub sort_keys: bool,
}

impl JsonStyle {
    /// Python's defaults for an indent: `(', ', ': ')` on one line, `(',', ': ')` with an indent.
    pub fn new(ensure_ascii: bool, indent: Option<String>) -> Self {
        let item = if indent.is_some() { "," } else { ", " };
        Self { ensure_ascii, indent, separators: (item.into(), ": ".into()), sort_keys: false }
    }
}

fn json_str(s: &str, ascii: bool, out: &mut String) {
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
            c if (c as u32) < 0x20 || (ascii && !(' '..='~').contains(&c)) => {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    let _ = write!(out, "\\u{u:04x}");
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// A map key as `json.dumps` writes it: strings as they are, numbers, booleans and None converted.
fn json_key(k: &Value) -> Result<String, Error> {
    Ok(match k.kind() {
        ValueKind::String => k.as_str().unwrap_or_default().to_string(),
        ValueKind::None => "null".into(),
        ValueKind::Bool => if k.is_true() { "true" } else { "false" }.into(),
        ValueKind::Number => number_str(k),
        _ => {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                format!("keys must be str, int, float, bool or None, not {}", k.kind()),
            ))
        }
    })
}

fn json_float(f: f64) -> String {
    if f.is_nan() {
        "NaN".into()
    } else if f.is_infinite() {
        if f > 0.0 { "Infinity" } else { "-Infinity" }.into()
    } else {
        float_repr(f)
    }
}

fn newline(style: &JsonStyle, depth: usize, out: &mut String) {
    if let Some(unit) = &style.indent {
        out.push('\n');
        for _ in 0..depth {
            out.push_str(unit);
        }
    }
}

/// `json.dumps(value, …)` with Python's exact layout.
///
/// # Errors
/// An undefined value or another value JSON cannot hold, as Python's `TypeError`.
pub fn dumps(v: &Value, style: &JsonStyle, depth: usize, out: &mut String) -> Result<(), Error> {
    match v.kind() {
        ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        ValueKind::Number if v.is_integer() => out.push_str(&v.to_string()),
        ValueKind::Number => out.push_str(&json_float(f64::try_from(v.clone())?)),
        ValueKind::String => json_str(v.as_str().unwrap_or_default(), style.ensure_ascii, out),
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = v.try_iter()?.collect();
            if items.is_empty() {
                out.push_str("[]");
                return Ok(());
            }
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(&style.separators.0);
                }
                newline(style, depth + 1, out);
                dumps(item, style, depth + 1, out)?;
            }
            newline(style, depth, out);
            out.push(']');
        }
        ValueKind::Map => {
            let mut entries = Vec::new();
            for key in v.try_iter()? {
                let value = v.get_item(&key)?;
                entries.push((json_key(&key)?, value));
            }
            if entries.is_empty() {
                out.push_str("{}");
                return Ok(());
            }
            if style.sort_keys {
                entries.sort_by(|a, b| a.0.cmp(&b.0));
            }
            out.push('{');
            for (i, (key, value)) in entries.iter().enumerate() {
                if i > 0 {
                    out.push_str(&style.separators.0);
                }
                newline(style, depth + 1, out);
                json_str(key, style.ensure_ascii, out);
                out.push_str(&style.separators.1);
                dumps(value, style, depth + 1, out)?;
            }
            newline(style, depth, out);
            out.push('}');
        }
        kind => {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                format!("Object of type {kind} is not JSON serializable"),
            ))
        }
    }
    Ok(())
}

/// `time.strftime(format, tm)` through the C library, which is what Python's `datetime.strftime` calls
/// (after replacing `%f`, which C lacks, with the microseconds).
pub fn strftime(format: &str, tm: &libc::tm, micros: u32) -> Result<String, Error> {
    let bad = |m: &str| Error::new(ErrorKind::InvalidOperation, format!("strftime_now: {m}"));
    let mut fmt = String::with_capacity(format.len());
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            fmt.push(c);
            continue;
        }
        match chars.next() {
            Some('f') => {
                let _ = write!(fmt, "{micros:06}");
            }
            Some(d) => {
                fmt.push('%');
                fmt.push(d);
            }
            None => fmt.push('%'),
        }
    }
    if fmt.is_empty() {
        return Ok(String::new());
    }
    let cfmt = std::ffi::CString::new(fmt).map_err(|_| bad("embedded null character"))?;
    let mut cap = 256usize;
    loop {
        let mut buf = vec![0u8; cap];
        // SAFETY: `buf` has `cap` writable bytes, `cfmt` is NUL-terminated, `tm` is a valid struct.
        let n = unsafe { libc::strftime(buf.as_mut_ptr().cast(), cap, cfmt.as_ptr(), tm) };
        if n > 0 {
            buf.truncate(n);
            return String::from_utf8(buf).map_err(|_| bad("not UTF-8"));
        }
        if cap >= 1 << 16 {
            // C's strftime returns 0 both for "too small" and for an empty result.
            return Ok(String::new());
        }
        cap *= 4;
    }
}

/// The local time now, as Python's `datetime.now()`, with its microseconds.
pub fn local_now() -> (libc::tm, u32) {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = now.as_secs() as libc::time_t;
    // SAFETY: an all-zero `tm` is valid; localtime_r only writes it.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are valid for the call.
    unsafe { libc::localtime_r(&secs, &mut tm) };
    (tm, now.subsec_micros())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_print_as_python_repr() {
        let cases = [
            (1.0, "1.0"),
            (0.5, "0.5"),
            (-2.25, "-2.25"),
            (1e-5, "1e-05"),
            (0.0001, "0.0001"),
            (1e16, "1e+16"),
            (1e15, "1000000000000000.0"),
            (123456.789, "123456.789"),
            (1.5e-7, "1.5e-07"),
            (0.1 + 0.2, "0.30000000000000004"),
            (2.5e300, "2.5e+300"),
            (0.0, "0.0"),
        ];
        for (f, want) in cases {
            assert_eq!(float_repr(f), want, "{f}");
        }
    }

    #[test]
    fn values_print_as_python_str() {
        let v = Value::from_serialize(serde_json::json!({"a": [1, "it's", null, true, 2.5], "b": "x\ny"}));
        assert_eq!(py_str(&v), r#"{'a': [1, "it's", None, True, 2.5], 'b': 'x\ny'}"#);
        assert_eq!(py_str(&Value::UNDEFINED), "");
        assert_eq!(py_str(&Value::from(false)), "False");
    }

    #[test]
    fn json_matches_python_dumps() {
        let v: Value = serde_json::from_str(r#"{"b": [1, 2.0, {}], "a": "é\"<&>\u0001", "c": []}"#).unwrap();
        let mut out = String::new();
        dumps(&v, &JsonStyle::new(false, None), 0, &mut out).unwrap();
        assert_eq!(out, r#"{"b": [1, 2.0, {}], "a": "é\"<&>\u0001", "c": []}"#);
        let mut out = String::new();
        dumps(&v, &JsonStyle::new(true, Some("  ".into())), 0, &mut out).unwrap();
        assert_eq!(out, "{\n  \"b\": [\n    1,\n    2.0,\n    {}\n  ],\n  \"a\": \"\\u00e9\\\"<&>\\u0001\",\n  \"c\": []\n}");
        let mut out = String::new();
        dumps(&Value::from("😀"), &JsonStyle::new(true, None), 0, &mut out).unwrap();
        assert_eq!(out, r#""\ud83d\ude00""#);
    }

    #[test]
    fn strftime_formats_as_c_does() {
        // 2024-07-26 13:05:09 UTC.
        let secs: libc::time_t = 1_721_999_109;
        // SAFETY: as in `local_now`.
        let mut tm: libc::tm = unsafe { std::mem::zeroed() };
        unsafe { libc::gmtime_r(&secs, &mut tm) };
        assert_eq!(strftime("%d %b %Y", &tm, 0).unwrap(), "26 Jul 2024");
        assert_eq!(
            strftime("%Y-%m-%d %H:%M:%S.%f %A %%f", &tm, 42).unwrap(),
            "2024-07-26 13:05:09.000042 Friday %f"
        );
        assert_eq!(strftime("", &tm, 0).unwrap(), "");
    }
}
