//! `peft train`: LoRA fine-tuning on a JSONL dataset, saving a PEFT adapter.

use crate::{pad_id_of, parse_device, parse_kind, QuantArgs};
use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use peft_core::{MethodConfig, PeftModel};
use peft_models::{HfModel, Task};
use std::path::PathBuf;

#[derive(Args, Debug)]
pub(crate) struct TrainArgs {
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
    /// An adapter_config.json of any linked method to use instead of the LoRA flags (an AdaLoRA config
    /// trains with PEFT's rank allocation; its total_step must be the number of optimizer steps).
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
    /// Chat format: loss on the assistant turns only (the chat template's `{% generation %}` blocks, as
    /// TRL's `assistant_only_loss`).
    #[arg(long)]
    assistant_only_loss: bool,
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
    /// Output directory (adapter, training_args.json, metrics.jsonl, loss.png).
    #[arg(long)]
    output: PathBuf,
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

pub(crate) fn train(args: TrainArgs, quiet: bool) -> Result<()> {
    use peft_lora::LoraConfig;
    use peft_train::{data, DataOptions, Format, OptimizerKind, Schedule, Trainer, TrainingArgs};
    // Every argument is checked before anything is read, downloaded or loaded.
    let format = Format::parse(&args.format).ok_or_else(|| anyhow!("unknown --format {:?}", args.format))?;
    if args.assistant_only_loss && format != Format::Chat {
        return Err(anyhow!("--assistant-only-loss needs --format chat"));
    }
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
        progress: !quiet,
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
            peft_core::registry::config_from_str(&text, &mut Vec::new())
                .with_context(|| path.display().to_string())?
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
            c.boxed()
        }
    };
    let model_dir = peft_models::hub::resolve(&args.model, args.revision.as_deref())?;
    let tok = peft_models::tokenizer::Tokenizer::for_model(&model_dir)?;
    let opts = DataOptions {
        max_length: Some(args.max_length),
        assistant_only_loss: args.assistant_only_loss,
        ..DataOptions::default()
    };
    let opts = if peft_models::gguf::is_gguf(&model_dir) {
        gguf_data_options(opts, &model_dir)?
    } else {
        let generation = peft_models::HfConfig::from_dir(&model_dir)?.eos_token_ids();
        DataOptions { eos_token_id: generation.first().copied(), ..opts }.with_tokenizer_config(&model_dir)
    };
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
    let loaded = HfModel::load_path(&model_dir, Some(task), &load)?;
    let pad_id = pad_id_of(&loaded.model);
    let mut config = config;
    config.common_mut().base_model_name_or_path = Some(args.model.clone());
    // The seed fixes the adapter's initialisation too, so a run is reproducible end to end.
    tch::manual_seed(args.seed as i64);
    let mut peft = PeftModel::new(loaded.model, &loaded.vs, config, "default")?;
    println!("{}", peft.trainable_parameters_line());
    // AdaMSS's ASA schedule is a callback PEFT users register in their loop; `peft train` does it for them
    // (peft-train cannot: peft-adamss depends on it). AdaLoRA's allocator the Trainer adds by itself.
    let asa = peft.config("default").and_then(|c| c.as_any().downcast_ref::<peft::adamss::AdamssConfig>());
    let use_asa = asa.is_some_and(|c| c.use_asa);
    let mut trainer = Trainer::new(&mut peft, targs)?;
    if use_asa {
        trainer.add_callback(Box::new(peft::adamss::AsaCallback::new()));
    }
    if let Some(ckpt) = &args.resume {
        trainer.resume_from(ckpt)?;
    }
    let summary = trainer.train(&train_data, eval_data.as_ref(), &peft_train::hf_loss, pad_id)?;
    println!("{summary}");
    println!("adapter saved to {}", args.output.display());
    Ok(())
}

/// What a model directory's `tokenizer_config.json` gives the data pipeline, from a GGUF file's metadata:
/// the chat template, the special tokens a template reads, and the EOS id appended to texts.
fn gguf_data_options(
    opts: peft_train::DataOptions,
    path: &std::path::Path,
) -> Result<peft_train::DataOptions> {
    let file = peft_models::gguf::Gguf::open(path)?;
    let (specials, template) = peft_models::gguf_tokenizer::special_tokens_and_template(&file)?;
    let eos = file.get("tokenizer.ggml.eos_token_id").and_then(|v| v.as_i64());
    Ok(peft_train::DataOptions {
        chat_template: template,
        special_tokens: specials.into_iter().collect(),
        eos_token_id: eos,
        ..opts
    })
}
