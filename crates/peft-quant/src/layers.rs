//! Quantized linear storage: [`Linear4bit`] (bitsandbytes' `Linear4bit`, NF4/FP4) and [`Linear8bitLt`]
//! (LLM.int8).
//!
//! Both implement peft-core's [`QuantizedLinear`](peft_core::nn::QuantizedLinear) (in [`crate::model`]),
//! so a [`LinearBase`](peft_core::nn::LinearBase) holds them in place of its dense weight — the layers of
//! every model, and [`LinearBase::from_quantized`](peft_core::nn::LinearBase::from_quantized) for models
//! built by hand. LoRA and the other linear methods then adapt them unchanged; reading the weight
//! dequantizes a fresh tensor and writing it (merging) re-quantizes, with a warning.

use crate::codes::QuantType4;
use crate::error::{QuantError, Result};
use crate::four_bit::{dequantize_4bit_trusted, quantize_4bit, QuantState4};
use crate::int8::Int8Weight;
use std::sync::atomic::{AtomicBool, Ordering};
use tch::{Kind, Tensor};

/// How to quantize a dense weight to 4 bits (transformers' `BitsAndBytesConfig` 4-bit options).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Quant4Options {
    /// NF4 or FP4 (`bnb_4bit_quant_type`).
    pub quant_type: QuantType4,
    /// Values per block (64 in bitsandbytes and transformers).
    pub blocksize: i64,
    /// Quantize the block maxima too (`bnb_4bit_use_double_quant`).
    pub double_quant: bool,
    /// The dtype the matmul runs in (`bnb_4bit_compute_dtype`); `None` uses the input's dtype.
    pub compute_dtype: Option<Kind>,
}

impl Default for Quant4Options {
    /// NF4, blocksize 64, double quantization, compute in the input's dtype: the usual QLoRA setup.
    fn default() -> Self {
        Self { quant_type: QuantType4::Nf4, blocksize: 64, double_quant: true, compute_dtype: None }
    }
}

/// A frozen 4-bit weight: packed codes plus their [`QuantState4`].
#[derive(Debug)]
pub struct Linear4bit {
    /// Packed codes, `(⌈out·in/2⌉, 1)` `uint8`.
    pub packed: Tensor,
    /// How to dequantize them; `state.shape` is `(out, in)`.
    pub state: QuantState4,
    /// The dtype the matmul runs in (`None`: the input's).
    pub compute_dtype: Option<Kind>,
}

impl Linear4bit {
    /// Quantizes a dense `(out, in)` weight (what `load_in_4bit` does to each `nn.Linear`).
    ///
    /// # Errors
    /// A weight that is not 2-D float, an invalid block size.
    pub fn quantize(weight: &Tensor, opts: Quant4Options) -> Result<Self> {
        if weight.dim() != 2 {
            return Err(QuantError::Shape {
                what: "linear weight to quantize".into(),
                expected: "(out, in)".into(),
                found: weight.size(),
            });
        }
        let (packed, state) =
            quantize_4bit(&weight.detach(), opts.blocksize, opts.quant_type, opts.double_quant)?;
        Ok(Self { packed, state, compute_dtype: opts.compute_dtype })
    }

    /// A layer from a packed weight and its state as read from a checkpoint.
    ///
    /// # Errors
    /// A state whose shape is not 2-D or does not match the packed tensor.
    pub fn from_parts(packed: Tensor, state: QuantState4, compute_dtype: Option<Kind>) -> Result<Self> {
        if state.shape.len() != 2 {
            return Err(QuantError::Shape {
                what: "4-bit linear quant state".into(),
                expected: "(out, in)".into(),
                found: state.shape.clone(),
            });
        }
        state.validate()?;
        let bytes = (state.numel() + 1) / 2;
        if packed.kind() != Kind::Uint8 || packed.numel() as i64 != bytes {
            return Err(QuantError::Shape {
                what: format!("packed 4-bit weight ({:?}) for shape {:?}", packed.kind(), state.shape),
                expected: format!("[{bytes}, 1] uint8"),
                found: packed.size(),
            });
        }
        Ok(Self { packed, state, compute_dtype })
    }

