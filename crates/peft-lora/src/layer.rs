//! LoRA on one layer: PEFT's `lora.Linear`, `lora.Embedding` and `lora.Conv1d/2d/3d` as one type.
//!
//! With `s = lora_alpha / r` (or `lora_alpha / sqrt(r)` with rsLoRA):
//!
//! ```text
//! Linear     y = base(x) + B(A(dropout(x))) · s            A (r, in), B (out, r)
//! Embedding  y = base(ids) + embed(ids, Aᵀ) · Bᵀ · s        A (r, vocab), B (dim, r); no dropout
//! ConvNd     y = base(x) + convB(convA(dropout(x))) · s    A (r, in, *kernel), B (out, r/groups, 1, …)
//! ```
//!
//! `convA` uses the base's kernel, stride and padding; `convB` is a 1×…×1 convolution with the base's
//! groups. The delta weights (for merging) and DoRA (see [`crate::dora`]) follow PEFT op for op, so
//! results are bit-identical on the same libtorch.

use crate::config::{LoraConfig, PEFT_TYPE};
use crate::dora::Dora;
use crate::init::{self, Scheme};
use crate::variant::Variant;
use peft_core::config::LayerInit;
use peft_core::error::{PeftError, Result};
use peft_core::layer::{
    all_finite, conv_nd_t, BaseLayer, ConvGeometry, ForwardCtx, MergeCtx, TunerLayer, WeightLike,
};
use tch::{Device, Kind, Tensor};

type TchResult<T> = std::result::Result<T, tch::TchError>;

/// The PEFT layer class an adapter mirrors, with what its computation needs from the base.
#[derive(Clone, Debug, PartialEq)]
pub enum LoraKind {
    /// `lora.Linear` on `nn.Linear`, or on transformers' `Conv1D` (weight stored `(in, out)`).
    Linear {
        /// The base weight is stored `(in, out)`.
        fan_in_fan_out: bool,
    },
    /// `lora.Embedding` on `nn.Embedding`.
    Embedding {
        /// The base's padding index (only affects gradients).
        padding_idx: Option<i64>,
        /// The base's output scale (Gemma); applied to the adapter's contribution too.
        embed_scale: Option<f64>,
    },
    /// `lora.Conv1d` / `Conv2d` / `Conv3d`.
    Conv {
        /// The base's kernel, stride, padding, dilation and groups.
        geometry: ConvGeometry,
    },
}

impl LoraKind {
    /// PEFT's class name (`Linear`, `Embedding`, `Conv2d`, …).
    pub fn class_name(&self) -> &'static str {
        match self {
            LoraKind::Linear { .. } => "Linear",
            LoraKind::Embedding { .. } => "Embedding",
            LoraKind::Conv { geometry } => match geometry.dims() {
                1 => "Conv1d",
                2 => "Conv2d",
                _ => "Conv3d",
            },
        }
    }

    /// The in-memory names of A and B relative to the layer, for `adapter`.
    fn tensor_names(&self, adapter: &str) -> (String, String, String) {
        match self {
            LoraKind::Embedding { .. } => (
                format!("lora_embedding_A.{adapter}"),
                format!("lora_embedding_B.{adapter}"),
                format!("lora_embedding_B.{adapter}.bias"),
            ),
            _ => (
                format!("lora_A.{adapter}.weight"),
                format!("lora_B.{adapter}.weight"),
                format!("lora_B.{adapter}.bias"),
            ),
        }
    }
}

/// One LoRA adapter on one layer.
#[derive(Debug)]
pub struct LoraLayer {
    adapter: String,
    module: String,
    /// The layer class and base geometry.
    pub kind: LoraKind,
    /// Rank.
    pub r: i64,
    /// Alpha.
    pub lora_alpha: f64,
    /// rsLoRA (`scaling = alpha / sqrt(r)`).
    pub use_rslora: bool,
    /// The factor applied to the adapter's contribution.
    pub scaling: f64,
    /// Dropout probability on the LoRA input path (not used by embeddings, as in PEFT).
    pub dropout: f64,
    /// `A`: `(r, in)`, `(r, vocab)` or `(r, in, *kernel)`.
    pub lora_a: Tensor,
    /// `B`: `(out, r)`, `(dim, r)` or `(out, r / groups, 1, …)`.
    pub lora_b: Tensor,
    /// `B`'s bias, `(out,)`, with `lora_bias`.
    pub lora_b_bias: Option<Tensor>,
    /// DoRA's magnitude and caches, with `use_dora`.
    pub dora: Option<Dora>,
    /// MiCA keeps B frozen while A trains.
    pub frozen_b: bool,
    /// Activated LoRA: applies only from each row's invocation offset on (`ForwardCtx::alora_offsets`).
    pub alora: bool,
    /// KaSA's learnable singular values `ΔΣ` (`lora_diag`), between A and B.
    pub kasa_diag: Option<Tensor>,
    /// BD-LoRA: which factor is block-diagonal (stored as its stacked blocks).
    pub block_diagonal: Option<crate::bdlora::BlockDiagonal>,
    /// The LoRA variant in use (PEFT's `lora_variant[adapter]`), if any.
    pub variant: Option<Variant>,
    /// VeLoRA's projection state.
    pub velora: Option<crate::velora::Velora>,
    /// MonteCLoRA's sampler.
    pub monteclora: Option<crate::monteclora::MonteClora>,
    /// Arrow's router state (this adapter routes over the layer's task adapters).
    pub arrow: Option<crate::arrow::Arrow>,
    /// Bumped whenever the adapter's values or scaling change (caches compare it).
    pub version: u64,
    in_features: i64,
    out_features: i64,
}

fn alloc(shape: &[i64]) -> Result<Tensor> {
    Tensor::f_empty(shape, (Kind::Float, Device::Cpu)).map_err(PeftError::torch("allocating LoRA weights"))
}

/// `y += (x·Aᵀ)·Bᵀ` written into `y` with one accumulating matrix product, for inference: only when no
/// autograd graph can involve `y` (nothing here requires grad) and `y` is a contiguous tensor of the
/// factors' dtype; `None` otherwise (the caller takes the out-of-place path). Saves the two full passes
/// over the output (`· s`, `+`) of the PEFT formula; `b` carries the scaling.
pub(crate) fn add_low_rank_in_place(x: &Tensor, a: &Tensor, b: &Tensor, y: &Tensor) -> Option<Tensor> {
    if y.requires_grad() || x.requires_grad() || a.requires_grad() || b.requires_grad() {
        return None;
    }
    if y.kind() != b.kind() || x.kind() != a.kind() || !y.is_contiguous() || y.device() != b.device() {
        return None;
    }
    let out = *y.size().last()?;
    let r = a.size()[0];
    let h = x.f_linear::<&Tensor>(a, None).ok()?.f_reshape([-1, r]).ok()?;
    let mut y2 = y.f_view([-1, out]).ok()?;
    let _ = y2.f_addmm_(&h, &b.f_tr().ok()?).ok()?;
    Some(y.shallow_clone())
}

