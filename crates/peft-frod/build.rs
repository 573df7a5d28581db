//! Compiles `csrc/` (FRoD's differentiable sparse `S`) against the libtorch headers tch links, and gives
//! this package's binaries, tests and examples an rpath to libtorch (see `peft-build`).

fn main() -> Result<(), String> {
    peft_build::link_libtorch();
    peft_build::compile_cpp("peft_frod_csrc", &["csrc/frod.cpp"])
}
