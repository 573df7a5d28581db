//! `PsoftLayer`: PEFT 0.21.2's PSOFT `Linear` (`psoft.Linear`) on dense `nn.Linear`.
//!
//! At creation the frozen weight `W` `(out, in)` is decomposed in f32 (`torch.linalg.svd`, or
//! `torch.svd_lowrank` under `random_seed`), and its top-`r` subspace gives `A` `(r, in)` and `B`
//! `(out, r)` with `B·A ≈ W·r/α` — frozen, kept in f32 next to the adapter and never saved (PEFT rebuilds
//! them from the weight when it loads). The trained part is `R` (`psoft_R.<adapter>`): `weight`
//! (`r(r−1)/2` upper-triangle values of a skew-symmetric `Q` with `psoft_orth`, else the `r × r` matrix),
//! and the optional `vector_b`, `vector_a` scales.
//!
//! * `R = diag(b) · (I + Q)(I − Q)⁻¹ · diag(a)` (Cayley; or the Neumann series
//!   `I + 2Q + 2Q² + … + Q^{t−1}` with `use_cayley_neumann`, `Q` first bounded in Frobenius norm by
//!   `cayley_neumann_eps`).
//! * Forward: `xa = dropout(x)·Aᵀ`, `y = base(x) + α/r · (xa·Rᵀ − xa)·Bᵀ` — for each active adapter in
//!   PEFT's loop, the sum cast back to the base output's dtype once.
//! * `ΔW = α/r · B·(R − I)·A`, merged and unmerged additively.

use crate::config::{PsoftConfig, PEFT_TYPE};
use peft_core::config::LayerInit;
use peft_core::layer::{
    add_group_terms, merge_delta, unmerge_delta, BaseLayer, ForwardCtx, MergeCtx, TunerLayer,
};
use peft_core::{PeftError, Result};
use tch::{Device, Kind, Tensor};

/// The `r × r` transform's options (PEFT's `OrthLayer`).
#[derive(Clone, Debug, PartialEq)]
pub struct OrthOptions {
    /// Cayley parameterisation (`psoft_orth`).
    pub orth: bool,
    /// The Neumann-series approximation: `Some((terms, eps))`.
    pub neumann: Option<(i64, Option<f64>)>,
}

/// One PSOFT adapter on one linear layer.
#[derive(Debug)]
pub struct PsoftLayer {
    adapter: String,
    module: String,
    r: i64,
    in_features: i64,
    out_features: i64,
    scaling: f64,
    dropout: f64,
    options: OrthOptions,
    /// `psoft_R.<adapter>.weight`.
    weight: Tensor,
    /// `psoft_R.<adapter>.vector_b`.
    vector_b: Option<Tensor>,
    /// `psoft_R.<adapter>.vector_a`.
    vector_a: Option<Tensor>,
    /// The frozen subspace factors (f32, not saved).
    a: Tensor,
    b: Tensor,
}

const UNSUPPORTED: &str = "PSOFT supports `torch.nn.Linear` only (PEFT: \"not supported by minimal PSOFT\")";

