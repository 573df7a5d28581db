//! `BoftLayer`: one BOFT adapter on one layer (PEFT 0.21.2's `boft.Linear` and `boft.Conv2d`).
//!
//! Parameters: `boft_R.<adapter>` `(m, b, h, h)` — `m` butterfly factors of `b` blocks of size `h`,
//! `b·h = D` — and `boft_s.<adapter>`, the output scale, `(out, 1)` on linear layers and `(1, out)` on
//! convolutions. `D` is the rotated dimension: `in_features`, or `in_channels · k²` for a `Conv2d`.
//!
//! The rotation: each block's skew-symmetric part `Q = (A − Aᵀ)/2` goes through the Cayley transform
//! `(I − Q)(I + Q)⁻¹` (an exact solve in fp32); in training, the multiplicative dropout may set blocks of
//! one factor to the identity; factor `i`'s blocks form the block-diagonal `B_i` `(D, D)`, conjugated by
//! its butterfly permutation (see [`crate::butterfly`]), `M_i = P_i·B_i·P_iᵀ`, and the rotation is
//! `M = M_{m−1} ⋯ M_1·M_0`.
//!
//! Forward (not merged), for the active adapters `a_1 … a_k` together: `M = M_{a_k} ⋯ M_{a_1}` and
//! `s = s_{a_k} ⊙ ⋯ ⊙ s_{a_1}`, then
//!
//! * Linear (dense or quantized), input `(…, D)`: `y = (base(x·M) − b) ⊙ s + b` (`b` the base bias);
//! * Conv2d (square kernel `k`, groups 1, dilation 1, the same stride and padding on both axes):
//!   `y = conv2d(x, ((M·W_flatᵀ)ᵀ ⊙ s) viewed (out, in, k, k), b)` with `W_flat` the weight `(out, D)`.
//!
//! Merging is multiplicative, `W ← ((M·Wᵀ)ᵀ ⊙ s)` (flattened for convolutions), and unmerging applies
//! `Mᵀ` and `1/s`. As in PEFT, with `m = 1` the block-diagonal matrix is `torch.block_diag` of the
//! blocks; with more factors it is the same placement per factor (what PEFT's `fbd_cuda` extension
//! computes — PEFT without the extension silently trains with one factor instead, see the crate docs).

use crate::butterfly::{multiplicative_dropout, Layout};
use crate::config::{BoftConfig, PEFT_TYPE};
use peft_core::config::LayerInit;
use peft_core::layer::{all_finite, replace_weight, BaseLayer, ForwardCtx, MergeCtx, TunerLayer, WeightLike};
use peft_core::{PeftError, Result};
use tch::{Device, Kind, Tensor};

/// PEFT's message for the layer classes BOFT does not adapt.
const UNSUPPORTED: &str =
    "Currently, only `torch.nn.Linear` and `torch.nn.Conv2d` (optionally quantized) are supported.";

/// The layer classes BOFT adapts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BoftKind {
    /// `nn.Linear` (dense or quantized).
    Linear,
    /// `nn.Conv2d` with a square kernel, one group, dilation 1 and the same stride and padding on
    /// both axes.
    Conv2d {
        /// Kernel height = width.
        kernel: i64,
        /// Stride on both axes.
        stride: i64,
        /// Zero padding on both axes.
        padding: i64,
    },
}

/// One BOFT adapter on one layer.
#[derive(Debug)]
pub struct BoftLayer {
    adapter: String,
    module: String,
    kind: BoftKind,
    in_features: i64,
    out_features: i64,
    layout: Layout,
    dropout: f64,
    /// `boft_R.<adapter>` `(m, b, h, h)`.
    r: Tensor,
    /// `boft_s.<adapter>`: `(out, 1)` (Linear) or `(1, out)` (Conv2d).
    s: Tensor,
    /// The butterfly permutations `(m, D, D)` in f32 (PEFT's non-persistent `boft_P`; not saved).
    p: Tensor,
}

