//! SHiRA on one linear layer: `n = r · (in + out)` trained entries `shira_weight` at fixed positions
//! `shira_indices` `(2, n)` (rows, columns; int32) of the `(out, in)` weight — a sparse update of high rank.
//! The layer computes `x · (W + Σ sparse(indices, weight · scaling))ᵀ + bias` over the active adapters (on a
//! quantized base: `base(x) + x · (Σ sparse(…))ᵀ`).
//!
//! The positions are the first `n` entries of `randperm(out · in)` from a generator seeded with
//! `random_seed`, as a mask whose nonzero positions are then listed in row-major order; they are saved with
//! the adapter (a loaded file's positions win).

use crate::config::{ShiraConfig, PEFT_TYPE};
use peft_core::config::LayerInit;
use peft_core::layer::{merge_delta, unmerge_delta, BaseLayer, ForwardCtx, MergeCtx, TunerLayer};
use peft_core::rng::Generator;
use peft_core::{PeftError, Result};
use tch::{Device, Kind, Tensor};

/// One SHiRA adapter on one layer (PEFT's `shira.Linear`).
#[derive(Debug)]
pub struct ShiraLayer {
    adapter: String,
    module: String,
    in_features: i64,
    out_features: i64,
    r: i64,
    scaling: f64,
    weight: Tensor,
    indices: Tensor,
}

/// PEFT's `random_mask`: the positions of `n` ones in an `(out, in)` mask drawn by `randperm(out · in)`
/// from a generator seeded with `seed`, listed in row-major order as `(2, n)` int32.
///
/// # Errors
/// A libtorch failure.
pub fn random_mask_indices(out_features: i64, in_features: i64, n: i64, seed: u64) -> Result<Tensor> {
    let idx = Generator::new(seed)?.randperm(out_features * in_features)?.narrow(0, 0, n);
    let f = || -> std::result::Result<Tensor, tch::TchError> {
        let ones = Tensor::f_ones([n], (Kind::Bool, Device::Cpu))?;
        let mask = Tensor::f_zeros([1, out_features * in_features], (Kind::Bool, Device::Cpu))?
            .f_scatter(1, &idx.f_unsqueeze(0)?, &ones.f_unsqueeze(0)?)?
            .f_view([out_features, in_features])?;
        let nz = mask.f_eq(1.0)?.f_nonzero_numpy()?;
        Tensor::f_cat(&[nz[0].f_unsqueeze(0)?, nz[1].f_unsqueeze(0)?], 0)?.f_to_kind(Kind::Int)
    };
    f().map_err(PeftError::torch("drawing SHiRA's mask"))
}

impl ShiraLayer {
    /// Creates the adapter as PEFT does: the mask first (its own generator), then `shira_weight` = zeros
    /// (`init_weights`) or `randn(n)` from the global generator, moved to the base layer's device and dtype.
    ///
    /// # Errors
    /// [`PeftError::UnsupportedLayer`] for anything but `nn.Linear`; an `r` whose entries exceed the weight's.
    pub fn create(config: &mut ShiraConfig, ctx: &mut LayerInit<'_, '_>) -> Result<Self> {
        let Some(lin) = ctx.base.as_linear().filter(|l| !l.fan_in_fan_out()) else {
            return Err(ctx.unsupported(
                PEFT_TYPE,
                "Currently, only the following modules are supported: `torch.nn.Linear`.",
            ));
        };
        let (in_features, out_features) = (lin.in_features(), lin.out_features());
        ctx.match_fan_in_fan_out(&mut config.fan_in_fan_out, false);
        let r = config.r;
        let n = r * (in_features + out_features);
        if n > in_features * out_features {
            return Err(PeftError::Invalid(format!(
                "`{}`: The set rank {r} results in more shira params than the total number of params in the base layer \
                 {} and this is not allowed.",
                ctx.module_name,
                in_features * out_features
            )));
        }
        let indices = random_mask_indices(out_features, in_features, n, config.mask_seed())?;
        let weight = if config.init_weights {
            Tensor::f_zeros([n], (Kind::Float, Device::Cpu))
        } else {
            Tensor::f_randn([n], (Kind::Float, Device::Cpu))
        }
        .map_err(PeftError::torch("initialising shira_weight"))?;
        let adapter = ctx.adapter_name.to_string();
        let weight = (&ctx.path / "shira_weight").add(&adapter, ctx.place(weight)?, true);
        let (_, _, device) = ctx.placement()?;
        let indices = (&ctx.path / "shira_indices").add(&adapter, indices.to_device(device), false);
        Ok(Self {
            adapter,
            module: ctx.module_name.to_string(),
            in_features,
            out_features,
            r,
            scaling: 1.0,
            weight,
            indices,
        })
    }

