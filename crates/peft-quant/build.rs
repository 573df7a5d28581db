//! Compiles `csrc/linear4bit.cpp` (the autograd function behind QLoRA's matmul) against the libtorch
//! headers tch links, and gives this package's binaries an rpath to libtorch (see `peft-build`).

use std::path::PathBuf;

fn main() -> Result<(), String> {
    peft_build::link_libtorch();
    println!("cargo:rerun-if-changed=csrc/linear4bit.cpp");
    println!("cargo:rerun-if-changed=csrc/device.cpp");
    // torch-sys (a direct dependency, `links = "tch"`) exports the libtorch it found.
    let lib = std::env::var_os("DEP_TCH_LIBTORCH_LIB")
        .map(PathBuf::from)
        .ok_or("torch-sys did not report libtorch's lib/ directory (DEP_TCH_LIBTORCH_LIB)")?;
    let root = lib.parent().map(PathBuf::from).unwrap_or_default();
    // bitsandbytes' wheel next to the torch package (the project venv): its CUDA library is where
    // `peft_quant::cuda` looks at run time.
    if let Some(bnb) = std::fs::canonicalize(&root)
        .ok()
        .and_then(|torch| torch.parent().map(|p| p.join("bitsandbytes")))
        .filter(|d| d.is_dir())
    {
        println!("cargo:rustc-env=PEFT_QUANT_BNB_DIR={}", bnb.display());
    }
    let abi = std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".to_owned());
    println!("cargo:rerun-if-env-changed=LIBTORCH_CXX11_ABI");
    cc::Build::new()
        .cpp(true)
        .file("csrc/linear4bit.cpp")
        .file("csrc/device.cpp")
        .include(root.join("include"))
        .include(root.join("include").join("torch").join("csrc").join("api").join("include"))
        .flag("-std=c++17")
        .flag(format!("-D_GLIBCXX_USE_CXX11_ABI={abi}"))
        .flag("-DGLOG_USE_GLOG_EXPORT")
        .flag_if_supported("-Wno-unused-parameter")
        .warnings(false)
        .compile("peft_quant_csrc");
    Ok(())
}
