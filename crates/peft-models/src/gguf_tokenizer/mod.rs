//! The tokenizer a GGUF file describes, built as transformers 5.24 builds it for
//! `AutoTokenizer.from_pretrained(dir, gguf_file=…)` (`integrations/gguf/gguf_tokenizer_mapping.py`):
//! byte-level BPE (`tokenizer.ggml.model == "gpt2"`, `byte_level`) and sentencepiece (`llama`,
//! `sentencepiece`, Phi-3's variant included) vocabularies, control tokens as special added tokens,
//! user-defined ones as plain added tokens, and BOS/EOS insertion from `add_bos_token` /
//! `add_eos_token`. Unigram (`t5`) and Gemma vocabularies are refused by name.

mod byte_level;
mod sentencepiece;

use crate::error::{ModelError, Result};
use peft_gguf::{Gguf, MetaValue};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, HashMap};

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

/// What a vocabulary type contributes: the model, the tokens its builder adds and the pipeline.
struct Vocabulary {
    model: Value,
    inner: Stage,
    normalizer: Value,
    pre_tokenizer: Value,
    decoder: Value,
}

/// A token added to the vocabulary as a whole (matched before splitting).
struct Added {
    content: String,
    special: bool,
}

impl Added {
    fn special(t: &str) -> Self {
        Self { content: t.to_string(), special: true }
    }

    fn plain(t: &str) -> Self {
        Self { content: t.to_string(), special: false }
    }
}

/// The tokens the inner tokenizer class adds (its defaults, then `add_gguf_special_tokens`), in order;
/// a later addition of the same content replaces the earlier one's flags, as in `tokenizers`.
struct Stage(Vec<Added>);

/// The tokens of type `kind` (3: control, 4: user-defined).
fn typed<'a>(tokens: &'a [&'a str], types: &'a [i64], kind: i64) -> impl Iterator<Item = &'a str> + 'a {
    types.iter().zip(tokens).filter(move |(&t, _)| t == kind).map(|(_, &tok)| tok)
}

/// `tokenizer.ggml.merges` as `[left, right]` pairs.
fn merges_from_file(file: &Gguf) -> Result<Vec<Value>> {
    strings(file, "tokenizer.ggml.merges")?
        .iter()
        .map(|m| {
            let (a, b) = m.split_once(' ').ok_or_else(|| ModelError::Tokenizer {
                path: file.path().to_path_buf(),
                message: format!("merge `{m}` is not two tokens separated by a space"),
            })?;
            Ok(json!([a, b]))
        })
        .collect()
}

/// The tokenizer JSON transformers' converter would build for `file` (the `tokenizers` serialization).
///
/// # Errors
/// A vocabulary type other than byte-level BPE or sentencepiece, or tokenizer metadata of the wrong
/// shape.
pub fn tokenizer_json(file: &Gguf) -> Result<Value> {
    let model = file.get("tokenizer.ggml.model").and_then(MetaValue::as_str).unwrap_or("");
    let arch = file.get("general.architecture").and_then(MetaValue::as_str).unwrap_or("");
    let refuse = |what: String| {
        ModelError::Tokenizer {
        path: file.path().to_path_buf(),
        message: format!(
            "{what}: peft-rs builds byte-level BPE (`gpt2`) and sentencepiece (`llama`) tokenizers from GGUF files"
        ),
    }
    };
    if model == "llama" && arch.starts_with("gemma") {
        return Err(refuse(format!("the Gemma sentencepiece vocabulary of `{arch}`")));
    }
    let tokens = strings(file, "tokenizer.ggml.tokens")?;
    let types: Vec<i64> = match file.get("tokenizer.ggml.token_type") {
        Some(MetaValue::Array(items)) => items.iter().map(|v| v.as_i64().unwrap_or(0)).collect(),
        _ => Vec::new(),
    };
    let v = match model {
        "gpt2" => byte_level::build(file, &tokens, &types)?,
        "llama" => sentencepiece::build(file, &tokens, &types)?,
        _ => return Err(refuse(format!("tokenizer.ggml.model `{model}`"))),
    };
    let vocab = v.model["vocab"].as_object().cloned().unwrap_or_default();
    let added_tokens = added_tokens(file, &tokens, v.inner, &vocab)?;
    Ok(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added_tokens,
        "normalizer": v.normalizer,
        "pre_tokenizer": v.pre_tokenizer,
        "post_processor": post_processor(file, &tokens, &added_tokens)?,
        "decoder": v.decoder,
        "model": v.model,
    }))
}

/// The added tokens, each at the id it ends up with, sorted by id: the inner tokenizer's additions
/// (later ones replace earlier flags), then the file's bos/eos/unk/pad tokens as special — those only
/// when not added already, as transformers' `TokenizersBackend` adds its named special tokens. A token
/// of the vocabulary keeps its id; any other gets `tokenizers`' next id (transformers gives Llama 3's
/// files an extra `<|endoftext|>` at 128256 this way, and DeepSeek's BOS, spelled outside the byte
/// alphabet, a second id).
fn added_tokens(
    file: &Gguf,
    tokens: &[&str],
    inner: Stage,
    vocab: &Map<String, Value>,
) -> Result<Vec<Value>> {
    let mut ids: HashMap<String, usize> = HashMap::new();
    let mut by_id: BTreeMap<usize, (String, bool)> = BTreeMap::new();
    let mut add = |content: String, special: bool, ids: &mut HashMap<String, usize>| {
        let id = match ids
            .get(&content)
            .copied()
            .or_else(|| vocab.get(&content).and_then(Value::as_u64).map(|i| i as usize))
        {
            Some(id) => id,
            None => match by_id.keys().next_back() {
                Some(&max) if max >= vocab.len() => max + 1,
                _ => vocab.len(),
            },
        };
        ids.insert(content.clone(), id);
        by_id.insert(id, (content, special));
    };
    for a in inner.0 {
        add(a.content, a.special, &mut ids);
    }
    for key in ["bos", "eos", "unknown", "padding"] {
        if let Some((t, _)) = special(file, tokens, &format!("tokenizer.ggml.{key}_token_id"))? {
            if !ids.contains_key(&t) {
                add(t, true, &mut ids);
            }
        }
    }
    Ok(by_id
        .into_iter()
        .map(|(id, (content, special))| {
            json!({"id": id, "content": content, "single_word": false, "lstrip": false, "rstrip": false,
                   "normalized": false, "special": special})
        })
        .collect())
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
