//! `peft`: run HF models with PEFT adapters without Python.
//!
//! * `peft run` — logits for token ids from a safetensors file (the stable contract external parity
//!   checks use: flags and tensor names do not change).
//! * `peft inspect` — what an adapter directory holds.
//! * `peft generate` — text generation with a model and adapters.
#![allow(clippy::print_stdout)]

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use peft_core::MethodConfig;
use peft_core::{ForwardCtx, LoadOptions, PeftModel};
use peft_models::generate::{generate_ctx, GenerationConfig};
use peft_models::{HfModel, ModelInputs, Task};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

// Linking the method crates registers their peft_types.
use peft as _;

#[derive(Parser, Debug)]
#[command(name = "peft", version, about = "Run HF models with PEFT adapters (peft-rs)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Compute logits for `input_ids` (and `attention_mask`) read from a safetensors file.
    Run(RunArgs),
    /// Describe an adapter directory.
    Inspect(InspectArgs),
    /// Generate text.
    Generate(GenerateArgs),
    /// Fine-tune a model with LoRA on a JSONL dataset and save a PEFT adapter.
    Train(Box<TrainArgs>),
}

#[derive(Args, Debug)]
struct TrainArgs {
    /// A model directory or a hub model id.
    #[arg(long)]
    model: String,
    /// Hub revision.
    #[arg(long)]
    revision: Option<String>,
    /// Weights dtype of the frozen base (adapters stay f32): f32, bf16, f16.
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "cpu")]
    device: String,
    #[command(flatten)]
    quant: QuantArgs,
    /// An adapter_config.json to use instead of the LoRA flags.
    #[arg(long)]
    config: Option<PathBuf>,
    /// LoRA rank.
    #[arg(long, default_value_t = 8)]
    r: i64,
    /// LoRA alpha.
    #[arg(long, default_value_t = 16.0)]
    lora_alpha: f64,
    /// LoRA dropout.
    #[arg(long, default_value_t = 0.05)]
    lora_dropout: f64,
    /// Modules to adapt (comma-separated names, or all-linear; default: PEFT's default for the model).
    #[arg(long, value_delimiter = ',')]
    target_modules: Vec<String>,
    /// rsLoRA scaling.
    #[arg(long)]
    use_rslora: bool,
    /// Training data (JSONL).
    #[arg(long)]
    data: PathBuf,
    /// Evaluation data (JSONL, same format).
    #[arg(long)]
    eval_data: Option<PathBuf>,
    /// Record format: text, prompt-completion, chat, classification.
    #[arg(long, default_value = "text")]
    format: String,
    /// Truncate examples to this many tokens.
    #[arg(long, default_value_t = 512)]
    max_length: usize,
    /// Epochs.
    #[arg(long, default_value_t = 3.0)]
    epochs: f64,
    /// Optimizer steps (overrides --epochs).
    #[arg(long)]
    max_steps: Option<usize>,
    /// Peak learning rate.
    #[arg(long, default_value_t = 2e-4)]
    lr: f64,
    /// Examples per micro-batch.
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    /// Micro-batches per optimizer step.
    #[arg(long, default_value_t = 1)]
    grad_accum: usize,
    /// Warmup steps.
    #[arg(long, default_value_t = 0)]
    warmup_steps: usize,
    /// constant, linear or cosine.
    #[arg(long, default_value = "linear")]
    scheduler: String,
    /// Weight decay.
    #[arg(long, default_value_t = 0.0)]
    weight_decay: f64,
    /// Gradient-norm clipping (0 = off).
    #[arg(long, default_value_t = 1.0)]
    max_grad_norm: f64,
    /// Seed.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Log every N steps.
    #[arg(long, default_value_t = 10)]
    logging_steps: usize,
    /// Evaluate every N steps.
    #[arg(long)]
    eval_steps: Option<usize>,
    /// Checkpoint every N steps.
    #[arg(long)]
    save_steps: Option<usize>,
    /// Batch examples of similar length together.
    #[arg(long)]
    group_by_length: bool,
    /// Keep the file order (no shuffling).
    #[arg(long)]
    no_shuffle: bool,
    /// adamw, loraplus or lorafa.
    #[arg(long, default_value = "adamw")]
    optimizer: String,
    /// LoRA+ learning-rate ratio of B over A.
    #[arg(long, default_value_t = 16.0)]
    loraplus_lr_ratio: f64,
    /// Resume from a checkpoint directory.
    #[arg(long)]
    resume: Option<PathBuf>,
    /// Hide the progress bar.
    #[arg(long)]
    quiet: bool,
    /// Output directory (adapter, training_args.json, metrics.jsonl, loss.png).
    #[arg(long)]
    output: PathBuf,
}

