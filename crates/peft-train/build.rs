//! Gives this package's tests an rpath to libtorch (see `peft-build`).

fn main() {
    peft_build::link_libtorch();
}
