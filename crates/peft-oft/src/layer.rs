//! OFT on one layer: a block-diagonal orthogonal rotation of the layer's input space.
//!
//! The parameter `oft_R.<adapter>.weight` (`oft_embedding_R.<adapter>.weight` on embeddings) has shape
//! `(r, b(b−1)/2)` — `(1, b(b−1)/2)` with `block_share` — and holds, per block, the strict upper triangle
//! (row-major, `triu_indices(b, b, 1)`) of a `b × b` matrix `U`; `Q = U − Uᵀ` is skew-symmetric. The
//! rotation of each block is its Cayley transform `R = (I − Q)(I + Q)⁻¹` (`torch.linalg.solve(I + Q,
//! I − Q, left=False)`), or with `use_cayley_neumann` the truncated series `I + 2Q + 2Q² + … + Qⁿ⁻¹` for
//! `n = num_cayley_neumann_terms` terms. With `coft` the skew matrices are first projected onto the ball
//! `‖Q‖_F ≤ eps / √(blocks)` and the projection is written back into the parameter, on every use.
//!
//! `D = r · b` is the rotated dimension:
//!
//! * Linear (dense or quantized): `D = in_features`; `y = base(x·BD(R))`, where the input `(…, D)` is viewed
//!   `(…, r, b)` and each block row-vector is multiplied by its `R` (`einsum("...rk,rkc->...rc")`). (A 4-D
//!   input is rotated over its last dimension too; PEFT tries to cut it into patches and fails.)
//! * Conv2d (square kernel `k`, dilation 1): `D = in_channels · k²`. The input `(N, C, H, W)` is cut into
//!   every `k × k` patch (stride 1, no padding), each patch flattened in `(C, kh, kw)` order and rotated;
//!   the rotated patches are reassembled with PEFT's permutation and `F.fold` (which sums overlapping
//!   patches, so for `k > 1` this is not the identity even at `R = I` — PEFT's behaviour, kept), then the
//!   base convolution runs with its own stride and padding.
//! * Embedding: `D = embedding_dim`; the rotation applies to the looked-up vectors: `y = base(ids)·BD(R)`.
//!
//! Several active OFT adapters on a layer rotate in activation order, each in its own dtype, and the
//! result is cast back once, as PEFT's loop does. Merging is multiplicative — `W ← (BD(R)·Wᵀ)ᵀ` for linear
//! and convolution weights (flattened to `(out, D)`), `W ← W·BD(R)` for embeddings — and unmerging
//! multiplies by `inv(BD(R))` computed in fp32, leaving the weight in the (transposed) memory layout PEFT
//! leaves it in, since GEMMs round differently per layout.

use crate::config::{OftConfig, PEFT_TYPE};
use peft_core::config::LayerInit;
use peft_core::layer::{all_finite, replace_weight, BaseLayer, ForwardCtx, MergeCtx, TunerLayer, WeightLike};
use peft_core::{PeftError, Result};
use tch::{Device, Kind, Tensor};

/// PEFT's message for the layer classes OFT does not adapt.
const UNSUPPORTED: &str = "Currently, only `torch.nn.Linear`, `torch.nn.Conv2d`, `torch.nn.Embedding` \
     (optionally quantized) are supported";

/// The layer classes OFT adapts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OftKind {
    /// `nn.Linear` (dense or quantized).
    Linear,
    /// `nn.Conv2d` with a square kernel.
    Conv2d {
        /// Kernel height = width.
        kernel: i64,
        /// Convolution groups (merging is refused for `groups > 1`, where PEFT fails).
        groups: i64,
    },
    /// `nn.Embedding`.
    Embedding,
}

/// One OFT adapter on one layer (PEFT's `oft.Linear`, `oft.Conv2d`, `oft.Embedding`).
#[derive(Debug)]
pub struct OftLayer {
    adapter: String,
    module: String,
    kind: OftKind,
    in_features: i64,
    out_features: i64,
    /// The rotated dimension `r · block_size`.
    dim: i64,
    r: i64,
    block_size: i64,
    coft: bool,
    eps: f64,
    block_share: bool,
    use_cayley_neumann: bool,
    num_cayley_neumann_terms: i64,
    module_dropout: f64,
    weight: Tensor,
    rows: Tensor,
    cols: Tensor,
}

