//! EVA (Explained Variance Adaptation, `init_lora_weights = "eva"`): A is initialised from the top
//! right-singular vectors of each layer's inputs, found by incremental PCA over batches of data, and the
//! ranks are redistributed across layers by explained variance — PEFT's `get_eva_state_dict` and
//! `initialize_lora_eva_weights`, step for step.
//!
//! 1. One forward pass finds layers that see identical inputs (q/k/v projections); they share one PCA.
//! 2. Passes over the batches (cycled) feed each layer's inputs to an [`IncrementalPca`] with
//!    `rank · rho` components until, for every layer, the components in use stopped moving (cosine
//!    similarity ≥ `tau` with the previous pass). After each pass the rank budget (the sum of the
//!    configured ranks) goes to the components with the largest explained variance ratios.
//! 3. Each LoRA layer is re-created with its new rank (scaling adjusted when `adjust_scaling_factors`),
//!    A set to the components, B zero; layers whose rank drops to 0 lose their adapter; the config records
//!    `rank_pattern`, `alpha_pattern` and the remaining `target_modules`.
//!
//! The forward passes run with adapters disabled; the data are whatever the caller's `forward` feeds the
//! model, and `mask` picks the positions that count (for language modelling:
//! [`language_modeling_mask`]).
//!
//! The randomized SVD re-seeds the generator inside a fork of it (`peft_core::rng::fork_default_cpu`,
//! PEFT's `fork_rng`), so the caller's random stream goes on after EVA as it does in PEFT.

use crate::config::{Alpha, InitLoraWeights, LoraConfig};
use crate::layer::{LoraKind, LoraLayer};
use peft_core::error::{PeftError, Result};
use peft_core::linalg::IncrementalPca;
use peft_core::peft_config::TargetModules;
use peft_core::{Adaptable, ForwardHook, PeftModel};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use tch::{Kind, Tensor};

/// PEFT's `EvaConfig`, read from `LoraConfig::eva_config`.
#[derive(Clone, Debug, PartialEq)]
pub struct EvaConfig {
    /// Maximum rank per layer, as a multiple of its configured rank (≥ 1).
    pub rho: f64,
    /// Cosine-similarity threshold for convergence.
    pub tau: f64,
    /// Ignore positions whose label is `label_mask_value` ([`language_modeling_mask`]).
    pub use_label_mask: bool,
    /// The ignored label.
    pub label_mask_value: i64,
    /// Divide the components by the square roots of their singular values.
    pub whiten: bool,
    /// Scale alpha with the new rank so gradients keep their scale.
    pub adjust_scaling_factors: bool,
}

impl EvaConfig {
    /// From the config's `eva_config` (PEFT's defaults for missing keys).
    ///
    /// # Errors
    /// `rho < 1` or `tau` outside `[0, 1]`.
    pub fn from_config(config: &LoraConfig) -> Result<Self> {
        let v = config.eva_config.clone().unwrap_or_else(crate::config::default_eva_config);
        let f = |k: &str, d: f64| v.get(k).and_then(serde_json::Value::as_f64).unwrap_or(d);
        let b = |k: &str, d: bool| v.get(k).and_then(serde_json::Value::as_bool).unwrap_or(d);
        let c = EvaConfig {
            rho: f("rho", 2.0),
            tau: f("tau", 0.99),
            use_label_mask: b("use_label_mask", true),
            label_mask_value: v.get("label_mask_value").and_then(serde_json::Value::as_i64).unwrap_or(-100),
            whiten: b("whiten", false),
            adjust_scaling_factors: b("adjust_scaling_factors", true),
        };
        if c.rho < 1.0 {
            return Err(PeftError::Invalid("`rho` must be >= 1.0".into()));
        }
        if !(0.0..=1.0).contains(&c.tau) {
            return Err(PeftError::Invalid("`tau` must be between 0.0 and 1.0.".into()));
        }
        Ok(c)
    }
}

/// PEFT's `prepare_model_inputs_fn_language_modeling`: the positions that count — the attention mask,
/// and with `use_label_mask` only positions whose label is not `label_mask_value`.
pub fn language_modeling_mask(attention_mask: &Tensor, labels: Option<&Tensor>, eva: &EvaConfig) -> Tensor {
    let mask = attention_mask.to_kind(Kind::Bool);
    match labels {
        Some(l) if eva.use_label_mask => mask.logical_and(&l.ne(eva.label_mask_value)),
        _ => mask,
    }
}