#[derive(Args, Debug)]
struct ModelArgs {
    /// A model directory or a hub model id (resolved through the HF cache; HF_HOME, HF_HUB_CACHE and
    /// HF_HUB_OFFLINE are honoured).
    #[arg(long)]
    model: String,
    /// Hub revision.
    #[arg(long)]
    revision: Option<String>,
    /// An adapter directory, optionally `=NAME` (default names: `default`, then the directory name).
    /// Repeat for several adapters.
    #[arg(long = "adapter")]
    adapters: Vec<String>,
    /// Adapters to activate (comma-separated; default: the first).
    #[arg(long, value_delimiter = ',')]
    active: Vec<String>,
    /// Merge the active adapters into the weights before running.
    #[arg(long)]
    merge: bool,
    /// Task head: causal-lm, seq2seq-lm, sequence-classification, token-classification,
    /// question-answering, feature-extraction (default: the adapter's task_type, else the model's
    /// `architectures`).
    #[arg(long)]
    task: Option<String>,
    /// Weights dtype: f32, bf16, f16.
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "cpu")]
    device: String,
    #[command(flatten)]
    quant: QuantArgs,
}

/// Quantized frozen bases (bitsandbytes-compatible; checkpoints saved quantized load quantized anyway).
#[derive(Args, Debug, Clone)]
struct QuantArgs {
    /// Quantize the linear layers to 4 bits on load (QLoRA: NF4 with double quantization).
    #[arg(long, conflicts_with = "load_in_8bit")]
    load_in_4bit: bool,
    /// Quantize the linear layers to LLM.int8 on load.
    #[arg(long)]
    load_in_8bit: bool,
    /// 4-bit data type: nf4 or fp4.
    #[arg(long, default_value = "nf4")]
    quant_type: String,
    /// Keep the 4-bit block maxima in f32 instead of quantizing them too.
    #[arg(long)]
    no_double_quant: bool,
}

impl QuantArgs {
    fn spec(&self, compute: tch::Kind) -> Result<Option<peft_quant::QuantizeSpec>> {
        if self.load_in_8bit {
            return Ok(Some(peft_quant::QuantizeSpec::load_in_8bit()));
        }
        if !self.load_in_4bit {
            return Ok(None);
        }
        let quant_type = peft_quant::QuantType4::from_name(&self.quant_type)
            .ok_or_else(|| anyhow::anyhow!("unknown --quant-type {:?} (nf4, fp4)", self.quant_type))?;
        Ok(Some(peft_quant::QuantizeSpec::FourBit(peft_quant::Quant4Options {
            quant_type,
            blocksize: 64,
            double_quant: !self.no_double_quant,
            compute_dtype: Some(compute),
        })))
    }
}

#[derive(Args, Debug)]
struct RunArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// One adapter name per batch row (`__base__` for none), run as one mixed batch.
    #[arg(long, value_delimiter = ',')]
    row_adapters: Vec<String>,
    /// Input safetensors: `input_ids` int64 [B, T], optional `attention_mask`, `token_type_ids`,
    /// `decoder_input_ids` (seq2seq).
    #[arg(long)]
    input: PathBuf,
    /// Output safetensors: `logits` (f32).
    #[arg(long)]
    output: PathBuf,
}

