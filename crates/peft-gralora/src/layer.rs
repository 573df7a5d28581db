//! `GraloraLayer`: PEFT 0.21.2's `gralora.Linear` — GraLoRA on `nn.Linear` and GPT-2's `Conv1D`.
//!
//! With `k = gralora_k`, `r` the total rank (`s = r / k` per slice), `in = k·I`, `out = k·O`:
//!
//! * `gralora_A.<adapter>` `(k, I, r)`: block `n` maps the input block `x_n` `(…, I)` to `r` values, cut
//!   into `k` slices of `s`; `gralora_B.<adapter>` `(k, r, O)`: output block `j` reads slice `j` of every
//!   input block (`k · s = r` values) — `out_j = Σ_n (x_n A_n)[j·s..(j+1)·s] · B_j[n·s..(n+1)·s]`;
//! * with `hybrid_r > 0`, `gralora_A_general.<adapter>.weight` `(hybrid_r, in)` and
//!   `gralora_B_general.<adapter>.weight` `(out, hybrid_r)`, an ordinary LoRA over the whole weight;
//! * forward, not merged: `y = base(x) + scaling · grid(drop(x)) [+ scaling · B_g A_g drop(x)]` with
//!   `scaling = alpha / (r + hybrid_r)`, computed with PEFT's einsums on `(B, L, …)` inputs (2-D inputs as
//!   `L = 1`); the two branches draw their dropout masks separately, as PEFT does;
//! * `ΔW` `(out, in)` (transposed for `Conv1D`) is the same map as a matrix, added on merge.

use crate::config::{GraloraConfig, PEFT_TYPE};
use peft_core::config::LayerInit;
use peft_core::layer::{merge_delta, unmerge_delta, BaseLayer, ForwardCtx, MergeCtx, TunerLayer};
use peft_core::{PeftError, Result};
use tch::{Device, Kind, Tensor};

/// One GraLoRA adapter on one linear layer.
#[derive(Debug)]
pub struct GraloraLayer {
    adapter: String,
    module: String,
    r: i64,
    k: i64,
    hybrid_r: i64,
    in_features: i64,
    out_features: i64,
    fan_in_fan_out: bool,
    scaling: f64,
    dropout: f64,
    a: Tensor,
    b: Tensor,
    general: Option<(Tensor, Tensor)>,
}

fn kaiming(shape: &[i64]) -> Result<Tensor> {
    let mut t = Tensor::f_empty(shape, (Kind::Float, Device::Cpu))
        .map_err(PeftError::torch("initialising GraLoRA"))?;
    peft_core::init::kaiming_uniform_(&mut t, 5f64.sqrt())?;
    Ok(t)
}

fn zeros(shape: &[i64]) -> Result<Tensor> {
    Tensor::f_zeros(shape, (Kind::Float, Device::Cpu)).map_err(PeftError::torch("initialising GraLoRA"))
}

