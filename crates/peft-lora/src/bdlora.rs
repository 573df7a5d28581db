//! BD-LoRA (`use_bdlora`): `lora_A` or `lora_B` block-diagonal with `nblocks` blocks, so a
//! tensor-parallel shard of the layer needs only its own block — PEFT's `BdLoraLinearVariant`.
//!
//! A block-diagonal factor is stored as its stacked blocks, `(out, in / nblocks)` (block `i` is rows
//! `i·out/n .. (i+1)·out/n`), under the usual `lora_A` / `lora_B` key; the forward pass multiplies each
//! input block by its weight block, and merging expands the blocks with `block_diag`. Which factor is
//! block-diagonal is decided per module: `target_modules_bd_a` / `target_modules_bd_b` are substrings of
//! the module name. A block-diagonal A is drawn kaiming-uniform (`a = 0`) after the usual LoRA init; a
//! block-diagonal B starts at zero.

use crate::config::{LoraConfig, PEFT_TYPE};
use crate::layer::LoraKind;
use peft_core::config::LayerInit;
use peft_core::error::{PeftError, Result};
use serde_json::Value;
use tch::{Device, Kind, Tensor};

/// Which factor is block-diagonal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// `lora_A` (the row-parallel side: each block sees one slice of the input).
    A,
    /// `lora_B` (the column-parallel side).
    B,
}

/// A block-diagonal factor's layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockDiagonal {
    /// The factor.
    pub side: Side,
    /// Number of diagonal blocks.
    pub nblocks: i64,
}

impl BlockDiagonal {
    /// The layout for module `module` (PEFT's module key) under `config.use_bdlora`; `None` when the module
    /// matches neither list and `match_strict` is off (the adapter is then plain LoRA).
    ///
    /// # Errors
    /// PEFT's: the module matches both lists, or neither with `match_strict`; features or rank not
    /// divisible by `nblocks`.
    pub fn for_module(
        config: &LoraConfig,
        module: &str,
        r: i64,
        in_f: i64,
        out_f: i64,
    ) -> Result<Option<Self>> {
        let bd = config.use_bdlora.as_ref().filter(|v| !v.is_null());
        let Some(bd) = bd else { return Ok(None) };
        let list = |k: &str| -> Vec<String> {
            bd.get(k)
                .and_then(Value::as_array)
                .map(|v| v.iter().filter_map(Value::as_str).map(str::to_string).collect())
                .unwrap_or_default()
        };
        let nblocks = bd.get("nblocks").and_then(Value::as_i64).unwrap_or(1);
        let strict = bd.get("match_strict").and_then(Value::as_bool).unwrap_or(true);
        let on_a = list("target_modules_bd_a").iter().any(|p| module.contains(p.as_str()));
        let on_b = list("target_modules_bd_b").iter().any(|p| module.contains(p.as_str()));
        let side = match (on_a, on_b) {
            (true, true) => {
                return Err(PeftError::Invalid(format!(
                    "Target {module} matches both A and B block-diagonal patterns"
                )))
            }
            (true, false) => Side::A,
            (false, true) => Side::B,
            (false, false) if strict => {
                return Err(PeftError::Invalid(format!(
                    "Target {module} matches neither A nor B block-diagonal patterns. If this is intentional, set \
                     match_strict=False in BdLoraConfig during initialization."
                )))
            }
            (false, false) => return Ok(None),
        };
        if nblocks <= 0 {
            return Err(PeftError::Invalid(format!("use_bdlora.nblocks must be positive, got {nblocks}")));
        }
        let (i, o) = match side {
            Side::A => (in_f, r),
            Side::B => (r, out_f),
        };
        if i % nblocks != 0 || o % nblocks != 0 {
            return Err(PeftError::Invalid(format!(
                "`{module}`: the block-diagonal lora_{side:?} maps {i} -> {o} features, which is not divisible by \
                 nblocks={nblocks}"
            )));
        }
        Ok(Some(Self { side, nblocks }))
    }

