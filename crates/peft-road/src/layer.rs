//! RoAd on one layer: learned, scaled 2-D rotations of the layer's output.
//!
//! The parameters are `road_theta.<adapter>` (angles) and `road_alpha.<adapter>` (scales), both 1-D of
//! length `out/2` (`road_1`), `out` (`road_2`) or `2·out` (`road_4`). They give two columns `c₁`, `c₂` of
//! length `out` (PEFT's `_prepare_cols`):
//!
//! * `road_1`: each group's `g/2` angles and scales repeated for both halves of the group (`g` =
//!   `group_size`), `c₁ = α·cos θ`, `c₂ = α·sin θ`;
//! * `road_2`: `c₁ = α·cos θ`, `c₂ = α·sin θ` elementwise;
//! * `road_4`: per group, the first `g` angles/scales give `c₁ = α₁·cos θ₁`, the next `g` give
//!   `c₂ = α₂·sin θ₂`.
//!
//! Forward (not merged), `y = base(x)` `(…, out)` cut into groups of `g`, each group into halves `y¹`, `y²`:
//! `y' = y·c₁ + rot(y)·c₂` with `rot(y) = (−y², y¹)` per group — the pair `(y¹_i, y²_i)` is rotated and
//! scaled. `y` is cast to the angles' dtype first and the result back to the base output's dtype; several
//! active adapters apply one after another in activation order. In a mixed batch each row gets its own
//! adapter's rotation (rows of `__base__` or of adapters absent from the layer keep the base output).
//!
//! Merging uses `R·(W·x + b) = (R·W)·x + R·b` with the `(out, out)` matrix `R` (`c₁` on the diagonal, `±c₂`
//! at the paired positions): `W ← R·W`, `b ← R·b`; unmerging multiplies by `R⁻¹` (computed in fp32).

use crate::config::{RoadConfig, RoadVariant, PEFT_TYPE};
use peft_core::config::LayerInit;
use peft_core::layer::{all_finite, BaseLayer, ForwardCtx, MergeCtx, TunerLayer};
use peft_core::{PeftError, Result};
use tch::{Device, Kind, Tensor};

/// PEFT's message for the layer classes RoAd does not adapt.
const UNSUPPORTED: &str = "Currently, only the following modules are supported: `torch.nn.Linear`.";

/// One RoAd adapter on one layer (PEFT's `road.Linear`).
#[derive(Debug)]
pub struct RoadLayer {
    adapter: String,
    module: String,
    in_features: i64,
    out_features: i64,
    variant: RoadVariant,
    group_size: i64,
    theta: Tensor,
    alpha: Tensor,
}

/// PEFT's `_prepare_cols`: the diagonal column `c₁` and the paired column `c₂`, each of length `out`.
fn prepare_cols(variant: RoadVariant, group_size: i64, theta: &Tensor, alpha: &Tensor) -> (Tensor, Tensor) {
    let half = group_size / 2;
    match variant {
        RoadVariant::Road1 => {
            let theta =
                theta.reshape([-1, half]).repeat_interleave_self_int(2, Some(0), None::<i64>).flatten(0, -1);
            let alpha =
                alpha.reshape([-1, half]).repeat_interleave_self_int(2, Some(0), None::<i64>).flatten(0, -1);
            let (cos, sin) = (theta.cos(), theta.sin());
            (&alpha * cos, &alpha * sin)
        }
        RoadVariant::Road2 => {
            let (cos, sin) = (theta.cos(), theta.sin());
            (alpha * cos, alpha * sin)
        }
        RoadVariant::Road4 => {
            let theta = theta.reshape([-1, 2, group_size]);
            let cos = theta.select(1, 0).cos().flatten(0, -1);
            let sin = theta.select(1, 1).sin().flatten(0, -1);
            let alpha = alpha.reshape([-1, 2, group_size]);
            let alpha_1 = alpha.select(1, 0).flatten(0, -1);
            let alpha_2 = alpha.select(1, 1).flatten(0, -1);
            (alpha_1 * cos, alpha_2 * sin)
        }
    }
}

/// PEFT's `_apply_road`: `x·c₁ + rot(x)·c₂`, `x` `(…, out)`.
fn apply_road(variant: RoadVariant, group_size: i64, theta: &Tensor, alpha: &Tensor, x: &Tensor) -> Tensor {
    let (first, second) = prepare_cols(variant, group_size, theta, alpha);
    let grouped = x.reshape([-1, 2, group_size / 2]);
    let x1 = grouped.select(1, 0);
    let x2 = grouped.select(1, 1);
    let rotate_half = Tensor::stack(&[-x2, x1], 1).reshape(x.size().as_slice());
    x * first + rotate_half * second
}

