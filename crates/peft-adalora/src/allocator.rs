//! The training side of AdaLoRA: PEFT's `RankAllocator` (`update_and_allocate`), the orthogonal
//! regularisation `AdaLoraModel.forward` adds to the loss, and the rank pattern they produce.
//!
//! A training loop calls them as PEFT's documentation prescribes:
//!
//! ```text
//! let mut allocator = RankAllocator::new(&peft, "default")?;
//! for step in 0..total_step {
//!     let loss = task_loss(peft.forward_t(&x, true));
//!     let loss = loss + orthogonal_regularization(&peft, "default")?;
//!     loss.backward();
//!     optimizer.step();
//!     allocator.update_and_allocate(&mut peft, step)?;   // after step(), before zero_grad()
//!     optimizer.zero_grad();
//! }
//! peft.save_pretrained(dir, &SaveOptions::default())?;   // only the kept triplets are written
//! ```
//!
//! **Budget.** With `b₀ = Σ init ranks` and `b_T = target_r · (number of adapted layers)`: up to `tinit`
//! the budget is `b₀` (no masking); from `tinit` to `total_step − tfinal` it falls cubically,
//! `b = ⌊(b₀ − b_T)(1 − (t − tinit)/(total_step − tfinal − tinit))³ + b_T⌋`, and every `deltaT` steps the
//! `b₀ − b` triplets with the lowest importance get `lora_E = 0`. At `total_step − tfinal` the final
//! allocation is forced and stored in the config's `rank_pattern`; after that it is re-applied every step.
//!
//! **Importance** of each element of `lora_A`, `lora_E`, `lora_B`: `I = |p · ∂L/∂p|`, smoothed
//! `Ī ← β₁ Ī + (1 − β₁) I`, uncertainty `Ū ← β₂ Ū + (1 − β₂) |I − Ī|`, score `Ī · Ū`. A triplet's
//! importance is its `lora_E` score plus the mean score of its `lora_A` row and of its `lora_B` column.
//!
//! **Rank pattern.** `rank_pattern` maps `"<module>.lora_E"` to the kept triplets (PEFT's saved form of
//! the key; PEFT's in-memory form with the adapter name, `"<module>.lora_E.<adapter>"`, is read too).
//! Saving writes only the kept triplets and the pattern; loading such an adapter creates each layer at
//! its reduced rank with `ranknum` still `init_r`, as PEFT does.

use crate::config::{AdaLoraConfig, RankPattern, PEFT_TYPE};
use crate::layer::AdaLoraLayer;
use peft_core::{Adaptable, PeftError, PeftModel, Result};
use std::collections::BTreeMap;
use tch::{Kind, Tensor};

/// The AdaLoRA config of adapter `adapter`.
///
/// # Errors
/// An unknown adapter, or one of another method.
pub fn adalora_config<'a, M: Adaptable>(peft: &'a PeftModel<M>, adapter: &str) -> Result<&'a AdaLoraConfig> {
    let config = peft.config(adapter).ok_or_else(|| PeftError::UnknownAdapter {
        name: adapter.to_string(),
        available: peft.adapter_names(),
    })?;
    config.as_any().downcast_ref::<AdaLoraConfig>().ok_or_else(|| {
        PeftError::Invalid(format!(
            "adapter `{adapter}` is a {} adapter, not AdaLoRA",
            config.common().peft_type
        ))
    })
}

/// The adapter PEFT's `AdaLoraModel` trains (`trainable_adapter_name`): the AdaLoRA adapter whose config
/// is not in inference mode (PEFT allows one at most). `None` when every adapter is frozen.
pub fn trainable_adapter<M: Adaptable>(peft: &PeftModel<M>) -> Option<String> {
    peft.adapter_names().into_iter().find(|n| {
        peft.config(n).is_some_and(|c| c.common().peft_type == PEFT_TYPE && !c.common().inference_mode)
    })
}

/// PEFT's key for a layer's `lora_E` in `rank_pattern` as it saves it: the parameter name
/// `<module>.lora_E.<adapter>` with every `.<adapter>` removed.
pub fn rank_pattern_key(module: &str, adapter: &str) -> String {
    format!("{module}.lora_E.{adapter}").replace(&format!(".{adapter}"), "")
}

