//! JSONL datasets, tokenized with `tokenizer.json`, and their batches.
//!
//! One JSON object per line, in one of four formats:
//! * [`Format::Text`] `{"text": …}` — causal LM on every token;
//! * [`Format::PromptCompletion`] `{"prompt": …, "completion": …}` — causal LM, loss on the completion only;
//! * [`Format::Chat`] `{"messages": [{"role": …, "content": …}, …], "tools": […]?}` — rendered with the
//!   tokenizer's chat template exactly as transformers' `apply_chat_template` ([`crate::chat`]); loss on
//!   every token, or with [`DataOptions::assistant_only_loss`] on the assistant tokens only (the template's
//!   `{% generation %}` blocks, as TRL's `assistant_only_loss`);
//! * [`Format::Classification`] `{"text": …, "label": <string or integer>}`.
//!
//! A bad record is an error naming the file and line.

use crate::chat::{ChatInputs, ChatTemplate};
use crate::error::{Result, TrainError};
use peft_core::peft_config::files;
use peft_models::tokenizer::Tokenizer;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// The largest JSONL dataset read (it is read whole): 8 GiB.
pub const MAX_DATASET_BYTES: u64 = 8 << 30;

/// The record format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// `{"text"}` for language modelling.
    Text,
    /// `{"prompt", "completion"}`.
    PromptCompletion,
    /// `{"messages"}` with a chat template.
    Chat,
    /// `{"text", "label"}`.
    Classification,
}

impl Format {
    /// Parses `text`, `prompt-completion`, `chat` or `classification`.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "text" => Format::Text,
            "prompt-completion" | "prompt_completion" => Format::PromptCompletion,
            "chat" => Format::Chat,
            "classification" => Format::Classification,
            _ => return None,
        })
    }
}

/// The target of one example.
#[derive(Clone, Debug, PartialEq)]
pub enum Target {
    /// Per-token labels (−100 = no loss).
    Tokens(Vec<i64>),
    /// A class index.
    Class(i64),
}

/// One tokenized example.
#[derive(Clone, Debug, PartialEq)]
pub struct Example {
    /// Token ids.
    pub input_ids: Vec<i64>,
    /// What to predict.
    pub target: Target,
}

/// A tokenized dataset.
#[derive(Clone, Debug)]
pub struct Dataset {
    /// The examples, in file order.
    pub examples: Vec<Example>,
    /// Class names by index (classification).
    pub label_names: Vec<String>,
    /// The file.
    pub path: PathBuf,
}

/// How to tokenize.
#[derive(Clone, Debug, Default)]
pub struct DataOptions {
    /// Truncate to this many tokens.
    pub max_length: Option<usize>,
    /// Class names (index = label id); by default the sorted distinct labels of the file.
    pub label_names: Option<Vec<String>>,
    /// Appended to completions (prompt-completion format), usually the eos token.
    pub eos_token_id: Option<i64>,
    /// The chat template (Jinja) for the chat format.
    pub chat_template: Option<String>,
    /// The special tokens the template sees (`bos_token`, `eos_token`, …: transformers'
    /// `special_tokens_map`).
    pub special_tokens: BTreeMap<String, String>,
    /// Chat format: loss only on the tokens of the template's `{% generation %}` blocks (the assistant
    /// turns), from transformers' assistant mask; an error for a template without such blocks.
    pub assistant_only_loss: bool,
}

/// The special tokens transformers hands every chat template (`SPECIAL_TOKENS_ATTRIBUTES`).
const SPECIAL_TOKEN_NAMES: [&str; 7] =
    ["bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token"];

