//! `peft run`: logits for token ids read from a safetensors file.

use crate::{load, parse_device, ModelArgs};
use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use peft_core::ForwardCtx;
use peft_models::{HfModel, ModelInputs};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

#[derive(Args, Debug)]
pub(crate) struct RunArgs {
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

pub(crate) fn run(args: RunArgs) -> Result<()> {
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
    peft_core::io::write_safetensors(&args.output, &[("logits".to_string(), logits)])
        .with_context(|| format!("writing {}", args.output.display()))?;
    Ok(())
}
