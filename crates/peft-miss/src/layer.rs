//! `MissLayer`: PEFT 0.21.2's `MissLinear` (`miss.MissLinear`) — MiSS on `nn.Linear`, dense or quantized.
//!
//! The weight `W` is `(out, in)`; `r` divides the input dimension into shards (the last one padded with
//! zeros when `r` does not divide `in`).
//!
//! * **balance** (`init_weights: true / false`) and **mini** (`"mini"`): the block `B` is `(r, out)` (mini:
//!   `(r, mini_r)`, repeated `out / mini_r` times along the outputs). Forward, not merged:
//!   `y = base(x) + (Σ_k x_k) · B` where `x_k` are the `r`-wide slices of the (padded, dropped-out) input
//!   `(…, in)` → `(…, in/r, r)`, summed over the shards → `(…, r)`, times `B` → `(…, out)`. Merging adds
//!   `B` to every shard: `W[:, k·r + j] += B[j, :]`, i.e. `ΔW = tile(Bᵀ)` — additive, exact, unmerged by
//!   subtraction.
//! * **bat** (`"bat"`): `B` is `(out/r, r, r)`, one `r × r` matrix per output shard; the weight's
//!   `r × r` blocks `W_{i,k}` become `W_{i,k} + W_{i,k} · B_i + B_i`. The forward pass rebuilds the weight
//!   with every active adapter in turn (each from the weight the previous one produced) and runs
//!   `F.linear`; unmerging solves back, `W = (W' − B) · (I + B)⁻¹`.
//!
//! The variant belongs to the layer (PEFT keeps the first adapter's): adapters of another variant on the
//! same layer are refused.

use crate::config::{MissConfig, MissInit, PEFT_TYPE};
use peft_core::config::LayerInit;
use peft_core::layer::{
    merge_delta, replace_weight, unmerge_delta, BaseLayer, ForwardCtx, MergeCtx, TunerLayer,
};
use peft_core::{PeftError, Result};
use tch::{Device, Kind, Tensor};

/// Which MiSS variant a layer runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MissVariant {
    /// `init_weights: true / false`: a `(r, out)` block added to every input shard.
    Balance,
    /// `"mini"`: a `(r, mini_r)` block repeated along the outputs.
    Mini {
        /// The block's width along the outputs.
        mini_r: i64,
    },
    /// `"bat"`: a `(out/r, r, r)` block multiplied into the weight's blocks.
    Bat,
}

impl MissVariant {
    fn of(init: &MissInit, mini_r: i64) -> Result<Self> {
        Ok(match init {
            MissInit::Bool(_) => MissVariant::Balance,
            MissInit::Variant(v) if v == "bat" => MissVariant::Bat,
            MissInit::Variant(v) if v == "mini" => MissVariant::Mini { mini_r },
            MissInit::Variant(v) => {
                return Err(PeftError::Invalid(format!(
                    "MiSS init_weights {v:?} is not true, false, \"bat\" or \"mini\""
                )))
            }
        })
    }

    fn name(self) -> &'static str {
        match self {
            MissVariant::Balance => "balance (init_weights true/false)",
            MissVariant::Mini { .. } => "mini",
            MissVariant::Bat => "bat",
        }
    }
}

/// One MiSS adapter on one linear layer.
#[derive(Debug)]
pub struct MissLayer {
    adapter: String,
    module: String,
    variant: MissVariant,
    r: i64,
    in_features: i64,
    out_features: i64,
    dropout: f64,
    /// `miss_block.<adapter>`: `(r, out)`, `(r, mini_r)` or `(out/r, r, r)`.
    block: Tensor,
}

const UNSUPPORTED: &str = "Currently, only `torch.nn.Linear` (optionally quantized) is supported.";

