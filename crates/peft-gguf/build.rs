//! Gives this package's binaries, tests and examples an rpath to libtorch (see `peft-build`).

fn main() {
    peft_build::link_libtorch();
}
