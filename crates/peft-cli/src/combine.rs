//! `peft combine`: LoRA adapters loaded onto their base and combined into a new adapter with PEFT's
//! `add_weighted_adapter` (every combination type and option of `peft_lora::weighted`), saved as a PEFT
//! adapter directory.

use crate::{load, parse_kind, split_adapter, ModelArgs, QuantArgs};
use anyhow::{bail, Context, Result};
use clap::Args;
use peft_core::SaveOptions;
use peft_lora::merge_utils::MajoritySign;
use peft_lora::weighted::{Combination, WeightedAdapterOptions};
use peft_lora::LoraModelExt;
use std::path::PathBuf;

/// The name the combined adapter gets while in the model (so that it is saved at the top of `--output`).
const COMBINED: &str = peft_core::peft_config::keys::DEFAULT_ADAPTER_NAME;

#[derive(Args, Debug)]
pub(crate) struct CombineArgs {
    /// The base model: a directory, a hub model id or a `.gguf` file.
    #[arg(long)]
    model: String,
    /// Hub revision of the model.
    #[arg(long)]
    revision: Option<String>,
    /// A LoRA adapter directory or hub id, optionally `=NAME` (default: the directory name). Repeat:
    /// every adapter given is combined.
    #[arg(long = "adapter", required = true)]
    adapters: Vec<String>,
    /// One weight per adapter (comma-separated; default: 1 each).
    #[arg(long, value_delimiter = ',', allow_negative_numbers = true)]
    weights: Vec<f64>,
    /// svd, linear, cat, ties, ties_svd, dare_linear, dare_ties, dare_linear_svd, dare_ties_svd,
    /// magnitude_prune, magnitude_prune_svd.
    #[arg(long, default_value = "svd")]
    combination_type: String,
    /// Rank of the SVD types' result (default: the largest rank among the adapters).
    #[arg(long)]
    svd_rank: Option<i64>,
    /// Quantile at which the SVD factors are clamped.
    #[arg(long)]
    svd_clamp: Option<f64>,
    /// Reduced instead of full SVD (the same result up to the rank).
    #[arg(long)]
    no_svd_full_matrices: bool,
    /// Fraction of entries the pruning types keep (ties, dare_*, magnitude_prune*).
    #[arg(long)]
    density: Option<f64>,
    /// Sign election of the TIES types: total or frequency.
    #[arg(long, default_value = "total")]
    majority_sign_method: String,
    /// Give the new adapter scaling 1 also with rsLoRA (PEFT leaves it at √r).
    #[arg(long)]
    unit_scaling: bool,
    /// Flatten Conv1d/Conv3d delta weights for the SVD types (PEFT flattens only Conv2d).
    #[arg(long)]
    flatten_all_convs: bool,
    /// Random seed (`torch.manual_seed`) set right before combining: DARE's random pruning then equals
    /// PEFT's under the same seed.
    #[arg(long, default_value_t = 0)]
    seed: i64,
    /// Task head (default: the first adapter's task_type).
    #[arg(long)]
    task: Option<String>,
    /// Weights dtype of the base: f32, bf16, f16.
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// The adapter directory to write.
    #[arg(long)]
    output: PathBuf,
}

pub(crate) fn combine(args: CombineArgs) -> Result<()> {
    let combination = Combination::parse(&args.combination_type)?;
    let majority_sign = MajoritySign::parse(&args.majority_sign_method)?;
    parse_kind(&args.dtype)?;
    let weights = if args.weights.is_empty() { vec![1.0; args.adapters.len()] } else { args.weights.clone() };
    if weights.len() != args.adapters.len() {
        bail!("--weights gives {} weights for {} adapters", weights.len(), args.adapters.len());
    }
    // Every adapter is named (by its directory unless `=NAME`), none `default`: that name is the result's.
    let mut names: Vec<String> = Vec::new();
    let mut specs: Vec<String> = Vec::new();
    for spec in &args.adapters {
        let (dir, name) = split_adapter(spec, 1);
        if name == COMBINED {
            bail!("--adapter {spec}: the name `{COMBINED}` is kept for the combined adapter; give it another (=NAME)");
        }
        if names.contains(&name) {
            bail!("--adapter {spec}: two adapters are named `{name}`; name them with DIR=NAME");
        }
        specs.push(format!("{}={name}", dir.display()));
        names.push(name);
    }
    let model_args = ModelArgs {
        model: args.model.clone(),
        revision: args.revision.clone(),
        adapters: specs,
        active: Vec::new(),
        merge: false,
        task: args.task.clone(),
        dtype: args.dtype.clone(),
        device: "cpu".into(),
        quant: QuantArgs {
            load_in_4bit: false,
            load_in_8bit: false,
            quant_type: "nf4".into(),
            no_double_quant: false,
        },
    };
    let (mut peft, _vs, _) = load(&model_args)?;
    let options = WeightedAdapterOptions {
        combination,
        svd_rank: args.svd_rank,
        svd_clamp: args.svd_clamp,
        svd_full_matrices: !args.no_svd_full_matrices,
        density: args.density,
        majority_sign,
        unit_scaling: args.unit_scaling,
        flatten_all_convs: args.flatten_all_convs,
    };
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    tch::manual_seed(args.seed);
    let warnings = peft
        .add_weighted_adapter(&refs, &weights, COMBINED, &options)
        .with_context(|| format!("combining {} ({})", names.join(", "), combination.name()))?;
    for w in warnings {
        log::warn!("{w}");
    }
    let save = SaveOptions { selected_adapters: Some(vec![COMBINED.to_string()]), ..SaveOptions::default() };
    peft.save_pretrained(&args.output, &save)?;
    println!("combined adapter ({}) saved to {}", combination.name(), args.output.display());
    Ok(())
}