impl PsoftLayer {
    /// Creates the adapter as PEFT's `update_layer` does: `R`'s tensors in the base weight's dtype and
    /// device, reset (zero / ones, or PEFT's draws with `init_weights: false`), then the subspace factors
    /// from the current weight.
    ///
    /// # Errors
    /// [`PeftError::UnsupportedLayer`] for anything but a dense `nn.Linear`; `r` above
    /// `min(in_features, out_features)`; a failing decomposition.
    pub fn create(config: &mut PsoftConfig, ctx: &mut LayerInit<'_, '_>) -> Result<Self> {
        let Some(lin) = ctx.base.as_linear().filter(|l| !l.fan_in_fan_out()) else {
            return Err(ctx.unsupported(PEFT_TYPE, UNSUPPORTED));
        };
        if !lin.weight_is_storage() {
            return Err(ctx.unsupported(
                PEFT_TYPE,
                "PSOFT init requires float32/float16/bfloat16. Re-quantize after init if needed.",
            ));
        }
        let (in_features, out_features) = (lin.in_features(), lin.out_features());
        let weight_now = lin.weight();
        if config.fan_in_fan_out {
            ctx.warn(
                "fan_in_fan_out=True is not compatible with `torch.nn.Linear`. Setting fan_in_fan_out=False.",
            );
            config.fan_in_fan_out = false;
        }
        let r = config.r;
        if r > in_features.min(out_features) {
            return Err(PeftError::Invalid(format!(
                "`{}`: `r` ({r}) must be less than or equal to min(in_features, out_features) ({in_features}, \
                 {out_features})",
                ctx.module_name
            )));
        }
        let (base_kind, final_kind, device) = ctx.placement()?;
        let torch = PeftError::torch("initialising psoft_R");
        let opts = (base_kind, device);
        // OrthLayer's parameters, moved to the base's device and dtype, then reset there.
        let mut weight = if config.psoft_orth {
            Tensor::f_empty([r * (r - 1) / 2], opts)
        } else {
            Tensor::f_empty([r, r], opts)
        }
        .map_err(torch)?;
        tch::no_grad(|| -> Result<()> {
            match (config.psoft_orth, config.init_weights) {
                (true, true) => {
                    let _ = weight.f_zero_().map_err(PeftError::torch("initialising psoft_R"))?;
                }
                (true, false) => peft_core::init::normal_(&mut weight, 0.0, 0.1)?,
                (false, init) => {
                    let eye = Tensor::f_eye(r, opts).map_err(PeftError::torch("initialising psoft_R"))?;
                    weight.copy_(&eye);
                    if !init {
                        let noise = weight.randn_like() * 0.1;
                        let _ = weight.f_add_(&noise).map_err(PeftError::torch("initialising psoft_R"))?;
                    }
                }
            }
            Ok(())
        })?;
        let ones = || Tensor::f_ones([r], opts).map_err(PeftError::torch("initialising psoft_R"));
        let vector_b = if config.psoft_mag_b { Some(ones()?) } else { None };
        let vector_a = if config.psoft_mag_a { Some(ones()?) } else { None };
        let adapter = ctx.adapter_name.to_string();
        let path = &ctx.path / "psoft_R" / &adapter;
        let to_final = |t: Tensor| t.f_to_kind(final_kind).map_err(PeftError::torch("casting psoft_R"));
        let weight = path.add("weight", to_final(weight)?, true);
        let vector_b = vector_b.map(|v| to_final(v).map(|v| path.add("vector_b", v, true))).transpose()?;
        let vector_a = vector_a.map(|v| to_final(v).map(|v| path.add("vector_a", v, true))).transpose()?;
        let (a, b) = subspace(&weight_now, config)?;
        Ok(Self {
            adapter,
            module: ctx.module_name.to_string(),
            r,
            in_features,
            out_features,
            scaling: config.scaling(),
            dropout: config.psoft_dropout,
            options: OrthOptions {
                orth: config.psoft_orth,
                neumann: config
                    .use_cayley_neumann
                    .then_some((config.num_cayley_neumann_terms, config.cayley_neumann_eps)),
            },
            weight,
            vector_b,
            vector_a,
            a,
            b,
        })
    }

    /// The frozen subspace factors `(A, B)` (f32).
    pub fn subspace(&self) -> (&Tensor, &Tensor) {
        (&self.a, &self.b)
    }

    /// `α / r`.
    pub fn scaling(&self) -> f64 {
        self.scaling
    }

