//! The build gives test binaries what they need to run: an rpath to libtorch and, when libtorch has CUDA,
//! a kept dependency on `libtorch_cuda` so that `tch::Device::cuda_if_available()` can find a GPU.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;

fn dynamic_section() -> String {
    let exe = std::env::current_exe().unwrap();
    let out = Command::new("readelf").arg("-d").arg(&exe).output().expect("readelf (binutils) is installed");
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn libtorch_lib() -> std::path::PathBuf {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).ancestors().nth(2).unwrap().to_path_buf();
    std::env::var_os("LIBTORCH").map(std::path::PathBuf::from).unwrap_or(root.join(".libtorch")).join("lib")
}

#[test]
fn binaries_carry_an_rpath_to_libtorch() {
    let dynamic = dynamic_section();
    let lib = libtorch_lib();
    assert!(
        dynamic
            .lines()
            .any(|l| (l.contains("RUNPATH") || l.contains("RPATH")) && l.contains(&*lib.to_string_lossy())),
        "no rpath to {} in:\n{dynamic}",
        lib.display()
    );
    // And libtorch actually loads: a tensor op runs.
    let t = tch::Tensor::from_slice(&[1.0f32, 2.0]).sum(tch::Kind::Float);
    assert_eq!(t.double_value(&[]), 3.0);
}

#[test]
fn torch_cuda_is_linked_when_libtorch_has_it() {
    let has_cuda = libtorch_lib().join("libtorch_cuda.so").exists();
    let dynamic = dynamic_section();
    assert_eq!(
        dynamic.contains("[libtorch_cuda.so]"),
        has_cuda,
        "libtorch_cuda.so NEEDED entry should be present exactly when libtorch ships it:\n{dynamic}"
    );
    if !has_cuda || !tch::Cuda::is_available() {
        return;
    }
    assert!(tch::Device::cuda_if_available().is_cuda());
}
