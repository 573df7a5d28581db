//! AdaLoRA on one layer: a LoRA update in SVD form whose singular values can be masked.
//!
//! Per adapter, `r` triplets (right vector, singular value, left vector):
//!
//! * `lora_A`: `(r, in)` — for `Conv2d`, `(r, in · kh · kw)`;
//! * `lora_E`: `(r, 1)`, the singular values (the rank allocator zeroes the unimportant ones);
//! * `lora_B`: `(out, r)`;
//! * `ranknum`: a frozen one-element parameter holding the initial rank as a float. It is not saved
//!   (PEFT recreates it as `float(init_r)`, and keeps `init_r` when an adapter with a `rank_pattern` is
//!   loaded at its reduced rank).
//!
//! Forward, with `s = lora_alpha` (or `r` when `lora_alpha <= 0`):
//!
//! * `nn.Linear` / GPT-2 `Conv1D`: `y = base(x) + ((dropout(x) @ (A ⊙ E)ᵀ @ Bᵀ) · s) / (ranknum + 1e-5)`,
//!   `x (…, in) → y (…, out)`; `E` broadcasts over the columns of `A`.
//! * `nn.Conv2d`: `ΔW = ((B @ (A ⊙ E)) · s / (ranknum + 1e-5))` reshaped to the weight's
//!   `(out, in, kh, kw)`, then `y = base(x) + conv2d(dropout(x), ΔW)` with the base's stride, padding
//!   and dilation (no bias).
//!
//! Merging adds `ΔW = B @ (A ⊙ E) · s / (ranknum + 1e-5)` (transposed for `Conv1D`) to the weight;
//! unmerging subtracts it.

use crate::config::{AdaLoraConfig, PEFT_TYPE};
use peft_core::config::LayerInit;
use peft_core::init::{normal_, zeros_};
use peft_core::layer::{all_finite, BaseLayer, ConvGeometry, ForwardCtx, MergeCtx, TunerLayer, WeightLike};
use peft_core::{PeftError, Result};
use tch::{Kind, Tensor};

/// The layer classes AdaLoRA adapts (PEFT's `SVDLinear` and `SVDConv2d`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SvdKind {
    /// `nn.Linear`, or GPT-2's `Conv1D` with `fan_in_fan_out` (weight stored `(in, out)`).
    Linear {
        /// The weight is stored `(in, out)`.
        fan_in_fan_out: bool,
    },
    /// `nn.Conv2d` with `groups = 1`.
    Conv2d {
        /// Stride, padding, dilation of the base.
        geometry: ConvGeometry,
        /// The base weight's shape `(out, in, kh, kw)`.
        weight_shape: Vec<i64>,
    },
}

/// One AdaLoRA adapter on one layer.
#[derive(Debug)]
pub struct AdaLoraLayer {
    adapter: String,
    module: String,
    kind: SvdKind,
    /// Columns of `lora_A` (`in`, or `in · kh · kw`).
    in_features: i64,
    out_features: i64,
    r: i64,
    scaling: f64,
    dropout: f64,
    lora_a: Tensor,
    lora_e: Tensor,
    lora_b: Tensor,
    ranknum: Tensor,
    /// The triplets the rank allocator kept (set by training); saving writes only those, as PEFT does
    /// with the config's `rank_pattern`.
    keep: Option<Vec<bool>>,
}

/// The four tensors of one `update_layer` call, placed like the base.
struct Drawn {
    a: Tensor,
    e: Tensor,
    b: Tensor,
    ranknum: Tensor,
}

