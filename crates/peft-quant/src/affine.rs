//! Affine weight-only formats computed by libtorch's packed CPU kernels: int8 per output channel
//! (`_weight_int8pack_mm`) and int4 per group (`_weight_int4pack_mm_for_cpu`, the tinygemm layout) —
//! torchao's `int8_weight_only` and `int4_weight_only` recipes, for frozen bases that run inference fast
//! without bitsandbytes.

use crate::error::{QuantError, Result};
use tch::{Kind, Tensor};

fn check_2d(w: &Tensor, what: &str) -> Result<(i64, i64)> {
    match w.size()[..] {
        [o, i] if matches!(w.kind(), Kind::Float | Kind::BFloat16 | Kind::Half) => Ok((o, i)),
        _ => Err(QuantError::Shape {
            what: format!("{what} ({:?})", w.kind()),
            expected: "a 2-D float (out, in) weight".into(),
            found: w.size(),
        }),
    }
}

/// Int8 weight-only: symmetric per output channel, `w ≈ q · scale` with `scale = max|row| / 127.5`
/// (at least f32's epsilon) and `q = round(w · (1 / scale))` clamped to [-128, 127] (torchao's
/// `choose_qparams_affine` / `quantize_affine` with `MappingType.SYMMETRIC`).
#[derive(Debug)]
pub struct Int8WeightOnly {
    /// `(out, in)` int8.
    pub weight: Tensor,
    /// `(out,)` scales in the compute dtype.
    pub scales: Tensor,
}

impl Int8WeightOnly {
    /// Quantizes a dense `(out, in)` weight; the scales take its dtype.
    ///
    /// # Errors
    /// A weight that is not a 2-D float tensor.
    pub fn quantize(w: &Tensor) -> Result<Self> {
        check_2d(w, "int8 weight-only")?;
        let wf = w.to_kind(Kind::Float);
        let amax = wf.abs().amax([1].as_slice(), false);
        let scales = (amax / 127.5).clamp_min(f64::from(f32::EPSILON));
        let q = (&wf * scales.reciprocal().unsqueeze(1)).round().clamp(-128.0, 127.0).to_kind(Kind::Int8);
        Ok(Self { weight: q, scales: scales.to_kind(w.kind()) })
    }

    /// `x @ W.T` with libtorch's int8 weight-only kernel (`x` in the scales' dtype).
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let mut shape = x.size();
        let k = shape.pop().unwrap_or(0);
        let y = x
            .to_kind(self.scales.kind())
            .reshape([-1, k])
            .internal_weight_int8pack_mm(&self.weight, &self.scales);
        shape.push(self.weight.size()[0]);
        y.reshape(shape.as_slice()).to_kind(x.kind())
    }

    /// The dequantized weight `q · scale`.
    pub fn dequantize(&self) -> Tensor {
        self.weight.to_kind(self.scales.kind()) * self.scales.unsqueeze(1)
    }
}

/// Int4 weight-only: asymmetric per group of `group_size` input values, `w ≈ (q − 8) · scale + zero` with
/// `scale = max((max − min) / 15, 1e-6)` and `zero = min + 8 · scale`, both bf16 (torchao's tinygemm
/// recipe), packed for libtorch's CPU int4 kernel.
#[derive(Debug)]
pub struct Int4WeightOnly {
    /// The packed weight (`_convert_weight_to_int4pack_for_cpu`).
    pub packed: Tensor,
    /// `(in / group_size, out, 2)` scales and zeros, bf16.
    pub scales_and_zeros: Tensor,
    /// Input values per group (32, 64, 128 or 256).
    pub group_size: i64,
    /// Output features.
    pub out_features: i64,
    /// The unpacked 4-bit values `(out, in)` int32 (kept for dequantization and checks).
    pub values: Tensor,
}

impl Int4WeightOnly {
    /// Quantizes a dense `(out, in)` weight (`in` a multiple of `group_size`).
    ///
    /// # Errors
    /// A weight that is not 2-D float, a group size other than 32/64/128/256 or not dividing `in`.
    pub fn quantize(w: &Tensor, group_size: i64) -> Result<Self> {
        let (out, inp) = check_2d(w, "int4 weight-only")?;
        if ![32, 64, 128, 256].contains(&group_size) || inp % group_size != 0 {
            return Err(QuantError::Invalid(format!(
                "int4 weight-only: group size {group_size} must be 32, 64, 128 or 256 and divide in_features {inp}"
            )));
        }
        let groups = w.reshape([-1, group_size]);
        let max = groups.amax([1].as_slice(), true);
        let min = groups.amin([1].as_slice(), true);
        let scales = ((&max - &min) / 15.0).clamp_min(1e-6);
        let zeros = &min + &scales * 8.0;
        let scales_bf = scales.to_kind(Kind::BFloat16).reshape([out, -1]);
        let zeros_bf = zeros.to_kind(Kind::BFloat16).reshape([out, -1]);
        // Quantize against the rounded (bf16) parameters, as the recipe does.
        let s = scales_bf.reshape([-1, 1]);
        let z = zeros_bf.reshape([-1, 1]);
        let min_val = &z - &s * 8.0;
        let values = groups
            .f_sub(&min_val)
            .and_then(|t| t.f_div(&s))
            .map_err(QuantError::torch("int4 quantization"))?;
        let values = values.round().clamp(0.0, 15.0).to_kind(Kind::Int).reshape([out, inp]);
        let packed = values.internal_convert_weight_to_int4pack_for_cpu(1);
        let scales_and_zeros =
            Tensor::cat(&[scales_bf.unsqueeze(2), zeros_bf.unsqueeze(2)], 2).transpose(0, 1).contiguous();
        Ok(Self { packed, scales_and_zeros, group_size, out_features: out, values })
    }

