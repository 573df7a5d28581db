//! transformers' `ACT2FN`: every activation a config may name by string, computed the way transformers
//! computes it (the same formula, not merely the same function, so results agree to the last bit where
//! transformers spells an approximation out in Python).
//!
//! Model configs (`hidden_act`, `activation_function`) and methods whose config carries an activation
//! name (PEANuT's `act_fn`) parse it with [`Activation::from_name`], which accepts exactly `ACT2FN`'s
//! keys.
//!
//! ```
//! use peft_core::Activation;
//! use tch::Tensor;
//!
//! let act = Activation::from_name("quick_gelu")?;
//! let x = Tensor::from_slice(&[-1.0f32, 0.0, 2.0]);
//! let y = act.forward(&x);
//! let expected = &x * (&x * 1.702).sigmoid();
//! assert!(y.allclose(&expected, 0.0, 0.0, false));
//! assert_eq!(act.name(), "quick_gelu");
//! assert!(Activation::from_name("gelu_fancy").is_err());
//! # Ok::<(), peft_core::PeftError>(())
//! ```

use std::f64::consts::PI;

use tch::{Kind, Tensor};

use crate::error::{PeftError, Result};

/// `laplace`'s `mu` and `sigma` as transformers writes them (rounded, so not `FRAC_1_SQRT_2`).
#[allow(clippy::approx_constant)]
const LAPLACE_MU: f64 = 0.707107;
const LAPLACE_SIGMA: f64 = 0.282095;

/// One entry of transformers' `ACT2FN`.
///
/// `prelu` and `xielu` have learnable parameters in transformers; `ACT2FN[name]` builds a fresh module,
/// so a method that looks its activation up by name (as PEANuT does in every forward pass) always sees
/// their initial values, which is what these variants compute.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Activation {
    /// `gelu`: exact GELU (`F.gelu`).
    Gelu,
    /// `gelu_10`: exact GELU clipped to `[-10, 10]`.
    Gelu10,
    /// `gelu_fast`: `0.5·x·(1 + tanh(0.7978845608·x·(1 + 0.044715·x²)))`.
    GeluFast,
    /// `gelu_new`: OpenAI's tanh approximation, `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`.
    GeluNew,
    /// `gelu_python`: exact GELU written with `erf`.
    GeluPython,
    /// `gelu_pytorch_tanh`: `F.gelu(approximate="tanh")`.
    GeluPytorchTanh,
    /// `gelu_python_tanh`: the tanh approximation written out (as `gelu_new`).
    GeluPythonTanh,
    /// `gelu_accurate`: MEGA's GELU approximation.
    GeluAccurate,
    /// `hardswish`.
    Hardswish,
    /// `laplace`: MEGA's Laplace attention activation.
    Laplace,
    /// `leaky_relu` (slope 0.01).
    LeakyRelu,
    /// `linear`: the identity.
    Linear,
    /// `mish`.
    Mish,
    /// `quick_gelu`: `x·σ(1.702·x)`.
    QuickGelu,
    /// `relu`.
    Relu,
    /// `relu2`: `relu(x)²`.
    Relu2,
    /// `relu6`.
    Relu6,
    /// `sigmoid`.
    Sigmoid,
    /// `silu`.
    Silu,
    /// `sqrtsoftplus`: `√softplus(x)`.
    SqrtSoftplus,
    /// `swish` (`nn.SiLU`).
    Swish,
    /// `tanh`.
    Tanh,
    /// `prelu` with `nn.PReLU`'s initial slope 0.25.
    Prelu,
    /// `xielu` with its initial parameters (α₊ = α₋ = 0.8, β = 0.5, ε = −1e-6, held in bfloat16).
    Xielu,
}

const ALL: [(&str, Activation); 24] = [
    ("gelu", Activation::Gelu),
    ("gelu_10", Activation::Gelu10),
    ("gelu_accurate", Activation::GeluAccurate),
    ("gelu_fast", Activation::GeluFast),
    ("gelu_new", Activation::GeluNew),
    ("gelu_python", Activation::GeluPython),
    ("gelu_python_tanh", Activation::GeluPythonTanh),
    ("gelu_pytorch_tanh", Activation::GeluPytorchTanh),
    ("hardswish", Activation::Hardswish),
    ("laplace", Activation::Laplace),
    ("leaky_relu", Activation::LeakyRelu),
    ("linear", Activation::Linear),
    ("mish", Activation::Mish),
    ("prelu", Activation::Prelu),
    ("quick_gelu", Activation::QuickGelu),
    ("relu", Activation::Relu),
    ("relu2", Activation::Relu2),
    ("relu6", Activation::Relu6),
    ("sigmoid", Activation::Sigmoid),
    ("silu", Activation::Silu),
    ("sqrtsoftplus", Activation::SqrtSoftplus),
    ("swish", Activation::Swish),
    ("tanh", Activation::Tanh),
    ("xielu", Activation::Xielu),
];

