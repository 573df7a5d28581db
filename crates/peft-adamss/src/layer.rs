//! `AdamssLayer`: PEFT 0.21.2's `adamss.Linear` — AdaMSS on plain `nn.Linear` layers.
//!
//! With the frozen weight `W` `(out, in)` and bias `b`, `x̃ = [x | 1]` when the layer has a bias (else
//! `x̃ = x`) and `Vᵀ` `(r', in (+1))` the right factor of `[W | b]`'s rank-`r'` SVD
//! (`adamss_newB.<adapter>`, a saved buffer), each subspace `i` owns output rows `Sᵢ` and trains
//! `Aᵢ` `(rankᵢ, r')` (`adamss_A.<adapter>.<i>`) and `Bᵢ` `(|Sᵢ|, rankᵢ)` (`adamss_B.<adapter>.<i>`):
//!
//! * forward: `p = x̃·Vᵀᵀ`, `dᵢ = (p·Aᵢᵀ)·Bᵢᵀ`, `y = base(x) + scatter(cat(dᵢ))` — the concatenation is
//!   scattered to the rows `cat(Sᵢ)` of the output, adapter after adapter as PEFT's loop;
//! * `ΔW|Δb = scatter_rows(cat(Bᵢ·Aᵢ·Vᵀ))`, its last column the bias's share when there is a bias;
//!   merged and unmerged additively into weight and bias.
//!
//! The subspaces are not saved: loading repeats the SVD and the clustering from the base weight, as PEFT
//! does, and refuses a file whose shapes do not fit them.

use crate::config::{AdamssConfig, PEFT_TYPE};
use crate::decompose::decompose;
use peft_core::config::LayerInit;
use peft_core::layer::{add_group_terms, all_finite, BaseLayer, ForwardCtx, MergeCtx, TunerLayer};
use peft_core::{PeftError, Result};
use tch::{Kind, Tensor};

/// One AdaMSS adapter on one linear layer.
#[derive(Debug)]
pub struct AdamssLayer {
    adapter: String,
    module: String,
    in_features: i64,
    out_features: i64,
    /// `adamss_newB.<adapter>` `(r', in (+1))`.
    new_b: Tensor,
    /// `adamss_A.<adapter>.<i>`.
    a: Vec<Tensor>,
    /// `adamss_B.<adapter>.<i>`.
    b: Vec<Tensor>,
    /// The output rows of each subspace.
    segments: Vec<Vec<i64>>,
    /// `cat(Sᵢ)` (`scatter_index`).
    scatter: Tensor,
    /// Whether the base has a bias (then `Vᵀ` has its extra column).
    has_bias: bool,
    /// Whether this adapter created the AdaMSS module (PEFT counts ASA's total from those only).
    first_on_layer: bool,
}

const UNSUPPORTED: &str = "Currently, only `torch.nn.Linear` is supported.";

impl AdamssLayer {
    /// Creates the adapter as PEFT's `update_layer`: the SVD and KMeans of the current weight, each
    /// subspace's `Aᵢ` from a QR, `Bᵢ` zero (`init_weights="orthogonal"`) or `0.01·N(0, 1)`; placed on
    /// the base weight's device and dtype (upcast from half precision as PEFT's adapter-dtype cast).
    ///
    /// # Errors
    /// [`PeftError::UnsupportedLayer`] for anything but a dense `nn.Linear` (PEFT refuses GPT-2's
    /// `Conv1D`, embeddings, convolutions and quantized layers); a failing decomposition.
    pub fn create(config: &mut AdamssConfig, ctx: &mut LayerInit<'_, '_>) -> Result<Self> {
        let Some(lin) = ctx.base.as_linear().filter(|l| !l.fan_in_fan_out() && l.weight_is_storage()) else {
            return Err(ctx.unsupported(PEFT_TYPE, UNSUPPORTED));
        };
        let (in_features, out_features) = (lin.in_features(), lin.out_features());
        let weight = lin.weight().detach();
        let bias = lin.bias().map(|b| b.detach());
        let (base_kind, _, _) = ctx.placement()?;
        let dec = decompose(&weight, bias.as_ref(), config, base_kind, ctx.module_name)?;
        let trainable = ctx.trainable;
        let new_b = (&ctx.path / "adamss_newB").add(ctx.adapter_name, ctx.place(dec.new_b)?, false);
        let mut a = Vec::with_capacity(dec.a.len());
        let mut b = Vec::with_capacity(dec.b.len());
        for (i, (ai, bi)) in dec.a.into_iter().zip(dec.b).enumerate() {
            let pa = &ctx.path / "adamss_A" / ctx.adapter_name;
            a.push(pa.add(&i.to_string(), ctx.place(ai)?, trainable));
            let pb = &ctx.path / "adamss_B" / ctx.adapter_name;
            b.push(pb.add(&i.to_string(), ctx.place(bi)?, trainable));
        }
        if dec.ambiguous {
            ctx.warn(format!(
                "AdaMSS on `{}`: a KMeans assignment was within float32 rounding of a tie (typically r >= the \
                 layer's output size, where the singular vectors are orthonormal and all equidistant); \
                 scikit-learn's BLAS rounding decides such ties, so PEFT's subspaces may differ from these. \
                 A smaller r avoids it.",
                ctx.module_name
            ));
        }
        let flat: Vec<i64> = dec.segments.iter().flatten().copied().collect();
        let scatter = Tensor::from_slice(&flat).to_device(weight.device());
        let first_on_layer =
            !ctx.siblings.values().any(|s| s.as_any().downcast_ref::<AdamssLayer>().is_some());
        Ok(Self {
            adapter: ctx.adapter_name.to_string(),
            module: ctx.module_name.to_string(),
            in_features,
            out_features,
            new_b,
            a,
            b,
            segments: dec.segments,
            scatter,
            has_bias: bias.is_some(),
            first_on_layer,
        })
    }