/// PEFT's `_get_delta_weight`: the `(out, out)` matrix `R` with `c₁` on the diagonal and, in each group,
/// `−c₂` at `(i, i + g/2)` and `c₂` at `(i + g/2, i)`.
fn delta_weight(variant: RoadVariant, group_size: i64, theta: &Tensor, alpha: &Tensor) -> Tensor {
    let (first, second) = prepare_cols(variant, group_size, theta, alpha);
    let half = group_size / 2;
    let mut output = first.diag(0);
    let size = second.size()[0];
    let swap = Tensor::from_slice(&[1i64, 0]).to_device(second.device());
    let swapped = second.reshape([-1, 2, half]).index_select(1, &swap).flatten(0, -1);
    let rotated = swapped.diag(0).reshape([-1, 2, half, size]).index_select(1, &swap);
    let mut upper = rotated.select(1, 0);
    upper *= -1.0;
    let rotated = rotated.reshape([size, size]);
    output += rotated;
    output
}

impl RoadLayer {
    /// Creates the adapter as PEFT's `update_layer` does: the angles and scales of the variant's size
    /// drawn on the CPU in f32 — zeros and ones with `init_weights`, else `normal_(0, 0.5)` for the angles
    /// then `normal_(1, 0.5)` for the scales — then moved to the base layer's device and dtype.
    ///
    /// # Errors
    /// [`PeftError::UnsupportedLayer`] for anything but dense `nn.Linear` (GPT-2's `Conv1D`, embeddings,
    /// convolutions; quantized linears, whose PEFT classes are not ported); [`PeftError::Invalid`] when
    /// `group_size` does not divide `out_features`.
    pub fn create(config: &RoadConfig, ctx: &mut LayerInit<'_, '_>) -> Result<Self> {
        let Some(lin) = ctx.base.as_linear() else {
            return Err(ctx.unsupported(PEFT_TYPE, UNSUPPORTED));
        };
        if lin.fan_in_fan_out() {
            return Err(ctx.unsupported(PEFT_TYPE, UNSUPPORTED));
        }
        if !lin.weight_is_storage() {
            return Err(ctx.unsupported(
                PEFT_TYPE,
                "RoAd on quantized linear layers (PEFT's bitsandbytes `road.Linear8bitLt` / `Linear4bit`) is \
                 not implemented in peft-rs yet",
            ));
        }
        let (in_features, out_features) = (lin.in_features(), lin.out_features());
        let group_size = config.group_size;
        if group_size <= 0 || out_features % group_size != 0 {
            return Err(PeftError::Invalid(format!(
                "`{}`: The out_features of the base layer must be divisible by group_size ({group_size}) when \
                 using RoadLayer (out_features = {out_features}).",
                ctx.module_name
            )));
        }
        let size = config.variant.parameters(out_features);
        let opts = (Kind::Float, Device::Cpu);
        let (mut theta, mut alpha) = (
            Tensor::f_empty([size], opts).map_err(PeftError::torch("initialising road_theta"))?,
            Tensor::f_empty([size], opts).map_err(PeftError::torch("initialising road_alpha"))?,
        );
        if config.init_weights {
            peft_core::init::zeros_(&mut theta)?;
            let _ =
                tch::no_grad(|| alpha.f_fill_(1.0)).map_err(PeftError::torch("initialising road_alpha"))?;
        } else {
            peft_core::init::normal_(&mut theta, 0.0, 0.5)?;
            peft_core::init::normal_(&mut alpha, 1.0, 0.5)?;
        }
        let theta = ctx.place(theta)?;
        let alpha = ctx.place(alpha)?;
        let adapter = ctx.adapter_name.to_string();
        let theta = (&ctx.path / "road_theta").add(&adapter, theta, true);
        let alpha = (&ctx.path / "road_alpha").add(&adapter, alpha, true);
        Ok(Self {
            adapter,
            module: ctx.module_name.to_string(),
            in_features,
            out_features,
            variant: config.variant,
            group_size,
            theta,
            alpha,
        })
    }

    /// The angles (`road_theta.<adapter>`).
    pub fn theta(&self) -> &Tensor {
        &self.theta
    }

    /// The scales (`road_alpha.<adapter>`).
    pub fn alpha(&self) -> &Tensor {
        &self.alpha
    }

    /// The variant.
    pub fn variant(&self) -> RoadVariant {
        self.variant
    }

    /// The rotation group size.
    pub fn group_size(&self) -> i64 {
        self.group_size
    }

    /// The `(out, out)` matrix the merge multiplies the weight and bias by (detached).
    pub fn rotation_matrix(&self) -> Tensor {
        tch::no_grad(|| {
            delta_weight(self.variant, self.group_size, &self.theta.detach(), &self.alpha.detach())
        })
    }

