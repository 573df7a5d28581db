//! WaveFT on one linear layer: `n` learned coefficients `c` (`waveft_spectrum`) at fixed random cells
//! `(row, col)` of the `(out, in)` weight; the update `ΔW` (always `(out, in)`) is
//!
//! * with `use_idwt` (the default): the cells, shifted to the centre of a zero `(P_out, P_in)` matrix
//!   (`P = dim + reduction`, rounded up to even; `reduction` is the family's boundary loss), split into its
//!   four quadrants `cA | cH / cV | cD`, reconstructed by one inverse 2-D wavelet transform, times
//!   `scaling`, and cropped to `(out, in)` around the centre;
//! * without: the zero `(out, in)` matrix holding `c` at its cells, times `scaling`.
//!
//! The output is `y = base(x) + x · ΔWᵀ`. The cells are the first `n` entries of `randperm(out · in)` from a
//! generator seeded with `random_loc_seed` (row = i / in, col = i % in): not saved, drawn again on load, as
//! PEFT does.

use crate::config::{WaveftConfig, PEFT_TYPE};
use crate::wavelet;
use peft_core::config::LayerInit;
use peft_core::layer::{merge_delta, unmerge_delta, BaseLayer, ForwardCtx, MergeCtx, TunerLayer};
use peft_core::{PeftError, Result};
use tch::{Device, Kind, Tensor};

/// How an adapter turns its coefficients into the weight update.
#[derive(Clone, Debug, PartialEq)]
pub enum Reconstruction {
    /// The inverse wavelet transform of this family (`use_idwt: true`).
    Idwt {
        /// The wavelet (`"db1"`, `"sym4"`, …).
        family: String,
        /// Rows and columns the coefficient matrix is padded by (PEFT's `WAVELET_REDUCTIONS`).
        reduction: (i64, i64),
        /// The low-pass reconstruction filter.
        rec_lo: Vec<f64>,
        /// The high-pass reconstruction filter.
        rec_hi: Vec<f64>,
    },
    /// The coefficient matrix itself (`use_idwt: false`).
    Direct,
}

/// One WaveFT adapter on one layer (PEFT's `waveft.WaveFTLinear`, also for GPT-2's `Conv1D`).
#[derive(Debug)]
pub struct WaveftLayer {
    adapter: String,
    module: String,
    fan_in_fan_out: bool,
    in_features: i64,
    out_features: i64,
    n_frequency: i64,
    scaling: f64,
    reconstruction: Reconstruction,
    /// `(2, n)` int64: rows, then columns (CPU).
    indices: Tensor,
    spectrum: Tensor,
}

impl WaveftLayer {
    /// Creates the adapter as PEFT's `update_layer`: the cells from the seeded generator, then
    /// `waveft_spectrum`, zeros (`init_weights`, no draw) or `randn(n) · 0.01` from the global generator,
    /// moved to the base layer's device and dtype.
    ///
    /// # Errors
    /// [`PeftError::UnsupportedLayer`] for anything but `nn.Linear` and `Conv1D` (quantized layers
    /// included); an `n_frequency` that is not positive or exceeds `in · out`.
    pub fn create(config: &mut WaveftConfig, ctx: &mut LayerInit<'_, '_>) -> Result<Self> {
        let Some(lin) = ctx.base.as_linear() else {
            return Err(ctx.unsupported(
                PEFT_TYPE,
                "only `torch.nn.Linear` and `transformers.pytorch_utils.Conv1D` are supported",
            ));
        };
        if !lin.weight_is_storage() {
            return Err(ctx.unsupported(
                PEFT_TYPE,
                "quantized weights are not supported (PEFT's WaveFT adds its update to `weight.data` in place, \
                 which a packed 4-/8-bit weight cannot take)",
            ));
        }
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
        let reconstruction = if config.use_idwt {
            let family = &config.wavelet_family;
            let reduction = wavelet::reduction(family)
                .ok_or_else(|| PeftError::Invalid(format!("Wavelet family {family} not supported")))?;
            // Every family `WAVELET_REDUCTIONS` lists has a filter (PEFT's or PyWavelets').
            let (rec_lo, rec_hi) = wavelet::filters(family)
                .ok_or_else(|| PeftError::Invalid(format!("Wavelet family {family} has no filter")))?;
            Reconstruction::Idwt { family: family.clone(), reduction, rec_lo, rec_hi }
        } else {
            Reconstruction::Direct
        };
        let indices = peft_core::rng::sparse_positions(seed, out_features, in_features, n)?;
        let what = PeftError::torch("initialising waveft_spectrum");
        let spectrum = if config.init_weights {
            Tensor::f_zeros([n], (Kind::Float, Device::Cpu)).map_err(what)?
        } else {
            Tensor::f_randn([n], (Kind::Float, Device::Cpu))
                .and_then(|t| t.f_mul_scalar(0.01))
                .map_err(what)?
        };
        let adapter = ctx.adapter_name.to_string();
        let spectrum = (&ctx.path / "waveft_spectrum").add(&adapter, ctx.place(spectrum)?, true);
        Ok(Self {
            adapter,
            module: ctx.module_name.to_string(),
            fan_in_fan_out: fifo,
            in_features,
            out_features,
            n_frequency: n,
            scaling: config.scaling.value(),
            reconstruction,
            indices,
            spectrum,
        })
    }