/// PEFT's `AdaLoraLayer.update_layer` draws for rank `r`: `randn(r, in)` (A), `randn(r, 1)` (E),
/// `randn(out, r)` (B), `randn(1)` (ranknum, then filled with `r`), then with `init` the reset (E zero,
/// A and B N(0, 0.02)), all on the CPU in f32, then moved to the base's device and dtype.
fn draw(ctx: &LayerInit<'_, '_>, r: i64, in_features: i64, out_features: i64, init: bool) -> Result<Drawn> {
    let cpu = (Kind::Float, tch::Device::Cpu);
    let mut a = Tensor::f_randn([r, in_features], cpu).map_err(PeftError::torch("initialising lora_A"))?;
    let mut e = Tensor::f_randn([r, 1], cpu).map_err(PeftError::torch("initialising lora_E"))?;
    let mut b = Tensor::f_randn([out_features, r], cpu).map_err(PeftError::torch("initialising lora_B"))?;
    let mut ranknum = Tensor::f_randn([1], cpu).map_err(PeftError::torch("initialising ranknum"))?;
    let _ = ranknum.f_fill_(r as f64).map_err(PeftError::torch("initialising ranknum"))?;
    if init {
        zeros_(&mut e)?;
        normal_(&mut a, 0.0, 0.02)?;
        normal_(&mut b, 0.0, 0.02)?;
    }
    Ok(Drawn { a: ctx.place(a)?, e: ctx.place(e)?, b: ctx.place(b)?, ranknum: ctx.place(ranknum)? })
}

/// The positions of the `true` entries, as an index tensor on `device`.
pub(crate) fn kept_indices(keep: &[bool], device: tch::Device) -> Tensor {
    let idx: Vec<i64> = keep.iter().enumerate().filter(|(_, k)| **k).map(|(i, _)| i as i64).collect();
    Tensor::from_slice(&idx).to_device(device)
}

impl AdaLoraLayer {
    /// Creates the adapter as PEFT's `_create_new_module` and `update_layer` do (same random draws, in
    /// the same order). When the config's `rank_pattern` names this layer — an adapter being loaded —
    /// the layer is then resized to the kept triplets as PEFT's `resize_modules_by_rank_pattern` does:
    /// new draws at the reduced rank, the kept values copied in, and `ranknum` kept at `init_r`.
    ///
    /// # Errors
    /// [`PeftError::UnsupportedLayer`] for anything but `nn.Linear`, `Conv1D` and `nn.Conv2d` with one
    /// group (and for quantized linears), a negative `init_r`, a `rank_pattern` entry whose length is
    /// not `init_r`.
    pub fn create(config: &mut AdaLoraConfig, ctx: &mut LayerInit<'_, '_>) -> Result<Self> {
        if ctx.base.as_weighted().is_some_and(|w| !w.weight_is_storage()) {
            return Err(ctx.unsupported(
                PEFT_TYPE,
                "AdaLoRA on quantized layers (PEFT's SVDLinear8bitLt / SVDLinear4bit / SVDQuantLinear) is not \
                 implemented in peft-rs",
            ));
        }
        let (kind, in_features, out_features) = if let Some(lin) = ctx.base.as_linear() {
            let fifo = lin.fan_in_fan_out();
            let (i, o) = (lin.in_features(), lin.out_features());
            ctx.match_fan_in_fan_out(&mut config.fan_in_fan_out, fifo);
            (SvdKind::Linear { fan_in_fan_out: fifo }, i, o)
        } else if let Some(conv) = ctx.base.as_conv().filter(|c| c.geometry().dims() == 2) {
            let g = conv.geometry().clone();
            if g.groups != 1 {
                return Err(ctx.unsupported(
                    PEFT_TYPE,
                    &format!(
                        "a Conv2d with groups={} (PEFT's SVDConv2d builds lora_A for groups=1 and fails reshaping \
                         the update in forward)",
                        g.groups
                    ),
                ));
            }
            let (i, o) = (conv.in_channels(), conv.out_channels());
            let k: i64 = g.kernel_size.iter().product();
            let mut shape = vec![o, i];
            shape.extend(&g.kernel_size);
            (SvdKind::Conv2d { geometry: g, weight_shape: shape }, i * k, o)
        } else {
            return Err(ctx.unsupported(
                PEFT_TYPE,
                "Currently, only `torch.nn.Linear`, `Conv1D`, and `torch.nn.Conv2d` are supported.",
            ));
        };
        let init_r = config.init_r;
        if init_r < 0 {
            return Err(PeftError::Invalid(format!(
                "`r` should be a positive integer or 0, but the value passed is {init_r}"
            )));
        }
        let init = config.init_lora_weights.is_truthy();
        let mut drawn = draw(ctx, init_r, in_features, out_features, init)?;
        let mut r = init_r;
        let mut scaling = config.scaling_for(init_r);
        if let Some((key, keep)) = config.rank_pattern_entry(ctx.module_name, ctx.adapter_name) {
            if keep.len() as i64 != init_r {
                return Err(PeftError::Invalid(format!(
                    "rank_pattern[{key:?}] has {} entries but `{}` has init_r = {init_r} triplets",
                    keep.len(),
                    ctx.module_name
                )));
            }
            let keep = keep.to_vec();
            let rank = keep.iter().filter(|k| **k).count() as i64;
            let idx = kept_indices(&keep, drawn.a.device());
            let kept = tch::no_grad(|| -> std::result::Result<_, tch::TchError> {
                Ok((
                    drawn.e.f_index_select(0, &idx)?,
                    drawn.a.f_index_select(0, &idx)?,
                    drawn.b.f_index_select(1, &idx)?,
                ))
            })
            .map_err(PeftError::torch("resizing by rank_pattern"))?;
            let mut resized = draw(ctx, rank, in_features, out_features, init)?;
            if rank > 0 {
                tch::no_grad(|| -> std::result::Result<(), tch::TchError> {
                    resized.e.f_copy_(&kept.0)?;
                    resized.a.f_copy_(&kept.1)?;
                    resized.b.f_copy_(&kept.2)?;
                    // The scaling stays as before: ranknum keeps init_r.
                    resized.ranknum.f_copy_(&drawn.ranknum)
                })
                .map_err(PeftError::torch("resizing by rank_pattern"))?;
            }
            drawn = resized;
            r = rank;
            scaling = config.scaling_for(rank);
        }
        let adapter = ctx.adapter_name.to_string();
        let lora_a = (&ctx.path / "lora_A").add(&adapter, drawn.a, true);
        let lora_b = (&ctx.path / "lora_B").add(&adapter, drawn.b, true);
        let lora_e = (&ctx.path / "lora_E").add(&adapter, drawn.e, true);
        let ranknum = (&ctx.path / "ranknum").add(&adapter, drawn.ranknum, false);
        Ok(Self {
            adapter,
            module: ctx.module_name.to_string(),
            kind,
            in_features,
            out_features,
            r,
            scaling,
            dropout: config.lora_dropout.value(),
            lora_a,
            lora_e,
            lora_b,
            ranknum,
            keep: None,
        })
    }