impl DataOptions {
    /// Reads the chat template and the special tokens of the tokenizer in `dir`, as transformers loads
    /// them: `chat_template.jinja` if present, else `tokenizer_config.json`'s `chat_template` (a string,
    /// or a list of named templates, of which `default`), and the special tokens from
    /// `tokenizer_config.json`.
    pub fn with_tokenizer_config(mut self, dir: &Path) -> Self {
        if let Ok(t) = files::read_text_bounded(&dir.join("chat_template.jinja"), files::MAX_JSON_BYTES) {
            self.chat_template = Some(t);
        }
        let path = dir.join("tokenizer_config.json");
        let Ok(text) = files::read_text_bounded(&path, files::MAX_JSON_BYTES) else { return self };
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else { return self };
        let named_default = |list: &Vec<serde_json::Value>| {
            list.iter()
                .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
                .and_then(|t| t.get("template")?.as_str().map(str::to_string))
        };
        if self.chat_template.is_none() {
            self.chat_template = match v.get("chat_template") {
                Some(serde_json::Value::String(t)) => Some(t.clone()),
                Some(serde_json::Value::Array(list)) => named_default(list),
                _ => None,
            };
        }
        let tok = |k: &str| match v.get(k) {
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            Some(serde_json::Value::Object(o)) => {
                o.get("content").and_then(|c| c.as_str()).map(str::to_string)
            }
            _ => None,
        };
        self.special_tokens =
            SPECIAL_TOKEN_NAMES.iter().filter_map(|k| Some((k.to_string(), tok(k)?))).collect();
        self
    }
}

fn data_err(path: &Path, line: usize, message: impl Into<String>) -> TrainError {
    TrainError::Data { path: path.to_path_buf(), line, message: message.into() }
}

fn field<'a>(v: &'a serde_json::Value, key: &str, path: &Path, line: usize) -> Result<&'a str> {
    match v.get(key) {
        Some(serde_json::Value::String(s)) => Ok(s),
        Some(other) => Err(data_err(path, line, format!("`{key}` must be a string, found {other}"))),
        None => Err(data_err(path, line, format!("missing `{key}`"))),
    }
}

/// Renders a conversation with a Hugging Face chat template, as `apply_chat_template(messages,
/// tokenize=False)` with `bos_token` and `eos_token`; see [`crate::chat`] for tools, the generation prompt
/// and assistant spans.
///
/// # Errors
/// A template that does not compile or render (its message is kept).
pub fn render_chat(
    template: &str,
    messages: &serde_json::Value,
    bos: &str,
    eos: &str,
) -> std::result::Result<String, String> {
    let template = ChatTemplate::new(template).map_err(|e| e.to_string())?;
    let inputs = ChatInputs {
        messages: minijinja::Value::from_serialize(messages),
        variables: [("bos_token", bos), ("eos_token", eos)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), minijinja::Value::from(v)))
            .collect(),
        ..ChatInputs::default()
    };
    template.render(&inputs).map_err(|e| e.to_string())
}

/// One chat record tokenized: ids, and labels with the loss on every token or on assistant tokens only.
fn chat_example(
    template: &ChatTemplate,
    line_text: &str,
    tokenizer: &Tokenizer,
    options: &DataOptions,
) -> std::result::Result<Example, String> {
    // Parsed again into template values: those keep the keys' order (serde_json's maps sort them), and
    // a tool schema renders through `tojson` in its own order.
    let record: minijinja::Value = serde_json::from_str(line_text).map_err(|e| e.to_string())?;
    let get = |k: &str| record.get_attr(k).ok().filter(|v| !v.is_undefined() && !v.is_none());
    let inputs = ChatInputs {
        messages: get("messages").unwrap_or_default(),
        tools: get("tools"),
        documents: get("documents"),
        variables: options
            .special_tokens
            .iter()
            .map(|(k, v)| (k.clone(), minijinja::Value::from(v.as_str())))
            .collect(),
        ..ChatInputs::default()
    };
    let chat_err = |e: minijinja::Error| format!("chat template: {e}");
    if !options.assistant_only_loss {
        let text = template.render(&inputs).map_err(chat_err)?;
        let ids = tokenizer.encode(&text, false).map_err(|e| e.to_string())?;
        return Ok(Example { target: Target::Tokens(ids.clone()), input_ids: ids });
    }
    if !template.has_generation() {
        return Err("assistant_only_loss needs a chat template that marks assistant turns with \
                    {% generation %} … {% endgeneration %}; this one has none"
            .into());
    }
    let (text, spans) = template.render_with_generation_spans(&inputs).map_err(chat_err)?;
    let (ids, offsets) = tokenizer.encode_with_offsets(&text, false).map_err(|e| e.to_string())?;
    let mask = crate::chat::assistant_mask(&offsets, &spans);
    let labels = ids.iter().zip(mask).map(|(&id, m)| if m { id } else { crate::IGNORE_INDEX }).collect();
    Ok(Example { input_ids: ids, target: Target::Tokens(labels) })
}

