//! Gives the `peft` binary an rpath to libtorch (see `peft-build`) and compiles `csrc/` (reading
//! `torch.save` files for `peft convert`).

fn main() -> Result<(), String> {
    peft_build::link_libtorch();
    peft_build::compile_cpp("peft_cli_csrc", &["csrc/pickle_load.cpp"])
}
