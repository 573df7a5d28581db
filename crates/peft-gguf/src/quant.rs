//! GGML tensor types and their dequantization to `f32`, computed as the `gguf` package's NumPy code
//! computes it (`gguf/quants.py`, which transformers calls when it loads a GGUF checkpoint): the same
//! `f16 → f32` scale conversions and the same products and differences in `f32`, one rounding each, in the
//! same order, so every value is bit-identical.
//!
//! Blocks are independent, so [`dequantize`] splits the work across rayon's threads in runs of blocks.

use half::f16;
use rayon::prelude::*;

/// Elements per K-quant super-block.
const QK_K: usize = 256;

/// A GGML tensor type as GGUF numbers it (`GGMLQuantizationType`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum GgmlType {
    /// 32-bit float.
    F32,
    /// IEEE half.
    F16,
    /// bfloat16.
    Bf16,
    /// 4-bit, one `f16` scale per 32 (`q − 8`).
    Q4_0,
    /// 4-bit, `f16` scale and minimum per 32.
    Q4_1,
    /// 5-bit, one `f16` scale per 32 (`q − 16`).
    Q5_0,
    /// 5-bit, `f16` scale and minimum per 32.
    Q5_1,
    /// 8-bit, one `f16` scale per 32.
    Q8_0,
    /// 2-bit K-quant (4-bit sub-block scales and minima).
    Q2K,
    /// 3-bit K-quant (6-bit signed sub-block scales).
    Q3K,
    /// 4-bit K-quant (6-bit sub-block scales and minima).
    Q4K,
    /// 5-bit K-quant.
    Q5K,
    /// 6-bit K-quant (8-bit signed sub-block scales).
    Q6K,
}

/// The type codes GGUF defines that peft-rs does not dequantize, with their names (for the error).
const UNSUPPORTED: &[(u32, &str)] = &[
    (15, "Q8_K"),
    (16, "IQ2_XXS"),
    (17, "IQ2_XS"),
    (18, "IQ3_XXS"),
    (19, "IQ1_S"),
    (20, "IQ4_NL"),
    (21, "IQ3_S"),
    (22, "IQ2_S"),
    (23, "IQ4_XS"),
    (24, "I8"),
    (25, "I16"),
    (26, "I32"),
    (27, "I64"),
    (28, "F64"),
    (29, "IQ1_M"),
    (34, "TQ1_0"),
    (35, "TQ2_0"),
    (39, "MXFP4"),
    (40, "NVFP4"),
];

impl GgmlType {
    /// The type with GGUF's code, or `Err` with the code's name when GGUF defines it but peft-rs does not
    /// dequantize it (`None` for a code GGUF does not define).
    pub fn from_code(code: u32) -> Result<Self, Option<&'static str>> {
        Ok(match code {
            0 => Self::F32,
            1 => Self::F16,
            2 => Self::Q4_0,
            3 => Self::Q4_1,
            6 => Self::Q5_0,
            7 => Self::Q5_1,
            8 => Self::Q8_0,
            10 => Self::Q2K,
            11 => Self::Q3K,
            12 => Self::Q4K,
            13 => Self::Q5K,
            14 => Self::Q6K,
            30 => Self::Bf16,
            _ => return Err(UNSUPPORTED.iter().find(|(c, _)| *c == code).map(|(_, n)| *n)),
        })
    }

    /// GGUF's name of the type (`"Q4_K"`, `"BF16"`, …).
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "F32",
            Self::F16 => "F16",
            Self::Bf16 => "BF16",
            Self::Q4_0 => "Q4_0",
            Self::Q4_1 => "Q4_1",
            Self::Q5_0 => "Q5_0",
            Self::Q5_1 => "Q5_1",
            Self::Q8_0 => "Q8_0",
            Self::Q2K => "Q2_K",
            Self::Q3K => "Q3_K",
            Self::Q4K => "Q4_K",
            Self::Q5K => "Q5_K",
            Self::Q6K => "Q6_K",
        }
    }

    /// `(elements per block, bytes per block)`, as `GGML_QUANT_SIZES`.
    pub fn block(self) -> (usize, usize) {
        match self {
            Self::F32 => (1, 4),
            Self::F16 | Self::Bf16 => (1, 2),
            Self::Q4_0 => (32, 2 + 16),
            Self::Q4_1 => (32, 2 + 2 + 16),
            Self::Q5_0 => (32, 2 + 4 + 16),
            Self::Q5_1 => (32, 2 + 2 + 4 + 16),
            Self::Q8_0 => (32, 2 + 32),
            Self::Q2K => (QK_K, QK_K / 16 + QK_K / 4 + 2 + 2),
            Self::Q3K => (QK_K, QK_K / 8 + QK_K / 4 + 12 + 2),
            Self::Q4K => (QK_K, 2 + 2 + 12 + QK_K / 2),
            Self::Q5K => (QK_K, 2 + 2 + 12 + QK_K / 8 + QK_K / 2),
            Self::Q6K => (QK_K, QK_K / 2 + QK_K / 4 + QK_K / 16 + 2),
        }
    }

    /// Bytes that `elements` values of this type take, or `None` when `elements` is not a whole number of
    /// blocks or the size overflows.
    pub fn bytes_for(self, elements: usize) -> Option<usize> {
        let (per_block, bytes) = self.block();
        (elements % per_block == 0).then(|| (elements / per_block).checked_mul(bytes)).flatten()
    }
}