/// PEFT's `adjust_oft_parameters`: the divisor of `dim` nearest to `value` (ties to the lower one;
/// `dim` itself when `value` exceeds it).
pub fn adjust_oft_parameters(dim: i64, value: i64) -> i64 {
    if value >= dim {
        return dim;
    }
    let mut higher = value;
    while higher <= dim && dim % higher != 0 {
        higher += 1;
    }
    let mut lower = value;
    while lower > 1 && dim % lower != 0 {
        lower -= 1;
    }
    if value - lower <= higher - value {
        lower
    } else {
        higher
    }
}

/// `(r, block_size)` for a layer of rotated dimension `dim`, adjusting the value given to a divisor with
/// PEFT's warning.
fn resolve_blocks(config: &OftConfig, dim: i64, ctx: &mut LayerInit<'_, '_>) -> Result<(i64, i64)> {
    let (r, b) = (config.r, config.oft_block_size);
    if dim <= 0 {
        return Err(PeftError::Invalid(format!(
            "`{}`: OFT cannot rotate a {dim}-dimensional input",
            ctx.module_name
        )));
    }
    match (r, b) {
        (0, b) if b > 0 => {
            let mut b = b;
            if dim % b != 0 || b > dim {
                let old = b;
                b = adjust_oft_parameters(dim, b);
                ctx.warn(format!("Invalid `oft_block_size` ({old})! Adjusted `oft_block_size` to ({b})."));
            }
            Ok((dim / b, b))
        }
        (r, 0) if r > 0 => {
            let mut r = r;
            if dim % r != 0 || r > dim {
                let old = r;
                r = adjust_oft_parameters(dim, r);
                ctx.warn(format!("Invalid `r` ({old})! Adjusted `r` to ({r})."));
            }
            Ok((r, dim / r))
        }
        _ => Err(PeftError::Invalid(format!(
            "OFT needs exactly one of `r` ({r}) and `oft_block_size` ({b}) to be non-zero (and neither negative)"
        ))),
    }
}

impl OftLayer {
    /// Creates the adapter as PEFT's `update_layer` does: the block sizes from the layer's rotated
    /// dimension, then the parameter: zeros (no random draw) with `init_weights`, else `normal_(0, 0.1)`
    /// drawn on the CPU in f32, then moved to the base layer's device and dtype.
    ///
    /// # Errors
    /// [`PeftError::UnsupportedLayer`] for anything but linear layers, `Conv2d` (dilation 1, square
    /// kernel) and embeddings — GPT-2's `Conv1D` included, as in PEFT.
    pub fn create(config: &mut OftConfig, ctx: &mut LayerInit<'_, '_>) -> Result<Self> {
        let first_on_layer = ctx.siblings.is_empty();
        let (kind, in_features, out_features, dim) = if let Some(lin) = ctx.base.as_linear() {
            if lin.fan_in_fan_out() {
                return Err(ctx.unsupported(PEFT_TYPE, UNSUPPORTED));
            }
            let (i, o) = (lin.in_features(), lin.out_features());
            if first_on_layer {
                ctx.match_fan_in_fan_out(&mut config.fan_in_fan_out, false);
            }
            (OftKind::Linear, i, o, i)
        } else if let Some(conv) = ctx.base.as_conv().filter(|c| c.geometry().dims() == 2) {
            let g = conv.geometry().clone();
            let (i, o) = (conv.in_channels(), conv.out_channels());
            if g.dilation.first().copied().unwrap_or(1) > 1 {
                return Err(ctx.unsupported(PEFT_TYPE, "Conv2d with dilation > 1 is not supported by OFT."));
            }
            let k = g.kernel_size[0];
            if g.kernel_size[1] != k {
                return Err(ctx.unsupported(
                    PEFT_TYPE,
                    &format!(
                        "OFT on a Conv2d with a non-square kernel {:?} is not supported (PEFT sizes the \
                         rotation from kernel_size[0]² and fails in the forward pass)",
                        g.kernel_size
                    ),
                ));
            }
            (OftKind::Conv2d { kernel: k, groups: g.groups }, i, o, i * k * k)
        } else if let Some(emb) = ctx.base.as_embedding() {
            let (d, n) = (emb.embedding_dim(), emb.num_embeddings());
            (OftKind::Embedding, d, n, d)
        } else {
            return Err(ctx.unsupported(PEFT_TYPE, UNSUPPORTED));
        };
        let (r, block_size) = resolve_blocks(config, dim, ctx)?;
        let n_elements = block_size * (block_size - 1) / 2;
        let shape = [if config.block_share { 1 } else { r }, n_elements];
        let opts = (Kind::Float, Device::Cpu);
        let weight = if config.init_weights {
            Tensor::f_zeros(shape, opts).map_err(PeftError::torch("initialising oft_R"))?
        } else {
            let mut w = Tensor::f_empty(shape, opts).map_err(PeftError::torch("initialising oft_R"))?;
            peft_core::init::normal_(&mut w, 0.0, 0.1)?;
            w
        };
        let weight = ctx.place(weight)?;
        let device = weight.device();
        let (rows, cols) = peft_orthogonal::triangle_indices(block_size, device);
        let adapter = ctx.adapter_name.to_string();
        let dict = if kind == OftKind::Embedding { "oft_embedding_R" } else { "oft_R" };
        let weight = (&ctx.path / dict / &adapter).add("weight", weight, true);
        Ok(Self {
            adapter,
            module: ctx.module_name.to_string(),
            kind,
            in_features,
            out_features,
            dim,
            r,
            block_size,
            coft: config.coft,
            eps: config.eps,
            block_share: config.block_share,
            use_cayley_neumann: config.use_cayley_neumann,
            num_cayley_neumann_terms: config.num_cayley_neumann_terms,
            module_dropout: config.module_dropout,
            weight,
            rows,
            cols,
        })
    }

