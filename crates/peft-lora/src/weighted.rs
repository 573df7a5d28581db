//! `add_weighted_adapter`: a new LoRA adapter combined from existing ones, PEFT's eleven combination
//! types with PEFT's numbers (same ops, same order, same random draws for DARE under the same seed).
//!
//! * `cat`: `A = [w₁s₁A₁; w₂s₂A₂; …]`, `B = [B₁, B₂, …]` — exact, rank = sum of ranks.
//! * `svd`, `ties_svd`, `dare_linear_svd`, `dare_ties_svd`, `magnitude_prune_svd`: the delta weights
//!   `sᵢBᵢAᵢ` are merged with the operator, then truncated to the new rank by SVD — exact up to the rank.
//! * `linear`, `ties`, `dare_linear`, `dare_ties`, `magnitude_prune`: the operator is applied to the A's
//!   and to the B's separately with weights `±√|wᵢsᵢ|` — a rough approximation (as PEFT warns).
//!
//! The new adapter's config is the first adapter's with `r = lora_alpha = new rank` (scaling 1), the
//! union of the target modules (or the regexes joined by `|`) and no rank/alpha patterns; it is created
//! like any adapter (drawing its init numbers first) and starts inactive and frozen.
//!
//! PEFT quirks, reproduced by default unless they would produce a broken adapter:
//!
//! 1. With `use_rslora`, the new adapter's scaling is `r/√r = √r`, not 1, although the weights already
//!    carry each adapter's scaling: the combination's output is `√r` times too large.
//!    [`WeightedAdapterOptions::unit_scaling`] sets `lora_alpha = √r` instead (scaling exactly 1).
//! 2. The SVD types flatten only `Conv2d` delta weights; PEFT fails on `Conv1d`/`Conv3d` adapters.
//!    Here such layers are refused unless [`WeightedAdapterOptions::flatten_all_convs`] is set, which
//!    flattens every convolution the way PEFT flattens `Conv2d`.
//! 3. When the SVD rank exceeds a layer's smaller dimension, PEFT stores factors whose shapes no longer
//!    fit each other (the forward pass then fails); here the missing components are zero, which is the
//!    same low-rank product.
//! 4. An existing `adapter_name` makes PEFT return silently; here it is an error.
//! 5. DoRA adapters: PEFT combines only A and B and leaves the new magnitude at its initial value; they
//!    are refused here.

use crate::config::{Alpha, LoraConfig};
use crate::layer::{LoraKind, LoraLayer};
use crate::merge_utils::{self, MajoritySign};
use peft_core::error::{PeftError, Result};
use peft_core::modules_to_save::ModulesToSave;
use peft_core::peft_config::TargetModules;
use peft_core::MethodConfig;
use peft_core::{Adaptable, AdapterSlots, PeftModel};
use std::collections::BTreeSet;
use tch::Tensor;

type TchResult<T> = std::result::Result<T, tch::TchError>;

/// PEFT's `combination_type`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Combination {
    /// `svd` (PEFT's default).
    #[default]
    Svd,
    /// `linear`.
    Linear,
    /// `cat`.
    Cat,
    /// `ties`.
    Ties,
    /// `ties_svd`.
    TiesSvd,
    /// `dare_ties`.
    DareTies,
    /// `dare_linear`.
    DareLinear,
    /// `dare_ties_svd`.
    DareTiesSvd,
    /// `dare_linear_svd`.
    DareLinearSvd,
    /// `magnitude_prune`.
    MagnitudePrune,
    /// `magnitude_prune_svd`.
    MagnitudePruneSvd,
}

impl Combination {
    /// Every type with its PEFT name.
    pub const ALL: [(Combination, &'static str); 11] = [
        (Combination::Svd, "svd"),
        (Combination::Linear, "linear"),
        (Combination::Cat, "cat"),
        (Combination::Ties, "ties"),
        (Combination::TiesSvd, "ties_svd"),
        (Combination::DareTies, "dare_ties"),
        (Combination::DareLinear, "dare_linear"),
        (Combination::DareTiesSvd, "dare_ties_svd"),
        (Combination::DareLinearSvd, "dare_linear_svd"),
        (Combination::MagnitudePrune, "magnitude_prune"),
        (Combination::MagnitudePruneSvd, "magnitude_prune_svd"),
    ];

    /// Parses PEFT's name.
    ///
    /// # Errors
    /// An unknown name, listing the valid ones.
    pub fn parse(s: &str) -> Result<Self> {
        Self::ALL.iter().find(|(_, n)| *n == s).map(|(c, _)| *c).ok_or_else(|| {
            let names: Vec<&str> = Self::ALL.iter().map(|(_, n)| *n).collect();
            PeftError::Invalid(format!("Invalid combination_type: {s:?} (one of {})", names.join(", ")))
        })
    }

    /// PEFT's name.
    pub fn name(self) -> &'static str {
        Self::ALL.iter().find(|(c, _)| *c == self).map(|(_, n)| *n).unwrap_or("svd")
    }

