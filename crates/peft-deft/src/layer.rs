//! `DeftLayer`: PEFT 0.21.2's `DeftLinear` (`deft.DeftLinear`) on `nn.Linear` and GPT-2's `Conv1D`.
//!
//! `P` `(out, r)` gives `(Q_P, right)` — `(P, relu(P))` or `(Q, Q)` with `Q` from `P`'s reduced QR — and
//! `P_proj = Q_P · rightᵀ`. With `R` `(r, in)` and `s = alpha / r` (or 1):
//!
//! * Forward (all active DEFT adapters of the layer together, in f32): `b = base(x) − bias`, then for each
//!   adapter `y ← y − (b·right)·Q_Pᵀ + (dropout(x)·(s·R)ᵀ)·Q_Pᵀ` (no injection with `para`), cast back to
//!   the input's dtype.
//! * `ΔW = Q_P·(s·R − rightᵀ·W)` (PaRa: `−Q_P·rightᵀ·W`), in the weight's layout. Merging computes the
//!   factor `rightᵀ·W` of every adapter of one merge call from the weight as the call found it, and keeps
//!   it: unmerging subtracts the delta rebuilt from that factor, as PEFT does.

use crate::config::{DeftConfig, PEFT_TYPE};
use peft_core::config::LayerInit;
use peft_core::layer::{merge_delta, unmerge_delta, BaseLayer, ForwardCtx, MergeCtx, TunerLayer};
use peft_core::{PeftError, Result};
use tch::{Device, Kind, Tensor};

/// One DEFT adapter on one linear layer.
#[derive(Debug)]
pub struct DeftLayer {
    adapter: String,
    module: String,
    fan_in_fan_out: bool,
    in_features: i64,
    out_features: i64,
    r: i64,
    scaling: f64,
    qr: bool,
    dropout: f64,
    /// `deft_P.<adapter>`, `(out, r)`.
    p: Tensor,
    /// `deft_R.<adapter>`, `(r, in)` (absent with `para`).
    r_factor: Option<Tensor>,
    /// `rightᵀ·W` as the merge computed it (PEFT's `_cached_merge_factor`).
    merge_factor: Option<Tensor>,
}

impl DeftLayer {
    /// Creates the adapter as PEFT's `update_layer` does: `P ~ N(0, 0.02²)`, then `R = rightᵀ·W / s` from the
    /// weight (`init_weights`) or `R ~ N(0, (0.02·init_scale)²)`; moved to the base layer's device and dtype.
    ///
    /// # Errors
    /// [`PeftError::UnsupportedLayer`] for anything but dense `nn.Linear` / `Conv1D`; a non-positive `r`.
    pub fn create(config: &mut DeftConfig, ctx: &mut LayerInit<'_, '_>) -> Result<Self> {
        let Some(lin) = ctx.base.as_linear() else {
            return Err(ctx.unsupported(
                PEFT_TYPE,
                "Currently, only `torch.nn.Linear` and `transformers.pytorch_utils.Conv1D` are supported",
            ));
        };
        if !lin.weight_is_storage() {
            return Err(ctx.unsupported(
                PEFT_TYPE,
                "DEFT's initialisation and merges read the dense weight; quantized bases are not supported",
            ));
        }
        let (in_features, out_features, fifo) = (lin.in_features(), lin.out_features(), lin.fan_in_fan_out());
        let weight = lin.weight();
        ctx.match_fan_in_fan_out(&mut config.fan_in_fan_out, fifo);
        peft_core::config::require_positive("r", config.r)?;
        let r = config.r.min(out_features);
        let scaling = config.scaling(r);
        let qr = config.decomposition_method == "qr";
        let torch = PeftError::torch("initialising DEFT's factors");
        let mut p = Tensor::f_empty([out_features, r], (Kind::Float, Device::Cpu)).map_err(torch)?;
        peft_core::init::normal_(&mut p, 0.0, 0.02)?;
        let r_factor = if config.para {
            None
        } else if config.init_weights {
            let (_, right) = project(&p.to_device(weight.device()), qr)?;
            let w = oriented(&weight.to_kind(Kind::Float), fifo);
            Some(tch::no_grad(|| right.tr().matmul(&w) / scaling).to_device(Device::Cpu))
        } else {
            let mut r_init = Tensor::f_empty([r, in_features], (Kind::Float, Device::Cpu))
                .map_err(PeftError::torch("initialising deft_R"))?;
            peft_core::init::normal_(&mut r_init, 0.0, 0.02 * config.init_scale)?;
            Some(r_init)
        };
        let adapter = ctx.adapter_name.to_string();
        let p = (&ctx.path / "deft_P").add(&adapter, ctx.place(p)?, true);
        let r_factor = match r_factor {
            Some(t) => Some((&ctx.path / "deft_R").add(&adapter, ctx.place(t)?, true)),
            None => None,
        };
        Ok(Self {
            adapter,
            module: ctx.module_name.to_string(),
            fan_in_fan_out: fifo,
            in_features,
            out_features,
            r,
            scaling,
            qr,
            dropout: config.deft_dropout,
            p,
            r_factor,
            merge_factor: None,
        })
    }

    /// The rank (`min(r, out_features)`).
    pub fn r(&self) -> i64 {
        self.r
    }

    /// `(Q_P, right)` in f32 (PEFT's `_project`).
    ///
    /// # Errors
    /// A failing QR decomposition.
    pub fn projection(&self) -> Result<(Tensor, Tensor)> {
        project(&self.p, self.qr)
    }

