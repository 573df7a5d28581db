//! Adaptable layer constructors that feel like `tch::nn`: a free function taking the `nn::Path` the
//! weights live under, a config struct with `Default`, public tensors.
//!
//! The path is also the PEFT module name, so a model built with HF segment names
//! (`model.layers.0.self_attn.q_proj`) lines up with `target_modules` and with saved keys without any
//! renaming table. Weights are initialised exactly like the PyTorch modules they mirror, so a model
//! built under `tch::manual_seed(s)` equals the PyTorch one built under `torch.manual_seed(s)`.

use crate::error::{PeftError, Result};
use crate::init;
use crate::layer::{AdaptedLayer, BaseLayer, LinearLike};
use std::any::Any;
use tch::{nn::Path, Kind, Tensor};

/// A dense linear base: `nn.Linear` (`weight` is `(out, in)`), or transformers' `Conv1D` (GPT-2; `weight`
/// is `(in, out)`, flagged by `fan_in_fan_out`).
#[derive(Debug)]
pub struct LinearBase {
    /// The weight, `(out, in)` or `(in, out)` when `fan_in_fan_out`.
    pub weight: Tensor,
    /// The bias, `(out,)`.
    pub bias: Option<Tensor>,
    /// True for transformers' `Conv1D` layout.
    pub fan_in_fan_out: bool,
}

impl BaseLayer for LinearBase {
    fn kind(&self) -> &'static str {
        if self.fan_in_fan_out {
            "Conv1D"
        } else {
            "Linear"
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        if self.fan_in_fan_out {
            // transformers' Conv1D: addmm(bias, x.view(-1, in), weight).view(..., out)
            let mut out_shape = x.size();
            let in_features = out_shape.pop().unwrap_or(0);
            out_shape.push(self.weight.size()[1]);
            let flat = x.view([-1, in_features]);
            let y = match &self.bias {
                Some(b) => b.addmm(&flat, &self.weight),
                None => flat.matmul(&self.weight),
            };
            y.view(out_shape.as_slice())
        } else {
            x.linear(&self.weight, self.bias.as_ref())
        }
    }

    fn named_parameters(&self) -> Vec<(&'static str, Tensor)> {
        let mut v = vec![("weight", self.weight.shallow_clone())];
        if let Some(b) = &self.bias {
            v.push(("bias", b.shallow_clone()));
        }
        v
    }

    fn as_linear(&self) -> Option<&dyn LinearLike> {
        Some(self)
    }

    fn as_linear_mut(&mut self) -> Option<&mut dyn LinearLike> {
        Some(self)
    }

