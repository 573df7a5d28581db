//! Hugging Face chat templates, rendered byte for byte as transformers' `apply_chat_template`.
//!
//! transformers compiles a template (`chat_template_utils._compile_jinja_template`) in a jinja2 sandbox
//! with `trim_blocks=True, lstrip_blocks=True`, the `loopcontrols` extension (`{% break %}`), its own
//! `{% generation %}` tag, a `tojson` filter that is `json.dumps(ensure_ascii=False)` (jinja2's own escapes
//! HTML characters), and the globals `raise_exception`, `strftime_now`, `dict` and `namespace`. Templates
//! call Python methods on strings and dicts (`.strip()`, `.split()`, `.items()`) and print Python values
//! (`None`, `True`). [`ChatTemplate`] builds the same environment on minijinja: pycompat methods from
//! `minijinja-contrib`, a formatter that prints values as Python's `str()`, Python's `json.dumps` and C's
//! `strftime`.
//!
//! `{% generation %}…{% endgeneration %}` marks assistant text. transformers records the character span
//! each block renders to, and with `return_assistant_tokens_mask=True` marks every token whose offsets
//! overlap a span ([`assistant_mask`]). minijinja has no custom tags, so the tag is rewritten to a filter
//! block (`{% filter … %}`, a block tag with the same whitespace handling) whose filter brackets its body in
//! two Unicode noncharacters; the spans are where the brackets were, and the brackets are removed.
//! The spans are byte offsets into the rendered text, to pair with the tokenizer's byte offsets.
//!
//! Known differences from jinja2, none met in the tested templates: values joined with `~` or passed
//! through `|string` use minijinja's text (`true`, `none`) where Python's `str()` gives `True`, `None`
//! (printing with `{{ }}` is exact); jinja2's own error messages (an undefined attribute) are worded
//! differently (`raise_exception` messages are kept); a `{% generation %}` block inside a macro or a
//! `{% set %}` block gives the span where its text lands, where transformers records the output position
//! at the time the block ran.

mod pyfmt;

use minijinja::value::{Kwargs, ValueKind};
use minijinja::{Environment, ErrorKind, State};
use std::collections::BTreeMap;
use std::ops::Range;

/// Template values and errors: build [`ChatInputs`] from JSON with `serde_json::from_str::<Value>`, which
/// keeps the keys' order (Python dicts do; `serde_json::Value`'s maps sort them).
pub use minijinja::{Error, Value};
pub use pyfmt::{float_repr, py_str};

/// The filter that `{% generation %}` becomes.
const GENERATION_FILTER: &str = "peft_rs_generation";
/// The context variable that turns span tracking on (transformers' `activate_tracker`).
const TRACK_VAR: &str = "peft_rs_track_generation";
/// Brackets around a generation block's text while tracking: noncharacters, reserved for internal use.
const OPEN: char = '\u{FDD0}';
const CLOSE: char = '\u{FDD1}';

/// What a chat template sees besides its source: transformers' `apply_chat_template` arguments.
#[derive(Clone, Debug, Default)]
pub struct ChatInputs {
    /// The conversation: a list of message maps (`role`, `content`, `tool_calls`, …).
    pub messages: Value,
    /// Tool schemas (`tools`); none when absent, as transformers passes `tools=None`.
    pub tools: Option<Value>,
    /// Documents for retrieval templates (`documents`).
    pub documents: Option<Value>,
    /// Append the header that opens an assistant turn.
    pub add_generation_prompt: bool,
    /// More template variables: the tokenizer's special tokens (`bos_token`, `eos_token`, …, as
    /// transformers' `special_tokens_map`) and any extra keyword arguments (`date_string`,
    /// `enable_thinking`). Extra arguments given after the special tokens override them, as in transformers.
    pub variables: BTreeMap<String, Value>,
}

/// A compiled chat template.
pub struct ChatTemplate {
    env: Environment<'static>,
    has_generation: bool,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate").field("has_generation", &self.has_generation).finish_non_exhaustive()
    }
}

