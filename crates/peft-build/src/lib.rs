//! Build-script helper for crates whose binaries, tests or examples link libtorch through `tch`.
//!
//! `torch-sys` tells the linker where libtorch is, but not the loader: a binary built against a pip
//! libtorch fails at start with "libtorch_cpu.so: cannot open shared object file" unless
//! `LD_LIBRARY_PATH` is set. Cargo's `rustc-link-arg` only reaches the targets of the package whose
//! build script emits it, so every package with runnable targets calls [`link_libtorch`] from its own
//! `build.rs`:
//!
//! ```no_run
//! // build.rs
//! peft_build::link_libtorch();
//! ```
//!
//! It adds an rpath to libtorch's `lib/`, and links `torch_cuda` with `--no-as-needed` when libtorch
//! has it, so that `tch::Device::cuda_if_available()` finds a GPU even though no Rust code references
//! a CUDA symbol (the linker would otherwise drop the library).

// Build-script instructions are printed to stdout; that is the protocol.
#![allow(clippy::print_stdout)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// Finds libtorch's `lib/` directory the way `torch-sys` does: `DEP_TCH_LIBTORCH_LIB` (for crates that
/// depend on `torch-sys` directly), then `$LIBTORCH/lib` (or `$LIBTORCH_LIB/lib`), then the torch package of
/// the Python interpreter when `LIBTORCH_USE_PYTORCH` is set.
pub fn libtorch_lib_dir() -> Option<PathBuf> {
    for var in ["DEP_TCH_LIBTORCH_LIB", "LIBTORCH", "LIBTORCH_LIB", "LIBTORCH_USE_PYTORCH"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    if let Some(dir) = std::env::var_os("DEP_TCH_LIBTORCH_LIB") {
        return Some(PathBuf::from(dir));
    }
    if let Some(dir) = std::env::var_os("LIBTORCH_LIB").or_else(|| std::env::var_os("LIBTORCH")) {
        // In this workspace that is the `.libtorch` link, which `cargo xtask setup` keeps pointed at
        // the venv's torch, so the rpath stays valid when the venv is recreated.
        return Some(PathBuf::from(dir).join("lib"));
    }
    if std::env::var_os("LIBTORCH_USE_PYTORCH").is_some() {
        let python = if std::env::var_os("VIRTUAL_ENV").is_some() { "python" } else { "python3" };
        let out = Command::new(python)
            .args(["-c", "import os, torch; print(os.path.join(os.path.dirname(torch.__file__), 'lib'))"])
            .output()
            .ok()?;
        if out.status.success() {
            return Some(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()));
        }
    }
    None
}

/// Emits the link arguments described in the crate docs. Call it from `build.rs`.
pub fn link_libtorch() {
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if os != "linux" {
        return;
    }
    let Some(lib) = libtorch_lib_dir() else {
        println!(
            "cargo:warning=peft-build: libtorch not found (run `cargo xtask setup`); binaries will need \
             LD_LIBRARY_PATH"
        );
        return;
    };
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    if has_lib(&lib, "torch_cuda") {
        // Keep libtorch_cuda as a DT_NEEDED entry so its static initialisers register the CUDA backend.
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-L{}", lib.display());
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
}

/// Compiles C++ sources against the libtorch headers tch links (C++17, the pip wheel's CXX11 ABI unless
/// `LIBTORCH_CXX11_ABI` says otherwise) into a static library `name` linked into the calling package.
/// Sources talk to Rust through a C ABI (tensors cross as `at::Tensor*`, which is tch's `C_tensor`), with
/// `#include "peft_ffi.h"` for the shared error helpers (`peft_ffi::error`, `peft_ffi::guarded`).
///
/// # Errors
/// libtorch's headers cannot be found.
pub fn compile_cpp(name: &str, sources: &[&str]) -> Result<(), String> {
    let lib = libtorch_lib_dir().ok_or("libtorch not found (run `cargo xtask setup`)")?;
    let root = lib.parent().map(PathBuf::from).unwrap_or_default();
    let abi = std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".to_owned());
    println!("cargo:rerun-if-env-changed=LIBTORCH_CXX11_ABI");
    let mut build = cc::Build::new();
    build
        .cpp(true)
        .include(root.join("include"))
        .include(root.join("include").join("torch").join("csrc").join("api").join("include"))
        // `peft_ffi.h`: the error helpers every shim shares.
        .include(Path::new(env!("CARGO_MANIFEST_DIR")).join("include"))
        .flag("-std=c++17")
        .flag(format!("-D_GLIBCXX_USE_CXX11_ABI={abi}"))
        .flag("-DGLOG_USE_GLOG_EXPORT")
        .flag_if_supported("-Wno-unused-parameter")
        .warnings(false);
    let shared = Path::new(env!("CARGO_MANIFEST_DIR")).join("include").join("peft_ffi.h");
    println!("cargo:rerun-if-changed={}", shared.display());
    for s in sources {
        println!("cargo:rerun-if-changed={s}");
        build.file(s);
    }
    build.compile(name);
    Ok(())
}

fn has_lib(dir: &Path, name: &str) -> bool {
    dir.join(format!("lib{name}.so")).exists()
}
