//! Resolving a model argument to a local directory: a path, or a hub model id found in the local HF
//! cache (downloaded when missing and the hub is reachable).
//!
//! The cache is `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub` — the same place
//! Python's `huggingface_hub` uses, so models downloaded by either are shared. `HF_HUB_OFFLINE=1` never
//! touches the network.

use crate::error::{ModelError, Result};
use hf_hub::{Cache, Repo, RepoType};
use std::path::{Path, PathBuf};

/// The HF hub cache directory, as `huggingface_hub` computes it.
pub fn cache_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("HF_HUB_CACHE").filter(|v| !v.is_empty()) {
        return PathBuf::from(p);
    }
    if let Some(home) = std::env::var_os("HF_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(home).join("hub");
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"));
    base.join("huggingface").join("hub")
}

fn offline() -> bool {
    std::env::var("HF_HUB_OFFLINE")
        .is_ok_and(|v| !v.is_empty() && v != "0" && !v.eq_ignore_ascii_case("false"))
}

/// Files a model needs besides its weights (optional ones may be absent).
const OPTIONAL_FILES: &[&str] = &["tokenizer.json", "generation_config.json", "tokenizer_config.json"];

/// A local directory for `model`: the path itself when it is a directory, else the snapshot of the hub
/// model id `model` (at `revision`, default `main`) in the HF cache.
///
/// # Errors
/// [`ModelError::Hub`] when the id is neither a directory nor cached (offline), or the download fails.
pub fn resolve(model: &str, revision: Option<&str>) -> Result<PathBuf> {
    let as_path = Path::new(model);
    if as_path.is_dir() {
        return Ok(as_path.to_path_buf());
    }
    if model.starts_with('.') || model.starts_with('/') || model.matches('/').count() > 1 {
        return Err(ModelError::Hub { model_id: model.into(), message: "no such directory".into() });
    }
    resolve_in(&cache_dir(), model, revision.unwrap_or("main"), offline())
}

/// [`resolve`] against an explicit cache directory.
///
/// # Errors
/// As [`resolve`].
pub fn resolve_in(cache: &Path, model_id: &str, revision: &str, offline: bool) -> Result<PathBuf> {
    let hub_err = |message: String| ModelError::Hub { model_id: model_id.to_string(), message };
    let repo = Repo::with_revision(model_id.to_string(), RepoType::Model, revision.to_string());
    let cached = Cache::new(cache.to_path_buf()).repo(repo.clone());
    if let Some(config) = cached.get("config.json") {
        let dir = config.parent().map(Path::to_path_buf).unwrap_or_default();
        if crate::weights::checkpoint_files(&dir).is_ok() {
            return Ok(dir);
        }
    }
    if offline {
        return Err(hub_err(format!(
            "not in the HF cache at {} and HF_HUB_OFFLINE is set (download it once, or pass a directory)",
            cache.display()
        )));
    }
    let api = hf_hub::api::sync::ApiBuilder::from_cache(Cache::new(cache.to_path_buf()))
        .with_progress(true)
        .build()
        .map_err(|e| hub_err(format!("cannot reach the hub: {e}")))?;
    let remote = api.repo(repo);
    let config = remote.get("config.json").map_err(|e| hub_err(format!("config.json: {e}")))?;
    let dir = config.parent().map(Path::to_path_buf).unwrap_or_default();
    match remote.get("model.safetensors") {
        Ok(_) => {}
        Err(_) => {
            let index = remote
                .get("model.safetensors.index.json")
                .map_err(|e| hub_err(format!("no safetensors weights: {e}")))?;
            let text = peft_core::peft_config::files::read_text_bounded(
                &index,
                peft_core::peft_config::files::MAX_JSON_BYTES,
            )
            .map_err(|e| hub_err(e.to_string()))?;
            let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| hub_err(e.to_string()))?;
            let files: std::collections::BTreeSet<String> = v["weight_map"]
                .as_object()
                .map(|m| m.values().filter_map(|f| f.as_str().map(str::to_string)).collect())
                .unwrap_or_default();
            for f in files {
                remote.get(&f).map_err(|e| hub_err(format!("{f}: {e}")))?;
            }
        }
    }
    for f in OPTIONAL_FILES {
        let _ = remote.get(f);
    }
    Ok(dir)
}
