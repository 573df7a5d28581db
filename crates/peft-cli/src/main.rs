//! `peft`: run HF models with PEFT adapters without Python.
//!
//! * `peft run` — logits for token ids from a safetensors file (the stable contract external parity
//!   checks use: flags and tensor names do not change).
//! * `peft inspect` — what an adapter directory holds.
//! * `peft generate` — text generation with a model and adapters.
//! * `peft train` — LoRA fine-tuning on a JSONL dataset.
//! * `peft merge` — adapters merged into the base, written as a transformers checkpoint.
//! * `peft combine` — LoRA adapters combined into a new one (`add_weighted_adapter`).
//! * `peft convert` — a legacy `adapter_model.bin` to safetensors, or a PiSSA/OLoRA-style adapter to
//!   plain LoRA for the original base.
//!
//! Results go to stdout (or the `--output` file); errors, warnings and other log messages to stderr.
#![allow(clippy::print_stdout)]

mod combine;
mod convert;
mod generate;
mod inspect;
mod logging;
mod merge;
mod run;
mod train;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use peft_core::{LoadOptions, PeftModel};
use peft_models::{HfModel, Task};
use std::path::PathBuf;
use tch::{Device, Kind};

// Linking the method crates registers their peft_types.
use peft as _;

#[derive(Parser, Debug)]
#[command(name = "peft", version, about = "Run HF models with PEFT adapters (peft-rs)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Errors only on stderr (no warnings, no progress bar).
    #[arg(short, long, global = true)]
    quiet: bool,
    /// More messages on stderr: -v info (the load report), -vv debug, -vvv trace. Without -q or -v,
    /// RUST_LOG chooses (e.g. `info` or `peft_core=debug`); else warnings are shown.
    #[arg(short, long, global = true, action = clap::ArgAction::Count, conflicts_with = "quiet")]
    verbose: u8,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Compute logits for `input_ids` (and `attention_mask`) read from a safetensors file.
    Run(run::RunArgs),
    /// Describe an adapter directory.
    Inspect(inspect::InspectArgs),
    /// Generate text.
    Generate(generate::GenerateArgs),
    /// Fine-tune a model with LoRA on a JSONL dataset and save a PEFT adapter.
    Train(Box<train::TrainArgs>),
    /// Merge adapters into the base model and write a transformers checkpoint.
    Merge(merge::MergeArgs),
    /// Combine LoRA adapters into a new adapter (PEFT's `add_weighted_adapter`).
    Combine(combine::CombineArgs),
    /// Convert an adapter: `adapter_model.bin` to safetensors, or PiSSA/OLoRA/CorDA/LoRA-GA to plain LoRA.
    Convert(convert::ConvertArgs),
}

#[derive(Args, Debug)]
pub(crate) struct ModelArgs {
    /// A model directory or a hub model id (resolved through the HF cache; HF_HOME, HF_HUB_CACHE and
    /// HF_HUB_OFFLINE are honoured).
    #[arg(long)]
    pub(crate) model: String,
    /// Hub revision.
    #[arg(long)]
    pub(crate) revision: Option<String>,
    /// An adapter directory or hub id (resolved through the HF cache, as `--model`), optionally `=NAME`
    /// (default names: `default`, then the directory name). Repeat for several adapters.
    #[arg(long = "adapter")]
    pub(crate) adapters: Vec<String>,
    /// Adapters to activate (comma-separated; default: the first).
    #[arg(long, value_delimiter = ',')]
    pub(crate) active: Vec<String>,
    /// Merge the active adapters into the weights before running.
    #[arg(long)]
    pub(crate) merge: bool,
    /// Task head: causal-lm, seq2seq-lm, sequence-classification, token-classification,
    /// question-answering, feature-extraction (default: the adapter's task_type, else the model's
    /// `architectures`).
    #[arg(long)]
    pub(crate) task: Option<String>,
    /// Weights dtype: f32, bf16, f16.
    #[arg(long, default_value = "f32")]
    pub(crate) dtype: String,
    /// cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "cpu")]
    pub(crate) device: String,
    #[command(flatten)]
    pub(crate) quant: QuantArgs,
}

/// Quantized frozen bases (bitsandbytes-compatible; checkpoints saved quantized load quantized anyway).
#[derive(Args, Debug, Clone)]
pub(crate) struct QuantArgs {
    /// Quantize the linear layers to 4 bits on load (QLoRA: NF4 with double quantization).
    #[arg(long, conflicts_with = "load_in_8bit")]
    pub(crate) load_in_4bit: bool,
    /// Quantize the linear layers to LLM.int8 on load.
    #[arg(long)]
    pub(crate) load_in_8bit: bool,
    /// 4-bit data type: nf4 or fp4.
    #[arg(long, default_value = "nf4")]
    pub(crate) quant_type: String,
    /// Keep the 4-bit block maxima in f32 instead of quantizing them too.
    #[arg(long)]
    pub(crate) no_double_quant: bool,
}

