//! The wavelet side of WaveFT: which families exist, their reconstruction filters, and the one-level
//! inverse 2-D discrete wavelet transform PEFT 0.21.2 runs (its `waverec2d`, derived from the
//! PyTorch-Wavelet-Toolbox), with the same ATen ops in the same order so that the numbers and their
//! gradients are PEFT's.

use crate::tables::{BASE_COEFFS, REDUCTIONS};
use crate::tables_pywt::PYWT_COEFFS;
use tch::Tensor;

/// The families `wavelet_family` may name, in PEFT's order.
pub fn families() -> impl Iterator<Item = &'static str> {
    REDUCTIONS.iter().map(|(n, _)| *n)
}

/// How many rows and columns the spectrum of `family` is padded by before the transform, or `None` for a
/// name PEFT does not know.
pub fn reduction(family: &str) -> Option<(i64, i64)> {
    REDUCTIONS.iter().find(|(n, _)| *n == family).map(|(_, r)| *r)
}

/// The reconstruction filters `(rec_lo, rec_hi)` of `family`, derived as PEFT's minimal `Wavelet` derives
/// them, or `None` for a name `WAVELET_REDUCTIONS` does not list.
///
/// The base coefficients are PEFT's own table where it has a usable one (db1–db10, sym2–sym10,
/// coif1–coif4: its numbers, so adapters match PEFT's bit for bit — its coif4 differs from PyWavelets'
/// by up to 0.012 and is kept), and PyWavelets' published filters for the rest of the families its config
/// accepts (db11–db38, sym11–sym20, coif5–coif17), where PEFT 0.21.2's forward pass fails. `rec_lo` is
/// the base coefficients (times `√2` for coiflets, whose tables are normalised to sum 1);
/// `rec_hi[i] = (−1)^i · rec_lo[L−1−i]`, the quadrature mirror.
pub fn filters(family: &str) -> Option<(Vec<f64>, Vec<f64>)> {
    let (_, base) = PYWT_COEFFS.iter().chain(BASE_COEFFS).find(|(n, _)| *n == family)?;
    let scale = if family.starts_with("coif") { std::f64::consts::SQRT_2 } else { 1.0 };
    let lo: Vec<f64> = base.iter().map(|c| c * scale).collect();
    let hi = lo.iter().rev().enumerate().map(|(i, c)| if i % 2 == 0 { *c } else { -c }).collect();
    Some((lo, hi))
}

/// Whether `family` comes from PyWavelets rather than PEFT's table: PEFT 0.21.2 itself cannot run the
/// transform with it, so an adapter using it loads in PEFT but fails at its first forward pass there.
pub fn beyond_peft(family: &str) -> bool {
    PYWT_COEFFS.iter().any(|(n, _)| *n == family)
}

/// `a ⊗ b`: `(len a, len b)`, as the toolbox's `_outer` (flatten, unsqueeze, broadcast multiply).
fn outer(a: &Tensor, b: &Tensor) -> Tensor {
    a.reshape([-1]).unsqueeze(-1) * b.reshape([-1]).unsqueeze(0)
}

/// One level of the inverse 2-D discrete wavelet transform (PEFT's `waverec2d((cA, (cH, cV, cD)),
/// family)`) with the reconstruction filters `(rec_lo, rec_hi)` of [`filters`]: the four `(h, w)`
/// sub-bands, in one dtype and device, give a `(2h − L + 2, 2w − L + 2)` matrix for filters of length `L`.
///
/// The filters are cast from `f64` to the sub-bands' dtype; the 2-D filter bank `(4, 1, L, L)` is the outer
/// products `lo⊗lo, hi⊗lo, lo⊗hi, hi⊗hi`; the sub-bands, stacked as channels, go through
/// `conv_transpose2d` with stride 2; then `L − 2` rows and columns are cut from each side.
pub fn waverec2d(bands: [&Tensor; 4], rec_lo: &[f64], rec_hi: &[f64]) -> Tensor {
    let (kind, device) = (bands[0].kind(), bands[0].device());
    // The toolbox works on a leading batch axis: (h, w) → (1, h, w).
    let bands: Vec<Tensor> = bands.iter().map(|b| b.unsqueeze(0)).collect();
    let cast = |f: &[f64]| Tensor::from_slice(f).to_kind(kind).to_device(device);
    let (lo, hi) = (cast(rec_lo), cast(rec_hi));
    let len = lo.size()[0];
    let bank =
        Tensor::stack(&[outer(&lo, &lo), outer(&hi, &lo), outer(&lo, &hi), outer(&hi, &hi)], 0).unsqueeze(1);
    let mut res = Tensor::stack(&bands, 1)
        .conv_transpose2d(&bank, None::<Tensor>, [2, 2], [0, 0], [0, 0], 1, [1, 1])
        .squeeze_dim(1);
    // `(2L − 3) // 2` on every side: the filters' overhang (top, bottom, left, right, in PEFT's order).
    let pad = (2 * len - 3) / 2;
    if pad > 0 {
        let (h, w) = (res.size()[1], res.size()[2]);
        res = res.slice(1, pad, h, 1).slice(1, 0, h - 2 * pad, 1).slice(2, pad, w, 1).slice(
            2,
            0,
            w - 2 * pad,
            1,
        );
    }
    res.squeeze_dim(0)
}