/// `peft.utils.other.transpose`.
pub(crate) fn transpose(w: &Tensor, fan_in_fan_out: bool) -> TchResult<Tensor> {
    if fan_in_fan_out {
        w.f_tr()
    } else {
        Ok(w.shallow_clone())
    }
}

impl LoraLayer {
    /// Creates the adapter as PEFT's `update_layer` of the matching layer class does, drawing the same
    /// random numbers in the same order (the `nn.Linear` / `nn.ConvNd` constructors or `torch.randn` for
    /// embeddings, then `reset_lora_parameters`); tensors are made on the CPU in fp32, moved to the base
    /// layer's device and float dtype, and upcast to fp32 when `autocast_adapter_dtype` is set.
    ///
    /// # Errors
    /// [`PeftError::UnsupportedLayer`] for a base PEFT's LoRA cannot adapt, and PEFT's errors for
    /// invalid combinations (rank not divisible by the conv groups, `lora_bias` on embeddings, …).
    pub fn create(config: &mut LoraConfig, ctx: &mut LayerInit<'_, '_>) -> Result<Self> {
        let (kind, in_features, out_features, weight, has_base_bias) = Self::inspect_base(config, ctx)?;
        let (device, base_kind) = (weight.device(), weight.kind());
        let (r, lora_alpha) = config.rank_and_alpha(ctx.module_name)?;
        peft_core::config::require_positive("r", r)?;
        match &kind {
            LoraKind::Embedding { .. } if config.lora_bias => {
                return Err(PeftError::Invalid(format!(
                    "lora_bias=True is not supported for Embedding (`{}`)",
                    ctx.module_name
                )))
            }
            LoraKind::Conv { geometry } => {
                if geometry.groups > 1 {
                    ctx.warn("LoRA adapter added to ConvNd layer with groups > 1. Merging is not supported.");
                }
                if r % geometry.groups != 0 {
                    return Err(PeftError::Invalid(format!(
                        "Targeting a {} with groups={} and rank {r}. Currently, support is limited to conv layers \
                         where the rank is divisible by groups. Either choose a different rank or do not target \
                         this specific layer (`{}`).",
                        kind.class_name(),
                        geometry.groups,
                        ctx.module_name
                    )));
                }
                if geometry.dilation.iter().any(|&d| d != 1) {
                    // PEFT builds lora_A without the base's dilation, so the shapes would not add up in
                    // the forward pass; refuse up front instead.
                    return Err(ctx.unsupported(
                        PEFT_TYPE,
                        "LoRA's lora_A convolution ignores dilation, so a dilated base cannot be adapted",
                    ));
                }
            }
            _ => {}
        }
        if config.lora_bias && !has_base_bias {
            ctx.warn(format!(
                "`lora_bias=True` was passed but the targeted layer `{}` has no bias. This means that merging LoRA \
                 weights won't be possible.",
                ctx.module_name
            ));
        }
        let scheme = Scheme::resolve(&kind, &config.init_lora_weights, &config.loftq_config)?;
        if let Scheme::Unsupported(name) = &scheme {
            return Err(peft_core::config::unsupported_option(
                PEFT_TYPE,
                "init_lora_weights",
                &serde_json::Value::String(name.clone()),
                if name == "loftq" {
                    "PEFT 0.21.2's LoftQ initialises lora_A/lora_B of linear layers only"
                } else {
                    ""
                },
            ));
        }
        let variant = crate::variant::resolve(config, &kind)?;
        let frozen_b = matches!(scheme, Scheme::Mica { frozen_b: true });
        let kasa = variant == Some(Variant::Kasa);
        if kasa {
            if let LoraKind::Linear { fan_in_fan_out: true } = kind {
                return Err(PeftError::Invalid(
                    "KaSA does not support `fan_in_fan_out=True` layers (e.g. Conv1D). Please target nn.Linear layers."
                        .into(),
                ));
            }
            if r >= in_features.min(out_features) {
                return Err(PeftError::Invalid(format!(
                    "KaSA requires `r` ({r}) to be smaller than min(in_features, out_features) ({}) so that at least \
                     one singular component of the base weight is preserved after truncation.",
                    in_features.min(out_features)
                )));
            }
        }
        let block_diagonal = match variant {
            Some(Variant::BdLora) if matches!(kind, LoraKind::Linear { fan_in_fan_out: true }) => {
                // PEFT 0.21.2 fails here with an AttributeError (it reads `in_features` off the base).
                return Err(
                    ctx.unsupported(PEFT_TYPE, "BD-LoRA adapts nn.Linear layers, not transformers' Conv1D")
                );
            }
            Some(Variant::BdLora) => crate::bdlora::BlockDiagonal::for_module(
                config,
                ctx.module_name,
                r,
                in_features,
                out_features,
            )?,
            _ => None,
        };
        if config.lora_bias && block_diagonal.as_ref().is_some_and(|bd| bd.side == crate::bdlora::Side::B) {
            return Err(PeftError::Invalid(format!(
                "`{}`: lora_bias=True cannot be combined with a block-diagonal lora_B (PEFT's block-diagonal layer has \
                 no bias, so the bias would silently be dropped)",
                ctx.module_name
            )));
        }
        let (mut a, mut b, mut b_bias) = Self::draw(&kind, r, in_features, out_features, config.lora_bias)?;
        let scaling = config.scaling_for(r, lora_alpha);
        match &scheme {
            Scheme::Keep => {}
            Scheme::Reset { gaussian } => init::reset(&kind, *gaussian, r, &mut a, &mut b, b_bias.as_mut())?,
            Scheme::Eva => peft_core::init::zeros_(&mut b)?,
            Scheme::Corda => {
                let eigens = match &config.init_data {
                    crate::config::InitData::Corda(e) => {
                        e.lock().ok().and_then(|mut e| e.remove(ctx.module_name))
                    }
                    _ => None,
                };
                let (Some(eigens), Some(lin)) = (eigens, ctx.base.as_linear()) else {
                    return Err(PeftError::Invalid(format!(
                        "`{}`: no CorDA decomposition, please run `peft_lora::corda::preprocess_corda` first and pass \
                         its result in `LoraConfig::init_data`",
                        ctx.module_name
                    )));
                };
                let (na, nb, residual) =
                    crate::corda::init_from_eigens(&eigens, &lin.weight(), lin.fan_in_fan_out(), scaling)?;
                a = na;
                b = nb;
                match ctx.base.as_weighted_mut() {
                    Some(w) => w.set_weight(&residual)?,
                    None => return Err(PeftError::Invalid("CorDA needs a base weight".into())),
                }
            }
            Scheme::LoraGa => {
                let grad = match &config.init_data {
                    crate::config::InitData::LoraGa(g) => {
                        g.lock().ok().and_then(|mut g| g.remove(ctx.module_name))
                    }
                    _ => None,
                };
                match (grad, ctx.base.as_linear()) {
                    (Some(grad), Some(lin)) => {
                        let ga = crate::loraga::LoraGaConfig::from_config(config)?;
                        let (na, nb, residual) = crate::loraga::init_from_gradient(
                            &grad,
                            &lin.weight(),
                            lin.fan_in_fan_out(),
                            r,
                            scaling,
                            &ga,
                        )?;
                        a = na;
                        b = nb;
                        match ctx.base.as_weighted_mut() {
                            Some(w) => w.set_weight(&residual)?,
                            None => return Err(PeftError::Invalid("LoRA-GA needs a base weight".into())),
                        }
                    }
                    _ => init::reset(&kind, false, r, &mut a, &mut b, b_bias.as_mut())?,
                }
            }
            other => {
                if let Some((na, nb)) =
                    init::apply(other, &kind, ctx.base, r, scaling, in_features, out_features)?
                {
                    a = na;
                    b = nb;
                }
            }
        }
        // Variant init (after the LoRA init, as PEFT's update_layer): a block-diagonal factor is redrawn.
        if let Some(bd) = &block_diagonal {
            match bd.side {
                crate::bdlora::Side::A => a = bd.draw(in_features, r)?,
                crate::bdlora::Side::B => b = bd.draw(r, out_features)?,
            }
        }
        // _move_adapter_to_device_of_base_layer, then autocast_adapter_dtype.
        let target_kind = match base_kind {
            Kind::Half | Kind::BFloat16 | Kind::Float | Kind::Double => base_kind,
            _ => Kind::Float,
        };
        let final_kind = match target_kind {
            Kind::Half | Kind::BFloat16 if ctx.autocast_adapter_dtype => Kind::Float,
            k => k,
        };
        let place = |t: Tensor| -> Result<Tensor> {
            t.f_to_device(device)
                .and_then(|t| t.f_to_kind(target_kind))
                .and_then(|t| t.f_to_kind(final_kind))
                .map_err(PeftError::torch("moving LoRA weights to the base layer's device"))
        };
        let adapter = ctx.adapter_name.to_string();
        let (lora_a, lora_b, lora_b_bias) = match &kind {
            LoraKind::Embedding { .. } => {
                let a = (&ctx.path / "lora_embedding_A").add(&adapter, place(a)?, true);
                let b = (&ctx.path / "lora_embedding_B").add(&adapter, place(b)?, true);
                (a, b, None)
            }
            _ => {
                let pa = &ctx.path / "lora_A" / &adapter;
                let pb = &ctx.path / "lora_B" / &adapter;
                let a = pa.add("weight", place(a)?, true);
                let b_t = pb.add("weight", place(b)?, true);
                let bb = match b_bias.take() {
                    Some(bb) => Some(pb.add("bias", place(bb)?, true)),
                    None => None,
                };
                (a, b_t, bb)
            }
        };
        let mut layer = Self {
            adapter,
            module: ctx.module_name.to_string(),
            kind,
            r,
            lora_alpha,
            use_rslora: config.use_rslora,
            scaling,
            dropout: config.lora_dropout,
            lora_a,
            lora_b,
            lora_b_bias,
            dora: None,
            frozen_b,
            alora: variant == Some(Variant::Alora),
            kasa_diag: None,
            block_diagonal,
            variant,
            velora: None,
            monteclora: None,
            arrow: (variant == Some(Variant::Arrow)).then(|| crate::arrow::Arrow::from_config(config)),
            version: 0,
            in_features,
            out_features,
        };
        if kasa {
            // `lora_diag` ~ N(0, 1) on A's device and dtype (B is zero, so the update starts at zero), then the
            // base keeps only its largest min(in, out) − r singular components.
            let diag = Tensor::f_randn([r], (layer.lora_a.kind(), layer.lora_a.device()))
                .map_err(PeftError::torch("initialising lora_diag"))?;
            layer.kasa_diag = Some((&ctx.path / "lora_diag").add(&layer.adapter, diag, true));
            crate::kasa::truncate_base(ctx.base, r)?;
        }
        if variant == Some(Variant::Velora) {
            let (state, embed) = crate::velora::Velora::create(config, in_features, (target_kind, device))?;
            let embed = (&ctx.path / "lora_velora_embed").add(&layer.adapter, embed, false);
            layer.velora = Some(state.with_embed(embed));
        }
        if variant == Some(Variant::MonteClora) {
            let (c, [std, ewp, var, ew], buffer) =
                crate::monteclora::MonteClora::create(config, in_features, r, (target_kind, device))?;
            let p = &ctx.path / "lora_monteclora_sampler" / &layer.adapter;
            let tensors = [
                p.add("std_prior", place(std)?, true),
                p.add("expert_weights_prior", place(ewp)?, true),
                p.add("gaussian_var_prior", var, false),
                p.add("expert_weights", ew, false),
            ];
            layer.monteclora = Some(crate::monteclora::MonteClora::new(c, tensors, buffer));
        }
        if config.use_dora {
            let magnitude = Dora::initial_magnitude(&layer, ctx.base)?;
            let path = &ctx.path / "lora_magnitude_vector" / &layer.adapter;
            layer.dora = Some(Dora::new(path.add("weight", magnitude, true)));
        }
        Ok(layer)
    }

