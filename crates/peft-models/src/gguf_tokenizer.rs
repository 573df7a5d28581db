//! The tokenizer a GGUF file describes, built as transformers 5.24 builds it for
//! `AutoTokenizer.from_pretrained(dir, gguf_file=…)` (`integrations/gguf/gguf_tokenizer_mapping.py`):
//! byte-level BPE (`tokenizer.ggml.model == "gpt2"`) from the file's tokens and merges, control tokens
//! as special added tokens, user-defined ones as plain added tokens, the split regex its
//! `tokenizer.ggml.pre` names, and BOS/EOS insertion from `add_bos_token` / `add_eos_token`.
//! Sentencepiece (`llama`), unigram and Gemma vocabularies are refused by name.

use crate::error::{ModelError, Result};
use peft_gguf::{Gguf, MetaValue};
use serde_json::{json, Map, Value};

const LLAMA3: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const TEKKEN: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN35: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const GPT4O: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// transformers' `GGUF_PRE_TOKENIZER_SPLITS`: the split regex of each `tokenizer.ggml.pre` it knows;
/// any other value keeps GPT-2's own byte-level splitting.
fn split_regex(pre: &str) -> Option<&'static str> {
    Some(match pre {
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0" | "lfm2"
        | "jina-v5-nano" | "dbrx" | "smaug-bpe" => LLAMA3,
        "tekken" => TEKKEN,
        "qwen2" | "deepseek-r1-qwen" | "kormo" | "f2llmv2" | "megrez" => QWEN2,
        "qwen35" => QWEN35,
        "gpt-4o" | "llama4" | "kanana2" | "talkie" | "minimax-m2" => GPT4O,
        _ => return None,
    })
}

/// GPT-2's byte → printable character table (`bytes_to_unicode`).
fn byte_spelling() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut extra = 0u32;
    for b in 0..=255u8 {
        let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        table[b as usize] = if printable {
            char::from(b)
        } else {
            extra += 1;
            char::from_u32(255 + extra).unwrap_or('\0')
        };
    }
    table
}

fn strings<'a>(file: &'a Gguf, key: &str) -> Result<Vec<&'a str>> {
    let bad = |what: &str| ModelError::Tokenizer {
        path: file.path().to_path_buf(),
        message: format!("`{key}` {what}"),
    };
    match file.get(key) {
        Some(MetaValue::Array(items)) => items
            .iter()
            .map(|v| v.as_str().ok_or_else(|| bad("holds a value that is not a string")))
            .collect(),
        Some(_) => Err(bad("is not an array")),
        None => Err(bad("is missing")),
    }
}

fn flag(file: &Gguf, key: &str) -> Option<bool> {
    match file.get(key) {
        Some(MetaValue::Bool(b)) => Some(*b),
        _ => None,
    }
}

/// The special token `key` (`tokenizer.ggml.bos_token_id`, …) names, when the file sets it.
fn special(file: &Gguf, tokens: &[&str], key: &str) -> Result<Option<(String, i64)>> {
    let Some(v) = file.get(key) else { return Ok(None) };
    let id = v.as_i64().filter(|&i| i >= 0 && (i as usize) < tokens.len()).ok_or_else(|| {
        ModelError::Tokenizer {
            path: file.path().to_path_buf(),
            message: format!("`{key}` is {v:?}, not a token id below {}", tokens.len()),
        }
    })?;
    Ok(Some((tokens[id as usize].to_string(), id)))
}

/// The tokenizer JSON transformers' converter would build for `file` (the `tokenizers` serialization).
///
/// # Errors
/// A vocabulary type other than byte-level BPE, or tokenizer metadata of the wrong shape.
pub fn tokenizer_json(file: &Gguf) -> Result<Value> {
    let path = file.path().to_path_buf();
    let model = file.get("tokenizer.ggml.model").and_then(MetaValue::as_str).unwrap_or("");
    if model != "gpt2" {
        return Err(ModelError::Tokenizer {
            path,
            message: format!(
                "tokenizer.ggml.model `{model}`: peft-rs builds byte-level BPE (`gpt2`) tokenizers from GGUF files only"
            ),
        });
    }
    let tokens = strings(file, "tokenizer.ggml.tokens")?;
    let merges = strings(file, "tokenizer.ggml.merges")?;
    let types: Vec<i64> = match file.get("tokenizer.ggml.token_type") {
        Some(MetaValue::Array(items)) => items.iter().map(|v| v.as_i64().unwrap_or(0)).collect(),
        _ => Vec::new(),
    };
    let spelling = byte_spelling();
    let in_alphabet = |t: &str| t.chars().all(|c| spelling.contains(&c));
    let mut vocab = Map::new();
    for (id, token) in tokens.iter().enumerate() {
        let spelled = if in_alphabet(token) {
            token.to_string()
        } else {
            token.bytes().map(|b| spelling[b as usize]).collect()
        };
        vocab.insert(spelled, Value::from(id));
    }
    let merges: Vec<Value> = merges
        .iter()
        .map(|m| {
            let (a, b) = m.split_once(' ').ok_or_else(|| ModelError::Tokenizer {
                path: path.clone(),
                message: format!("merge `{m}` is not two tokens separated by a space"),
            })?;
            Ok(json!([a, b]))
        })
        .collect::<Result<_>>()?;
    let added_tokens = added_tokens(file, &tokens, &types, &vocab, &in_alphabet)?;
    let byte_level = |use_regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex});
    let pre = file.get("tokenizer.ggml.pre").and_then(MetaValue::as_str).unwrap_or("");
    let pre_tokenizer = match split_regex(pre) {
        Some(regex) => json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": false},
            byte_level(false),
        ]}),
        None => byte_level(true),
    };
    Ok(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added_tokens,
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": post_processor(file, &tokens, &added_tokens)?,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": "",
                  "end_of_word_suffix": "", "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                  "vocab": vocab, "merges": merges},
    }))
}

