//! `HiraLayer`: PEFT 0.21.2's HiRA layers — `hira.Linear` (`nn.Linear` and GPT-2's `Conv1D`),
//! `hira.Embedding`, `hira.Conv1d` / `Conv2d` / `Conv3d` — on dense bases.
//!
//! With the frozen weight `W` and the factors `A` `(r, in)`, `B` `(out, r)`:
//!
//! * linear: `y = base(x) + dropout(x) · (W ⊙ (Aᵀ·Bᵀ)ᵀ)ᵀ` — `W` taken `(out, in)` (transposed for
//!   `Conv1D`); no scaling.
//! * embedding (`A` `(r, num_embeddings)`, `B` `(embedding_dim, r)`): `y = base(x) + embed(x, W ⊙ (B·A)ᵀ)`,
//!   no dropout.
//! * convolution (`A` `(r, in, *kernel)`, `B` `(out, r, 1, …)`): `y = base(x) + conv(dropout(x), W ⊙ ΔW)`
//!   without bias and with the base's stride, padding and dilation, where `ΔW` is `B·A` composed as a
//!   convolution (a plain matrix product for 1×1 `Conv2d` kernels).
//!
//! Several active adapters run in PEFT's loop (the input cast to each adapter's dtype, the sum cast back
//! once at the end), so the first active HiRA adapter of a layer computes the whole group.
//!
//! Merging adds `W₀ ⊙ ΔW`, with `W₀` the weight without any merged adapter (PEFT's cached
//! `_base_weight_before_merge`); unmerging restores the weight the adapter found, so it is exact as in
//! PEFT (which copies its cache back).

use crate::config::{HiraConfig, HiraInit, PEFT_TYPE};
use peft_core::config::LayerInit;
use peft_core::layer::{
    add_group_terms, merge_delta, replace_weight, BaseLayer, ConvGeometry, ForwardCtx, MergeCtx, TunerLayer,
};
use peft_core::{PeftError, Result};
use tch::{Device, Kind, Tensor};

/// The base layer a HiRA adapter sits on.
#[derive(Clone, Debug, PartialEq)]
pub enum HiraBase {
    /// `nn.Linear`, or GPT-2's `Conv1D` (`fan_in_fan_out`: weight stored `(in, out)`).
    Linear {
        /// True for `Conv1D`.
        fan_in_fan_out: bool,
    },
    /// `nn.Embedding`.
    Embedding,
    /// `nn.Conv1d` / `Conv2d` / `Conv3d` (`groups = 1`).
    Conv(ConvGeometry),
}

/// One HiRA adapter on one layer.
#[derive(Debug)]
pub struct HiraLayer {
    adapter: String,
    module: String,
    base: HiraBase,
    r: i64,
    in_features: i64,
    out_features: i64,
    dropout: f64,
    /// `hira_A.<adapter>` (`hira_embedding_A` on embeddings).
    a: Tensor,
    /// `hira_B.<adapter>` (`hira_embedding_B` on embeddings).
    b: Tensor,
    /// The base weight as this adapter's merge found it (restored by unmerge).
    before_merge: Option<Tensor>,
}

const UNSUPPORTED: &str = "Currently, only the following modules are supported: `torch.nn.Linear`, \
                           `torch.nn.Embedding`, `torch.nn.Conv1d`, `torch.nn.Conv2d`, `torch.nn.Conv3d`, \
                           `transformers.pytorch_utils.Conv1D`";

fn randn(shape: &[i64]) -> Result<Tensor> {
    Tensor::f_randn(shape, (Kind::Float, Device::Cpu)).map_err(PeftError::torch("drawing HiRA factors"))
}