    /// The learned coefficients, `(n)`.
    pub fn spectrum(&self) -> &Tensor {
        &self.spectrum
    }

    /// The coefficients' cells in the `(out, in)` weight, `(2, n)` int64 (rows, columns).
    pub fn indices(&self) -> &Tensor {
        &self.indices
    }

    /// How the update is reconstructed.
    pub fn reconstruction(&self) -> &Reconstruction {
        &self.reconstruction
    }

    /// PEFT's `get_delta_weight`: `ΔW`, `(out, in)` in the spectrum's dtype whatever the base layout.
    pub fn delta_weight(&self) -> Tensor {
        let spectrum = &self.spectrum;
        let (kind, device) = (spectrum.kind(), spectrum.device());
        let idx = self.indices.to_device(device);
        let (out, inp) = (self.out_features, self.in_features);
        match &self.reconstruction {
            Reconstruction::Direct => {
                let mut dense = Tensor::zeros([out, inp], (kind, device));
                let _ = dense.index_put_(&[Some(idx.get(0)), Some(idx.get(1))], spectrum, false);
                dense * self.scaling
            }
            Reconstruction::Idwt { reduction, rec_lo, rec_hi, .. } => {
                let even = |n: i64| n + n % 2;
                let (p_out, p_in) = (even(out + reduction.0), even(inp + reduction.1));
                let (row_off, col_off) = ((p_out - out) / 2, (p_in - inp) / 2);
                // PEFT masks out cells that would fall outside the padded matrix; a shift by at most half
                // the padding never does, so the mask selects every coefficient, and leaving it out changes
                // neither the values nor their gradients.
                let rows = idx.get(0) + row_off;
                let cols = idx.get(1) + col_off;
                let mut dense = Tensor::zeros([p_out, p_in], (kind, device));
                let _ = dense.index_put_(&[Some(rows), Some(cols)], spectrum, false);
                let (h2, w2) = (p_out / 2, p_in / 2);
                let quadrant =
                    |r: (i64, i64), c: (i64, i64)| dense.slice(0, r.0, r.1, 1).slice(1, c.0, c.1, 1);
                let ca = quadrant((0, h2), (0, w2));
                let ch = quadrant((0, h2), (w2, p_in));
                let cv = quadrant((h2, p_out), (0, w2));
                let cd = quadrant((h2, p_out), (w2, p_in));
                let delta = wavelet::waverec2d([&ca, &ch, &cv, &cd], rec_lo, rec_hi) * self.scaling;
                let (h, w) = (delta.size()[0], delta.size()[1]);
                if (h, w) == (out, inp) {
                    return delta;
                }
                // Odd dimensions were padded one further: crop around the centre.
                let (r0, c0) = ((h - out) / 2, (w - inp) / 2);
                delta.slice(0, r0, r0 + out, 1).slice(1, c0, c0 + inp, 1)
            }
        }
    }

    /// The delta in the base weight's layout, without autograd.
    fn delta_for_base(&self) -> Tensor {
        let d = tch::no_grad(|| self.delta_weight());
        if self.fan_in_fan_out {
            d.transpose(0, 1)
        } else {
            d
        }
    }
}

impl TunerLayer for WaveftLayer {
    fn peft_type(&self) -> &'static str {
        PEFT_TYPE
    }

    fn named_tensors(&self) -> Vec<(String, Tensor)> {
        vec![(format!("waveft_spectrum.{}", self.adapter), self.spectrum.shallow_clone())]
    }

    /// `y + x · ΔWᵀ`, `x` cast to the update's dtype. The sum keeps the promoted dtype, as PEFT's loop over
    /// the active adapters does; the layer casts it back to the base output's dtype once, after the last.
    fn transform_output(
        &self,
        _base: &dyn BaseLayer,
        x: &Tensor,
        y: Tensor,
        _ctx: &ForwardCtx<'_>,
    ) -> Tensor {
        let delta = self.delta_weight();
        y + x.to_kind(delta.kind()).linear::<Tensor>(&delta, None)
    }

    fn merge(&mut self, base: &mut dyn BaseLayer, ctx: &MergeCtx<'_>) -> Result<()> {
        merge_delta(base, &self.delta_for_base(), ctx.safe, &self.adapter, &self.module)
    }

    fn unmerge(&mut self, base: &mut dyn BaseLayer) -> Result<()> {
        unmerge_delta(base, &self.delta_for_base(), &self.module)
    }

    fn describe(&self) -> String {
        let how = match &self.reconstruction {
            Reconstruction::Idwt { family, .. } => format!("wavelet_family={family}"),
            Reconstruction::Direct => "use_idwt=False".into(),
        };
        format!(
            "waveft.WaveFTLinear(in_features={}, out_features={}, n_frequency={}, {how})",
            self.in_features, self.out_features, self.n_frequency
        )
    }
}