    /// The trained entries, `(n)`.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// Their positions, `(2, n)` int32.
    pub fn indices(&self) -> &Tensor {
        &self.indices
    }

    /// The factor the entries are multiplied by (1 in training; PEFT's `set_scale` changes it for inference).
    pub fn scaling(&self) -> f64 {
        self.scaling
    }

    /// PEFT's `set_scale`.
    pub fn set_scale(&mut self, scale: f64) {
        self.scaling = scale;
    }

    /// `w + delta` for PEFT's sparse `get_delta_weight` (`w += sparse_coo_tensor(indices, weight ·
    /// scaling)`): each trained entry added once at its position. (libtorch's C++ sparse factory returns a
    /// tensor outside autograd, so the sum is taken with an accumulating `index_put`, which adds the same
    /// values to the same positions.)
    pub fn add_delta_to(&self, w: &Tensor) -> Tensor {
        let idx = self.indices.to_device(self.weight.device()).to_kind(Kind::Int64);
        let values = (&self.weight * self.scaling).to_kind(w.kind());
        w.index_put(&[Some(idx.get(0)), Some(idx.get(1))], &values, true)
    }

    /// PEFT's `get_delta_weight` as a dense `(out, in)` tensor.
    pub fn delta_weight(&self) -> Tensor {
        let zeros =
            Tensor::zeros([self.out_features, self.in_features], (self.weight.kind(), self.weight.device()));
        tch::no_grad(|| self.add_delta_to(&zeros))
    }

    /// The active SHiRA adapters of the layer when this one comes first among them (it applies them all).
    fn group<'a>(&'a self, ctx: &ForwardCtx<'a>) -> Option<Vec<&'a ShiraLayer>> {
        ctx.active_group(self)
    }
}

impl TunerLayer for ShiraLayer {
    fn peft_type(&self) -> &'static str {
        PEFT_TYPE
    }

    fn named_tensors(&self) -> Vec<(String, Tensor)> {
        vec![
            (format!("shira_weight.{}", self.adapter), self.weight.shallow_clone()),
            (format!("shira_indices.{}", self.adapter), self.indices.shallow_clone()),
        ]
    }

    fn is_buffer(&self, name: &str) -> bool {
        name.starts_with("shira_indices.")
    }

    fn is_trainable_tensor(&self, name: &str) -> bool {
        !self.is_buffer(name)
    }

    /// Dense bases: `x · (W.clone() + Σ sparse deltas)ᵀ + bias`, as PEFT computes it.
    fn replace_base(&self, base: &dyn BaseLayer, x: &Tensor, ctx: &ForwardCtx<'_>) -> Option<Tensor> {
        let w = base.as_weighted().filter(|w| w.weight_is_storage())?;
        let group = self.group(ctx)?;
        let mut new_weight = w.weight().copy();
        for a in group {
            new_weight = a.add_delta_to(&new_weight);
        }
        Some(x.linear(&new_weight, w.bias().as_ref()))
    }

    /// Quantized bases: `base(x) + x · (Σ sparse deltas)ᵀ`.
    fn transform_output(&self, base: &dyn BaseLayer, x: &Tensor, y: Tensor, ctx: &ForwardCtx<'_>) -> Tensor {
        if base.as_weighted().is_some_and(|w| w.weight_is_storage()) {
            return y;
        }
        let Some(group) = self.group(ctx) else { return y };
        let mut new_weight = Tensor::zeros([self.out_features, self.in_features], (y.kind(), y.device()));
        for a in group {
            new_weight = a.add_delta_to(&new_weight);
        }
        y + x.linear::<Tensor>(&new_weight, None)
    }

    fn merge(&mut self, base: &mut dyn BaseLayer, ctx: &MergeCtx<'_>) -> Result<()> {
        merge_delta(base, &self.delta_weight(), ctx.safe, &self.adapter, &self.module)
    }

    fn unmerge(&mut self, base: &mut dyn BaseLayer) -> Result<()> {
        unmerge_delta(base, &self.delta_weight(), &self.module)
    }

    fn describe(&self) -> String {
        format!(
            "shira.Linear(in_features={}, out_features={}, r={})",
            self.in_features, self.out_features, self.r
        )
    }
}