    fn is_svd(self) -> bool {
        self.name().ends_with("svd")
    }

    fn needs_density(self) -> bool {
        !matches!(self, Combination::Svd | Combination::Linear | Combination::Cat)
    }
}

/// Options of [`LoraModelExt::add_weighted_adapter`](crate::LoraModelExt::add_weighted_adapter), with PEFT's defaults.
#[derive(Clone, Debug)]
pub struct WeightedAdapterOptions {
    /// The combination type.
    pub combination: Combination,
    /// Rank of the SVD types' result (default: the largest rank among the adapters).
    pub svd_rank: Option<i64>,
    /// Quantile at which the SVD factors are clamped.
    pub svd_clamp: Option<f64>,
    /// Full (default, as PEFT) or reduced SVD; the result is the same up to the rank.
    pub svd_full_matrices: bool,
    /// Fraction of entries kept by the pruning types.
    pub density: Option<f64>,
    /// Sign election of the TIES types.
    pub majority_sign: MajoritySign,
    /// Give the new adapter scaling 1 also with rsLoRA (quirk 1 of the module docs).
    pub unit_scaling: bool,
    /// Flatten `Conv1d`/`Conv3d` delta weights for the SVD types (quirk 2).
    pub flatten_all_convs: bool,
}

impl Default for WeightedAdapterOptions {
    fn default() -> Self {
        Self {
            combination: Combination::Svd,
            svd_rank: None,
            svd_clamp: None,
            svd_full_matrices: true,
            density: None,
            majority_sign: MajoritySign::Total,
            unit_scaling: false,
            flatten_all_convs: false,
        }
    }
}

fn lora_config<'a, M: Adaptable>(peft: &'a PeftModel<M>, name: &str) -> Result<&'a LoraConfig> {
    let config =
        peft.config(name).ok_or_else(|| PeftError::Invalid(format!("Adapter {name} does not exist")))?;
    config
        .as_any()
        .downcast_ref::<LoraConfig>()
        .ok_or_else(|| PeftError::Invalid(format!("adapter `{name}` is not a LoRA adapter")))
}