impl HiraLayer {
    /// Creates the adapter as PEFT's `update_layer` does, with the same draws: `A` and `B` from
    /// `torch.randn`, then the reset `init_weights` asks for; moved to the base layer's device and dtype.
    ///
    /// # Errors
    /// [`PeftError::UnsupportedLayer`] for other bases (quantized weights included, for now); a
    /// non-positive rank; grouped convolutions; an unknown init scheme on a linear layer.
    pub fn create(config: &HiraConfig, ctx: &mut LayerInit<'_, '_>) -> Result<Self> {
        // PEFT 0.21.2's HiRA dispatch reads `config.r` for a layer's first HiRA adapter and applies
        // `rank_pattern` only when another HiRA adapter is already on the layer (`update_layer`).
        let patterned = config.rank_of(ctx.module_name)?;
        let first = !ctx.siblings.values().any(|t| t.as_any().is::<HiraLayer>());
        let r = if first { config.r } else { patterned };
        if first && patterned != config.r {
            ctx.warn(format!(
                "`{}`: rank_pattern asks for r={patterned}, but PEFT 0.21.2 creates a layer's first HiRA adapter with \
                 r={} (the pattern applies to later adapters on the layer); peft-rs does the same so that files \
                 stay interchangeable",
                ctx.module_name, config.r
            ));
        }
        let init = config.init_weights.clone();
        let truthy = match &init {
            None | Some(HiraInit::Bool(false)) => false,
            Some(HiraInit::Scheme(s)) => !s.is_empty(),
            Some(HiraInit::Bool(true)) => true,
        };
        let (base, in_features, out_features, a_shape, b_shape) = if let Some(lin) = ctx.base.as_linear() {
            if !lin.weight_is_storage() {
                return Err(ctx.unsupported(
                    PEFT_TYPE,
                    "HiRA on 4-/8-bit quantized bases is not implemented in peft-rs yet (PEFT's bitsandbytes \
                     variants); use a dense base",
                ));
            }
            let (i, o, is_conv1d) = (lin.in_features(), lin.out_features(), lin.fan_in_fan_out());
            let mut fifo = config.fan_in_fan_out;
            // PEFT warns and corrects the layer's flag, but leaves the config as written.
            ctx.match_fan_in_fan_out(&mut fifo, is_conv1d);
            (HiraBase::Linear { fan_in_fan_out: fifo }, i, o, vec![r, i], vec![o, r])
        } else if let Some(emb) = ctx.base.as_embedding() {
            let (n, d) = (emb.num_embeddings(), emb.embedding_dim());
            (HiraBase::Embedding, n, d, vec![r, n], vec![d, r])
        } else if let Some(conv) = ctx.base.as_conv() {
            let geometry = conv.geometry().clone();
            let (i, o) = (conv.in_channels(), conv.out_channels());
            let mut a = vec![r, i];
            a.extend(&geometry.kernel_size);
            let mut b = vec![o, r];
            b.extend(std::iter::repeat_n(1, geometry.dims()));
            (HiraBase::Conv(geometry), i, o, a, b)
        } else {
            return Err(ctx.unsupported(PEFT_TYPE, UNSUPPORTED));
        };
        peft_core::config::require_positive("r", r)?;
        if let HiraBase::Conv(g) = &base {
            if g.groups > 1 {
                return Err(ctx.unsupported(
                    PEFT_TYPE,
                    &format!(
                        "HiRA does not support {} layers with groups > 1 (got groups={}). This applies to both the \
                         forward pass and to merging.",
                        ctx.base.kind(),
                        g.groups
                    ),
                ));
            }
            if g.dims() == 3 && g.kernel_size[..2] == [1, 1] {
                return Err(ctx.unsupported(
                    PEFT_TYPE,
                    "PEFT 0.21.2 composes the update of a Conv3d whose first two kernel sizes are 1 as a 2-D 1×1 \
                     kernel and fails on it; peft-rs refuses the layer instead",
                ));
            }
        }
        let mut a = randn(&a_shape)?;
        let mut b = randn(&b_shape)?;
        let sqrt5 = 5f64.sqrt();
        match &base {
            HiraBase::Linear { .. } if truthy => {
                match &init {
                    Some(HiraInit::Scheme(s)) if s.eq_ignore_ascii_case("gaussian") => {
                        peft_core::init::normal_(&mut a, 0.0, 1.0 / r as f64)?
                    }
                    Some(HiraInit::Scheme(s)) => {
                        return Err(PeftError::Invalid(format!("Unknown initialization init_weights='{s}'")))
                    }
                    _ => peft_core::init::kaiming_uniform_(&mut a, sqrt5)?,
                }
                peft_core::init::zeros_(&mut b)?;
            }
            // reset_hira_parameters returns early only for `False` (`None` resets too).
            HiraBase::Embedding if init != Some(HiraInit::Bool(false)) => {
                peft_core::init::zeros_(&mut a)?;
                peft_core::init::normal_(&mut b, 0.0, 1.0)?;
            }
            HiraBase::Conv(_) if truthy => {
                peft_core::init::kaiming_uniform_(&mut a, sqrt5)?;
                peft_core::init::zeros_(&mut b)?;
            }
            _ => {}
        }
        let (a_name, b_name) = match base {
            HiraBase::Embedding => ("hira_embedding_A", "hira_embedding_B"),
            _ => ("hira_A", "hira_B"),
        };
        let adapter = ctx.adapter_name.to_string();
        let a = (&ctx.path / a_name).add(&adapter, ctx.place(a)?, true);
        let b = (&ctx.path / b_name).add(&adapter, ctx.place(b)?, true);
        Ok(Self {
            adapter,
            module: ctx.module_name.to_string(),
            base,
            r,
            in_features,
            out_features,
            dropout: config.hira_dropout,
            a,
            b,
            before_merge: None,
        })
    }