    /// [`Self::for_module`] for the layer being created (`features`: `(in, out)`), after refusing what
    /// PEFT cannot build: Conv1D bases, and `lora_bias` with a block-diagonal B.
    ///
    /// # Errors
    /// Those refusals and [`Self::for_module`]'s.
    pub(crate) fn for_layer(
        config: &LoraConfig,
        ctx: &LayerInit<'_, '_>,
        kind: &LoraKind,
        r: i64,
        features: (i64, i64),
    ) -> Result<Option<Self>> {
        if matches!(kind, LoraKind::Linear { fan_in_fan_out: true }) {
            // PEFT 0.21.2 fails here with an AttributeError (it reads `in_features` off the base).
            return Err(
                ctx.unsupported(PEFT_TYPE, "BD-LoRA adapts nn.Linear layers, not transformers' Conv1D")
            );
        }
        let layout = Self::for_module(config, ctx.module_name, r, features.0, features.1)?;
        if config.lora_bias && layout.is_some_and(|bd| bd.side == Side::B) {
            return Err(PeftError::Invalid(format!(
                "`{}`: lora_bias=True cannot be combined with a block-diagonal lora_B (PEFT's block-diagonal layer has \
                 no bias, so the bias would silently be dropped)",
                ctx.module_name
            )));
        }
        Ok(layout)
    }

    /// The factor as PEFT's `BlockDiagonalLinear` draws it: `(out, in / nblocks)`, kaiming-uniform
    /// (`a = 0`) for A, zeros for B; fp32 on the CPU like every freshly drawn LoRA factor here.
    fn draw(&self, in_f: i64, out_f: i64) -> Result<Tensor> {
        let shape = [out_f, in_f / self.nblocks];
        let mut w = Tensor::f_empty(shape, (Kind::Float, Device::Cpu))
            .map_err(PeftError::torch("allocating a block-diagonal LoRA factor"))?;
        match self.side {
            Side::A => peft_core::init::kaiming_uniform_(&mut w, 0.0)?,
            Side::B => peft_core::init::zeros_(&mut w)?,
        }
        Ok(w)
    }

    /// Redraws the block-diagonal factor of `(a, b)` for a layer with `features` `(in, out)` and rank
    /// `r`, after the usual LoRA init (PEFT's `BdLoraLinearVariant.init` replaces that module).
    pub(crate) fn redraw(&self, a: &mut Tensor, b: &mut Tensor, r: i64, features: (i64, i64)) -> Result<()> {
        match self.side {
            Side::A => *a = self.draw(features.0, r)?,
            Side::B => *b = self.draw(r, features.1)?,
        }
        Ok(())
    }

    /// `B(A(x))` without scaling, the block-diagonal factor applied block by block (a block-diagonal B
    /// has no bias: creation refuses `lora_bias` with it).
    pub(crate) fn path(&self, x: &Tensor, a: &Tensor, b: &Tensor, bias: Option<&Tensor>) -> Tensor {
        match self.side {
            Side::A => self.apply(x, a).linear(b, bias),
            Side::B => self.apply(&x.linear::<&Tensor>(a, None), b),
        }
    }

    /// The dense `(A, B)` of the stored factors: the block-diagonal one expanded.
    pub(crate) fn dense_factors(
        &self,
        a: Tensor,
        b: Tensor,
    ) -> std::result::Result<(Tensor, Tensor), tch::TchError> {
        match self.side {
            Side::A => Ok((self.dense(&a)?, b)),
            Side::B => Ok((a, self.dense(&b)?)),
        }
    }

    /// `x · dense(w)ᵀ` block by block: input block `i` times weight block `i`.
    fn apply(&self, x: &Tensor, w: &Tensor) -> Tensor {
        let shape = x.size();
        let features = shape.last().copied().unwrap_or(1);
        let nb = self.nblocks;
        let out = w.size()[0];
        let x3 = x.reshape([-1, nb, features / nb]);
        let w3 = w.view([nb, out / nb, features / nb]);
        let y = Tensor::einsum("bim,inm->bin", &[x3, w3], None::<i64>);
        let mut out_shape = shape;
        if let Some(last) = out_shape.last_mut() {
            *last = out;
        }
        y.reshape(out_shape.as_slice())
    }

    /// The dense factor: the blocks on the diagonal, zeros elsewhere.
    fn dense(&self, w: &Tensor) -> std::result::Result<Tensor, tch::TchError> {
        let blocks = w.f_chunk(self.nblocks, 0)?;
        Tensor::f_block_diag(&blocks)
    }
}
