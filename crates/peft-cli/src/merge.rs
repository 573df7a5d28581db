//! `peft merge`: the active adapters merged into the base (PEFT's `merge_and_unload`) and written as a
//! checkpoint transformers' `from_pretrained` loads: `model.safetensors` or transformers' shards and
//! index, `config.json` with the written `dtype`, and the base's tokenizer and generation files.
//!
//! The files are written the way `PreTrainedModel.save_pretrained` writes them: parameters only (no
//! buffers), tied weights once (a tied `lm_head` is omitted), the tensors in the model's registration
//! order split into shards by huggingface_hub's greedy rule, `model-0000k-of-0000n.safetensors` names and
//! an index with `total_parameters`, `total_size` and the `weight_map`. Everything goes into a staged
//! sibling directory that replaces `--output` in one step, so a crash never leaves a half checkpoint that
//! looks complete.

use crate::{load, parse_kind, parse_task, ModelArgs, QuantArgs};
use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use peft_core::durable::StagedDir;
use peft_models::{HfModel, Task};
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

#[derive(Args, Debug)]
pub(crate) struct MergeArgs {
    /// The base model: a directory, a hub model id or a `.gguf` file.
    #[arg(long)]
    model: String,
    /// Hub revision of the model.
    #[arg(long)]
    revision: Option<String>,
    /// An adapter directory or hub id, optionally `=NAME`. Repeat for several adapters.
    #[arg(long = "adapter", required = true)]
    adapters: Vec<String>,
    /// Adapters to merge (comma-separated; default: the first).
    #[arg(long, value_delimiter = ',')]
    active: Vec<String>,
    /// Task head (default: the adapter's task_type, else the model's `architectures`).
    #[arg(long)]
    task: Option<String>,
    /// dtype the model is loaded, merged and written in: f32, bf16, f16 (default: the base checkpoint's
    /// `dtype` / `torch_dtype`, else f32).
    #[arg(long)]
    dtype: Option<String>,
    /// Largest shard (transformers' `max_shard_size`: bytes, or a number with KB, MB, GB or TB, powers
    /// of ten); a larger checkpoint is split into shards with an index.
    #[arg(long, default_value = "5GB")]
    max_shard_size: String,
    /// The checkpoint directory to write (replaced in one step; an existing directory must be a model
    /// directory or empty).
    #[arg(long)]
    output: PathBuf,
}

/// Tokenizer and generation files a checkpoint directory may hold; copied as they are.
const COPIED_FILES: &[&str] = &[
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
    "tokenizer.model",
    "spiece.model",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
];

/// huggingface_hub's `parse_size_to_int`: an integer of bytes, or a number followed by KB, MB, GB or
/// TB (powers of ten).
pub(crate) fn parse_size(s: &str) -> Result<u64> {
    let t = s.trim();
    if let Ok(n) = t.parse::<u64>() {
        return Ok(n);
    }
    let bad =
        || anyhow!("--max-shard-size {s:?}: expected bytes or a size such as 5GB, 500MB (KB, MB, GB, TB)");
    if t.len() < 3 || !t.is_char_boundary(t.len() - 2) {
        return Err(bad());
    }
    let (value, unit) = t.split_at(t.len() - 2);
    let multiplier: f64 = match unit.to_ascii_uppercase().as_str() {
        "KB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        "TB" => 1e12,
        _ => return Err(bad()),
    };
    let value: f64 = value.trim().parse().map_err(|_| bad())?;
    if !value.is_finite() || value <= 0.0 {
        return Err(bad());
    }
    Ok((value * multiplier) as u64)
}

/// transformers' dtype name (`config.dtype`).
fn dtype_name(kind: Kind) -> &'static str {
    match kind {
        Kind::BFloat16 => "bfloat16",
        Kind::Half => "float16",
        _ => "float32",
    }
}

/// The base checkpoint's dtype from its config (`dtype`, or the older `torch_dtype`), as a `--dtype`.
fn stored_dtype(config: &Map<String, Value>) -> &'static str {
    match config.get("dtype").or_else(|| config.get("torch_dtype")).and_then(Value::as_str) {
        Some("bfloat16") => "bf16",
        Some("float16") => "f16",
        _ => "f32",
    }
}

