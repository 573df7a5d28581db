//! `C3aLayer`: PEFT 0.21.2's `C3ALinear` (`c3a.C3ALinear`) — C3A on `nn.Linear` (dense or quantized).
//!
//! `c3a_kernel.<adapter>` is `(m, n, b)` with `b` the block size, `m = out/b`, `n = in/b`: one length-`b`
//! kernel per block of the weight. The block circular convolution of an input `x` `(…, in)`, cut into `n`
//! pieces of `b`, is `Re(fft(Σ_n ifft(x_n) ⊙ fft(w_{m,n})))` `(…, m, b)` → `(…, out)` — PEFT's
//! `BlockCircularConvolution` forward, with the same FFTs and einsum.
//!
//! * forward, not merged: `y = base(x) + bcc(x)/in` in fp32, cast to the output dtype. With several active
//!   adapters PEFT feeds each one the previous one's output (`x` is reassigned in its loop), which works
//!   only when `in == out`; peft-rs does the same.
//! * `ΔW = circulant(w) / in` `(out, in)` (PEFT's `get_circulant_fast`: the convolution applied to the
//!   identity), in the base weight's dtype, added on merge.
//!
//! Training goes through [`block_circular_convolution`], a libtorch autograd function with PEFT's own
//! backward formulas, so optimizer steps match PEFT's (autograd's gradients of the FFTs agree only to
//! rounding, which an adaptive optimizer amplifies on near-zero gradients).

use crate::config::{C3AConfig, C3aInit, PEFT_TYPE};
use peft_core::config::LayerInit;
use peft_core::layer::{merge_delta, unmerge_delta, BaseLayer, ForwardCtx, MergeCtx, TunerLayer};
use peft_core::{PeftError, Result};
use tch::{Device, Kind, Tensor};

/// One C3A adapter on one linear layer.
#[derive(Debug)]
pub struct C3aLayer {
    adapter: String,
    module: String,
    block_size: i64,
    in_features: i64,
    out_features: i64,
    kernel: Tensor,
}

extern "C" {
    fn peft_c3a_block_circular_convolution(
        x: *const torch_sys::C_tensor,
        w: *const torch_sys::C_tensor,
        out: *mut *mut torch_sys::C_tensor,
    ) -> *mut std::ffi::c_char;
}

/// PEFT's `BlockCircularConvolution.apply`: `x` `(…, n·b)` with kernels `w` `(m, n, b)` → `(…, m·b)`, as a
/// libtorch autograd function whose backward is PEFT's hand-written one (`csrc/c3a.cpp`).
///
/// # Errors
/// Shapes libtorch rejects.
pub fn block_circular_convolution(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let mut out: *mut torch_sys::C_tensor = std::ptr::null_mut();
    // SAFETY: live tch tensors borrowed for the call; the shim returns an owned tensor or message.
    unsafe {
        let err = peft_c3a_block_circular_convolution(x.as_ptr(), w.as_ptr(), &mut out);
        peft_core::rng::take_tensor(err, out, "C3A's block circular convolution")
    }
}

/// The same forward with tensor ops (what the delta weight uses on the identity).
fn block_circular_convolution_ops(x: &Tensor, w: &Tensor) -> Tensor {
    let size = w.size();
    let (n, b) = (size[1], size[2]);
    let mut lead = x.size();
    lead.pop();
    let pieces = x.reshape([lead.clone(), vec![n, b]].concat().as_slice());
    let mixed = Tensor::einsum(
        "...nb,mnb->...mb",
        &[pieces.fft_ifft(None, -1, "backward"), w.fft_fft(None, -1, "backward")],
        None::<&[i64]>,
    );
    let out = mixed.fft_fft(None, -1, "backward").real();
    out.reshape([lead, vec![-1]].concat().as_slice())
}