/// Reads and tokenizes a JSONL file.
///
/// # Errors
/// [`TrainError::Data`] naming the line of a malformed record, or an I/O error.
pub fn load_jsonl(
    path: &Path,
    format: Format,
    tokenizer: &Tokenizer,
    options: &DataOptions,
) -> Result<Dataset> {
    if options.max_length == Some(0) {
        return Err(TrainError::Config(
            "max_length = 0: every example would be empty; use at least 1".into(),
        ));
    }
    let text = files::read_text_bounded(path, MAX_DATASET_BYTES)
        .map_err(|source| TrainError::Io { path: path.to_path_buf(), source })?;
    let mut records = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value =
            serde_json::from_str(line).map_err(|e| data_err(path, i + 1, format!("not JSON: {e}")))?;
        if !v.is_object() {
            return Err(data_err(path, i + 1, "expected a JSON object"));
        }
        records.push((i + 1, v, line));
    }
    if records.is_empty() {
        return Err(data_err(path, 0, "no records"));
    }
    let label_names = match (format, &options.label_names) {
        (Format::Classification, Some(names)) => names.clone(),
        (Format::Classification, None) => {
            let mut names = std::collections::BTreeSet::new();
            for (line, v, _) in &records {
                match v.get("label") {
                    Some(serde_json::Value::String(s)) => {
                        names.insert(s.clone());
                    }
                    Some(serde_json::Value::Number(n)) => {
                        names.insert(n.to_string());
                    }
                    _ => return Err(data_err(path, *line, "`label` must be a string or an integer")),
                }
            }
            let names: Vec<String> = names.into_iter().collect();
            // Integer labels keep their numeric order.
            if names.iter().all(|n| n.parse::<i64>().is_ok()) {
                let mut ints: Vec<i64> = names.iter().filter_map(|n| n.parse().ok()).collect();
                ints.sort_unstable();
                ints.into_iter().map(|i| i.to_string()).collect()
            } else {
                names
            }
        }
        _ => Vec::new(),
    };
    let chat_template = match (format, options.chat_template.as_deref()) {
        (Format::Chat, Some(t)) => {
            Some(ChatTemplate::new(t).map_err(|e| data_err(path, 0, format!("chat template: {e}")))?)
        }
        _ => None,
    };
    let mut examples = Vec::with_capacity(records.len());
    for (line, v, line_text) in records {
        let enc = |s: &str, special: bool| {
            tokenizer.encode(s, special).map_err(|e| data_err(path, line, e.to_string()))
        };
        let mut ex = match format {
            Format::Text => {
                let ids = enc(field(&v, "text", path, line)?, true)?;
                Example { target: Target::Tokens(ids.clone()), input_ids: ids }
            }
            Format::PromptCompletion => {
                let p = enc(field(&v, "prompt", path, line)?, true)?;
                let mut c = enc(field(&v, "completion", path, line)?, false)?;
                if let Some(eos) = options.eos_token_id {
                    c.push(eos);
                }
                let mut labels = vec![crate::IGNORE_INDEX; p.len()];
                labels.extend(&c);
                let mut ids = p;
                ids.extend(c);
                Example { input_ids: ids, target: Target::Tokens(labels) }
            }
            Format::Chat => {
                let messages = v
                    .get("messages")
                    .and_then(|m| m.as_array())
                    .ok_or_else(|| data_err(path, line, "missing `messages` array"))?;
                // transformers needs a string role; content may be text, a list of parts, or absent (an
                // assistant turn with tool calls only).
                for m in messages {
                    if m.get("role").and_then(|r| r.as_str()).is_none() {
                        return Err(data_err(path, line, "every message needs a string `role`"));
                    }
                }
                let template = chat_template.as_ref().ok_or_else(|| {
                    data_err(
                        path,
                        line,
                        "the chat format needs a chat template (tokenizer_config.json `chat_template`)",
                    )
                })?;
                chat_example(template, line_text, tokenizer, options).map_err(|e| data_err(path, line, e))?
            }
            Format::Classification => {
                let ids = enc(field(&v, "text", path, line)?, true)?;
                let label = match v.get("label") {
                    Some(serde_json::Value::String(s)) => s.clone(),
                    Some(serde_json::Value::Number(n)) => n.to_string(),
                    _ => return Err(data_err(path, line, "`label` must be a string or an integer")),
                };
                let class = label_names.iter().position(|n| *n == label).ok_or_else(|| {
                    data_err(path, line, format!("unknown label {label:?} (labels: {label_names:?})"))
                })?;
                Example { input_ids: ids, target: Target::Class(class as i64) }
            }
        };
        if ex.input_ids.is_empty() {
            return Err(data_err(path, line, "the record tokenizes to no tokens"));
        }
        if let Some(max) = options.max_length {
            ex.input_ids.truncate(max);
            if let Target::Tokens(t) = &mut ex.target {
                t.truncate(max);
            }
        }
        examples.push(ex);
    }
    Ok(Dataset { examples, label_names, path: path.to_path_buf() })
}