impl MissLayer {
    /// Creates the adapter as PEFT's `update_layer`: a zero block (Kaiming-uniform with
    /// `init_weights: false`), moved to the base layer's device and dtype.
    ///
    /// # Errors
    /// [`PeftError::UnsupportedLayer`] for anything but `nn.Linear` (and for "bat" on quantized weights);
    /// `r` not positive or above `in_features`; sizes the variant cannot split; a variant other than the
    /// layer's.
    pub fn create(config: &MissConfig, ctx: &mut LayerInit<'_, '_>) -> Result<Self> {
        let Some(lin) = ctx.base.as_linear().filter(|l| !l.fan_in_fan_out()) else {
            return Err(ctx.unsupported(PEFT_TYPE, UNSUPPORTED));
        };
        let (in_features, out_features) = (lin.in_features(), lin.out_features());
        let quantized = !lin.weight_is_storage();
        let r = config.r;
        peft_core::config::require_positive("r", r)?;
        if r > in_features {
            return Err(PeftError::Invalid(format!(
                "`{}`: `r` ({r}) must be less than or equal to in_features ({in_features})",
                ctx.module_name
            )));
        }
        let variant = MissVariant::of(&config.init_weights, config.mini_r)?;
        let layer_variant = ctx
            .siblings
            .values()
            .find_map(|t| t.as_any().downcast_ref::<MissLayer>())
            .map_or(variant, |first| first.variant);
        if std::mem::discriminant(&layer_variant) != std::mem::discriminant(&variant) {
            return Err(PeftError::Invalid(format!(
                "`{}`: MiSS adapters on one layer share its variant ({}); adapter `{}` asks for {} (PEFT would run \
                 it with the layer's variant and fail on the block's shape)",
                ctx.module_name,
                layer_variant.name(),
                ctx.adapter_name,
                variant.name()
            )));
        }
        let shape: Vec<i64> = match variant {
            MissVariant::Bat => {
                if quantized {
                    return Err(ctx.unsupported(
                        PEFT_TYPE,
                        "MiSS \"bat\" rebuilds the weight in every forward pass; on quantized weights it is not \
                         implemented in peft-rs (use init_weights true or \"mini\")",
                    ));
                }
                if in_features % r != 0 || out_features % r != 0 {
                    return Err(PeftError::Invalid(format!(
                        "`{}`: The weight matrix must be fully divisible into [r, r] blocks (r = {r}, weight \
                         ({out_features}, {in_features})).",
                        ctx.module_name
                    )));
                }
                vec![out_features / r, r, r]
            }
            MissVariant::Mini { mini_r } => {
                if mini_r <= 0 || out_features % mini_r != 0 {
                    return Err(PeftError::Invalid(format!(
                        "`{}`: mini_r is divided along the out_features dimension: out_features ({out_features}) \
                         must be divisible by mini_r ({mini_r})",
                        ctx.module_name
                    )));
                }
                vec![r, mini_r]
            }
            MissVariant::Balance => vec![r, out_features],
        };
        let torch = PeftError::torch("initialising miss_block");
        let mut block = Tensor::f_zeros(shape.as_slice(), (Kind::Float, Device::Cpu)).map_err(torch)?;
        if config.init_weights == MissInit::Bool(false) {
            peft_core::init::kaiming_uniform_(&mut block, 5f64.sqrt())?;
        }
        let block = ctx.place(block)?;
        let adapter = ctx.adapter_name.to_string();
        let block = (&ctx.path / "miss_block").add(&adapter, block, true);
        Ok(Self {
            adapter,
            module: ctx.module_name.to_string(),
            variant,
            r,
            in_features,
            out_features,
            dropout: config.miss_dropout,
            block,
        })
    }

    /// The block (`miss_block.<adapter>`).
    pub fn block(&self) -> &Tensor {
        &self.block
    }

    /// The layer's variant.
    pub fn variant(&self) -> MissVariant {
        self.variant
    }

    /// The shard width.
    pub fn r(&self) -> i64 {
        self.r
    }

    /// The `(r, out)` block of the additive variants (mini: repeated along the outputs).
    fn shard_block(&self) -> Tensor {
        match self.variant {
            MissVariant::Mini { mini_r } => self.block.repeat([1, self.out_features / mini_r]),
            _ => self.block.shallow_clone(),
        }
    }

    /// `(Σ_k x_k) · B` for the additive variants: `x` `(…, in)` padded to a multiple of `r`, cast to the
    /// block's dtype, dropped out in training, cut into `r`-wide shards and summed.
    fn shard_update(&self, x: &Tensor, train: bool) -> Tensor {
        let block = self.shard_block();
        let r = block.size()[0];
        let mut size = x.size();
        let width = size.pop().unwrap_or(0);
        let pad = (r - width % r) % r;
        let x = if pad > 0 { x.constant_pad_nd([0, pad]) } else { x.shallow_clone() };
        let x = x.to_kind(block.kind());
        let x = if train && self.dropout > 0.0 { x.dropout(self.dropout, true) } else { x };
        size.extend([(width + pad) / r, r]);
        x.reshape(size.as_slice()).sum_dim_intlist([-2i64].as_slice(), false, None::<Kind>).matmul(&block)
    }

