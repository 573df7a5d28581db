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

/// PEFT's `IncrementalPCA` (scikit-learn's algorithm in PyTorch ops), fitted batch by batch with
/// [`IncrementalPca::partial_fit`]. The same inputs give the same components as PEFT's.
#[derive(Debug)]
pub struct IncrementalPca {
    n_components: i64,
    /// Use `svd_lowrank` with `q = 2·n_components`, 4 subspace iterations.
    lowrank: bool,
    /// Re-seed the default generator with this before each randomized SVD (PEFT forks the generator and
    /// restores it afterwards; tch cannot read generator state, so here the re-seeding stays).
    lowrank_seed: Option<i64>,
    /// `(n_components, n_features)`.
    pub components: Option<Tensor>,
    /// `(n_components,)`.
    pub singular_values: Option<Tensor>,
    /// Explained variance ratio per component.
    pub explained_variance_ratio: Option<Tensor>,
    mean: Option<Tensor>,
    var: Option<Tensor>,
    n_samples_seen: Option<Tensor>,
    n_features: i64,
}

impl IncrementalPca {
    /// An unfitted PCA keeping `n_components` components.
    pub fn new(n_components: i64, lowrank: bool, lowrank_seed: Option<i64>) -> Self {
        Self {
            n_components,
            lowrank,
            lowrank_seed,
            components: None,
            singular_values: None,
            explained_variance_ratio: None,
            mean: None,
            var: None,
            n_samples_seen: None,
            n_features: 0,
        }
    }

    /// `_incremental_mean_and_var`.
    fn mean_and_var(&self, x: &Tensor) -> TchResult<(Tensor, Tensor, Tensor)> {
        let dev = x.device();
        let last_count = match &self.n_samples_seen {
            Some(c) => c.shallow_clone(),
            None => Tensor::f_from_slice(&[0i64])?.f_to_device(dev)?,
        };
        let new_count = Tensor::f_from_slice(&[x.size()[0]])?.f_to_device(dev)?;
        let updated_count = last_count.f_add(&new_count)?;
        let last_sum = match &self.mean {
            None => Tensor::f_zeros([x.size()[1]], (Kind::Double, dev))?,
            Some(m) => m.f_mul(&last_count)?,
        };
        let new_sum = x.f_sum_dim_intlist([0i64].as_slice(), false, Kind::Double)?;
        let updated_mean = last_sum.f_add(&new_sum)?.f_div(&updated_count)?;
        let t = new_sum.f_div(&new_count)?;
        let mut temp = x.f_sub(&t)?;
        let correction = temp.f_sum_dim_intlist([0i64].as_slice(), false, Kind::Double)?.f_square()?;
        let _ = temp.f_square_()?;
        let new_unnormalized = temp
            .f_sum_dim_intlist([0i64].as_slice(), false, Kind::Double)?
            .f_sub(&correction.f_div(&new_count)?)?;
        let updated_var = match &self.var {
            None => new_unnormalized.f_div(&updated_count)?,
            Some(last_var) => {
                let last_unnormalized = last_var.f_mul(&last_count)?;
                let last_over_new = last_count.f_to_kind(Kind::Double)?.f_div(&new_count)?;
                let cross = last_over_new
                    .f_div(&updated_count)?
                    .f_mul(&last_sum.f_div(&last_over_new)?.f_sub(&new_sum)?.f_square()?)?;
                last_unnormalized.f_add(&new_unnormalized)?.f_add(&cross)?.f_div(&updated_count)?
            }
        };
        Ok((updated_mean, updated_var, updated_count))
    }

    /// `_svd_flip(u, v, u_based_decision=False)`.
    fn svd_flip(u: &Tensor, v: &Tensor) -> TchResult<(Tensor, Tensor)> {
        let rows = v.size()[0];
        let max_abs_rows = v.f_abs()?.f_argmax(1, false)?;
        let row_idx = Tensor::f_arange(rows, (Kind::Int64, v.device()))?;
        let signs = v.f_index(&[Some(row_idx), Some(max_abs_rows)])?.f_sign()?;
        let u_cols = u.size()[1];
        let u = u.f_mul(&signs.f_narrow(0, 0, u_cols.min(signs.size()[0]))?.f_view([1, -1])?)?;
        let v = v.f_mul(&signs.f_view([-1, 1])?)?;
        Ok((u, v))
    }