    /// The skew parameters (`oft_R.<adapter>.weight`).
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The layer class.
    pub fn kind(&self) -> &OftKind {
        &self.kind
    }

    /// Blocks per layer (PEFT's `layer.r[adapter]`, after any adjustment).
    pub fn r(&self) -> i64 {
        self.r
    }

    /// The block size (PEFT's `layer.oft_block_size[adapter]`, after any adjustment).
    pub fn block_size(&self) -> i64 {
        self.block_size
    }

    /// `module_dropout` (kept for reference: PEFT 0.21.2 never applies it).
    pub fn module_dropout(&self) -> f64 {
        self.module_dropout
    }

    /// Blocks the rotation is applied to: `r`, also with `block_share` (one block repeated).
    fn rank(&self) -> i64 {
        if self.block_share {
            self.dim / self.block_size
        } else {
            self.r
        }
    }

    /// `_pytorch_skew_symmetric`: `U − Uᵀ` with `U`'s strict upper triangle taken from each row of `vec`.
    fn skew(&self, vec: &Tensor) -> Tensor {
        peft_orthogonal::skew_from_triangle(vec, &self.rows, &self.cols, self.block_size)
    }

    /// `_project_batch`: COFT's projection of the skew matrices onto the ball of radius
    /// `eps / sqrt(blocks)`, returned as upper-triangle vectors again.
    fn project(&self, q: &Tensor) -> Tensor {
        let m = self.skew(q);
        let blocks = m.size()[0];
        // `eps * 1 / torch.sqrt(torch.tensor(n))`: Python's reflected division is `reciprocal() * eps`.
        let eps = Tensor::from(blocks).sqrt().reciprocal() * self.eps;
        let bs = self.block_size;
        let zeros = Tensor::zeros([bs, bs], (m.kind(), m.device())).unsqueeze(0).expand_as(&m);
        let diff = &m - &zeros;
        let norm = (&m - &zeros).norm_scalaropt_dim(2, [1, 2], true);
        let mask = norm.le_tensor(&eps);
        let scaled = &zeros + &eps * (&diff / &norm);
        let out = m.where_self(&mask, &scaled);
        peft_orthogonal::triangle_of(&out, &self.rows, &self.cols)
    }