/// Blocks per rayon task: large enough that the split costs nothing next to the work.
const BLOCKS_PER_TASK: usize = 4096;

/// Dequantizes `data` (whole blocks of `kind`) into `out`, which must hold `data`'s element count; the
/// caller checks the sizes ([`GgmlType::bytes_for`]).
///
/// # Panics
/// When `data` is not whole blocks or `out` has another length (a caller bug, not bad input).
pub fn dequantize(kind: GgmlType, data: &[u8], out: &mut [f32]) {
    let (per_block, bytes) = kind.block();
    assert!(data.len() % bytes == 0 && data.len() / bytes * per_block == out.len(), "dequantize: sizes");
    data.par_chunks(bytes * BLOCKS_PER_TASK).zip(out.par_chunks_mut(per_block * BLOCKS_PER_TASK)).for_each(
        |(src, dst)| {
            for (b, o) in src.chunks_exact(bytes).zip(dst.chunks_exact_mut(per_block)) {
                block(kind, b, o);
            }
        },
    );
}

/// The single-threaded reference of [`dequantize`] (the same per-block code), for measuring what the
/// threads buy.
pub fn dequantize_serial(kind: GgmlType, data: &[u8], out: &mut [f32]) {
    let (per_block, bytes) = kind.block();
    assert!(data.len() % bytes == 0 && data.len() / bytes * per_block == out.len(), "dequantize: sizes");
    for (b, o) in data.chunks_exact(bytes).zip(out.chunks_exact_mut(per_block)) {
        block(kind, b, o);
    }
}

