//! ASA (Adaptive Subspace Allocation): PEFT's `AdamssModel.update_and_allocate` and its
//! `AdamssAsaCallback`.
//!
//! For each active adapter with `use_asa`, at every step in `[init_warmup, final_warmup]` each subspace's
//! importance `I = |w·∇w|` and its uncertainty `U = |I − Ī|` are averaged (EMA, `U` first) over the
//! subspace's `Aᵢ` and `Bᵢ`; every `mask_interval` steps within that window the subspaces are scored
//! `mean(Ī_A·Ū_A) + mean(Ī_B·Ū_B)`, the subspaces scored strictly above the `target(step)`-th best over
//! all layers keep training — `target − 1` of them when the scores differ, as PEFT's `score > threshold`
//! keeps — the others stop (`requires_grad` off, gradients dropped), and the averages restart.
//! Subspaces without averages (no gradient since the last restart, e.g. masked earlier) are neither
//! scored nor changed, so a masked subspace stays masked. The schedule falls from
//! all subspaces to `asa_target_subspaces` as `target + (total − target)·(1 − progress)^exponent`.
//!
//! Call [`Asa::update_and_allocate`] after the optimizer step and before `zero_grad`, with the 0-based
//! step index (a hand-written loop), or register [`AsaCallback`] with `peft_train::Trainer`.

use crate::config::AdamssConfig;
use crate::layer::AdamssLayer;
use peft_core::{Adaptable, PeftError, PeftModel, Result};
use std::collections::BTreeMap;
use tch::{Kind, Tensor};

extern "C" {
    fn peft_adamss_clear_grad(param: *const torch_sys::C_tensor) -> *mut std::ffi::c_char;
    fn peft_adamss_ema(
        acc: *const torch_sys::C_tensor,
        x: *const torch_sys::C_tensor,
        beta: f64,
    ) -> *mut std::ffi::c_char;
}

/// `param.grad = None`.
///
/// # Errors
/// A libtorch failure.
pub fn clear_grad(param: &Tensor) -> Result<()> {
    // SAFETY: a live tch tensor borrowed for the call; the shim returns an owned message or null.
    unsafe { peft_core::rng::take_error(peft_adamss_clear_grad(param.as_ptr()), "dropping a gradient") }
}

/// `acc.mul_(beta).add_(x, alpha=1 - beta)`.
fn ema(acc: &Tensor, x: &Tensor, beta: f64) -> Result<()> {
    // SAFETY: live tch tensors borrowed for the call; the shim returns an owned message or null.
    unsafe { peft_core::rng::take_error(peft_adamss_ema(acc.as_ptr(), x.as_ptr(), beta), "ASA's averages") }
}

/// The running averages of one tensor (`exp_avg_ipt`, `exp_avg_unc`).
#[derive(Debug)]
struct Avg {
    ipt: Tensor,
    unc: Tensor,
}

/// One subspace's averages for `Aᵢ` and `Bᵢ` (`None` until a gradient was seen).
#[derive(Debug, Default)]
struct SubspaceStats {
    a: Option<Avg>,
    b: Option<Avg>,
}

/// One ASA layer view: the module and its subspaces' `(Aᵢ, Bᵢ)`.
struct LayerView {
    module: String,
    params: Vec<(Tensor, Tensor)>,
}

/// What one call did.
#[derive(Clone, Debug, PartialEq)]
pub struct AsaStep {
    /// The adapter.
    pub adapter: String,
    /// The scheduled number of subspaces, when this step masked.
    pub target: Option<i64>,
    /// The subspaces left training after masking: `(module, subspace)`.
    pub active: Vec<(String, usize)>,
}

/// PEFT's ASA state and schedule for every adapter of a model (the averages PEFT keeps on its layers).
#[derive(Debug, Default)]
pub struct Asa {
    stats: BTreeMap<(String, String), Vec<SubspaceStats>>,
}

