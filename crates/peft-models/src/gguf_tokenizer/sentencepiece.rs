//! Sentencepiece vocabularies (`tokenizer.ggml.model == "llama"`) as transformers' `LlamaTokenizer`
//! holds them: BPE over the tokens as the file spells them (`▁` for a space), byte fallback to the
//! `<0xNN>` tokens, merges from the file or — llama.cpp writes none for these files — recovered from the
//! scores (`generate_merges`), and Metaspace splitting. Phi-3 files (`general.architecture == "phi3"`)
//! get transformers' `phi3_tokenizer`: the prefix space from a normalizer instead of Metaspace.

use super::{merges_from_file, Added, Stage, Vocabulary};
use crate::error::{ModelError, Result};
use peft_gguf::{Gguf, MetaValue};
use serde_json::{json, Map, Value};
use std::collections::HashMap;

/// The vocabulary, merges, added tokens and pipeline of a sentencepiece file.
pub(super) fn build(file: &Gguf, tokens: &[&str], types: &[i64]) -> Result<Vocabulary> {
    let mut vocab = Map::new();
    for (id, token) in tokens.iter().enumerate() {
        vocab.insert(token.to_string(), Value::from(id));
    }
    let merges = match file.get("tokenizer.ggml.merges") {
        Some(_) => merges_from_file(file)?,
        None => recovered_merges(tokens, &scores(file, tokens.len())?),
    };
    // LlamaTokenizer's defaults (bos, eos, unk) first, then the control and user-defined tokens.
    let mut inner: Vec<Added> = ["<s>", "</s>", "<unk>"].into_iter().map(Added::special).collect();
    inner.extend(super::typed(tokens, types, 3).map(Added::special));
    inner.extend(super::typed(tokens, types, 4).filter(|t| vocab.contains_key(*t)).map(Added::plain));
    let phi3 = file.get("general.architecture").and_then(MetaValue::as_str) == Some("phi3");
    let (normalizer, pre_tokenizer) = if phi3 {
        let n = json!({"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": "\u{2581}"},
            {"type": "Replace", "pattern": {"String": " "}, "content": "\u{2581}"},
        ]});
        (n, Value::Null)
    } else {
        // `legacy=False` with a prefix space: the space is prepended to the first piece only.
        let p = json!({"type": "Metaspace", "replacement": "\u{2581}", "prepend_scheme": "first", "split": false});
        (Value::Null, p)
    };
    Ok(Vocabulary {
        model: json!({"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                      "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
                      "vocab": vocab, "merges": merges}),
        inner: Stage(inner),
        normalizer,
        pre_tokenizer,
        decoder: json!({"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "},
            {"type": "ByteFallback"},
            {"type": "Fuse"},
            {"type": "Strip", "content": " ", "start": 1, "stop": 0},
        ]}),
    })
}

/// `tokenizer.ggml.scores`, one per token.
fn scores(file: &Gguf, n: usize) -> Result<Vec<f64>> {
    let key = "tokenizer.ggml.scores";
    let bad = |what: String| ModelError::Tokenizer {
        path: file.path().to_path_buf(),
        message: format!("`{key}` {what}"),
    };
    let Some(MetaValue::Array(items)) = file.get(key) else {
        return Err(bad("is missing or not an array (needed to recover the merges)".into()));
    };
    if items.len() != n {
        return Err(bad(format!("has {} entries for {n} tokens", items.len())));
    }
    items.iter().map(|v| v.as_f64().ok_or_else(|| bad(format!("holds {v:?}, not a number")))).collect()
}

/// transformers' `generate_merges(vocab, scores)`: every split of a token into two tokens of the
/// vocabulary is a merge, ranked by the merged token's score (best first), then by the lengths of the
/// left and right parts (longer first); ties keep the order of the tokens, and one token's splits are
/// ordered by the ids of their parts. Python's dict semantics are kept for repeated tokens: the last id
/// and the last score, at the first token's place.
fn recovered_merges(tokens: &[&str], scores: &[f64]) -> Vec<Value> {
    let mut id: HashMap<&str, usize> = HashMap::with_capacity(tokens.len());
    let mut score: HashMap<&str, f64> = HashMap::with_capacity(tokens.len());
    let mut order: Vec<&str> = Vec::with_capacity(tokens.len());
    for (i, (&t, &s)) in tokens.iter().zip(scores).enumerate() {
        id.insert(t, i);
        if score.insert(t, s).is_none() {
            order.push(t);
        }
    }
    // (left, right, score, left length, right length) in code points, as Python measures them.
    let mut merges: Vec<(&str, &str, f64, usize, usize)> = Vec::new();
    for &token in &order {
        let s = score[token];
        let start = merges.len();
        let chars = token.chars().count();
        for (k, (at, _)) in token.char_indices().enumerate().skip(1) {
            let (l, r) = token.split_at(at);
            if id.contains_key(l) && id.contains_key(r) {
                merges.push((l, r, s, k, chars - k));
            }
        }
        merges[start..].sort_by_key(|m| (id[m.0], id[m.1]));
    }
    merges.sort_by(|a, b| b.2.total_cmp(&a.2).then(b.3.cmp(&a.3)).then(b.4.cmp(&a.4)));
    merges.into_iter().map(|(l, r, ..)| json!([l, r])).collect()
}