/// transformers' class for a model type and task (`config.architectures`).
fn architecture(model_type: &str, task: Task) -> String {
    let stem = match model_type {
        "llama" => "Llama",
        "mistral" => "Mistral",
        "qwen2" => "Qwen2",
        "gpt2" => "GPT2",
        "bert" => "Bert",
        "t5" => "T5",
        other => other,
    };
    let head = match (model_type, task) {
        ("gpt2", Task::CausalLm) => "LMHeadModel",
        (_, Task::CausalLm) => "ForCausalLM",
        (_, Task::Seq2SeqLm) => "ForConditionalGeneration",
        (_, Task::SequenceClassification) => "ForSequenceClassification",
        (_, Task::TokenClassification) => "ForTokenClassification",
        (_, Task::QuestionAnswering) => "ForQuestionAnswering",
        (_, Task::FeatureExtraction) => "Model",
    };
    format!("{stem}{head}")
}

/// The model's parameters under transformers' names, in the order the model created them (which is
/// transformers' module registration order, so shards split where transformers splits them); any
/// variable the creation list lacks follows in name order.
fn ordered_parameters(vs: &tch::nn::VarStore) -> Vec<(String, Tensor)> {
    let mut by_ptr: HashMap<usize, String> = HashMap::new();
    let mut named = vs.variables();
    for (name, t) in &named {
        by_ptr.insert(t.data_ptr() as usize, name.clone());
    }
    let mut out = Vec::with_capacity(named.len());
    for t in vs.trainable_variables() {
        if let Some(name) = by_ptr.remove(&(t.data_ptr() as usize)) {
            if let Some(t) = named.remove(&name) {
                out.push((name, t));
            }
        }
    }
    let mut rest: Vec<(String, Tensor)> = named.into_iter().collect();
    rest.sort_by(|a, b| a.0.cmp(&b.0));
    out.extend(rest);
    out
}

/// huggingface_hub's `split_state_dict_into_shards_factory`: tensors in order, a new shard whenever the
/// next one would pass `max`; a tensor larger than `max` gets a shard of its own.
pub(crate) fn split_shards(sizes: &[u64], max: u64) -> Vec<Vec<usize>> {
    let mut shards: Vec<Vec<usize>> = Vec::new();
    let mut current: Vec<usize> = Vec::new();
    let mut current_size = 0u64;
    for (i, &size) in sizes.iter().enumerate() {
        if size > max {
            shards.push(vec![i]);
            continue;
        }
        if current_size + size > max {
            shards.push(std::mem::take(&mut current));
            current_size = 0;
        }
        current.push(i);
        current_size += size;
    }
    if !current.is_empty() {
        shards.push(current);
    }
    shards
}

/// An output directory that may be replaced: missing, empty, or a model checkpoint (`config.json`).
fn check_output(dir: &Path) -> Result<()> {
    if dir.is_file() {
        bail!("--output {}: a file, not a directory", dir.display());
    }
    if dir.is_dir() {
        let empty = std::fs::read_dir(dir).with_context(|| dir.display().to_string())?.next().is_none();
        if !empty && !dir.join("config.json").is_file() {
            bail!(
                "--output {}: an existing directory that is not a model checkpoint (no config.json); it would \
                 be replaced, so pass a new or empty directory",
                dir.display()
            );
        }
    }
    Ok(())
}

