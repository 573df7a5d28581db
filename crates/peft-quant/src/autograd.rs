//! The QLoRA matmul as a libtorch autograd function (C++ in `csrc/linear4bit.cpp`, compiled by this
//! crate's build script against the libtorch tch links).
//!
//! tch cannot define autograd functions, and `x.linear(&dequantize(W))` with plain ops keeps the
//! dequantized weight alive for the backward pass. [`linear_4bit`] saves only the packed codes and the
//! block maxima and dequantizes again in backward, so a 4-bit layer's memory during training is its
//! packed weight plus one transient dense copy at a time.

use crate::error::{QuantError, Result};
use crate::four_bit::QuantState4;
use std::ffi::{c_char, CStr};
use tch::Tensor;
use torch_sys::C_tensor;

/// `PeftQuantStats` of the C++ side.
#[repr(C)]
struct Stats {
    absmax: *const C_tensor,
    nested_absmax: *const C_tensor,
    nested_code: *const C_tensor,
    nested_blocksize: i64,
    offset: f64,
    /// 0: NF4, 1: FP4 (which of bitsandbytes' CUDA kernels applies).
    quant_type: i32,
}

impl Stats {
    /// Borrows the statistics of `state` (valid while `state` lives).
    fn of(state: &QuantState4) -> Self {
        let quant_type = match state.quant_type {
            crate::codes::QuantType4::Nf4 => 0,
            crate::codes::QuantType4::Fp4 => 1,
        };
        match &state.nested {
            Some(n) => Self {
                absmax: state.absmax.as_ptr(),
                nested_absmax: n.absmax.as_ptr(),
                nested_code: n.code.as_ptr(),
                nested_blocksize: n.blocksize,
                offset: f64::from(n.offset),
                quant_type,
            },
            None => Self {
                absmax: state.absmax.as_ptr(),
                nested_absmax: std::ptr::null(),
                nested_code: std::ptr::null(),
                nested_blocksize: 0,
                offset: 0.0,
                quant_type,
            },
        }
    }
}

extern "C" {
    fn peft_quant_linear4bit(
        x: *const C_tensor,
        packed: *const C_tensor,
        code: *const C_tensor,
        stats: *const Stats,
        bias: *const C_tensor,
        blocksize: i64,
        out_features: i64,
        in_features: i64,
        out: *mut *mut C_tensor,
    ) -> *mut c_char;
    fn peft_quant_dequantize4bit(
        packed: *const C_tensor,
        code: *const C_tensor,
        stats: *const Stats,
        blocksize: i64,
        out_features: i64,
        in_features: i64,
        kind: std::ffi::c_int,
        out: *mut *mut C_tensor,
    ) -> *mut c_char;
    fn peft_quant_linear8bit(
        x: *const C_tensor,
        cb: *const C_tensor,
        scb: *const C_tensor,
        bias: *const C_tensor,
        out: *mut *mut C_tensor,
    ) -> *mut c_char;
    fn peft_quant_free_error(msg: *mut c_char);
}

/// Turns the C++ side's result into a tensor or an error.
fn finish(err: *mut c_char, out: *mut C_tensor, what: &str) -> Result<Tensor> {
    if !err.is_null() {
        // SAFETY: a NUL-terminated string allocated by the C++ side, freed exactly once here.
        let msg = unsafe { CStr::from_ptr(err) }.to_string_lossy().into_owned();
        unsafe { peft_quant_free_error(err) };
        return Err(QuantError::Invalid(format!("{what}: {msg}")));
    }
    // SAFETY: on success `out` is a fresh `at::Tensor*` whose ownership passes to the Rust tensor.
    Ok(unsafe { Tensor::from_ptr(out) })
}

/// What every 4-bit entry point checks before the kernels, which index without bounds checks, see the
/// tensors: a valid state ([`QuantState4::validate`]: the fields are public and may have changed since
/// it was built), packed codes of `ceil(numel / 2)` bytes, everything on the packed codes' device.
fn check_4bit(packed: &Tensor, state: &QuantState4) -> Result<()> {
    state.validate()?;
    let want = state.numel() / 2 + state.numel() % 2;
    if packed.kind() != tch::Kind::Uint8 || packed.numel() as i64 != want {
        return Err(QuantError::Shape {
            what: format!("4-bit packed codes ({:?}) for shape {:?}", packed.kind(), state.shape),
            expected: format!("{want} uint8 values"),
            found: packed.size(),
        });
    }
    let device = packed.device();
    let mut tensors = vec![&state.absmax, &state.code];
    if let Some(n) = &state.nested {
        tensors.extend([&n.absmax, &n.code]);
    }
    if tensors.iter().any(|t| t.device() != device) {
        return Err(QuantError::Invalid(format!(
            "4-bit statistics are not all on the packed codes' device {device:?}"
        )));
    }
    Ok(())
}

/// The input's last dimension and the bias against a weight of `(out, in)`.
fn check_operands(x: &Tensor, bias: Option<&Tensor>, out: i64, inp: i64, what: &str) -> Result<()> {
    if x.dim() == 0 || x.size().last() != Some(&inp) {
        return Err(QuantError::Shape {
            what: format!("{what} input"),
            expected: format!("(…, {inp})"),
            found: x.size(),
        });
    }
    if let Some(b) = bias {
        if b.numel() as i64 != out || b.dim() != 1 {
            return Err(QuantError::Shape {
                what: format!("{what} bias"),
                expected: format!("({out})"),
                found: b.size(),
            });
        }
    }
    Ok(())
}