    /// `_cayley_batch`: the rotation of every block, in the parameter's dtype.
    fn cayley(&self, q: &Tensor) -> Tensor {
        let previous = q.kind();
        let skew = self.skew(q);
        if self.use_cayley_neumann {
            peft_orthogonal::cayley_neumann(&skew, self.num_cayley_neumann_terms).to_kind(previous)
        } else {
            peft_orthogonal::cayley(&skew, previous)
        }
    }

    /// `_block_diagonal`: the `(D, D)` block-diagonal matrix of the blocks' rotations.
    fn block_diagonal(&self, rot: &Tensor) -> Tensor {
        peft_orthogonal::block_diagonal(rot, self.rank())
    }

    /// Projects the parameter in place (COFT, before every use, as PEFT's forward and merge do).
    fn project_in_place(&self) {
        tch::no_grad(|| {
            let projected = self.project(&self.weight);
            self.weight.shallow_clone().copy_(&projected);
        });
    }

    /// `OFTRotationModule.get_weight` on `weight`: the `(D, D)` rotation; with COFT the projection is
    /// written back into the parameter when `write_back`.
    fn rotation_matrix(&self, weight: &Tensor, write_back: bool) -> Tensor {
        let mut w = weight.shallow_clone();
        if self.coft {
            let projected = tch::no_grad(|| self.project(&w));
            if write_back {
                tch::no_grad(|| {
                    self.weight.shallow_clone().copy_(&projected);
                });
            }
            w = projected;
        }
        self.block_diagonal(&self.cayley(&w))
    }

    /// `get_delta_weight`: the rotation matrix; fp16/bf16 parameters on the CPU are computed in fp32 (the
    /// COFT projection then is not written back, as in PEFT, whose write goes to the temporary copy).
    pub fn delta_weight(&self) -> Tensor {
        let kind = self.weight.kind();
        if self.weight.device() == Device::Cpu && matches!(kind, Kind::Half | Kind::BFloat16) {
            let w = self.weight.detach().to_kind(Kind::Float);
            self.rotation_matrix(&w, false).to_kind(kind)
        } else {
            self.rotation_matrix(&self.weight, true)
        }
    }

    /// `OFTRotationModule.forward`: rotates `x` (cast to the parameter's dtype and back).
    fn rotate(&self, x: &Tensor) -> Tensor {
        let required = x.kind();
        let wk = self.weight.kind();
        let x = if required != wk { x.to_kind(wk) } else { x.shallow_clone() };
        let orig = x.size();
        if self.coft {
            self.project_in_place();
        }
        let rot = self.cayley(&self.weight);
        let patches = matches!(self.kind, OftKind::Conv2d { .. }) && orig.len() == 4;
        let x = if patches { self.unfold(&x) } else { x };
        let folded = x.size();
        let rank = self.rank();
        let mut shape = folded[..folded.len().saturating_sub(1)].to_vec();
        shape.extend([rank, self.block_size]);
        let xr = x.reshape(shape.as_slice());
        let rot = if self.block_share { rot.repeat([rank, 1, 1]) } else { rot };
        let y = Tensor::einsum("...rk,rkc->...rc", &[xr, rot], None::<&[i64]>).reshape(folded.as_slice());
        let y = if patches { self.fold(&y, &orig) } else { y };
        y.to_kind(required)
    }

    fn kernel(&self) -> i64 {
        match self.kind {
            OftKind::Conv2d { kernel, .. } => kernel,
            _ => 0,
        }
    }

    /// `_unfold`: every `k × k` patch (stride 1, no padding) as a row `(C, kh, kw)`.
    fn unfold(&self, x: &Tensor) -> Tensor {
        let k = self.kernel();
        let s = x.size();
        let (n, h, w) = (s[0], s[2], s[3]);
        let (ho, wo) = (h - k + 1, w - k + 1);
        x.unfold(2, k, 1).unfold(3, k, 1).permute([0, 2, 3, 1, 4, 5]).contiguous().view([n * ho * wo, -1])
    }

    /// `_fold`: PEFT's reassembly of rotated patches (its permutation, then `F.fold`, summing overlaps).
    fn fold(&self, x: &Tensor, orig: &[i64]) -> Tensor {
        let k = self.kernel();
        let (n, c, h, w) = (orig[0], orig[1], orig[2], orig[3]);
        let (ho, wo) = (h - k + 1, w - k + 1);
        x.view([n, ho, wo, c, k, k])
            .permute([0, 3, 1, 2, 4, 5])
            .contiguous()
            .view([n, c * k * k, ho * wo])
            .col2im([h, w], [k, k], [1, 1], [0, 0], [1, 1])
    }

