//! The butterfly structure of a BOFT rotation: PEFT's block-layout checks, its butterfly permutations
//! and their matrices, and the multiplicative block dropout.
//!
//! With `m` butterfly factors, `b` blocks of size `h` (`D = b·h`), factor `i` (0-based) is the
//! block-diagonal rotation `B_i` conjugated by the permutation `P_i`: `P_i·B_i·P_iᵀ`. `P_0` is the
//! identity; `P_i` (`i ≥ 1`) cuts `D` into chunks of `h·2^i`, each chunk into `2^(i+1)` pieces of `h/2`,
//! and lists the even pieces of each chunk before the odd ones — so the blocks of factor `i` mix inputs
//! `h·2^(i−1)` apart, and the product of all factors is dense over chunks of `h·2^(m−1)`.

use crate::config::layout_error;
use peft_core::{PeftError, Result};
use tch::{Device, Kind, Tensor};

/// The block layout of one adapter on one layer (PEFT's `boft_block_size`, `boft_block_num` and
/// `boft_n_butterfly_factor` after `update_layer`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// The rotated dimension `D` (`in_features`, or `in_channels · k²`).
    pub dim: i64,
    /// Size `h` of each block.
    pub block_size: i64,
    /// Blocks `b` per factor (`b·h = D`).
    pub block_num: i64,
    /// Butterfly factors `m` (≥ 1).
    pub factors: i64,
}

/// What PEFT's messages call the rotated dimension.
fn dim_name(conv: bool) -> &'static str {
    if conv {
        "Convolutional kernel dimension"
    } else {
        "in_features"
    }
}

impl Layout {
    /// `update_layer`'s derivation of the missing one of `block_size` / `block_num` from `dim`, with
    /// each of PEFT's checks and messages (`conv` picks the wording of `Conv2d.update_layer`).
    ///
    /// # Errors
    /// A factor below 1, a value that does not divide `dim`, a layout the butterfly factors cannot
    /// split, odd blocks with more than one factor.
    pub fn resolve(dim: i64, size: i64, num: i64, factors: i64, conv: bool, module: &str) -> Result<Self> {
        let bad = |message: String| Err(layout_error(module, message));
        // PEFT's `boft_n_butterfly_factor - 1` ("the paper's notation").
        let f = factors - 1;
        if f < 0 {
            return bad(format!(
                "You can only specify boft_n_butterfly_factor {factors} to be a positive integer number."
            ));
        }
        if f > 62 {
            return bad(format!("boft_n_butterfly_factor ({factors}) is too large"));
        }
        let what = dim_name(conv);
        let pow = 1i64 << f;
        let (size, num) = if size == 0 && num > 0 {
            if dim % num != 0 {
                return bad(format!("{what} ({dim}) must be divisible by boft_block_num ({num})!"));
            }
            if f != 0 {
                // `int(math.log2(num))` for a positive integer: the index of its highest bit.
                let log2 = 63 - i64::from(num.leading_zeros());
                if f > log2 {
                    return bad(format!(
                        "Invalid combination of boft_n_butterfly_factor ({factors}) and boft_block_num ({num})!"
                    ));
                }
                if num % pow != 0 {
                    return bad(format!(
                        "boft_block_num ({num}) must be a multiple of 2 raised to the power of \
                         boft_n_butterfly_factor ({factors})!"
                    ));
                }
            }
            (dim / num, num)
        } else if size > 0 && num == 0 {
            if dim % size != 0 {
                return bad(format!("{what} ({dim}) must be divisible by boft_block_size ({size})!"));
            }
            if f != 0 {
                let span = size.checked_mul(pow);
                if span.is_none_or(|s| dim < s || dim % s != 0) {
                    return bad(format!(
                        "Invalid combination of {} ({dim}), boft_n_butterfly_factor ({factors}) and \
                         boft_block_size ({size})!",
                        if conv { "convolutional kernel dimension" } else { "in_features" }
                    ));
                }
            }
            (size, dim / size)
        } else {
            return bad(format!(
                "exactly one of boft_block_size ({size}) and boft_block_num ({num}) must be positive"
            ));
        };
        if f != 0 {
            if num % 2 != 0 {
                return bad(format!("boft_block_num ({num}) must be an even number!"));
            }
            if size % 2 != 0 {
                return bad(format!("boft_block_size ({size}) must be an even number!"));
            }
        }
        Ok(Self { dim, block_size: size, block_num: num, factors })
    }

    /// PEFT's `block_butterfly_perm(D, b / 2^i, h / 2, m − 1)` for factor `i`: where each output position
    /// takes its input from (the identity without butterfly factors).
    pub fn permutation(&self, i: i64) -> Vec<i64> {
        let n = self.dim;
        if self.factors == 1 {
            return (0..n).collect();
        }
        let r = self.block_size / 2;
        let chunk = n / (self.block_num >> i);
        let pieces = chunk / r;
        let order: Vec<i64> = (0..pieces).step_by(2).chain((1..pieces).step_by(2)).collect();
        let mut indices = Vec::with_capacity(n as usize);
        for start in (0..n).step_by(chunk as usize) {
            for &piece in &order {
                indices.extend((0..r).map(|t| start + piece * r + t));
            }
        }
        indices
    }

