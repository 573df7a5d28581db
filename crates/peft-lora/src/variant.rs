//! Which LoRA variant an adapter uses on a layer: PEFT's `LoraLayer.resolve_lora_variant`.
//!
//! Every variant is switched on by one config field (`use_dora`, `kasa_config`, …, or
//! `init_lora_weights="mica"`); at most one may be on, and each layer class supports its own subset:
//!
//! | layer | variants |
//! |---|---|
//! | Linear / Conv1D | DoRA, Arrow, BD-LoRA, aLoRA, VeLoRA, MonteCLoRA, MiCA, KaSA |
//! | Embedding | DoRA, MiCA |
//! | Conv1d/2d/3d | DoRA |
//!
//! PEFT 0.21.2 keys each layer class's variant table (`lora_variants`) by single config fields only —
//! no key combines two — so an adapter has at most one variant. [`LoraVariant`] is that one variant with
//! its state on a layer, and its methods are the one place the layer's init, forward pass, delta weight
//! and merge branch on it; the variants' own computations live in their modules ([`crate::dora`],
//! [`crate::kasa`], [`crate::bdlora`], [`crate::velora`], [`crate::monteclora`], [`crate::arrow`],
//! [`crate::alora`]).

use crate::arrow::Arrow;
use crate::bdlora::BlockDiagonal;
use crate::config::{InitLoraWeights, LoraConfig};
use crate::dora::Dora;
use crate::layer::{LoraKind, LoraLayer, Placement};
use crate::monteclora::MonteClora;
use crate::velora::Velora;
use peft_core::config::LayerInit;
use peft_core::error::{PeftError, Result};
use peft_core::layer::{BaseLayer, ForwardCtx};
use serde_json::Value;
use tch::Tensor;

type TchResult<T> = std::result::Result<T, tch::TchError>;

/// A LoRA variant (PEFT's `LoraVariant` subclasses), named by the config field that requests it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Variant {
    /// `alora_invocation_tokens`: activated LoRA.
    Alora,
    /// `arrow_config`: routing over task adapters.
    Arrow,
    /// `kasa_config`: singular-value adaptation on a truncated base.
    Kasa,
    /// `init_lora_weights="mica"`: frozen B.
    Mica,
    /// `monteclora_config`: Monte-Carlo perturbed A in training.
    MonteClora,
    /// `use_bdlora`: block-diagonal A or B.
    BdLora,
    /// `use_dora`: weight-decomposed LoRA.
    Dora,
    /// `velora_config`: compressed activations for A's gradient.
    Velora,
}

impl Variant {
    /// The config field that switches the variant on (PEFT's key in `lora_variants`).
    pub fn field(self) -> &'static str {
        match self {
            Variant::Alora => "alora_invocation_tokens",
            Variant::Arrow => "arrow_config",
            Variant::Kasa => "kasa_config",
            Variant::Mica => "mica",
            Variant::MonteClora => "monteclora_config",
            Variant::BdLora => "use_bdlora",
            Variant::Dora => "use_dora",
            Variant::Velora => "velora_config",
        }
    }

    /// The variants `kind` supports.
    fn supported_by(self, kind: &LoraKind) -> bool {
        match kind {
            LoraKind::Linear { .. } => true,
            LoraKind::Embedding { .. } => matches!(self, Variant::Dora | Variant::Mica),
            LoraKind::Conv { .. } => self == Variant::Dora,
        }
    }
}

/// The variants `config` requests, sorted by field name as PEFT's lookup key is.
pub fn requested(config: &LoraConfig) -> Vec<Variant> {
    let set = |v: &Option<Value>| v.as_ref().is_some_and(|v| !v.is_null());
    let mut out = Vec::new();
    if config.alora_invocation_tokens.as_ref().is_some_and(|t| !t.is_empty()) {
        out.push(Variant::Alora);
    }
    if set(&config.arrow_config) {
        out.push(Variant::Arrow);
    }
    if set(&config.kasa_config) {
        out.push(Variant::Kasa);
    }
    if matches!(&config.init_lora_weights, InitLoraWeights::Scheme(s) if s == "mica") {
        out.push(Variant::Mica);
    }
    if set(&config.monteclora_config) {
        out.push(Variant::MonteClora);
    }
    if set(&config.use_bdlora) {
        out.push(Variant::BdLora);
    }
    if config.use_dora {
        out.push(Variant::Dora);
    }
    if set(&config.velora_config) {
        out.push(Variant::Velora);
    }
    out.sort_by_key(|v| v.field());
    out
}

