//! `peft generate`: text generation with a model and its adapters.

use crate::{load, parse_device, ModelArgs};
use anyhow::{bail, Result};
use clap::Args;
use peft_core::ForwardCtx;
use peft_models::generate::{generate_ctx, GenerationConfig};
use peft_models::Task;
use tch::{Device, Tensor};

#[derive(Args, Debug)]
pub(crate) struct GenerateArgs {
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

pub(crate) fn generate(args: GenerateArgs) -> Result<()> {
    let device = parse_device(&args.model.device)?;
    let (peft, _vs, _) = load(&args.model)?;
    let model = peft.model();
    let tok = peft_models::tokenizer::Tokenizer::for_model(model.dir())?;
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
