//! Blockwise 8-bit quantization with a 256-entry code (bitsandbytes' `quantize_blockwise` /
//! `dequantize_blockwise`), used for double-quantized 4-bit statistics.
//!
//! bitsandbytes on CPU quantizes through a 65 536-entry lookup table over [-1, 1] (its C++ kernel),
//! which differs from nearest-value rounding near the midpoints between code values. peft-rs builds the
//! same table with the same f32 arithmetic, so the codes are bit-identical to bitsandbytes'.

use crate::error::{QuantError, Result};
use tch::{Kind, Tensor};

const LUT_SIZE: usize = 65_536;

/// The lookup table: LUT index → code index (`build_quantize_lut` in bitsandbytes' CPU kernel).
fn build_lut(code: &[f32]) -> Vec<u8> {
    let midpoints: Vec<f32> = code.windows(2).map(|w| 0.5f32 * (w[0] + w[1])).collect();
    let mut lut = vec![0u8; LUT_SIZE];
    let mut idx = 0usize;
    for (i, slot) in lut.iter_mut().enumerate() {
        let val = -1.0f32 + (2.0f32 * i as f32) / (LUT_SIZE - 1) as f32;
        while idx < midpoints.len() && midpoints[idx] < val {
            idx += 1;
        }
        *slot = idx as u8;
    }
    lut
}

/// A normalized value in [-1, 1] → its LUT index (rounding half up, as the kernel's `+ 0.5` and
/// truncation do).
fn lut_index(val: f32) -> usize {
    let v = val.clamp(-1.0, 1.0);
    ((v + 1.0) * 0.5 * (LUT_SIZE - 1) as f32 + 0.5) as usize
}

fn check_code(code: &Tensor) -> Result<Vec<f32>> {
    if code.kind() != Kind::Float {
        return Err(QuantError::Dtype {
            what: "blockwise code".into(),
            expected: "float32",
            found: code.kind(),
        });
    }
    if code.size() != [256] {
        return Err(QuantError::Shape {
            what: "blockwise code".into(),
            expected: "[256]".into(),
            found: code.size(),
        });
    }
    Vec::<f32>::try_from(code).map_err(QuantError::torch("reading the blockwise code"))
}

fn check_blocksize(blocksize: i64) -> Result<usize> {
    if blocksize <= 0 {
        return Err(QuantError::Invalid(format!("blocksize must be positive, got {blocksize}")));
    }
    Ok(blocksize as usize)
}

/// Quantizes `a` (f32, bf16 or f16, any shape) in blocks of `blocksize` consecutive values with the
/// sorted 256-entry `code`: returns the `uint8` codes (shape of `a`) and the f32 per-block absolute
/// maxima, exactly as bitsandbytes' CPU `quantize_blockwise` does.
///
/// # Errors
/// An unsupported dtype, a code that is not 256 f32 values, a non-positive block size.
pub fn quantize_blockwise(a: &Tensor, code: &Tensor, blocksize: i64) -> Result<(Tensor, Tensor)> {
    if !matches!(a.kind(), Kind::Float | Kind::BFloat16 | Kind::Half) {
        return Err(QuantError::Dtype {
            what: "blockwise quantization input".into(),
            expected: "float32, bfloat16 or float16",
            found: a.kind(),
        });
    }
    let code = check_code(code)?;
    let bs = check_blocksize(blocksize)?;
    let flat = a.to_device(tch::Device::Cpu).to_kind(Kind::Float).contiguous().view([-1]);
    let values = Vec::<f32>::try_from(&flat).map_err(QuantError::torch("reading the tensor to quantize"))?;
    let lut = build_lut(&code);
    let blocks = values.len().div_ceil(bs);
    let mut absmax = Vec::with_capacity(blocks);
    let mut out = vec![0u8; values.len()];
    for (block, chunk) in values.chunks(bs).enumerate() {
        let m = chunk.iter().fold(0f32, |m, v| m.max(v.abs()));
        absmax.push(m);
        if m == 0.0 {
            continue;
        }
        let inv = 1.0f32 / m;
        for (o, v) in out[block * bs..].iter_mut().zip(chunk) {
            *o = lut[lut_index(v * inv)];
        }
    }
    let q = Tensor::from_slice(&out).view(a.size().as_slice()).to_device(a.device());
    Ok((q, Tensor::from_slice(&absmax).to_device(a.device())))
}