    /// `R` (PEFT's `OrthLayer.get_matrix`).
    pub fn r_matrix(&self) -> Tensor {
        let r =
            if !self.options.orth {
                self.weight.shallow_clone()
            } else {
                let (rows, cols) = triu_indices(self.r, self.weight.device());
                let q = Tensor::zeros([self.r, self.r], (self.weight.kind(), self.weight.device()))
                    .index_put(&[Some(rows), Some(cols)], &self.weight, false);
                let q = &q - q.transpose(0, 1);
                let eye = Tensor::eye(self.r, (q.kind(), q.device()));
                match self.options.neumann {
                    Some((terms, eps)) => neumann(q, eye, terms, eps),
                    None => {
                        let orig = q.kind();
                        let half = matches!(orig, Kind::Half | Kind::BFloat16);
                        let (q, eye) =
                            if half { (q.to_kind(Kind::Float), eye.to_kind(Kind::Float)) } else { (q, eye) };
                        let r = Tensor::linalg_solve(&(&eye - &q), &(&eye + &q), false);
                        let r = self.scale(r);
                        return if half { r.to_kind(orig) } else { r };
                    }
                }
            };
        self.scale(r)
    }

    fn scale(&self, r: Tensor) -> Tensor {
        let r = match &self.vector_b {
            Some(b) => b.unsqueeze(1) * r,
            None => r,
        };
        match &self.vector_a {
            Some(a) => r * a.unsqueeze(0),
            None => r,
        }
    }

    /// `ΔW = α/r · B·(R − I)·A` in the base weight's dtype (computed in f32 on the CPU for half dtypes).
    pub fn delta_weight(&self, out_kind: Kind) -> Tensor {
        let device = self.a.device();
        let compute = if device == Device::Cpu && matches!(out_kind, Kind::Half | Kind::BFloat16) {
            Kind::Float
        } else {
            out_kind
        };
        let (a, b, r) = (self.a.to_kind(compute), self.b.to_kind(compute), self.r_matrix().to_kind(compute));
        let eye = Tensor::eye(self.r, (compute, device));
        let delta = b.matmul(&(r - eye)).matmul(&a);
        (delta * self.scaling).to_kind(out_kind)
    }

    /// This adapter's output term for input `x` (PEFT's loop body).
    fn term(&self, x: &Tensor, train: bool) -> Tensor {
        let x = if x.kind() != self.a.kind() { x.to_kind(self.a.kind()) } else { x.shallow_clone() };
        let x = if train && self.dropout > 0.0 { x.dropout(self.dropout, true) } else { x };
        let (a, b) = (self.a.to_kind(x.kind()), self.b.to_kind(x.kind()));
        let xa = x.matmul(&a.tr());
        // OrthLayer.forward: in f32 on the CPU for half inputs.
        let compute = if xa.device() == Device::Cpu && matches!(xa.kind(), Kind::Half | Kind::BFloat16) {
            Kind::Float
        } else {
            xa.kind()
        };
        let xr = xa.to_kind(compute).matmul(&self.r_matrix().to_kind(compute).tr()).to_kind(xa.kind());
        (xr - &xa).matmul(&b.tr()) * self.scaling
    }
}

/// `torch.triu_indices(n, n, 1)`.
fn triu_indices(n: i64, device: Device) -> (Tensor, Tensor) {
    let idx = Tensor::triu_indices(n, n, 1, (Kind::Int64, device));
    (idx.get(0), idx.get(1))
}

/// The Neumann series of the Cayley transform, term by term as PEFT adds them (in place on a copy of `I`).
fn neumann(q: Tensor, eye: Tensor, terms: i64, eps: Option<f64>) -> Tensor {
    let q = match eps {
        Some(eps) => {
            let norm = q.linalg_norm_ord_str("fro", None::<&[i64]>, false, None::<Kind>);
            let finite = norm.isfinite().int64_value(&[]) != 0;
            if finite && norm.gt(eps).int64_value(&[]) != 0 {
                // Python's `eps / tensor` is `tensor.reciprocal() * eps`.
                &q * ((norm + 1e-12).reciprocal() * eps)
            } else {
                q
            }
        }
        None => q,
    };
    let mut r = eye.copy();
    if terms > 1 {
        let _ = r.g_add_(&(&q * 2.0));
        if terms > 2 {
            let q2 = q.matmul(&q);
            let _ = r.g_add_(&(&q2 * 2.0));
            let mut power = q2;
            for _ in 3..(terms - 1) {
                power = power.matmul(&q);
                let _ = r.g_add_(&(&power * 2.0));
            }
            power = power.matmul(&q);
            let _ = r.g_add_(&power);
        }
    }
    r
}