#[derive(Args, Debug)]
struct InspectArgs {
    /// The adapter directory.
    adapter: PathBuf,
    /// Match the adapter's targets against this model (default: its base_model_name_or_path when that
    /// resolves locally).
    #[arg(long)]
    model: Option<String>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The prompt.
    #[arg(long)]
    prompt: String,
    /// New tokens at most.
    #[arg(long, default_value_t = 32)]
    max_new_tokens: i64,
    /// Sample instead of greedy decoding.
    #[arg(long)]
    do_sample: bool,
    /// Sampling temperature.
    #[arg(long)]
    temperature: Option<f64>,
    /// Top-k (0 = off).
    #[arg(long)]
    top_k: Option<i64>,
    /// Top-p (1.0 = off).
    #[arg(long)]
    top_p: Option<f64>,
    /// Random seed.
    #[arg(long)]
    seed: Option<i64>,
    /// Extra stop token ids (comma-separated).
    #[arg(long, value_delimiter = ',')]
    stop: Vec<i64>,
    /// Print token ids instead of text.
    #[arg(long)]
    ids: bool,
}

/// Exit status of an error the program reports (bad input, a failed operation).
const EXIT_ERROR: i32 = 1;
/// Exit status of a bug: a panic caught at the top (reported as one line, like any error).
const EXIT_INTERNAL: i32 = 70;

fn main() {
    let cli = Cli::parse();
    // Panics are reported by the handler below, as one line, not by Rust's default hook (which prints
    // the location and, from libtorch, a C++ backtrace). A closed stdout (`peft inspect | head -0`) ends
    // the program quietly, as for other command-line tools.
    std::panic::set_hook(Box::new(|_| {}));
    let outcome = std::panic::catch_unwind(move || match cli.command {
        Command::Run(a) => run(a),
        Command::Inspect(a) => inspect(a),
        Command::Generate(a) => generate_cmd(a),
        Command::Train(a) => train(*a),
    });
    match outcome {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            if e.chain().any(|c| {
                c.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            }) {
                std::process::exit(0);
            }
            eprintln!("error: {}", one_line(&e));
            std::process::exit(EXIT_ERROR);
        }
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("unknown panic");
            if message.contains("Broken pipe") {
                std::process::exit(0);
            }
            eprintln!("error: internal error (a bug in peft-rs, please report it): {}", first_line(message));
            std::process::exit(EXIT_INTERNAL);
        }
    }
}

/// The first line of a message, without libtorch's backtrace (`Exception raised from …`, frames).
fn first_line(message: &str) -> &str {
    let cut = message.find("Exception raised from").unwrap_or(message.len());
    message[..cut].lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or("").trim_end_matches(':')
}

/// An error and its causes on one line (`context: cause: …`), each cut to its first line.
fn one_line(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in e.chain() {
        let text = cause.to_string();
        let line = first_line(&text).to_string();
        // thiserror types often repeat their source in their own message.
        if !line.is_empty() && !parts.iter().any(|p| p.contains(&line)) {
            parts.push(line);
        }
    }
    parts.join(": ")
}

fn parse_kind(s: &str) -> Result<Kind> {
    Ok(match s {
        "f32" | "float32" => Kind::Float,
        "bf16" | "bfloat16" => Kind::BFloat16,
        "f16" | "float16" => Kind::Half,
        other => bail!("unknown --dtype {other:?} (f32, bf16, f16)"),
    })
}

fn parse_device(s: &str) -> Result<Device> {
    let device = match s {
        "cpu" => Device::Cpu,
        "auto" => Device::cuda_if_available(),
        "cuda" => Device::Cuda(0),
        other => match other.strip_prefix("cuda:").and_then(|n| n.parse().ok()) {
            Some(n) => Device::Cuda(n),
            None => bail!("unknown --device {other:?} (cpu, cuda, cuda:N, auto)"),
        },
    };
    // Checked here, before any work: libtorch's own failure comes at the first weight moved.
    if let Device::Cuda(n) = device {
        let count = tch::Cuda::device_count();
        if n as i64 >= count {
            bail!("--device {s}: this machine has {count} CUDA device(s)");
        }
    }
    Ok(device)
}