fn out_in(state: &QuantState4) -> Result<(i64, i64)> {
    match state.shape[..] {
        [o, i] => Ok((o, i)),
        _ => Err(QuantError::Shape {
            what: "4-bit linear weight".into(),
            expected: "(out, in)".into(),
            found: state.shape.clone(),
        }),
    }
}

/// The dequantized `(out, in)` weight in `kind`: one fused pass over the packed bytes on CPU
/// (`code[nibble] * scale[block]` in f32, the scale decoded from the double-quantized statistics on the
/// fly, rounded once), tensor ops elsewhere.
///
/// # Errors
/// A state that is not 2-D, an unsupported dtype, or shapes libtorch rejects.
pub fn dequantize_4bit_fused(packed: &Tensor, state: &QuantState4, kind: tch::Kind) -> Result<Tensor> {
    let (out_features, in_features) = out_in(state)?;
    check_4bit(packed, state)?;
    // c10::ScalarType values.
    let scalar_type = match kind {
        tch::Kind::Half => 5,
        tch::Kind::Float => 6,
        tch::Kind::BFloat16 => 15,
        other => {
            return Err(QuantError::Invalid(format!("4-bit dequantization to {other:?} is not supported")))
        }
    };
    crate::cuda::prepare_for(packed);
    let stats = Stats::of(state);
    let mut out: *mut C_tensor = std::ptr::null_mut();
    // SAFETY: live tch tensors (and `stats`, pointing into `state`) borrowed for the call; the C++ side
    // copies what it keeps and returns a new heap tensor or an owned message.
    let err = unsafe {
        peft_quant_dequantize4bit(
            packed.as_ptr(),
            state.code.as_ptr(),
            &stats,
            state.blocksize,
            out_features,
            in_features,
            scalar_type,
            &mut out,
        )
    };
    finish(err, out, "4-bit dequantization")
}

/// `x @ W.T + bias` for a 4-bit weight (packed codes and their [`QuantState4`]), computed in `x`'s
/// dtype. The backward pass re-dequantizes instead of keeping `W`, the statistics stay in their stored
/// (8-bit when double-quantized) form, and on CPU weights above 4M values are dequantized a slice of rows
/// at a time, so the transient dense copy stays small. On CUDA, bitsandbytes' kernels dequantize (and, for
/// inference on at most 4 rows, multiply) when its library is available (see [`crate::cuda`]).
///
/// # Errors
/// A state that is not 2-D, or shapes or dtypes libtorch rejects.
pub fn linear_4bit(
    x: &Tensor,
    packed: &Tensor,
    state: &QuantState4,
    bias: Option<&Tensor>,
) -> Result<Tensor> {
    let (out_features, in_features) = out_in(state)?;
    check_4bit(packed, state)?;
    check_operands(x, bias, out_features, in_features, "4-bit linear")?;
    crate::cuda::prepare_for(packed);
    let stats = Stats::of(state);
    let mut out: *mut C_tensor = std::ptr::null_mut();
    let bias_ptr = bias.map_or(std::ptr::null(), Tensor::as_ptr);
    // SAFETY: as in `dequantize_4bit_fused`.
    let err = unsafe {
        peft_quant_linear4bit(
            x.as_ptr(),
            packed.as_ptr(),
            state.code.as_ptr(),
            &stats,
            bias_ptr,
            state.blocksize,
            out_features,
            in_features,
            &mut out,
        )
    };
    finish(err, out, "4-bit linear")
}

/// LLM.int8's training-path linear (bitsandbytes' `MatMul8bitFp`): `x @ (CB · SCB / 127).T + bias` in `x`'s
/// dtype, with a backward that rebuilds the weight from the int8 codes instead of keeping it.
///
/// # Errors
/// Shapes or dtypes libtorch rejects.
pub fn linear_8bit(x: &Tensor, cb: &Tensor, scb: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let (o, i) = match cb.size()[..] {
        [o, i] if cb.kind() == tch::Kind::Int8 => (o, i),
        _ => {
            return Err(QuantError::Shape {
                what: format!("int8 weight ({:?})", cb.kind()),
                expected: "(out, in) int8".into(),
                found: cb.size(),
            })
        }
    };
    if scb.numel() as i64 != o || scb.kind() != tch::Kind::Float {
        return Err(QuantError::Shape {
            what: format!("int8 row scales ({:?})", scb.kind()),
            expected: format!("({o}) float32"),
            found: scb.size(),
        });
    }
    check_operands(x, bias, o, i, "int8 linear")?;
    let mut out: *mut C_tensor = std::ptr::null_mut();
    let bias_ptr = bias.map_or(std::ptr::null(), Tensor::as_ptr);
    // SAFETY: as in `dequantize_4bit_fused`.
    let err = unsafe { peft_quant_linear8bit(x.as_ptr(), cb.as_ptr(), scb.as_ptr(), bias_ptr, &mut out) };
    finish(err, out, "int8 linear")
}
