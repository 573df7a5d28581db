//! LLM.int8 (bitsandbytes' `Linear8bitLt` with frozen int8 weights): row-wise absmax quantization to
//! int8 (`CB`, with the row maxima `SCB`), and the two matmuls bitsandbytes runs on CPU — dequantize
//! and multiply in training mode, int8 × int8 with outlier decomposition in inference.

use crate::error::{QuantError, Result};
use tch::{Kind, Tensor};

/// `int8_vectorwise_quant(a, threshold)`: per row, `round(a * 127 / max|row|)` as int8 and the f32 row
/// maxima; with `threshold > 0`, values with `|v| ≥ threshold` are left out of the maxima and their
/// columns are zeroed in the codes (returned as the outlier column indices).
///
/// `a` is quantized as bitsandbytes does: from its float16 rounding (callers pass `a.to(float16)`;
/// other dtypes are rounded here).
///
/// # Errors
/// `a` is not 2-D.
pub fn vectorwise_quant(a: &Tensor, threshold: f64) -> Result<(Tensor, Tensor, Option<Tensor>)> {
    if a.dim() != 2 {
        return Err(QuantError::Shape {
            what: "int8 vectorwise quantization input".into(),
            expected: "2-D".into(),
            found: a.size(),
        });
    }
    Ok(quant_rows(a, threshold))
}

/// [`vectorwise_quant`] of a 2-D tensor.
fn quant_rows(a: &Tensor, threshold: f64) -> (Tensor, Tensor, Option<Tensor>) {
    let a = a.to_kind(Kind::Half);
    let rows = a.size()[0];
    let mut outlier_cols = None;
    let mut work = a.shallow_clone();
    if threshold > 0.0 {
        let mask = a.abs().ge(threshold);
        if mask.any().int64_value(&[]) != 0 {
            outlier_cols = Some(mask.any_dim(0, false).argwhere().view([-1]));
            work = a.masked_fill(&mask, 0.0);
        } else {
            outlier_cols = Some(Tensor::empty([0], (Kind::Int64, a.device())));
        }
    }
    let row_stats = work.abs().amax([1].as_slice(), false).to_kind(Kind::Float);
    // `A * (127.0 / row_stats)`: Python's reflected division is a reciprocal times 127.
    let scale = row_stats.reciprocal() * 127.0;
    let mut codes = (&work * scale.unsqueeze(-1)).round().to_kind(Kind::Int8);
    if let Some(cols) = &outlier_cols {
        if rows > 1 && cols.numel() > 0 {
            codes = codes.index_fill(1, cols, 0);
        }
    }
    (codes, row_stats, outlier_cols)
}

/// A frozen int8 weight: `CB` (`(out, in)` int8) and `SCB` (`(out,)` f32 row maxima).
#[derive(Debug)]
pub struct Int8Weight {
    /// The int8 codes, `(out, in)`.
    pub cb: Tensor,
    /// The per-row absolute maxima the codes are scaled by, `(out,)` f32.
    pub scb: Tensor,
}

impl Int8Weight {
    /// Quantizes a dense `(out, in)` weight as `Int8Params` does on the way to the device
    /// (`int8_vectorwise_quant(weight.to(float16))`).
    ///
    /// # Errors
    /// A weight that is not 2-D.
    pub fn quantize(weight: &Tensor) -> Result<Self> {
        let (cb, scb, _) = vectorwise_quant(weight, 0.0)?;
        Ok(Self { cb, scb })
    }

    /// Checks shapes and dtypes of a loaded `weight` / `SCB` pair.
    ///
    /// # Errors
    /// `cb` not int8 and 2-D, `scb` not f32 with one value per row; `what` names them.
    pub fn new(cb: Tensor, scb: Tensor, what: &str) -> Result<Self> {
        if cb.kind() != Kind::Int8 || cb.dim() != 2 {
            return Err(QuantError::Shape {
                what: format!("{what}: int8 weight ({:?})", cb.kind()),
                expected: "2-D int8".into(),
                found: cb.size(),
            });
        }
        let out = cb.size()[0];
        if scb.kind() != Kind::Float || scb.size() != [out] {
            return Err(QuantError::Shape {
                what: format!("{what}: SCB ({:?})", scb.kind()),
                expected: format!("[{out}] float32"),
                found: scb.size(),
            });
        }
        Ok(Self { cb, scb })
    }

