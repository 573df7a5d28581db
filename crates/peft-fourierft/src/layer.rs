//! FourierFT on one linear layer: `n` learned coefficients `c` (`fourierft_spectrum`) at fixed random
//! positions `(row, col)` of an `(out, in)` spectrum `S`; the weight update is `ΔW = Re(ifft2(S)) · scaling`
//! and the output `y = base(x) + x · ΔWᵀ`. The positions are the first `n` entries of
//! `randperm(out · in)` from a generator seeded with `random_loc_seed` (row = i / in, col = i % in): they are
//! not saved but drawn again on load, as PEFT does.

use crate::config::{FourierFtConfig, PEFT_TYPE};
use peft_core::config::LayerInit;
use peft_core::layer::{merge_delta, unmerge_delta, BaseLayer, ForwardCtx, MergeCtx, TunerLayer};
use peft_core::{PeftError, Result};
use tch::{Device, Kind, Tensor};

/// One FourierFT adapter on one layer (PEFT's `fourierft.FourierFTLinear`, also for GPT-2's `Conv1D`).
#[derive(Debug)]
pub struct FourierFtLayer {
    adapter: String,
    module: String,
    fan_in_fan_out: bool,
    in_features: i64,
    out_features: i64,
    n_frequency: i64,
    scaling: f64,
    /// `(2, n)` int64: rows, then columns (CPU).
    indices: Tensor,
    spectrum: Tensor,
}

impl FourierFtLayer {
    /// Creates the adapter as PEFT's `update_layer`: the positions from the seeded generator, then
    /// `fourierft_spectrum = randn(n)` from the global generator (zeros with `init_weights`), moved to the base
    /// layer's device and dtype.
    ///
    /// # Errors
    /// [`PeftError::UnsupportedLayer`] for anything but linear layers and `Conv1D`; an `n_frequency` that is
    /// not positive or exceeds `in · out`.
    pub fn create(config: &mut FourierFtConfig, ctx: &mut LayerInit<'_, '_>) -> Result<Self> {
        let Some(lin) = ctx.base.as_linear() else {
            return Err(ctx.unsupported(
                PEFT_TYPE,
                "only `torch.nn.Linear` and `transformers.pytorch_utils.Conv1D` are supported",
            ));
        };
        let (in_features, out_features, fifo) = (lin.in_features(), lin.out_features(), lin.fan_in_fan_out());
        ctx.match_fan_in_fan_out(&mut config.fan_in_fan_out, fifo);
        let n = config.n_frequency_for(ctx.module_name)?;
        peft_core::config::require_coefficient_count(
            "n_frequency",
            n,
            in_features,
            out_features,
            ctx.module_name,
        )?;
        let seed =
            config.random_loc_seed.ok_or_else(|| PeftError::Invalid("random_loc_seed is not set".into()))?;
        let indices = peft_core::rng::sparse_positions(seed, out_features, in_features, n)?;
        let mut spectrum = Tensor::f_randn([n], (Kind::Float, Device::Cpu))
            .map_err(PeftError::torch("initialising fourierft_spectrum"))?;
        if config.init_weights {
            let _ = tch::no_grad(|| spectrum.f_zero_())
                .map_err(PeftError::torch("initialising fourierft_spectrum"))?;
        }
        let adapter = ctx.adapter_name.to_string();
        let spectrum = (&ctx.path / "fourierft_spectrum").add(&adapter, ctx.place(spectrum)?, true);
        Ok(Self {
            adapter,
            module: ctx.module_name.to_string(),
            fan_in_fan_out: fifo,
            in_features,
            out_features,
            n_frequency: n,
            scaling: config.scaling,
            indices,
            spectrum,
        })
    }

    /// The learned coefficients, `(n)`.
    pub fn spectrum(&self) -> &Tensor {
        &self.spectrum
    }

    /// The coefficients' positions, `(2, n)` int64 (rows, columns).
    pub fn indices(&self) -> &Tensor {
        &self.indices
    }

    /// PEFT's `get_delta_weight`: `Re(ifft2(S)) · scaling` as an `(out, in)` tensor in the spectrum's dtype
    /// (always `(out, in)`, whatever the base layout).
    pub fn delta_weight(&self) -> Tensor {
        let device = self.spectrum.device();
        let idx = self.indices.to_device(device);
        let mut dense = Tensor::zeros([self.out_features, self.in_features], (Kind::Float, device));
        let rows = idx.get(0);
        let cols = idx.get(1);
        let _ = dense.index_put_(&[Some(rows), Some(cols)], &self.spectrum.to_kind(Kind::Float), false);
        let delta = dense.fft_ifft2(None::<&[i64]>, [-2, -1], "backward").real() * self.scaling;
        delta.to_kind(self.spectrum.kind())
    }

    /// The delta in the base weight's layout.
    fn delta_for_base(&self) -> Tensor {
        let d = tch::no_grad(|| self.delta_weight());
        if self.fan_in_fan_out {
            d.transpose(0, 1)
        } else {
            d
        }
    }
}

impl TunerLayer for FourierFtLayer {
    fn peft_type(&self) -> &'static str {
        PEFT_TYPE
    }

    fn named_tensors(&self) -> Vec<(String, Tensor)> {
        vec![(format!("fourierft_spectrum.{}", self.adapter), self.spectrum.shallow_clone())]
    }

    fn transform_output(
        &self,
        _base: &dyn BaseLayer,
        x: &Tensor,
        y: Tensor,
        _ctx: &ForwardCtx<'_>,
    ) -> Tensor {
        let delta = self.delta_weight();
        let kind = y.kind();
        (y + x.to_kind(delta.kind()).linear::<Tensor>(&delta, None)).to_kind(kind)
    }

    fn merge(&mut self, base: &mut dyn BaseLayer, ctx: &MergeCtx<'_>) -> Result<()> {
        merge_delta(base, &self.delta_for_base(), ctx.safe, &self.adapter, &self.module)
    }

    fn unmerge(&mut self, base: &mut dyn BaseLayer) -> Result<()> {
        unmerge_delta(base, &self.delta_for_base(), &self.module)
    }

    fn describe(&self) -> String {
        format!(
            "fourierft.FourierFTLinear(in_features={}, out_features={}, n_frequency={})",
            self.in_features, self.out_features, self.n_frequency
        )
    }
}