    /// `x @ W.T` with libtorch's int4 CPU kernel (computed in bf16, returned in `x`'s dtype).
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let mut shape = x.size();
        let k = shape.pop().unwrap_or(0);
        let a = x.to_kind(Kind::BFloat16).reshape([-1, k]);
        let y = a.internal_weight_int4pack_mm_for_cpu(&self.packed, self.group_size, &self.scales_and_zeros);
        shape.push(self.out_features);
        y.reshape(shape.as_slice()).to_kind(x.kind())
    }

    /// The dequantized weight `(q − 8) · scale + zero` in bf16.
    pub fn dequantize(&self) -> Tensor {
        let (out, inp) = (self.out_features, self.values.size()[1]);
        let sz = self.scales_and_zeros.transpose(0, 1); // (out, groups, 2)
        let s = sz.select(2, 0).reshape([-1, 1]).to_kind(Kind::Float);
        let z = sz.select(2, 1).reshape([-1, 1]).to_kind(Kind::Float);
        let q = self.values.reshape([-1, self.group_size]).to_kind(Kind::Float);
        ((q - 8.0) * s + z).reshape([out, inp]).to_kind(Kind::BFloat16)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    fn rel(a: &Tensor, b: &Tensor) -> f64 {
        let (a, b) = (a.to_kind(Kind::Float), b.to_kind(Kind::Float));
        (&a - &b).norm().double_value(&[]) / b.norm().double_value(&[])
    }

    #[test]
    fn int8_weight_only_kernel_equals_the_dequantized_matmul() {
        tch::manual_seed(5);
        let w = Tensor::randn([96, 256], (Kind::Float, Device::Cpu));
        let q = Int8WeightOnly::quantize(&w).unwrap();
        assert!(rel(&q.dequantize(), &w) < 0.01, "int8 rows keep the weight within 1 %");
        let x = Tensor::randn([3, 5, 256], (Kind::Float, Device::Cpu));
        let fast = q.forward(&x);
        let dense = x.linear(&q.dequantize(), None::<&Tensor>);
        assert_eq!(fast.size(), [3, 5, 96]);
        assert!(rel(&fast, &dense) < 1e-5, "kernel vs dense: {}", rel(&fast, &dense));
    }

    #[test]
    fn int4_weight_only_kernel_equals_the_dequantized_matmul() {
        tch::manual_seed(6);
        let w = Tensor::randn([64, 256], (Kind::Float, Device::Cpu));
        let q = Int4WeightOnly::quantize(&w, 64).unwrap();
        let values_ok = q.values.min().int64_value(&[]) >= 0 && q.values.max().int64_value(&[]) <= 15;
        assert!(values_ok);
        assert!(rel(&q.dequantize(), &w) < 0.12, "int4 groups: {}", rel(&q.dequantize(), &w));
        let x = Tensor::randn([4, 256], (Kind::Float, Device::Cpu));
        let fast = q.forward(&x);
        let dense = x.to_kind(Kind::BFloat16).linear(&q.dequantize(), None::<&Tensor>);
        assert!(rel(&fast, &dense) < 1e-2, "kernel vs dense bf16: {}", rel(&fast, &dense));
        assert!(Int4WeightOnly::quantize(&w, 48).is_err());
    }
}

/// Runs `fast` in inference; with a gradient to propagate (libtorch's packed kernels have no backward)
/// falls back to a dense matmul on the dequantized weight.
fn linear_with(
    x: &Tensor,
    bias: Option<&Tensor>,
    fast: impl FnOnce() -> Tensor,
    dense: impl FnOnce() -> Tensor,
) -> Tensor {
    let y = if peft_core::layer::grad_enabled() && x.requires_grad() {
        let w = dense();
        x.linear(&w.to_kind(x.kind()), None::<&Tensor>)
    } else {
        fast()
    };
    match bias {
        Some(b) => y + b.to_kind(x.kind()),
        None => y,
    }
}