fn parse_task(s: &str) -> Result<Task> {
    [
        Task::CausalLm,
        Task::Seq2SeqLm,
        Task::SequenceClassification,
        Task::TokenClassification,
        Task::QuestionAnswering,
        Task::FeatureExtraction,
    ]
    .into_iter()
    .find(|t| t.name() == s)
    .ok_or_else(|| anyhow!("unknown --task {s:?}"))
}

/// `DIR[=NAME]` → (dir, name).
fn split_adapter(spec: &str, index: usize) -> (PathBuf, String) {
    match spec.rsplit_once('=') {
        Some((d, n)) if !n.is_empty() && !n.contains('/') => (PathBuf::from(d), n.to_string()),
        _ => {
            let dir = PathBuf::from(spec);
            let name = if index == 0 {
                "default".to_string()
            } else {
                dir.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_else(|| format!("adapter{index}"))
            };
            (dir, name)
        }
    }
}

/// Loads the model with its adapters; returns the model and the adapter names in order.
fn load(args: &ModelArgs) -> Result<(PeftModel<HfModel>, tch::nn::VarStore, Vec<String>)> {
    let kind = parse_kind(&args.dtype)?;
    let options = peft_models::LoadOptions {
        kind,
        device: parse_device(&args.device)?,
        revision: args.revision.clone(),
        num_labels: None,
        quantize: args.quant.spec(kind)?,
    };
    let adapters: Vec<(PathBuf, String)> =
        args.adapters.iter().enumerate().map(|(i, s)| split_adapter(s, i)).collect();
    let task = match &args.task {
        Some(t) => Some(parse_task(t)?),
        None => match adapters.first() {
            Some((dir, _)) => {
                let cfg = peft_core::registry::load_config(dir, &mut Vec::new())?;
                cfg.common().task_type.map(Task::from_task_type)
            }
            None => None,
        },
    };
    let loaded = HfModel::load(&args.model, task, &options)
        .with_context(|| format!("loading model {}", args.model))?;
    let vs = loaded.vs;
    let mut names = Vec::new();
    let mut peft: Option<PeftModel<HfModel>> = None;
    let mut model = Some(loaded.model);
    for (dir, name) in &adapters {
        let opts = LoadOptions::named(name.clone());
        match peft.as_mut() {
            None => {
                let m = model.take().ok_or_else(|| anyhow!("internal: model consumed"))?;
                let (p, _) = PeftModel::from_pretrained(m, &vs, dir, opts)?;
                peft = Some(p);
            }
            Some(p) => {
                p.load_adapter(dir, opts)?;
            }
        }
        names.push(name.clone());
    }
    let mut peft = match (peft, model) {
        (Some(p), _) => p,
        (None, Some(m)) => {
            // No adapters: an empty PeftModel keeps one code path.
            PeftModel::wrap(m, &vs)?
        }
        (None, None) => bail!("internal: no model"),
    };
    if !args.active.is_empty() {
        let act: Vec<&str> = args.active.iter().map(String::as_str).collect();
        peft.set_adapters(&act)?;
        peft.set_requires_grad(&act, false)?;
    }
    if args.merge {
        peft.merge_adapter(None, true)?;
    }
    Ok((peft, vs, names))
}

