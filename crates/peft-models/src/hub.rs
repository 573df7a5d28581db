//! Resolving a model argument to a local directory: a path, or a hub model id found in the local HF
//! cache (downloaded when missing and the hub is reachable).
//!
//! The cache is `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub` — the same place
//! Python's `huggingface_hub` uses, so models downloaded by either are shared. `HF_HUB_OFFLINE=1` never
//! touches the network. Downloads go to `$HF_ENDPOINT` (default `https://huggingface.co`) with the token
//! huggingface_hub would send (`$HF_TOKEN`, else the token file). Only arguments of the hub's id form
//! (`name` or `namespace/name`) are looked up on the hub; anything that looks like a path and is not a
//! directory is an error naming it.

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

/// `$HF_HOME`, else `$XDG_CACHE_HOME/huggingface`, else `~/.cache/huggingface`.
fn hf_home(env: &dyn Fn(&str) -> Option<String>) -> PathBuf {
    if let Some(home) = env("HF_HOME") {
        return PathBuf::from(home);
    }
    env("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| env("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"))
        .join("huggingface")
}

/// A non-empty environment variable.
fn var(key: &str) -> Option<String> {
    std::env::var(key).ok().filter(|v| !v.is_empty())
}

/// The hub's base URL: `$HF_ENDPOINT` (without a trailing `/`), else `https://huggingface.co`.
pub fn endpoint() -> String {
    endpoint_from(&var)
}

fn endpoint_from(env: &dyn Fn(&str) -> Option<String>) -> String {
    env("HF_ENDPOINT")
        .map(|e| e.trim_end_matches('/').to_string())
        .unwrap_or_else(|| "https://huggingface.co".to_string())
}

/// The access token as huggingface_hub resolves it: `$HF_TOKEN`, else the deprecated
/// `$HUGGING_FACE_HUB_TOKEN`, else the first line of the token file (`$HF_TOKEN_PATH`, else
/// `$HF_HOME/token`) that `huggingface-cli login` writes; none when empty.
pub fn token() -> Option<String> {
    token_from(&var)
}

fn token_from(env: &dyn Fn(&str) -> Option<String>) -> Option<String> {
    let clean = |t: String| Some(t.trim().to_string()).filter(|t| !t.is_empty());
    if let Some(t) = env("HF_TOKEN").or_else(|| env("HUGGING_FACE_HUB_TOKEN")) {
        return clean(t);
    }
    let path = env("HF_TOKEN_PATH").map(PathBuf::from).unwrap_or_else(|| hf_home(env).join("token"));
    let text = peft_core::peft_config::files::read_text_bounded(&path, 64 * 1024).ok()?;
    clean(text.lines().next().unwrap_or_default().to_string())
}

/// True for a string of the hub's repository-id form: `name` or `namespace/name`, each part of ASCII
/// letters, digits, `-`, `_` and `.`, not starting or ending with `-` or `.`, without `--` or `..`, at
/// most 96 characters.
pub fn is_hub_id(s: &str) -> bool {
    let part = |p: &str| {
        !p.is_empty()
            && p.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            && !p.starts_with(['-', '.'])
            && !p.ends_with(['-', '.'])
            && !p.contains("--")
            && !p.contains("..")
    };
    let parts: Vec<&str> = s.split('/').collect();
    s.len() <= 96 && (1..=2).contains(&parts.len()) && parts.iter().all(|p| part(p))
}

/// Why `model` (not a directory) is no hub id either: `None` when it may go to the hub. A string of the
/// id form whose first part is a local directory (`models/llama` with `models/` here) is a mistyped path.
fn not_a_hub_id(model: &str) -> Option<String> {
    not_a_hub_id_in(Path::new("."), model)
}

/// [`not_a_hub_id`] for relative paths taken from `base`.
fn not_a_hub_id_in(base: &Path, model: &str) -> Option<String> {
    if !is_hub_id(model) {
        return Some("no such directory (and not a hub model id)".into());
    }
    match model.split_once('/') {
        Some((first, _)) if base.join(first).is_dir() => {
            Some(format!("no such directory (`{first}/` is a local directory, so this is read as a path)"))
        }
        _ => None,
    }
}

/// [`resolve`] without the network: a directory, a `.gguf` file, or the snapshot already in the local HF
/// cache.
///
/// # Errors
/// [`ModelError::Hub`] when `model` is neither.
pub fn resolve_local(model: &str, revision: Option<&str>) -> Result<PathBuf> {
    resolve_with(model, revision, true)
}

/// [`resolve`] and [`resolve_local`]: a local directory or `.gguf` file as it is, else a hub id through
/// the cache (`offline`: never the network).
fn resolve_with(model: &str, revision: Option<&str>, offline: bool) -> Result<PathBuf> {
    let as_path = Path::new(model);
    if as_path.is_dir() || crate::gguf::is_gguf(as_path) {
        return Ok(as_path.to_path_buf());
    }
    if let Some(message) = not_a_hub_id(model) {
        return Err(ModelError::Hub { model_id: model.into(), message });
    }
    resolve_in(&cache_dir(), model, revision.unwrap_or("main"), offline)
}

fn offline() -> bool {
    std::env::var("HF_HUB_OFFLINE")
        .is_ok_and(|v| !v.is_empty() && v != "0" && !v.eq_ignore_ascii_case("false"))
}

/// Files a model needs besides its weights (optional ones may be absent).
const OPTIONAL_FILES: &[&str] = &["tokenizer.json", "generation_config.json", "tokenizer_config.json"];

/// A local path for `model`: the path itself when it is a directory or a `.gguf` file, else the snapshot
/// of the hub model id `model` (at `revision`, default `main`) in the HF cache, downloaded from the hub
/// when it is not there yet.
///
/// # Errors
/// [`ModelError::Hub`] when the id is neither a directory nor cached (offline), or the download fails.
pub fn resolve(model: &str, revision: Option<&str>) -> Result<PathBuf> {
    resolve_with(model, revision, offline())
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
    let remote = remote_repo(cache, repo, offline).map_err(hub_err)?;
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

/// The hub side of a repository not (fully) in the cache, or why it cannot be reached.
fn remote_repo(
    cache: &Path,
    repo: Repo,
    offline: bool,
) -> std::result::Result<hf_hub::api::sync::ApiRepo, String> {
    if offline {
        return Err(format!(
            "not in the HF cache at {} and HF_HUB_OFFLINE is set (download it once, or pass a directory)",
            cache.display()
        ));
    }
    let api = hf_hub::api::sync::ApiBuilder::from_cache(Cache::new(cache.to_path_buf()))
        .with_endpoint(endpoint())
        .with_token(token())
        .with_progress(true)
        .build()
        .map_err(|e| format!("cannot reach the hub: {e}"))?;
    Ok(api.repo(repo))
}

/// A PEFT adapter by directory or hub id: a directory (or anything not of the hub id form) as it is,
/// else the snapshot of the id at `main` in the HF cache holding `adapter_config.json` and
/// `adapter_model.safetensors`, downloaded when missing unless `HF_HUB_OFFLINE` is set — as
/// [`resolve`] does for models.
///
/// # Errors
/// [`ModelError::Hub`] when the id is not cached (offline) or the download fails.
pub fn resolve_adapter(adapter: &Path) -> Result<PathBuf> {
    resolve_adapter_in(&cache_dir(), adapter, offline())
}

/// [`resolve_adapter`] against an explicit cache directory.
///
/// # Errors
/// As [`resolve_adapter`].
pub fn resolve_adapter_in(cache: &Path, adapter: &Path, offline: bool) -> Result<PathBuf> {
    use peft_core::peft_config::keys::{CONFIG_NAME, SAFETENSORS_WEIGHTS_NAME};
    let id = adapter.to_string_lossy();
    if adapter.is_dir() || !is_hub_id(&id) {
        // A missing directory is reported by the adapter loader, naming the file it looked for.
        return Ok(adapter.to_path_buf());
    }
    let hub_err = |message: String| ModelError::Hub { model_id: format!("adapter {id}"), message };
    let repo = Repo::with_revision(id.to_string(), RepoType::Model, "main".to_string());
    if let Some(config) = Cache::new(cache.to_path_buf()).repo(repo.clone()).get(CONFIG_NAME) {
        if let Some(dir) = config.parent().filter(|d| d.join(SAFETENSORS_WEIGHTS_NAME).is_file()) {
            return Ok(dir.to_path_buf());
        }
    }
    let remote = remote_repo(cache, repo, offline).map_err(hub_err)?;
    let config = remote.get(CONFIG_NAME).map_err(|e| hub_err(format!("{CONFIG_NAME}: {e}")))?;
    remote.get(SAFETENSORS_WEIGHTS_NAME).map_err(|e| hub_err(format!("{SAFETENSORS_WEIGHTS_NAME}: {e}")))?;
    Ok(config.parent().map(Path::to_path_buf).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> =
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k| map.get(k).cloned().filter(|v| !v.is_empty())
    }

    #[test]
    fn only_strings_of_the_hub_id_form_are_hub_ids() {
        for id in ["gpt2", "HuggingFaceTB/SmolLM2-135M-Instruct", "a/b.c_d-e", "org/model.v1"] {
            assert!(is_hub_id(id), "{id}");
        }
        for not in [
            "",
            "./model",
            "/abs/model",
            "a/b/c",
            "models/",
            "~/model",
            "a\\b",
            "-x/y",
            "x/y.",
            "a--b/c",
            "a/..b",
            "a b",
            "é/model",
        ] {
            assert!(!is_hub_id(not), "{not:?}");
        }
        assert!(!is_hub_id(&"a".repeat(97)));
    }

    #[test]
    fn a_mistyped_path_under_a_local_directory_is_not_sent_to_the_hub() {
        let here = tempfile::tempdir().unwrap();
        std::fs::create_dir(here.path().join("models")).unwrap();
        let why = not_a_hub_id_in(here.path(), "models/llama-typo").unwrap();
        assert!(why.contains("`models/` is a local directory"), "{why}");
        assert_eq!(not_a_hub_id_in(here.path(), "org/llama"), None);
        let err = resolve("./no/such/dir", None).unwrap_err().to_string();
        assert!(err.contains("./no/such/dir") && err.contains("no such directory"), "{err}");
    }

    #[test]
    fn an_adapter_hub_id_resolves_to_its_cached_snapshot_and_offline_misses_name_the_cache() {
        let cache = tempfile::tempdir().unwrap();
        let repo = cache.path().join("models--org--lora");
        let snapshot = repo.join("snapshots").join("abc123");
        std::fs::create_dir_all(&snapshot).unwrap();
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::write(repo.join("refs").join("main"), "abc123").unwrap();
        std::fs::write(snapshot.join("adapter_config.json"), "{}").unwrap();
        let id = Path::new("org/lora");
        // The config alone is not a complete adapter: offline, that is a miss naming the cache.
        let err = resolve_adapter_in(cache.path(), id, true).unwrap_err().to_string();
        assert!(err.contains("adapter org/lora") && err.contains("HF_HUB_OFFLINE"), "{err}");
        assert!(err.contains(&cache.path().display().to_string()), "{err}");
        std::fs::write(snapshot.join("adapter_model.safetensors"), b"x").unwrap();
        assert_eq!(resolve_adapter_in(cache.path(), id, true).unwrap(), snapshot);
        // Paths are never sent to the hub, existing or not.
        let local = Path::new("./no/such/adapter");
        assert_eq!(resolve_adapter_in(cache.path(), local, true).unwrap(), local);
    }

    #[test]
    fn the_endpoint_and_token_are_found_as_huggingface_hub_finds_them() {
        assert_eq!(endpoint_from(&env(&[])), "https://huggingface.co");
        assert_eq!(
            endpoint_from(&env(&[("HF_ENDPOINT", "https://hf-mirror.com/")])),
            "https://hf-mirror.com"
        );
        assert_eq!(token_from(&env(&[("HF_TOKEN", " hf_abc\n")])), Some("hf_abc".into()));
        assert_eq!(token_from(&env(&[("HUGGING_FACE_HUB_TOKEN", "hf_old")])), Some("hf_old".into()));
        let home = tempfile::tempdir().unwrap();
        let h = home.path().to_str().unwrap();
        assert_eq!(token_from(&env(&[("HF_HOME", h)])), None);
        std::fs::write(home.path().join("token"), "hf_file\n").unwrap();
        assert_eq!(token_from(&env(&[("HF_HOME", h)])), Some("hf_file".into()));
        assert_eq!(token_from(&env(&[("HF_HOME", h), ("HF_TOKEN", "hf_env")])), Some("hf_env".into()));
        let other = home.path().join("elsewhere");
        std::fs::write(&other, "hf_path").unwrap();
        let o = other.to_str().unwrap();
        assert_eq!(token_from(&env(&[("HF_HOME", h), ("HF_TOKEN_PATH", o)])), Some("hf_path".into()));
    }
}