/// Refuses a convolution geometry PEFT's BOFT forward would compute differently from the base layer.
fn check_conv(ctx: &LayerInit<'_, '_>, g: &peft_core::layer::ConvGeometry) -> Result<(i64, i64, i64)> {
    let refuse = |what: String| Err(ctx.unsupported(PEFT_TYPE, &what));
    if g.groups > 1 {
        return refuse(format!(
            "BOFT does not support Conv2d layers with groups > 1 (got groups={})",
            g.groups
        ));
    }
    let k = g.kernel_size[0];
    if g.kernel_size[1] != k {
        return refuse(format!(
            "BOFT on a Conv2d with a non-square kernel {:?} is not supported (PEFT sizes the rotation from \
             kernel_size[0]² and fails in the forward pass)",
            g.kernel_size
        ));
    }
    if g.dilation.iter().any(|&d| d != 1) {
        return refuse(format!(
            "BOFT on a Conv2d with dilation {:?} is not supported (PEFT's BOFT forward convolves without \
             dilation, so its output would differ from the merged layer's)",
            g.dilation
        ));
    }
    if g.stride[1] != g.stride[0] || g.padding[1] != g.padding[0] {
        return refuse(format!(
            "BOFT on a Conv2d with stride {:?} and padding {:?} is not supported (PEFT's BOFT forward \
             applies stride[0] and padding[0] to both axes)",
            g.stride, g.padding
        ));
    }
    Ok((k, g.stride[0], g.padding[0]))
}

impl BoftLayer {
    /// Creates the adapter as PEFT's `update_layer` does: the block layout from the layer's rotated
    /// dimension (with PEFT's checks), the permutations, then the parameters — zeros and ones with
    /// `init_weights`, else `normal_(0, 0.1)` for `boft_R` and `normal_(1, 0.1)` for `boft_s`, drawn in
    /// that order on the CPU in f32 — moved to the base layer's device and dtype.
    ///
    /// # Errors
    /// [`PeftError::UnsupportedLayer`] for anything but linear layers and the `Conv2d` layers PEFT
    /// computes correctly (GPT-2's `Conv1D` and embeddings included, as in PEFT); PEFT's layout errors.
    pub fn create(config: &mut BoftConfig, ctx: &mut LayerInit<'_, '_>) -> Result<Self> {
        let first_on_layer = ctx.siblings.is_empty();
        let (kind, in_features, out_features, dim) = if let Some(lin) = ctx.base.as_linear() {
            if lin.fan_in_fan_out() {
                return Err(ctx.unsupported(PEFT_TYPE, UNSUPPORTED));
            }
            let (i, o) = (lin.in_features(), lin.out_features());
            if first_on_layer {
                ctx.match_fan_in_fan_out(&mut config.fan_in_fan_out, false);
            }
            (BoftKind::Linear, i, o, i)
        } else if let Some(conv) = ctx.base.as_conv().filter(|c| c.geometry().dims() == 2) {
            let (i, o) = (conv.in_channels(), conv.out_channels());
            let g = conv.geometry().clone();
            let (kernel, stride, padding) = check_conv(ctx, &g)?;
            (BoftKind::Conv2d { kernel, stride, padding }, i, o, i * kernel * kernel)
        } else {
            return Err(ctx.unsupported(PEFT_TYPE, UNSUPPORTED));
        };
        let conv = kind != BoftKind::Linear;
        let layout = Layout::resolve(
            dim,
            config.boft_block_size,
            config.boft_block_num,
            config.boft_n_butterfly_factor,
            conv,
            ctx.module_name,
        )?;
        let (_, _, device) = ctx.placement()?;
        let p = layout.permutation_matrices(device)?;
        let torch = PeftError::torch("initialising boft_R / boft_s");
        let opts = (Kind::Float, Device::Cpu);
        let r_shape = [layout.factors, layout.block_num, layout.block_size, layout.block_size];
        let s_shape = if conv { [1, out_features] } else { [out_features, 1] };
        let mut r = Tensor::f_zeros(r_shape, opts).map_err(torch)?;
        let mut s = Tensor::f_ones(s_shape, opts).map_err(PeftError::torch("initialising boft_s"))?;
        if !config.init_weights {
            peft_core::init::normal_(&mut r, 0.0, 0.1)?;
            peft_core::init::normal_(&mut s, 1.0, 0.1)?;
        }
        let (r, s) = (ctx.place(r)?, ctx.place(s)?);
        let adapter = ctx.adapter_name.to_string();
        let r = (&ctx.path / "boft_R").add(&adapter, r, true);
        let s = (&ctx.path / "boft_s").add(&adapter, s, true);
        Ok(Self {
            adapter,
            module: ctx.module_name.to_string(),
            kind,
            in_features,
            out_features,
            layout,
            dropout: config.boft_dropout,
            r,
            s,
            p,
        })
    }

    /// `boft_R.<adapter>`.
    pub fn boft_r(&self) -> &Tensor {
        &self.r
    }

    /// `boft_s.<adapter>`.
    pub fn boft_s(&self) -> &Tensor {
        &self.s
    }