/// A padded batch on a device.
#[derive(Debug)]
pub struct Batch {
    /// `(B, T)` int64, right-padded.
    pub input_ids: Tensor,
    /// `(B, T)`, 1 for tokens.
    pub attention_mask: Tensor,
    /// `(B, T)` token labels (−100 at padding) or `(B,)` classes.
    pub labels: Tensor,
    /// Real tokens in the batch.
    pub tokens: i64,
}

/// Pads examples to a batch (right padding with `pad_id`; labels padded with −100).
pub fn collate(examples: &[&Example], pad_id: i64, device: Device) -> Batch {
    let t = examples.iter().map(|e| e.input_ids.len()).max().unwrap_or(0);
    let b = examples.len();
    let mut ids = vec![pad_id; b * t];
    let mut mask = vec![0i64; b * t];
    let mut token_labels = vec![crate::IGNORE_INDEX; b * t];
    let mut classes = Vec::with_capacity(b);
    let mut tokens = 0;
    for (i, e) in examples.iter().enumerate() {
        for (j, &id) in e.input_ids.iter().enumerate() {
            ids[i * t + j] = id;
            mask[i * t + j] = 1;
        }
        tokens += e.input_ids.len() as i64;
        match &e.target {
            Target::Tokens(l) => {
                for (j, &x) in l.iter().enumerate() {
                    token_labels[i * t + j] = x;
                }
            }
            Target::Class(c) => classes.push(*c),
        }
    }
    let shape = [b as i64, t as i64];
    let labels = if classes.len() == b && b > 0 {
        Tensor::from_slice(&classes)
    } else {
        Tensor::from_slice(&token_labels).view(shape)
    };
    Batch {
        input_ids: Tensor::from_slice(&ids).view(shape).to_device(device),
        attention_mask: Tensor::from_slice(&mask).view(shape).to_device(device),
        labels: labels.to_kind(Kind::Int64).to_device(device),
        tokens,
    }
}

/// A small deterministic generator (SplitMix64) for shuffling.
#[derive(Clone, Debug)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// Seeded generator.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// Next value.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Fisher–Yates shuffle.
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = (self.next_u64() % (i as u64 + 1)) as usize;
            v.swap(i, j);
        }
    }
}

