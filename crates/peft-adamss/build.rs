//! Compiles `csrc/` (the two tensor operations AdaMSS's ASA needs beyond tch) against the libtorch headers
//! tch links, and gives this package's binaries, tests and examples an rpath to libtorch (see
//! `peft-build`).

fn main() -> Result<(), String> {
    peft_build::link_libtorch();
    peft_build::compile_cpp("peft_adamss_csrc", &["csrc/adamss.cpp"])
}