    /// `rightᵀ·W` `(r, in)` for the weight `weight` in its storage layout.
    ///
    /// # Errors
    /// As [`DeftLayer::projection`].
    pub fn factor_of(&self, weight: &Tensor) -> Result<Tensor> {
        let (_, right) = self.projection()?;
        Ok(right.tr().matmul(&oriented(&weight.to_kind(Kind::Float), self.fan_in_fan_out)))
    }

    /// PEFT's `_delta_from_factor`: `Q_P·(s·R − factor)` (PaRa: `−Q_P·factor`) in the weight's layout and
    /// `kind`.
    ///
    /// # Errors
    /// As [`DeftLayer::projection`].
    pub fn delta_from_factor(&self, factor: &Tensor, kind: Kind) -> Result<Tensor> {
        let (q, _) = self.projection()?;
        let delta = match &self.r_factor {
            None => -q.matmul(factor),
            Some(r) => q.matmul(&(r.to_kind(Kind::Float) * self.scaling - factor)),
        };
        Ok(oriented(&delta, self.fan_in_fan_out).to_kind(kind))
    }

    fn current_weight(&self, base: &dyn BaseLayer) -> Result<Tensor> {
        base.as_weighted()
            .map(|w| w.weight())
            .ok_or_else(|| PeftError::Invalid(format!("`{}`: the base layer has no weight", self.module)))
    }
}

/// `transpose(w, fan_in_fan_out)`.
fn oriented(w: &Tensor, fan_in_fan_out: bool) -> Tensor {
    if fan_in_fan_out {
        w.tr()
    } else {
        w.shallow_clone()
    }
}

/// `(Q_P, right)` of `P` (in f32).
fn project(p: &Tensor, qr: bool) -> Result<(Tensor, Tensor)> {
    let p = p.to_kind(Kind::Float);
    if qr {
        let (q, _) = peft_core::linalg::qr(&p)?;
        Ok((q.shallow_clone(), q))
    } else {
        let right = p.relu();
        Ok((p, right))
    }
}

impl TunerLayer for DeftLayer {
    fn peft_type(&self) -> &'static str {
        PEFT_TYPE
    }

    fn named_tensors(&self) -> Vec<(String, Tensor)> {
        let mut v = vec![(format!("deft_P.{}", self.adapter), self.p.shallow_clone())];
        if let Some(r) = &self.r_factor {
            v.push((format!("deft_R.{}", self.adapter), r.shallow_clone()));
        }
        v
    }

    /// PEFT's forward: every active DEFT adapter of the layer, in f32, from the base output without bias.
    fn transform_output(&self, base: &dyn BaseLayer, x: &Tensor, y: Tensor, ctx: &ForwardCtx<'_>) -> Tensor {
        let Some(group) = ctx.active_group(self) else {
            return y;
        };
        let previous = x.kind();
        let mut result = y.to_kind(Kind::Float);
        let bias = base.as_weighted().and_then(|w| w.bias());
        let base_product = match &bias {
            Some(b) => &result - b.to_kind(Kind::Float),
            None => result.shallow_clone(),
        };
        let x = if x.is_floating_point() && x.kind() != Kind::Float {
            x.to_kind(Kind::Float)
        } else {
            x.shallow_clone()
        };
        // Out of place: `result` may alias the base output, which autograd still needs.
        #[allow(clippy::assign_op_pattern)]
        for layer in group {
            // A QR failure cannot happen for the finite f32 matrices a forward pass sees; skip the adapter then.
            let Ok((q, right)) = layer.projection() else { continue };
            result = result - base_product.matmul(&right).matmul(&q.tr());
            if let Some(r) = &layer.r_factor {
                let r = r.to_kind(Kind::Float) * layer.scaling;
                let x_drop = if ctx.train && layer.dropout > 0.0 {
                    x.dropout(layer.dropout, true)
                } else {
                    x.shallow_clone()
                };
                result = result + x_drop.linear::<Tensor>(&r, None).matmul(&q.tr());
            }
        }
        result.to_kind(previous)
    }

    fn merge_needs_call_start_weight(&self) -> bool {
        true
    }

    fn merge(&mut self, base: &mut dyn BaseLayer, ctx: &MergeCtx<'_>) -> Result<()> {
        let current = self.current_weight(base)?;
        let (factor, delta) = tch::no_grad(|| -> Result<(Tensor, Tensor)> {
            let factor = self.factor_of(ctx.call_start_weight.unwrap_or(&current))?;
            let delta = self.delta_from_factor(&factor, current.kind())?;
            Ok((factor, delta))
        })?;
        merge_delta(base, &delta, ctx.safe, &self.adapter, &self.module)?;
        self.merge_factor = Some(factor);
        Ok(())
    }

    fn unmerge(&mut self, base: &mut dyn BaseLayer) -> Result<()> {
        let current = self.current_weight(base)?;
        let delta = tch::no_grad(|| -> Result<Tensor> {
            let factor = match self.merge_factor.take() {
                Some(f) => f,
                None => self.factor_of(&current)?,
            };
            self.delta_from_factor(&factor, current.kind())
        })?;
        unmerge_delta(base, &delta, &self.module)
    }

    fn describe(&self) -> String {
        format!(
            "deft.DeftLinear(in_features={}, out_features={}, r={}, decomposition={}, para={})",
            self.in_features,
            self.out_features,
            self.r,
            if self.qr { "qr" } else { "relu" },
            self.r_factor.is_none()
        )
    }
}