    /// The layer class.
    pub fn kind(&self) -> &BoftKind {
        &self.kind
    }

    /// The block layout after PEFT's derivation (`boft_block_size`, `boft_block_num`, factors).
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// The scale as a column `(out, 1)` (convolutions store it as a row).
    fn scale_column(&self) -> Tensor {
        match self.kind {
            BoftKind::Linear => self.s.shallow_clone(),
            BoftKind::Conv2d { .. } => self.s.transpose(0, 1),
        }
    }

    /// The block-diagonal matrices `(m, D, D)` of the blocks' rotations, with the dropout in training.
    fn block_diagonals(&self, train: bool) -> Tensor {
        let Layout { block_num: d, block_size: h, factors: n, .. } = self.layout;
        let blocks = self.r.view([n * d, h, h]);
        let rot =
            peft_orthogonal::cayley(&peft_orthogonal::skew_part(&blocks), blocks.kind()).view([n, d, h, h]);
        let rot = if train && self.dropout > 0.0 { multiplicative_dropout(&rot, self.dropout) } else { rot };
        if n == 1 {
            // PEFT's tensor path: `torch.block_diag(*torch.unbind(R.squeeze(0))).unsqueeze(0)`.
            peft_orthogonal::block_diagonal(&rot.squeeze_dim(0), d).unsqueeze(0)
        } else {
            // What `fbd_cuda` computes: the same placement for each factor.
            let per_factor: Vec<Tensor> =
                (0..n).map(|i| peft_orthogonal::block_diagonal(&rot.get(i), d)).collect();
            Tensor::stack(&per_factor, 0)
        }
    }

    /// The butterfly rotation `M` `(D, D)` in `(kind, device)`: `P·B·Pᵀ` per factor (batched), then the
    /// product of the factors, the last one leftmost.
    fn rotation(&self, train: bool, kind: Kind, device: Device) -> Tensor {
        let bd = self.block_diagonals(train).to_device(device).to_kind(kind);
        let p = self.p.to_device(device).to_kind(kind);
        let batch = p.bmm(&bd.bmm(&p.permute([0, 2, 1])));
        let mut m = batch.get(0);
        for i in 1..self.layout.factors {
            m = batch.get(i).matmul(&m);
        }
        m
    }

    /// PEFT's `get_delta_weight`: the rotation (no dropout) in the parameters' dtype and the scale
    /// column `(out, 1)`.
    pub fn delta_weight(&self) -> (Tensor, Tensor) {
        (self.rotation(false, self.r.kind(), self.r.device()), self.scale_column())
    }

    /// The combined rotation and scale of the adapters of `chain` in `x`'s dtype, as PEFT's forward loop
    /// accumulates them (`M = M_a·M`, `s = s_a ⊙ s`, from the identity and ones).
    fn combined(chain: &[&BoftLayer], x: &Tensor, train: bool) -> (Tensor, Tensor) {
        let (kind, device) = (x.kind(), x.device());
        let first = chain[0];
        let dim = first.layout.dim;
        let mut rotation = Tensor::eye(dim, (kind, device));
        let mut scale = Tensor::ones([first.out_features, 1], (kind, device));
        for layer in chain {
            rotation = layer.rotation(train, kind, device).matmul(&rotation);
            scale = layer.scale_column() * scale;
        }
        (rotation, scale)
    }

    fn weighted<'b>(&self, base: &'b mut dyn BaseLayer) -> Result<&'b mut dyn WeightLike> {
        let module = self.module.clone();
        base.as_weighted_mut().ok_or_else(|| {
            PeftError::Invalid(format!("`{module}`: the base layer has no weight to merge BOFT into"))
        })
    }

    /// `(out, D)`: the weight as the rotation multiplies it (convolutions flattened).
    fn flat(&self, weight: &Tensor) -> std::result::Result<Tensor, tch::TchError> {
        match self.kind {
            BoftKind::Linear => Ok(weight.shallow_clone()),
            BoftKind::Conv2d { .. } => weight.f_view([self.out_features, self.layout.dim]),
        }
    }

    fn unflat(&self, t: Tensor) -> std::result::Result<Tensor, tch::TchError> {
        match self.kind {
            BoftKind::Linear => Ok(t),
            BoftKind::Conv2d { kernel, .. } => {
                t.f_view([self.out_features, self.in_features, kernel, kernel])
            }
        }
    }
}