impl C3aLayer {
    /// Creates the adapter as PEFT's `update_layer`: an fp32 `(out/b, in/b, b)` kernel, zero with
    /// `init_weights: true`, else drawn (`"gaussian"`: `N(0, 1)`; `"xavier_uniform"` / `false`:
    /// `U(±√3·√(2/(in+out)))`; `"kaiming_uniform"`: `U(±√(1/in))`), moved to the base layer's device.
    ///
    /// # Errors
    /// [`PeftError::UnsupportedLayer`] for anything but `nn.Linear`; a block size that is not positive or
    /// does not divide the layer's sizes.
    pub fn create(config: &C3AConfig, ctx: &mut LayerInit<'_, '_>) -> Result<Self> {
        let Some(lin) = ctx.base.as_linear().filter(|l| !l.fan_in_fan_out()) else {
            return Err(ctx.unsupported(PEFT_TYPE, "Currently, only `torch.nn.Linear` is supported."));
        };
        let (in_features, out_features) = (lin.in_features(), lin.out_features());
        let b = config.block_size_for(ctx.module_name)?;
        if b <= 0 {
            return Err(PeftError::Invalid(format!(
                "`block_size` should be a positive integer value but the value passed is {b}"
            )));
        }
        if in_features % b != 0 {
            return Err(PeftError::Invalid(format!(
                "`{}`: The block size should be a factor of the input size. However, the input size is \
                 {in_features} and the block size is {b}",
                ctx.module_name
            )));
        }
        if out_features % b != 0 {
            return Err(PeftError::Invalid(format!(
                "`{}`: The block size should be a factor of the output size. However, the output size is \
                 {out_features} and the block size is {b}",
                ctx.module_name
            )));
        }
        let mut kernel = Tensor::f_zeros([out_features / b, in_features / b, b], (Kind::Float, Device::Cpu))
            .map_err(PeftError::torch("initialising c3a_kernel"))?;
        let xavier = (3f64).sqrt() * (2.0 / (in_features + out_features) as f64).sqrt();
        match &config.init_weights {
            C3aInit::Bool(true) => {}
            C3aInit::Bool(false) => peft_core::init::uniform_(&mut kernel, -xavier, xavier)?,
            C3aInit::Scheme(s) => match s.as_str() {
                "gaussian" => peft_core::init::normal_(&mut kernel, 0.0, 1.0)?,
                "xavier_uniform" => peft_core::init::uniform_(&mut kernel, -xavier, xavier)?,
                "kaiming_uniform" => {
                    let a = (1.0 / in_features as f64).sqrt();
                    peft_core::init::uniform_(&mut kernel, -a, a)?
                }
                other => return Err(PeftError::Invalid(format!("Unknown init_weights: {other}"))),
            },
        }
        let adapter = ctx.adapter_name.to_string();
        let kernel = (&ctx.path / "c3a_kernel").add(&adapter, ctx.place(kernel)?, true);
        Ok(Self {
            adapter,
            module: ctx.module_name.to_string(),
            block_size: b,
            in_features,
            out_features,
            kernel,
        })
    }

    /// The kernels (`c3a_kernel.<adapter>`, `(out/b, in/b, b)`).
    pub fn kernel(&self) -> &Tensor {
        &self.kernel
    }

    /// PEFT's `get_delta_weight`: `circulant(w) / in` `(out, in)` in `kind`.
    pub fn delta_weight(&self, kind: Kind) -> Tensor {
        let w = self.kernel.to_kind(Kind::Float);
        let size = w.size();
        let (n, b) = (size[1], size[2]);
        let eye = Tensor::eye(n * b, (w.kind(), w.device()));
        let circulant = block_circular_convolution_ops(&eye, &w).tr();
        circulant.to_kind(kind) / self.in_features as f64
    }

    fn base_kind(base: &dyn BaseLayer) -> Kind {
        base.as_weighted().map_or(Kind::Float, |w| w.weight().kind())
    }
}

impl TunerLayer for C3aLayer {
    fn peft_type(&self) -> &'static str {
        PEFT_TYPE
    }

    fn named_tensors(&self) -> Vec<(String, Tensor)> {
        vec![(format!("c3a_kernel.{}", self.adapter), self.kernel.shallow_clone())]
    }

    /// The first active C3A adapter runs them all, each on the previous one's output (PEFT's loop).
    fn transform_output(&self, _base: &dyn BaseLayer, x: &Tensor, y: Tensor, ctx: &ForwardCtx<'_>) -> Tensor {
        let Some(group) = ctx.active_group(self) else { return y };
        let kind = y.kind();
        let mut x = x.to_kind(Kind::Float);
        let mut y = y;
        for layer in group {
            let width = *x.size().last().unwrap_or(&1);
            let kernel = layer.kernel.to_kind(Kind::Float);
            let out = block_circular_convolution(&x, &kernel).unwrap_or_else(|e| {
                log::warn!("{e}; computing it with tensor ops (autograd's backward)");
                block_circular_convolution_ops(&x, &kernel)
            }) / width as f64;
            // Out of place: `+=` would write into the tensor the base layer returned.
            #[allow(clippy::assign_op_pattern)]
            {
                y = y + out.to_kind(kind);
            }
            x = out;
        }
        y
    }

    fn merge(&mut self, base: &mut dyn BaseLayer, ctx: &MergeCtx<'_>) -> Result<()> {
        let kind = Self::base_kind(base);
        let delta = tch::no_grad(|| self.delta_weight(kind));
        merge_delta(base, &delta, ctx.safe, &self.adapter, &self.module)
    }

    fn unmerge(&mut self, base: &mut dyn BaseLayer) -> Result<()> {
        let kind = Self::base_kind(base);
        let delta = tch::no_grad(|| self.delta_weight(kind));
        unmerge_delta(base, &delta, &self.module)
    }

    fn describe(&self) -> String {
        format!(
            "c3a.C3ALinear(in_features={}, out_features={}, block_size={})",
            self.in_features, self.out_features, self.block_size
        )
    }
}
