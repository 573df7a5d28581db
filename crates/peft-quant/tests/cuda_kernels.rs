//! Finding, probing and falling back from bitsandbytes' CUDA library. These run on any machine: loading
//! the library and resolving its symbols needs the CUDA runtime libtorch loads, not a GPU; the kernels
//! themselves are checked on a GPU by `cargo xtask gpu-check`.
#![allow(clippy::expect_used)]

use peft_quant::{cuda, quantize_4bit, Linear4bit, QuantType4};
use std::path::PathBuf;
use tch::{Device, Kind, Tensor};

fn bnb_dir() -> PathBuf {
    cuda::bundled_bnb_dir().expect("bitsandbytes (tests/oracle/requirements.txt) is installed next to torch")
}

/// One test: the lookup reads environment variables, which tests on other threads must not see change.
#[test]
fn the_library_is_found_probed_and_can_be_switched_off() {
    // Found by the CUDA runtime's version, as bitsandbytes names its files.
    let path = match cuda::cuda_runtime_version() {
        Some((major, minor)) => {
            let path = cuda::library_path().expect("a library path");
            assert_eq!(path, bnb_dir().join(format!("libbitsandbytes_cuda{major}{minor}.so")));
            let k = cuda::probe(&path).expect("bitsandbytes' CUDA library loads and has its kernels");
            assert!(k.has_gemm(), "bitsandbytes 0.50 has the fused cgemm_4bit kernels");
            // Registered once for the process; the same library.
            let registered = cuda::kernels().expect("registered");
            assert_eq!(registered.path(), path);
            Some(path)
        }
        None => {
            let err = cuda::library_path().unwrap_err();
            assert!(err.contains("no CUDA runtime"), "{err}");
            None
        }
    };

    // bitsandbytes' own override of the CUDA version picks another file.
    std::env::set_var("BNB_CUDA_VERSION", "126");
    assert_eq!(cuda::library_path().unwrap(), bnb_dir().join("libbitsandbytes_cuda126.so"));
    std::env::remove_var("BNB_CUDA_VERSION");

    // An explicit library, or none.
    std::env::set_var("PEFT_RS_BNB_LIB", "/nonexistent/libbitsandbytes_cuda130.so");
    assert_eq!(cuda::library_path().unwrap(), PathBuf::from("/nonexistent/libbitsandbytes_cuda130.so"));
    std::env::set_var("PEFT_RS_BNB_LIB", "off");
    assert!(cuda::library_path().unwrap_err().contains("disabled by PEFT_RS_BNB_LIB"));
    std::env::remove_var("PEFT_RS_BNB_LIB");
    if let Some(path) = path {
        assert_eq!(cuda::library_path().unwrap(), path);
    }
}

#[test]
fn libraries_without_the_kernels_are_refused_by_name() {
    let missing = cuda::probe(std::path::Path::new("/nonexistent/libbitsandbytes_cuda130.so")).unwrap_err();
    assert!(missing.to_string().contains("/nonexistent/libbitsandbytes_cuda130.so"), "{missing}");

    // The CPU build of bitsandbytes loads but has none of the CUDA entry points.
    let cpu = bnb_dir().join("libbitsandbytes_cpu.so");
    let err = cuda::probe(&cpu).unwrap_err().to_string();
    assert!(err.contains("libbitsandbytes_cpu.so"), "{err}");
    for symbol in
        ["cdequantize_blockwise_fp32_nf4", "cdequantize_blockwise_bf16_fp4", "cdequantize_blockwise_fp32"]
    {
        assert!(err.contains(symbol), "{symbol} not named in: {err}");
    }
}

#[test]
fn cpu_layers_compute_the_same_with_the_kernels_registered() {
    let _ = cuda::kernels();
    tch::manual_seed(3);
    let w = Tensor::randn([96, 128], (Kind::Float, Device::Cpu));
    let x = Tensor::randn([5, 128], (Kind::Float, Device::Cpu));
    let (packed, state) = quantize_4bit(&w, 64, QuantType4::Fp4, true).unwrap();
    let dense = peft_quant::dequantize_4bit(&packed, &state).unwrap();
    let layer = Linear4bit::from_parts(packed, state, None).unwrap();
    let y = layer.forward_with(&x, None);
    assert_eq!(y, x.linear::<Tensor>(&dense, None));
    // Moving to the CPU is a copy with the same values.
    let moved = layer.to_device(Device::Cpu);
    assert_eq!(moved.forward_with(&x, None), y);
}

#[test]
fn memory_counters_need_a_cuda_device() {
    let count = tch::Cuda::device_count();
    match cuda::memory(0) {
        Ok(m) => {
            assert!(count > 0);
            assert!(m.peak_allocated >= m.allocated && m.peak_reserved >= m.reserved, "{m:?}");
        }
        Err(e) => {
            assert_eq!(count, 0, "{e}");
            assert!(e.to_string().contains("no CUDA device 0"), "{e}");
        }
    }
    let e = cuda::reset_peak_memory(count as usize).unwrap_err();
    assert!(e.to_string().contains(&format!("no CUDA device {count}")), "{e}");
}