impl Activation {
    /// `ACT2FN`'s keys, sorted.
    pub fn names() -> impl Iterator<Item = &'static str> {
        ALL.iter().map(|(n, _)| *n)
    }

    /// Looks a name up in `ACT2FN`.
    ///
    /// # Errors
    /// [`PeftError::Invalid`] naming the activation and listing the supported ones.
    pub fn from_name(name: &str) -> Result<Self> {
        ALL.iter().find(|(n, _)| *n == name).map(|(_, a)| *a).ok_or_else(|| {
            PeftError::Invalid(format!(
                "unsupported activation {name:?}; transformers' ACT2FN has {:?}",
                Self::names().collect::<Vec<_>>()
            ))
        })
    }

    /// The `ACT2FN` key.
    pub fn name(self) -> &'static str {
        ALL.iter().find(|(_, a)| *a == self).map(|(n, _)| *n).unwrap_or("?")
    }

    /// Applies the activation.
    pub fn forward(self, x: &Tensor) -> Tensor {
        let tanh_approx = |c: f64| (x * 0.5) * (((x + x.pow_tensor_scalar(3.0) * 0.044715) * c).tanh() + 1.0);
        match self {
            Activation::Gelu => x.gelu("none"),
            Activation::Gelu10 => x.gelu("none").clamp(-10.0, 10.0),
            Activation::GeluPython => (x * 0.5) * ((x / 2f64.sqrt()).erf() + 1.0),
            Activation::GeluPytorchTanh => x.gelu("tanh"),
            Activation::GeluNew | Activation::GeluPythonTanh | Activation::GeluAccurate => {
                tanh_approx((2.0 / PI).sqrt())
            }
            Activation::GeluFast => {
                (x * 0.5) * (((x * 0.7978845608) * ((x * 0.044715) * x + 1.0)).tanh() + 1.0)
            }
            Activation::Hardswish => x.hardswish(),
            Activation::Laplace => (((x - LAPLACE_MU) / (LAPLACE_SIGMA * 2f64.sqrt())).erf() + 1.0) * 0.5,
            Activation::LeakyRelu => x.leaky_relu(),
            Activation::Linear => x.shallow_clone(),
            Activation::Mish => x.mish(),
            Activation::QuickGelu => x * (x * 1.702).sigmoid(),
            Activation::Relu => x.relu(),
            Activation::Relu2 => x.relu().square(),
            Activation::Relu6 => x.relu6(),
            Activation::Sigmoid => x.sigmoid(),
            Activation::Silu | Activation::Swish => x.silu(),
            Activation::SqrtSoftplus => x.softplus().sqrt(),
            Activation::Tanh => x.tanh(),
            Activation::Prelu => {
                x.prelu(&Tensor::from_slice(&[0.25f32]).to_kind(x.kind()).to_device(x.device()))
            }
            Activation::Xielu => xielu(x),
        }
    }
}

impl std::fmt::Display for Activation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// xIELU with transformers' initial parameters, held in bfloat16 as there (`softplus⁻¹(α)` computed in
/// bfloat16, then promoted against the input).
fn xielu(x: &Tensor) -> Tensor {
    let bf = (Kind::BFloat16, x.device());
    let inv_softplus =
        |v: f64| Tensor::from(v).to_kind(Kind::BFloat16).to_device(x.device()).expm1().log().unsqueeze(0);
    let alpha_p = inv_softplus(0.8).softplus();
    let beta = Tensor::full([], 0.5, bf);
    let eps = Tensor::full([], -1e-6, bf);
    let alpha_n = &beta + inv_softplus(0.8 - 0.5).softplus();
    let pos = alpha_p * x * x + &beta * x;
    let neg = (x.minimum(&eps).expm1() - x) * alpha_n + &beta * x;
    pos.where_self(&x.gt(0.0), &neg)
}