    /// `lora_A` `(r, in)`: the right singular vectors.
    pub fn lora_a(&self) -> &Tensor {
        &self.lora_a
    }

    /// `lora_E` `(r, 1)`: the singular values.
    pub fn lora_e(&self) -> &Tensor {
        &self.lora_e
    }

    /// `lora_B` `(out, r)`: the left singular vectors.
    pub fn lora_b(&self) -> &Tensor {
        &self.lora_b
    }

    /// `ranknum` `(1,)`: the rank the update is divided by (the initial rank; not saved).
    pub fn ranknum(&self) -> &Tensor {
        &self.ranknum
    }

    /// The number of triplets (rows of `lora_A`).
    pub fn rank(&self) -> i64 {
        self.r
    }

    /// The scaling before the division by `ranknum` (`lora_alpha`, or the rank when `lora_alpha <= 0`).
    pub fn scaling(&self) -> f64 {
        self.scaling
    }

    /// The layer class.
    pub fn kind(&self) -> &SvdKind {
        &self.kind
    }

    /// The adapter name.
    pub fn adapter(&self) -> &str {
        &self.adapter
    }

    /// The module name.
    pub fn module(&self) -> &str {
        &self.module
    }

    /// The triplets kept by the last rank allocation (saving writes only those), if any.
    pub fn kept(&self) -> Option<&[bool]> {
        self.keep.as_deref()
    }