/// Dequantizes blockwise 8-bit codes: `code[q] * absmax[block]` in f32, then cast to `kind`.
///
/// # Errors
/// `q` not `uint8`, `absmax` not f32 or not one value per block, a bad code or block size.
pub fn dequantize_blockwise(
    q: &Tensor,
    absmax: &Tensor,
    code: &Tensor,
    blocksize: i64,
    kind: Kind,
) -> Result<Tensor> {
    if q.kind() != Kind::Uint8 {
        return Err(QuantError::Dtype { what: "blockwise codes".into(), expected: "uint8", found: q.kind() });
    }
    check_code(code)?;
    let bs = check_blocksize(blocksize)? as i64;
    let n = q.numel() as i64;
    let blocks = (n + bs - 1) / bs;
    if absmax.kind() != Kind::Float || absmax.numel() as i64 != blocks {
        return Err(QuantError::Shape {
            what: format!("blockwise absmax ({:?})", absmax.kind()),
            expected: format!("{blocks} float32 values (one per block of {bs})"),
            found: absmax.size(),
        });
    }
    let values = code.to_device(q.device()).index_select(0, &q.reshape([-1]).to_kind(Kind::Int64));
    let out = scale_blocks(&values, &absmax.reshape([-1]), bs);
    Ok(out.to_kind(kind).view(q.size().as_slice()))
}

/// `values[i] * absmax[i / blocksize]` over a flat f32 tensor (the last block may be partial).
pub(crate) fn scale_blocks(values: &Tensor, absmax: &Tensor, blocksize: i64) -> Tensor {
    let n = values.size()[0];
    let rem = n % blocksize;
    let full = n - rem;
    let blocks = full / blocksize;
    let head = (values.narrow(0, 0, full).view([blocks, blocksize])
        * absmax.narrow(0, 0, blocks).view([-1, 1]))
    .view([full]);
    if rem == 0 {
        head
    } else {
        let tail = values.narrow(0, full, rem) * absmax.get(blocks);
        Tensor::cat(&[head, tail], 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_error_is_within_half_a_code_step() {
        tch::manual_seed(0);
        let a = Tensor::randn([1000], (Kind::Float, tch::Device::Cpu));
        let code = crate::codes::dynamic_map();
        let (q, absmax) = quantize_blockwise(&a, &code, 256).unwrap();
        assert_eq!(absmax.size(), [4]);
        let back = dequantize_blockwise(&q, &absmax, &code, 256, Kind::Float).unwrap();
        // The dynamic map's widest gap near ±1 is 0.1 / 64 of the block's absmax (≤ ~4.5 here).
        let err = (&back - &a).abs().max().double_value(&[]);
        assert!(err < 0.05, "max error {err}");
        assert!(err > 0.0);
    }

    #[test]
    fn rejects_bad_inputs() {
        let code = crate::codes::dynamic_map();
        let ints = Tensor::from_slice(&[1i64, 2]);
        assert!(matches!(quantize_blockwise(&ints, &code, 64), Err(QuantError::Dtype { .. })));
        let a = Tensor::from_slice(&[1f32, 2.0]);
        assert!(matches!(quantize_blockwise(&a, &code, 0), Err(QuantError::Invalid(_))));
        let q = Tensor::from_slice(&[1u8, 2, 3]);
        let wrong = Tensor::from_slice(&[1f32, 2.0]);
        assert!(matches!(
            dequantize_blockwise(&q, &wrong, &code, 64, Kind::Float),
            Err(QuantError::Shape { .. })
        ));
    }
}