/// One layer's PCA (PEFT's `SVDHook`).
struct SvdState {
    pca: IncrementalPca,
    n_components: i64,
    converged: Tensor,
    active: bool,
}

/// What the hooks share with the driver.
#[derive(Default)]
struct Shared {
    /// The positions that count in the current batch.
    mask: Option<Tensor>,
    /// First pass: each layer's prepared input.
    first_inputs: BTreeMap<String, Tensor>,
    hashing: bool,
    svd: BTreeMap<String, SvdState>,
    tau: f64,
    error: Option<PeftError>,
}

/// The rows of a layer input that enter the PCA: `x[mask]`, or all positions flattened.
fn prepare(x: &Tensor, mask: Option<&Tensor>) -> Tensor {
    match mask {
        Some(m) if x.dim() >= 2 && m.size()[..] == x.size()[..x.dim() - 1] => x.index(&[Some(m)]),
        _ if x.dim() > 2 => x.reshape([-1, *x.size().last().unwrap_or(&1)]),
        _ => x.shallow_clone(),
    }
}

fn hook_fn(shared: Arc<Mutex<Shared>>) -> ForwardHook {
    Arc::new(move |name: &str, x: &Tensor, _y: &Tensor| {
        let mut s = shared.lock().unwrap_or_else(|p| p.into_inner());
        if s.error.is_some() {
            return;
        }
        let states = tch::no_grad(|| prepare(x, s.mask.as_ref()));
        if s.hashing {
            s.first_inputs.insert(name.to_string(), states.to_device(tch::Device::Cpu));
            return;
        }
        let tau = s.tau;
        let Some(st) = s.svd.get_mut(name) else { return };
        if !st.active {
            return;
        }
        if states.size()[0] < st.n_components {
            log::info!("skipping SVD for {name} because there are less than {} examples", st.n_components);
            return;
        }
        let previous = st.pca.components.as_ref().map(Tensor::copy);
        let r = st.pca.partial_fit(&states.to_kind(Kind::Float));
        if let Err(e) = r {
            s.error = Some(e);
            return;
        }
        let (Some(prev), Some(comps)) = (previous, st.pca.components.as_ref()) else { return };
        let (comps, prev) = if comps.dim() == 1 {
            (comps.reshape([1, -1]), prev.reshape([1, -1]))
        } else {
            (comps.shallow_clone(), prev)
        };
        let sim = Tensor::cosine_similarity(&comps, &prev, 1, 1e-8);
        st.converged = sim.ge(tau);
    })
}

fn lock(s: &Arc<Mutex<Shared>>) -> std::sync::MutexGuard<'_, Shared> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

/// Python's `round` (half to even).
fn py_round(x: f64) -> i64 {
    x.round_ties_even() as i64
}

