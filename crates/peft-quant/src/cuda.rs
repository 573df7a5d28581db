//! bitsandbytes' CUDA kernels for 4-bit layers on GPUs, and the CUDA caching allocator's statistics.
//!
//! On CUDA tensors the 4-bit matmul ([`crate::autograd::linear_4bit`]) and dequantization use
//! bitsandbytes' own kernels, taken at run time from its shared library (the `libbitsandbytes_cudaXYZ.so`
//! its PyPI wheel ships, XYZ = the CUDA runtime version libtorch uses), so a QLoRA layer computes what
//! bitsandbytes computes and as fast:
//!
//! * training (a gradient to propagate): the weight is dequantized by `cdequantize_blockwise_*_{nf4,fp4}`
//!   (double-quantized statistics first by `cdequantize_blockwise_fp32`) inside the autograd function,
//!   again in backward — bitsandbytes' `MatMul4Bit`;
//! * inference with at most 4 rows (token-by-token generation): the fused `cgemm_4bit_*` kernel, which
//!   reads the packed weight directly — bitsandbytes' `gemm_4bit` at its small-batch floor;
//! * anything the kernels cannot take (a code other than NF4/FP4, statistics on another device, no
//!   library): the tensor-op path, which gives the same values.
//!
//! The library is looked up once, the first time a 4-bit operation sees a CUDA tensor: `PEFT_RS_BNB_LIB`
//! (a path, or `off`), else the bitsandbytes package next to the torch package peft-quant was built
//! against, with the file name for `BNB_CUDA_VERSION` (bitsandbytes' own override) or the CUDA runtime's
//! version. Every symbol is probed before anything is registered; when one is missing the reason is
//! logged once and the tensor-op path is used. [`kernels`] tells what was found.
//!
//! ```
//! // On a machine without bitsandbytes' CUDA library this is an error naming what was tried; CPU tensors
//! // never need it.
//! match peft_quant::cuda::kernels() {
//!     Ok(k) => println!("bitsandbytes kernels from {}", k.path().display()),
//!     Err(why) => println!("4-bit CUDA tensors use tensor ops: {why}"),
//! }
//! ```

use crate::error::{QuantError, Result};
use std::ffi::{c_char, c_int, c_void, CStr};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use tch::Tensor;

/// `cdequantize_blockwise_*`: `(code, A, absmax, out, blocksize, n, stream)`.
type DequantFn = unsafe extern "C" fn(*mut f32, *mut u8, *mut f32, *mut c_void, c_int, c_int, *mut c_void);

/// `cgemm_4bit_*`: `(A, B, absmax, absmax_8bit, absmax_code, absmax_offset, out, bias, M, N, K, blocksize,
/// quant_type, stream)`.
type GemmFn = unsafe extern "C" fn(
    *mut c_void,
    *mut u8,
    *mut f32,
    *mut u8,
    *mut f32,
    *mut f32,
    *mut c_void,
    *mut c_void,
    c_int,
    c_int,
    c_int,
    c_int,
    c_int,
    *mut c_void,
);

/// `PeftQuantCudaKernels` of the C++ side (`Option<fn>` is a nullable function pointer).
#[repr(C)]
#[derive(Clone, Copy)]
struct Table {
    /// `[NF4, FP4][f32, bf16, f16]`.
    dequant4: [[Option<DequantFn>; 3]; 2],
    dequant8_fp32: Option<DequantFn>,
    /// `[f32, bf16, f16]`.
    gemm4: [Option<GemmFn>; 3],
}

extern "C" {
    fn peft_quant_set_cuda_kernels(kernels: *const Table);
    fn peft_quant_cuda_memory(device: c_int, out: *mut i64) -> *mut c_char;
    fn peft_quant_cuda_reset_peak(device: c_int) -> *mut c_char;
    fn peft_quant_free_error(msg: *mut c_char);
}

const DTYPES: [&str; 3] = ["fp32", "bf16", "fp16"];
const QUANT_TYPES: [&str; 2] = ["nf4", "fp4"];

/// The dequantization symbols every usable library has.
fn required_symbols() -> Vec<String> {
    let mut v: Vec<String> = QUANT_TYPES
        .iter()
        .flat_map(|q| DTYPES.iter().map(move |d| format!("cdequantize_blockwise_{d}_{q}")))
        .collect();
    v.push("cdequantize_blockwise_fp32".into());
    v
}

/// bitsandbytes' CUDA library, loaded and probed.
pub struct BnbKernels {
    path: PathBuf,
    table: Table,
    has_gemm: bool,
    // Keeps the code the table points into mapped (for the life of the process once registered).
    _lib: libloading::Library,
}

