//! 4-bit blockwise quantization (NF4 / FP4) with optional double quantization of the statistics —
//! bitsandbytes' `quantize_4bit` / `dequantize_4bit` and its serialized quant state.
//!
//! Layout (identical to bitsandbytes and to transformers' 4-bit checkpoints): the flattened weight is cut
//! into blocks of `blocksize` values; each block stores its absolute maximum and, per value, the index
//! of the nearest code value after scaling by that maximum; two 4-bit indices share a byte (first value
//! in the high nibble), and the packed tensor has shape `((n + 1) / 2, 1)`. With double quantization the
//! f32 maxima are themselves quantized: their mean is subtracted (`nested_offset`) and the rest is
//! quantized blockwise to 8 bits with the dynamic map in blocks of 256.

use crate::blockwise::{dequantize_blockwise, quantize_blockwise, scale_blocks};
use crate::codes::{dynamic_map, QuantType4};
use crate::error::{QuantError, Result};
use tch::{Kind, Tensor};

/// Block sizes bitsandbytes accepts for 4-bit quantization.
pub const BLOCKSIZES_4BIT: [i64; 8] = [32, 64, 128, 256, 512, 1024, 2048, 4096];

/// The block size of the second-level (double) quantization, fixed by bitsandbytes.
pub const NESTED_BLOCKSIZE: i64 = 256;

/// The second level of a double-quantized state: the 8-bit-quantized block maxima.
#[derive(Debug)]
pub struct NestedState {
    /// f32 absolute maxima of the blocks of 256 first-level maxima (`nested_absmax`).
    pub absmax: Tensor,
    /// The 8-bit code (`nested_quant_map`, the dynamic map).
    pub code: Tensor,
    /// Always [`NESTED_BLOCKSIZE`] for states bitsandbytes writes.
    pub blocksize: i64,
    /// The mean subtracted before quantizing the maxima (`nested_offset`).
    pub offset: f32,
}

/// Everything needed to dequantize a packed 4-bit tensor (bitsandbytes' `QuantState`).
#[derive(Debug)]
pub struct QuantState4 {
    /// NF4 or FP4.
    pub quant_type: QuantType4,
    /// Per-block maxima: f32, or `uint8` codes when [`QuantState4::nested`] is set.
    pub absmax: Tensor,
    /// Values per block.
    pub blocksize: i64,
    /// The 16-value code (`quant_map`).
    pub code: Tensor,
    /// The dtype of the original tensor, which dequantization returns.
    pub dtype: Kind,
    /// The original shape.
    pub shape: Vec<i64>,
    /// The double-quantization level, if any.
    pub nested: Option<NestedState>,
}

fn check_blocksize(blocksize: i64) -> Result<()> {
    if BLOCKSIZES_4BIT.contains(&blocksize) {
        Ok(())
    } else {
        Err(QuantError::Invalid(format!(
            "invalid 4-bit blocksize {blocksize}; bitsandbytes accepts {BLOCKSIZES_4BIT:?}"
        )))
    }
}

/// The midpoints between the sorted code values and the sort order (bitsandbytes'
/// `_get_4bit_quantize_bounds`: NF4 is sorted, FP4 is remapped).
fn bounds(quant_type: QuantType4) -> (Tensor, Tensor) {
    let code = quant_type.code();
    let order = code.argsort(0, false);
    let sorted = code.index_select(0, &order);
    let mid = (sorted.narrow(0, 0, 15) + sorted.narrow(0, 1, 15)) / 2.0;
    (mid, order)
}