/// The frozen `(A, B)` from the weight's top-`r` singular subspace (PEFT's `_build_psoft_ab_cache_buffers`).
fn subspace(weight: &Tensor, config: &PsoftConfig) -> Result<(Tensor, Tensor)> {
    let w = weight.to_kind(Kind::Float);
    let r = config.r;
    let (vr, sr, uhr) = tch::no_grad(|| -> Result<(Tensor, Tensor, Tensor)> {
        if config.psoft_svd == "lowrank" {
            let niter = config.psoft_svd_lowrank_niter;
            let seed = config.random_seed;
            let (u, s, v) = peft_core::rng::fork_default_cpu(|| {
                tch::manual_seed(seed);
                peft_core::linalg::svd_lowrank(&w, r, niter)
            })??;
            Ok((u.narrow(1, 0, r), s.narrow(0, 0, r), v.narrow(1, 0, r).tr()))
        } else {
            let (u, s, vh) = peft_core::linalg::svd(&w)?;
            Ok((u.narrow(1, 0, r), s.narrow(0, 0, r), vh.narrow(0, 0, r)))
        }
    })?;
    let scaled = sr / config.scaling();
    let (a, b) = if config.ab_svd_init == "pissa_init" {
        let root = scaled.sqrt();
        (root.diag(0).matmul(&uhr), vr.matmul(&root.diag(0)))
    } else {
        (uhr, vr.matmul(&scaled.diag(0)))
    };
    Ok((a.contiguous().detach(), b.contiguous().detach()))
}

impl TunerLayer for PsoftLayer {
    fn peft_type(&self) -> &'static str {
        PEFT_TYPE
    }

    fn named_tensors(&self) -> Vec<(String, Tensor)> {
        let ad = &self.adapter;
        let mut v = vec![(format!("psoft_R.{ad}.weight"), self.weight.shallow_clone())];
        if let Some(b) = &self.vector_b {
            v.push((format!("psoft_R.{ad}.vector_b"), b.shallow_clone()));
        }
        if let Some(a) = &self.vector_a {
            v.push((format!("psoft_R.{ad}.vector_a"), a.shallow_clone()));
        }
        v
    }

    fn transform_output(&self, _base: &dyn BaseLayer, x: &Tensor, y: Tensor, ctx: &ForwardCtx<'_>) -> Tensor {
        match ctx.active_group(self) {
            Some(group) => add_group_terms(y, &group, |layer| Some(layer.term(x, ctx.train))),
            None => y,
        }
    }

    fn merge(&mut self, base: &mut dyn BaseLayer, ctx: &MergeCtx<'_>) -> Result<()> {
        let kind = base.as_weighted().map_or(Kind::Float, |w| w.weight().kind());
        let delta = tch::no_grad(|| self.delta_weight(kind));
        merge_delta(base, &delta, ctx.safe, &self.adapter, &self.module)
    }

    fn unmerge(&mut self, base: &mut dyn BaseLayer) -> Result<()> {
        let kind = base.as_weighted().map_or(Kind::Float, |w| w.weight().kind());
        let delta = tch::no_grad(|| self.delta_weight(kind));
        unmerge_delta(base, &delta, &self.module)
    }

    fn describe(&self) -> String {
        format!(
            "psoft.Linear(in_features={}, out_features={}, r={}, orth={}, cayley_neumann={})",
            self.in_features,
            self.out_features,
            self.r,
            self.options.orth,
            self.options.neumann.is_some()
        )
    }
}