    /// PEFT's non-persistent `boft_P` buffer: `(m, D, D)`, row `j` of factor `i` one-hot at
    /// `permutation(i)[j]` (`perm2mat`), in f32 on `device`.
    ///
    /// # Errors
    /// A libtorch failure.
    pub fn permutation_matrices(&self, device: Device) -> Result<Tensor> {
        let torch = PeftError::torch("building BOFT's butterfly permutations");
        let n = self.dim;
        let mats = (0..self.factors)
            .map(|i| {
                let cols = Tensor::from_slice(&self.permutation(i));
                let rows = Tensor::arange(n, (Kind::Int64, Device::Cpu));
                let mut p = Tensor::f_zeros([n, n], (Kind::Float, Device::Cpu))?;
                let _ = p.f_index_put_(&[Some(rows), Some(cols)], &Tensor::from(1.0f32), false)?;
                Ok(p)
            })
            .collect::<std::result::Result<Vec<_>, tch::TchError>>()
            .map_err(torch)?;
        Tensor::f_stack(&mats, 0)
            .and_then(|p| p.f_to_device(device))
            .map_err(PeftError::torch("building BOFT's butterfly permutations"))
    }
}

/// PEFT's `MultiplicativeDropoutLayer` in training: of the blocks `x` `(N, D, H, H)`, those of one
/// butterfly factor drawn at random (`torch.randint(0, N, (1,))`) have `⌊p·D⌋` of their `D` blocks,
/// drawn by `torch.randperm(D)`, replaced by the identity — the same draws from the global generator.
pub fn multiplicative_dropout(x: &Tensor, p: f64) -> Tensor {
    let s = x.size();
    let (n, d, h) = (s[0], s[1], s[2]);
    let device = x.device();
    let n_random = Tensor::randint(n, [1], (Kind::Int64, Device::Cpu)).int64_value(&[0]);
    // `int(self.p * D)`: Python truncates towards zero.
    let replaced = ((p * d as f64) as i64).clamp(0, d);
    let mask = Tensor::cat(
        &[
            Tensor::ones([replaced], (Kind::Float, device)),
            Tensor::zeros([d - replaced], (Kind::Float, device)),
        ],
        0,
    );
    let perm = Tensor::randperm(d, (Kind::Int64, Device::Cpu));
    let mask = mask.index(&[Some(perm.to_device(device))]).view([1, d, 1, 1]);
    let full = Tensor::zeros([n, d, 1, 1], (Kind::Float, device));
    full.get(n_random).copy_(&mask.squeeze_dim(0));
    let eye = Tensor::eye(h, (Kind::Float, device)).repeat([n, d, 1, 1]);
    full.rsub_scalar(1) * x + &full * eye
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(dim: i64, size: i64, num: i64, factors: i64) -> Result<Layout> {
        Layout::resolve(dim, size, num, factors, false, "lin")
    }

    #[test]
    fn one_factor_is_the_identity_permutation() {
        let l = layout(8, 2, 0, 1).unwrap();
        assert_eq!((l.block_size, l.block_num), (2, 4));
        assert_eq!(l.permutation(0), (0..8).collect::<Vec<_>>());
    }

    #[test]
    fn butterfly_permutations_interleave_half_blocks() {
        // D = 8, h = 2, b = 4, two factors: factor 1 works on chunks of 4 in pieces of 1.
        let l = layout(8, 2, 0, 2).unwrap();
        assert_eq!(l.permutation(0), vec![0, 1, 2, 3, 4, 5, 6, 7]);
        assert_eq!(l.permutation(1), vec![0, 2, 1, 3, 4, 6, 5, 7]);
        // D = 16, h = 4, three factors: factor 2 spans the whole dimension in pieces of 2.
        let l = layout(16, 4, 0, 3).unwrap();
        assert_eq!(l.permutation(0), (0..16).collect::<Vec<_>>());
        assert_eq!(l.permutation(1), vec![0, 1, 4, 5, 2, 3, 6, 7, 8, 9, 12, 13, 10, 11, 14, 15]);
        assert_eq!(l.permutation(2), vec![0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15]);
    }

    #[test]
    fn layouts_peft_refuses_are_refused_with_its_messages() {
        let msg = |r: Result<Layout>| r.unwrap_err().to_string();
        assert!(
            msg(layout(10, 3, 0, 1)).contains("in_features (10) must be divisible by boft_block_size (3)!")
        );
        assert!(msg(layout(10, 0, 3, 1)).contains("must be divisible by boft_block_num (3)!"));
        assert!(msg(layout(8, 4, 0, 3)).contains("Invalid combination of in_features (8)"));
        assert!(msg(layout(12, 0, 2, 3)).contains("Invalid combination of boft_n_butterfly_factor (3)"));
        assert!(msg(layout(24, 0, 6, 3)).contains("must be a multiple of 2 raised to the power"));
        assert!(msg(layout(12, 3, 0, 2)).contains("boft_block_size (3) must be an even number!"));
        assert!(msg(layout(18, 0, 2, 2)).contains("boft_block_size (9) must be an even number!"));
        assert!(msg(layout(8, 2, 0, 0)).contains("boft_n_butterfly_factor 0 to be a positive integer"));
        let conv = Layout::resolve(18, 4, 0, 1, true, "conv").unwrap_err().to_string();
        assert!(conv.contains("Convolutional kernel dimension (18) must be divisible"), "{conv}");
    }
}