impl peft_core::nn::QuantizedLinear for Int8WeightOnly {
    fn class_name(&self) -> &'static str {
        "Int8WeightOnlyLinear"
    }
    fn in_features(&self) -> i64 {
        self.weight.size()[1]
    }
    fn out_features(&self) -> i64 {
        self.weight.size()[0]
    }
    fn forward(&self, x: &Tensor, bias: Option<&Tensor>) -> Tensor {
        linear_with(x, bias, || Int8WeightOnly::forward(self, x), || self.dequantize())
    }
    fn dequantize(&self) -> Tensor {
        Int8WeightOnly::dequantize(self)
    }
    fn requantize(&self, weight: &Tensor) -> peft_core::Result<Box<dyn peft_core::nn::QuantizedLinear>> {
        Ok(Box::new(Int8WeightOnly::quantize(&weight.to_kind(self.scales.kind()))?))
    }
    fn share(&self) -> Box<dyn peft_core::nn::QuantizedLinear> {
        Box::new(Int8WeightOnly { weight: self.weight.shallow_clone(), scales: self.scales.shallow_clone() })
    }
    fn compute_kind(&self) -> Kind {
        self.scales.kind()
    }
    fn state_dict(&self, prefix: &str) -> peft_core::Result<Vec<(String, Tensor)>> {
        Ok(vec![
            (format!("{prefix}weight"), self.weight.shallow_clone()),
            (format!("{prefix}weight_scale"), self.scales.shallow_clone()),
        ])
    }
    fn storage_bytes(&self) -> i64 {
        self.weight.numel() as i64 + (self.scales.numel() * self.scales.kind().elt_size_in_bytes()) as i64
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

impl peft_core::nn::QuantizedLinear for Int4WeightOnly {
    fn class_name(&self) -> &'static str {
        "Int4WeightOnlyLinear"
    }
    fn in_features(&self) -> i64 {
        self.values.size()[1]
    }
    fn out_features(&self) -> i64 {
        self.out_features
    }
    fn forward(&self, x: &Tensor, bias: Option<&Tensor>) -> Tensor {
        linear_with(x, bias, || Int4WeightOnly::forward(self, x), || self.dequantize())
    }
    fn dequantize(&self) -> Tensor {
        Int4WeightOnly::dequantize(self)
    }
    fn requantize(&self, weight: &Tensor) -> peft_core::Result<Box<dyn peft_core::nn::QuantizedLinear>> {
        Ok(Box::new(Int4WeightOnly::quantize(weight, self.group_size)?))
    }
    fn share(&self) -> Box<dyn peft_core::nn::QuantizedLinear> {
        Box::new(Int4WeightOnly {
            packed: self.packed.shallow_clone(),
            scales_and_zeros: self.scales_and_zeros.shallow_clone(),
            group_size: self.group_size,
            out_features: self.out_features,
            values: self.values.shallow_clone(),
        })
    }
    fn compute_kind(&self) -> Kind {
        Kind::BFloat16
    }
    fn state_dict(&self, prefix: &str) -> peft_core::Result<Vec<(String, Tensor)>> {
        // The packed layout is libtorch's and CPU-specific; the portable form is the 4-bit values with
        // their bf16 scales and zeros.
        Ok(vec![
            (format!("{prefix}weight"), self.values.to_kind(Kind::Uint8)),
            (format!("{prefix}weight_scales_and_zeros"), self.scales_and_zeros.shallow_clone()),
        ])
    }
    fn storage_bytes(&self) -> i64 {
        let bytes = |t: &Tensor| (t.numel() * t.kind().elt_size_in_bytes()) as i64;
        bytes(&self.packed) + bytes(&self.scales_and_zeros)
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

#[cfg(test)]
mod model_tests {
    use super::*;
    use peft_core::nn::QuantizedLinear;
    use tch::Device;

    /// As storage of a LinearBase: the forward adds the bias; with a gradient the dense fallback gives the
    /// same values (up to the kernel's rounding).
    #[test]
    fn weight_only_storage_computes_with_bias_and_trains_through_the_fallback() {
        tch::manual_seed(7);
        let w = Tensor::randn([32, 128], (Kind::Float, Device::Cpu));
        let b = Tensor::randn([32], (Kind::Float, Device::Cpu));
        let q = Int8WeightOnly::quantize(&w).unwrap();
        let x = Tensor::randn([2, 128], (Kind::Float, Device::Cpu));
        let y = tch::no_grad(|| QuantizedLinear::forward(&q, &x, Some(&b)));
        let xg = x.set_requires_grad(true);
        let yg = QuantizedLinear::forward(&q, &xg, Some(&b));
        let diff = (&y - &yg).abs().max().double_value(&[]);
        assert!(diff < 1e-4, "{diff}");
        let g = Tensor::run_backward(&[yg.sum(Kind::Float)], &[&xg], false, false);
        assert_eq!(g[0].size(), [2, 128]);
    }
}