    /// The active OFT adapters of the layer that act in this call, in activation order — or `None` when
    /// another one comes first (it applies them all).
    fn chain<'a>(&'a self, ctx: &ForwardCtx<'a>) -> Option<Vec<&'a OftLayer>> {
        ctx.active_group(self)
    }

    /// Runs `x` through every rotation of `chain`, each on its own dtype.
    fn apply_chain(chain: &[&OftLayer], x: &Tensor) -> Tensor {
        let mut x = x.shallow_clone();
        for layer in chain {
            let wk = layer.weight.kind();
            if x.kind() != wk {
                x = x.to_kind(wk);
            }
            x = layer.rotate(&x);
        }
        x
    }

    fn weighted<'b>(&self, base: &'b mut dyn BaseLayer) -> Result<&'b mut dyn WeightLike> {
        let module = self.module.clone();
        base.as_weighted_mut().ok_or_else(|| {
            PeftError::Invalid(format!("`{module}`: the base layer has no weight to merge OFT into"))
        })
    }

    fn non_finite(&self) -> PeftError {
        PeftError::NonFiniteMerge { adapter: self.adapter.clone(), module: self.module.clone() }
    }

    /// `(out, D)`: the weight as the rotation multiplies it (linear layers as stored, convolutions
    /// flattened).
    fn flat(&self, weight: &Tensor) -> std::result::Result<Tensor, tch::TchError> {
        match self.kind {
            OftKind::Conv2d { .. } => weight.f_view([self.out_features, self.dim]),
            _ => Ok(weight.shallow_clone()),
        }
    }

    fn unflat(&self, t: Tensor) -> std::result::Result<Tensor, tch::TchError> {
        match self.kind {
            OftKind::Conv2d { kernel, .. } => t.f_view([self.out_features, self.in_features, kernel, kernel]),
            _ => Ok(t),
        }
    }

    fn check_mergeable(&self) -> Result<()> {
        if let OftKind::Conv2d { groups, .. } = self.kind {
            if groups > 1 {
                return Err(PeftError::Invalid(format!(
                    "`{}`: merging OFT into a grouped Conv2d (groups={groups}) is not supported: PEFT fails \
                     reshaping its weight to (out_channels, in_channels·k²)",
                    self.module
                )));
            }
        }
        Ok(())
    }
}