    /// The layer class, features, weight and whether the base has a bias; corrects `fan_in_fan_out` as
    /// PEFT's `dispatch_default` does.
    fn inspect_base(
        config: &mut LoraConfig,
        ctx: &mut LayerInit<'_, '_>,
    ) -> Result<(LoraKind, i64, i64, Tensor, bool)> {
        if let Some(lin) = ctx.base.as_linear() {
            let base_fifo = lin.fan_in_fan_out();
            let out = (
                LoraKind::Linear { fan_in_fan_out: base_fifo },
                lin.in_features(),
                lin.out_features(),
                lin.weight(),
                lin.bias().is_some(),
            );
            ctx.match_fan_in_fan_out(&mut config.fan_in_fan_out, base_fifo);
            return Ok(out);
        }
        if let Some(emb) = ctx.base.as_embedding() {
            return Ok((
                LoraKind::Embedding { padding_idx: emb.padding_idx(), embed_scale: emb.embed_scale() },
                emb.num_embeddings(),
                emb.embedding_dim(),
                emb.weight(),
                false,
            ));
        }
        if let Some(conv) = ctx.base.as_conv() {
            return Ok((
                LoraKind::Conv { geometry: conv.geometry().clone() },
                conv.in_channels(),
                conv.out_channels(),
                conv.weight(),
                conv.bias().is_some(),
            ));
        }
        Err(ctx.unsupported(
            PEFT_TYPE,
            "LoRA adapts torch.nn.Linear, torch.nn.Embedding, torch.nn.Conv1d/2d/3d and transformers' Conv1D",
        ))
    }