fn half(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

fn block(kind: GgmlType, b: &[u8], o: &mut [f32]) {
    match kind {
        GgmlType::F32 => o[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        GgmlType::F16 => o[0] = half(b, 0),
        GgmlType::Bf16 => o[0] = f32::from_bits(u32::from(u16::from_le_bytes([b[0], b[1]])) << 16),
        GgmlType::Q4_0 => {
            let d = half(b, 0);
            for l in 0..16 {
                let q = b[2 + l];
                o[l] = d * (f32::from(q & 0x0F) - 8.0);
                o[l + 16] = d * (f32::from(q >> 4) - 8.0);
            }
        }
        GgmlType::Q4_1 => {
            let (d, m) = (half(b, 0), half(b, 2));
            for l in 0..16 {
                let q = b[4 + l];
                o[l] = d * f32::from(q & 0x0F) + m;
                o[l + 16] = d * f32::from(q >> 4) + m;
            }
        }
        GgmlType::Q5_0 | GgmlType::Q5_1 => {
            let with_min = kind == GgmlType::Q5_1;
            let d = half(b, 0);
            let (m, at) = if with_min { (half(b, 2), 4) } else { (0.0, 2) };
            let qh = u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
            for l in 0..16 {
                let q = b[at + 4 + l];
                let lo = (q & 0x0F) | ((((qh >> l) & 1) as u8) << 4);
                let hi = (q >> 4) | ((((qh >> (l + 16)) & 1) as u8) << 4);
                if with_min {
                    o[l] = d * f32::from(lo) + m;
                    o[l + 16] = d * f32::from(hi) + m;
                } else {
                    o[l] = d * (f32::from(lo) - 16.0);
                    o[l + 16] = d * (f32::from(hi) - 16.0);
                }
            }
        }
        GgmlType::Q8_0 => {
            let d = half(b, 0);
            for l in 0..32 {
                o[l] = f32::from(b[2 + l] as i8) * d;
            }
        }
        GgmlType::Q2K => q2k(b, o),
        GgmlType::Q3K => q3k(b, o),
        GgmlType::Q4K | GgmlType::Q5K => q45k(kind == GgmlType::Q5K, b, o),
        GgmlType::Q6K => q6k(b, o),
    }
}

/// Q2_K: `scales[16] qs[64] d dmin`; element `e` of group `e / 16` is `2` bits of `qs`.
fn q2k(b: &[u8], o: &mut [f32]) {
    let (scales, qs) = (&b[..16], &b[16..80]);
    let (d, dmin) = (half(b, 80), half(b, 82));
    for (e, out) in o.iter_mut().enumerate() {
        let (h, j, l) = (e / 128, (e / 32) % 4, e % 32);
        let q = (qs[h * 32 + l] >> (2 * j)) & 3;
        let s = scales[e / 16];
        let dl = d * f32::from(s & 0x0F);
        let ml = dmin * f32::from(s >> 4);
        *out = dl * f32::from(q) - ml;
    }
}

/// Q3_K: `hmask[32] qs[64] scales[12] d`; 6-bit signed scales per 16, a set mask bit means no `−4`.
fn q3k(b: &[u8], o: &mut [f32]) {
    let (hmask, qs, sc) = (&b[..32], &b[32..96], &b[96..108]);
    let d = half(b, 108);
    let mut scales = [0f32; 16];
    for (k, s) in scales.iter_mut().enumerate() {
        let low = (sc[k % 8] >> (4 * (k / 8))) & 0x0F;
        let high = (sc[8 + k % 4] >> (2 * (k / 4))) & 0x03;
        *s = f32::from(((low | (high << 4)) as i8).wrapping_sub(32));
    }
    for (e, out) in o.iter_mut().enumerate() {
        let (i, l) = (e / 32, e % 32);
        let (h, j) = (i / 4, i % 4);
        let ql = ((qs[h * 32 + l] >> (2 * j)) & 3) as i8;
        let qh = ((hmask[l] >> i) & 1) ^ 1;
        let q = ql - ((qh << 2) as i8);
        *out = (d * scales[e / 16]) * f32::from(q);
    }
}

/// The 6-bit scale and minimum of sub-block `g` of a Q4_K / Q5_K super-block (`get_scale_min`).
fn scale_min(s: &[u8], g: usize) -> (u8, u8) {
    if g < 4 {
        (s[g] & 0x3F, s[4 + g] & 0x3F)
    } else {
        let k = g - 4;
        ((s[8 + k] & 0x0F) | ((s[k] >> 2) & 0x30), (s[8 + k] >> 4) | ((s[4 + k] >> 2) & 0x30))
    }
}

/// Q4_K: `d dmin scales[12] qs[128]`; Q5_K adds `qh[32]` before `qs` for the fifth bit.
fn q45k(five: bool, b: &[u8], o: &mut [f32]) {
    let (d, dmin) = (half(b, 0), half(b, 2));
    let scales = &b[4..16];
    let (qh, qs) = if five { (&b[16..48], &b[48..176]) } else { (&b[0..0], &b[16..144]) };
    for g in 0..8 {
        let (sc, m) = scale_min(scales, g);
        let dl = d * f32::from(sc);
        let dm = dmin * f32::from(m);
        let (c, shift) = (g / 2, 4 * (g % 2));
        for l in 0..32 {
            let mut q = (qs[c * 32 + l] >> shift) & 0x0F;
            if five {
                q |= ((qh[l] >> g) & 1) << 4;
            }
            o[g * 32 + l] = dl * f32::from(q) - dm;
        }
    }
}

/// Q6_K: `ql[128] qh[64] scales[16] d`; `q = (4 low bits | 2 high bits) − 32`, 8-bit scales per 16.
fn q6k(b: &[u8], o: &mut [f32]) {
    let (ql, qh, scales) = (&b[..128], &b[128..192], &b[192..208]);
    let d = half(b, 208);
    for (e, out) in o.iter_mut().enumerate() {
        // ql: (half, nibble, byte of 64); qh: (half, pair of bits, byte of 32).
        let (lh, ls, lb) = (e / 128, (e / 64) % 2, e % 64);
        let (hh, hj, hl) = (e / 128, (e / 32) % 4, e % 32);
        let low = (ql[lh * 64 + lb] >> (4 * ls)) & 0x0F;
        let high = (qh[hh * 32 + hl] >> (2 * hj)) & 0x03;
        let q = ((low | (high << 4)) as i8).wrapping_sub(32);
        let dl = d * f32::from(scales[e / 16] as i8);
        *out = dl * f32::from(q);
    }
}