    /// The number of subspaces.
    pub fn num_subspaces(&self) -> usize {
        self.a.len()
    }

    /// The output rows of each subspace (PEFT's `seg_result`).
    pub fn segments(&self) -> &[Vec<i64>] {
        &self.segments
    }

    /// `(Aᵢ, Bᵢ)` of subspace `i` (shallow clones sharing storage and gradients with the model).
    pub fn subspace(&self, i: usize) -> Option<(Tensor, Tensor)> {
        Some((self.a.get(i)?.shallow_clone(), self.b.get(i)?.shallow_clone()))
    }

    /// The frozen projection `Vᵀ` (`adamss_newB`).
    pub fn new_b(&self) -> &Tensor {
        &self.new_b
    }

    /// Whether this adapter created the layer's AdaMSS module (the layers PEFT's ASA schedule counts).
    pub fn first_on_layer(&self) -> bool {
        self.first_on_layer
    }

    /// The adapter's output term (before the cast to the result's dtype).
    fn term(&self, x: &Tensor, out_dim: i64, kind: Kind) -> Tensor {
        let x = x.to_kind(kind);
        let newx = if self.has_bias {
            let mut shape = x.size();
            if let Some(last) = shape.last_mut() {
                *last = 1;
            }
            Tensor::cat(&[x.shallow_clone(), Tensor::ones(shape.as_slice(), (kind, x.device()))], -1)
        } else {
            x
        };
        let projected = newx.linear::<Tensor>(&self.new_b.to_kind(kind), None);
        let chunks: Vec<Tensor> = self
            .a
            .iter()
            .zip(&self.b)
            .map(|(a, b)| {
                projected.linear::<Tensor>(&a.to_kind(kind), None).linear::<Tensor>(&b.to_kind(kind), None)
            })
            .collect();
        let delta = Tensor::cat(&chunks, -1);
        let mut shape = delta.size();
        let dims = shape.len();
        let index = if dims == 1 {
            // PEFT's forward fails on an unbatched input (its index gets three dimensions); scatter it
            // along its only axis instead of panicking.
            self.scatter.shallow_clone()
        } else if dims == 2 {
            self.scatter.unsqueeze(0).expand([shape[0], -1], false)
        } else {
            let mut idx_shape: Vec<i64> = shape[..dims - 1].to_vec();
            idx_shape.push(-1);
            self.scatter.unsqueeze(0).unsqueeze(0).expand(idx_shape.as_slice(), false)
        };
        if let Some(last) = shape.last_mut() {
            *last = out_dim;
        }
        Tensor::zeros(shape.as_slice(), (delta.kind(), delta.device())).scatter(-1, &index, &delta)
    }

    /// `scatter_rows(cat(Bᵢ·Aᵢ·Vᵀ))` `(out, in (+1))` in `kind` (f32 for half-precision CPU weights, as
    /// PEFT's `get_delta_weight`).
    fn delta(&self, kind: Kind, device: tch::Device) -> Tensor {
        let compute = if device == tch::Device::Cpu && matches!(kind, Kind::Half | Kind::BFloat16) {
            Kind::Float
        } else {
            kind
        };
        let new_b = self.new_b.to_device(device).to_kind(compute);
        let chunks: Vec<Tensor> = self
            .a
            .iter()
            .zip(&self.b)
            .map(|(a, b)| {
                let (a, b) = (a.to_device(device).to_kind(compute), b.to_device(device).to_kind(compute));
                b.matmul(&a).matmul(&new_b)
            })
            .collect();
        let combined = Tensor::cat(&chunks, 0);
        let mut delta = Tensor::zeros([self.out_features, new_b.size()[1]], (compute, device));
        let _ = delta.index_put_(&[Some(self.scatter.to_device(device))], &combined, false);
        delta
    }