/// The variant of an adapter with `config` on a layer of `kind`, or PEFT's error for a combination
/// or layer class it does not support.
///
/// # Errors
/// `Invalid or unsupported variant combination: (…)`, listing the requested fields.
pub fn resolve(config: &LoraConfig, kind: &LoraKind) -> Result<Option<Variant>> {
    let wanted = requested(config);
    match wanted.as_slice() {
        [] => Ok(None),
        [one] if one.supported_by(kind) => Ok(Some(*one)),
        _ => {
            let names: Vec<String> = wanted.iter().map(|v| format!("'{}'", v.field())).collect();
            let tuple =
                if names.len() == 1 { format!("({},)", names[0]) } else { format!("({})", names.join(", ")) };
            Err(PeftError::Invalid(format!(
                "Invalid or unsupported variant combination: {tuple} on a {} layer",
                kind.class_name()
            )))
        }
    }
}

/// What PEFT refuses for the variant `tag` on this layer before anything is drawn; for BD-LoRA, which
/// factor of the module is block-diagonal (`None` otherwise, and for a module BD-LoRA leaves dense).
///
/// # Errors
/// KaSA's and BD-LoRA's checks ([`crate::kasa::check`], [`BlockDiagonal::for_layer`]).
pub(crate) fn check(
    tag: Option<Variant>,
    config: &LoraConfig,
    ctx: &LayerInit<'_, '_>,
    kind: &LoraKind,
    r: i64,
    features: (i64, i64),
) -> Result<Option<BlockDiagonal>> {
    match tag {
        Some(Variant::Kasa) => crate::kasa::check(kind, r, features).map(|()| None),
        Some(Variant::BdLora) => BlockDiagonal::for_layer(config, ctx, kind, r, features),
        _ => Ok(None),
    }
}

/// One adapter's LoRA variant on one layer, with the variant's state (PEFT's `lora_variant[adapter]`).
#[derive(Debug)]
pub enum LoraVariant {
    /// Vanilla LoRA.
    Plain,
    /// `use_dora`: DoRA's magnitude and caches.
    Dora(Dora),
    /// `kasa_config`: KaSA's learnable singular values `ΔΣ` (`lora_diag`, `(r,)`), between A and B.
    Kasa(Tensor),
    /// `use_bdlora`: which factor is block-diagonal (stored as its stacked blocks). `None` for a module
    /// that matches neither pattern list under `match_strict=False`: PEFT keeps the variant on it with
    /// dense factors.
    BdLora(Option<BlockDiagonal>),
    /// `velora_config`: the projection state.
    Velora(Velora),
    /// `monteclora_config`: the sampler.
    MonteClora(MonteClora),
    /// `arrow_config`: the router state (this adapter routes over the layer's task adapters).
    Arrow(Arrow),
    /// `alora_invocation_tokens`: the update applies only from each row's invocation offset on
    /// (`ForwardCtx::alora_offsets`).
    Alora,
    /// `init_lora_weights="mica"`: B stays frozen while A trains (the init itself is the scheme's).
    Mica,
}

impl LoraVariant {
    /// Sets up the variant `tag` on `layer`, whose factors are initialised and placed already (PEFT's
    /// `LoraVariant.init` at the end of `update_layer`); `block_diagonal` is [`check`]'s answer.
    ///
    /// # Errors
    /// A libtorch failure, or a base without the weight the variant reads.
    pub(crate) fn init(
        tag: Option<Variant>,
        block_diagonal: Option<BlockDiagonal>,
        layer: &LoraLayer,
        config: &LoraConfig,
        ctx: &mut LayerInit<'_, '_>,
        placement: &Placement,
    ) -> Result<Self> {
        Ok(match tag {
            None => LoraVariant::Plain,
            Some(Variant::Alora) => LoraVariant::Alora,
            Some(Variant::Arrow) => LoraVariant::Arrow(Arrow::from_config(config)),
            Some(Variant::BdLora) => LoraVariant::BdLora(block_diagonal),
            Some(Variant::Dora) => LoraVariant::Dora(Dora::create(layer, ctx)?),
            Some(Variant::Kasa) => LoraVariant::Kasa(crate::kasa::create(layer, ctx)?),
            Some(Variant::Mica) => LoraVariant::Mica,
            Some(Variant::MonteClora) => {
                LoraVariant::MonteClora(MonteClora::create(config, layer, ctx, placement)?)
            }
            Some(Variant::Velora) => LoraVariant::Velora(Velora::create(config, layer, ctx, placement)?),
        })
    }

