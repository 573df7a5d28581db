//! Compiles `csrc/` (OSF's gradient projection as a libtorch tensor hook) against the libtorch headers tch
//! links, and gives this package's binaries, tests and examples an rpath to libtorch (see `peft-build`).

fn main() -> Result<(), String> {
    peft_build::link_libtorch();
    peft_build::compile_cpp("peft_osf_csrc", &["csrc/osf.cpp"])
}