    /// The weight's and the bias's deltas in the base's dtype.
    fn deltas(&self, base: &dyn BaseLayer) -> Result<(Tensor, Option<Tensor>, Kind)> {
        let w = base
            .as_weighted()
            .ok_or_else(|| PeftError::Invalid(format!("`{}`: the base layer has no weight", self.module)))?;
        let weight = w.weight();
        let kind = weight.kind();
        let delta = tch::no_grad(|| self.delta(kind, weight.device()));
        if self.has_bias {
            let dw = delta.narrow(1, 0, self.in_features).to_kind(kind);
            let db = delta.select(1, self.in_features).to_kind(kind);
            Ok((dw, Some(db), kind))
        } else {
            Ok((delta.to_kind(kind), None, kind))
        }
    }
}

impl TunerLayer for AdamssLayer {
    fn peft_type(&self) -> &'static str {
        PEFT_TYPE
    }

    fn named_tensors(&self) -> Vec<(String, Tensor)> {
        let ad = &self.adapter;
        let mut v = Vec::with_capacity(2 * self.a.len() + 1);
        for (i, a) in self.a.iter().enumerate() {
            v.push((format!("adamss_A.{ad}.{i}"), a.shallow_clone()));
        }
        for (i, b) in self.b.iter().enumerate() {
            v.push((format!("adamss_B.{ad}.{i}"), b.shallow_clone()));
        }
        v.push((format!("adamss_newB.{ad}"), self.new_b.shallow_clone()));
        v
    }

    fn is_buffer(&self, name: &str) -> bool {
        name.starts_with("adamss_newB.")
    }

    fn is_trainable_tensor(&self, name: &str) -> bool {
        !self.is_buffer(name)
    }

    /// PEFT's loop over the active adapters: `result = result + term` for each, cast back once.
    fn transform_output(&self, base: &dyn BaseLayer, x: &Tensor, y: Tensor, ctx: &ForwardCtx<'_>) -> Tensor {
        let Some(group) = ctx.active_group(self) else {
            return y;
        };
        let kind = base.as_weighted().map_or(Kind::Float, |w| w.weight().kind());
        let out_dim = *y.size().last().unwrap_or(&self.out_features);
        add_group_terms(y, &group, |layer| Some(layer.term(x, out_dim, kind)))
    }

    /// `weight.data += ΔW` and `bias.data += Δb`; with `safe`, both sums are checked finite before either
    /// is written.
    fn merge(&mut self, base: &mut dyn BaseLayer, ctx: &MergeCtx<'_>) -> Result<()> {
        let (dw, db, _) = self.deltas(base)?;
        let module = self.module.clone();
        let w = base
            .as_weighted_mut()
            .ok_or_else(|| PeftError::Invalid(format!("`{module}`: the base layer has no weight")))?;
        let torch = PeftError::torch("merging AdaMSS");
        let (weight, bias) = (w.weight(), w.bias());
        if ctx.safe {
            let new_w = tch::no_grad(|| weight.f_add(&dw)).map_err(PeftError::torch("merging AdaMSS"))?;
            let new_b = match (&bias, &db) {
                (Some(b), Some(d)) => {
                    Some(tch::no_grad(|| b.f_add(d)).map_err(PeftError::torch("merging AdaMSS"))?)
                }
                _ => None,
            };
            if !all_finite(&new_w)? || new_b.as_ref().map(all_finite).transpose()? == Some(false) {
                return Err(PeftError::NonFiniteMerge { adapter: self.adapter.clone(), module });
            }
            w.set_weight(&new_w)?;
            if let (Some(mut b), Some(nb)) = (bias, new_b) {
                tch::no_grad(|| b.f_copy_(&nb)).map_err(torch)?;
            }
            return Ok(());
        }
        let mut inplace = weight.shallow_clone();
        let _ = tch::no_grad(|| inplace.f_add_(&dw)).map_err(torch)?;
        if let (Some(mut b), Some(d)) = (bias, db) {
            let _ = tch::no_grad(|| b.f_add_(&d)).map_err(PeftError::torch("merging AdaMSS"))?;
        }
        Ok(())
    }

    /// `weight.data -= ΔW`, `bias.data -= Δb`.
    fn unmerge(&mut self, base: &mut dyn BaseLayer) -> Result<()> {
        let (dw, db, _) = self.deltas(base)?;
        let module = self.module.clone();
        let w = base
            .as_weighted_mut()
            .ok_or_else(|| PeftError::Invalid(format!("`{module}`: the base layer has no weight")))?;
        let (mut weight, bias) = (w.weight(), w.bias());
        let _ = tch::no_grad(|| weight.f_sub_(&dw)).map_err(PeftError::torch("unmerging AdaMSS"))?;
        if let (Some(mut b), Some(d)) = (bias, db) {
            let _ = tch::no_grad(|| b.f_sub_(&d)).map_err(PeftError::torch("unmerging AdaMSS"))?;
        }
        Ok(())
    }

    fn describe(&self) -> String {
        format!(
            "adamss.Linear(in_features={}, out_features={}, num_subspaces={})",
            self.in_features,
            self.out_features,
            self.a.len()
        )
    }
}