impl GraloraLayer {
    /// Creates the adapter as PEFT's `update_layer`, drawing in PEFT's order: per block, `A_n` then `B_n`
    /// (Kaiming-uniform; `B_n` zero by default); with `hybrid_r`, the two `nn.Linear` draws of the general
    /// factors' construction, then their reset (`A_g` Kaiming-uniform, `B_g` zero by default).
    ///
    /// # Errors
    /// [`PeftError::UnsupportedLayer`] for anything but linear layers and `Conv1D`; sizes `gralora_k` does
    /// not divide.
    pub fn create(config: &mut GraloraConfig, ctx: &mut LayerInit<'_, '_>) -> Result<Self> {
        let Some(lin) = ctx.base.as_linear() else {
            return Err(ctx.unsupported(
                PEFT_TYPE,
                "Currently, only the following modules are supported: `torch.nn.Linear`, \
                 `transformers.pytorch_utils.Conv1D`.",
            ));
        };
        let (in_features, out_features, fifo) = (lin.in_features(), lin.out_features(), lin.fan_in_fan_out());
        ctx.match_fan_in_fan_out(&mut config.fan_in_fan_out, fifo);
        let (r, k, hybrid_r) = (config.r, config.gralora_k, config.hybrid_r);
        peft_core::config::require_positive("r", r)?;
        for (what, n) in [("in_features", in_features), ("out_features", out_features)] {
            if n % k != 0 {
                return Err(PeftError::Invalid(format!(
                    "`{}`: {what} should be divisible by gralora_k, but got {n} and {k}",
                    ctx.module_name
                )));
            }
        }
        let (mut a_blocks, mut b_blocks) = (Vec::new(), Vec::new());
        for _ in 0..k {
            a_blocks.push(kaiming(&[r, in_features / k])?);
            b_blocks.push(if config.init_weights {
                zeros(&[out_features / k, r])?
            } else {
                kaiming(&[out_features / k, r])?
            });
        }
        let torch = PeftError::torch("stacking GraLoRA blocks");
        let a =
            Tensor::f_stack(&a_blocks, 0).and_then(|t| t.f_transpose(1, 2)?.f_contiguous()).map_err(torch)?;
        let b = Tensor::f_stack(&b_blocks, 0)
            .and_then(|t| t.f_transpose(1, 2)?.f_contiguous())
            .map_err(PeftError::torch("stacking GraLoRA blocks"))?;
        let general = if hybrid_r > 0 {
            // `nn.Linear(in, hybrid_r)` and `nn.Linear(hybrid_r, out)` draw their weights when built; PEFT
            // then resets them.
            let _ = (kaiming(&[hybrid_r, in_features])?, kaiming(&[out_features, hybrid_r])?);
            let ag = kaiming(&[hybrid_r, in_features])?;
            let bg = if config.init_weights {
                zeros(&[out_features, hybrid_r])?
            } else {
                kaiming(&[out_features, hybrid_r])?
            };
            Some((ag, bg))
        } else {
            None
        };
        let adapter = ctx.adapter_name.to_string();
        let a = (&ctx.path / "gralora_A").add(&adapter, ctx.place(a)?, true);
        let b = (&ctx.path / "gralora_B").add(&adapter, ctx.place(b)?, true);
        let general = match general {
            Some((ag, bg)) => Some((
                (&ctx.path / "gralora_A_general" / adapter.as_str()).add("weight", ctx.place(ag)?, true),
                (&ctx.path / "gralora_B_general" / adapter.as_str()).add("weight", ctx.place(bg)?, true),
            )),
            None => None,
        };
        Ok(Self {
            adapter,
            module: ctx.module_name.to_string(),
            r,
            k,
            hybrid_r,
            in_features,
            out_features,
            fan_in_fan_out: fifo,
            scaling: config.scaling(),
            dropout: config.gralora_dropout,
            a,
            b,
            general,
        })
    }

    /// `(gralora_A, gralora_B)`.
    pub fn blocks(&self) -> (&Tensor, &Tensor) {
        (&self.a, &self.b)
    }

    /// The general LoRA's `(A_g, B_g)` weights, with `hybrid_r > 0`.
    pub fn general(&self) -> Option<(&Tensor, &Tensor)> {
        self.general.as_ref().map(|(a, b)| (a, b))
    }

    /// `alpha / (r + hybrid_r)`.
    pub fn scaling(&self) -> f64 {
        self.scaling
    }

    fn drop(&self, x: &Tensor, train: bool) -> Tensor {
        if train && self.dropout > 0.0 {
            x.dropout(self.dropout, true)
        } else {
            x.shallow_clone()
        }
    }

    /// The grid branch on a `(B, L, in)` input (already in the factors' dtype): `(B, L, out)`.
    fn grid(&self, x: &Tensor) -> Tensor {
        let size = x.size();
        let (bsz, len) = (size[0], size[1]);
        let (k, sub) = (self.k, self.r / self.k);
        let h = Tensor::einsum(
            "blni, nir -> blnr",
            &[x.view([bsz, len, k, self.in_features / k]), self.a.shallow_clone()],
            None::<&[i64]>,
        )
        .view([bsz, len, k, k, sub])
        .permute([0, 1, 3, 2, 4])
        .reshape([bsz, len, k, k * sub]);
        Tensor::einsum("bljr, jro -> bljo", &[h, self.b.shallow_clone()], None::<&[i64]>)
            .reshape([bsz, len, -1])
    }