/// Validates the request and builds the new config: PEFT's `_check_add_weighted_adapter` plus
/// `replace(config, r=…, lora_alpha=…, …)`.
fn new_config<M: Adaptable>(
    peft: &PeftModel<M>,
    adapters: &[&str],
    options: &WeightedAdapterOptions,
) -> Result<(Combination, i64, LoraConfig)> {
    let configs: Vec<&LoraConfig> = adapters.iter().map(|a| lora_config(peft, a)).collect::<Result<_>>()?;
    for (a, c) in adapters.iter().zip(&configs) {
        if c.target_parameters.as_ref().is_some_and(|t| !t.is_empty()) {
            return Err(PeftError::Invalid(format!(
                "add_weighted_adapter does not support targeting nn.Parameter (problematic adapter '{a}')"
            )));
        }
        if c.use_dora {
            return Err(PeftError::Invalid(format!(
                "adapter `{a}` uses DoRA: add_weighted_adapter combines only A and B, not the magnitude"
            )));
        }
        // Variants whose update is not B·A (KaSA's ΔΣ, BD-LoRA's blocks, Arrow's routing, aLoRA's offsets)
        // would be combined wrongly; VeLoRA, MonteCLoRA and MiCA adapters are plain B·A at inference.
        use crate::variant::Variant;
        let variants = crate::variant::requested(c);
        if let Some(v) = variants
            .iter()
            .find(|v| matches!(v, Variant::Kasa | Variant::BdLora | Variant::Arrow | Variant::Alora))
        {
            return Err(PeftError::Invalid(format!(
                "adapter `{a}` uses `{}`: add_weighted_adapter combines plain B·A updates only",
                v.field()
            )));
        }
    }
    // modules_to_save copies of several combined adapters on one module cannot be merged.
    let mut shared = 0;
    peft.model().visit_layers(&mut |layer| {
        let n = adapters
            .iter()
            .filter(|a| layer.slots().get(a).is_some_and(|t| t.as_any().is::<ModulesToSave>()))
            .count();
        if n > 1 {
            shared += 1;
        }
    });
    if shared > 0 {
        return Err(PeftError::Invalid(format!(
            "Cannot add weighted adapters if they target the same module with modules_to_save, but found {shared} \
             such instance(s)."
        )));
    }
    let combination = if adapters.len() == 1 { Combination::Linear } else { options.combination };
    let ranks: Vec<i64> =
        configs.iter().map(|c| c.rank_pattern.values().copied().fold(c.r, i64::max)).collect();
    let new_rank = match combination {
        Combination::Cat => ranks.iter().sum(),
        c if c.is_svd() => options.svd_rank.unwrap_or_else(|| ranks.iter().copied().max().unwrap_or(0)),
        _ => {
            if ranks.iter().collect::<BTreeSet<_>>().len() != 1 {
                return Err(PeftError::Invalid(
                    "All adapters must have the same r value when using combination_type linear, ties, dare_ties or \
                     dare_linear."
                        .into(),
                ));
            }
            ranks[0]
        }
    };
    if combination.needs_density() && options.density.is_none() {
        return Err(PeftError::Invalid(format!("combination_type {} needs a `density`", combination.name())));
    }
    let targets: Vec<&TargetModules> = configs
        .iter()
        .zip(adapters)
        .map(|(c, a)| {
            c.target_modules
                .as_ref()
                .ok_or_else(|| PeftError::Invalid(format!("adapter `{a}` has no target_modules")))
        })
        .collect::<Result<_>>()?;
    let new_targets = if targets.iter().all(|t| matches!(t, TargetModules::Regex(_))) {
        let parts: Vec<String> = targets
            .iter()
            .filter_map(|t| match t {
                TargetModules::Regex(r) => Some(format!("({r})")),
                TargetModules::List(_) => None,
            })
            .collect();
        TargetModules::Regex(parts.join("|"))
    } else if targets.iter().all(|t| matches!(t, TargetModules::List(_))) {
        let mut union: Vec<String> = Vec::new();
        for t in &targets {
            if let TargetModules::List(v) = t {
                for m in v {
                    if !union.contains(m) {
                        union.push(m.clone());
                    }
                }
            }
        }
        TargetModules::List(union)
    } else {
        return Err(PeftError::Invalid(
            "all adapter configs should follow the same target modules type. Combining adapters with \
             `target_modules` type being a mix of list/set and string is not supported."
                .into(),
        ));
    };
    let mut config = configs[0].clone();
    config.r = new_rank;
    config.lora_alpha = if options.unit_scaling && config.use_rslora {
        Alpha::from((new_rank as f64).sqrt())
    } else {
        Alpha::from(new_rank)
    };
    config.target_modules = Some(new_targets);
    config.alpha_pattern.clear();
    config.rank_pattern.clear();
    config.common.inference_mode = false;
    Ok((combination, new_rank, config))
}

/// The LoRA adapters of `names` present on a layer, with their weights.
fn sources<'a>(slots: &'a AdapterSlots, names: &[&str], weights: &[f64]) -> Vec<(&'a LoraLayer, f64)> {
    names
        .iter()
        .zip(weights)
        .filter_map(|(n, w)| {
            slots.get(n).and_then(|t| t.as_any().downcast_ref::<LoraLayer>()).map(|l| (l, *w))
        })
        .collect()
}

/// `cat`: `[wᵢ·sᵢ·Aᵢ]` stacked, `[Bᵢ]` side by side, zero beyond.
fn combine_cat(target: &LoraLayer, srcs: &[(&LoraLayer, f64)]) -> TchResult<(Tensor, Tensor)> {
    let a_parts: Vec<Tensor> = srcs
        .iter()
        .map(|(l, w)| l.lora_a.f_mul_scalar(*w).and_then(|t| t.f_mul_scalar(l.scaling)))
        .collect::<TchResult<_>>()?;
    let b_parts: Vec<Tensor> = srcs.iter().map(|(l, _)| l.lora_b.shallow_clone()).collect();
    let a = Tensor::f_cat(&a_parts, 0)?;
    let b = Tensor::f_cat(&b_parts, 1)?;
    let new_a = target.lora_a.f_mul_scalar(0.0)?;
    let new_b = target.lora_b.f_mul_scalar(0.0)?;
    new_a.f_narrow(0, 0, a.size()[0])?.f_copy_(&a)?;
    new_b.f_narrow(1, 0, b.size()[1])?.f_copy_(&b)?;
    Ok((new_a, new_b))
}