    /// The additive variants' `ΔW` `(out, in)`: `Bᵀ` tiled along the inputs (`W[:, k·r + j] += B[j, :]`).
    pub fn additive_delta(&self) -> Tensor {
        let bt = self.shard_block().tr();
        let reps = (self.in_features + self.r - 1) / self.r;
        bt.repeat([1, reps]).narrow(1, 0, self.in_features)
    }

    /// The bat update of `weight` `(out, in)`: `W·B + B` on its `r × r` blocks (`reverse`: the weight
    /// `(W − B)·(I + B)⁻¹` it came from), in the block's dtype.
    pub fn bat_update(&self, weight: &Tensor, reverse: bool) -> Tensor {
        let b = &self.block;
        let r = self.r;
        let (out, inp) = (self.out_features, self.in_features);
        let w = weight.to_kind(b.kind()).reshape([out / r, r, inp / r, r]).permute([2, 0, 1, 3]);
        let result = if reverse {
            let eye = Tensor::eye(r, (Kind::Float, b.device()));
            let inv = (eye + b.to_kind(Kind::Float)).inverse().to_kind(b.kind());
            (w - b).matmul(&inv)
        } else {
            w.matmul(b) + b
        };
        result.permute([1, 2, 0, 3]).reshape([out, inp])
    }

    fn current_weight(&self, base: &dyn BaseLayer) -> Result<Tensor> {
        base.as_weighted()
            .map(|w| w.weight())
            .ok_or_else(|| PeftError::Invalid(format!("`{}`: the base layer has no weight", self.module)))
    }
}

impl TunerLayer for MissLayer {
    fn peft_type(&self) -> &'static str {
        PEFT_TYPE
    }

    fn named_tensors(&self) -> Vec<(String, Tensor)> {
        vec![(format!("miss_block.{}", self.adapter), self.block.shallow_clone())]
    }

    /// "bat": the weight rebuilt with every active adapter in turn, then `F.linear` (in the last block's
    /// dtype).
    fn replace_base(&self, base: &dyn BaseLayer, x: &Tensor, ctx: &ForwardCtx<'_>) -> Option<Tensor> {
        if self.variant != MissVariant::Bat {
            return None;
        }
        let group = ctx.active_group(self)?;
        let mut weight = base.as_weighted()?.weight();
        for layer in group {
            weight = &weight + layer.bat_update(&weight, false);
        }
        let bias = base.as_weighted()?.bias().map(|b| b.to_kind(weight.kind()));
        Some(x.to_kind(weight.kind()).linear(&weight, bias.as_ref()))
    }

    fn transform_output(&self, _base: &dyn BaseLayer, x: &Tensor, y: Tensor, ctx: &ForwardCtx<'_>) -> Tensor {
        if self.variant == MissVariant::Bat {
            return y;
        }
        y + self.shard_update(x, ctx.train)
    }

    fn merge(&mut self, base: &mut dyn BaseLayer, ctx: &MergeCtx<'_>) -> Result<()> {
        let delta = tch::no_grad(|| -> Result<Tensor> {
            Ok(match self.variant {
                MissVariant::Bat => self.bat_update(&self.current_weight(base)?, false),
                _ => self.additive_delta(),
            })
        })?;
        merge_delta(base, &delta, ctx.safe, &self.adapter, &self.module)
    }

    fn unmerge(&mut self, base: &mut dyn BaseLayer) -> Result<()> {
        if self.variant != MissVariant::Bat {
            let delta = tch::no_grad(|| self.additive_delta());
            return unmerge_delta(base, &delta, &self.module);
        }
        let restored = tch::no_grad(|| -> Result<Tensor> {
            let current = self.current_weight(base)?;
            let kind = current.kind();
            Ok(self.bat_update(&current, true).to_kind(kind))
        })?;
        let module = self.module.clone();
        let w = base
            .as_weighted_mut()
            .ok_or_else(|| PeftError::Invalid(format!("`{module}`: the base layer has no weight")))?;
        replace_weight(w, &restored)
    }

    fn describe(&self) -> String {
        format!(
            "miss.MissLinear(in_features={}, out_features={}, r={}, variant={})",
            self.in_features,
            self.out_features,
            self.r,
            self.variant.name()
        )
    }
}