fn adamss_config<'a, M: Adaptable>(peft: &'a PeftModel<M>, adapter: &str) -> Option<&'a AdamssConfig> {
    peft.config(adapter)?.as_any().downcast_ref::<AdamssConfig>()
}

fn layers<M: Adaptable>(peft: &PeftModel<M>, adapter: &str) -> Vec<LayerView> {
    let mut out = Vec::new();
    peft.model().visit_layers(&mut |layer| {
        if let Some(l) = layer.slots().get(adapter).and_then(|t| t.as_any().downcast_ref::<AdamssLayer>()) {
            let params = (0..l.num_subspaces()).filter_map(|i| l.subspace(i)).collect();
            out.push(LayerView { module: layer.name().to_string(), params });
        }
    });
    out
}

/// `AdamssModel._asa_total_subspaces[adapter]`: the subspaces of the layers this adapter created; else
/// (`_get_asa_total_subspaces`) those of each layer's first AdaMSS adapter.
fn total_subspaces<M: Adaptable>(peft: &PeftModel<M>, adapter: &str) -> i64 {
    let (mut own, mut first) = (0i64, 0i64);
    peft.model().visit_layers(&mut |layer| {
        let slots = layer.slots();
        if let Some(l) = slots.get(adapter).and_then(|t| t.as_any().downcast_ref::<AdamssLayer>()) {
            if l.first_on_layer() {
                own += l.num_subspaces() as i64;
            }
        }
        if let Some(l) = slots.adapters().values().find_map(|t| t.as_any().downcast_ref::<AdamssLayer>()) {
            first += l.num_subspaces() as i64;
        }
    });
    if own > 0 {
        own
    } else {
        first
    }
}

/// `_schedule_threshold`: the number of subspaces to keep at `step`.
pub fn schedule(step: i64, config: &AdamssConfig, total: i64) -> Option<i64> {
    if total == 0 || step < config.init_warmup {
        return None;
    }
    let target = config.asa_target_subspaces;
    if step > config.final_warmup {
        return Some(target);
    }
    let progress = (step - config.init_warmup) as f64 / (config.final_warmup - config.init_warmup) as f64;
    let mul = (1.0 - progress).clamp(0.0, 1.0);
    let value = target as f64 + (total - target) as f64 * mul.powf(config.asa_schedule_exponent.value());
    Some(value.trunc() as i64)
}

impl Asa {
    /// Empty state (no averages yet).
    pub fn new() -> Self {
        Self::default()
    }

    /// `update_and_allocate(global_step)`: for each active AdaMSS adapter with `use_asa`, accumulate the
    /// importance within the warmup window and, at mask intervals, keep the scheduled number of subspaces
    /// training and restart the averages. Returns what each adapter did.
    ///
    /// # Errors
    /// A libtorch failure.
    pub fn update_and_allocate<M: Adaptable>(
        &mut self,
        peft: &mut PeftModel<M>,
        global_step: i64,
    ) -> Result<Vec<AsaStep>> {
        let mut done = Vec::new();
        let active: Vec<String> = peft.active_adapters().to_vec();
        for adapter in &active {
            let Some(config) = adamss_config(peft, adapter).cloned() else { continue };
            if !config.use_asa {
                continue;
            }
            let views = layers(peft, adapter);
            if views.is_empty() {
                continue;
            }
            let within = config.init_warmup <= global_step && global_step <= config.final_warmup;
            if within {
                self.update_importance(adapter, &views, &config)?;
            }
            let mut step = AsaStep { adapter: adapter.clone(), target: None, active: Vec::new() };
            if within && global_step % config.mask_interval == 0 {
                // PEFT's schedule reads the total of the first active adapter, whichever it masks.
                let total = total_subspaces(peft, active.first().map_or("default", String::as_str));
                if let Some(target) = schedule(global_step, &config, total) {
                    step.target = Some(target);
                    step.active = self.mask(adapter, &views, target)?;
                }
                for v in &views {
                    if let Some(s) = self.stats.get_mut(&(adapter.clone(), v.module.clone())) {
                        s.iter_mut().for_each(|s| *s = SubspaceStats::default());
                    }
                }
            }
            done.push(step);
        }
        Ok(done)
    }

