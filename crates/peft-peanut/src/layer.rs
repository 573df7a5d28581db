//! `PeanutLayer`: PEFT 0.21.2's PEANuT `Linear` (`peanut.Linear`) on dense `nn.Linear`.
//!
//! The update is computed from the frozen weight `W` `(out, in)` by a small network over its transposed
//! rows: `h₀ = f(Wᵀ·Aᵀ)` `(in, r)`, then `depth` encoders `hᵢ₊₁ = f(hᵢ·Eᵢᵀ)` (keeping each input as a
//! residual), then `depth` decoders `h ← f(h·Dᵢᵀ) + residual` (last residual first), and finally
//! `ΔW = (h·Bᵀ · scaling)ᵀ`. `f` is the config's `ACT2FN` activation.
//!
//! * Forward, not merged: `y = base(x) + x·ΔWᵀ`, with `ΔW` recomputed from the current weight on every
//!   pass (so gradients reach `A`, the encoders, the decoders and `B`), for each active adapter in turn.
//! * Merge: `ΔW` computed from the weight without any merged adapter (PEFT's cached
//!   `_base_weight_before_merge`; here [`TunerLayer::merge_needs_unmerged_base`]) and added.
//! * Unmerge: PEFT copies the cached pre-merge weight back; here each adapter keeps the weight as it
//!   found it and restores it (adapters unmerge last-merged first), so unmerging is exact as in PEFT —
//!   at the cost of one weight copy per merged adapter, where PEFT holds one per layer.

use crate::config::{PeanutConfig, PEFT_TYPE};
use peft_core::config::LayerInit;
use peft_core::layer::{merge_delta, replace_weight, BaseLayer, ForwardCtx, MergeCtx, TunerLayer};
use peft_core::{Activation, PeftError, Result};
use tch::{Device, Kind, Tensor};

/// One PEANuT adapter on one linear layer.
#[derive(Debug)]
pub struct PeanutLayer {
    adapter: String,
    module: String,
    r: i64,
    in_features: i64,
    out_features: i64,
    act: Activation,
    scaling: f64,
    /// `peanut_A.<adapter>.weight`: `(r, out)`.
    a: Tensor,
    /// `peanut_B.<adapter>.weight`: `(out, r)`.
    b: Tensor,
    /// `peanut_encoders.<adapter>.<i>.weight`: `(r, r)` each.
    encoders: Vec<Tensor>,
    /// `peanut_decoders.<adapter>.<i>.weight`: `(r, r)` each.
    decoders: Vec<Tensor>,
    /// The base weight as this adapter's merge found it (restored by unmerge).
    before_merge: Option<Tensor>,
}

const UNSUPPORTED: &str = "PEANuT supports `torch.nn.Linear` only (not transformers' Conv1D, embeddings or \
                           convolutions); its update is computed from the dense weight, so quantized weights are \
                           refused too";

impl PeanutLayer {
    /// Creates the adapter as PEFT's `update_layer` does, with the same random draws: the `nn.Linear`
    /// constructors of `A`, the encoders, the decoders and `B` (each a Kaiming-uniform draw), then
    /// `reset_peanut_parameters` (Kaiming-uniform again for `A`, the encoders and decoders; `B` zero, or a
    /// third Kaiming-uniform draw with `init_weights: false`); moved to the base layer's device and dtype.
    ///
    /// # Errors
    /// [`PeftError::UnsupportedLayer`] for anything but a dense `nn.Linear`; an invalid config.
    pub fn create(config: &PeanutConfig, ctx: &mut LayerInit<'_, '_>) -> Result<Self> {
        let Some(lin) = ctx.base.as_linear().filter(|l| !l.fan_in_fan_out() && l.weight_is_storage()) else {
            return Err(ctx.unsupported(PEFT_TYPE, UNSUPPORTED));
        };
        let (in_features, out_features) = (lin.in_features(), lin.out_features());
        peft_core::config::require_positive("r", config.r)?;
        if config.depth < 0 {
            return Err(PeftError::Invalid(format!(
                "`depth` can only be a non-negative integer; got {}",
                config.depth
            )));
        }
        let act = config.activation()?;
        let (r, depth) = (config.r, config.depth as usize);
        let sqrt5 = 5f64.sqrt();
        let linear = |fan_out: i64, fan_in: i64| -> Result<Tensor> {
            let mut w = Tensor::f_empty([fan_out, fan_in], (Kind::Float, Device::Cpu))
                .map_err(PeftError::torch("allocating a PEANuT weight"))?;
            peft_core::init::kaiming_uniform_(&mut w, sqrt5)?;
            Ok(w)
        };
        // The nn.Linear constructors, in update_layer's order.
        let mut a = linear(r, out_features)?;
        let mut encoders = (0..depth).map(|_| linear(r, r)).collect::<Result<Vec<_>>>()?;
        let mut decoders = (0..depth).map(|_| linear(r, r)).collect::<Result<Vec<_>>>()?;
        let mut b = linear(out_features, r)?;
        // reset_peanut_parameters.
        peft_core::init::kaiming_uniform_(&mut a, sqrt5)?;
        for w in encoders.iter_mut().chain(decoders.iter_mut()) {
            peft_core::init::kaiming_uniform_(w, sqrt5)?;
        }
        if config.init_weights {
            peft_core::init::zeros_(&mut b)?;
        } else {
            peft_core::init::kaiming_uniform_(&mut b, sqrt5)?;
        }
        let adapter = ctx.adapter_name.to_string();
        let path = &ctx.path;
        let a = (path / "peanut_A" / &adapter).add("weight", ctx.place(a)?, true);
        let b = (path / "peanut_B" / &adapter).add("weight", ctx.place(b)?, true);
        let stack = |name: &str, ws: Vec<Tensor>| -> Result<Vec<Tensor>> {
            ws.into_iter()
                .enumerate()
                .map(|(i, w)| Ok((path / name / &adapter / i).add("weight", ctx.place(w)?, true)))
                .collect()
        };
        let encoders = stack("peanut_encoders", encoders)?;
        let decoders = stack("peanut_decoders", decoders)?;
        Ok(Self {
            adapter,
            module: ctx.module_name.to_string(),
            r,
            in_features,
            out_features,
            act,
            scaling: config.scaling,
            a,
            b,
            encoders,
            decoders,
            before_merge: None,
        })
    }