    /// The module constructors' draws: `nn.Linear(in, r)` + `nn.Linear(r, out)`, `torch.randn` twice for
    /// embeddings, `ConvNd(in, r, kernel)` + `ConvNd(r, out, 1…, groups)` for convolutions.
    fn draw(
        kind: &LoraKind,
        r: i64,
        in_features: i64,
        out_features: i64,
        lora_bias: bool,
    ) -> Result<(Tensor, Tensor, Option<Tensor>)> {
        let sqrt5 = 5f64.sqrt();
        let (a_shape, b_shape) = match kind {
            LoraKind::Linear { .. } => (vec![r, in_features], vec![out_features, r]),
            LoraKind::Embedding { .. } => {
                let mut a = alloc(&[r, in_features])?;
                peft_core::init::normal_(&mut a, 0.0, 1.0)?;
                let mut b = alloc(&[out_features, r])?;
                peft_core::init::normal_(&mut b, 0.0, 1.0)?;
                return Ok((a, b, None));
            }
            LoraKind::Conv { geometry } => {
                let mut a = vec![r, in_features];
                a.extend(&geometry.kernel_size);
                let mut b = vec![out_features, r / geometry.groups];
                b.extend(std::iter::repeat_n(1, geometry.dims()));
                (a, b)
            }
        };
        let mut a = alloc(&a_shape)?;
        peft_core::init::kaiming_uniform_(&mut a, sqrt5)?;
        let mut b = alloc(&b_shape)?;
        peft_core::init::kaiming_uniform_(&mut b, sqrt5)?;
        let b_bias = if lora_bias {
            let mut bb = alloc(&[out_features])?;
            peft_core::init::bias_uniform_(&mut bb, peft_core::init::fan_in(&b))?;
            Some(bb)
        } else {
            None
        };
        Ok((a, b, b_bias))
    }

    /// The adapter's name.
    pub fn adapter_name(&self) -> &str {
        &self.adapter
    }

    /// The PEFT module name of the layer.
    pub fn module_name(&self) -> &str {
        &self.module
    }

    /// `(in, out)` features: input/output features, vocabulary/embedding width, or channels.
    pub fn features(&self) -> (i64, i64) {
        (self.in_features, self.out_features)
    }

    /// PEFT's `get_delta_weight`: the update to the base weight in its layout, scaling included. On the
    /// CPU, fp16/bf16 adapters are multiplied in fp32 and the result cast back.
    ///
    /// # Errors
    /// A libtorch failure (or a conv geometry PEFT's formula cannot handle).
    pub fn delta_weight(&self) -> Result<Tensor> {
        let kind = match self.kind {
            LoraKind::Linear { .. } => self.lora_b.kind(),
            _ => self.lora_a.kind(),
        };
        let cast = self.lora_b.device() == Device::Cpu && matches!(kind, Kind::Half | Kind::BFloat16);
        let f = || -> TchResult<Tensor> {
            let (a, b) = if cast {
                (self.lora_a.f_to_kind(Kind::Float)?, self.lora_b.f_to_kind(Kind::Float)?)
            } else {
                (self.lora_a.shallow_clone(), self.lora_b.shallow_clone())
            };
            let d = match &self.kind {
                LoraKind::Linear { fan_in_fan_out } => {
                    let (a, b) = match &self.block_diagonal {
                        Some(bd) if bd.side == crate::bdlora::Side::A => (bd.dense(&a)?, b),
                        Some(bd) => (a, bd.dense(&b)?),
                        None => (a, b),
                    };
                    let b = match &self.kasa_diag {
                        Some(d) => {
                            b.f_mul(&if cast { d.f_to_kind(Kind::Float)? } else { d.shallow_clone() })?
                        }
                        None => b,
                    };
                    transpose(&b.f_matmul(&a)?, *fan_in_fan_out)?.f_mul_scalar(self.scaling)?
                }
                LoraKind::Embedding { .. } => b.f_matmul(&a)?.f_tr()?.f_mul_scalar(self.scaling)?,
                LoraKind::Conv { geometry } => {
                    let ws = a.size();
                    if ws.len() >= 4 && ws[2] == 1 && ws[3] == 1 {
                        // 1×1 kernels: a plain matrix product.
                        let b2 = b.f_squeeze_dim(3)?.f_squeeze_dim(2)?;
                        let a2 = a.f_squeeze_dim(3)?.f_squeeze_dim(2)?;
                        b2.f_matmul(&a2)?.f_unsqueeze(2)?.f_unsqueeze(3)?.f_mul_scalar(self.scaling)?
                    } else {
                        let dims = geometry.dims();
                        let ones = vec![1i64; dims];
                        let zeros = vec![0i64; dims];
                        let out = peft_core::layer::conv_nd(
                            &a.f_transpose(0, 1)?,
                            &b,
                            None,
                            &ones,
                            &zeros,
                            &ones,
                            1,
                        )?;
                        if geometry.groups > 1 {
                            out.f_mul_scalar(self.scaling)?
                        } else {
                            out.f_transpose(0, 1)?.f_mul_scalar(self.scaling)?
                        }
                    }
                }
            };
            if cast {
                d.f_to_kind(kind)
            } else {
                Ok(d)
            }
        };
        tch::no_grad(f).map_err(PeftError::torch("computing the LoRA delta weight"))
    }