/// Quantizes `a` (f32, bf16 or f16, any shape) to packed 4-bit codes: returns the `(⌈n/2⌉, 1)` `uint8`
/// tensor and its [`QuantState4`]. Bit-identical to `bitsandbytes.functional.quantize_4bit(a, blocksize=…,
/// compress_statistics=…, quant_type=…)`.
///
/// # Errors
/// An unsupported dtype or block size.
pub fn quantize_4bit(
    a: &Tensor,
    blocksize: i64,
    quant_type: QuantType4,
    double_quant: bool,
) -> Result<(Tensor, QuantState4)> {
    check_blocksize(blocksize)?;
    if !matches!(a.kind(), Kind::Float | Kind::BFloat16 | Kind::Half) {
        return Err(QuantError::Dtype {
            what: "4-bit quantization input".into(),
            expected: "float32, bfloat16 or float16",
            found: a.kind(),
        });
    }
    let device = a.device();
    let (mid, order) = bounds(quant_type);
    let (mid, order) = (mid.to_device(device), order.to_device(device));
    let flat = a.reshape([-1]).to_kind(Kind::Float);
    let n = flat.size()[0];
    let rem = n % blocksize;
    let full = n - rem;
    let blocks = full / blocksize;
    let com = flat.narrow(0, 0, full).view([blocks, blocksize]);
    let mut absmax = com.abs().amax([-1].as_slice(), false);
    // `A * (1.0 / absmax)`: Python's reflected division is a reciprocal times 1.0.
    let mut scaled = (&com * absmax.clamp_min(1e-38).reciprocal().view([-1, 1])).clamp(-1.0, 1.0).view([-1]);
    if rem > 0 {
        let tail = flat.narrow(0, full, rem);
        let am = tail.abs().max().clamp_min(1e-38);
        absmax = Tensor::cat(&[absmax, am.unsqueeze(0)], 0);
        scaled = Tensor::cat(&[scaled, (tail / &am).clamp(-1.0, 1.0)], 0);
    }
    if scaled.size()[0] % 2 == 1 {
        scaled = scaled.constant_pad_nd([0, 1].as_slice());
    }
    let mut q = Tensor::bucketize(&scaled, &mid, true, false);
    if quant_type != QuantType4::Nf4 {
        q = order.index_select(0, &q.to_kind(Kind::Int64));
    }
    let q8 = q.to_kind(Kind::Uint8);
    let high = q8.slice(0, 0, None, 2);
    let low = q8.slice(0, 1, None, 2);
    let packed = high.bitwise_left_shift_tensor_scalar(4).bitwise_or_tensor(&low).unsqueeze(1);
    let code = quant_type.code().to_device(device);
    let (absmax, nested) = if double_quant {
        let offset = absmax.mean(Kind::Float);
        let dmap = dynamic_map();
        let (qabsmax, nested_absmax) = quantize_blockwise(&(&absmax - &offset), &dmap, NESTED_BLOCKSIZE)?;
        let nested = NestedState {
            absmax: nested_absmax,
            code: dmap.to_device(device),
            blocksize: NESTED_BLOCKSIZE,
            offset: offset.double_value(&[]) as f32,
        };
        (qabsmax, Some(nested))
    } else {
        (absmax, None)
    };
    let state = QuantState4 { quant_type, absmax, blocksize, code, dtype: a.kind(), shape: a.size(), nested };
    Ok((packed, state))
}

impl QuantState4 {
    /// Checks that the statistics fit the shape and block sizes (one maximum per block, codes of the
    /// right size and dtype, one nested maximum per block of the nested level), so that the kernels,
    /// which index them without bounds checks, stay inside them.
    ///
    /// # Errors
    /// The first tensor that does not fit, with its expected and actual shape.
    pub fn validate(&self) -> Result<()> {
        let shape_err = |what: &str, expected: String, t: &Tensor| QuantError::Shape {
            what: format!("{what} ({:?}) for shape {:?}, blocksize {}", t.kind(), self.shape, self.blocksize),
            expected,
            found: t.size(),
        };
        if self.blocksize <= 0 || self.shape.iter().any(|&d| d < 0) {
            return Err(QuantError::Invalid(format!(
                "4-bit state: blocksize {} / shape {:?}",
                self.blocksize, self.shape
            )));
        }
        if self.numel() == i64::MAX {
            return Err(QuantError::Invalid(format!(
                "4-bit state: shape {:?} holds too many values",
                self.shape
            )));
        }
        let blocks = self.numel() / self.blocksize + i64::from(self.numel() % self.blocksize != 0);
        let want_kind = if self.nested.is_some() { Kind::Uint8 } else { Kind::Float };
        if self.absmax.numel() as i64 != blocks || self.absmax.kind() != want_kind {
            return Err(shape_err("4-bit absmax", format!("{blocks} {want_kind:?} values"), &self.absmax));
        }
        if self.code.numel() != 16 || self.code.kind() != Kind::Float {
            return Err(shape_err("4-bit quant_map", "16 values".into(), &self.code));
        }
        if let Some(n) = &self.nested {
            if n.blocksize <= 0 {
                return Err(QuantError::Invalid(format!("nested blocksize {}", n.blocksize)));
            }
            let nested_blocks = (blocks + n.blocksize - 1) / n.blocksize;
            if n.absmax.numel() as i64 != nested_blocks || n.absmax.kind() != Kind::Float {
                return Err(shape_err("nested absmax", format!("{nested_blocks} float32 values"), &n.absmax));
            }
            if n.code.numel() != 256 || n.code.kind() != Kind::Float {
                return Err(shape_err("nested quant_map", "256 values".into(), &n.code));
            }
        }
        Ok(())
    }