/// PEFT's `get_eva_state_dict` for adapter `adapter`: per LoRA layer (linear layers; embeddings and
/// convolutions are not supported by EVA), the components that become its A, rows = its new rank.
/// `forward` runs the model on one batch; `mask` gives the batch's positions that count (`None`: all).
///
/// # Errors
/// An unknown or non-LoRA adapter, an empty batch list, PCA errors, no convergence within
/// `max_passes` passes, or what `forward` returns.
pub fn get_eva_state_dict<M: Adaptable, B>(
    peft: &mut PeftModel<M>,
    adapter: &str,
    batches: &[B],
    mut forward: impl FnMut(&M, &B) -> Result<()>,
    mask: impl Fn(&B) -> Option<Tensor>,
    max_passes: usize,
) -> Result<BTreeMap<String, Tensor>> {
    if batches.is_empty() {
        return Err(PeftError::Invalid("dataloader is empty".into()));
    }
    let config = peft
        .config(adapter)
        .and_then(|c| c.as_any().downcast_ref::<LoraConfig>())
        .ok_or_else(|| PeftError::Invalid(format!("`{adapter}` is not a LoRA adapter")))?
        .clone();
    let eva = EvaConfig::from_config(&config)?;
    let mut rho = eva.rho;
    if rho > 1000.0 {
        let max_dim = peft.named_parameters().iter().flat_map(|(_, t)| t.size()).max().unwrap_or(0);
        rho = rho.min((max_dim / config.r) as f64);
    }
    // The target layers, in module order, with their configured ranks.
    let mut layers: Vec<(String, i64)> = Vec::new();
    let mut err = None;
    peft.model().visit_layers(&mut |l| {
        if let Some(lora) = l.slots().get(adapter).and_then(|t| t.as_any().downcast_ref::<LoraLayer>()) {
            if matches!(lora.kind, LoraKind::Linear { .. }) {
                match config.rank_and_alpha(l.name()) {
                    Ok((r, _)) => layers.push((l.name().to_string(), r)),
                    Err(e) => err = Some(e),
                }
            }
        }
    });
    if let Some(e) = err {
        return Err(e);
    }
    let names: Vec<String> = layers.iter().map(|(n, _)| n.clone()).collect();
    let mut max_components: BTreeMap<String, i64> =
        layers.iter().map(|(n, r)| (n.clone(), py_round(*r as f64 * rho))).collect();
    let rank_budget: i64 = layers.iter().map(|(_, r)| r).sum();

    let shared = Arc::new(Mutex::new(Shared { hashing: true, tau: eva.tau, ..Default::default() }));
    peft.set_forward_hook(&names, Some(hook_fn(shared.clone())))?;
    let result = (|| -> Result<BTreeMap<String, Tensor>> {
        // 1. Which layers see the same inputs.
        lock(&shared).mask = mask(&batches[0]);
        {
            let guard = peft.disable_adapters()?;
            tch::no_grad(|| forward(&guard, &batches[0]))?;
        }
        let first = std::mem::take(&mut lock(&shared).first_inputs);
        let mut groups: Vec<Vec<String>> = Vec::new();
        for n in &names {
            let Some(t) = first.get(n) else { continue };
            match groups
                .iter_mut()
                .find(|g| first.get(&g[0]).is_some_and(|u| u.size() == t.size() && u.equal(t)))
            {
                Some(g) => g.push(n.clone()),
                None => groups.push(vec![n.clone()]),
            }
        }
        let mut equal_map: Vec<(String, String)> = Vec::new(); // layer -> layer holding the PCA
        for g in groups.iter().filter(|g| g.len() > 1) {
            let max = g.iter().map(|n| max_components[n]).max().unwrap_or(0);
            for n in g {
                max_components.insert(n.clone(), max);
            }
            for n in &g[1..] {
                equal_map.push((n.clone(), g[0].clone()));
            }
        }
        let hooked: Vec<String> =
            names.iter().filter(|n| !equal_map.iter().any(|(k, _)| k == *n)).cloned().collect();
        {
            let mut s = lock(&shared);
            s.hashing = false;
            for n in &hooked {
                let k = max_components[n];
                s.svd.insert(
                    n.clone(),
                    SvdState {
                        pca: IncrementalPca::new(k, true, Some(42)),
                        n_components: k,
                        converged: Tensor::zeros([k], (Kind::Bool, tch::Device::Cpu)),
                        active: true,
                    },
                );
            }
        }
        // layer_hook_map: every layer → the layer whose PCA it uses (hooked layers first).
        let mut hook_map: Vec<(String, String)> = hooked.iter().map(|n| (n.clone(), n.clone())).collect();
        hook_map.extend(equal_map.iter().cloned());
        // 2. Passes until every layer's components in use converged.
        let mut converged_flag: BTreeMap<String, bool> = hooked.iter().map(|n| (n.clone(), false)).collect();
        let mut rank_dist: BTreeMap<String, i64> = max_components.clone();
        let mut passes = 0usize;
        for batch in batches.iter().cycle() {
            {
                let mut s = lock(&shared);
                if let Some(e) = s.error.take() {
                    return Err(e);
                }
                for n in &hooked {
                    let st = s.svd.get_mut(n).ok_or_else(|| PeftError::Invalid("EVA state lost".into()))?;
                    let k = rank_dist[n].min(st.converged.size()[0]);
                    let converged = st.converged.narrow(0, 0, k).all().int64_value(&[]) != 0;
                    let flag = converged_flag
                        .get_mut(n)
                        .ok_or_else(|| PeftError::Invalid("EVA state lost".into()))?;
                    if !*flag && converged && st.active {
                        st.active = false;
                        *flag = true;
                        continue;
                    } else if *flag && !converged {
                        st.active = true;
                        *flag = false;
                    }
                }
            }
            if converged_flag.values().all(|c| *c) {
                break;
            }
            if passes >= max_passes {
                return Err(PeftError::Invalid(format!(
                    "EVA did not converge within {max_passes} passes (tau {})",
                    eva.tau
                )));
            }
            passes += 1;
            lock(&shared).mask = mask(batch);
            {
                let guard = peft.disable_adapters()?;
                tch::no_grad(|| forward(&guard, batch))?;
            }
            let s = lock(&shared);
            if let Some(e) = &s.error {
                return Err(PeftError::Invalid(e.to_string()));
            }
            if !s.svd.values().all(|st| st.pca.components.is_some()) {
                continue;
            }
            rank_dist = rank_distribution(&s.svd, &hook_map, &equal_map, rank_budget, &max_components)?;
        }
        // 3. The components in use.
        let s = lock(&shared);
        let mut out = BTreeMap::new();
        for (name, rank) in &rank_dist {
            let holder =
                hook_map.iter().find(|(k, _)| k == name).map(|(_, h)| h.clone()).unwrap_or(name.clone());
            let st = s.svd.get(&holder).ok_or_else(|| PeftError::Invalid(format!("no PCA for `{name}`")))?;
            let k = (*rank).min(st.converged.size()[0]);
            if st.converged.narrow(0, 0, k).all().int64_value(&[]) == 0 {
                return Err(PeftError::Invalid(format!(
                    "Layer {name} has not converged but was assigned rank {rank}."
                )));
            }
            let comps = st
                .pca
                .components
                .as_ref()
                .ok_or_else(|| PeftError::Invalid(format!("no components for `{name}`")))?;
            let mut u = comps.narrow(0, 0, *rank);
            if eva.whiten {
                if let Some(sv) = &st.pca.singular_values {
                    u = &u / sv.narrow(0, 0, *rank).sqrt().reshape([-1, 1]);
                }
            }
            out.insert(name.clone(), u);
        }
        Ok(out)
    })();
    peft.set_forward_hook(&names, None)?;
    result
}

