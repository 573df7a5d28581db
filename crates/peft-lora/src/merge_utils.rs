//! Model-merging operators on stacks of task tensors: PEFT's `peft.utils.merge_utils` (task arithmetic,
//! TIES, DARE, magnitude pruning), op for op, so the same inputs and seed give the same tensors.
//!
//! Each operator takes the task tensors (same shape) and one weight per tensor. DARE draws its masks with
//! `torch.bernoulli` from the default generator, one tensor after the other, as PEFT does.

use peft_core::error::{PeftError, Result};
use tch::{Kind, Tensor};

type TchResult<T> = std::result::Result<T, tch::TchError>;

/// How TIES elects the sign of each entry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MajoritySign {
    /// By the sign of the sum of the values (`"total"`).
    #[default]
    Total,
    /// By the more frequent sign (`"frequency"`).
    Frequency,
}

impl MajoritySign {
    /// Parses PEFT's name.
    ///
    /// # Errors
    /// An unknown name.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "total" => Ok(MajoritySign::Total),
            "frequency" => Ok(MajoritySign::Frequency),
            other => Err(PeftError::Invalid(format!(
                "majority_sign_method must be \"total\" or \"frequency\", not {other:?}"
            ))),
        }
    }
}

/// How entries are pruned before merging.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PruneMethod {
    /// Keep the `density` fraction of largest magnitudes.
    Magnitude,
    /// Keep each entry with probability `density` (`rescale`: divide the kept ones by `density`).
    Random {
        /// Preserve the expected value.
        rescale: bool,
    },
}

fn torch_err(what: &'static str) -> impl FnOnce(tch::TchError) -> PeftError {
    PeftError::torch(what)
}

/// `weights` viewed as `(n, 1, 1, …)` to broadcast over stacked task tensors.
fn reshape_weights(task_tensors: &Tensor, weights: &Tensor) -> TchResult<Tensor> {
    let mut shape = weights.size();
    shape.extend(std::iter::repeat_n(1, task_tensors.dim().saturating_sub(weights.dim())));
    weights.f_view(shape.as_slice())
}

/// The task weights as PEFT builds them: `torch.tensor(list_of_floats)` (float32) on `device`.
///
/// # Errors
/// A libtorch failure.
pub fn weights_tensor(weights: &[f64], device: tch::Device) -> Result<Tensor> {
    let w: Vec<f32> = weights.iter().map(|&w| w as f32).collect();
    Tensor::f_from_slice(&w).and_then(|t| t.f_to_device(device)).map_err(torch_err("building merge weights"))
}

/// `magnitude_based_pruning`: zero all but the `int(density · numel)` largest magnitudes.
fn magnitude_based_pruning(t: &Tensor, density: f64) -> TchResult<Tensor> {
    let mask = t.f_zeros_like()?.f_reshape([-1])?;
    let k = (density * t.numel() as f64) as i64;
    let (_, idx) = t.f_abs()?.f_reshape([-1])?.f_topk(k, -1, true, true)?;
    let mask = mask.f_index_fill(0, &idx, 1.0)?;
    t.f_mul(&mask.f_reshape(t.size())?)
}

/// `random_pruning`: a Bernoulli(`density`) mask, optionally rescaled.
fn random_pruning(t: &Tensor, density: f64, rescale: bool) -> TchResult<Tensor> {
    let mask = t.f_full_like(density)?.f_bernoulli()?;
    let pruned = t.f_mul(&mask)?;
    if rescale {
        pruned.f_div_scalar(density)
    } else {
        Ok(pruned)
    }
}

/// PEFT's `prune`: no-op (with a warning) for `density >= 1`.
///
/// # Errors
/// A negative density, or a libtorch failure.
pub fn prune(t: &Tensor, density: f64, method: PruneMethod, warnings: &mut Vec<String>) -> Result<Tensor> {
    if density >= 1.0 {
        warnings.push(format!(
            "The density {density} is greater than or equal to 1, no pruning will be performed."
        ));
        return Ok(t.shallow_clone());
    }
    if density < 0.0 {
        return Err(PeftError::Invalid(format!("Density should be >= 0, got {density}")));
    }
    match method {
        PruneMethod::Magnitude => magnitude_based_pruning(t, density),
        PruneMethod::Random { rescale } => random_pruning(t, density, rescale),
    }
    .map_err(torch_err("pruning a task tensor"))
}

/// `calculate_majority_sign_mask` over tensors stacked on dimension 0.
fn majority_sign_mask(stacked: &Tensor, method: MajoritySign) -> TchResult<Tensor> {
    let sign = stacked.f_sign()?;
    let magnitude = match method {
        MajoritySign::Total => stacked.f_sum_dim_intlist([0i64].as_slice(), false, None::<Kind>)?,
        MajoritySign::Frequency => sign.f_sum_dim_intlist([0i64].as_slice(), false, None::<Kind>)?,
    };
    let one = Tensor::from(1i64).f_to_device(stacked.device())?;
    let minus_one = Tensor::from(-1i64).f_to_device(stacked.device())?;
    let majority = one.f_where_self(&magnitude.f_ge(0.0)?, &minus_one)?;
    sign.f_eq_tensor(&majority)
}