    /// A state sharing this one's tensors.
    pub fn share(&self) -> Self {
        Self {
            quant_type: self.quant_type,
            absmax: self.absmax.shallow_clone(),
            blocksize: self.blocksize,
            code: self.code.shallow_clone(),
            dtype: self.dtype,
            shape: self.shape.clone(),
            nested: self.nested.as_ref().map(|n| NestedState {
                absmax: n.absmax.shallow_clone(),
                code: n.code.shallow_clone(),
                blocksize: n.blocksize,
                offset: n.offset,
            }),
        }
    }

    /// A copy of this state on `device` (bitsandbytes' `QuantState.to`).
    pub fn to_device(&self, device: tch::Device) -> Self {
        Self {
            quant_type: self.quant_type,
            absmax: self.absmax.to_device(device),
            blocksize: self.blocksize,
            code: self.code.to_device(device),
            dtype: self.dtype,
            shape: self.shape.clone(),
            nested: self.nested.as_ref().map(|n| NestedState {
                absmax: n.absmax.to_device(device),
                code: n.code.to_device(device),
                blocksize: n.blocksize,
                offset: n.offset,
            }),
        }
    }

    /// Number of quantized values (the product of [`QuantState4::shape`]); `i64::MAX` when that product
    /// overflows (or a dimension is negative), which no tensor can match, so [`QuantState4::validate`]
    /// refuses such a state.
    pub fn numel(&self) -> i64 {
        self.shape
            .iter()
            .try_fold(1i64, |acc, &d| if d < 0 { None } else { acc.checked_mul(d) })
            .unwrap_or(i64::MAX)
    }

    /// The f32 per-block maxima, dequantizing the nested level if there is one (`absmax =
    /// dequantize_blockwise(qabsmax) + offset`).
    ///
    /// # Errors
    /// Inconsistent nested state tensors.
    pub fn block_absmax(&self) -> Result<Tensor> {
        match &self.nested {
            None => Ok(self.absmax.to_kind(Kind::Float)),
            Some(n) => {
                let a = dequantize_blockwise(&self.absmax, &n.absmax, &n.code, n.blocksize, Kind::Float)?;
                Ok(a + f64::from(n.offset))
            }
        }
    }

    /// Bits per quantized value at rest, counting the packed codes and every statistic.
    pub fn bits_per_value(&self) -> f64 {
        let bytes = |t: &Tensor| t.numel() as f64 * t.kind().elt_size_in_bytes() as f64;
        let n = self.numel() as f64;
        let mut total = (n / 2.0).ceil() + bytes(&self.absmax) + bytes(&self.code);
        if let Some(nested) = &self.nested {
            total += bytes(&nested.absmax) + bytes(&nested.code) + 4.0;
        }
        8.0 * total / n
    }
}

/// Dequantizes a packed 4-bit tensor to `state.dtype` and `state.shape` (bitsandbytes'
/// `dequantize_4bit`): `code[nibble] * absmax[block]` in f32, then cast.
///
/// # Errors
/// A packed tensor that is not `uint8` or has the wrong number of bytes for the state's shape; bad
/// statistics.
pub fn dequantize_4bit(packed: &Tensor, state: &QuantState4) -> Result<Tensor> {
    dequantize_4bit_to(packed, state, state.dtype)
}

/// [`dequantize_4bit`] into a chosen dtype (the compute dtype of a layer).
///
/// # Errors
/// As [`dequantize_4bit`].
pub fn dequantize_4bit_to(packed: &Tensor, state: &QuantState4, kind: Kind) -> Result<Tensor> {
    if packed.kind() != Kind::Uint8 {
        return Err(QuantError::Dtype {
            what: "packed 4-bit weight".into(),
            expected: "uint8",
            found: packed.kind(),
        });
    }
    let n = state.numel();
    let bytes = (n + 1) / 2;
    if packed.numel() as i64 != bytes {
        return Err(QuantError::Shape {
            what: format!("packed 4-bit weight for shape {:?}", state.shape),
            expected: format!("{bytes} bytes, e.g. [{bytes}, 1]"),
            found: packed.size(),
        });
    }
    state.validate()?;
    Ok(dequantize_4bit_trusted(packed, state, kind))
}

