//! [`LoraLayer::create`]: PEFT's `update_layer` of the matching layer class, step by step — read the
//! base, refuse what PEFT refuses, draw the factors as the module constructors do, apply the init
//! scheme, place the factors on the base's device and dtype, then set up the variant. The steps keep
//! PEFT's order: the random draws and the errors come in the same sequence.

use super::{alloc, LoraKind, LoraLayer};
use crate::config::{LoraConfig, PEFT_TYPE};
use crate::init::{self, Scheme};
use crate::variant::LoraVariant;
use peft_core::config::LayerInit;
use peft_core::error::{PeftError, Result};
use tch::{Device, Kind, Tensor};

/// Where the adapter's tensors go: the base weight's device and float dtype
/// (`_move_adapter_to_device_of_base_layer`), then fp32 for fp16/bf16 with `autocast_adapter_dtype`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Placement {
    device: Device,
    /// The base weight's dtype if it is a float dtype, else fp32.
    base_kind: Kind,
    /// `base_kind` after `autocast_adapter_dtype`.
    final_kind: Kind,
}

impl Placement {
    fn of(weight: &Tensor, autocast_adapter_dtype: bool) -> Self {
        let base_kind = match weight.kind() {
            k @ (Kind::Half | Kind::BFloat16 | Kind::Float | Kind::Double) => k,
            _ => Kind::Float,
        };
        let final_kind = match base_kind {
            Kind::Half | Kind::BFloat16 if autocast_adapter_dtype => Kind::Float,
            k => k,
        };
        Self { device: weight.device(), base_kind, final_kind }
    }

    /// `t` moved to the base's device and dtype, then autocast.
    pub(crate) fn place(&self, t: Tensor) -> Result<Tensor> {
        t.f_to_device(self.device)
            .and_then(|t| t.f_to_kind(self.base_kind))
            .and_then(|t| t.f_to_kind(self.final_kind))
            .map_err(PeftError::torch("moving LoRA weights to the base layer's device"))
    }

    /// The base's float dtype and device, before autocast (where variants create their own state).
    pub(crate) fn base_options(&self) -> (Kind, Device) {
        (self.base_kind, self.device)
    }
}

/// What the adapter needs from the base.
struct BaseInfo {
    kind: LoraKind,
    /// `(in, out)` features.
    features: (i64, i64),
    placement: Placement,
    has_bias: bool,
}

/// The factors while they are being initialised: fp32 on the CPU, or on the base's device after a
/// weight-derived scheme.
struct Factors {
    a: Tensor,
    b: Tensor,
    bias: Option<Tensor>,
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
        let base = inspect_base(config, ctx)?;
        let (r, lora_alpha) = config.rank_and_alpha(ctx.module_name)?;
        peft_core::config::require_positive("r", r)?;
        check_base(config, ctx, &base, r)?;
        let scheme = resolve_scheme(config, &base.kind)?;
        let tag = crate::variant::resolve(config, &base.kind)?;
        let block_diagonal = crate::variant::check(tag, config, ctx, &base.kind, r, base.features)?;
        let mut factors = Factors::draw(&base.kind, r, base.features, config.lora_bias)?;
        let scaling = config.scaling_for(r, lora_alpha);
        factors.init(&scheme, config, ctx, &base, r, scaling)?;
        // Variant init (after the LoRA init, as PEFT's update_layer): a block-diagonal factor is redrawn.
        if let Some(bd) = &block_diagonal {
            bd.redraw(&mut factors.a, &mut factors.b, r, base.features)?;
        }
        let (lora_a, lora_b, lora_b_bias) = factors.register(&base.kind, ctx, &base.placement)?;
        let mut layer = Self {
            adapter: ctx.adapter_name.to_string(),
            module: ctx.module_name.to_string(),
            kind: base.kind,
            r,
            lora_alpha,
            use_rslora: config.use_rslora,
            scaling,
            dropout: config.lora_dropout,
            lora_a,
            lora_b,
            lora_b_bias,
            // Set below: the variants' init reads the finished factors.
            variant: LoraVariant::Plain,
            version: 0,
            in_features: base.features.0,
            out_features: base.features.1,
        };
        layer.variant = LoraVariant::init(tag, block_diagonal, &layer, config, ctx, &base.placement)?;
        Ok(layer)
    }
}

/// The layer class, features, placement and whether the base has a bias; corrects `fan_in_fan_out` as
/// PEFT's `dispatch_default` does.
fn inspect_base(config: &mut LoraConfig, ctx: &mut LayerInit<'_, '_>) -> Result<BaseInfo> {
    let autocast = ctx.autocast_adapter_dtype;
    if let Some(lin) = ctx.base.as_linear() {
        let base_fifo = lin.fan_in_fan_out();
        let info = BaseInfo {
            kind: LoraKind::Linear { fan_in_fan_out: base_fifo },
            features: (lin.in_features(), lin.out_features()),
            placement: Placement::of(&lin.weight(), autocast),
            has_bias: lin.bias().is_some(),
        };
        ctx.match_fan_in_fan_out(&mut config.fan_in_fan_out, base_fifo);
        return Ok(info);
    }
    if let Some(emb) = ctx.base.as_embedding() {
        return Ok(BaseInfo {
            kind: LoraKind::Embedding { padding_idx: emb.padding_idx(), embed_scale: emb.embed_scale() },
            features: (emb.num_embeddings(), emb.embedding_dim()),
            placement: Placement::of(&emb.weight(), autocast),
            has_bias: false,
        });
    }
    if let Some(conv) = ctx.base.as_conv() {
        return Ok(BaseInfo {
            kind: LoraKind::Conv { geometry: conv.geometry().clone() },
            features: (conv.in_channels(), conv.out_channels()),
            placement: Placement::of(&conv.weight(), autocast),
            has_bias: conv.bias().is_some(),
        });
    }
    Err(ctx.unsupported(
        PEFT_TYPE,
        "LoRA adapts torch.nn.Linear, torch.nn.Embedding, torch.nn.Conv1d/2d/3d and transformers' Conv1D",
    ))
}

