//! The QLoRA matmul as a libtorch autograd function (C++ in `csrc/linear4bit.cpp`, compiled by this
//! crate's build script against the libtorch tch links).
//!
//! tch cannot define autograd functions, and `x.linear(&dequantize(W))` with plain ops keeps the
//! dequantized weight alive for the backward pass. [`linear_4bit`] saves only the packed codes and the
//! block maxima and dequantizes again in backward, so a 4-bit layer's memory during training is its
//! packed weight plus one transient dense copy at a time.

use crate::error::{QuantError, Result};
use std::ffi::{c_char, CStr};
use tch::Tensor;
use torch_sys::C_tensor;

extern "C" {
    fn peft_quant_linear4bit(
        x: *const C_tensor,
        packed: *const C_tensor,
        code: *const C_tensor,
        absmax: *const C_tensor,
        bias: *const C_tensor,
        blocksize: i64,
        out_features: i64,
        in_features: i64,
        out: *mut *mut C_tensor,
    ) -> *mut c_char;
    fn peft_quant_dequantize4bit(
        packed: *const C_tensor,
        code: *const C_tensor,
        absmax: *const C_tensor,
        blocksize: i64,
        out_features: i64,
        in_features: i64,
        kind: std::ffi::c_int,
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

/// The dequantized `(out_features, in_features)` weight in `kind`: one fused pass over the packed bytes
/// on CPU (`code[nibble] * absmax[block]` in f32, rounded once), tensor ops elsewhere.
///
/// # Errors
/// Shapes or dtypes libtorch rejects.
pub fn dequantize_4bit_fused(
    packed: &Tensor,
    code: &Tensor,
    absmax: &Tensor,
    blocksize: i64,
    out_features: i64,
    in_features: i64,
    kind: tch::Kind,
) -> Result<Tensor> {
    // c10::ScalarType values.
    let scalar_type = match kind {
        tch::Kind::Half => 5,
        tch::Kind::Float => 6,
        tch::Kind::BFloat16 => 15,
        other => {
            return Err(QuantError::Invalid(format!("4-bit dequantization to {other:?} is not supported")))
        }
    };
    let mut out: *mut C_tensor = std::ptr::null_mut();
    // SAFETY: live tch tensors borrowed for the call; see `linear_4bit`.
    let err = unsafe {
        peft_quant_dequantize4bit(
            packed.as_ptr(),
            code.as_ptr(),
            absmax.as_ptr(),
            blocksize,
            out_features,
            in_features,
            scalar_type,
            &mut out,
        )
    };
    finish(err, out, "4-bit dequantization")
}

/// `x @ W.T + bias` for a 4-bit weight given as packed codes (`uint8`), its 16-value `code` and f32
/// per-block maxima, computed in `x`'s dtype; the backward pass re-dequantizes instead of keeping `W`.
///
/// # Errors
/// Shapes or dtypes libtorch rejects (the message names the operation).
#[allow(clippy::too_many_arguments)]
pub fn linear_4bit(
    x: &Tensor,
    packed: &Tensor,
    code: &Tensor,
    absmax: &Tensor,
    bias: Option<&Tensor>,
    blocksize: i64,
    out_features: i64,
    in_features: i64,
) -> Result<Tensor> {
    let mut out: *mut C_tensor = std::ptr::null_mut();
    let bias_ptr = bias.map_or(std::ptr::null(), Tensor::as_ptr);
    // SAFETY: every pointer is a live tch tensor (an `at::Tensor*`) borrowed for the call; the C++ side
    // copies what it keeps, writes a new heap tensor to `out` on success, and returns an owned message on
    // failure.
    let err = unsafe {
        peft_quant_linear4bit(
            x.as_ptr(),
            packed.as_ptr(),
            code.as_ptr(),
            absmax.as_ptr(),
            bias_ptr,
            blocksize,
            out_features,
            in_features,
            &mut out,
        )
    };
    finish(err, out, "4-bit linear")
}