/// `disjoint_merge`: the mean of the entries that agree with the elected sign.
fn disjoint_merge(weighted: &Tensor, mask: &Tensor) -> TchResult<Tensor> {
    let mixed = weighted.f_mul(mask)?.f_sum_dim_intlist([0i64].as_slice(), false, None::<Kind>)?;
    let preserved = mask.f_sum_dim_intlist([0i64].as_slice(), false, None::<Kind>)?;
    mixed.f_div(&preserved.f_clamp_min(1.0)?)
}

fn stack_weighted(tensors: &[Tensor], weights: &Tensor) -> TchResult<(Tensor, Tensor)> {
    let stacked = Tensor::f_stack(tensors, 0)?;
    let w = reshape_weights(&stacked, weights)?;
    let weighted = stacked.f_mul(&w)?;
    Ok((stacked, weighted))
}

/// `task_arithmetic`: `Σ wᵢ·tᵢ`.
///
/// # Errors
/// Mismatched shapes or a libtorch failure.
pub fn task_arithmetic(tensors: &[Tensor], weights: &Tensor) -> Result<Tensor> {
    let f = || stack_weighted(tensors, weights)?.1.f_sum_dim_intlist([0i64].as_slice(), false, None::<Kind>);
    f().map_err(torch_err("task arithmetic"))
}

fn pruned(
    tensors: &[Tensor],
    density: f64,
    method: PruneMethod,
    warnings: &mut Vec<String>,
) -> Result<Vec<Tensor>> {
    tensors.iter().map(|t| prune(t, density, method, warnings)).collect()
}

/// `magnitude_prune`: magnitude pruning, then task arithmetic.
///
/// # Errors
/// As [`prune`] and [`task_arithmetic`].
pub fn magnitude_prune(
    tensors: &[Tensor],
    weights: &Tensor,
    density: f64,
    warnings: &mut Vec<String>,
) -> Result<Tensor> {
    task_arithmetic(&pruned(tensors, density, PruneMethod::Magnitude, warnings)?, weights)
}

/// `ties`: magnitude pruning, sign election, disjoint merge.
///
/// # Errors
/// As [`prune`].
pub fn ties(
    tensors: &[Tensor],
    weights: &Tensor,
    density: f64,
    method: MajoritySign,
    warnings: &mut Vec<String>,
) -> Result<Tensor> {
    let tensors = pruned(tensors, density, PruneMethod::Magnitude, warnings)?;
    elect_and_merge(&tensors, weights, method)
}

fn elect_and_merge(tensors: &[Tensor], weights: &Tensor, method: MajoritySign) -> Result<Tensor> {
    let f = || -> TchResult<Tensor> {
        let stacked = Tensor::f_stack(tensors, 0)?;
        let mask = majority_sign_mask(&stacked, method)?;
        let weighted = stacked.f_mul(&reshape_weights(&stacked, weights)?)?;
        disjoint_merge(&weighted, &mask)
    };
    f().map_err(torch_err("TIES merging"))
}

/// `dare_linear`: random pruning with rescaling, then task arithmetic.
///
/// # Errors
/// As [`prune`].
pub fn dare_linear(
    tensors: &[Tensor],
    weights: &Tensor,
    density: f64,
    warnings: &mut Vec<String>,
) -> Result<Tensor> {
    task_arithmetic(&pruned(tensors, density, PruneMethod::Random { rescale: true }, warnings)?, weights)
}

/// `dare_ties`: random pruning with rescaling, sign election, disjoint merge.
///
/// # Errors
/// As [`prune`].
pub fn dare_ties(
    tensors: &[Tensor],
    weights: &Tensor,
    density: f64,
    method: MajoritySign,
    warnings: &mut Vec<String>,
) -> Result<Tensor> {
    let tensors = pruned(tensors, density, PruneMethod::Random { rescale: true }, warnings)?;
    elect_and_merge(&tensors, weights, method)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(v: &[f32]) -> Tensor {
        Tensor::from_slice(v)
    }

    #[test]
    fn ties_keeps_the_majority_sign_and_averages_agreeing_entries() {
        let a = t(&[1.0, -2.0, 3.0, 0.5]);
        let b = t(&[2.0, 1.0, -1.0, 0.25]);
        let w = weights_tensor(&[1.0, 1.0], tch::Device::Cpu).unwrap();
        let mut warn = vec![];
        let out = ties(&[a, b], &w, 1.0, MajoritySign::Total, &mut warn).unwrap();
        // Entry 1: sum -1 → negative elected, only -2 agrees; entry 2: sum 2 → positive, only 3 agrees.
        assert_eq!(Vec::<f32>::try_from(&out).unwrap(), vec![1.5, -2.0, 3.0, 0.375]);
        assert_eq!(warn.len(), 2, "density 1 prunes nothing and says so");
    }

    #[test]
    fn magnitude_pruning_keeps_the_largest_fraction() {
        let a = t(&[0.1, -4.0, 0.3, 2.0]);
        let w = weights_tensor(&[2.0], tch::Device::Cpu).unwrap();
        let out = magnitude_prune(&[a], &w, 0.5, &mut vec![]).unwrap();
        assert_eq!(Vec::<f32>::try_from(&out).unwrap(), vec![0.0, -8.0, 0.0, 4.0]);
        assert!(prune(&t(&[1.0]), -0.1, PruneMethod::Magnitude, &mut vec![]).is_err());
    }
}