    fn bias_delta(&self) -> Result<Option<Tensor>> {
        match &self.lora_b_bias {
            Some(bb) => tch::no_grad(|| bb.f_mul_scalar(self.scaling))
                .map(Some)
                .map_err(PeftError::torch("computing the LoRA bias delta")),
            None => Ok(None),
        }
    }

    /// `B(A(x))` without scaling: the low-rank path of the layer class.
    pub(crate) fn lora_path(&self, x: &Tensor) -> Tensor {
        match &self.kind {
            LoraKind::Linear { .. } => {
                let after_a = match &self.block_diagonal {
                    Some(bd) if bd.side == crate::bdlora::Side::A => bd.apply(x, &self.lora_a),
                    _ => x.linear::<&Tensor>(&self.lora_a, None),
                };
                let after_a = match &self.kasa_diag {
                    Some(d) => after_a * d,
                    None => after_a,
                };
                match &self.block_diagonal {
                    Some(bd) if bd.side == crate::bdlora::Side::B => bd.apply(&after_a, &self.lora_b),
                    _ => after_a.linear(&self.lora_b, self.lora_b_bias.as_ref()),
                }
            }
            LoraKind::Embedding { padding_idx, .. } => {
                let after_a =
                    Tensor::embedding(&self.lora_a.tr(), x, padding_idx.unwrap_or(-1), false, false);
                after_a.matmul(&self.lora_b.tr())
            }
            LoraKind::Conv { geometry } => {
                let dims = geometry.dims();
                let ones = vec![1i64; dims];
                let zeros = vec![0i64; dims];
                let h = conv_nd_t(x, &self.lora_a, None, &geometry.stride, &geometry.padding, &ones, 1);
                conv_nd_t(&h, &self.lora_b, self.lora_b_bias.as_ref(), &ones, &zeros, &ones, geometry.groups)
            }
        }
    }

    /// A linear adapter whose update is exactly `B·A` (no bias, KaSA diagonal or block layout).
    pub(crate) fn plain_linear(&self) -> bool {
        matches!(self.kind, LoraKind::Linear { .. })
            && self.lora_b_bias.is_none()
            && self.kasa_diag.is_none()
            && self.block_diagonal.is_none()
    }

    /// Whether a mixed batch must take this adapter's own forward (variants whose computation the
    /// stacked factors cannot express).
    pub(crate) fn needs_own_path(&self, train: bool) -> bool {
        match self.variant {
            None | Some(Variant::Mica) => false,
            Some(Variant::Velora | Variant::MonteClora) => train,
            Some(_) => true,
        }
    }

    /// The input as the adapter sees it: cast to the adapter dtype (not for embedding ids).
    pub(crate) fn cast_input(&self, x: &Tensor) -> Tensor {
        match self.kind {
            LoraKind::Embedding { .. } => x.shallow_clone(),
            _ if x.kind() != self.lora_a.kind() => x.to_kind(self.lora_a.kind()),
            _ => x.shallow_clone(),
        }
    }

    /// Activated LoRA (PEFT's `ALoraLinearVariant.forward`): the update only on each row's last `offset`
    /// positions; no offsets at all means none.
    fn alora_forward(&self, x: &Tensor, y: Tensor, ctx: &ForwardCtx<'_>) -> Tensor {
        let shape = y.size();
        let rows = shape[0];
        let t = if shape.len() == 3 { shape[1] } else { 1 };
        let d = *shape.last().unwrap_or(&1);
        let dx = *x.size().last().unwrap_or(&1);
        let dev = y.device();
        let mask = match ctx.alora_offsets {
            None => Tensor::zeros([rows, t], (Kind::Bool, dev)),
            Some(offsets) => {
                let clipped: Vec<i64> = (0..rows as usize)
                    .map(|i| offsets.get(i).copied().flatten().unwrap_or(0).min(t))
                    .collect();
                let off = Tensor::from_slice(&clipped).to_device(dev);
                let pos = Tensor::arange(t, (Kind::Int64, dev)).unsqueeze(0);
                pos.ge_tensor(&(-off + t).unsqueeze(1))
            }
        };
        let x_flat = x.reshape([-1, dx]);
        let res_flat = y.reshape([-1, d]);
        let mask_flat = mask.reshape([-1]);
        let sel = x_flat.index(&[Some(&mask_flat)]);
        let sel = if self.dropout > 0.0 && ctx.train { sel.dropout(self.dropout, true) } else { sel };
        let update = res_flat.index(&[Some(&mask_flat)]) + self.lora_path(&sel) * self.scaling;
        res_flat.index_put(&[Some(&mask_flat)], &update, false).reshape(shape.as_slice())
    }

    /// The convolution groups (1 for other layers).
    fn groups(&self) -> i64 {
        match &self.kind {
            LoraKind::Conv { geometry } => geometry.groups,
            _ => 1,
        }
    }

    /// Copies the rows of `src` (rank `src.size(0)`) into `dst` (allocated rank `allocated`): the first
    /// rows, or for grouped convolutions the first rows of each group's block (B reads its group's block).
    fn place_rows(&self, dst: &Tensor, src: &Tensor, allocated: i64) -> TchResult<()> {
        let g = self.groups();
        let src_rank = src.size()[0];
        if g == 1 {
            return dst.f_narrow(0, 0, src_rank)?.f_copy_(src).map(drop);
        }
        let (dst_block, src_block) = (allocated / g, src_rank / g);
        for k in 0..g {
            dst.f_narrow(0, k * dst_block, src_block)?.f_copy_(&src.f_narrow(
                0,
                k * src_block,
                src_block,
            )?)?;
        }
        Ok(())
    }

    /// The rows of a padded A that hold the adapter in use (a view, or a copy for grouped convolutions).
    fn rows_in_use(&self, a: &Tensor, allocated: i64) -> Tensor {
        let g = self.groups();
        if g == 1 {
            return a.narrow(0, 0, self.r);
        }
        let (block, used) = (allocated / g, self.r / g);
        let parts: Vec<Tensor> = (0..g).map(|k| a.narrow(0, k * block, used)).collect();
        Tensor::cat(&parts, 0)
    }

    /// Recomputes `scaling` from `r`, `lora_alpha` and rsLoRA, times `scale` (PEFT's `set_scale`).
    pub fn set_scale(&mut self, scale: f64) {
        let base = if self.use_rslora {
            self.lora_alpha / (self.r as f64).sqrt()
        } else {
            self.lora_alpha / self.r as f64
        };
        self.scaling = scale * base;
        self.version += 1;
        if let Some(d) = &self.dora {
            d.clear_cache();
        }
    }