    /// The rank.
    pub fn r(&self) -> i64 {
        self.r
    }

    /// The base the adapter sits on.
    pub fn base_kind(&self) -> &HiraBase {
        &self.base
    }

    /// `(hira_A, hira_B)`.
    pub fn factors(&self) -> (&Tensor, &Tensor) {
        (&self.a, &self.b)
    }

    /// PEFT's `get_delta_weight`: `B·A` in the base weight's layout (transposed for `Conv1D` and
    /// embeddings; composed as a convolution for conv kernels), computed in f32 on the CPU for half
    /// dtypes.
    pub fn delta_weight(&self) -> Tensor {
        let kind = self.a.kind();
        let upcast = self.a.device() == Device::Cpu && matches!(kind, Kind::Half | Kind::BFloat16);
        let (a, b) = if upcast {
            (self.a.to_kind(Kind::Float), self.b.to_kind(Kind::Float))
        } else {
            (self.a.shallow_clone(), self.b.shallow_clone())
        };
        let delta = match &self.base {
            HiraBase::Linear { fan_in_fan_out } => {
                let ba = b.matmul(&a);
                if *fan_in_fan_out {
                    ba.tr()
                } else {
                    ba
                }
            }
            HiraBase::Embedding => b.matmul(&a).tr(),
            HiraBase::Conv(g) if g.dims() == 2 && g.kernel_size == [1, 1] => b
                .squeeze_dim(3)
                .squeeze_dim(2)
                .matmul(&a.squeeze_dim(3).squeeze_dim(2))
                .unsqueeze(2)
                .unsqueeze(3),
            HiraBase::Conv(g) => {
                let ones = vec![1i64; g.dims()];
                let zeros = vec![0i64; g.dims()];
                peft_core::layer::conv_nd_t(&a.transpose(0, 1), &b, None, &ones, &zeros, &ones, 1)
                    .transpose(0, 1)
            }
        };
        if upcast {
            delta.to_kind(kind)
        } else {
            delta
        }
    }