impl QuantArgs {
    pub(crate) fn spec(&self, compute: tch::Kind) -> Result<Option<peft_quant::QuantizeSpec>> {
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
    if let Err(e) = logging::init(cli.quiet, cli.verbose) {
        eprintln!("error: {e}");
        std::process::exit(EXIT_ERROR);
    }
    let quiet = cli.quiet;
    let outcome = std::panic::catch_unwind(move || match cli.command {
        Command::Run(a) => run::run(a),
        Command::Inspect(a) => inspect::inspect(a),
        Command::Generate(a) => generate::generate(a),
        Command::Train(a) => train::train(*a, quiet),
        Command::Merge(a) => merge::merge(a),
        Command::Combine(a) => combine::combine(a),
        Command::Convert(a) => convert::convert(a),
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

pub(crate) fn parse_kind(s: &str) -> Result<Kind> {
    Ok(match s {
        "f32" | "float32" => Kind::Float,
        "bf16" | "bfloat16" => Kind::BFloat16,
        "f16" | "float16" => Kind::Half,
        other => bail!("unknown --dtype {other:?} (f32, bf16, f16)"),
    })
}

pub(crate) fn parse_device(s: &str) -> Result<Device> {
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

pub(crate) fn parse_task(s: &str) -> Result<Task> {
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
pub(crate) fn split_adapter(spec: &str, index: usize) -> (PathBuf, String) {
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

/// `--adapter` values resolved: `DIR[=NAME]` or `HUB_ID[=NAME]` → (local dir, name).
pub(crate) fn resolve_adapters(specs: &[String]) -> Result<Vec<(PathBuf, String)>> {
    specs
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let (dir, name) = split_adapter(s, i);
            Ok((resolve_adapter(&dir)?, name))
        })
        .collect()
}

/// An adapter directory as it is, else a hub adapter id through the HF cache
/// ([`peft_models::hub::resolve_adapter`]).
pub(crate) fn resolve_adapter(dir: &std::path::Path) -> Result<PathBuf> {
    Ok(peft_models::hub::resolve_adapter(dir)?)
}

/// Warns loudly about task-head weights that are in neither the model checkpoint nor an active
/// adapter: they keep a random initialisation, so the outputs mean nothing (transformers' "You should
/// probably TRAIN this model" case).
fn warn_random_heads(peft: &PeftModel<HfModel>) -> Result<()> {
    let fresh = peft.model().fresh_weights();
    if fresh.is_empty() {
        return Ok(());
    }
    let mut provided = std::collections::BTreeSet::new();
    for adapter in peft.active_adapters() {
        for (key, _) in peft.adapter_state_dict(adapter)? {
            provided.insert(key);
        }
    }
    let prefix = peft_core::peft_config::keys::PEFT_PREFIX;
    let random: Vec<&String> = fresh.iter().filter(|w| !provided.contains(&format!("{prefix}{w}"))).collect();
    if !random.is_empty() {
        log::warn!(
            "{}: {} not in the model checkpoint nor in an active adapter: randomly initialised, so the {} \
             outputs are not meaningful (load an adapter that saves the head, e.g. with modules_to_save)",
            peft.model().dir().display(),
            random.iter().map(|w| format!("`{w}`")).collect::<Vec<_>>().join(", "),
            peft.model().task()
        );
    }
    Ok(())
}

/// Loads the model with its adapters; returns the model and the adapter names in order.
pub(crate) fn load(args: &ModelArgs) -> Result<(PeftModel<HfModel>, tch::nn::VarStore, Vec<String>)> {
    let kind = parse_kind(&args.dtype)?;
    let options = peft_models::LoadOptions {
        kind,
        device: parse_device(&args.device)?,
        revision: args.revision.clone(),
        num_labels: None,
        quantize: args.quant.spec(kind)?,
    };
    let adapters = resolve_adapters(&args.adapters)?;
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
    warn_random_heads(&peft)?;
    if args.merge {
        peft.merge_adapter(None, true)?;
    }
    Ok((peft, vs, names))
}

pub(crate) fn pad_id_of(model: &HfModel) -> i64 {
    peft_models::task::pad_token_id(model.config()).unwrap_or(0)
}
