//! The code books (value tables) of bitsandbytes' data types, built exactly as bitsandbytes builds them.

use tch::{Device, Kind, Tensor};

/// A 4-bit data type of bitsandbytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum QuantType4 {
    /// NormalFloat4 (QLoRA): 16 quantiles of N(0, 1), scaled to [-1, 1].
    Nf4,
    /// bitsandbytes' FP4: 1 sign, 2 exponent and 1 mantissa bit (exponent bias 2), scaled to [-1, 1].
    Fp4,
}

impl QuantType4 {
    /// The name bitsandbytes and transformers use (`"nf4"`, `"fp4"`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Nf4 => "nf4",
            Self::Fp4 => "fp4",
        }
    }

    /// Parses `"nf4"` / `"fp4"`.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "nf4" => Some(Self::Nf4),
            "fp4" => Some(Self::Fp4),
            _ => None,
        }
    }

    /// The 16 values, indexed by the 4-bit code (`get_4bit_type`).
    pub fn values(self) -> [f32; 16] {
        match self {
            // QLoRA's NF4 table (create_normal_map(offset=0.9677083, use_extra_value=True)), already in [-1, 1].
            Self::Nf4 => [
                -1.0,
                -0.696_192_8,
                -0.525_073_05,
                -0.394_917_5,
                -0.284_441_38,
                -0.184_773_43,
                -0.091_050_036,
                0.0,
                0.079_580_3,
                0.160_930_2,
                0.246_112_3,
                0.337_915_24,
                0.440_709_83,
                0.562_617,
                0.722_956_84,
                1.0,
            ],
            // Bit patterns 0b0000 … 0b1111 (sign bit first), divided by the largest magnitude (12).
            Self::Fp4 => {
                let raw: [f32; 16] = [
                    0.0, 0.0625, 8.0, 12.0, 4.0, 6.0, 2.0, 3.0, -0.0, -0.0625, -8.0, -12.0, -4.0, -6.0, -2.0,
                    -3.0,
                ];
                raw.map(|v| v / 12.0)
            }
        }
    }

    /// [`QuantType4::values`] as a `(16,)` f32 tensor (bitsandbytes' `quant_map`).
    pub fn code(self) -> Tensor {
        Tensor::from_slice(&self.values())
    }
}

/// bitsandbytes' signed 8-bit dynamic map (`create_dynamic_map(signed=True, max_exponent_bits=7,
/// total_bits=8)`), the code of blockwise 8-bit quantization and of double-quantized 4-bit statistics.
///
/// Built with the same libtorch kernels in the same order (`linspace`, midpoints, powers of ten), so the
/// 256 values are bit-identical to bitsandbytes'.
pub fn dynamic_map() -> Tensor {
    const MAX_EXPONENT_BITS: i64 = 7;
    const NON_SIGN_BITS: i64 = 7;
    let mut data: Vec<f32> = Vec::with_capacity(256);
    for i in 0..MAX_EXPONENT_BITS {
        let items = (1i64 << (i + NON_SIGN_BITS - MAX_EXPONENT_BITS)) + 1;
        let bounds = Tensor::linspace(0.1, 1.0, items, (Kind::Float, Device::Cpu));
        let means = (bounds.narrow(0, 0, items - 1) + bounds.narrow(0, 1, items - 1)) / 2.0;
        let exponent = -(MAX_EXPONENT_BITS - 1) + i;
        // Python's `10 ** exponent`: the correctly rounded double (an int for exponent 0).
        let scale: f64 = format!("1e{exponent}").parse().unwrap_or(1.0);
        let pos = &means * scale;
        let neg = &means * -scale;
        data.extend(Vec::<f32>::try_from(&pos).unwrap_or_default());
        data.extend(Vec::<f32>::try_from(&neg).unwrap_or_default());
    }
    data.push(0.0);
    data.push(1.0);
    data.resize(256, 0.0);
    data.sort_by(f32::total_cmp);
    Tensor::from_slice(&data)
}
