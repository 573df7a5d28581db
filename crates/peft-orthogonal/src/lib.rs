//! The family crate of the orthogonal finetuning methods, OFT and BOFT: the pieces both build their
//! rotations from, written once so the two stay bit-identical to PEFT 0.21.2 (whose `oft` and `boft`
//! modules each carry their own copy).
//!
//! * skew-symmetric matrices: OFT stores the strict upper triangle of each block
//!   ([`skew_from_triangle`], [`triangle_indices`]); BOFT stores full blocks and takes their
//!   skew-symmetric part ([`skew_part`]);
//! * the Cayley transform of a batch of skew-symmetric blocks, `R = (I − Q)(I + Q)⁻¹`: exact
//!   ([`cayley`], `torch.linalg.solve(I + Q, I − Q, left=False)`, always in fp32 as both PEFT copies do) or
//!   OFT's truncated Neumann series ([`cayley_neumann`]);
//! * the `(D, D)` block-diagonal matrix of the blocks ([`block_diagonal`], `torch.block_diag`).
//!
//! Every function replays PEFT's ATen calls in PEFT's order; nothing here owns parameters or knows a
//! layer. Like tch's modules, the functions panic inside libtorch on mismatched shapes: callers check
//! shapes when they create a layer.
//!
//! ```
//! use tch::{Device, Kind, Tensor};
//!
//! let blocks = Tensor::randn([3, 4, 4], (Kind::Float, Device::Cpu));
//! let q = peft_orthogonal::skew_part(&blocks);
//! let r = peft_orthogonal::cayley(&q, Kind::Float);
//! let bd = peft_orthogonal::block_diagonal(&r, 3);
//! assert_eq!(bd.size(), [12, 12]);
//! let eye = Tensor::eye(12, (Kind::Float, Device::Cpu));
//! assert!(bd.mm(&bd.tr()).allclose(&eye, 1e-5, 1e-5, false), "an orthogonal matrix");
//! ```

use tch::{Device, Kind, Tensor};

/// `torch.triu_indices(n, n, 1)` as `(rows, cols)`: where OFT's stored vector goes in each block.
pub fn triangle_indices(n: i64, device: Device) -> (Tensor, Tensor) {
    let triu = Tensor::triu_indices(n, n, 1, (Kind::Int64, device));
    (triu.get(0), triu.get(1))
}

/// OFT's `_pytorch_skew_symmetric`: `U − Uᵀ` per block, `U` `(n, n)` holding each row of `vec`
/// `(blocks, n(n−1)/2)` in its strict upper triangle at `(rows, cols)` (see [`triangle_indices`]).
pub fn skew_from_triangle(vec: &Tensor, rows: &Tensor, cols: &Tensor, n: i64) -> Tensor {
    let b = vec.size()[0];
    let mut m = Tensor::zeros([b, n, n], (vec.kind(), vec.device()));
    let _ = m.index_put_(&[None, Some(rows), Some(cols)], vec, false);
    &m - m.transpose(-2, -1)
}

/// The inverse of [`skew_from_triangle`] (OFT's `_pytorch_skew_symmetric_inv`): the upper triangles.
pub fn triangle_of(m: &Tensor, rows: &Tensor, cols: &Tensor) -> Tensor {
    m.index(&[None, Some(rows), Some(cols)])
}

/// BOFT's skew-symmetric part of full blocks `(b, n, n)`: `0.5 · (A − Aᵀ)`.
pub fn skew_part(a: &Tensor) -> Tensor {
    (a - a.transpose(1, 2)) * 0.5
}

/// The exact Cayley transform of skew-symmetric blocks `q` `(b, n, n)`: `(I − Q)(I + Q)⁻¹`, solved as
/// `X (I + Q) = I − Q` with the identity in fp32 (so half-precision blocks are solved in fp32, as both of
/// PEFT's copies do), then cast to `kind` (the parameter's dtype).
pub fn cayley(q: &Tensor, kind: Kind) -> Tensor {
    let s = q.size();
    let (b, n) = (s[0], s[s.len() - 1]);
    let id = Tensor::eye(n, (Kind::Float, q.device())).unsqueeze(0).expand([b, n, n], false);
    Tensor::linalg_solve(&(&id + q), &(&id - q), false).to_kind(kind)
}

/// OFT's truncated Neumann series for the Cayley transform of `q` `(b, n, n)` with `terms` terms:
/// `I + 2Q + 2Q² + … + 2Qᵗ⁻² + Qᵗ⁻¹` (`I` for one term, `I + 2Q` for two), in `q`'s dtype.
pub fn cayley_neumann(q: &Tensor, terms: i64) -> Tensor {
    let s = q.size();
    let (b, n) = (s[0], s[s.len() - 1]);
    let mut r = Tensor::eye(n, (q.kind(), q.device())).repeat([b, 1, 1]);
    if terms > 1 {
        // `R.add_(X, alpha=2.0)`: 2·X is exact, so adding it rounds once, as the fused add does.
        r += q * 2.0;
        if terms > 2 {
            let squared = q.bmm(q);
            r += &squared * 2.0;
            let mut power = squared;
            for _ in 3..(terms - 1) {
                power = power.bmm(q);
                r += &power * 2.0;
            }
            power = power.bmm(q);
            r += &power;
        }
    }
    r
}

/// OFT's `_block_diagonal` (and BOFT's `torch.block_diag(*torch.unbind(R))`): the `(rank·n, rank·n)`
/// block-diagonal matrix of the `rank` blocks of `rot` `(rank, n, n)`; a single block `(1, n, n)` is
/// repeated `rank` times (OFT's `block_share`).
pub fn block_diagonal(rot: &Tensor, rank: i64) -> Tensor {
    let shared = rot.size()[0] == 1;
    let blocks: Vec<Tensor> = (0..rank).map(|i| rot.get(if shared { 0 } else { i })).collect();
    Tensor::block_diag(&blocks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_zero_skew_matrix_is_the_identity_rotation() {
        let q = Tensor::zeros([2, 3, 3], (Kind::Float, Device::Cpu));
        let eye = Tensor::eye(3, (Kind::Float, Device::Cpu)).repeat([2, 1, 1]);
        assert!(cayley(&q, Kind::Float).equal(&eye));
        assert!(cayley_neumann(&q, 5).equal(&eye));
    }

    #[test]
    fn the_triangle_round_trips() {
        let (rows, cols) = triangle_indices(4, Device::Cpu);
        let v = Tensor::randn([2, 6], (Kind::Float, Device::Cpu));
        let m = skew_from_triangle(&v, &rows, &cols, 4);
        assert!(m.equal(&-m.transpose(1, 2)));
        assert!(triangle_of(&m, &rows, &cols).equal(&v));
    }

    #[test]
    fn half_precision_blocks_are_solved_in_fp32() {
        let q = skew_part(&Tensor::randn([2, 4, 4], (Kind::Float, Device::Cpu)));
        let r = cayley(&q.to_kind(Kind::BFloat16), Kind::BFloat16);
        assert_eq!(r.kind(), Kind::BFloat16);
        let r32 = cayley(&q.to_kind(Kind::BFloat16).to_kind(Kind::Float), Kind::Float);
        assert!(r.equal(&r32.to_kind(Kind::BFloat16)));
    }
}