impl std::fmt::Debug for BnbKernels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BnbKernels").field("path", &self.path).field("has_gemm", &self.has_gemm).finish()
    }
}

impl BnbKernels {
    /// The library file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the fused small-batch 4-bit GEMM (`cgemm_4bit_*`, bitsandbytes ≥ 0.49) is there; without it
    /// inference dequantizes too.
    pub fn has_gemm(&self) -> bool {
        self.has_gemm
    }
}

/// Loads the library at `path` and resolves every kernel peft-quant uses, without registering them.
///
/// # Errors
/// [`QuantError::Invalid`] naming the file when it cannot be loaded (a missing file, or a CUDA runtime
/// it needs that is not loaded), or naming every missing dequantization symbol (a CPU-only build of
/// bitsandbytes, another library).
pub fn probe(path: &Path) -> Result<BnbKernels> {
    // SAFETY: loading a shared library runs its initialisers; bitsandbytes' only register CUDA fat
    // binaries, as they do when Python loads the same file.
    let lib = unsafe { libloading::Library::new(path) }.map_err(|e| {
        QuantError::Invalid(format!("cannot load bitsandbytes' library {}: {e}", path.display()))
    })?;
    let missing: Vec<String> = required_symbols()
        .into_iter()
        .filter(|name| {
            // SAFETY: only the symbol's address is read.
            unsafe { lib.get::<*mut c_void>(name.as_bytes()) }.is_err()
        })
        .collect();
    if !missing.is_empty() {
        return Err(QuantError::Invalid(format!(
            "{} lacks bitsandbytes' CUDA kernels {} (a CPU-only build, or not bitsandbytes)",
            path.display(),
            missing.join(", ")
        )));
    }
    let dequant = |name: &str| -> Option<DequantFn> {
        // SAFETY: the symbols have the C signature `DequantFn` describes (bitsandbytes'
        // csrc/pythonInterface.cpp, the same prototypes its ctypes bindings declare).
        unsafe { lib.get::<DequantFn>(name.as_bytes()) }.ok().map(|s| *s)
    };
    let gemm = |name: &str| -> Option<GemmFn> {
        // SAFETY: as above, for `GemmFn`.
        unsafe { lib.get::<GemmFn>(name.as_bytes()) }.ok().map(|s| *s)
    };
    let mut table = Table {
        dequant4: [[None; 3]; 2],
        dequant8_fp32: dequant("cdequantize_blockwise_fp32"),
        gemm4: [None; 3],
    };
    for (qi, q) in QUANT_TYPES.iter().enumerate() {
        for (di, d) in DTYPES.iter().enumerate() {
            table.dequant4[qi][di] = dequant(&format!("cdequantize_blockwise_{d}_{q}"));
        }
    }
    for (di, d) in DTYPES.iter().enumerate() {
        table.gemm4[di] = gemm(&format!("cgemm_4bit_{d}"));
    }
    let has_gemm = table.gemm4.iter().all(Option::is_some);
    if !has_gemm {
        table.gemm4 = [None; 3];
    }
    Ok(BnbKernels { path: path.to_path_buf(), table, has_gemm, _lib: lib })
}

/// The CUDA runtime version of this process (`cudaRuntimeGetVersion` of the `libcudart` libtorch loaded),
/// as `(major, minor)`; `None` when no CUDA runtime is loaded (a CPU-only libtorch).
pub fn cuda_runtime_version() -> Option<(i32, i32)> {
    let this = libloading::os::unix::Library::this();
    // SAFETY: `cudaRuntimeGetVersion(int*)` returns a `cudaError_t` (an int); it needs no device.
    let f =
        unsafe { this.get::<unsafe extern "C" fn(*mut c_int) -> c_int>(b"cudaRuntimeGetVersion") }.ok()?;
    let mut v: c_int = 0;
    // SAFETY: a valid out-pointer.
    let rc = unsafe { f(&mut v) };
    (rc == 0 && v > 0).then_some((v / 1000, (v % 1000) / 10))
}

/// The bitsandbytes package directory found next to the torch package at build time, if any.
pub fn bundled_bnb_dir() -> Option<PathBuf> {
    option_env!("PEFT_QUANT_BNB_DIR").map(PathBuf::from)
}