    /// This adapter's term of the forward pass for input `x` (already cast to the adapter's dtype).
    fn update(&self, base: &dyn BaseLayer, x: &Tensor, train: bool) -> Option<Tensor> {
        let weight = base.as_weighted()?.weight();
        let drop = |x: &Tensor| {
            if train && self.dropout > 0.0 {
                x.dropout(self.dropout, true)
            } else {
                x.shallow_clone()
            }
        };
        Some(match &self.base {
            HiraBase::Linear { fan_in_fan_out } => {
                let w = if *fan_in_fan_out { weight.tr() } else { weight };
                let prod = self.a.tr().mm(&self.b.tr());
                drop(x).linear::<Tensor>(&(w * prod.tr()), None)
            }
            HiraBase::Embedding => {
                let eff = weight * self.b.mm(&self.a).tr();
                Tensor::embedding(&eff, x, -1, false, false)
            }
            HiraBase::Conv(g) => {
                let eff = weight * self.delta_weight();
                peft_core::layer::conv_nd_t(
                    &drop(x),
                    &eff,
                    None,
                    &g.stride,
                    &g.padding,
                    &g.dilation,
                    g.groups,
                )
            }
        })
    }
}

impl TunerLayer for HiraLayer {
    fn peft_type(&self) -> &'static str {
        PEFT_TYPE
    }

    fn named_tensors(&self) -> Vec<(String, Tensor)> {
        let (a, b) = match self.base {
            HiraBase::Embedding => ("hira_embedding_A", "hira_embedding_B"),
            _ => ("hira_A", "hira_B"),
        };
        vec![
            (format!("{a}.{}", self.adapter), self.a.shallow_clone()),
            (format!("{b}.{}", self.adapter), self.b.shallow_clone()),
        ]
    }

    /// PEFT's loop over the active adapters: each adds its term (the input cast to its dtype, as PEFT
    /// reassigns `x`), and the sum is cast back to the base output's dtype once.
    fn transform_output(&self, base: &dyn BaseLayer, x: &Tensor, y: Tensor, ctx: &ForwardCtx<'_>) -> Tensor {
        let Some(group) = ctx.active_group(self) else {
            return y;
        };
        // PEFT reassigns `x` to each adapter's dtype in turn.
        let mut x = x.shallow_clone();
        add_group_terms(y, &group, |layer| {
            if !matches!(layer.base, HiraBase::Embedding) && x.kind() != layer.a.kind() {
                x = x.to_kind(layer.a.kind());
            }
            layer.update(base, &x, ctx.train)
        })
    }

    fn merge_needs_unmerged_base(&self) -> bool {
        true
    }

    fn merge(&mut self, base: &mut dyn BaseLayer, ctx: &MergeCtx<'_>) -> Result<()> {
        let module = self.module.clone();
        let current = base
            .as_weighted()
            .map(|w| w.weight())
            .ok_or_else(|| PeftError::Invalid(format!("`{module}`: the base layer has no weight")))?;
        let (before, delta) = tch::no_grad(|| -> Result<(Tensor, Tensor)> {
            let before =
                current.f_detach_copy().map_err(PeftError::torch("keeping the weight before merging"))?;
            let reference = ctx.unmerged_base_weight.unwrap_or(&current);
            Ok((before, reference * self.delta_weight().to_kind(current.kind())))
        })?;
        merge_delta(base, &delta, ctx.safe, &self.adapter, &self.module)?;
        self.before_merge = Some(before);
        Ok(())
    }

    fn unmerge(&mut self, base: &mut dyn BaseLayer) -> Result<()> {
        let Some(before) = self.before_merge.take() else {
            return Ok(());
        };
        let module = self.module.clone();
        let w = base
            .as_weighted_mut()
            .ok_or_else(|| PeftError::Invalid(format!("`{module}`: the base layer has no weight")))?;
        replace_weight(w, &before)
    }

    fn describe(&self) -> String {
        let class = match &self.base {
            HiraBase::Linear { .. } => "Linear".to_string(),
            HiraBase::Embedding => "Embedding".to_string(),
            HiraBase::Conv(g) => format!("Conv{}d", g.dims()),
        };
        format!(
            "hira.{class}(in_features={}, out_features={}, r={})",
            self.in_features, self.out_features, self.r
        )
    }
}