    /// The width of the adapter network.
    pub fn r(&self) -> i64 {
        self.r
    }

    /// How many encoder/decoder pairs the network has.
    pub fn depth(&self) -> usize {
        self.encoders.len()
    }

    /// The activation.
    pub fn activation(&self) -> Activation {
        self.act
    }

    /// `ΔW` `(out, in)` for the base weight `weight` `(out, in)`, in the adapter's dtype (PEFT's
    /// `_compute_delta_weight`).
    pub fn delta_weight(&self, weight: &Tensor) -> Tensor {
        let f = |t: &Tensor| self.act.forward(t);
        let mut h = f(&weight.tr().to_kind(self.a.kind()).matmul(&self.a.tr()));
        let mut residuals = Vec::with_capacity(self.encoders.len());
        for e in &self.encoders {
            let next = f(&h.matmul(&e.tr()));
            residuals.push(std::mem::replace(&mut h, next));
        }
        for (d, residual) in self.decoders.iter().zip(residuals.iter().rev()) {
            h = f(&h.matmul(&d.tr())) + residual;
        }
        (h.matmul(&self.b.tr()) * self.scaling).tr()
    }

    fn base_weight(&self, base: &dyn BaseLayer) -> Result<Tensor> {
        base.as_weighted()
            .map(|w| w.weight())
            .ok_or_else(|| PeftError::Invalid(format!("`{}`: the base layer has no weight", self.module)))
    }
}

impl TunerLayer for PeanutLayer {
    fn peft_type(&self) -> &'static str {
        PEFT_TYPE
    }

    fn named_tensors(&self) -> Vec<(String, Tensor)> {
        let ad = &self.adapter;
        let mut v = vec![
            (format!("peanut_A.{ad}.weight"), self.a.shallow_clone()),
            (format!("peanut_B.{ad}.weight"), self.b.shallow_clone()),
        ];
        for (name, ws) in [("peanut_encoders", &self.encoders), ("peanut_decoders", &self.decoders)] {
            v.extend(
                ws.iter().enumerate().map(|(i, w)| (format!("{name}.{ad}.{i}.weight"), w.shallow_clone())),
            );
        }
        v
    }

    /// PeanutModel's `_remove_adapter_name_from_key`: the encoder and decoder lists keep their index after
    /// the adapter name (`peanut_encoders.<adapter>.0.weight` → `peanut_encoders.0.weight`).
    fn checkpoint_key(&self, key: &str, adapter: &str) -> String {
        for list in ["peanut_encoders", "peanut_decoders"] {
            let marker = format!(".{list}.{adapter}.");
            if key.contains(&marker) {
                return key.replacen(&marker, &format!(".{list}."), 1);
            }
        }
        peft_core::peft_config::keys::remove_adapter_name(key, adapter)
    }

    fn transform_output(&self, base: &dyn BaseLayer, x: &Tensor, y: Tensor, _ctx: &ForwardCtx<'_>) -> Tensor {
        let Some(weight) = base.as_weighted().map(|w| w.weight()) else {
            return y;
        };
        let delta = self.delta_weight(&weight);
        let update = x.to_kind(delta.kind()).matmul(&delta.tr());
        let kind = y.kind();
        y + update.to_kind(kind)
    }

    fn merge_needs_unmerged_base(&self) -> bool {
        true
    }

    fn merge(&mut self, base: &mut dyn BaseLayer, ctx: &MergeCtx<'_>) -> Result<()> {
        let current = self.base_weight(base)?;
        let (before, delta) = tch::no_grad(|| -> Result<(Tensor, Tensor)> {
            let before =
                current.f_detach_copy().map_err(PeftError::torch("keeping the weight before merging"))?;
            let reference = ctx.unmerged_base_weight.unwrap_or(&current);
            Ok((before, self.delta_weight(reference).to_kind(current.kind())))
        })?;
        merge_delta(base, &delta, ctx.safe, &self.adapter, &self.module)?;
        self.before_merge = Some(before);
        Ok(())
    }

    fn unmerge(&mut self, base: &mut dyn BaseLayer) -> Result<()> {
        let Some(before) = self.before_merge.take() else {
            return Ok(());
        };
        let module = self.module.clone();
        let w = base
            .as_weighted_mut()
            .ok_or_else(|| PeftError::Invalid(format!("`{module}`: the base layer has no weight")))?;
        replace_weight(w, &before)
    }

    fn describe(&self) -> String {
        format!(
            "peanut.Linear(in_features={}, out_features={}, r={}, depth={}, act_fn={}, scaling={})",
            self.in_features,
            self.out_features,
            self.r,
            self.encoders.len(),
            self.act,
            self.scaling
        )
    }
}