    /// Records which triplets are kept (what saving writes).
    ///
    /// # Errors
    /// A mask whose length is not the rank.
    pub fn set_kept(&mut self, keep: Option<Vec<bool>>) -> Result<()> {
        if let Some(k) = &keep {
            if k.len() as i64 != self.r {
                return Err(PeftError::Invalid(format!(
                    "`{}`: a rank pattern of {} entries for {} triplets",
                    self.module,
                    k.len(),
                    self.r
                )));
            }
        }
        self.keep = keep;
        Ok(())
    }

    /// Zeroes the singular values of the triplets not kept (`lora_E.masked_fill_(~keep, 0)`).
    ///
    /// # Errors
    /// A mask whose length is not the rank, or a libtorch failure.
    pub fn mask_singular_values(&self, keep: &[bool]) -> Result<()> {
        if keep.len() as i64 != self.r {
            return Err(PeftError::Invalid(format!(
                "`{}`: a rank pattern of {} entries for {} triplets",
                self.module,
                keep.len(),
                self.r
            )));
        }
        let dropped: Vec<bool> = keep.iter().map(|k| !k).collect();
        let mask = Tensor::from_slice(&dropped).to_device(self.lora_e.device()).unsqueeze(-1);
        let mut e = self.lora_e.shallow_clone();
        tch::no_grad(|| e.f_masked_fill_(&mask, 0.0)).map(drop).map_err(PeftError::torch("masking lora_E"))
    }

    fn cast_input(&self, x: &Tensor) -> Tensor {
        if x.kind() != self.lora_a.kind() {
            x.to_kind(self.lora_a.kind())
        } else {
            x.shallow_clone()
        }
    }

    /// `(B @ (A ⊙ E)) · s / (ranknum + 1e-5)`, `(out, in)` (not yet transposed or reshaped), with the
    /// graph when called outside `no_grad`.
    fn scaled_product(&self) -> std::result::Result<Tensor, tch::TchError> {
        let rank = self.ranknum.f_add_scalar(1e-5)?;
        self.lora_b.f_matmul(&self.lora_a.f_mul(&self.lora_e)?)?.f_mul_scalar(self.scaling)?.f_div(&rank)
    }

    /// The update merging adds to the base weight, in the weight's layout (PEFT's `get_delta_weight`).
    ///
    /// # Errors
    /// A libtorch failure.
    pub fn delta_weight(&self) -> Result<Tensor> {
        tch::no_grad(|| -> std::result::Result<Tensor, tch::TchError> {
            match &self.kind {
                SvdKind::Linear { fan_in_fan_out } => {
                    let rank = self.ranknum.f_add_scalar(1e-5)?;
                    let prod = self.lora_b.f_matmul(&self.lora_a.f_mul(&self.lora_e)?)?;
                    let prod = if *fan_in_fan_out { prod.f_transpose(0, 1)? } else { prod };
                    prod.f_mul_scalar(self.scaling)?.f_div(&rank)
                }
                SvdKind::Conv2d { weight_shape, .. } => {
                    self.scaled_product()?.f_reshape(weight_shape.as_slice())
                }
            }
        })
        .map_err(PeftError::torch("computing an AdaLoRA delta weight"))
    }

    fn weighted<'b>(&self, base: &'b mut dyn BaseLayer) -> Result<&'b mut dyn WeightLike> {
        let module = self.module.clone();
        base.as_weighted_mut().ok_or_else(|| {
            PeftError::Invalid(format!("`{module}`: the base layer has no weight to merge AdaLoRA into"))
        })
    }
}

impl Drop for AdaLoraLayer {
    /// `ranknum` lives in the adapter var store (it counts as a frozen parameter, as in PEFT) but is not
    /// one of [`TunerLayer::named_tensors`] (it is never saved), so removing the adapter cannot drop its
    /// entry there: empty it instead, so a removed adapter leaves no counted parameter behind.
    fn drop(&mut self) {
        if let Ok(empty) = Tensor::f_empty([0], (self.ranknum.kind(), self.ranknum.device())) {
            tch::no_grad(|| self.ranknum.set_data(&empty));
        }
    }
}