    /// `update_importance` on every layer: `|w·∇w|`, the uncertainty's EMA, then the importance's.
    fn update_importance(&mut self, adapter: &str, views: &[LayerView], config: &AdamssConfig) -> Result<()> {
        let (ib, ub) = (config.asa_importance_beta.value(), config.asa_uncertainty_beta.value());
        for v in views {
            let stats = self.stats.entry((adapter.to_string(), v.module.clone())).or_default();
            stats.resize_with(v.params.len(), SubspaceStats::default);
            for ((a, b), s) in v.params.iter().zip(stats.iter_mut()) {
                for (p, slot) in [(a, &mut s.a), (b, &mut s.b)] {
                    let g = p.grad();
                    if !g.defined() {
                        continue;
                    }
                    let avg = slot.get_or_insert_with(|| Avg { ipt: p.zeros_like(), unc: p.zeros_like() });
                    let ipt = tch::no_grad(|| (p * &g).abs().detach());
                    let diff = tch::no_grad(|| (&ipt - &avg.ipt).abs());
                    ema(&avg.unc, &diff, ub)?;
                    ema(&avg.ipt, &ipt, ib)?;
                }
            }
        }
        Ok(())
    }

    /// `_global_mask_to_target`: the `target` best-scored subspaces (of those with averages) keep
    /// training; the rest stop and lose their gradients.
    fn mask(&self, adapter: &str, views: &[LayerView], target: i64) -> Result<Vec<(String, usize)>> {
        let mut scored: Vec<(&LayerView, usize, Tensor)> = Vec::new();
        for v in views {
            let Some(stats) = self.stats.get(&(adapter.to_string(), v.module.clone())) else { continue };
            for (i, s) in stats.iter().enumerate() {
                if let (Some(a), Some(b)) = (&s.a, &s.b) {
                    let score = tch::no_grad(|| {
                        (&a.ipt * &a.unc).mean(Kind::Float) + (&b.ipt * &b.unc).mean(Kind::Float)
                    });
                    scored.push((v, i, score));
                }
            }
        }
        if scored.is_empty() {
            return Ok(Vec::new());
        }
        let threshold = if target >= scored.len() as i64 {
            f64::NEG_INFINITY
        } else {
            let all = Tensor::stack(&scored.iter().map(|s| s.2.shallow_clone()).collect::<Vec<_>>(), 0);
            let (kth, _) = tch::no_grad(|| (-all).f_kthvalue(target, -1, false))
                .map_err(PeftError::torch("ASA's threshold"))?;
            -kth.double_value(&[])
        };
        let mut kept = Vec::new();
        for (v, i, score) in &scored {
            let on = score.double_value(&[]) > threshold;
            let (a, b) = &v.params[*i];
            for p in [a, b] {
                let _ = p.set_requires_grad(on);
                if !on {
                    clear_grad(p)?;
                }
            }
            if on {
                kept.push((v.module.clone(), *i));
            }
        }
        Ok(kept)
    }
}

/// [`Asa`] as a `peft_train` step callback (PEFT's `AdamssAsaCallback`): after each optimizer step,
/// while the gradients are still there, `update_and_allocate(step)`.
#[derive(Debug, Default)]
pub struct AsaCallback {
    asa: Asa,
    last: Vec<AsaStep>,
}

impl AsaCallback {
    /// A callback with fresh state.
    pub fn new() -> Self {
        Self::default()
    }

    /// What the last step did.
    pub fn last_step(&self) -> &[AsaStep] {
        &self.last
    }
}

impl<M: Adaptable> peft_train::StepCallback<M> for AsaCallback {
    fn after_optimizer_step(&mut self, peft: &mut PeftModel<M>, step: usize) -> peft_train::Result<()> {
        self.last = self.asa.update_and_allocate(peft, step as i64)?;
        Ok(())
    }
}