fn read_inputs(path: &Path) -> Result<BTreeMap<String, Tensor>> {
    let tensors: BTreeMap<String, Tensor> =
        peft_core::io::read_safetensors(path)?.into_iter().map(|t| (t.key, t.tensor)).collect();
    let ids = tensors.get("input_ids").ok_or_else(|| {
        anyhow!("{}: no tensor `input_ids` (found: {:?})", path.display(), tensors.keys().collect::<Vec<_>>())
    })?;
    for key in ["input_ids", "attention_mask", "token_type_ids", "decoder_input_ids"] {
        if let Some(t) = tensors.get(key) {
            if t.kind() != Kind::Int64 {
                bail!("{}: `{key}` must be int64, found {:?}", path.display(), t.kind());
            }
            if t.dim() != 2 {
                bail!("{}: `{key}` must be [batch, seq], found shape {:?}", path.display(), t.size());
            }
        }
    }
    if let Some(m) = tensors.get("attention_mask") {
        if m.size() != ids.size() {
            bail!(
                "{}: `attention_mask` has shape {:?}, `input_ids` {:?}",
                path.display(),
                m.size(),
                ids.size()
            );
        }
    }
    Ok(tensors)
}

fn forward(
    model: &HfModel,
    t: &BTreeMap<String, Tensor>,
    device: Device,
    ctx: &ForwardCtx<'_>,
) -> Result<Tensor> {
    let on = |k: &str| t.get(k).map(|x| x.to_device(device));
    let (ids, mask, types, dec) =
        (on("input_ids"), on("attention_mask"), on("token_type_ids"), on("decoder_input_ids"));
    let inputs = ModelInputs {
        input_ids: ids.as_ref(),
        attention_mask: mask.as_ref(),
        token_type_ids: types.as_ref(),
        decoder_input_ids: dec.as_ref(),
        ..ModelInputs::default()
    };
    Ok(tch::no_grad(|| model.forward(&inputs, ctx))?.to_kind(Kind::Float).to_device(Device::Cpu))
}

fn run(args: RunArgs) -> Result<()> {
    let inputs = read_inputs(&args.input)?;
    let device = parse_device(&args.model.device)?;
    let (peft, _vs, names) = load(&args.model)?;
    let logits = if args.row_adapters.is_empty() {
        let values = peft.row_values(&inputs["input_ids"], None)?;
        let ctx = match &values {
            Some(o) => ForwardCtx::eval().with_row_values(o),
            None => ForwardCtx::eval(),
        };
        forward(peft.model(), &inputs, device, &ctx).with_context(|| args.input.display().to_string())?
    } else {
        let batch = inputs["input_ids"].size()[0];
        if args.row_adapters.len() as i64 != batch {
            bail!("--row-adapters names {} adapters for a batch of {batch} rows", args.row_adapters.len());
        }
        if args.model.merge {
            bail!("--row-adapters cannot be combined with --merge");
        }
        for name in &args.row_adapters {
            if name != peft_core::mixed::BASE && !names.contains(name) {
                bail!("--row-adapters: no adapter named {name:?} (loaded: {names:?})");
            }
        }
        // One mixed batch: every layer gathers each row's adapter (see peft_core::mixed).
        let rows: Vec<&str> = args.row_adapters.iter().map(String::as_str).collect();
        let rows = peft.row_adapters(&rows)?;
        let values = peft.row_values(&inputs["input_ids"], Some(&rows))?;
        let ctx = ForwardCtx::eval().with_rows(&rows);
        let ctx = match &values {
            Some(o) => ctx.with_row_values(o),
            None => ctx,
        };
        forward(peft.model(), &inputs, device, &ctx).with_context(|| args.input.display().to_string())?
    };
    Tensor::write_safetensors(&[("logits", &logits)], &args.output)
        .with_context(|| format!("writing {}", args.output.display()))?;
    Ok(())
}

