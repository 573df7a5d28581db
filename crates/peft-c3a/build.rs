//! Compiles `csrc/` (the block circular convolution with PEFT's backward) against the libtorch headers tch
//! links, and gives this package's binaries, tests and examples an rpath to libtorch (see `peft-build`).

fn main() -> Result<(), String> {
    peft_build::link_libtorch();
    peft_build::compile_cpp("peft_c3a_csrc", &["csrc/c3a.cpp"])
}
