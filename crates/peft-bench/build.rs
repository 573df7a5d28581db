//! Gives the worker and the criterion benches an rpath to libtorch (see `peft-build`).

fn main() {
    peft_build::link_libtorch();
}
