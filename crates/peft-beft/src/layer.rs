//! BEFT on one layer: a learned offset added to the layer's output, i.e. to its bias.
//!
//! The parameter `beft_bias.<adapter>` is `(1, out)`. Forward (not merged): `y = base(x) + Σ β` over the
//! active BEFT adapters of the layer — their offsets are summed first (flattened to `(out,)`, in activation
//! order), then added once to the base output `(…, out)` and the result cast back to the base output's
//! dtype. Merging adds `β` to the base bias in place (a layer without bias cannot merge, as in PEFT);
//! unmerging subtracts it.

use crate::config::{BeftConfig, PEFT_TYPE};
use peft_core::config::LayerInit;
use peft_core::layer::{all_finite, BaseLayer, ForwardCtx, MergeCtx, TunerLayer};
use peft_core::{PeftError, Result};
use tch::{Device, Kind, Tensor};

/// PEFT's message for the layer classes BEFT does not adapt.
const UNSUPPORTED: &str = "Currently, only `torch.nn.Linear` is supported.";

/// One BEFT adapter on one layer (PEFT's `beft.Linear`).
#[derive(Debug)]
pub struct BeftLayer {
    adapter: String,
    module: String,
    in_features: i64,
    out_features: i64,
    beft_bias: Tensor,
}

impl BeftLayer {
    /// Creates the adapter as PEFT's `update_layer` does: `torch.randn((1, out))` drawn on the CPU in f32
    /// (so the global RNG advances as in PEFT), set to 0 with `init_weights`, then moved to the base
    /// layer's device and dtype. A layer without bias is adapted with PEFT's warning that it cannot merge.
    ///
    /// # Errors
    /// [`PeftError::UnsupportedLayer`] for anything but `nn.Linear` (dense or quantized): GPT-2's `Conv1D`,
    /// embeddings and convolutions.
    pub fn create(config: &BeftConfig, ctx: &mut LayerInit<'_, '_>) -> Result<Self> {
        let Some(lin) = ctx.base.as_linear().filter(|l| !l.fan_in_fan_out()) else {
            return Err(ctx.unsupported(PEFT_TYPE, UNSUPPORTED));
        };
        let (in_features, out_features) = (lin.in_features(), lin.out_features());
        if lin.bias().is_none() {
            ctx.warn(
                "Detected that the base layer has no bias term. Note you cannot merge the BEFT adapter into the \
                 base layer.",
            );
        }
        let mut bias = Tensor::f_randn([1, out_features], (Kind::Float, Device::Cpu))
            .map_err(PeftError::torch("initialising beft_bias"))?;
        if config.init_weights {
            let _ = tch::no_grad(|| bias.f_fill_(0.0)).map_err(PeftError::torch("initialising beft_bias"))?;
        }
        let bias = ctx.place(bias)?;
        let adapter = ctx.adapter_name.to_string();
        let beft_bias = (&ctx.path / "beft_bias").add(&adapter, bias, true);
        Ok(Self { adapter, module: ctx.module_name.to_string(), in_features, out_features, beft_bias })
    }

    /// The learned offsets (`beft_bias.<adapter>`, `(1, out)`).
    pub fn offsets(&self) -> &Tensor {
        &self.beft_bias
    }

    /// The sum of the offsets of every active BEFT adapter on the layer, in activation order — or `None`
    /// when another active adapter comes first (it adds the sum for all of them).
    fn combined(&self, ctx: &ForwardCtx<'_>) -> Option<Tensor> {
        let group = ctx.active_group(self)?;
        let mut sum = group[0].beft_bias.flatten(0, -1);
        for other in &group[1..] {
            // Not `+=`: that would add in place into the first adapter's parameter (`sum` is a view of it).
            #[allow(clippy::assign_op_pattern)]
            {
                sum = sum + other.beft_bias.flatten(0, -1);
            }
        }
        Some(sum)
    }

    /// The base bias, or PEFT's error for a layer without one.
    fn base_bias(&self, base: &dyn BaseLayer, verb: &str) -> Result<Tensor> {
        base.as_weighted().and_then(|w| w.bias()).ok_or_else(|| {
            PeftError::Invalid(format!(
                "`{}`: Base layer has no bias, cannot {verb} bias adapter {}",
                self.module, self.adapter
            ))
        })
    }
}

impl TunerLayer for BeftLayer {
    fn peft_type(&self) -> &'static str {
        PEFT_TYPE
    }

    fn named_tensors(&self) -> Vec<(String, Tensor)> {
        vec![(format!("beft_bias.{}", self.adapter), self.beft_bias.shallow_clone())]
    }

    fn transform_output(
        &self,
        _base: &dyn BaseLayer,
        _x: &Tensor,
        y: Tensor,
        ctx: &ForwardCtx<'_>,
    ) -> Tensor {
        let Some(offset) = self.combined(ctx) else { return y };
        let kind = y.kind();
        (y + offset).to_kind(kind)
    }

    fn merge(&mut self, base: &mut dyn BaseLayer, ctx: &MergeCtx<'_>) -> Result<()> {
        let mut bias = self.base_bias(base, "merge")?;
        let offset = self.beft_bias.detach().squeeze();
        if ctx.safe {
            // PEFT's safe path: the sum on a copy, checked, then written.
            let merged =
                tch::no_grad(|| bias.f_add(&offset)).map_err(PeftError::torch("merging a BEFT adapter"))?;
            if !all_finite(&merged)? {
                return Err(PeftError::NonFiniteMerge {
                    adapter: self.adapter.clone(),
                    module: self.module.clone(),
                });
            }
            let kind = bias.kind();
            tch::no_grad(|| merged.f_to_kind(kind).and_then(|m| bias.f_copy_(&m)))
                .map_err(PeftError::torch("merging a BEFT adapter"))
        } else {
            tch::no_grad(|| bias.f_add_(&offset))
                .map(|_| ())
                .map_err(PeftError::torch("merging a BEFT adapter"))
        }
    }

    fn unmerge(&mut self, base: &mut dyn BaseLayer) -> Result<()> {
        let mut bias = self.base_bias(base, "unmerge")?;
        let offset = self.beft_bias.detach().squeeze();
        let kind = bias.kind();
        tch::no_grad(|| bias.f_sub(&offset).and_then(|t| t.f_to_kind(kind)).and_then(|t| bias.f_copy_(&t)))
            .map_err(PeftError::torch("unmerging a BEFT adapter"))
    }

    fn describe(&self) -> String {
        format!("Linear(in_features={}, out_features={})", self.in_features, self.out_features)
    }
}