    /// Rotates a base output `(…, out)` (cast to the parameters' dtype; the caller casts back).
    pub fn rotate(&self, y: &Tensor) -> Tensor {
        let kind = self.theta.kind();
        let y = if y.kind() != kind { y.to_kind(kind) } else { y.shallow_clone() };
        apply_road(self.variant, self.group_size, &self.theta, &self.alpha, &y)
    }

    /// `weight ← m·weight` and `bias ← m·bias` (both cast to the weight's dtype first); with `check`,
    /// refused with nothing written when either result is not finite (PEFT writes the weight before it
    /// checks the bias).
    fn multiply(&self, base: &mut dyn BaseLayer, m: &Tensor, check: bool, what: &'static str) -> Result<()> {
        let module = self.module.clone();
        let w = base.as_weighted_mut().ok_or_else(|| {
            PeftError::Invalid(format!("`{module}`: the base layer has no weight to merge RoAd into"))
        })?;
        let weight = w.weight();
        let orig_kind = weight.kind();
        let bias = w.bias();
        let (new_weight, new_bias) =
            tch::no_grad(|| -> std::result::Result<(Tensor, Option<Tensor>), tch::TchError> {
                let nw = m.f_matmul(&weight)?;
                let nb = bias.as_ref().map(|b| m.f_matmul(b)).transpose()?;
                Ok((nw, nb))
            })
            .map_err(PeftError::torch(what))?;
        if check {
            let finite = all_finite(&new_weight)? && new_bias.as_ref().map_or(Ok(true), all_finite)?;
            if !finite {
                return Err(PeftError::NonFiniteMerge {
                    adapter: self.adapter.clone(),
                    module: self.module.clone(),
                });
            }
        }
        let new_weight = tch::no_grad(|| new_weight.f_contiguous().and_then(|t| t.f_to_kind(orig_kind)))
            .map_err(PeftError::torch(what))?;
        let new_bias = new_bias
            .map(|b| tch::no_grad(|| b.f_contiguous().and_then(|t| t.f_to_kind(orig_kind))))
            .transpose()
            .map_err(PeftError::torch(what))?;
        let mut t = w.weight();
        tch::no_grad(|| t.set_data(&new_weight));
        if let (Some(mut b), Some(nb)) = (bias, new_bias) {
            tch::no_grad(|| b.set_data(&nb));
        }
        Ok(())
    }
}

impl TunerLayer for RoadLayer {
    fn peft_type(&self) -> &'static str {
        PEFT_TYPE
    }

    fn named_tensors(&self) -> Vec<(String, Tensor)> {
        vec![
            (format!("road_theta.{}", self.adapter), self.theta.shallow_clone()),
            (format!("road_alpha.{}", self.adapter), self.alpha.shallow_clone()),
        ]
    }

    fn transform_output(
        &self,
        _base: &dyn BaseLayer,
        _x: &Tensor,
        y: Tensor,
        _ctx: &ForwardCtx<'_>,
    ) -> Tensor {
        self.rotate(&y)
    }

    fn merge(&mut self, base: &mut dyn BaseLayer, ctx: &MergeCtx<'_>) -> Result<()> {
        let kind = base.as_weighted().map_or(Kind::Float, |w| w.weight().kind());
        let r = self.rotation_matrix().to_kind(kind);
        self.multiply(base, &r, ctx.safe, "merging a RoAd adapter")
    }

    fn unmerge(&mut self, base: &mut dyn BaseLayer) -> Result<()> {
        let kind = base.as_weighted().map_or(Kind::Float, |w| w.weight().kind());
        let r = self.rotation_matrix();
        let inv =
            tch::no_grad(|| Tensor::f_linalg_inv(&r.to_kind(Kind::Float)).and_then(|t| t.f_to_kind(kind)))
                .map_err(PeftError::torch("inverting a RoAd rotation"))?;
        self.multiply(base, &inv, false, "unmerging a RoAd adapter")
    }

    fn describe(&self) -> String {
        format!(
            "road.Linear(in_features={}, out_features={}, variant={}, group_size={})",
            self.in_features,
            self.out_features,
            self.variant.as_str(),
            self.group_size
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_matrix_form_equals_the_elementwise_form() {
        for variant in [RoadVariant::Road1, RoadVariant::Road2, RoadVariant::Road4] {
            let (out, g) = (12, 4);
            let n = variant.parameters(out);
            let theta = Tensor::randn([n], (Kind::Double, Device::Cpu));
            let alpha = Tensor::randn([n], (Kind::Double, Device::Cpu));
            let y = Tensor::randn([5, out], (Kind::Double, Device::Cpu));
            let elementwise = apply_road(variant, g, &theta, &alpha, &y);
            let r = delta_weight(variant, g, &theta, &alpha);
            let matrix = y.matmul(&r.tr());
            let diff = (elementwise - matrix).abs().max().double_value(&[]);
            assert!(diff < 1e-12, "{variant:?}: {diff}");
        }
    }
}