/// The orthogonal regularisation term `AdaLoraModel.forward` adds to the loss of adapter `adapter`:
/// `orth_reg_weight · mean_P ‖P Pᵀ − I‖_F` over `lora_A` (`P = A`, `A Aᵀ`) and `lora_B` (`Bᵀ B`) of every
/// adapted layer, in module order (`lora_A` before `lora_B` in each), with the graph for backward.
/// Add it to the task loss before `backward()`. As in PEFT, the parameters are picked by name: those of
/// every adapter whose name contains `adapter`.
///
/// # Errors
/// An unknown or non-AdaLoRA adapter, a negative `orth_reg_weight`, a libtorch failure.
pub fn orthogonal_regularization<M: Adaptable>(peft: &PeftModel<M>, adapter: &str) -> Result<Tensor> {
    let config = adalora_config(peft, adapter)?;
    let weight = config.orth_reg_weight.value();
    if weight < 0.0 {
        return Err(PeftError::Invalid("orth_reg_weight should be greater than or equal to 0. ".into()));
    }
    let mut total: Option<Tensor> = None;
    let mut count: i64 = 0;
    let mut failure: Option<tch::TchError> = None;
    peft.model().visit_layers(&mut |layer| {
        let layers: Vec<&AdaLoraLayer> = layer
            .slots()
            .adapters()
            .iter()
            .filter(|(name, _)| name.contains(adapter))
            .filter_map(|(_, t)| t.as_any().downcast_ref::<AdaLoraLayer>())
            .collect();
        let mut term = |p: &Tensor, left: bool| -> std::result::Result<(), tch::TchError> {
            let cov = if left { p.f_matmul(&p.f_tr()?)? } else { p.f_tr()?.f_matmul(p)? };
            let size = cov.size();
            let eye = Tensor::f_eye_m(size[0], size[1], (cov.kind(), cov.device()))?;
            // `torch.norm(·, p="fro")` is `linalg.vector_norm(·, 2)`, which `linalg.norm(·, "fro")` calls too.
            let norm = cov.f_sub(&eye)?.f_linalg_norm_ord_str("fro", None::<&[i64]>, false, None::<Kind>)?;
            count += 1;
            total = Some(match total.take() {
                None => norm,
                Some(t) => t.f_add(&norm)?,
            });
            Ok(())
        };
        for l in &layers {
            if let Err(e) = term(l.lora_a(), true) {
                failure.get_or_insert(e);
            }
        }
        for l in &layers {
            if let Err(e) = term(l.lora_b(), false) {
                failure.get_or_insert(e);
            }
        }
    });
    if let Some(e) = failure {
        return Err(PeftError::torch("computing the orthogonal regularisation")(e));
    }
    match total {
        Some(t) => t
            .f_div_scalar(count)
            .and_then(|t| t.f_mul_scalar(weight))
            .map_err(PeftError::torch("computing the orthogonal regularisation")),
        None => Ok(Tensor::from(0.0f32)),
    }
}

/// The task loss plus [`orthogonal_regularization`] of the trainable adapter: what `AdaLoraModel.forward`
/// returns as `outputs.loss`.
///
/// # Errors
/// No trainable AdaLoRA adapter, or as [`orthogonal_regularization`].
pub fn regularized_loss<M: Adaptable>(peft: &PeftModel<M>, loss: &Tensor) -> Result<Tensor> {
    let adapter = trainable_adapter(peft)
        .ok_or_else(|| PeftError::Invalid("the model has no trainable AdaLoRA adapter".into()))?;
    let term = orthogonal_regularization(peft, &adapter)?;
    loss.f_add(&term).map_err(PeftError::torch("adding the orthogonal regularisation"))
}

/// What one [`RankAllocator::update_and_allocate`] call did.
#[derive(Clone, Debug, PartialEq)]
pub struct Allocation {
    /// The budget of the step (total kept triplets), when the allocator computed one.
    pub budget: Option<i64>,
    /// The new rank pattern, when triplets were masked by importance at this step (also written to the
    /// config and to the layers).
    pub rank_pattern: Option<RankPattern>,
}