impl TunerLayer for BoftLayer {
    fn peft_type(&self) -> &'static str {
        PEFT_TYPE
    }

    fn named_tensors(&self) -> Vec<(String, Tensor)> {
        vec![
            (format!("boft_R.{}", self.adapter), self.r.shallow_clone()),
            (format!("boft_s.{}", self.adapter), self.s.shallow_clone()),
        ]
    }

    /// BOFT's whole forward for the layer's active BOFT adapters (the first of them acts for all).
    fn replace_base(&self, base: &dyn BaseLayer, x: &Tensor, ctx: &ForwardCtx<'_>) -> Option<Tensor> {
        let chain = ctx.active_group(self)?;
        let (rotation, scale) = Self::combined(&chain, x, ctx.train);
        let bias = base.as_weighted().and_then(|w| w.bias());
        match self.kind {
            BoftKind::Linear => {
                let rotated = x.matmul(&rotation.to_kind(x.kind()));
                let y = base.forward(&rotated);
                // Out of place, as PEFT: the scale applies to the output without its bias.
                let scale = scale.squeeze_dim(-1);
                Some(match &bias {
                    Some(b) => (y - b) * scale + b,
                    None => y * scale,
                })
            }
            BoftKind::Conv2d { kernel, stride, padding } => {
                let weight = base.as_weighted()?.weight();
                let x = x.to_kind(weight.kind());
                let flat = weight.view([self.out_features, self.layout.dim]).transpose(0, 1);
                let rotated = rotation.mm(&flat).transpose(0, 1);
                let scaled = (rotated * scale).view([self.out_features, self.in_features, kernel, kernel]);
                let kind = scaled.kind();
                let x = if x.kind() != kind { x.to_kind(kind) } else { x };
                let bias = bias.map(|b| if b.kind() != kind { b.to_kind(kind) } else { b });
                Some(x.conv2d(&scaled, bias.as_ref(), [stride, stride], [padding, padding], [1, 1], 1))
            }
        }
    }

    fn merge(&mut self, base: &mut dyn BaseLayer, ctx: &MergeCtx<'_>) -> Result<()> {
        let (rot, scale) = tch::no_grad(|| self.delta_weight());
        let w = self.weighted(base)?;
        let weight = w.weight();
        let orig_kind = weight.kind();
        let merged = tch::no_grad(|| -> std::result::Result<Tensor, tch::TchError> {
            let t = self.flat(&weight)?.f_transpose(0, 1)?;
            let product = rot.f_mm(&t.f_to_kind(rot.kind())?)?.f_transpose(0, 1)?.f_mul(&scale)?;
            self.unflat(product)
        })
        .map_err(PeftError::torch("merging a BOFT adapter"))?;
        // PEFT checks only linear layers; a non-finite convolution weight is refused here too.
        if ctx.safe && !all_finite(&merged)? {
            return Err(PeftError::NonFiniteMerge {
                adapter: self.adapter.clone(),
                module: self.module.clone(),
            });
        }
        let value = tch::no_grad(|| merged.f_contiguous().and_then(|t| t.f_to_kind(orig_kind)))
            .map_err(PeftError::torch("merging a BOFT adapter"))?;
        replace_weight(w, &value)
    }

    fn unmerge(&mut self, base: &mut dyn BaseLayer) -> Result<()> {
        let (rot, scale) = tch::no_grad(|| self.delta_weight());
        let w = self.weighted(base)?;
        let weight = w.weight();
        let orig_kind = weight.kind();
        let restored = tch::no_grad(|| -> std::result::Result<Tensor, tch::TchError> {
            let t = self.flat(&weight)?.f_transpose(0, 1)?;
            let product = rot.f_tr()?.f_mm(&t.f_to_kind(rot.kind())?)?.f_transpose(0, 1)?;
            // `1 / s` is Python's reflected division: `s.reciprocal() * 1`.
            let inv = scale.f_reciprocal()?.f_mul_scalar(1.0)?;
            self.unflat(product.f_mul(&inv)?)?.f_to_kind(orig_kind)
        })
        .map_err(PeftError::torch("unmerging a BOFT adapter"))?;
        replace_weight(w, &restored)
    }

    fn describe(&self) -> String {
        let class = match self.kind {
            BoftKind::Linear => "Linear",
            BoftKind::Conv2d { .. } => "Conv2d",
        };
        format!(
            "boft.{class}(in_features={}, out_features={}, boft_block_size={}, boft_block_num={}, \
             boft_n_butterfly_factor={})",
            self.in_features,
            self.out_features,
            self.layout.block_size,
            self.layout.block_num,
            self.layout.factors
        )
    }
}
