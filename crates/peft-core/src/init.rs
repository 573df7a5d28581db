//! Weight initialisers that draw exactly what `torch.nn.init` draws.
//!
//! With the same libtorch, the same seed (`tch::manual_seed` / `torch.manual_seed`) and the same calls in
//! the same order, these produce bit-identical tensors to PyTorch: the bounds are computed with the same
//! double-precision formulas and the sampling is the same ATen op (`uniform_`, `normal_`) on the same
//! default generator. Tensors are expected on the CPU (PEFT initialises adapters on the CPU and then
//! moves them to the base layer's device).

use crate::error::{PeftError, Result};
use tch::Tensor;

/// `torch.nn.init._calculate_fan_in_and_fan_out(t)[0]`: `size(1) * prod(size[2:])`.
pub fn fan_in(t: &Tensor) -> i64 {
    let size = t.size();
    if size.len() < 2 {
        return size.first().copied().unwrap_or(0);
    }
    size[1] * size[2..].iter().product::<i64>()
}

/// `nn.init.kaiming_uniform_(t, a=a)` with PyTorch's defaults (`mode="fan_in"`,
/// `nonlinearity="leaky_relu"`): `U(-b, b)` with `b = sqrt(3) * sqrt(2 / (1 + a²)) / sqrt(fan_in)`.
///
/// # Errors
/// A libtorch failure.
pub fn kaiming_uniform_(t: &mut Tensor, a: f64) -> Result<()> {
    let gain = (2.0 / (1.0 + a.powi(2))).sqrt();
    let std = gain / (fan_in(t) as f64).sqrt();
    let bound = 3.0f64.sqrt() * std;
    uniform_(t, -bound, bound)
}

/// `nn.init.uniform_(t, lo, hi)`.
///
/// # Errors
/// A libtorch failure.
pub fn uniform_(t: &mut Tensor, lo: f64, hi: f64) -> Result<()> {
    tch::no_grad(|| t.f_uniform_(lo, hi)).map(|_| ()).map_err(PeftError::torch("initialising (uniform_)"))
}

/// `nn.init.normal_(t, mean, std)`.
///
/// # Errors
/// A libtorch failure.
pub fn normal_(t: &mut Tensor, mean: f64, std: f64) -> Result<()> {
    tch::no_grad(|| t.f_normal_(mean, std)).map(|_| ()).map_err(PeftError::torch("initialising (normal_)"))
}

/// `nn.init.zeros_(t)`.
///
/// # Errors
/// A libtorch failure.
pub fn zeros_(t: &mut Tensor) -> Result<()> {
    tch::no_grad(|| t.f_zero_()).map(|_| ()).map_err(PeftError::torch("initialising (zeros_)"))
}

/// The bias init of `nn.Linear` / `nn.ConvNd`: `U(-1/sqrt(fan_in), 1/sqrt(fan_in))` (0 when fan_in is 0).
///
/// # Errors
/// A libtorch failure.
pub fn bias_uniform_(bias: &mut Tensor, fan_in: i64) -> Result<()> {
    let bound = if fan_in > 0 { 1.0 / (fan_in as f64).sqrt() } else { 0.0 };
    uniform_(bias, -bound, bound)
}