    /// A copy of this layer on `device` (packed codes and statistics moved; bitsandbytes'
    /// `Linear4bit.to(device)`).
    pub fn to_device(&self, device: tch::Device) -> Self {
        Self {
            packed: self.packed.to_device(device),
            state: self.state.to_device(device),
            compute_dtype: self.compute_dtype,
        }
    }

    /// `x @ W.T + bias` in the compute dtype, cast back to `x`'s dtype (bitsandbytes' `matmul_4bit` on
    /// CPU), through [`crate::autograd::linear_4bit`]: no dense weight is kept for backward, and large
    /// weights are dequantized a slice at a time.
    pub fn forward_with(&self, x: &Tensor, bias: Option<&Tensor>) -> Tensor {
        let input_kind = x.kind();
        let kind = self.compute_dtype.unwrap_or(input_kind);
        let x = x.to_kind(kind);
        let bias = bias.map(|b| b.to_kind(kind));
        match crate::autograd::linear_4bit(&x, &self.packed, &self.state, bias.as_ref()) {
            Ok(y) => return y.to_kind(input_kind),
            Err(e) => log::warn!("{e}; falling back to a dense matmul"),
        }
        let w = dequantize_4bit_trusted(&self.packed, &self.state, kind);
        x.linear(&w, bias.as_ref()).to_kind(input_kind)
    }

    /// The dequantized `(out, in)` weight in the original dtype.
    pub fn dequantize(&self) -> Tensor {
        dequantize_4bit_trusted(&self.packed, &self.state, self.state.dtype)
    }

    /// The state-dict entries bitsandbytes saves for this weight under `prefix` (`weight` and the
    /// quant-state tensors; a bias is saved by its layer).
    ///
    /// # Errors
    /// A dtype bitsandbytes cannot name.
    pub fn state_dict(&self, prefix: &str) -> Result<Vec<(String, Tensor)>> {
        let mut v = vec![(format!("{prefix}weight"), self.packed.shallow_clone())];
        v.extend(self.state.state_dict(prefix)?);
        Ok(v)
    }
}

/// A frozen LLM.int8 weight (bitsandbytes' `Linear8bitLt` with `has_fp16_weights=False`).
///
/// Like bitsandbytes on CPU it computes differently in training and inference mode
/// ([`Linear8bitLt::set_training`]): training dequantizes the weight and runs a dense matmul,
/// inference quantizes the input too and runs an exact int8 matmul with outlier decomposition.
#[derive(Debug)]
pub struct Linear8bitLt {
    /// `CB` and `SCB`.
    pub weight: Int8Weight,
    /// The outlier threshold (`llm_int8_threshold`, 6.0 in transformers); 0 disables decomposition.
    pub threshold: f64,
    training: AtomicBool,
}

impl Linear8bitLt {
    /// Quantizes a dense `(out, in)` weight.
    ///
    /// # Errors
    /// A weight that is not 2-D.
    pub fn quantize(weight: &Tensor, threshold: f64) -> Result<Self> {
        Ok(Self::new(Int8Weight::quantize(&weight.detach())?, threshold))
    }

    /// A layer from loaded `CB` / `SCB`.
    pub fn new(weight: Int8Weight, threshold: f64) -> Self {
        Self { weight, threshold, training: AtomicBool::new(false) }
    }

    /// Training mode (the dequantize-and-matmul path) or inference mode (int8 matmul).
    pub fn set_training(&self, training: bool) {
        self.training.store(training, Ordering::Relaxed);
    }

    /// Whether the layer is in training mode.
    pub fn is_training(&self) -> bool {
        self.training.load(Ordering::Relaxed)
    }

    /// The forward pass with an explicit bias.
    pub fn forward_with(&self, x: &Tensor, bias: Option<&Tensor>) -> Tensor {
        if self.is_training() {
            self.weight.linear_dequantized(x, bias)
        } else {
            self.weight.linear_int8(x, bias, self.threshold)
        }
    }