/// The merge operator of `combination` on `tensors`.
fn merge_op(
    combination: Combination,
    tensors: &[Tensor],
    weights: &Tensor,
    options: &WeightedAdapterOptions,
    warnings: &mut Vec<String>,
) -> Result<Tensor> {
    let density = options.density.unwrap_or(1.0);
    let sign = options.majority_sign;
    match combination {
        Combination::Svd | Combination::Linear => merge_utils::task_arithmetic(tensors, weights),
        Combination::Ties | Combination::TiesSvd => {
            merge_utils::ties(tensors, weights, density, sign, warnings)
        }
        Combination::DareLinear | Combination::DareLinearSvd => {
            merge_utils::dare_linear(tensors, weights, density, warnings)
        }
        Combination::DareTies | Combination::DareTiesSvd => {
            merge_utils::dare_ties(tensors, weights, density, sign, warnings)
        }
        Combination::MagnitudePrune | Combination::MagnitudePruneSvd => {
            merge_utils::magnitude_prune(tensors, weights, density, warnings)
        }
        Combination::Cat => Err(PeftError::Invalid("cat is not a merge operator".into())),
    }
}

/// The non-SVD types: the operator on the A's and on the B's with `±√|wᵢsᵢ|`.
fn combine_factors(
    combination: Combination,
    srcs: &[(&LoraLayer, f64)],
    options: &WeightedAdapterOptions,
    warnings: &mut Vec<String>,
) -> Result<(Tensor, Tensor)> {
    let mut wa = Vec::new();
    let mut wb = Vec::new();
    for (l, w) in srcs {
        let ws = w * l.scaling;
        let sign = if ws >= 0.0 { 1.0 } else { -1.0 };
        wa.push(ws.abs().sqrt() * sign);
        wb.push(ws.abs().sqrt());
    }
    let a_list: Vec<Tensor> = srcs.iter().map(|(l, _)| l.lora_a.detach()).collect();
    let b_list: Vec<Tensor> = srcs.iter().map(|(l, _)| l.lora_b.detach()).collect();
    let kind = a_list[0].kind();
    let wa = merge_utils::weights_tensor(&wa, a_list[0].device())?;
    let wb = merge_utils::weights_tensor(&wb, b_list[0].device())?;
    let a = merge_op(combination, &a_list, &wa, options, warnings)?;
    let b = merge_op(combination, &b_list, &wb, options, warnings)?;
    let cast = |t: Tensor| t.f_to_kind(kind).map_err(PeftError::torch("combining LoRA factors"));
    Ok((cast(a)?, cast(b)?))
}

/// The SVD types: merge the delta weights, then the best rank-`r` factors.
fn combine_svd(
    combination: Combination,
    target: &LoraLayer,
    srcs: &[(&LoraLayer, f64)],
    new_rank: i64,
    options: &WeightedAdapterOptions,
    warnings: &mut Vec<String>,
) -> Result<(Tensor, Tensor)> {
    let deltas: Vec<Tensor> = srcs.iter().map(|(l, _)| l.delta_weight()).collect::<Result<_>>()?;
    let weights: Vec<f64> = srcs.iter().map(|(_, w)| *w).collect();
    let weights = merge_utils::weights_tensor(&weights, deltas[0].device())?;
    let mut delta = merge_op(combination, &deltas, &weights, options, warnings)?;
    let torch = |what: &'static str| PeftError::torch(what);
    let conv_flatten = match &target.kind {
        LoraKind::Conv { geometry } if geometry.dims() == 2 || options.flatten_all_convs => true,
        LoraKind::Conv { .. } => {
            return Err(PeftError::Invalid(format!(
                "`{}`: PEFT 0.21.2 cannot combine {} adapters with an SVD combination type; set \
                 `flatten_all_convs` to flatten them like Conv2d",
                target.module_name(),
                target.kind.class_name()
            )))
        }
        _ => false,
    };
    if conv_flatten {
        let ws = target.lora_a.size();
        let one_by_one = ws.len() >= 4 && ws[2] == 1 && ws[3] == 1;
        delta = if one_by_one && matches!(&target.kind, LoraKind::Conv { geometry } if geometry.dims() == 2) {
            delta.f_squeeze().map_err(torch("flattening a conv delta"))?
        } else {
            delta.f_flatten(1, -1).map_err(torch("flattening a conv delta"))?
        };
    }
    if matches!(target.kind, LoraKind::Linear { fan_in_fan_out: true } | LoraKind::Embedding { .. }) {
        delta = delta.f_tr().map_err(torch("transposing a delta weight"))?;
    }
    let f = || -> TchResult<(Tensor, Tensor)> {
        let (u, s, v) = delta.f_svd(!options.svd_full_matrices, true)?;
        let vh = v.f_transpose(-2, -1)?;
        // Beyond the number of singular values PEFT's slices stop fitting each other; keep what exists.
        let k = new_rank.min(s.size()[0]);
        let mut u = u.f_narrow(1, 0, k)?.f_matmul(&s.f_narrow(0, 0, k)?.f_diag(0)?)?;
        let mut vh = vh.f_narrow(0, 0, k)?;
        if let Some(q) = options.svd_clamp {
            let dist = Tensor::f_cat(&[u.f_flatten(0, -1)?, vh.f_flatten(0, -1)?], 0)?;
            let hi = dist.f_quantile_scalar(q, None::<i64>, false, "linear")?.f_double_value(&[])?;
            u = u.f_clamp(-hi, hi)?;
            vh = vh.f_clamp(-hi, hi)?;
        }
        // Zero components beyond the available rank (PEFT would store mismatched shapes).
        let b = target.lora_b.f_mul_scalar(0.0)?;
        let a = target.lora_a.f_mul_scalar(0.0)?;
        let b2 = b.f_view([b.size()[0], -1])?;
        let a2 = a.f_view([a.size()[0], -1])?;
        b2.f_narrow(1, 0, u.size()[1])?.f_copy_(&u)?;
        a2.f_narrow(0, 0, vh.size()[0])?.f_copy_(&vh)?;
        Ok((a, b))
    };
    tch::no_grad(f).map_err(PeftError::torch("the SVD of a combined delta weight"))
}

