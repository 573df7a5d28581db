//! Compiles `csrc/` (the autograd functions behind QLoRA's matmul, CUDA memory counters) against the
//! libtorch headers tch links, and gives this package's binaries an rpath to libtorch (see `peft-build`).

use std::path::PathBuf;

fn main() -> Result<(), String> {
    peft_build::link_libtorch();
    // bitsandbytes' wheel next to the torch package (the project venv): its CUDA library is where
    // `peft_quant::cuda` looks at run time.
    let root =
        peft_build::libtorch_lib_dir().and_then(|lib| lib.parent().map(PathBuf::from)).unwrap_or_default();
    if let Some(bnb) = std::fs::canonicalize(&root)
        .ok()
        .and_then(|torch| torch.parent().map(|p| p.join("bitsandbytes")))
        .filter(|d| d.is_dir())
    {
        println!("cargo:rustc-env=PEFT_QUANT_BNB_DIR={}", bnb.display());
    }
    peft_build::compile_cpp("peft_quant_csrc", &["csrc/linear4bit.cpp", "csrc/device.cpp"])
}