    fn copy_to(&self, path: &Path<'_>) -> Result<Box<dyn BaseLayer>> {
        let copy = |t: &Tensor| t.f_detach_copy().map_err(PeftError::torch("copying a linear layer"));
        let weight = path.add("weight", copy(&self.weight)?, true);
        let bias = match &self.bias {
            Some(b) => Some(path.add("bias", copy(b)?, true)),
            None => None,
        };
        Ok(Box::new(LinearBase { weight, bias, fan_in_fan_out: self.fan_in_fan_out }))
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

impl LinearLike for LinearBase {
    fn in_features(&self) -> i64 {
        let s = self.weight.size();
        if self.fan_in_fan_out {
            s[0]
        } else {
            s[1]
        }
    }

    fn out_features(&self) -> i64 {
        let s = self.weight.size();
        if self.fan_in_fan_out {
            s[1]
        } else {
            s[0]
        }
    }

    fn fan_in_fan_out(&self) -> bool {
        self.fan_in_fan_out
    }

    fn weight(&self) -> Tensor {
        self.weight.shallow_clone()
    }

    fn set_weight(&mut self, value: &Tensor) -> Result<()> {
        if value.data_ptr() == self.weight.data_ptr() {
            return Ok(()); // already written through the shallow clone
        }
        tch::no_grad(|| self.weight.f_copy_(value)).map_err(PeftError::torch("writing a linear weight"))
    }

    fn bias(&self) -> Option<Tensor> {
        self.bias.as_ref().map(Tensor::shallow_clone)
    }

    fn compute_kind(&self) -> Kind {
        self.weight.kind()
    }
}

/// An adaptable `nn.Linear` (or `Conv1D`, see [`conv1d`]).
pub type Linear = AdaptedLayer<LinearBase>;

/// Options of [`linear`].
#[derive(Clone, Copy, Debug)]
pub struct LinearConfig {
    /// Whether the layer has a bias.
    pub bias: bool,
    /// Initialise like PyTorch (drawing random numbers). `false` allocates zeros without touching the
    /// RNG, for layers whose weights a checkpoint will overwrite.
    pub init: bool,
}

impl Default for LinearConfig {
    fn default() -> Self {
        Self { bias: true, init: true }
    }
}

/// The PEFT module name of a path: its components joined by `.`.
pub fn path_name(p: &Path<'_>) -> String {
    p.components().collect::<Vec<_>>().join(".")
}

/// An adaptable `nn.Linear(in_features, out_features)` with weights under `p` (`p/weight`, `p/bias`),
/// initialised like PyTorch's (`kaiming_uniform_(a=√5)` weight, `U(±1/√in)` bias), in the path's kind
/// and on its device.
///
/// # Errors
/// A libtorch failure.
pub fn linear(p: Path<'_>, in_features: i64, out_features: i64, cfg: LinearConfig) -> Result<Linear> {
    if !cfg.init {
        let zeros = |shape: &[i64]| {
            Tensor::f_zeros(shape, (p.kind(), p.device()))
                .map_err(PeftError::torch("allocating a linear layer"))
        };
        let b = if cfg.bias { Some(zeros(&[out_features])?) } else { None };
        return Ok(AdaptedLayer::new(
            path_name(&p),
            register(&p, zeros(&[out_features, in_features])?, b, false)?,
        ));
    }
    let mut w = Tensor::f_empty([out_features, in_features], (Kind::Float, tch::Device::Cpu))
        .map_err(PeftError::torch("allocating a linear weight"))?;
    init::kaiming_uniform_(&mut w, 5f64.sqrt())?;
    let mut b = None;
    if cfg.bias {
        let mut bias = Tensor::f_empty([out_features], (Kind::Float, tch::Device::Cpu))
            .map_err(PeftError::torch("allocating a linear bias"))?;
        init::bias_uniform_(&mut bias, in_features)?;
        b = Some(bias);
    }
    Ok(AdaptedLayer::new(path_name(&p), register(&p, w, b, false)?))
}

/// An adaptable transformers `Conv1D(nf, nx)` (GPT-2's linear with a transposed `(nx, nf)` weight),
/// initialised like transformers' (`normal_(std=0.02)` weight, zero bias).
///
/// # Errors
/// A libtorch failure.
pub fn conv1d(p: Path<'_>, nf: i64, nx: i64) -> Result<Linear> {
    let mut w = Tensor::f_empty([nx, nf], (Kind::Float, tch::Device::Cpu))
        .map_err(PeftError::torch("allocating a Conv1D weight"))?;
    let bias = Tensor::f_zeros([nf], (Kind::Float, tch::Device::Cpu))
        .map_err(PeftError::torch("allocating a Conv1D bias"))?;
    init::normal_(&mut w, 0.0, 0.02)?;
    Ok(AdaptedLayer::new(path_name(&p), register(&p, w, Some(bias), true)?))
}

/// Registers CPU-initialised tensors in the path's var store (moved to its device and kind).
fn register(p: &Path<'_>, w: Tensor, b: Option<Tensor>, fan_in_fan_out: bool) -> Result<LinearBase> {
    if p.get("weight").is_some() {
        // tch would silently rename the variable to `weight__N`; a second layer under one path is a bug.
        return Err(PeftError::DuplicateModuleName { name: path_name(p) });
    }
    let dev = p.device();
    let kind = p.kind();
    let to = |t: Tensor| t.f_to_device(dev).and_then(|t| t.f_to_kind(kind));
    let w = to(w).map_err(PeftError::torch("moving a weight to its device"))?;
    let weight = p.add("weight", w, true);
    let bias = match b {
        Some(b) => Some(p.add("bias", to(b).map_err(PeftError::torch("moving a bias to its device"))?, true)),
        None => None,
    };
    Ok(LinearBase { weight, bias, fan_in_fan_out })
}