/// Rewrites `{% generation %}` / `{% endgeneration %}` (with any `-` / `+` whitespace controls) into
/// `{% filter … %}` / `{% endfilter %}`; returns the new source and whether any tag was found.
fn rewrite_generation_tags(source: &str) -> (String, bool) {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    let mut found = false;
    while let Some(at) = rest.find("{%") {
        out.push_str(&rest[..at]);
        let tag = &rest[at..];
        let Some(end) = tag.find("%}") else { break };
        let inner = &tag[2..end];
        let (lead, body) = match inner.chars().next() {
            Some(c @ ('-' | '+')) => (c.to_string(), &inner[1..]),
            _ => (String::new(), inner),
        };
        let (body, trail) = match body.chars().last() {
            Some(c @ ('-' | '+')) => (&body[..body.len() - 1], c.to_string()),
            _ => (body, String::new()),
        };
        let replacement = match body.trim() {
            "generation" => Some(format!("{{%{lead} filter {GENERATION_FILTER} {trail}%}}")),
            "endgeneration" => Some(format!("{{%{lead} endfilter {trail}%}}")),
            _ => None,
        };
        match replacement {
            Some(r) => {
                found = true;
                out.push_str(&r);
            }
            None => out.push_str(&tag[..end + 2]),
        }
        rest = &tag[end + 2..];
    }
    out.push_str(rest);
    (out, found)
}

fn raise_exception(message: String) -> Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, message))
}

/// transformers' `tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False)`.
fn tojson(
    value: Value,
    ensure_ascii: Option<Value>,
    indent: Option<Value>,
    kwargs: Kwargs,
) -> Result<Value, Error> {
    let ensure_ascii = match kwargs.get::<Option<Value>>("ensure_ascii")?.or(ensure_ascii) {
        Some(v) => v.is_true(),
        None => false,
    };
    let indent = match kwargs.get::<Option<Value>>("indent")?.or(indent) {
        None => None,
        Some(v) if v.is_none() => None,
        Some(v) if v.kind() == ValueKind::String => Some(v.as_str().unwrap_or_default().to_string()),
        Some(v) => Some(
            " ".repeat(
                v.as_i64()
                    .ok_or_else(|| {
                        Error::new(
                            ErrorKind::InvalidOperation,
                            "tojson: indent must be an integer or a string",
                        )
                    })?
                    .max(0) as usize,
            ),
        ),
    };
    let mut style = pyfmt::JsonStyle::new(ensure_ascii, indent);
    if let Some(sep) = kwargs.get::<Option<Value>>("separators")? {
        if !sep.is_none() {
            let parts: Vec<Value> = sep.try_iter()?.collect();
            match parts.as_slice() {
                [a, b] if a.as_str().is_some() && b.as_str().is_some() => {
                    style.separators = (a.to_string(), b.to_string());
                }
                _ => {
                    return Err(Error::new(
                        ErrorKind::InvalidOperation,
                        "tojson: separators must be two strings",
                    ))
                }
            }
        }
    }
    style.sort_keys = kwargs.get::<Option<bool>>("sort_keys")?.unwrap_or(false);
    kwargs.assert_all_used()?;
    let mut out = String::new();
    pyfmt::dumps(&value, &style, 0, &mut out)?;
    Ok(Value::from(out))
}

fn strftime_now(format: String) -> Result<Value, Error> {
    let (tm, micros) = pyfmt::local_now();
    pyfmt::strftime(&format, &tm, micros).map(Value::from)
}

fn generation(state: &State<'_, '_>, body: String) -> String {
    if state.lookup(TRACK_VAR).is_some_and(|v| v.is_true()) {
        format!("{OPEN}{body}{CLOSE}")
    } else {
        body
    }
}

/// Whether any string in `v` holds a span bracket (a caller's text could then forge a span).
fn holds_brackets(v: &Value) -> bool {
    match v.kind() {
        ValueKind::String => v.as_str().is_some_and(|s| s.contains([OPEN, CLOSE])),
        ValueKind::Seq | ValueKind::Iterable => {
            v.try_iter().into_iter().flatten().any(|x| holds_brackets(&x))
        }
        ValueKind::Map => v
            .try_iter()
            .into_iter()
            .flatten()
            .any(|k| holds_brackets(&k) || v.get_item(&k).is_ok_and(|x| holds_brackets(&x))),
        _ => false,
    }
}

/// transformers' message clean-up before rendering: keys whose value is None are dropped
/// (`_normalize_chat_messages`), and reasoning given as `reasoning_content`, `thinking` or `reasoning` is
/// copied to `thinking` (first) and `reasoning_content` (`_alias_reasoning_fields`).
fn normalize_messages(messages: &Value) -> Result<Value, Error> {
    let mut out = Vec::new();
    for m in messages.try_iter()? {
        if m.kind() != ValueKind::Map {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                format!("chat messages must be maps, got {m}"),
            ));
        }
        let mut entries: Vec<(Value, Value)> = Vec::new();
        for k in m.try_iter()? {
            let v = m.get_item(&k)?;
            if !v.is_none() && !v.is_undefined() {
                entries.push((k, v));
            }
        }
        let get = |name: &str| entries.iter().find(|(k, _)| k.as_str() == Some(name)).map(|(_, v)| v.clone());
        let reasoning = ["reasoning_content", "thinking", "reasoning"].iter().find_map(|n| get(n));
        if let Some(r) = reasoning {
            let mut aliased = vec![(Value::from("thinking"), r.clone())];
            aliased.extend(entries.into_iter().filter(|(k, _)| k.as_str() != Some("thinking")));
            match aliased.iter_mut().find(|(k, _)| k.as_str() == Some("reasoning_content")) {
                Some(slot) => slot.1 = r,
                None => aliased.push((Value::from("reasoning_content"), r)),
            }
            entries = aliased;
        }
        out.push(Value::from_iter(entries));
    }
    Ok(Value::from(out))
}