    /// `W ± s·B·A` accumulated into the base weight by one matrix product, without materialising the
    /// full-size delta twice as `W += (B·A)·s` does (PEFT's merge); `false` when this layer needs the
    /// general path (another update shape, mixed dtypes, fp16/bf16 on the CPU where PEFT multiplies in
    /// fp32).
    fn accumulate_into_weight(&self, base: &mut dyn BaseLayer, sign: f64) -> Result<bool> {
        let LoraKind::Linear { fan_in_fan_out } = self.kind else { return Ok(false) };
        if !self.plain_linear() || !self.weighted(base)?.weight_is_storage() {
            return Ok(false);
        }
        let w = self.weighted(base)?.weight();
        let reduced_on_cpu = w.device() == Device::Cpu && matches!(w.kind(), Kind::Half | Kind::BFloat16);
        if w.kind() != self.lora_b.kind() || w.device() != self.lora_b.device() || reduced_on_cpu {
            return Ok(false);
        }
        let f = || -> TchResult<()> {
            let bs = self.lora_b.f_mul_scalar(sign * self.scaling)?;
            let mut w = w.shallow_clone();
            if fan_in_fan_out {
                let _ = w.f_addmm_(&self.lora_a.f_tr()?, &bs.f_tr()?)?;
            } else {
                let _ = w.f_addmm_(&bs, &self.lora_a)?;
            }
            Ok(())
        };
        tch::no_grad(f).map_err(PeftError::torch("merging a LoRA adapter"))?;
        Ok(true)
    }

    fn weighted<'a>(&self, base: &'a mut dyn BaseLayer) -> Result<&'a mut dyn WeightLike> {
        let kind = base.kind();
        base.as_weighted_mut().ok_or_else(|| PeftError::Invalid(format!("LoRA adapter on a {kind} base")))
    }

    fn non_finite(&self) -> PeftError {
        PeftError::NonFiniteMerge { adapter: self.adapter.clone(), module: self.module.clone() }
    }

    /// The merged weight for DoRA (`dora_factor · (W + ΔW)`), recording the weight norm for unmerging.
    fn dora_merged_weight(
        &mut self,
        weight: &Tensor,
        reference: Option<&Tensor>,
        delta: &Tensor,
    ) -> Result<Tensor> {
        let Some(dora) = self.dora.as_mut() else {
            return Err(PeftError::Invalid("DoRA merge without DoRA".into()));
        };
        let reference = reference.map(Tensor::shallow_clone).unwrap_or_else(|| weight.shallow_clone());
        dora.merged_weight(&self.kind, weight, &reference, delta)
    }
}

