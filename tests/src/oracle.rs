//! Running the Python oracle and caching what it generates.

use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.parent().unwrap_or(here).to_path_buf()
}

/// `tests/oracle/`.
pub fn oracle_dir() -> PathBuf {
    workspace_root().join("tests").join("oracle")
}

/// The project venv's python (with torch 2.13.0 and PEFT 0.21.2).
pub fn python() -> PathBuf {
    let p = workspace_root().join(".venv").join("bin").join("python");
    assert!(
        p.exists(),
        "{} does not exist: run `cargo xtask setup` (or `cargo xtask test`) once to create the oracle venv",
        p.display()
    );
    p
}

/// Runs `tests/oracle/<script>` with arguments; panics with the script's stderr when it fails.
pub fn run_script(script: &str, args: &[&Path]) -> String {
    let out = Command::new(python())
        .current_dir(oracle_dir())
        .arg(oracle_dir().join(script))
        .args(args)
        .env("PYTHONHASHSEED", "0")
        .env("TOKENIZERS_PARALLELISM", "false")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {script}: {e}"));
    assert!(
        out.status.success(),
        "{script} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The hash the generators' caches are keyed by: every oracle file but the method parity rows (those key
/// their own fixtures, see [`method_fixtures`]).
fn oracle_hash() -> String {
    hash_of(|n| !n.starts_with("method_"))
}

/// A hash of the oracle files `keep` selects (by file name).
fn hash_of(keep: impl Fn(&str) -> bool) -> String {
    let mut files: Vec<PathBuf> = std::fs::read_dir(oracle_dir())
        .expect("tests/oracle exists")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "py" || e == "txt"))
        .filter(|p| p.file_name().is_some_and(|n| keep(&n.to_string_lossy())))
        .collect();
    files.sort();
    let mut h = Sha256::new();
    for f in files {
        h.update(f.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default().as_bytes());
        h.update(std::fs::read(&f).expect("readable oracle file"));
    }
    format!("{:x}", h.finalize())[..16].to_string()
}

/// The output directory of generator `script` (e.g. `gen_lora.py`), generating it on first use.
///
/// Generation happens once per hash of the oracle files: a temporary directory is filled and renamed
/// into place, so concurrent test processes never see a half-written cache.
pub fn fixtures(script: &str) -> PathBuf {
    let stem = script.trim_end_matches(".py").to_string();
    cached(script, &stem, &[], oracle_hash)
}

/// The method files of the method parity matrix (`tests/oracle/method_<name>.py`), as stems, sorted; only
/// those named in `PEFT_RS_METHOD_FILES` (comma-separated stems) when it is set.
pub fn method_files() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(oracle_dir())
        .expect("tests/oracle exists")
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(String::from))
        .filter(|n| n.starts_with("method_") && n.ends_with(".py"))
        .map(|n| n.trim_end_matches(".py").to_string())
        .collect();
    // While working on one method, `PEFT_RS_METHOD_FILES=method_glora,method_oft` runs only those files.
    if let Ok(only) = std::env::var("PEFT_RS_METHOD_FILES") {
        let only: Vec<&str> = only.split(',').map(str::trim).collect();
        v.retain(|stem| only.contains(&stem.as_str()));
    }
    v.sort();
    v
}

/// The fixtures `gen_methods.py` makes for one method file (`method_ia3`), cached by a hash of the shared
/// oracle files and that method file only, so editing one method's rows regenerates only its fixtures.
pub fn method_fixtures(stem: &str) -> PathBuf {
    let key = format!("gen_methods-{stem}");
    let own = format!("{stem}.py");
    cached("gen_methods.py", &key, &[stem], || hash_of(|n| !n.starts_with("method_") || n == own))
}

fn cached(script: &str, key: &str, args: &[&str], hash: impl Fn() -> String) -> PathBuf {
    static CACHE: OnceLock<Mutex<HashMap<String, PathBuf>>> = OnceLock::new();
    let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
    let mut guard = cache.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(p) = guard.get(key) {
        return p.clone();
    }
    let stem = key;
    let dir = workspace_root().join("target").join("oracle-cache").join(format!("{stem}-{}", hash()));
    if !dir.join("manifest.json").exists() {
        let tmp = dir.with_extension(format!("tmp-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(tmp.parent().unwrap()).unwrap();
        let mut all: Vec<&Path> = vec![&tmp];
        all.extend(args.iter().map(Path::new));
        run_script(script, &all);
        if std::fs::rename(&tmp, &dir).is_err() {
            // Another process finished first; its output is equivalent.
            let _ = std::fs::remove_dir_all(&tmp);
        }
    }
    // A stable name for the newest fixtures (the README's CLI examples use it).
    let stable = dir.with_file_name(stem);
    if std::fs::read_link(&stable).ok().as_deref() != Some(dir.as_path()) {
        let _ = std::fs::remove_file(&stable);
        #[cfg(unix)]
        let _ = std::os::unix::fs::symlink(&dir, &stable);
    }
    guard.insert(key.to_string(), dir.clone());
    dir
}

/// Serialises tests that use libtorch's global random generator (`tch::manual_seed`, random inits,
/// dropout): tests of one binary run on parallel threads, and a draw on one thread between another
/// thread's `manual_seed` and its use would change that test's numbers.
pub fn rng_guard() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

/// Reads a JSON file.
pub fn read_json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Records one compared parity case (`direction` e.g. `peft->rs`) for `cargo xtask test`'s summary.
pub fn record(direction: &str, case: &str) {
    let dir = workspace_root().join("target").join("parity-report");
    if std::fs::create_dir_all(&dir).is_err() {
        return;
    }
    let exe = std::env::current_exe()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_default();
    let path = dir.join(format!("{exe}-{}.tsv", std::process::id()));
    if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
        // One write per line: tests run on several threads, and formatted writes would interleave.
        let _ = f.write_all(format!("{direction}\t{case}\n").as_bytes());
    }
}