/// PEFT's `RankAllocator` plus the phase logic of `AdaLoraModel.update_and_allocate`.
#[derive(Debug)]
pub struct RankAllocator {
    adapter: String,
    beta1: f64,
    beta2: f64,
    init_bgt: i64,
    target_bgt: i64,
    name_set: Vec<String>,
    ipt: BTreeMap<String, Tensor>,
    exp_avg_ipt: BTreeMap<String, Tensor>,
    exp_avg_unc: BTreeMap<String, Tensor>,
}

/// The PEFT in-memory names of one layer's three tensors (`<module>.lora_A.<adapter>`, …).
fn param_names(module: &str, adapter: &str) -> [String; 3] {
    [
        format!("{module}.lora_A.{adapter}"),
        format!("{module}.lora_B.{adapter}"),
        format!("{module}.lora_E.{adapter}"),
    ]
}

impl RankAllocator {
    /// The allocator of `adapter`, as `AdaLoraModel` creates it for its trainable adapter: the initial
    /// budget is the sum of the current ranks, the target budget `target_r` times the number of layers.
    ///
    /// # Errors
    /// An unknown or non-AdaLoRA adapter, one in inference mode, `beta1`/`beta2` outside `(0, 1)`.
    pub fn new<M: Adaptable>(peft: &PeftModel<M>, adapter: &str) -> Result<Self> {
        let config = adalora_config(peft, adapter)?;
        if config.common.inference_mode {
            return Err(PeftError::Invalid(format!(
                "adapter `{adapter}` is in inference mode; PEFT builds the rank allocator for the trainable adapter only"
            )));
        }
        let (beta1, beta2) = (config.beta1.value(), config.beta2.value());
        for (name, b) in [("beta1", beta1), ("beta2", beta2)] {
            if !(b > 0.0 && b < 1.0) {
                return Err(PeftError::Invalid(format!("`{name}` must be in (0, 1), got {b}")));
            }
        }
        let mut init_bgt = 0;
        let mut names = std::collections::BTreeSet::new();
        peft.model().visit_layers(&mut |layer| {
            if let Some(l) =
                layer.slots().get(adapter).and_then(|t| t.as_any().downcast_ref::<AdaLoraLayer>())
            {
                init_bgt += l.rank();
                names.insert(format!("{}.%s.{adapter}", layer.name()));
            }
        });
        let name_set: Vec<String> = names.into_iter().collect();
        let target_bgt = config.target_r * name_set.len() as i64;
        Ok(Self {
            adapter: adapter.to_string(),
            beta1,
            beta2,
            init_bgt,
            target_bgt,
            name_set,
            ipt: BTreeMap::new(),
            exp_avg_ipt: BTreeMap::new(),
            exp_avg_unc: BTreeMap::new(),
        })
    }

    /// The adapter this allocator serves.
    pub fn adapter(&self) -> &str {
        &self.adapter
    }

    /// The initial budget (sum of the ranks when the allocator was created).
    pub fn init_budget(&self) -> i64 {
        self.init_bgt
    }

    /// The adapted layers the budget covers, as PEFT's `name_set` (`<module>.%s.<adapter>`, sorted).
    pub fn layer_names(&self) -> &[String] {
        &self.name_set
    }

    /// The final budget (`target_r` times the number of adapted layers).
    pub fn target_budget(&self) -> i64 {
        self.target_bgt
    }

    /// The smoothed sensitivity and uncertainty of a parameter (PEFT's name,
    /// `<module>.lora_A.<adapter>`), once it has been updated.
    pub fn importance(&self, name: &str) -> Option<(&Tensor, &Tensor)> {
        Some((self.exp_avg_ipt.get(name)?, self.exp_avg_unc.get(name)?))
    }

    /// Forgets the importance statistics (PEFT's `reset_ipt`).
    pub fn reset_ipt(&mut self) {
        self.ipt.clear();
        self.exp_avg_ipt.clear();
        self.exp_avg_unc.clear();
    }