    /// PEFT's `get_delta_weight`: `ΔW` `(out, in)` (`(in, out)` for `Conv1D`), scaled, differentiable.
    pub fn delta_weight(&self) -> Tensor {
        let (inp, out, k, r) = (self.in_features, self.out_features, self.k, self.r);
        let sub = r / k;
        let device = self.a.device();
        let l = Tensor::arange(inp, (Kind::Int64, device));
        let n = l.floor_divide_scalar(inp / k);
        let i = l.remainder(inp / k);
        let mut scattered = Tensor::zeros([inp, k, r], (self.a.kind(), device));
        let picked = self.a.index(&[Some(&n), Some(&i)]).unsqueeze(1);
        let _ = scattered.scatter_(1, &n.unsqueeze(1).unsqueeze(2).expand([-1, 1, r], false), &picked);
        let regrouped = scattered.view([inp, k, k, sub]).permute([0, 2, 1, 3]).reshape([inp, k, r]);
        let mut delta =
            Tensor::einsum("ikr, kro -> iko", &[regrouped, self.b.shallow_clone()], None::<&[i64]>)
                .reshape([inp, out])
                .tr();
        if let Some((ag, bg)) = &self.general {
            delta += bg.matmul(ag);
        }
        let delta = if self.fan_in_fan_out { delta.tr() } else { delta };
        delta * self.scaling
    }
}

impl TunerLayer for GraloraLayer {
    fn peft_type(&self) -> &'static str {
        PEFT_TYPE
    }

    fn named_tensors(&self) -> Vec<(String, Tensor)> {
        let a = &self.adapter;
        let mut v = vec![
            (format!("gralora_A.{a}"), self.a.shallow_clone()),
            (format!("gralora_B.{a}"), self.b.shallow_clone()),
        ];
        if let Some((ag, bg)) = &self.general {
            v.push((format!("gralora_A_general.{a}.weight"), ag.shallow_clone()));
            v.push((format!("gralora_B_general.{a}.weight"), bg.shallow_clone()));
        }
        v
    }

    fn transform_output(&self, _base: &dyn BaseLayer, x: &Tensor, y: Tensor, ctx: &ForwardCtx<'_>) -> Tensor {
        let kind = y.kind();
        let two_d = x.dim() == 2;
        // PEFT reads (B, L, in); other shapes are flattened into L.
        let lead: Vec<i64> = x.size()[..x.dim() - 1].to_vec();
        let x3 = if two_d { x.unsqueeze(1) } else { x.reshape([lead[0], -1, self.in_features]) };
        let factors = self.a.kind();
        let grid = self.grid(&self.drop(&x3.to_kind(factors), ctx.train));
        let restore = |t: Tensor| -> Tensor {
            let mut shape = lead.clone();
            shape.push(self.out_features);
            t.reshape(shape.as_slice())
        };
        let y = y + restore(grid).to_kind(kind) * self.scaling;
        match &self.general {
            Some((ag, bg)) => {
                let h = self
                    .drop(&x3.to_kind(factors), ctx.train)
                    .linear::<Tensor>(ag, None)
                    .linear::<Tensor>(bg, None);
                y + restore(h).to_kind(kind) * self.scaling
            }
            None => y,
        }
    }

    fn merge(&mut self, base: &mut dyn BaseLayer, ctx: &MergeCtx<'_>) -> Result<()> {
        let delta = tch::no_grad(|| self.delta_weight());
        merge_delta(base, &delta, ctx.safe, &self.adapter, &self.module)
    }

    fn unmerge(&mut self, base: &mut dyn BaseLayer) -> Result<()> {
        let delta = tch::no_grad(|| self.delta_weight());
        unmerge_delta(base, &delta, &self.module)
    }

    fn describe(&self) -> String {
        format!(
            "gralora.Linear(in_features={}, out_features={}, r={}, gralora_k={}, hybrid_r={})",
            self.in_features, self.out_features, self.r, self.k, self.hybrid_r
        )
    }
}