/// [`dequantize_4bit_to`] for a state validated when its layer was built (the fused pass; tensor ops if
/// it is unavailable, where a mismatch would panic inside libtorch, like any tch module).
pub(crate) fn dequantize_4bit_trusted(packed: &Tensor, state: &QuantState4, kind: Kind) -> Tensor {
    crate::autograd::dequantize_4bit_fused(packed, state, kind)
        .unwrap_or_else(|_| decode_4bit_ops(packed, &state.trusted_absmax(), state, kind))
}

impl QuantState4 {
    /// [`QuantState4::block_absmax`] for a validated state (no checks).
    pub(crate) fn trusted_absmax(&self) -> Tensor {
        match &self.nested {
            None => self.absmax.to_kind(Kind::Float),
            Some(n) => {
                let values = n
                    .code
                    .to_device(self.absmax.device())
                    .index_select(0, &self.absmax.reshape([-1]).to_kind(Kind::Int64));
                scale_blocks(&values, &n.absmax.reshape([-1]), n.blocksize) + f64::from(n.offset)
            }
        }
    }
}

/// Unpacks the nibbles, looks up the code and scales by the block maxima, with tensor ops.
fn decode_4bit_ops(packed: &Tensor, absmax: &Tensor, state: &QuantState4, kind: Kind) -> Tensor {
    let n = state.numel();
    let flat = packed.reshape([-1]).to_kind(Kind::Int64);
    let high = flat.bitwise_right_shift_tensor_scalar(4);
    let low = flat.bitwise_and(15);
    let idx = Tensor::stack(&[high, low], 1).view([-1]).narrow(0, 0, n);
    let values = state.code.to_device(packed.device()).to_kind(Kind::Float).index_select(0, &idx);
    let out = scale_blocks(&values, &absmax.reshape([-1]), state.blocksize);
    out.to_kind(kind).view(state.shape.as_slice())
}

