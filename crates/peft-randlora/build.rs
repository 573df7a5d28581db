//! Compiles `csrc/` (RandLoRA's scaled basis with PEFT's backward) against the libtorch headers tch links,
//! and gives this package's binaries, tests and examples an rpath to libtorch (see `peft-build`).

fn main() -> Result<(), String> {
    peft_build::link_libtorch();
    peft_build::compile_cpp("peft_randlora_csrc", &["csrc/randlora.cpp"])
}