    /// The dequantized weight in `kind`: `CB.to(kind) * (SCB / 127)`, the training-mode weight of
    /// bitsandbytes' CPU path (`MatMul8bitFp`).
    pub fn dequantize(&self, kind: Kind) -> Tensor {
        let scale = self.scb.unsqueeze(1) * (1.0 / 127.0);
        // In place, as bitsandbytes does: the product stays in `kind`.
        let mut w = self.cb.to_kind(kind);
        let _ = w.g_mul_(&scale);
        w
    }

    /// `x @ W.T + bias` as bitsandbytes computes it in training mode on CPU (dequantize, then a dense
    /// matmul in `x`'s dtype), through [`crate::autograd::linear_8bit`]: the dense weight is not kept for
    /// backward.
    pub fn linear_dequantized(&self, x: &Tensor, bias: Option<&Tensor>) -> Tensor {
        match crate::autograd::linear_8bit(x, &self.cb, &self.scb, bias) {
            Ok(y) => y,
            Err(e) => {
                log::warn!("{e}; falling back to dense ops");
                x.linear(&self.dequantize(x.kind()), bias.map(|b| b.to_kind(x.kind())).as_ref())
            }
        }
    }

    /// `x @ W.T + bias` as bitsandbytes' inference path computes it (`MatMul8bitLt`): `x` rounded to
    /// float16 and quantized row-wise, an exact int8 × int8 → int32 matmul, rescaled by both row maxima;
    /// with `threshold > 0` the outlier columns of `x` (any `|v| ≥ threshold`) are multiplied in `x`'s
    /// dtype against the dequantized weight columns and added.
    /// Like tch's modules, mismatched shapes panic inside libtorch.
    pub fn linear_int8(&self, x: &Tensor, bias: Option<&Tensor>, threshold: f64) -> Tensor {
        let kind = x.kind();
        let mut shape = x.size();
        let in_features = shape.pop().unwrap_or(0);
        let a = x.reshape([-1, in_features]);
        let (ca, sca, outlier_cols) = quant_rows(&a, threshold);
        let acc = ca.internal_int_mm(&self.cb.tr());
        let mut out = acc * (sca.unsqueeze(-1) * self.scb.unsqueeze(0)) * 6.200124e-05;
        if let Some(b) = bias {
            out += b.to_kind(kind);
        }
        let mut out = out.to_kind(kind);
        if let Some(cols) = outlier_cols.filter(|c| c.numel() > 0) {
            let sub_a = a.index_select(1, &cols);
            let sub_b = (self.cb.index_select(1, &cols).to_kind(Kind::Float)
                * self.scb.view([-1, 1])
                * 7.874_015_718_698_502e-3)
                .to_kind(kind)
                .tr();
            out = out.addmm(&sub_a, &sub_b);
        }
        shape.push(self.cb.size()[0]);
        out.view(shape.as_slice())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    /// The training path's autograd function equals dense ops on the dequantized weight, outputs and
    /// input gradients alike, without falling back.
    #[test]
    fn training_path_autograd_equals_dense_ops() {
        tch::manual_seed(9);
        let w = Int8Weight::quantize(&Tensor::randn([24, 40], (Kind::Float, Device::Cpu))).unwrap();
        let bias = Tensor::randn([24], (Kind::Float, Device::Cpu));
        let x = Tensor::randn([3, 40], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let y = crate::autograd::linear_8bit(&x, &w.cb, &w.scb, Some(&bias)).unwrap();
        let g = Tensor::randn([3, 24], (Kind::Float, Device::Cpu));
        let gx = Tensor::run_backward(&[(&y * &g).sum(Kind::Float)], &[&x], false, false);
        let x2 = x.detach().set_requires_grad(true);
        let y2 = x2.linear(&w.dequantize(Kind::Float), Some(&bias));
        let gx2 = Tensor::run_backward(&[(&y2 * &g).sum(Kind::Float)], &[&x2], false, false);
        assert!(y.equal(&y2));
        assert!(gx[0].equal(&gx2[0]));
        assert_eq!(w.dequantize(Kind::BFloat16).kind(), Kind::BFloat16);
    }
}