/// The library file to load, or why there is none: `PEFT_RS_BNB_LIB`, else
/// `libbitsandbytes_cuda{BNB_CUDA_VERSION or the runtime's major·minor}.so` in [`bundled_bnb_dir`].
///
/// # Errors
/// A message saying what was looked for (the variable was `off`, no CUDA runtime, no bitsandbytes).
pub fn library_path() -> std::result::Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("PEFT_RS_BNB_LIB") {
        if p == "off" || p == "0" || p.is_empty() {
            return Err("disabled by PEFT_RS_BNB_LIB".into());
        }
        return Ok(PathBuf::from(p));
    }
    let version = match std::env::var("BNB_CUDA_VERSION") {
        Ok(v) if !v.is_empty() => v,
        _ => match cuda_runtime_version() {
            Some((major, minor)) => format!("{major}{minor}"),
            None => return Err("no CUDA runtime is loaded (libtorch without CUDA)".into()),
        },
    };
    let Some(dir) = bundled_bnb_dir() else {
        return Err("bitsandbytes was not installed next to torch when peft-quant was built; set \
                    PEFT_RS_BNB_LIB to its libbitsandbytes_cudaXYZ.so"
            .into());
    };
    Ok(dir.join(format!("libbitsandbytes_cuda{version}.so")))
}

/// bitsandbytes' kernels, loaded and registered on first use (the same answer for the life of the
/// process).
///
/// # Errors
/// Why CUDA tensors take the tensor-op path instead ([`library_path`], [`probe`]).
pub fn kernels() -> std::result::Result<&'static BnbKernels, &'static str> {
    static KERNELS: OnceLock<std::result::Result<BnbKernels, String>> = OnceLock::new();
    KERNELS
        .get_or_init(|| {
            let loaded = library_path().and_then(|p| probe(&p).map_err(|e| e.to_string()));
            match &loaded {
                // SAFETY: the C++ side copies the table; the library it points into stays loaded in this
                // static for the life of the process.
                Ok(k) => unsafe { peft_quant_set_cuda_kernels(&k.table) },
                Err(why) => log::info!("4-bit layers on CUDA use tensor ops: {why}"),
            }
            loaded
        })
        .as_ref()
        .map_err(String::as_str)
}

/// Makes sure the kernels were looked for before a 4-bit operation on `t`'s device (only CUDA needs them).
pub(crate) fn prepare_for(t: &Tensor) {
    if t.device().is_cuda() {
        let _ = kernels();
    }
}

/// The CUDA caching allocator's counters for one device, in bytes (`torch.cuda.memory_allocated`,
/// `max_memory_allocated`, `memory_reserved`, `max_memory_reserved`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CudaMemory {
    /// Bytes held by live tensors now.
    pub allocated: i64,
    /// The most `allocated` has been since the last [`reset_peak_memory`].
    pub peak_allocated: i64,
    /// Bytes the allocator holds from the driver now (live tensors plus its cache).
    pub reserved: i64,
    /// The most `reserved` has been since the last reset.
    pub peak_reserved: i64,
}

fn check_device(device: usize) -> Result<c_int> {
    let count = tch::Cuda::device_count();
    if (device as i64) < count {
        c_int::try_from(device).map_err(|_| QuantError::Invalid(format!("CUDA device {device} out of range")))
    } else {
        Err(QuantError::Invalid(format!("no CUDA device {device} (this process sees {count})")))
    }
}

fn take_error(err: *mut c_char, what: &str) -> Result<()> {
    if err.is_null() {
        return Ok(());
    }
    // SAFETY: a NUL-terminated string allocated by the C++ side, freed exactly once here.
    let msg = unsafe { CStr::from_ptr(err) }.to_string_lossy().into_owned();
    unsafe { peft_quant_free_error(err) };
    Err(QuantError::Invalid(format!("{what}: {msg}")))
}

/// The caching allocator's counters on CUDA device `device`.
///
/// # Errors
/// No such device, or libtorch's error.
pub fn memory(device: usize) -> Result<CudaMemory> {
    let d = check_device(device)?;
    let mut out = [0i64; 4];
    // SAFETY: `out` has the four slots the C++ side writes.
    let err = unsafe { peft_quant_cuda_memory(d, out.as_mut_ptr()) };
    take_error(err, "reading CUDA memory statistics")?;
    Ok(CudaMemory { allocated: out[0], peak_allocated: out[1], reserved: out[2], peak_reserved: out[3] })
}

/// Resets the peaks of [`memory`] to the current values (`torch.cuda.reset_peak_memory_stats`).
///
/// # Errors
/// No such device, or libtorch's error.
pub fn reset_peak_memory(device: usize) -> Result<()> {
    let d = check_device(device)?;
    // SAFETY: a plain call; errors come back as an owned message.
    take_error(unsafe { peft_quant_cuda_reset_peak(d) }, "resetting CUDA peak memory")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn required_symbols_name_every_dequantization_kernel() {
        let s = required_symbols();
        assert_eq!(s.len(), 7);
        assert!(s.contains(&"cdequantize_blockwise_bf16_nf4".to_string()));
        assert!(s.contains(&"cdequantize_blockwise_fp16_fp4".to_string()));
    }
}