impl TunerLayer for LoraLayer {
    fn peft_type(&self) -> &'static str {
        PEFT_TYPE
    }

    fn named_tensors(&self) -> Vec<(String, Tensor)> {
        let (a, b, bias) = self.kind.tensor_names(&self.adapter);
        let mut v = vec![(a, self.lora_a.shallow_clone()), (b, self.lora_b.shallow_clone())];
        if let Some(bb) = &self.lora_b_bias {
            v.push((bias, bb.shallow_clone()));
        }
        if let Some(d) = &self.dora {
            v.push((format!("lora_magnitude_vector.{}.weight", self.adapter), d.magnitude.shallow_clone()));
        }
        if let Some(d) = &self.kasa_diag {
            v.push((format!("lora_diag.{}", self.adapter), d.shallow_clone()));
        }
        if let Some(vl) = &self.velora {
            v.push((format!("lora_velora_embed.{}", self.adapter), vl.embed.shallow_clone()));
        }
        if let Some(mc) = &self.monteclora {
            let p = format!("lora_monteclora_sampler.{}", self.adapter);
            v.push((format!("{p}.std_prior"), mc.std_prior.shallow_clone()));
            v.push((format!("{p}.expert_weights_prior"), mc.expert_weights_prior.shallow_clone()));
            v.push((format!("{p}.gaussian_var_prior"), mc.gaussian_var_prior.shallow_clone()));
            v.push((format!("{p}.expert_weights"), mc.expert_weights.shallow_clone()));
        }
        v
    }

    fn is_buffer(&self, name: &str) -> bool {
        name.starts_with("lora_velora_embed.")
            || (name.starts_with("lora_monteclora_sampler.")
                && (name.ends_with(".gaussian_var_prior") || name.ends_with(".expert_weights")))
    }

    fn is_trainable_tensor(&self, name: &str) -> bool {
        if self.is_buffer(name) {
            return false;
        }
        !(self.frozen_b && (name.starts_with("lora_B.") || name.starts_with("lora_embedding_B.")))
    }

    fn checkpoint_key(&self, key: &str, adapter: &str) -> String {
        // DoRA's magnitude is saved without its `.weight` suffix (PEFT keeps the pre-refactor format).
        let dora_suffix = format!("lora_magnitude_vector.{adapter}.weight");
        if let Some(head) = key.strip_suffix(&dora_suffix) {
            return format!("{head}lora_magnitude_vector");
        }
        peft_core::peft_config::keys::remove_adapter_name(key, adapter)
    }

    fn transform_output(&self, base: &dyn BaseLayer, x: &Tensor, y: Tensor, ctx: &ForwardCtx<'_>) -> Tensor {
        let x = self.cast_input(x);
        if let Some(dora) = &self.dora {
            return dora.forward(self, base, &x, y, ctx);
        }
        if self.alora {
            return self.alora_forward(&x, y, ctx);
        }
        if let Some(arrow) = &self.arrow {
            // The router adds the routed mixture of the layer's task adapters (none: nothing).
            let delta = ctx.siblings.and_then(|s| arrow.forward(&x, s, self.dropout, ctx.train));
            return match delta {
                Some(d) => y + d,
                None => y,
            };
        }
        if let Some(velora) = self.velora.as_ref().filter(|_| ctx.train && peft_core::layer::grad_enabled()) {
            let x = if self.dropout > 0.0 { x.dropout(self.dropout, true) } else { x };
            let after_a = velora.linear(&x, &self.lora_a);
            return y + after_a.linear(&self.lora_b, self.lora_b_bias.as_ref()) * self.scaling;
        }
        if let Some(mc) = self.monteclora.as_ref().filter(|_| ctx.train) {
            let x = if self.dropout > 0.0 { x.dropout(self.dropout, true) } else { x };
            let after_a = x.linear::<&Tensor>(&mc.perturbed_a(&self.lora_a), None);
            return y + after_a.linear(&self.lora_b, self.lora_b_bias.as_ref()) * self.scaling;
        }
        let x = match self.kind {
            LoraKind::Embedding { .. } => x,
            _ if self.dropout > 0.0 && ctx.train => x.dropout(self.dropout, true),
            _ => x,
        };
        if self.plain_linear() {
            if let Some(out) = add_low_rank_in_place(&x, &self.lora_a, &(&self.lora_b * self.scaling), &y) {
                return out;
            }
        }
        let mut h = self.lora_path(&x) * self.scaling;
        if let LoraKind::Embedding { embed_scale: Some(s), .. } = self.kind {
            h = &h * Tensor::from(s).to_kind(h.kind());
        }
        y + h
    }

    fn merge(&mut self, base: &mut dyn BaseLayer, ctx: &MergeCtx<'_>) -> Result<()> {
        if self.arrow.is_some() {
            return Err(PeftError::Invalid(format!(
                "Cannot merge an active Arrow router adapter (`{}` on `{}`). Remove it first.",
                self.adapter, self.module
            )));
        }
        if self.alora {
            return Err(PeftError::Invalid(format!(
                "aLoRA does not support merging (adapter `{}` on `{}`)",
                self.adapter, self.module
            )));
        }
        if let LoraKind::Conv { geometry } = &self.kind {
            if geometry.groups > 1 {
                return Err(PeftError::Invalid(format!(
                    "merging is not supported for {} layers with groups > 1 (`{}`), as in PEFT",
                    self.kind.class_name(),
                    self.module
                )));
            }
        }
        if !ctx.safe && self.dora.is_none() && self.accumulate_into_weight(base, 1.0)? {
            return Ok(());
        }
        let delta = self.delta_weight()?;
        let bias_delta = self.bias_delta()?;
        let weight = self.weighted(base)?.weight();
        let base_bias = self.weighted(base)?.bias();
        if bias_delta.is_some() && base_bias.is_none() {
            return Err(PeftError::Invalid(
                "Impossible to merge LoRA with `lora_bias=True` because the base layer has no bias.".into(),
            ));
        }
        let kind = weight.kind();
        let torch = PeftError::torch("merging a LoRA adapter");
        let merged = if self.dora.is_some() {
            self.dora_merged_weight(&weight, ctx.unmerged_base_weight, &delta)?
        } else if ctx.safe {
            tch::no_grad(|| weight.f_add(&delta.f_to_kind(kind)?)).map_err(torch)?
        } else {
            let mut w = weight.shallow_clone();
            let delta = if matches!(self.kind, LoraKind::Linear { .. } | LoraKind::Conv { .. }) {
                delta
            } else {
                delta.f_to_kind(kind).map_err(PeftError::torch("merging a LoRA adapter"))?
            };
            tch::no_grad(|| w.f_add_(&delta))
                .map(drop)
                .map_err(PeftError::torch("merging a LoRA adapter"))?;
            w
        };
        let new_bias = match (&base_bias, &bias_delta) {
            (Some(b), Some(d)) => {
                Some(tch::no_grad(|| b.f_add(d)).map_err(PeftError::torch("merging a LoRA bias"))?)
            }
            _ => None,
        };
        if ctx.safe {
            if !all_finite(&merged)? {
                return Err(self.non_finite());
            }
            if let Some(nb) = &new_bias {
                if !all_finite(nb)? {
                    return Err(self.non_finite());
                }
            }
        }
        self.weighted(base)?.set_weight(&merged)?;
        if let (Some(mut b), Some(nb)) = (base_bias, new_bias) {
            tch::no_grad(|| b.f_copy_(&nb)).map_err(PeftError::torch("writing a merged bias"))?;
        }
        if let Some(d) = &self.dora {
            d.clear_cache();
        }
        Ok(())
    }

    fn merge_needs_unmerged_base(&self) -> bool {
        self.dora.is_some()
    }

    fn unmerge(&mut self, base: &mut dyn BaseLayer) -> Result<()> {
        if self.dora.is_none() && self.accumulate_into_weight(base, -1.0)? {
            return Ok(());
        }
        let delta = self.delta_weight()?;
        let bias_delta = self.bias_delta()?;
        let w = self.weighted(base)?.weight();
        let kind = w.kind();
        let restored = match self.dora.as_mut() {
            Some(dora) => dora.unmerged_weight(&self.kind, &w, &delta)?,
            None => {
                let mut w = w.shallow_clone();
                tch::no_grad(|| delta.f_to_kind(kind).and_then(|d| w.f_sub_(&d)).map(drop))
                    .map_err(PeftError::torch("unmerging a LoRA adapter"))?;
                w
            }
        };
        let lin = self.weighted(base)?;
        lin.set_weight(&restored)?;
        if let (Some(mut b), Some(d)) = (lin.bias(), bias_delta) {
            tch::no_grad(|| b.f_sub_(&d)).map(drop).map_err(PeftError::torch("unmerging a LoRA bias"))?;
        }
        if let Some(d) = &self.dora {
            d.clear_cache();
        }
        Ok(())
    }

    fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let allocated = self.lora_a.size()[0];
        // Padded for hotswapping when A has more rows than the rank in use (PiSSA/OLoRA can leave fewer).
        if allocated <= self.r {
            return self.named_tensors();
        }
        let g = self.groups();
        let (a_name, b_name, _) = self.kind.tensor_names(&self.adapter);
        self.named_tensors()
            .into_iter()
            .map(|(n, t)| {
                let t = if n == a_name {
                    self.rows_in_use(&t, allocated)
                } else if n == b_name {
                    t.narrow(1, 0, self.r / g)
                } else {
                    t
                };
                (n, t)
            })
            .collect()
    }

    fn pad_rank(&mut self, target_rank: i64) -> Result<bool> {
        if self.block_diagonal.is_some() {
            return Err(PeftError::Invalid(format!(
                "`{}`: a BD-LoRA adapter's block-diagonal factor cannot be padded for hotswapping",
                self.module
            )));
        }
        let allocated = self.lora_a.size()[0];
        if target_rank < allocated {
            return Err(PeftError::Invalid(format!(
                "Trying to pad the adapter `{}` on `{}` to the target rank {target_rank}, but its rank is larger \
                 ({allocated}). This is not possible.",
                self.adapter, self.module
            )));
        }
        let g = self.groups();
        if target_rank % g != 0 {
            return Err(PeftError::Invalid(format!(
                "Trying to pad a {} LoRA adapter with groups={g} to target rank {target_rank}, but the target rank is \
                 not divisible by {g}",
                self.kind.class_name()
            )));
        }
        if target_rank == allocated {
            return Ok(true);
        }
        let f = || -> TchResult<(Tensor, Tensor)> {
            let mut a_shape = self.lora_a.size();
            a_shape[0] = target_rank;
            let a = Tensor::f_zeros(a_shape.as_slice(), (self.lora_a.kind(), self.lora_a.device()))?;
            self.place_rows(&a, &self.lora_a, target_rank)?;
            let mut b_shape = self.lora_b.size();
            b_shape[1] = target_rank / g;
            let b = Tensor::f_zeros(b_shape.as_slice(), (self.lora_b.kind(), self.lora_b.device()))?;
            b.f_narrow(1, 0, self.lora_b.size()[1])?.f_copy_(&self.lora_b)?;
            Ok((a, b))
        };
        let (a, b) = tch::no_grad(f).map_err(PeftError::torch("padding LoRA weights"))?;
        // set_data keeps the tensors' identity: the var store and every shallow clone see the padding.
        self.lora_a.f_set_data(&a).map_err(PeftError::torch("padding LoRA A"))?;
        self.lora_b.f_set_data(&b).map_err(PeftError::torch("padding LoRA B"))?;
        self.version += 1;
        Ok(true)
    }

    fn hotswap_check(&self, tensors: &std::collections::BTreeMap<String, Tensor>) -> Result<()> {
        let mine: std::collections::BTreeMap<String, Tensor> = self.named_tensors().into_iter().collect();
        let (a_name, _, _) = self.kind.tensor_names(&self.adapter);
        for (k, t) in tensors {
            let Some(m) = mine.get(k) else {
                return Err(PeftError::Invalid(format!(
                    "hotswap: the loaded adapter has `{k}` on `{}`, which the current one does not",
                    self.module
                )));
            };
            let (ms, ts) = (m.size(), t.size());
            let fits = ms.len() == ts.len() && ms.iter().zip(&ts).all(|(a, b)| b <= a);
            if !fits {
                return Err(PeftError::Invalid(format!(
                    "hotswap: `{}.{k}` is allocated as {ms:?} but the loaded adapter has {ts:?}; pad the adapter to \
                     the largest rank first (`prepare_for_hotswap`)",
                    self.module
                )));
            }
            if k == &a_name && self.groups() > 1 && ts[0] % self.groups() != 0 {
                return Err(PeftError::Invalid(format!(
                    "hotswap: rank {} of `{}.{k}` is not divisible by the convolution's groups",
                    ts[0], self.module
                )));
            }
        }
        Ok(())
    }

    fn hotswap(
        &mut self,
        tensors: &std::collections::BTreeMap<String, Tensor>,
        config: &dyn peft_core::AdapterConfig,
    ) -> Result<()> {
        self.hotswap_check(tensors)?;
        let config = config
            .as_any()
            .downcast_ref::<LoraConfig>()
            .ok_or_else(|| PeftError::Invalid("hotswapping a LoRA adapter needs a LoRA config".into()))?;
        let (r, alpha) = config.rank_and_alpha(&self.module)?;
        let (a_name, b_name, bias_name) = self.kind.tensor_names(&self.adapter);
        let new_r = tensors.get(&a_name).map(|a| a.size()[0]).unwrap_or(r);
        let allocated = self.lora_a.size()[0];
        // Zero what the new tensors will not overwrite (padding rows, or a factor the file lacks); a same-size
        // swap just overwrites.
        let covers = |dst: &Tensor, name: &str| tensors.get(name).is_some_and(|t| t.size() == dst.size());
        let (full_a, full_b) = (covers(&self.lora_a, &a_name), covers(&self.lora_b, &b_name));
        let f = || -> TchResult<()> {
            if !full_a {
                let _ = self.lora_a.f_zero_()?;
            }
            if !full_b {
                let _ = self.lora_b.f_zero_()?;
            }
            if let Some(a) = tensors.get(&a_name) {
                self.place_rows(&self.lora_a, &a.f_to_kind(self.lora_a.kind())?, allocated)?;
            }
            if let Some(b) = tensors.get(&b_name) {
                self.lora_b.f_narrow(1, 0, b.size()[1])?.f_copy_(b)?;
            }
            if let Some(bb) = &self.lora_b_bias {
                let mut bb = bb.shallow_clone();
                match tensors.get(&bias_name) {
                    Some(src) => bb.f_copy_(src)?,
                    None => drop(bb.f_zero_()?),
                };
            }
            // The variants' own tensors (KaSA's diagonal, VeLoRA's projection, MonteCLoRA's sampler).
            let magnitude = format!("lora_magnitude_vector.{}.weight", self.adapter);
            for (name, t) in self.named_tensors() {
                if [&a_name, &b_name, &bias_name, &magnitude].contains(&&name) {
                    continue;
                }
                if let Some(src) = tensors.get(&name) {
                    t.shallow_clone().f_copy_(src)?;
                }
            }
            if let Some(d) = &self.dora {
                let mut m = d.magnitude.shallow_clone();
                match tensors.get(&format!("lora_magnitude_vector.{}.weight", self.adapter)) {
                    Some(src) => m.f_copy_(src)?,
                    None => drop(m.f_zero_()?),
                };
            }
            Ok(())
        };
        tch::no_grad(f).map_err(PeftError::torch("hotswapping LoRA weights"))?;
        self.r = new_r;
        self.lora_alpha = alpha;
        self.use_rslora = config.use_rslora;
        self.dropout = config.lora_dropout;
        self.scaling = config.scaling_for(r, alpha);
        self.version += 1;
        if let Some(d) = &self.dora {
            d.clear_cache();
        }
        Ok(())
    }

    fn mixed_batch_output(
        &self,
        _base: &dyn BaseLayer,
        x: &Tensor,
        y: &Tensor,
        group: &[&dyn TunerLayer],
        index: &Tensor,
        cache: &peft_core::mixed::MixedCache,
        ctx: &ForwardCtx<'_>,
    ) -> Option<Tensor> {
        crate::mixed::output(self, x, y, group, index, cache, ctx)
    }

    fn weights_changed(&mut self) {
        self.version += 1;
        if let Some(d) = &self.dora {
            d.clear_cache();
        }
    }

    fn describe(&self) -> String {
        format!(
            "lora.{}(in_features={}, out_features={}, r={}, lora_alpha={}, scaling={}{})",
            self.kind.class_name(),
            self.in_features,
            self.out_features,
            self.r,
            self.lora_alpha,
            self.scaling,
            if self.dora.is_some() { ", use_dora=True" } else { "" }
        )
    }
}