    /// `partial_fit(X)` for `X` `(n_samples, n_features)`.
    ///
    /// # Errors
    /// More components than features or samples, a feature count differing from the first batch, or a
    /// libtorch failure.
    pub fn partial_fit(&mut self, x: &Tensor) -> Result<()> {
        let (n_samples, n_features) = (x.size()[0], x.size()[1]);
        if self.n_components > n_features {
            return Err(PeftError::Invalid(format!(
                "n_components={} invalid for n_features={n_features}, need more rows than columns for \
                 IncrementalPCA processing.",
                self.n_components
            )));
        }
        if self.n_components > n_samples {
            return Err(PeftError::Invalid(format!(
                "n_components={} must be less or equal to the batch number of samples {n_samples}",
                self.n_components
            )));
        }
        let first = self.components.is_none();
        if first {
            self.n_features = n_features;
        } else if n_features != self.n_features {
            return Err(PeftError::Invalid(
                "Number of features of the new batch does not match the number of features of the first batch.".into(),
            ));
        }
        let f = || -> TchResult<()> {
            let x = match x.kind() {
                Kind::Float | Kind::Double => x.f_detach_copy()?,
                _ => x.f_to_kind(Kind::Float)?,
            };
            let (col_mean, col_var, n_total) = self.mean_and_var(&x)?;
            let data = if first {
                let mut x = x;
                let _ = x.f_sub_(&col_mean)?;
                x
            } else {
                let col_batch_mean = x.f_mean_dim([0i64].as_slice(), false, None::<Kind>)?;
                let mut x = x;
                let _ = x.f_sub_(&col_batch_mean)?;
                let seen = self
                    .n_samples_seen
                    .as_ref()
                    .map(Tensor::shallow_clone)
                    .unwrap_or_else(|| n_total.shallow_clone());
                let factor =
                    seen.f_to_kind(Kind::Double)?.f_div(&n_total)?.f_mul_scalar(n_samples)?.f_sqrt()?;
                let mean = self
                    .mean
                    .as_ref()
                    .map(Tensor::shallow_clone)
                    .unwrap_or_else(|| col_batch_mean.shallow_clone());
                let correction = factor.f_mul(&mean.f_sub(&col_batch_mean)?)?;
                let sv = self.singular_values.as_ref().map(Tensor::shallow_clone).unwrap_or_default();
                let comps = self.components.as_ref().map(Tensor::shallow_clone).unwrap_or_default();
                Tensor::f_vstack(&[sv.f_view([-1, 1])?.f_mul(&comps)?, x, correction])?
            };
            let (u, s, vt) = if self.lowrank {
                let q = 2 * self.n_components;
                // PEFT seeds inside `fork_rng`: the caller's random stream goes on unchanged.
                let (u, s, v) = match self.lowrank_seed {
                    Some(seed) => crate::rng::fork_default_cpu(|| {
                        tch::manual_seed(seed);
                        svd_lowrank(&data, q, 4)
                    })
                    .and_then(|r| r),
                    None => svd_lowrank(&data, q, 4),
                }
                .map_err(|e| tch::TchError::Torch(e.to_string()))?;
                (u, s, v.f_transpose(-2, -1)?)
            } else {
                reduced_svd(&data)?
            };
            let (_u, vt) = Self::svd_flip(&u, &vt)?;
            let total = col_var.f_mul(&n_total)?.f_sum(None::<Kind>)?;
            let ratio = s.f_square()?.f_div(&total)?;
            let k = self.n_components;
            self.n_samples_seen = Some(n_total);
            self.components = Some(vt.f_narrow(0, 0, k.min(vt.size()[0]))?);
            self.singular_values = Some(s.f_narrow(0, 0, k.min(s.size()[0]))?);
            self.mean = Some(col_mean);
            self.var = Some(col_var);
            self.explained_variance_ratio = Some(ratio.f_narrow(0, 0, k.min(ratio.size()[0]))?);
            Ok(())
        };
        tch::no_grad(f).map_err(PeftError::torch("an incremental PCA step"))
    }
}