    /// The state-dict entries bitsandbytes saves (`weight` int8, `SCB`, `weight_format`; a bias is saved
    /// by its layer).
    pub fn state_dict(&self, prefix: &str) -> Vec<(String, Tensor)> {
        vec![
            (format!("{prefix}weight"), self.weight.cb.shallow_clone()),
            (format!("{prefix}SCB"), self.weight.scb.shallow_clone()),
            (format!("{prefix}weight_format"), Tensor::from(0u8)),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    /// Layers above 4M values are dequantized a slice of rows at a time: same outputs and gradients as
    /// dense ops up to summation order.
    #[test]
    fn chunked_autograd_matmul_matches_dense_ops() {
        tch::manual_seed(4);
        let (out, inp) = (2100, 2048);
        let w = Tensor::randn([out, inp], (Kind::Float, Device::Cpu)) * 0.05;
        let bias = Tensor::randn([out], (Kind::Float, Device::Cpu));
        let layer = Linear4bit::quantize(&w, Quant4Options::default()).unwrap();
        let x = Tensor::randn([2, 3, inp], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let y = crate::autograd::linear_4bit(&x, &layer.packed, &layer.state, Some(&bias)).unwrap();
        let g = Tensor::randn([2, 3, out], (Kind::Float, Device::Cpu));
        let gx = Tensor::run_backward(&[(&y * &g).sum(Kind::Float)], &[&x], false, false);
        let dense = layer.dequantize();
        let x2 = x.detach().set_requires_grad(true);
        let y2 = x2.linear(&dense, Some(&bias));
        let gx2 = Tensor::run_backward(&[(&y2 * &g).sum(Kind::Float)], &[&x2], false, false);
        let close = |a: &Tensor, b: &Tensor| (a - b).abs().max().double_value(&[]) < 1e-4;
        assert!(close(&y, &y2), "outputs");
        assert!(close(&gx[0], &gx2[0]), "input gradients");
    }

    /// The autograd function gives the same output and input gradient as plain ops on the dequantized
    /// weight (which keep that weight alive until backward).
    #[test]
    fn autograd_matmul_equals_dense_ops() {
        tch::manual_seed(3);
        let w = Tensor::randn([48, 128], (Kind::Float, Device::Cpu));
        let bias = Tensor::randn([48], (Kind::Float, Device::Cpu));
        for double_quant in [false, true] {
            let opts = Quant4Options { double_quant, ..Default::default() };
            let layer = Linear4bit::quantize(&w, opts).unwrap();
            let x = Tensor::randn([3, 7, 128], (Kind::Float, Device::Cpu)).set_requires_grad(true);
            let y = layer.forward_with(&x, Some(&bias));
            let g = Tensor::randn([3, 7, 48], (Kind::Float, Device::Cpu));
            let gx = Tensor::run_backward(&[(&y * &g).sum(Kind::Float)], &[&x], false, false);
            let x2 = x.detach().set_requires_grad(true);
            let dense = layer.dequantize();
            // The autograd function itself runs (no silent fallback to dense ops).
            let direct = crate::autograd::linear_4bit(&x, &layer.packed, &layer.state, Some(&bias)).unwrap();
            assert!(direct.equal(&y));
            let nobias = crate::autograd::linear_4bit(&x, &layer.packed, &layer.state, None).unwrap();
            // The statistics decoded inside the kernel equal the tensor-op decoding.
            let absmax = layer.state.block_absmax().unwrap();
            assert!(crate::four_bit::tests_support::dequantize_ops(&layer.packed, &absmax, &layer.state)
                .equal(&dense));
            assert!(nobias.equal(&x.linear(&dense, None::<&Tensor>)));
            let y2 = x2.linear(&dense, Some(&bias));
            let gx2 = Tensor::run_backward(&[(&y2 * &g).sum(Kind::Float)], &[&x2], false, false);
            assert!(y.equal(&y2), "outputs (double_quant {double_quant})");
            assert!(gx[0].equal(&gx2[0]), "input gradients (double_quant {double_quant})");
        }
    }
}