/// See [`LoraModelExt::add_weighted_adapter`](crate::LoraModelExt::add_weighted_adapter).
pub(crate) fn add_weighted_adapter<M: Adaptable>(
    peft: &mut PeftModel<M>,
    adapters: &[&str],
    weights: &[f64],
    adapter_name: &str,
    options: &WeightedAdapterOptions,
) -> Result<Vec<String>> {
    if adapters.is_empty() || adapters.len() != weights.len() {
        return Err(PeftError::Invalid(format!(
            "add_weighted_adapter needs one weight per adapter ({} adapters, {} weights)",
            adapters.len(),
            weights.len()
        )));
    }
    if peft.config(adapter_name).is_some() {
        return Err(PeftError::DuplicateAdapter { name: adapter_name.to_string() });
    }
    let (combination, new_rank, config) = new_config(peft, adapters, options)?;
    peft.add_adapter(adapter_name, config.boxed())?;
    let mut warnings = Vec::new();
    let result = peft.model_mut().visit_layers_mut(&mut |layer| {
        let slots = layer.parts_mut().1;
        let Some(target) = slots.get(adapter_name).and_then(|t| t.as_any().downcast_ref::<LoraLayer>())
        else {
            return Ok(());
        };
        let srcs = sources(slots, adapters, weights);
        if srcs.is_empty() {
            return Err(PeftError::Invalid(format!(
                "No matching LoRAs found on `{}` for the new adapter `{adapter_name}`",
                target.module_name()
            )));
        }
        let (a, b) = tch::no_grad(|| match combination {
            Combination::Cat => {
                combine_cat(target, &srcs).map_err(PeftError::torch("concatenating LoRA factors"))
            }
            c if c.is_svd() => combine_svd(c, target, &srcs, new_rank, options, &mut warnings),
            c => combine_factors(c, &srcs, options, &mut warnings),
        })?;
        let Some(target) = slots.get_mut(adapter_name) else { return Ok(()) };
        let Some(target) = target.as_any_mut().downcast_mut::<LoraLayer>() else { return Ok(()) };
        if a.size() != target.lora_a.size() || b.size() != target.lora_b.size() {
            return Err(PeftError::Invalid(format!(
                "`{}`: combined factors {:?}/{:?} do not fit the new adapter's {:?}/{:?}",
                target.module_name(),
                a.size(),
                b.size(),
                target.lora_a.size(),
                target.lora_b.size()
            )));
        }
        let copy = |dst: &mut Tensor, src: &Tensor| {
            tch::no_grad(|| dst.f_copy_(&src.f_to_kind(dst.kind())?))
                .map(drop)
                .map_err(PeftError::torch("writing combined LoRA factors"))
        };
        copy(&mut target.lora_a, &a)?;
        copy(&mut target.lora_b, &b)?;
        peft_core::TunerLayer::weights_changed(target);
        Ok(())
    });
    if let Err(e) = result {
        let _ = peft.delete_adapter(adapter_name);
        return Err(e);
    }
    Ok(warnings)
}