impl TunerLayer for OftLayer {
    fn peft_type(&self) -> &'static str {
        PEFT_TYPE
    }

    fn named_tensors(&self) -> Vec<(String, Tensor)> {
        let dict = if self.kind == OftKind::Embedding { "oft_embedding_R" } else { "oft_R" };
        vec![(format!("{dict}.{}.weight", self.adapter), self.weight.shallow_clone())]
    }

    fn transform_input(&self, _base: &dyn BaseLayer, x: &Tensor, ctx: &ForwardCtx<'_>) -> Option<Tensor> {
        if self.kind == OftKind::Embedding {
            return None;
        }
        let chain = self.chain(ctx)?;
        Some(Self::apply_chain(&chain, x).to_kind(x.kind()))
    }

    fn transform_output(
        &self,
        _base: &dyn BaseLayer,
        _x: &Tensor,
        y: Tensor,
        ctx: &ForwardCtx<'_>,
    ) -> Tensor {
        if self.kind != OftKind::Embedding {
            return y;
        }
        let Some(chain) = self.chain(ctx) else { return y };
        let kind = y.kind();
        Self::apply_chain(&chain, &y).to_kind(kind)
    }

    fn merge(&mut self, base: &mut dyn BaseLayer, ctx: &MergeCtx<'_>) -> Result<()> {
        self.check_mergeable()?;
        let rot = tch::no_grad(|| self.delta_weight());
        let is_embedding = self.kind == OftKind::Embedding;
        let w = self.weighted(base)?;
        let weight = w.weight();
        let orig_kind = weight.kind();
        let rk = rot.kind();
        if ctx.safe || !w.weight_is_storage() {
            // PEFT's safe / quantized path: compute on a copy, check, then set the (contiguous) result.
            let merged = tch::no_grad(|| -> std::result::Result<Tensor, tch::TchError> {
                if is_embedding {
                    weight.f_to_kind(rk)?.f_mm(&rot)
                } else {
                    let t = self.flat(&weight)?.f_transpose(0, 1)?;
                    self.unflat(rot.f_mm(&t.f_to_kind(rk)?)?.f_transpose(0, 1)?)
                }
            })
            .map_err(PeftError::torch("merging an OFT adapter"))?;
            if ctx.safe && !all_finite(&merged)? {
                return Err(self.non_finite());
            }
            let value = tch::no_grad(|| merged.f_contiguous().and_then(|t| t.f_to_kind(orig_kind)))
                .map_err(PeftError::torch("merging an OFT adapter"))?;
            let w = self.weighted(base)?;
            return replace_weight(w, &value);
        }
        // PEFT's in-place path: the product is copied into the existing storage.
        tch::no_grad(|| -> std::result::Result<(), tch::TchError> {
            if is_embedding {
                let result = weight.f_to_kind(rk)?.f_mm(&rot)?;
                weight.shallow_clone().f_copy_(&result)?;
            } else {
                let mut flat = self.flat(&weight)?;
                let result = rot.f_mm(&flat.f_transpose(0, 1)?.f_to_kind(rk)?)?;
                flat.f_copy_(&result.f_transpose(0, 1)?)?;
            }
            Ok(())
        })
        .map_err(PeftError::torch("merging an OFT adapter"))
    }

    fn unmerge(&mut self, base: &mut dyn BaseLayer) -> Result<()> {
        self.check_mergeable()?;
        let rot = tch::no_grad(|| self.delta_weight());
        let previous = rot.kind();
        let is_embedding = self.kind == OftKind::Embedding;
        let w = self.weighted(base)?;
        let weight = w.weight();
        let orig_kind = weight.kind();
        let restored = tch::no_grad(|| -> std::result::Result<Tensor, tch::TchError> {
            let rot32 =
                if previous != Kind::Float { rot.f_to_kind(Kind::Float)? } else { rot.shallow_clone() };
            if is_embedding {
                weight.f_to_kind(rot32.kind())?.f_mm(&Tensor::f_linalg_inv(&rot32)?)?.f_to_kind(orig_kind)
            } else {
                let t = self.flat(&weight)?.f_transpose(0, 1)?;
                let inv = Tensor::f_linalg_inv(&rot32)?.f_to_kind(previous)?;
                self.unflat(inv.f_mm(&t.f_to_kind(previous)?)?.f_transpose(0, 1)?)?.f_to_kind(orig_kind)
            }
        })
        .map_err(PeftError::torch("unmerging an OFT adapter"))?;
        replace_weight(w, &restored)
    }

    fn describe(&self) -> String {
        let class = match self.kind {
            OftKind::Linear => "Linear",
            OftKind::Conv2d { .. } => "Conv2d",
            OftKind::Embedding => "Embedding",
        };
        format!(
            "oft.{class}(in_features={}, out_features={}, r={}, oft_block_size={})",
            self.in_features, self.out_features, self.r, self.block_size
        )
    }
}

#[cfg(test)]
mod tests {
    use super::adjust_oft_parameters;

    #[test]
    fn block_sizes_adjust_to_the_nearest_divisor_like_peft() {
        assert_eq!(adjust_oft_parameters(10, 32), 10);
        assert_eq!(adjust_oft_parameters(10, 10), 10);
        assert_eq!(adjust_oft_parameters(10, 3), 2); // 2 and 5 are both... 3-2 = 1 < 5-3 = 2
        assert_eq!(adjust_oft_parameters(10, 4), 5); // 4-2 = 2 > 5-4 = 1
        assert_eq!(adjust_oft_parameters(12, 5), 4); // tie 4/6 -> lower
        assert_eq!(adjust_oft_parameters(72, 7), 6);
        assert_eq!(adjust_oft_parameters(7, 3), 1);
    }
}