fn inspect(args: InspectArgs) -> Result<()> {
    let dir = &args.adapter;
    let mut warnings = Vec::new();
    let config = peft_core::registry::load_config(dir, &mut warnings)?;
    let weights = dir.join(peft_core::peft_config::keys::SAFETENSORS_WEIGHTS_NAME);
    let header = peft_core::io::read_safetensors_header(&weights)?;
    let file_size = std::fs::metadata(&weights).map(|m| m.len()).unwrap_or(0);
    let params: i64 = header.iter().map(|(_, _, s)| s.iter().product::<i64>()).sum();
    let dtypes: std::collections::BTreeSet<&str> = header.iter().map(|(_, d, _)| d.as_str()).collect();
    let mut modules: Vec<String> = header
        .iter()
        .filter_map(|(k, _, _)| {
            let k = k.strip_prefix(peft_core::peft_config::keys::PEFT_PREFIX).unwrap_or(k);
            k.rsplit_once(".lora_").map(|(m, _)| m.to_string())
        })
        .collect();
    modules.dedup();
    let json = config.to_json();
    let common = config.common();
    let model_arg = args.model.clone().or_else(|| common.base_model_name_or_path.clone());
    let mut matched: Option<Vec<String>> = None;
    if let Some(m) = &model_arg {
        if let Ok(dir) = peft_models::hub::resolve(m, common.revision.as_deref()) {
            let task = common.task_type.map(Task::from_task_type);
            if let Ok(loaded) = HfModel::load_dir(&dir, task, &peft_models::LoadOptions::default()) {
                matched = Some(peft_core::inspect_targets(&loaded.model, config.as_ref())?.targeted);
            }
        }
    }
    let report = serde_json::json!({
        "path": dir.display().to_string(),
        "peft_type": common.peft_type,
        "task_type": json["task_type"],
        "base_model_name_or_path": common.base_model_name_or_path,
        "r": json.get("r"),
        "lora_alpha": json.get("lora_alpha"),
        "target_modules": json.get("target_modules"),
        "modules_to_save": json.get("modules_to_save"),
        "modules_in_file": modules,
        "targets_matched_on_base": matched,
        "tensors": header.len(),
        "parameters": params,
        "dtypes": dtypes,
        "file_bytes": file_size,
        "warnings": warnings,
    });
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!("adapter        {}", dir.display());
    println!("method         {}", common.peft_type);
    println!("task_type      {}", json["task_type"]);
    println!("base model     {}", common.base_model_name_or_path.as_deref().unwrap_or("(not set)"));
    if let Some(r) = json.get("r") {
        println!("rank / alpha   {r} / {}", json["lora_alpha"]);
    }
    println!("targets        {}", json.get("target_modules").cloned().unwrap_or_default());
    println!("modules        {} in the file: {}", modules.len(), abbreviate(&modules));
    if let Some(m) = &matched {
        println!("matched        {} modules of the base model", m.len());
    }
    println!(
        "parameters     {params} in {} tensors ({})",
        header.len(),
        dtypes.into_iter().collect::<Vec<_>>().join(", ")
    );
    println!("file           {file_size} bytes");
    for w in warnings {
        println!("warning        {w}");
    }
    Ok(())
}

fn abbreviate(v: &[String]) -> String {
    if v.len() <= 6 {
        v.join(", ")
    } else {
        format!("{}, … ({} more)", v[..6].join(", "), v.len() - 6)
    }
}

fn generate_cmd(args: GenerateArgs) -> Result<()> {
    let device = parse_device(&args.model.device)?;
    let (peft, _vs, _) = load(&args.model)?;
    let model = peft.model();
    let tok = peft_models::tokenizer::Tokenizer::from_dir(model.dir())?;
    let ids = tok.encode(&args.prompt, true)?;
    if ids.is_empty() {
        bail!("the prompt encodes to no tokens");
    }
    let input = Tensor::from_slice(&ids).unsqueeze(0).to_device(device);
    let mut cfg = GenerationConfig::for_model(model);
    cfg.max_new_tokens = args.max_new_tokens;
    cfg.do_sample = args.do_sample;
    if let Some(t) = args.temperature {
        cfg.temperature = t;
    }
    if let Some(k) = args.top_k {
        cfg.top_k = k;
    }
    if let Some(p) = args.top_p {
        cfg.top_p = p;
    }
    cfg.eos_token_ids.extend(args.stop.iter().copied());
    if let Some(s) = args.seed {
        tch::manual_seed(s);
    }
    // Per-row values from the prompt (Activated LoRA's offsets, as PEFT's generate computes them).
    let values = peft.row_values(&input, None)?;
    let ctx = match &values {
        Some(o) => ForwardCtx::eval().with_row_values(o),
        None => ForwardCtx::eval(),
    };
    let out = generate_ctx(model, &input, None, &cfg, &ctx)?;
    let all: Vec<i64> = Vec::<i64>::try_from(out.select(0, 0).to_device(Device::Cpu))?;
    let new: Vec<i64> =
        if model.task() == Task::CausalLm { all[ids.len()..].to_vec() } else { all[1..].to_vec() };
    if args.ids {
        println!("{}", new.iter().map(i64::to_string).collect::<Vec<_>>().join(" "));
    } else {
        println!("{}", tok.decode(&new, true)?);
    }
    Ok(())
}

