//! Linear-algebra routines PEFT takes from PyTorch's Python layer, rebuilt from the same ATen calls so
//! they give the same numbers under the same seed.

use crate::error::{PeftError, Result};
use tch::{Kind, Tensor};

type TchResult<T> = std::result::Result<T, tch::TchError>;

/// `torch.linalg.svd(a, full_matrices=False)`: `(U, S, Vh)`.
///
/// # Errors
/// A libtorch failure (e.g. a non-finite input).
pub fn svd(a: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
    reduced_svd(a).map_err(PeftError::torch("computing an SVD"))
}

/// `linalg_svd(a, full_matrices=False)` without a driver: tch's binding always passes a driver string,
/// which CPU inputs reject, so go through `at::svd` (which calls `linalg_svd` without one and returns
/// `V = Vhᴴ`, a pure transpose).
fn reduced_svd(a: &Tensor) -> TchResult<(Tensor, Tensor, Tensor)> {
    let (u, s, v) = a.f_svd(true, true)?;
    Ok((u, s, v.f_transpose(-2, -1)?))
}

/// `torch.linalg.qr(a)` (reduced): `(Q, R)`.
///
/// # Errors
/// A libtorch failure.
pub fn qr(a: &Tensor) -> Result<(Tensor, Tensor)> {
    Tensor::f_linalg_qr(a, "reduced").map_err(PeftError::torch("computing a QR decomposition"))
}

/// `torch.svd_lowrank(a, q, niter)` (Halko et al., 2009, Algorithms 4.4 and 5.1): a randomized rank-`q`
/// SVD `(U, S, V)` with `a ≈ U diag(S) Vᵀ`. It draws `torch.randn(n, q)` from the default generator, as
/// PyTorch does, so the same seed gives the same factors.
///
/// # Errors
/// A libtorch failure.
pub fn svd_lowrank(a: &Tensor, q: i64, niter: i64) -> Result<(Tensor, Tensor, Tensor)> {
    let f = || -> TchResult<(Tensor, Tensor, Tensor)> {
        let size = a.size();
        let (m, n) = (size[size.len() - 2], size[size.len() - 1]);
        // Assume a tall matrix.
        let a = if m < n { a.f_transpose(-2, -1)? } else { a.shallow_clone() };
        let q_basis = approximate_basis(&a, q, niter)?;
        let b = q_basis.f_transpose(-2, -1)?.f_matmul(&a)?;
        let (u, s, vh) = reduced_svd(&b)?;
        let v = vh.f_transpose(-2, -1)?;
        let u = q_basis.f_matmul(&u)?;
        Ok(if m < n { (v, s, u) } else { (u, s, v) })
    };
    f().map_err(PeftError::torch("computing a randomized SVD"))
}

/// `torch._lowrank.get_approximate_basis(a, q, niter)`.
fn approximate_basis(a: &Tensor, q: i64, niter: i64) -> TchResult<Tensor> {
    let kind = match a.kind() {
        k @ (Kind::Half | Kind::Float | Kind::Double) => k,
        _ => Kind::Float,
    };
    let n = *a.size().last().unwrap_or(&0);
    let r = Tensor::f_randn([n, q], (kind, a.device()))?;
    let qr_q = |x: &Tensor| Tensor::f_linalg_qr(x, "reduced").map(|(q, _)| q);
    let mut basis = qr_q(&a.f_matmul(&r)?)?;
    for _ in 0..niter {
        basis = qr_q(&a.f_transpose(-2, -1)?.f_matmul(&basis)?)?;
        basis = qr_q(&a.f_matmul(&basis)?)?;
    }
    Ok(basis)
}
