//! The one line a crate using peft-rs needs in its build script: an rpath to libtorch, so the binary
//! starts without `LD_LIBRARY_PATH`.

fn main() {
    peft_build::link_libtorch();
}
