//! Llama-family models from a GGUF file, as transformers' `from_pretrained(…, gguf_file=…)` builds them:
//! the config from the metadata (`GGUF_CONFIG_MAPPING`: the keys it maps, transformers' defaults for the
//! rest), the tensors dequantized exactly as the `gguf` package does ([`peft_gguf`]), renamed to
//! transformers' parameter names, and llama.cpp's interleaved rotary layout of `q_proj` / `k_proj` undone
//! (transformers' `LlamaTensorProcessor`).

use crate::config::HfConfig;
use crate::error::{ModelError, Result};
pub use peft_gguf::Gguf;
use serde_json::{Map, Value};
use std::path::Path;
use tch::Tensor;

/// The GGUF architectures peft-rs loads, as transformers' `model_type`s.
pub const GGUF_ARCHITECTURES: &[&str] = &["llama", "mistral", "qwen2"];

/// Whether `path` names a GGUF file (a `.gguf` file that exists).
pub fn is_gguf(path: &Path) -> bool {
    path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf")) && path.is_file()
}

/// `(GGUF key under the architecture, transformers' config key)`; `head_dim` only for llama and
/// mistral (transformers ignores qwen2's `rope.dimension_count`).
const KEYS: &[(&str, &str)] = &[
    ("context_length", "max_position_embeddings"),
    ("block_count", "num_hidden_layers"),
    ("feed_forward_length", "intermediate_size"),
    ("embedding_length", "hidden_size"),
    ("rope.freq_base", "rope_theta"),
    ("attention.head_count", "num_attention_heads"),
    ("attention.head_count_kv", "num_key_value_heads"),
    ("attention.layer_norm_rms_epsilon", "rms_norm_eps"),
    ("vocab_size", "vocab_size"),
];

/// transformers' `model_type` for the file: its `general.architecture`, except that llama.cpp writes
/// Mistral models as `llama` and transformers reads `general.name == "mistral"` as Mistral.
fn model_type(file: &Gguf) -> Result<String> {
    let arch = file.require_str("general.architecture")?;
    let named_mistral = file.get("general.name").and_then(|v| v.as_str()) == Some("mistral");
    let model_type = if arch.contains("llama") && named_mistral { "mistral" } else { arch };
    if !GGUF_ARCHITECTURES.contains(&model_type) {
        return Err(ModelError::UnsupportedModelType {
            path: file.path().to_path_buf(),
            model_type: format!("{model_type} (GGUF general.architecture `{arch}`)"),
            supported: GGUF_ARCHITECTURES.join(", "),
        });
    }
    Ok(model_type.to_string())
}

fn json_number(v: &peft_gguf::MetaValue) -> Option<Value> {
    match v.as_i64() {
        Some(i) => Some(Value::from(i)),
        // f32 metadata widened to f64 exactly, as Python reads it.
        None => v.as_f64().and_then(serde_json::Number::from_f64).map(Value::Number),
    }
}

/// The config transformers builds from the file's metadata.
///
/// # Errors
/// An architecture peft-rs does not load, or a mapped key that is not a number.
pub fn config(file: &Gguf) -> Result<HfConfig> {
    let arch = file.require_str("general.architecture")?.to_string();
    let model_type = model_type(file)?;
    let mut map = Map::new();
    map.insert("model_type".into(), Value::from(model_type.as_str()));
    let head_dim = model_type != "qwen2";
    for (gguf_key, hf_key) in
        KEYS.iter().copied().chain(head_dim.then_some(("rope.dimension_count", "head_dim")))
    {
        let key = format!("{arch}.{gguf_key}");
        if let Some(v) = file.get(&key) {
            let n = json_number(v).ok_or_else(|| ModelError::Config {
                path: file.path().to_path_buf(),
                message: format!("metadata `{key}` is {v:?}, not a number"),
            })?;
            map.insert(hf_key.into(), n);
        }
    }
    if !map.contains_key("vocab_size") {
        if let Some(peft_gguf::MetaValue::Array(tokens)) = file.get("tokenizer.ggml.tokens") {
            map.insert("vocab_size".into(), Value::from(tokens.len()));
        }
    }
    let tied = file.tensor_info("output.weight").is_none();
    map.insert("tie_word_embeddings".into(), Value::Bool(tied));
    Ok(HfConfig::from_map(map, file.path().to_path_buf()))
}

/// transformers' name of a Llama-family GGUF tensor (gguf's `TensorNameMap` for `LLAMA`), or `None` for
/// tensors transformers does not load (`rope_freqs.weight`: the rotary frequencies it computes itself).
fn hf_name(name: &str) -> Option<String> {
    let (stem, suffix) = name.rsplit_once('.')?;
    if !matches!(suffix, "weight" | "bias") {
        return None;
    }
    let top = match stem {
        "token_embd" => Some("model.embed_tokens"),
        "output_norm" => Some("model.norm"),
        "output" => Some("lm_head"),
        _ => None,
    };
    if let Some(top) = top {
        return Some(format!("{top}.{suffix}"));
    }
    let rest = stem.strip_prefix("blk.")?;
    let (layer, part) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let hf = match part {
        "attn_norm" => "input_layernorm",
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "ffn_norm" => "post_attention_layernorm",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf}.{suffix}"))
}

/// Undoes llama.cpp's rotary permutation of a `q_proj` / `k_proj` weight or bias with `heads` heads:
/// rows `(heads, dim, 2)` → `(heads, 2, dim)`.
fn reverse_permute(t: &Tensor, heads: i64) -> std::result::Result<Tensor, tch::TchError> {
    let size = t.size();
    let mut split = vec![heads, size[0] / heads / 2, 2];
    split.extend_from_slice(&size[1..]);
    t.f_reshape(&split)?.f_transpose(1, 2)?.f_contiguous()?.f_reshape(&size)
}

/// Every tensor transformers loads from the file, dequantized, permuted back and renamed, in file order.
/// Tensors it does not load are skipped with a warning naming them.
pub fn tensors<'a>(
    file: &'a Gguf,
    config: &HfConfig,
) -> Result<impl Iterator<Item = Result<(String, Tensor)>> + 'a> {
    let permute = file.require_str("general.architecture")? == "llama";
    let heads = config.i64("num_attention_heads")?;
    let kv_heads = config.i64_or("num_key_value_heads", heads)?;
    Ok(file.tensors().filter_map(move |info| {
        let Some(name) = hf_name(&info.name) else {
            log::warn!(
                "{}: tensor `{}` is not a parameter transformers loads; skipped",
                file.path().display(),
                info.name
            );
            return None;
        };
        let load = || -> Result<(String, Tensor)> {
            let mut t = file.tensor(&info.name)?;
            let heads = if info.name.contains(".attn_q.") {
                Some(heads)
            } else if info.name.contains(".attn_k.") {
                Some(kv_heads)
            } else {
                None
            };
            if let (true, Some(h)) = (permute, heads) {
                let rows = t.size()[0];
                if h <= 0 || rows % (2 * h) != 0 {
                    return Err(ModelError::Config {
                        path: file.path().to_path_buf(),
                        message: format!(
                            "tensor `{}` has {rows} rows, not a multiple of 2 × {h} heads",
                            info.name
                        ),
                    });
                }
                t = reverse_permute(&t, h)
                    .map_err(ModelError::torch(format!("permuting `{}`", info.name)))?;
            }
            Ok((name, t))
        };
        Some(load())
    }))
}
