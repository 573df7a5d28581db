//! LoftQ (PEFT's `loftq_init`): alternately quantize the weight and fit a rank-`r` approximation of the
//! quantization error, so that `dequantized + B @ A` starts closer to the original weight than the
//! quantized weight alone.

use crate::codes::QuantType4;
use crate::error::{QuantError, Result};
use crate::four_bit::{dequantize_4bit, quantize_4bit};
use crate::int8::vectorwise_quant;
use tch::{Kind, Tensor};

/// `_low_rank_decomposition`: `U @ sqrt(diag(S)[:, :r])` and `sqrt(diag(S)[:r, :]) @ Vh` of the reduced
/// SVD (Python slicing: a rank above min(out, in) keeps them all).
fn low_rank(m: &Tensor, rank: i64) -> Result<(Tensor, Tensor)> {
    let (u, s, vh) = peft_core::linalg::svd(m).map_err(|e| QuantError::Invalid(format!("LoftQ: {e}")))?;
    let d = s.diag(0);
    let k = rank.min(d.size()[0]);
    let l = u.matmul(&d.narrow(1, 0, k).sqrt());
    let r = d.narrow(0, 0, k).sqrt().matmul(&vh);
    Ok((l, r))
}

/// PEFT's `loftq_init(weight, num_bits, reduced_rank, num_iter)` for a 2-D `(out, in)` weight: returns
/// the dequantized weight (in the weight's dtype) and LoRA's `A` `(r, in)` and `B` `(out, r)`, f32.
///
/// 4 bits quantize as bitsandbytes' `Params4bit` (NF4, blocksize 64, no double quantization), 8 bits as
/// `Int8Params` (LLM.int8 rows); the arithmetic is PEFT's, in f32, so the results equal PEFT's on the
/// same libtorch.
///
/// # Errors
/// Bits other than 4 or 8, no iterations, a weight that is not 2-D.
pub fn loftq_init(
    weight: &Tensor,
    num_bits: i64,
    reduced_rank: i64,
    num_iter: i64,
) -> Result<(Tensor, Tensor, Tensor)> {
    if num_bits != 4 && num_bits != 8 {
        return Err(QuantError::Invalid("Only nf4 and int8 quantization is supported".into()));
    }
    if num_iter <= 0 {
        return Err(QuantError::Invalid("Number of iterations must be greater than 0".into()));
    }
    if weight.dim() != 2 {
        return Err(QuantError::Shape {
            what: "LoftQ weight".into(),
            expected: "2-D".into(),
            found: weight.size(),
        });
    }
    tch::no_grad(|| {
        let w = weight.to_kind(Kind::Float);
        let mut res = w.copy();
        let mut dequantized = w.shallow_clone();
        let mut factors = None;
        for i in 0..num_iter {
            dequantized = if num_bits == 4 {
                let (packed, state) = quantize_4bit(&res, 64, QuantType4::Nf4, false)?;
                dequantize_4bit(&packed, &state)?
            } else {
                let (cb, scb, _) = vectorwise_quant(&res, 0.0)?;
                cb * scb.view([-1, 1]) * 7.874_015_718_698_502e-3
            };
            res = &w - &dequantized;
            let (l, r) = low_rank(&res, reduced_rank)?;
            let last = i + 1 == num_iter;
            if !last {
                res = &w - l.mm(&r);
            }
            factors = Some((l, r));
        }
        let (l, r) = factors.ok_or_else(|| QuantError::Invalid("LoftQ ran no iteration".into()))?;
        Ok((dequantized.to_kind(weight.kind()), r, l))
    })
}