impl ChatTemplate {
    /// Compiles a template.
    ///
    /// # Errors
    /// A syntax error, with minijinja's message.
    pub fn new(source: &str) -> Result<Self, Error> {
        let (source, has_generation) = rewrite_generation_tags(source);
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        // jinja2's default: one trailing newline of the template is dropped.
        env.set_keep_trailing_newline(false);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.set_formatter(|out, _state, value| {
            out.write_str(&py_str(value)).map_err(|_| Error::new(ErrorKind::WriteFailure, "write failed"))
        });
        env.add_filter("tojson", tojson);
        env.add_filter(GENERATION_FILTER, generation);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_template_owned("chat", source)?;
        Ok(Self { env, has_generation })
    }

    /// Whether the template marks assistant text with `{% generation %}`.
    pub fn has_generation(&self) -> bool {
        self.has_generation
    }

    fn render_raw(&self, inputs: &ChatInputs, track: bool) -> Result<String, Error> {
        let mut ctx: BTreeMap<String, Value> = inputs.variables.clone();
        ctx.insert("messages".into(), normalize_messages(&inputs.messages)?);
        ctx.insert("tools".into(), inputs.tools.clone().unwrap_or(Value::from(())));
        ctx.insert("documents".into(), inputs.documents.clone().unwrap_or(Value::from(())));
        ctx.insert("add_generation_prompt".into(), Value::from(inputs.add_generation_prompt));
        if track {
            ctx.insert(TRACK_VAR.into(), Value::from(true));
        }
        self.env.get_template("chat")?.render(ctx)
    }

    /// Renders a conversation, as `apply_chat_template(…, tokenize=False)`.
    ///
    /// # Errors
    /// A template error, `raise_exception`'s message among them.
    pub fn render(&self, inputs: &ChatInputs) -> Result<String, Error> {
        self.render_raw(inputs, false)
    }

    /// Renders a conversation and returns the byte spans the `{% generation %}` blocks rendered to, in
    /// the order the blocks closed (an inner block before the one around it), as transformers records them.
    ///
    /// # Errors
    /// A template error, or inputs that hold the two noncharacters the spans are tracked with.
    pub fn render_with_generation_spans(
        &self,
        inputs: &ChatInputs,
    ) -> Result<(String, Vec<Range<usize>>), Error> {
        let all = [
            &inputs.messages,
            inputs.tools.as_ref().unwrap_or(&Value::UNDEFINED),
            inputs.documents.as_ref().unwrap_or(&Value::UNDEFINED),
        ];
        if all.into_iter().chain(inputs.variables.values()).any(holds_brackets) {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                "the chat holds U+FDD0 or U+FDD1, which assistant masks are tracked with",
            ));
        }
        let marked = self.render_raw(inputs, true)?;
        let mut text = String::with_capacity(marked.len());
        let mut open = Vec::new();
        let mut spans = Vec::new();
        for c in marked.chars() {
            match c {
                OPEN => open.push(text.len()),
                CLOSE => {
                    let start = open.pop().ok_or_else(|| {
                        Error::new(
                            ErrorKind::InvalidOperation,
                            "a {% generation %} block's text was cut apart",
                        )
                    })?;
                    spans.push(start..text.len());
                }
                c => text.push(c),
            }
        }
        if !open.is_empty() {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                "a {% generation %} block's text was cut apart",
            ));
        }
        Ok((text, spans))
    }
}