    /// PEFT's `budget_schedule`: the budget at `step` and whether triplets are masked at it.
    ///
    /// # Errors
    /// A config without `total_step`, `deltaT = 0`.
    pub fn budget_schedule(&self, config: &AdaLoraConfig, step: i64) -> Result<(i64, bool)> {
        let (tinit, tfinal, total) = (config.tinit, config.tfinal, config.total_step()?);
        if step <= tinit {
            return Ok((self.init_bgt, false));
        }
        if step > total - tfinal {
            return Ok((self.target_bgt, true));
        }
        if config.delta_t == 0 {
            return Err(PeftError::Invalid("`deltaT` must not be 0".into()));
        }
        let mul_coeff = 1.0 - (step - tinit) as f64 / (total - tfinal - tinit) as f64;
        let budget =
            ((self.init_bgt - self.target_bgt) as f64 * mul_coeff.powf(3.0) + self.target_bgt as f64) as i64;
        Ok((budget, step.rem_euclid(config.delta_t) == 0))
    }

    /// Updates the importance statistics from the current gradients (PEFT's `update_ipt`).
    fn update_ipt(&mut self, layers: &[LayerView]) -> Result<()> {
        let (b1, b2) = (self.beta1, self.beta2);
        for l in layers {
            for (name, p) in l.named(&self.adapter) {
                let grad = p.grad();
                if !grad.defined() {
                    return Err(PeftError::Invalid(format!(
                        "`{name}` has no gradient: call update_and_allocate after backward() and before zero_grad()"
                    )));
                }
                let step = || -> std::result::Result<(Tensor, Tensor, Tensor), tch::TchError> {
                    let zeros = || p.f_zeros_like();
                    let avg = match self.exp_avg_ipt.get(&name) {
                        Some(t) => t.shallow_clone(),
                        None => zeros()?,
                    };
                    let unc = match self.exp_avg_unc.get(&name) {
                        Some(t) => t.shallow_clone(),
                        None => zeros()?,
                    };
                    let ipt = p.f_mul(&grad)?.f_abs()?.f_detach()?;
                    let avg = avg.f_mul_scalar(b1)?.f_add(&ipt.f_mul_scalar(1.0 - b1)?)?;
                    let unc =
                        unc.f_mul_scalar(b2)?.f_add(&ipt.f_sub(&avg)?.f_abs()?.f_mul_scalar(1.0 - b2)?)?;
                    Ok((ipt, avg, unc))
                };
                let (ipt, avg, unc) =
                    tch::no_grad(step).map_err(PeftError::torch("updating AdaLoRA importance scores"))?;
                self.ipt.insert(name.clone(), ipt);
                self.exp_avg_ipt.insert(name.clone(), avg);
                self.exp_avg_unc.insert(name, unc);
            }
        }
        Ok(())
    }

    fn element_score(&self, name: &str) -> Result<Tensor> {
        let (avg, unc) = self.importance(name).ok_or_else(|| {
            PeftError::Invalid(format!(
                "no importance scores for `{name}` yet: update_and_allocate must run (with gradients) before the \
                 first masking step"
            ))
        })?;
        avg.f_mul(unc).map_err(PeftError::torch("scoring AdaLoRA triplets"))
    }

