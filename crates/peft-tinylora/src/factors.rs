//! The frozen tensors of one TinyLoRA layer: the truncated SVD factors of its base weight and its random
//! projections, computed with the ops PEFT calls so that they match bit for bit on the CPU.

use peft_core::rng::Generator;
use peft_core::{PeftError, Result};
use tch::{Device, Kind, Tensor};

/// PEFT's `_init_svd` / `_init_svd_embedding`: the reduced SVD of `weight` `(out, in)` (embeddings:
/// `(num_embeddings, dim)`), taken in f32 (`torch.linalg.svd(w.float(), full_matrices=False)`), truncated to
/// `r' = min(r, out, in)` and cast back to the weight's dtype, with `√S` given to both sides:
/// `A = √S'·V'ᵀ` `(r', in)` and `B = U'·√S'` `(out, r')`, so that `B·A` is the best rank-`r'` approximation.
/// Returns `(A, B, r')`.
///
/// # Errors
/// A libtorch failure (e.g. a non-finite weight).
pub fn svd_factors(weight: &Tensor, r: i64) -> Result<(Tensor, Tensor, i64)> {
    let kind = weight.kind();
    let (u, s, vh) = tch::no_grad(|| -> Result<(Tensor, Tensor, Tensor)> {
        let w = weight.f_to_kind(Kind::Float).map_err(PeftError::torch("casting the weight for its SVD"))?;
        peft_core::linalg::svd(&w)
    })?;
    let size = weight.size();
    let rank = r.min(size[0]).min(size[1]);
    let f = || -> std::result::Result<(Tensor, Tensor), tch::TchError> {
        let u = u.f_narrow(1, 0, rank)?.f_to_kind(kind)?;
        let s = s.f_narrow(0, 0, rank)?.f_to_kind(kind)?;
        let v = vh.f_narrow(0, 0, rank)?.f_to_kind(kind)?;
        let root = s.f_sqrt()?;
        let a = root.f_unsqueeze(1)?.f_mul(&v)?.f_contiguous()?;
        let b = u.f_mul(&root.f_unsqueeze(0)?)?.f_contiguous()?;
        Ok((a, b))
    };
    let (a, b) = tch::no_grad(f).map_err(PeftError::torch("truncating TinyLoRA's SVD factors"))?;
    Ok((a, b, rank))
}

/// PEFT's `_init_projection`: `P ~ N(0, 1/r)` `(u, r, r)` in f32, drawn by
/// `torch.normal(0, 1/√r, size, generator=torch.Generator().manual_seed(seed))` — one fresh generator per
/// layer, seeded with `projection_seed` plus the layer's index (wrapped to 64 bits as `manual_seed` does).
///
/// # Errors
/// libtorch's error.
pub fn projection(seed: i64, u: i64, r: i64) -> Result<Tensor> {
    let mut g = Generator::new(seed as u64)?;
    let mut p = Tensor::f_empty([u, r, r], (Kind::Float, Device::Cpu))
        .map_err(PeftError::torch("allocating a TinyLoRA projection"))?;
    // Python's `1.0 / (r ** 0.5)`.
    g.normal_(&mut p, 0.0, 1.0 / (r as f64).powf(0.5))?;
    Ok(p)
}

/// PEFT's `_compute_R`: `R = Σᵢ vᵢ·Pᵢ` `(r, r)` by `einsum("i,ijk->jk", v, P)`, `P` cast to `v`'s dtype and
/// device first.
pub fn compose(v: &Tensor, p: &Tensor) -> Tensor {
    let p = p.to_device(v.device()).to_kind(v.kind());
    Tensor::einsum("i,ijk->jk", &[v, &p], None::<&[i64]>)
}