/// PEFT's checks of the base against the config (and the warnings it gives).
fn check_base(config: &LoraConfig, ctx: &mut LayerInit<'_, '_>, base: &BaseInfo, r: i64) -> Result<()> {
    match &base.kind {
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
                     where the rank is divisible by groups. Either choose a different rank or do not target this \
                     specific layer (`{}`).",
                    base.kind.class_name(),
                    geometry.groups,
                    ctx.module_name
                )));
            }
            if geometry.dilation.iter().any(|&d| d != 1) {
                // PEFT builds lora_A without the base's dilation, so the shapes would not add up in the
                // forward pass; refuse up front instead.
                return Err(ctx.unsupported(
                    PEFT_TYPE,
                    "LoRA's lora_A convolution ignores dilation, so a dilated base cannot be adapted",
                ));
            }
        }
        _ => {}
    }
    if config.lora_bias && !base.has_bias {
        ctx.warn(format!(
            "`lora_bias=True` was passed but the targeted layer `{}` has no bias. This means that merging LoRA \
             weights won't be possible.",
            ctx.module_name
        ));
    }
    Ok(())
}

/// The init scheme of `init_lora_weights` for this layer class; an error for one PEFT does not offer
/// here.
fn resolve_scheme(config: &LoraConfig, kind: &LoraKind) -> Result<Scheme> {
    let scheme = Scheme::resolve(kind, &config.init_lora_weights, &config.loftq_config)?;
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
    Ok(scheme)
}

impl Factors {
    /// The module constructors' draws: `nn.Linear(in, r)` + `nn.Linear(r, out)`, `torch.randn` twice for
    /// embeddings, `ConvNd(in, r, kernel)` + `ConvNd(r, out, 1…, groups)` for convolutions.
    fn draw(
        kind: &LoraKind,
        r: i64,
        (in_features, out_features): (i64, i64),
        lora_bias: bool,
    ) -> Result<Self> {
        let sqrt5 = 5f64.sqrt();
        let (a_shape, b_shape) = match kind {
            LoraKind::Linear { .. } => (vec![r, in_features], vec![out_features, r]),
            LoraKind::Embedding { .. } => {
                let mut a = alloc(&[r, in_features])?;
                peft_core::init::normal_(&mut a, 0.0, 1.0)?;
                let mut b = alloc(&[out_features, r])?;
                peft_core::init::normal_(&mut b, 0.0, 1.0)?;
                return Ok(Self { a, b, bias: None });
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
        let bias = if lora_bias {
            let mut bb = alloc(&[out_features])?;
            peft_core::init::bias_uniform_(&mut bb, peft_core::init::fan_in(&b))?;
            Some(bb)
        } else {
            None
        };
        Ok(Self { a, b, bias })
    }

    /// Applies the init scheme (PEFT's `reset_lora_parameters` or the data- and weight-derived inits,
    /// some of which rewrite the base weight).
    fn init(
        &mut self,
        scheme: &Scheme,
        config: &LoraConfig,
        ctx: &mut LayerInit<'_, '_>,
        base: &BaseInfo,
        r: i64,
        scaling: f64,
    ) -> Result<()> {
        let new = match scheme {
            Scheme::Keep => None,
            Scheme::Reset { gaussian } => {
                init::reset(&base.kind, *gaussian, r, &mut self.a, &mut self.b, self.bias.as_mut())?;
                None
            }
            Scheme::Eva => {
                peft_core::init::zeros_(&mut self.b)?;
                None
            }
            Scheme::Corda => Some(crate::corda::init_layer(config, ctx, scaling)?),
            Scheme::LoraGa => match crate::loraga::init_layer(config, ctx, r, scaling)? {
                Some(ab) => Some(ab),
                None => {
                    init::reset(&base.kind, false, r, &mut self.a, &mut self.b, self.bias.as_mut())?;
                    None
                }
            },
            other => {
                let (in_features, out_features) = base.features;
                init::apply(other, &base.kind, ctx.base, r, scaling, in_features, out_features)?
            }
        };
        if let Some((a, b)) = new {
            self.a = a;
            self.b = b;
        }
        Ok(())
    }

    /// Places the factors ([`Placement::place`]) and registers them as trainable under PEFT's names:
    /// `lora_embedding_A/B.<adapter>` for embeddings, `lora_A/B.<adapter>.weight` (and `lora_B`'s
    /// `bias`) otherwise.
    fn register(
        self,
        kind: &LoraKind,
        ctx: &LayerInit<'_, '_>,
        placement: &Placement,
    ) -> Result<(Tensor, Tensor, Option<Tensor>)> {
        let adapter = ctx.adapter_name;
        if let LoraKind::Embedding { .. } = kind {
            let a = (&ctx.path / "lora_embedding_A").add(adapter, placement.place(self.a)?, true);
            let b = (&ctx.path / "lora_embedding_B").add(adapter, placement.place(self.b)?, true);
            return Ok((a, b, None));
        }
        let pa = &ctx.path / "lora_A" / adapter;
        let pb = &ctx.path / "lora_B" / adapter;
        let a = pa.add("weight", placement.place(self.a)?, true);
        let b = pb.add("weight", placement.place(self.b)?, true);
        let bias = match self.bias {
            Some(bb) => Some(pb.add("bias", placement.place(bb)?, true)),
            None => None,
        };
        Ok((a, b, bias))
    }
}