pub(crate) fn merge(args: MergeArgs) -> Result<()> {
    let max_shard = parse_size(&args.max_shard_size)?;
    check_output(&args.output)?;
    if let Some(t) = &args.task {
        parse_task(t)?;
    }
    let path = peft_models::hub::resolve(&args.model, args.revision.as_deref())
        .with_context(|| format!("loading model {}", args.model))?;
    let gguf = peft_models::gguf::is_gguf(&path);
    let base_config = if gguf {
        None
    } else {
        let config = peft_models::HfConfig::from_dir(&path)?;
        if config.raw().contains_key("quantization_config") {
            bail!(
                "{}: a quantized checkpoint (quantization_config); merging writes dense weights, so merge into the \
                 unquantized model",
                config.path().display()
            );
        }
        Some(config)
    };
    let dtype = match (&args.dtype, &base_config) {
        (Some(d), _) => d.clone(),
        (None, Some(c)) => stored_dtype(c.raw()).to_string(),
        (None, None) => "f32".to_string(),
    };
    let kind = parse_kind(&dtype)?;
    let model_args = ModelArgs {
        model: path.to_string_lossy().into_owned(),
        revision: None,
        adapters: args.adapters.clone(),
        active: args.active.clone(),
        merge: false,
        task: args.task.clone(),
        dtype,
        device: "cpu".into(),
        quant: QuantArgs {
            load_in_4bit: false,
            load_in_8bit: false,
            quant_type: "nf4".into(),
            no_double_quant: false,
        },
    };
    let (peft, vs, _) = load(&model_args)?;
    let active: Vec<String> = peft.active_adapters().iter().map(|s| s.to_string()).collect();
    let model: HfModel =
        peft.merge_and_unload(None, true).with_context(|| format!("merging {}", active.join(", ")))?;

    let params = ordered_parameters(&vs);
    let mut config = match &base_config {
        Some(c) => c.raw().clone(),
        None => model.config().raw().clone(),
    };
    config.remove("torch_dtype");
    config.insert("dtype".into(), Value::from(dtype_name(kind)));
    config.insert(
        "architectures".into(),
        Value::Array(vec![Value::from(architecture(model.model_type_name(), model.task()))]),
    );
    let mut stage = StagedDir::new(&args.output, false)?;
    write_weights(&mut stage, &params, max_shard)?;
    let config_text = peft_core::peft_config::json::to_peft_json(&Value::Object(config)) + "\n";
    stage.write("config.json", config_text.as_bytes())?;
    if gguf {
        let file = peft_models::gguf::Gguf::open(&path)?;
        let tokenizer = peft_models::gguf_tokenizer::tokenizer_json(&file)?;
        stage.write("tokenizer.json", serde_json::to_string_pretty(&tokenizer)?.as_bytes())?;
    } else {
        for name in COPIED_FILES {
            let src = path.join(name);
            if src.is_file() {
                let bytes = std::fs::read(&src).with_context(|| format!("reading {}", src.display()))?;
                stage.write(name, &bytes)?;
            }
        }
    }
    stage.commit()?;
    log::info!("merged {} into {} ({} tensors)", active.join(", "), args.output.display(), params.len());
    println!("merged model saved to {}", args.output.display());
    Ok(())
}

/// `model.safetensors`, or shards and `model.safetensors.index.json` when the tensors pass `max`.
fn write_weights(stage: &mut StagedDir, params: &[(String, Tensor)], max: u64) -> Result<()> {
    let sizes: Vec<u64> =
        params.iter().map(|(_, t)| (t.numel() * t.kind().elt_size_in_bytes()) as u64).collect();
    let shards = split_shards(&sizes, max);
    if shards.len() <= 1 {
        let bytes = peft_core::io::safetensors_bytes(params)?;
        return Ok(stage.write("model.safetensors", &bytes)?);
    }
    let n = shards.len();
    let mut weight_map = Map::new();
    for (k, shard) in shards.iter().enumerate() {
        let file = format!("model-{:05}-of-{n:05}.safetensors", k + 1);
        let tensors: Vec<(String, Tensor)> =
            shard.iter().map(|&i| (params[i].0.clone(), params[i].1.shallow_clone())).collect();
        for (name, _) in &tensors {
            weight_map.insert(name.clone(), Value::from(file.clone()));
        }
        stage.write(&file, &peft_core::io::safetensors_bytes(&tensors)?)?;
    }
    let total_parameters: i64 = params.iter().map(|(_, t)| t.numel() as i64).sum();
    let index = serde_json::json!({
        "metadata": {"total_parameters": total_parameters, "total_size": sizes.iter().sum::<u64>()},
        "weight_map": weight_map,
    });
    let text = peft_core::peft_config::json::to_peft_json(&index) + "\n";
    Ok(stage.write("model.safetensors.index.json", text.as_bytes())?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_as_huggingface_hub_parses_them() {
        assert_eq!(parse_size("5GB").unwrap(), 5_000_000_000);
        assert_eq!(parse_size("40KB").unwrap(), 40_000);
        assert_eq!(parse_size("1.5mb").unwrap(), 1_500_000);
        assert_eq!(parse_size("1234").unwrap(), 1234);
        for bad in ["5GiB", "GB", "-1MB", "five MB", ""] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn shards_split_greedily_in_order_with_oversized_tensors_alone() {
        assert_eq!(split_shards(&[6, 6, 2, 6, 2, 2], 10), vec![vec![0], vec![1, 2], vec![3, 4, 5]]);
        assert_eq!(split_shards(&[3, 20, 3], 10), vec![vec![1], vec![0, 2]]);
        assert_eq!(split_shards(&[1, 2], 10), vec![vec![0, 1]]);
    }
}