/// `_get_rank_distribution`: the rank budget goes to the largest explained-variance ratios.
fn rank_distribution(
    svd: &BTreeMap<String, SvdState>,
    hook_map: &[(String, String)],
    equal_map: &[(String, String)],
    budget: i64,
    max_components: &BTreeMap<String, i64>,
) -> Result<BTreeMap<String, i64>> {
    let mut keys: Vec<&str> = Vec::new();
    let mut values: Vec<Tensor> = Vec::new();
    for (layer, holder) in hook_map {
        let st = svd.get(holder).ok_or_else(|| PeftError::Invalid(format!("no PCA for `{holder}`")))?;
        let Some(ratio) = &st.pca.explained_variance_ratio else { continue };
        let k = max_components[holder].min(ratio.size()[0]);
        for i in 0..k {
            keys.push(layer);
            values.push(ratio.get(i));
        }
    }
    let idx = Tensor::stack(&values, 0).argsort(0, true);
    let order: Vec<i64> =
        Vec::<i64>::try_from(&idx).map_err(PeftError::torch("ranking explained variance"))?;
    let mut counts: BTreeMap<String, i64> = hook_map.iter().map(|(k, _)| (k.clone(), 0)).collect();
    for &i in order.iter().take(budget.max(0) as usize) {
        if let Some(c) = counts.get_mut(keys[i as usize]) {
            *c += 1;
        }
    }
    for (k, k_hook) in equal_map {
        let (rank, rank_hook) = (counts[k], counts[k_hook]);
        if rank_hook >= rank {
            continue;
        }
        counts.insert(k_hook.clone(), rank);
        counts.insert(k.clone(), rank_hook);
    }
    Ok(counts)
}