/// transformers' assistant mask: 1 for every token whose offsets overlap a generation span, so a span cut
/// by truncation keeps its remaining tokens. `offsets` and `spans` are in the same units (bytes here) and
/// both in order.
pub fn assistant_mask(offsets: &[(usize, usize)], spans: &[Range<usize>]) -> Vec<bool> {
    let mut mask = vec![false; offsets.len()];
    let mut span = 0;
    for (i, &(start, end)) in offsets.iter().enumerate() {
        while span < spans.len() && start >= spans[span].end {
            span += 1;
        }
        if span == spans.len() {
            break;
        }
        if end > spans[span].start {
            mask[i] = true;
        }
    }
    mask
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(messages: serde_json::Value) -> ChatInputs {
        ChatInputs { messages: Value::from_serialize(messages), ..ChatInputs::default() }
    }

    #[test]
    fn blocks_trim_and_strip_like_transformers() {
        let t = ChatTemplate::new("{% for m in messages %}\n    {{ m.content }}\n{% endfor %}\n").unwrap();
        let out = t
            .render(&chat(
                serde_json::json!([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]),
            ))
            .unwrap();
        assert_eq!(out, "    a\n    b\n");
    }

    #[test]
    fn python_methods_loop_controls_and_values() {
        let src = "{% for m in messages %}{% if loop.index0 == 1 %}{% break %}{% endif %}{{ m.content.strip().upper() }}|{{ m.content.split(',') }}|{{ m.get('x') }}|{{ m.content.startswith(' a') }}{% endfor %}";
        let t = ChatTemplate::new(src).unwrap();
        let out = t
            .render(&chat(
                serde_json::json!([{"role": "u", "content": " a,b "}, {"role": "u", "content": "z"}]),
            ))
            .unwrap();
        assert_eq!(out, "A,B|[' a', 'b ']|None|True");
    }

    #[test]
    fn raise_exception_fails_the_render_with_its_message() {
        let t = ChatTemplate::new("{{ raise_exception('roles must alternate') }}").unwrap();
        let err = t.render(&chat(serde_json::json!([]))).unwrap_err();
        assert!(err.to_string().contains("roles must alternate"), "{err}");
    }

    #[test]
    fn generation_tags_become_spans() {
        let src = "{% for m in messages %}{% if m.role == 'assistant' %}{%- generation -%}\n<a>{{ m.content }}</a>{% endgeneration %}{% else %}<u>{{ m.content }}</u>{% endif %}{% endfor %}";
        let t = ChatTemplate::new(src).unwrap();
        assert!(t.has_generation());
        let inputs = chat(
            serde_json::json!([{"role": "user", "content": "hé"}, {"role": "assistant", "content": "yo"}]),
        );
        let (text, spans) = t.render_with_generation_spans(&inputs).unwrap();
        assert_eq!(text, t.render(&inputs).unwrap());
        assert_eq!(text, "<u>hé</u><a>yo</a>");
        assert_eq!(spans, vec![10..19]);
        assert_eq!(&text[spans[0].clone()], "<a>yo</a>");
        let bad = chat(serde_json::json!([{"role": "assistant", "content": "\u{FDD1}"}]));
        assert!(t.render_with_generation_spans(&bad).is_err());
    }

    #[test]
    fn masks_cover_tokens_overlapping_spans() {
        let offsets = [(0, 3), (3, 5), (5, 9), (9, 12), (12, 14)];
        assert_eq!(
            assistant_mask(&offsets, &[Range { start: 4, end: 10 }]),
            [false, true, true, true, false]
        );
        assert_eq!(assistant_mask(&offsets, &[]), [false; 5]);
        assert_eq!(assistant_mask(&offsets, &[0..3, 12..14]), [true, false, false, false, true]);
    }

    #[test]
    fn none_keys_are_dropped_and_reasoning_aliased() {
        let t = ChatTemplate::new("{% for m in messages %}{{ m }}{% endfor %}").unwrap();
        let out = t
            .render(&ChatInputs {
                messages: serde_json::from_str(
                    r#"[{"role": "assistant", "content": "x", "tool_calls": null, "reasoning": "r"}]"#,
                )
                .unwrap(),
                ..ChatInputs::default()
            })
            .unwrap();
        assert_eq!(out, "{'thinking': 'r', 'role': 'assistant', 'content': 'x', 'reasoning': 'r', 'reasoning_content': 'r'}");
    }

    #[test]
    fn tojson_is_pythons_json_dumps() {
        let t = ChatTemplate::new("{{ tools[0] | tojson }}|{{ tools[0] | tojson(indent=2) }}|{{ tools[0] | tojson(separators=(',', ':'), sort_keys=true) }}").unwrap();
        let inputs = ChatInputs {
            tools: Some(serde_json::from_str(r#"[{"z": "<b>é</b>", "a": 1.5}]"#).unwrap()),
            ..chat(serde_json::json!([]))
        };
        assert_eq!(
            t.render(&inputs).unwrap(),
            "{\"z\": \"<b>é</b>\", \"a\": 1.5}|{\n  \"z\": \"<b>é</b>\",\n  \"a\": 1.5\n}|{\"a\":1.5,\"z\":\"<b>é</b>\"}"
        );
    }
}