/// The added tokens in the order transformers adds them, each at the id it ends up with: GPT-2's default
/// `<|endoftext|>` (its unk/bos/eos default), the control tokens (type 3) spelled in the byte alphabet as
/// special, the user-defined ones (type 4) found in the vocabulary as plain, then the file's
/// bos/eos/unk/pad tokens as special. A token already in the vocabulary keeps its id; any other gets
/// the next id past the vocabulary (transformers gives Llama 3's files an extra `<|endoftext|>` at
/// 128256 this way, and DeepSeek's BOS, spelled outside the byte alphabet, a second id).
fn added_tokens(
    file: &Gguf,
    tokens: &[&str],
    types: &[i64],
    vocab: &Map<String, Value>,
    in_alphabet: &dyn Fn(&str) -> bool,
) -> Result<Vec<Value>> {
    let mut order: Vec<(String, bool)> = vec![("<|endoftext|>".into(), true)];
    let typed = |kind: i64| types.iter().enumerate().filter(move |&(id, &t)| t == kind && id < tokens.len());
    order.extend(
        typed(3).filter(|&(id, _)| in_alphabet(tokens[id])).map(|(id, _)| (tokens[id].to_string(), true)),
    );
    order.extend(
        typed(4)
            .filter(|&(id, _)| vocab.contains_key(tokens[id]))
            .map(|(id, _)| (tokens[id].to_string(), false)),
    );
    for key in ["bos", "eos", "unknown", "padding"] {
        if let Some((t, _)) = special(file, tokens, &format!("tokenizer.ggml.{key}_token_id"))? {
            order.push((t, true));
        }
    }
    let mut next = vocab.len();
    let mut by_id = std::collections::BTreeMap::new();
    let mut placed = std::collections::HashSet::new();
    for (content, special) in order {
        if !placed.insert(content.clone()) {
            continue;
        }
        let id = match vocab.get(&content).and_then(Value::as_u64) {
            Some(id) => id as usize,
            None => {
                next += 1;
                next - 1
            }
        };
        by_id.insert(
            id,
            json!({"id": id, "content": content, "single_word": false, "lstrip": false, "rstrip": false,
                   "normalized": false, "special": special}),
        );
    }
    Ok(by_id.into_values().collect())
}

/// transformers' `update_post_processor`: BOS before and EOS after each sequence when the file asks, each
/// with the id its token has among the added tokens.
fn post_processor(file: &Gguf, tokens: &[&str], added: &[Value]) -> Result<Value> {
    let resolve = |t: Option<(String, i64)>| {
        t.map(|(content, id)| {
            let id = added
                .iter()
                .find(|a| a["content"] == content.as_str())
                .and_then(|a| a["id"].as_i64())
                .unwrap_or(id);
            (content, id)
        })
    };
    let add_bos = flag(file, "tokenizer.ggml.add_bos_token") == Some(true);
    let add_eos = flag(file, "tokenizer.ggml.add_eos_token") == Some(true);
    let bos = resolve(special(file, tokens, "tokenizer.ggml.bos_token_id")?).filter(|_| add_bos);
    let eos = resolve(special(file, tokens, "tokenizer.ggml.eos_token_id")?).filter(|_| add_eos);
    let piece = |tok: &Option<(String, i64)>, type_id: u32| {
        tok.as_ref().map(|(t, _)| json!({"SpecialToken": {"id": t, "type_id": type_id}}))
    };
    let seq = |id: &str, type_id: u32| json!({"Sequence": {"id": id, "type_id": type_id}});
    let single: Vec<Value> =
        [piece(&bos, 0), Some(seq("A", 0)), piece(&eos, 0)].into_iter().flatten().collect();
    let mut pair = single.clone();
    pair.extend([piece(&bos, 1), Some(seq("B", 1)), piece(&eos, 1)].into_iter().flatten());
    let mut specials = Map::new();
    for (t, id) in bos.iter().chain(eos.iter()) {
        specials.insert(t.clone(), json!({"id": t, "ids": [id], "tokens": [t]}));
    }
    Ok(json!({"type": "TemplateProcessing", "single": single, "pair": pair, "special_tokens": specials}))
}

/// `(name, token)` pairs: `bos_token`, `eos_token`, … as a chat template sees them.
pub type SpecialTokens = Vec<(String, String)>;

/// `bos_token`, `eos_token`, `unk_token`, `pad_token` as transformers' tokenizer reports them (for chat
/// templates), and the file's `tokenizer.chat_template`.
///
/// # Errors
/// Tokenizer metadata of the wrong shape.
pub fn special_tokens_and_template(file: &Gguf) -> Result<(SpecialTokens, Option<String>)> {
    let tokens = strings(file, "tokenizer.ggml.tokens")?;
    let mut out = Vec::new();
    for (name, key) in
        [("bos_token", "bos"), ("eos_token", "eos"), ("unk_token", "unknown"), ("pad_token", "padding")]
    {
        if let Some((t, _)) = special(file, &tokens, &format!("tokenizer.ggml.{key}_token_id"))? {
            out.push((name.to_string(), t));
        }
    }
    let template = file.get("tokenizer.chat_template").and_then(MetaValue::as_str).map(str::to_string);
    Ok((out, template))
}