    /// The layer output with this adapter: `y` is the output so far, `x` the input already cast to the
    /// adapter dtype. KaSA and BD-LoRA change only the low-rank path ([`Self::linear_path`]), and VeLoRA
    /// and MonteCLoRA are plain LoRA outside training, so they take the vanilla forward pass.
    pub(crate) fn forward(
        &self,
        layer: &LoraLayer,
        base: &dyn BaseLayer,
        x: Tensor,
        y: Tensor,
        ctx: &ForwardCtx<'_>,
    ) -> Tensor {
        match self {
            LoraVariant::Dora(dora) => dora.forward(layer, base, &x, y, ctx),
            LoraVariant::Alora => crate::alora::forward(layer, &x, y, ctx),
            LoraVariant::Arrow(arrow) => arrow.add_routed(&x, y, layer.dropout, ctx),
            LoraVariant::Velora(velora) if ctx.train && peft_core::layer::grad_enabled() => {
                velora.forward(layer, x, y)
            }
            LoraVariant::MonteClora(mc) if ctx.train => mc.forward(layer, x, y),
            _ => layer.plain_forward(x, y, ctx),
        }
    }

    /// `B(A(x))` of a linear layer, without scaling.
    pub(crate) fn linear_path(&self, x: &Tensor, a: &Tensor, b: &Tensor, bias: Option<&Tensor>) -> Tensor {
        match self {
            LoraVariant::Kasa(diag) => crate::kasa::path(x, a, diag, b, bias),
            LoraVariant::BdLora(Some(bd)) => bd.path(x, a, b, bias),
            _ => x.linear::<&Tensor>(a, None).linear(b, bias),
        }
    }

    /// The dense factors `(A, B)` whose product `B·A` is a linear layer's update (`a`, `b` are the
    /// stored factors, fp32 copies when `cast`).
    pub(crate) fn linear_delta_factors(
        &self,
        a: Tensor,
        b: Tensor,
        cast: bool,
    ) -> TchResult<(Tensor, Tensor)> {
        match self {
            LoraVariant::Kasa(diag) => Ok((a, crate::kasa::fold_diag(&b, diag, cast)?)),
            LoraVariant::BdLora(Some(bd)) => bd.dense_factors(a, b),
            _ => Ok((a, b)),
        }
    }

    /// Whether a linear update is the stored `B·A` itself (no KaSA diagonal, no block layout), so that
    /// the fused in-place paths apply.
    pub(crate) fn dense_product(&self) -> bool {
        !matches!(self, LoraVariant::Kasa(_) | LoraVariant::BdLora(Some(_)))
    }

    /// PEFT's refusal to merge `layer`'s adapter, for the variants that cannot be merged.
    pub(crate) fn merge_error(&self, layer: &LoraLayer) -> Option<PeftError> {
        let (adapter, module) = (layer.adapter_name(), layer.module_name());
        match self {
            LoraVariant::Arrow(_) => Some(PeftError::Invalid(format!(
                "Cannot merge an active Arrow router adapter (`{adapter}` on `{module}`). Remove it first."
            ))),
            LoraVariant::Alora => Some(PeftError::Invalid(format!(
                "aLoRA does not support merging (adapter `{adapter}` on `{module}`)"
            ))),
            _ => None,
        }
    }

    /// Whether a mixed batch must take the adapter's own forward pass (variants whose computation the
    /// stacked factors cannot express).
    pub(crate) fn needs_own_path(&self, train: bool) -> bool {
        match self {
            LoraVariant::Plain | LoraVariant::Mica => false,
            LoraVariant::Velora(_) | LoraVariant::MonteClora(_) => train,
            _ => true,
        }
    }

    /// DoRA's state, for the DoRA branches of merging and hotswapping.
    pub(crate) fn dora(&self) -> Option<&Dora> {
        match self {
            LoraVariant::Dora(d) => Some(d),
            _ => None,
        }
    }

    /// Drops what is derived from the adapter's values (DoRA's caches).
    pub(crate) fn clear_cache(&self) {
        if let LoraVariant::Dora(d) = self {
            d.clear_cache();
        }
    }

    /// Appends the variant's own tensors to `out`, under PEFT's in-memory names.
    pub(crate) fn push_tensors(&self, adapter: &str, out: &mut Vec<(String, Tensor)>) {
        match self {
            LoraVariant::Dora(d) => {
                out.push((format!("lora_magnitude_vector.{adapter}.weight"), d.magnitude.shallow_clone()))
            }
            LoraVariant::Kasa(diag) => out.push((format!("lora_diag.{adapter}"), diag.shallow_clone())),
            LoraVariant::Velora(v) => {
                out.push((format!("lora_velora_embed.{adapter}"), v.embed.shallow_clone()))
            }
            LoraVariant::MonteClora(mc) => mc.push_tensors(adapter, out),
            _ => {}
        }
    }
}

/// Whether the tensor `name` is a buffer (saved, never trained): VeLoRA's projection and MonteCLoRA's
/// last sample.
pub(crate) fn is_buffer(name: &str) -> bool {
    name.starts_with("lora_velora_embed.")
        || (name.starts_with("lora_monteclora_sampler.")
            && (name.ends_with(".gaussian_var_prior") || name.ends_with(".expert_weights")))
}