    /// PEFT's `mask_to_budget`: scores every triplet, zeroes `lora_E` of the `init_budget − budget`
    /// lowest and returns which triplets are kept, per layer.
    fn mask_to_budget(&self, layers: &[LayerView], budget: i64) -> Result<Vec<(String, Vec<bool>)>> {
        let mut triplets = Vec::with_capacity(layers.len());
        for l in layers {
            let [a, b, e] = param_names(&l.module, &self.adapter);
            let (sa, sb, se) = (self.element_score(&a)?, self.element_score(&b)?, self.element_score(&e)?);
            let score = || -> std::result::Result<Tensor, tch::TchError> {
                let ca = sa.f_mean_dim(Some([1i64].as_slice()), true, None::<Kind>)?;
                let cb = sb.f_mean_dim(Some([0i64].as_slice()), false, None::<Kind>)?.f_view([-1, 1])?;
                let ab = Tensor::f_cat(&[ca, cb], 1)?.f_sum_dim_intlist(
                    Some([1i64].as_slice()),
                    false,
                    None::<Kind>,
                )?;
                se.f_view([-1])?.f_add(&ab.f_view([-1])?)
            };
            triplets.push(tch::no_grad(score).map_err(PeftError::torch("scoring AdaLoRA triplets"))?);
        }
        let k = self.init_bgt - budget;
        let all = Tensor::f_cat(&triplets, 0).map_err(PeftError::torch("ranking AdaLoRA triplets"))?;
        if k < 1 || k > all.numel() as i64 {
            return Err(PeftError::Invalid(format!(
                "kthvalue(): selected number k={k} out of range for {} triplets (init budget {} − budget {budget}; \
                 target_r must be below init_r)",
                all.numel(),
                self.init_bgt
            )));
        }
        let threshold = all
            .f_kthvalue(k, -1, false)
            .and_then(|(v, _)| v.f_double_value(&[]))
            .map_err(PeftError::torch("ranking AdaLoRA triplets"))?;
        let mut out = Vec::with_capacity(layers.len());
        for (l, t) in layers.iter().zip(&triplets) {
            let dropped = tch::no_grad(|| -> std::result::Result<Tensor, tch::TchError> {
                let mask = t.f_view([-1, 1])?.f_le(threshold)?;
                let mut e = l.e.shallow_clone();
                let _ = e.f_masked_fill_(&mask, 0.0)?;
                mask.f_view([-1])
            })
            .map_err(PeftError::torch("masking lora_E"))?;
            let dropped: Vec<bool> =
                Vec::<bool>::try_from(&dropped).map_err(PeftError::torch("reading the rank pattern"))?;
            out.push((l.module.clone(), dropped.iter().map(|d| !d).collect()));
        }
        Ok(out)
    }

    /// PEFT's `AdaLoraModel.update_and_allocate(global_step)`: call it every training step after
    /// `optimizer.step()` and before `zero_grad()`.
    ///
    /// * `global_step < total_step − tfinal`: importance update; on masking steps (past `tinit`, every
    ///   `deltaT`) the lowest triplets get `lora_E = 0` and the new pattern goes to the config's
    ///   `rank_pattern` and the layers (saving then writes only the kept triplets).
    /// * `global_step == total_step − tfinal`: the final allocation (to `target_r` per layer on average),
    ///   stored; the statistics are reset.
    /// * later: the stored pattern is re-applied to `lora_E`.
    ///
    /// # Errors
    /// Missing gradients, an impossible budget (`target_r >= init_r`), a stored pattern that does not fit
    /// the layers.
    pub fn update_and_allocate<M: Adaptable>(
        &mut self,
        peft: &mut PeftModel<M>,
        global_step: i64,
    ) -> Result<Allocation> {
        let config = adalora_config(peft, &self.adapter)?.clone();
        let end = config.total_step()? - config.tfinal;
        let layers = snapshot(peft, &self.adapter);
        if global_step < end {
            self.update_ipt(&layers)?;
            let (budget, mask) = self.budget_schedule(&config, global_step)?;
            let mut pattern = None;
            if mask {
                let kept = self.mask_to_budget(&layers, budget)?;
                if !kept.is_empty() {
                    pattern = Some(self.store(peft, kept)?);
                }
            }
            return Ok(Allocation { budget: Some(budget), rank_pattern: pattern });
        }
        if global_step == end {
            let (budget, _) = self.budget_schedule(&config, global_step)?;
            let kept = self.mask_to_budget(&layers, budget)?;
            let pattern = self.store(peft, kept)?;
            self.reset_ipt();
            return Ok(Allocation { budget: Some(budget), rank_pattern: Some(pattern) });
        }
        let pattern = config.rank_pattern.as_ref().ok_or_else(|| {
            PeftError::Invalid(format!(
                "step {global_step} is past total_step − tfinal = {end} but the config has no rank_pattern"
            ))
        })?;
        for l in &layers {
            let keep = lookup(pattern, &l.module, &self.adapter).ok_or_else(|| {
                PeftError::Invalid(format!(
                    "rank_pattern has no entry for `{}`",
                    rank_pattern_key(&l.module, &self.adapter)
                ))
            })?;
            l.mask(keep)?;
        }
        Ok(Allocation { budget: None, rank_pattern: None })
    }