/// The batches of one epoch as example indices: shuffled by `(seed, epoch)` unless `shuffle` is false,
/// and with `group_by_length`, sorted by length within windows of 50 batches (less padding) before the
/// batches themselves are shuffled.
pub fn epoch_batches(
    lengths: &[usize],
    batch_size: usize,
    seed: u64,
    epoch: usize,
    shuffle: bool,
    group_by_length: bool,
) -> Vec<Vec<usize>> {
    let mut idx: Vec<usize> = (0..lengths.len()).collect();
    let mut rng = SplitMix64::new(seed.wrapping_mul(1_000_003).wrapping_add(epoch as u64));
    if shuffle {
        rng.shuffle(&mut idx);
    }
    let batch_size = batch_size.max(1);
    if group_by_length {
        for window in idx.chunks_mut(batch_size * 50) {
            window.sort_by_key(|&i| std::cmp::Reverse(lengths[i]));
        }
    }
    let mut batches: Vec<Vec<usize>> = idx.chunks(batch_size).map(<[usize]>::to_vec).collect();
    if shuffle && group_by_length {
        rng.shuffle(&mut batches);
    }
    batches
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collate_pads_right_and_masks_labels() {
        let a = Example { input_ids: vec![5, 6, 7], target: Target::Tokens(vec![-100, 6, 7]) };
        let b = Example { input_ids: vec![8], target: Target::Tokens(vec![8]) };
        let batch = collate(&[&a, &b], 0, Device::Cpu);
        assert_eq!(Vec::<i64>::try_from(batch.input_ids.flatten(0, -1)).unwrap(), [5, 6, 7, 8, 0, 0]);
        assert_eq!(Vec::<i64>::try_from(batch.attention_mask.flatten(0, -1)).unwrap(), [1, 1, 1, 1, 0, 0]);
        assert_eq!(Vec::<i64>::try_from(batch.labels.flatten(0, -1)).unwrap(), [-100, 6, 7, 8, -100, -100]);
        assert_eq!(batch.tokens, 4);
        let c = Example { input_ids: vec![1, 2], target: Target::Class(1) };
        let d = Example { input_ids: vec![3], target: Target::Class(0) };
        let batch = collate(&[&c, &d], 0, Device::Cpu);
        assert_eq!(Vec::<i64>::try_from(batch.labels).unwrap(), [1, 0]);
    }

    #[test]
    fn batches_are_deterministic_cover_everything_and_group_by_length() {
        let lengths: Vec<usize> = (0..103).map(|i| (i * 37) % 41 + 1).collect();
        let a = epoch_batches(&lengths, 8, 7, 0, true, false);
        assert_eq!(a, epoch_batches(&lengths, 8, 7, 0, true, false));
        assert_ne!(a, epoch_batches(&lengths, 8, 7, 1, true, false), "epochs reshuffle");
        let mut all: Vec<usize> = a.concat();
        all.sort_unstable();
        assert_eq!(all, (0..103).collect::<Vec<_>>());
        assert_eq!(epoch_batches(&lengths, 8, 7, 0, false, false)[0], (0..8).collect::<Vec<_>>());
        let grouped = epoch_batches(&lengths, 8, 7, 0, true, true);
        let spread = |bs: &[Vec<usize>]| -> usize {
            bs.iter()
                .map(|b| {
                    b.iter().map(|&i| lengths[i]).max().unwrap()
                        - b.iter().map(|&i| lengths[i]).min().unwrap()
                })
                .sum()
        };
        assert!(spread(&grouped) < spread(&a) / 2, "grouping by length reduces padding");
    }

    #[test]
    fn chat_templates_render_with_minijinja() {
        let template = "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{{ eos_token }}{% endfor %}";
        let messages =
            serde_json::json!([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]);
        let out = render_chat(template, &messages, "<s>", "</s>").unwrap();
        assert_eq!(out, "<s><|user|>hi</s><|assistant|>hello</s>");
        let bad = "{{ raise_exception('roles must alternate') }}";
        assert!(render_chat(bad, &messages, "", "").unwrap_err().contains("roles must alternate"));
    }
}
