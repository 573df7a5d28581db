//! `peft inspect`: what an adapter directory holds, and which modules of its base model it targets.
//! It never downloads: the base model comes from `--model` or, failing that, from the local HF cache.

use anyhow::Result;
use clap::Args;
use peft_models::{HfModel, Task};
use std::path::PathBuf;

#[derive(Args, Debug)]
pub(crate) struct InspectArgs {
    /// The adapter directory.
    adapter: PathBuf,
    /// Match the adapter's targets against this model (default: its base_model_name_or_path when that is
    /// a local directory or already in the HF cache; inspect never downloads it).
    #[arg(long)]
    model: Option<String>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub(crate) fn inspect(args: InspectArgs) -> Result<()> {
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
    // An explicit `--model` resolves as for every command; the adapter's own base_model_name_or_path
    // (untrusted, and possibly large) only from disk or the local cache: inspect never downloads it.
    let base = match (&args.model, &common.base_model_name_or_path) {
        (Some(m), _) => Some(peft_models::hub::resolve(m, common.revision.as_deref())?),
        (None, Some(m)) => match peft_models::hub::resolve_local(m, common.revision.as_deref()) {
            Ok(dir) => Some(dir),
            Err(e) => {
                log::info!("not matching targets against the base model: {e} (inspect never downloads; pass --model)");
                None
            }
        },
        (None, None) => None,
    };
    let mut matched: Option<Vec<String>> = None;
    if let Some(dir) = base {
        let task = common.task_type.map(Task::from_task_type);
        let loaded = HfModel::load_path(&dir, task, &peft_models::LoadOptions::default());
        match loaded {
            Ok(loaded) => {
                matched = Some(peft_core::inspect_targets(&loaded.model, config.as_ref())?.targeted)
            }
            Err(e) if args.model.is_some() => return Err(e.into()),
            Err(e) => log::warn!("the base model {} does not load: {e}", dir.display()),
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
        for w in &warnings {
            log::warn!("{}: {w}", dir.display());
        }
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
        log::warn!("{}: {w}", dir.display());
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