    /// Writes a new allocation to the config's `rank_pattern` and to the layers.
    fn store<M: Adaptable>(
        &self,
        peft: &mut PeftModel<M>,
        kept: Vec<(String, Vec<bool>)>,
    ) -> Result<RankPattern> {
        let pattern: RankPattern =
            kept.into_iter().map(|(m, k)| (rank_pattern_key(&m, &self.adapter), k)).collect();
        set_rank_pattern(peft, &self.adapter, Some(pattern.clone()))?;
        Ok(pattern)
    }
}

/// A pattern's entry for a layer: under PEFT's saved key, or its in-memory key with the adapter name.
fn lookup<'p>(pattern: &'p RankPattern, module: &str, adapter: &str) -> Option<&'p [bool]> {
    pattern
        .get(&rank_pattern_key(module, adapter))
        .or_else(|| pattern.get(&format!("{module}.lora_E.{adapter}")))
        .map(Vec::as_slice)
}

/// Sets the `rank_pattern` of adapter `adapter` in its config and on its layers (what saving truncates
/// to), without masking anything; `None` clears it. [`RankAllocator::update_and_allocate`] calls it.
///
/// # Errors
/// An unknown or non-AdaLoRA adapter; a pattern entry whose length is not the layer's rank.
pub fn set_rank_pattern<M: Adaptable>(
    peft: &mut PeftModel<M>,
    adapter: &str,
    pattern: Option<RankPattern>,
) -> Result<()> {
    adalora_config(peft, adapter)?;
    peft.model_mut().visit_layers_mut(&mut |layer| {
        let module = layer.name().to_string();
        let (_, slots) = layer.parts_mut();
        if let Some(l) = slots.get_mut(adapter).and_then(|t| t.as_any_mut().downcast_mut::<AdaLoraLayer>()) {
            let keep = pattern.as_ref().and_then(|p| lookup(p, &module, adapter)).map(<[bool]>::to_vec);
            l.set_kept(keep)?;
        }
        Ok(())
    })?;
    if let Some(c) = peft.config_mut(adapter).and_then(|c| c.as_any_mut().downcast_mut::<AdaLoraConfig>()) {
        c.rank_pattern = pattern;
    }
    Ok(())
}

/// One layer's tensors (shallow clones: gradients and in-place masking are shared with the model).
struct LayerView {
    module: String,
    a: Tensor,
    b: Tensor,
    e: Tensor,
    layer_rank: i64,
}

impl LayerView {
    fn named(&self, adapter: &str) -> [(String, &Tensor); 3] {
        let [na, nb, ne] = param_names(&self.module, adapter);
        [(na, &self.a), (nb, &self.b), (ne, &self.e)]
    }

    fn mask(&self, keep: &[bool]) -> Result<()> {
        if keep.len() as i64 != self.layer_rank {
            return Err(PeftError::Invalid(format!(
                "rank_pattern[{:?}] has {} entries for {} triplets",
                self.module,
                keep.len(),
                self.layer_rank
            )));
        }
        let dropped: Vec<bool> = keep.iter().map(|k| !k).collect();
        let mask = Tensor::from_slice(&dropped).to_device(self.e.device()).unsqueeze(-1);
        let mut e = self.e.shallow_clone();
        tch::no_grad(|| e.f_masked_fill_(&mask, 0.0)).map(drop).map_err(PeftError::torch("masking lora_E"))
    }
}

fn snapshot<M: Adaptable>(peft: &PeftModel<M>, adapter: &str) -> Vec<LayerView> {
    let mut out = Vec::new();
    peft.model().visit_layers(&mut |layer| {
        if let Some(l) = layer.slots().get(adapter).and_then(|t| t.as_any().downcast_ref::<AdaLoraLayer>()) {
            out.push(LayerView {
                module: layer.name().to_string(),
                a: l.lora_a().shallow_clone(),
                b: l.lora_b().shallow_clone(),
                e: l.lora_e().shallow_clone(),
                layer_rank: l.rank(),
            });
        }
    });
    out
}