/// `repr()` of a Python float, which `json.dumps` writes: the shortest round-trip digits, fixed notation
/// for decimal exponents in [-4, 16), scientific (`1e-05`) otherwise.
pub(crate) fn py_float_repr(x: f64) -> String {
    if x == 0.0 {
        return if x.is_sign_negative() { "-0.0".into() } else { "0.0".into() };
    }
    if x.is_nan() {
        return "NaN".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "Infinity".into() } else { "-Infinity".into() };
    }
    let sci = format!("{:e}", x.abs());
    let (mantissa, exp) = sci.split_once('e').unwrap_or((sci.as_str(), "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let sign = if x < 0.0 { "-" } else { "" };
    let body = if (-4..16).contains(&exp) {
        if exp >= 0 {
            let int_len = exp as usize + 1;
            if digits.len() <= int_len {
                format!("{digits}{}.0", "0".repeat(int_len - digits.len()))
            } else {
                format!("{}.{}", &digits[..int_len], &digits[int_len..])
            }
        } else {
            format!("0.{}{digits}", "0".repeat((-exp - 1) as usize))
        }
    } else {
        let m = if digits.len() > 1 { format!("{}.{}", &digits[..1], &digits[1..]) } else { digits };
        format!("{m}e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs())
    };
    format!("{sign}{body}")
}

/// The name bitsandbytes writes for a dtype (`str(dtype).strip("torch.")`).
pub(crate) fn dtype_name(kind: Kind) -> Result<&'static str> {
    match kind {
        Kind::Float => Ok("float32"),
        Kind::BFloat16 => Ok("bfloat16"),
        Kind::Half => Ok("float16"),
        other => {
            Err(QuantError::Invalid(format!("bitsandbytes quant states hold float dtypes, not {other:?}")))
        }
    }
}

fn dtype_from_name(name: &str) -> Option<Kind> {
    match name {
        "float32" => Some(Kind::Float),
        "bfloat16" => Some(Kind::BFloat16),
        "float16" => Some(Kind::Half),
        _ => None,
    }
}

impl QuantState4 {
    /// The JSON bitsandbytes packs into `weight.quant_state.bitsandbytes__<type>` (`json.dumps` of the
    /// non-tensor items, byte for byte).
    ///
    /// # Errors
    /// A dtype bitsandbytes cannot name.
    pub fn packed_json(&self) -> Result<String> {
        let shape = self.shape.iter().map(i64::to_string).collect::<Vec<_>>().join(", ");
        let mut s = format!(
            "{{\"quant_type\": \"{}\", \"blocksize\": {}, \"dtype\": \"{}\", \"shape\": [{shape}]",
            self.quant_type.name(),
            self.blocksize,
            dtype_name(self.dtype)?
        );
        if let Some(n) = &self.nested {
            s.push_str(&format!(
                ", \"nested_blocksize\": {}, \"nested_dtype\": \"float32\", \"nested_offset\": {}",
                n.blocksize,
                py_float_repr(f64::from(n.offset))
            ));
        }
        s.push('}');
        Ok(s)
    }

    /// The state-dict entries bitsandbytes' `Linear4bit` saves next to `<prefix>weight`
    /// (`weight.absmax`, `weight.quant_map`, `weight.nested_absmax`, `weight.nested_quant_map`,
    /// `weight.quant_state.bitsandbytes__nf4`), with `prefix` ending in `.` or empty.
    ///
    /// # Errors
    /// A dtype bitsandbytes cannot name.
    pub fn state_dict(&self, prefix: &str) -> Result<Vec<(String, Tensor)>> {
        let key = |k: &str| format!("{prefix}weight.{k}");
        let mut v =
            vec![(key("absmax"), self.absmax.shallow_clone()), (key("quant_map"), self.code.shallow_clone())];
        if let Some(n) = &self.nested {
            v.push((key("nested_absmax"), n.absmax.shallow_clone()));
            v.push((key("nested_quant_map"), n.code.shallow_clone()));
        }
        let json = self.packed_json()?;
        v.push((
            key(&format!("quant_state.bitsandbytes__{}", self.quant_type.name())),
            Tensor::from_slice(json.as_bytes()),
        ));
        Ok(v)
    }

    /// Reads a quant state saved by bitsandbytes / transformers (or [`QuantState4::state_dict`]) for
    /// the layer at `prefix`: `get(key)` returns the tensor under a full key; `source` names the file
    /// in errors.
    ///
    /// # Errors
    /// Missing keys, an unparsable packed JSON, unknown quant types or dtypes, wrong tensor dtypes.
    pub fn from_state_dict(get: &dyn Fn(&str) -> Option<Tensor>, prefix: &str, source: &str) -> Result<Self> {
        let key = |k: &str| format!("{prefix}weight.{k}");
        let require = |k: &str| {
            get(&key(k)).ok_or_else(|| QuantError::MissingKey { source_name: source.into(), key: key(k) })
        };
        let (packed_key, packed) = ["nf4", "fp4"]
            .iter()
            .find_map(|t| {
                let k = key(&format!("quant_state.bitsandbytes__{t}"));
                get(&k).map(|v| (k, v))
            })
            .ok_or_else(|| QuantError::MissingKey {
                source_name: source.into(),
                key: key("quant_state.bitsandbytes__nf4 (or __fp4)"),
            })?;
        let bad = |reason: String| QuantError::BadQuantState {
            source_name: source.into(),
            key: packed_key.clone(),
            reason,
        };
        if packed.kind() != Kind::Uint8 {
            return Err(bad(format!("expected a uint8 tensor, found {:?}", packed.kind())));
        }
        let bytes = Vec::<u8>::try_from(&packed.reshape([-1])).map_err(|e| bad(e.to_string()))?;
        let json: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
        let field = |k: &str| json.get(k).ok_or_else(|| bad(format!("no `{k}`")));
        let str_field =
            |k: &str| field(k).and_then(|v| v.as_str().ok_or_else(|| bad(format!("`{k}` is not a string"))));
        let int_field = |k: &str| {
            field(k).and_then(|v| v.as_i64().ok_or_else(|| bad(format!("`{k}` is not an integer"))))
        };
        let quant_type = QuantType4::from_name(str_field("quant_type")?)
            .ok_or_else(|| bad(format!("unknown quant_type {}", json["quant_type"])))?;
        let blocksize = int_field("blocksize")?;
        check_blocksize(blocksize).map_err(|e| bad(e.to_string()))?;
        let dtype = dtype_from_name(str_field("dtype")?)
            .ok_or_else(|| bad(format!("unsupported dtype {}", json["dtype"])))?;
        let shape: Vec<i64> = field("shape")?
            .as_array()
            .and_then(|a| a.iter().map(serde_json::Value::as_i64).collect())
            .ok_or_else(|| bad("`shape` is not a list of integers".into()))?;
        let absmax = require("absmax")?;
        let code = require("quant_map")?.to_kind(Kind::Float);
        let nested = if json.get("nested_absmax").is_some() || json.get("nested_offset").is_some() {
            let offset = field("nested_offset")?
                .as_f64()
                .ok_or_else(|| bad("`nested_offset` is not a number".into()))?;
            let nested_blocksize = int_field("nested_blocksize")?;
            let nested_absmax = require("nested_absmax")?;
            if nested_absmax.kind() != Kind::Float {
                return Err(QuantError::Dtype {
                    what: format!("{source}: {}", key("nested_absmax")),
                    expected: "float32",
                    found: nested_absmax.kind(),
                });
            }
            if absmax.kind() != Kind::Uint8 {
                return Err(QuantError::Dtype {
                    what: format!("{source}: {}", key("absmax")),
                    expected: "uint8 (double quantization)",
                    found: absmax.kind(),
                });
            }
            Some(NestedState {
                absmax: nested_absmax,
                code: require("nested_quant_map")?.to_kind(Kind::Float),
                blocksize: nested_blocksize,
                offset: offset as f32,
            })
        } else {
            if absmax.kind() != Kind::Float {
                return Err(QuantError::Dtype {
                    what: format!("{source}: {}", key("absmax")),
                    expected: "float32",
                    found: absmax.kind(),
                });
            }
            None
        };
        let state = Self { quant_type, absmax, blocksize, code, dtype, shape, nested };
        state.validate().map_err(|e| QuantError::BadQuantState {
            source_name: source.into(),
            key: format!("{prefix}weight.*"),
            reason: e.to_string(),
        })?;
        Ok(state)
    }
}

#[cfg(test)]
pub(crate) mod tests_support {
    use super::*;

    /// Tensor-op dequantization in the state's dtype.
    pub(crate) fn dequantize_ops(packed: &Tensor, absmax: &Tensor, state: &QuantState4) -> Tensor {
        decode_4bit_ops(packed, absmax, state, state.dtype)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_float_repr() {
        for (x, s) in [
            (0.0, "0.0"),
            (1.0, "1.0"),
            (100.0, "100.0"),
            (1.5, "1.5"),
            (0.001, "0.001"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (1.5e-7, "1.5e-07"),
            (-0.0123, "-0.0123"),
            (1e16, "1e+16"),
            (123456789012345.6, "123456789012345.6"),
            (f64::from(0.1f32), "0.10000000149011612"),
        ] {
            assert_eq!(py_float_repr(x), s, "{x}");
        }
    }

    #[test]
    fn fused_dequantization_equals_tensor_ops() {
        tch::manual_seed(2);
        let w = Tensor::randn([40, 130], (Kind::Float, tch::Device::Cpu));
        for kind in [Kind::Float, Kind::BFloat16, Kind::Half] {
            let (packed, state) = quantize_4bit(&w.to_kind(kind), 64, QuantType4::Nf4, true).unwrap();
            let absmax = state.block_absmax().unwrap();
            let fused = crate::autograd::dequantize_4bit_fused(&packed, &state, kind).unwrap();
            assert!(fused.equal(&decode_4bit_ops(&packed, &absmax, &state, kind)), "{kind:?}");
        }
    }

    #[test]
    fn round_trip_and_layout() {
        tch::manual_seed(1);
        let w = Tensor::randn([48, 100], (Kind::Float, tch::Device::Cpu));
        for qt in [QuantType4::Nf4, QuantType4::Fp4] {
            for dq in [false, true] {
                let (packed, state) = quantize_4bit(&w, 64, qt, dq).unwrap();
                assert_eq!(packed.size(), [2400, 1]);
                let back = dequantize_4bit(&packed, &state).unwrap();
                assert_eq!(back.size(), [48, 100]);
                let rel = (&back - &w).norm().double_value(&[]) / w.norm().double_value(&[]);
                assert!(rel < 0.15 && rel > 0.0, "{qt:?} dq={dq}: relative error {rel}");
                let sd = state.state_dict("layer.").unwrap();
                let get = |k: &str| sd.iter().find(|(n, _)| n == k).map(|(_, t)| t.shallow_clone());
                let again = QuantState4::from_state_dict(&get, "layer.", "test").unwrap();
                let back2 = dequantize_4bit(&packed, &again).unwrap();
                assert!(back.equal(&back2));
            }
        }
    }
}