impl TunerLayer for AdaLoraLayer {
    fn peft_type(&self) -> &'static str {
        PEFT_TYPE
    }

    fn named_tensors(&self) -> Vec<(String, Tensor)> {
        vec![
            (format!("lora_A.{}", self.adapter), self.lora_a.shallow_clone()),
            (format!("lora_B.{}", self.adapter), self.lora_b.shallow_clone()),
            (format!("lora_E.{}", self.adapter), self.lora_e.shallow_clone()),
        ]
    }

    /// The saved tensors: with a rank allocation recorded, only the kept triplets (rows of `lora_A` and
    /// `lora_E`, columns of `lora_B`), as PEFT's `resize_state_dict_by_rank_pattern` writes them.
    fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let Some(keep) = self.keep.as_ref().filter(|k| k.iter().filter(|x| **x).count() as i64 != self.r)
        else {
            return self.named_tensors();
        };
        let idx = kept_indices(keep, self.lora_a.device());
        let pick = |t: &Tensor, dim: i64| tch::no_grad(|| t.index_select(dim, &idx));
        vec![
            (format!("lora_A.{}", self.adapter), pick(&self.lora_a, 0)),
            (format!("lora_B.{}", self.adapter), pick(&self.lora_b, 1)),
            (format!("lora_E.{}", self.adapter), pick(&self.lora_e, 0)),
        ]
    }

    fn transform_output(&self, _base: &dyn BaseLayer, x: &Tensor, y: Tensor, ctx: &ForwardCtx<'_>) -> Tensor {
        let x = self.cast_input(x);
        let x = if self.dropout > 0.0 && ctx.train { x.dropout(self.dropout, true) } else { x };
        let rank = &self.ranknum + 1e-5;
        let h = match &self.kind {
            SvdKind::Linear { .. } => {
                let ae = &self.lora_a * &self.lora_e;
                x.matmul(&ae.tr()).matmul(&self.lora_b.tr()) * self.scaling / &rank
            }
            SvdKind::Conv2d { geometry, weight_shape } => {
                let delta = (self.lora_b.matmul(&(&self.lora_a * &self.lora_e)) * self.scaling / &rank)
                    .reshape(weight_shape.as_slice());
                geometry.conv(&x, &delta, None)
            }
        };
        // PEFT adds in place: the output keeps its dtype after every adapter.
        let kind = y.kind();
        let out = y + h;
        if out.kind() != kind {
            out.to_kind(kind)
        } else {
            out
        }
    }

    fn merge(&mut self, base: &mut dyn BaseLayer, ctx: &MergeCtx<'_>) -> Result<()> {
        let delta = self.delta_weight()?;
        let weight = self.weighted(base)?.weight();
        if ctx.safe {
            let mut merged =
                weight.f_detach_copy().map_err(PeftError::torch("merging an AdaLoRA adapter"))?;
            tch::no_grad(|| merged.f_add_(&delta))
                .map(drop)
                .map_err(PeftError::torch("merging an AdaLoRA adapter"))?;
            if !all_finite(&merged)? {
                return Err(PeftError::NonFiniteMerge {
                    adapter: self.adapter.clone(),
                    module: self.module.clone(),
                });
            }
            return self.weighted(base)?.set_weight(&merged);
        }
        let mut w = weight.shallow_clone();
        tch::no_grad(|| w.f_add_(&delta)).map(drop).map_err(PeftError::torch("merging an AdaLoRA adapter"))
    }

    fn unmerge(&mut self, base: &mut dyn BaseLayer) -> Result<()> {
        let delta = self.delta_weight()?;
        let mut w = self.weighted(base)?.weight().shallow_clone();
        tch::no_grad(|| w.f_sub_(&delta)).map(drop).map_err(PeftError::torch("unmerging an AdaLoRA adapter"))
    }

    fn describe(&self) -> String {
        let class = match self.kind {
            SvdKind::Linear { .. } => "SVDLinear",
            SvdKind::Conv2d { .. } => "SVDConv2d",
        };
        format!(
            "adalora.{class}(in_features={}, out_features={}, r={})",
            self.in_features, self.out_features, self.r
        )
    }
}