/// A training argument's error in the flag names `peft train` takes (`learning_rate = nan` → `--lr nan`).
fn cli_names(message: &str) -> String {
    const NAMES: [(&str, &str); 11] = [
        ("learning_rate =", "--lr"),
        ("weight_decay =", "--weight-decay"),
        ("num_train_epochs =", "--epochs"),
        ("max_steps =", "--max-steps"),
        ("per_device_train_batch_size =", "--batch-size"),
        ("per_device_eval_batch_size =", "--batch-size"),
        ("gradient_accumulation_steps =", "--grad-accum"),
        ("logging_steps =", "--logging-steps"),
        ("eval_steps =", "--eval-steps"),
        ("save_steps =", "--save-steps"),
        ("loraplus_lr_ratio =", "--loraplus-lr-ratio"),
    ];
    NAMES
        .iter()
        .find(|(from, _)| message.starts_with(from))
        .map_or_else(|| message.to_string(), |(from, to)| message.replacen(from, to, 1))
}

fn pad_id_of(model: &HfModel) -> i64 {
    peft_models::task::pad_token_id(model.config()).unwrap_or(0)
}

fn train(args: TrainArgs) -> Result<()> {
    use peft_lora::LoraConfig;
    use peft_train::{data, DataOptions, Format, OptimizerKind, Schedule, Trainer, TrainingArgs};
    // Every argument is checked before anything is read, downloaded or loaded.
    let format = Format::parse(&args.format).ok_or_else(|| anyhow!("unknown --format {:?}", args.format))?;
    if args.max_length == 0 {
        bail!("--max-length 0: every example would be empty; use at least 1");
    }
    let optimizer = match args.optimizer.as_str() {
        "adamw" => OptimizerKind::Adamw,
        "loraplus" => OptimizerKind::Loraplus { ratio: args.loraplus_lr_ratio, lr_embedding: 1e-6 },
        "lorafa" => OptimizerKind::Lorafa,
        other => bail!("unknown --optimizer {other:?} (adamw, loraplus, lorafa)"),
    };
    if !args.max_grad_norm.is_finite() || args.max_grad_norm < 0.0 {
        bail!("--max-grad-norm {}: must be a finite number ≥ 0 (0 turns clipping off)", args.max_grad_norm);
    }
    let targs = TrainingArgs {
        output_dir: args.output.clone(),
        learning_rate: args.lr,
        weight_decay: args.weight_decay,
        max_grad_norm: (args.max_grad_norm > 0.0).then_some(args.max_grad_norm),
        num_train_epochs: args.epochs,
        max_steps: args.max_steps,
        lr_scheduler_type: Schedule::parse(&args.scheduler)
            .ok_or_else(|| anyhow!("unknown --scheduler {:?}", args.scheduler))?,
        warmup_steps: args.warmup_steps,
        per_device_train_batch_size: args.batch_size,
        per_device_eval_batch_size: args.batch_size,
        gradient_accumulation_steps: args.grad_accum,
        logging_steps: args.logging_steps,
        eval_steps: args.eval_steps,
        save_steps: args.save_steps,
        seed: args.seed,
        shuffle: !args.no_shuffle,
        group_by_length: args.group_by_length,
        optimizer,
        progress: !args.quiet,
        ..TrainingArgs::default()
    };
    targs.validate().map_err(|e| anyhow!("{}", cli_names(&e.to_string())))?;
    let task = if format == Format::Classification { Task::SequenceClassification } else { Task::CausalLm };
    let config = match &args.config {
        Some(path) => {
            let text = peft_core::peft_config::files::read_text_bounded(
                path,
                peft_core::peft_config::files::MAX_JSON_BYTES,
            )
            .with_context(|| format!("reading {}", path.display()))?;
            LoraConfig::from_json_str(&text, &mut Vec::new()).with_context(|| path.display().to_string())?
        }
        None => {
            if args.r < 1 {
                bail!("--r {}: the LoRA rank must be at least 1", args.r);
            }
            if !args.lora_alpha.is_finite() {
                bail!("--lora-alpha {}: must be a finite number", args.lora_alpha);
            }
            if !(0.0..1.0).contains(&args.lora_dropout) {
                bail!("--lora-dropout {}: must be in [0, 1)", args.lora_dropout);
            }
            let mut c = LoraConfig {
                r: args.r,
                lora_alpha: args.lora_alpha.into(),
                lora_dropout: args.lora_dropout,
                use_rslora: args.use_rslora,
                ..LoraConfig::default()
            };
            c.target_modules = match args.target_modules.as_slice() {
                [] => None,
                [one] if one.eq_ignore_ascii_case("all-linear") => {
                    Some(peft_core::peft_config::TargetModules::Regex(one.clone()))
                }
                many => Some(peft_core::peft_config::TargetModules::list(many.iter().cloned())),
            };
            c.common.task_type = Some(if task == Task::CausalLm {
                peft_core::peft_config::TaskType::CausalLm
            } else {
                peft_core::peft_config::TaskType::SeqCls
            });
            c
        }
    };
    let model_dir = peft_models::hub::resolve(&args.model, args.revision.as_deref())?;
    let tok = peft_models::tokenizer::Tokenizer::from_dir(&model_dir)?;
    let generation = peft_models::HfConfig::from_dir(&model_dir)?.eos_token_ids();
    let opts = DataOptions {
        max_length: Some(args.max_length),
        eos_token_id: generation.first().copied(),
        ..DataOptions::default()
    }
    .with_tokenizer_config(&model_dir);
    let train_data = data::load_jsonl(&args.data, format, &tok, &opts)?;
    let eval_opts = DataOptions { label_names: Some(train_data.label_names.clone()), ..opts.clone() };
    let eval_data =
        args.eval_data.as_ref().map(|p| data::load_jsonl(p, format, &tok, &eval_opts)).transpose()?;
    let kind = parse_kind(&args.dtype)?;
    let load = peft_models::LoadOptions {
        kind,
        device: parse_device(&args.device)?,
        revision: args.revision.clone(),
        num_labels: (task == Task::SequenceClassification).then_some(train_data.label_names.len() as i64),
        quantize: args.quant.spec(kind)?,
    };
    let loaded = HfModel::load_dir(&model_dir, Some(task), &load)?;
    let pad_id = pad_id_of(&loaded.model);
    let mut config = config;
    config.common.base_model_name_or_path = Some(args.model.clone());
    // The seed fixes the adapter's initialisation too, so a run is reproducible end to end.
    tch::manual_seed(args.seed as i64);
    let mut peft = PeftModel::new(loaded.model, &loaded.vs, config.boxed(), "default")?;
    println!("{}", peft.trainable_parameters_line());
    let mut trainer = Trainer::new(&mut peft, targs)?;
    if let Some(ckpt) = &args.resume {
        trainer.resume_from(ckpt)?;
    }
    let summary = trainer.train(&train_data, eval_data.as_ref(), &peft_train::hf_loss, pad_id)?;
    println!("{summary}");
    println!("adapter saved to {}", args.output.display());
    Ok(())
}