/// PEFT's `initialize_lora_eva_weights` with a computed EVA state dict (see [`get_eva_state_dict`]):
/// re-creates each LoRA layer of `adapter` with its EVA rank and components, and records the ranks,
/// alphas and remaining targets in the config. Layers without EVA components get the default init.
/// Returns PEFT's warnings.
///
/// # Errors
/// An adapter whose `init_lora_weights` is not `"eva"`, several active adapters, or creation errors.
pub fn initialize_lora_eva_weights<M: Adaptable>(
    peft: &mut PeftModel<M>,
    adapter: &str,
    mut eva_state_dict: BTreeMap<String, Tensor>,
) -> Result<Vec<String>> {
    if peft.active_adapters().len() > 1 {
        return Err(PeftError::Invalid(
            "`initialize_lora_eva_weights` currently only works with a single active adapter".into(),
        ));
    }
    let config = peft
        .config(adapter)
        .and_then(|c| c.as_any().downcast_ref::<LoraConfig>())
        .ok_or_else(|| PeftError::Invalid(format!("`{adapter}` is not a LoRA adapter")))?
        .clone();
    if config.init_lora_weights != InitLoraWeights::Scheme("eva".into()) {
        return Err(PeftError::Invalid(
            "`initialize_lora_eva_weights` can only be used with `init_lora_weights='eva'`".into(),
        ));
    }
    let eva = EvaConfig::from_config(&config)?;
    let mut modules: Vec<String> = Vec::new();
    peft.model().visit_layers(&mut |l| {
        if l.slots().get(adapter).is_some_and(|t| t.as_any().is::<LoraLayer>()) {
            modules.push(l.name().to_string());
        }
    });
    let mut new_targets = Vec::new();
    let mut missing = Vec::new();
    let mut rank_pattern = indexmap::IndexMap::new();
    let mut alpha_pattern = indexmap::IndexMap::new();
    let config_alpha = config.lora_alpha.value();
    for name in &modules {
        let (r, mut alpha) = config.rank_and_alpha(name)?;
        let mut layer_config = config.clone();
        let new_rank;
        match eva_state_dict.remove(name) {
            Some(w) => {
                new_rank = w.size()[0];
                if new_rank == 0 {
                    peft.recreate_adapter_layer(name, adapter, None)?;
                    continue;
                }
                if new_rank != r {
                    if eva.adjust_scaling_factors {
                        alpha *= new_rank as f64 / r as f64;
                    }
                    layer_config.init_lora_weights = InitLoraWeights::Scheme("eva".into());
                    force_rank(&mut layer_config, name, new_rank, alpha);
                    peft.recreate_adapter_layer(name, adapter, Some(&mut layer_config))?;
                }
                write_lora_a(peft, name, adapter, &w)?;
                new_targets.push(name.clone());
            }
            None => {
                layer_config.init_lora_weights = InitLoraWeights::Bool(true);
                force_rank(&mut layer_config, name, r, alpha);
                peft.recreate_adapter_layer(name, adapter, Some(&mut layer_config))?;
                missing.push(name.clone());
                new_rank = r;
            }
        }
        if new_rank != config.r {
            rank_pattern.insert(name.clone(), new_rank);
        }
        if alpha != config_alpha {
            alpha_pattern.insert(name.clone(), Alpha::from(alpha));
        }
    }
    let mut targets: Vec<String> = new_targets.into_iter().chain(missing.iter().cloned()).collect();
    if targets.len() >= peft_core::peft_config::targets::MIN_TARGET_MODULES_FOR_OPTIMIZATION {
        let mut others = Vec::new();
        peft.model().visit_layers(&mut |l| {
            if !modules.contains(&l.name().to_string()) {
                others.push(l.name().to_string());
            }
        });
        targets = peft_core::peft_config::targets::find_minimal_target_modules(&targets, &others)
            .into_iter()
            .collect();
    }
    if let Some(c) = peft.config_mut(adapter).and_then(|c| {
        let any: &mut dyn std::any::Any = c.as_mut().as_any_mut();
        any.downcast_mut::<LoraConfig>()
    }) {
        c.target_modules = Some(TargetModules::List(targets));
        c.rank_pattern = rank_pattern;
        c.alpha_pattern = alpha_pattern;
    }
    let mut warnings = Vec::new();
    if !missing.is_empty() {
        warnings.push(format!(
            "the following layers were initialized with init_lora_weights=True because they were not found in the eva \
             state_dict: {missing:?}"
        ));
    }
    Ok(warnings)
}

/// Makes `config` create `module` with exactly `r` and `alpha`.
fn force_rank(config: &mut LoraConfig, module: &str, r: i64, alpha: f64) {
    let key = fancy_regex::escape(module).into_owned();
    config.rank_pattern = indexmap::IndexMap::from([(key.clone(), r)]);
    config.alpha_pattern = indexmap::IndexMap::from([(key, Alpha::from(alpha))]);
}

fn write_lora_a<M: Adaptable>(
    peft: &mut PeftModel<M>,
    module: &str,
    adapter: &str,
    w: &Tensor,
) -> Result<()> {
    let mut result = Ok(());
    peft.model_mut().visit_layers_mut(&mut |l| {
        if l.name() != module {
            return Ok(());
        }
        if let Some(lora) =
            l.parts_mut().1.get_mut(adapter).and_then(|t| t.as_any_mut().downcast_mut::<LoraLayer>())
        {
            let mut a = lora.lora_a.shallow_clone();
            result = tch::no_grad(|| a.f_copy_(w)).map_err(PeftError::torch("writing EVA components"));
            peft_core::TunerLayer::weights_changed(lora);
        }
        Ok(())
    })?;
    result
}
