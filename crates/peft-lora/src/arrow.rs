//! Arrow (`arrow_config`): a router adapter that mixes a layer's task LoRA adapters per token —
//! PEFT's `ArrowLinearVariant`, `ArrowLoraLinearLayer` and `create_arrow_model`.
//!
//! Each task adapter gets a prototype, the top right singular vector of its `B·A` (15 power iterations
//! from a random start); a token's similarity to an expert is `|token · prototype|`, the `top_k` most
//! similar experts are mixed with `softmax(similarity / router_temperature)` weights, and each expert
//! contributes `s_e · B_e·A_e·token`. With `use_gks`, the mean of the general adapters' A and B is first
//! subtracted from every task adapter (general knowledge subtraction, once). Prototypes and the
//! subtraction are computed at the first forward pass, and again for task adapters added later.
//!
//! The router cannot be merged (the mixture differs per token), as in PEFT. A saved router can be loaded
//! here (its task adapters are found on the layer); PEFT itself cannot load one.

use crate::config::LoraConfig;
use crate::layer::LoraLayer;
use crate::variant::LoraVariant;
use peft_core::error::{PeftError, Result};
use peft_core::layer::{ForwardCtx, TunerLayer};
use peft_core::MethodConfig;
use peft_core::{Adaptable, LoadOptions, PeftModel};
use serde_json::Value;
use std::path::Path;
use std::sync::Mutex;
use tch::{Kind, Tensor};

/// The name PEFT gives the router adapter.
pub const ROUTER_NAME: &str = "arrow_router";
/// Prefix of the task adapters' names in [`create_arrow_model`].
pub const TASK_ADAPTER_PREFIX: &str = "task_";
/// Prefix of the general adapters' names in [`create_arrow_model`].
pub const GKS_ADAPTER_PREFIX: &str = "gks_";

/// Whether `name` is a general-knowledge adapter name (`gks_<digits>`).
fn is_gks_name(name: &str) -> bool {
    name.strip_prefix(GKS_ADAPTER_PREFIX)
        .is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
}

#[derive(Debug, Default)]
struct RouterState {
    /// The task adapters routed over, in routing order; `None` until first seen.
    task_names: Option<Vec<String>>,
    /// `(experts, in)` prototypes, once built.
    prototypes: Option<Tensor>,
    gks_done: bool,
    /// Task adapters added since the subtraction ran (they still need it).
    gks_added: Vec<String>,
}

/// The router state of one Arrow adapter on one layer.
#[derive(Debug)]
pub struct Arrow {
    /// Experts mixed per token.
    pub top_k: i64,
    /// Softmax temperature.
    pub temperature: f64,
    /// Seed of the prototypes' power-iteration start (else the global generator).
    pub rng_seed: Option<i64>,
    /// Subtract the general adapters' mean from the task adapters.
    pub use_gks: bool,
    /// The general adapters (with `use_gks`).
    pub gks_adapter_names: Vec<String>,
    state: Mutex<RouterState>,
}

impl Arrow {
    /// The router state from `config.arrow_config`.
    pub(crate) fn from_config(config: &LoraConfig) -> Self {
        let c = config.arrow_config.as_ref();
        let get = |k: &str| c.and_then(|c| c.get(k)).filter(|v| !v.is_null());
        let names = |k: &str| -> Option<Vec<String>> {
            get(k)
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Value::as_str).map(str::to_string).collect())
        };
        Self {
            top_k: get("top_k").and_then(Value::as_i64).unwrap_or(3),
            temperature: get("router_temperature").and_then(Value::as_f64).unwrap_or(1.0),
            rng_seed: get("rng_seed").and_then(Value::as_i64),
            use_gks: get("use_gks").and_then(Value::as_bool).unwrap_or(false),
            gks_adapter_names: names("gks_adapter_names").unwrap_or_default(),
            state: Mutex::new(RouterState {
                task_names: names("task_adapter_names"),
                ..RouterState::default()
            }),
        }
    }

    /// `on_adapter_change`: the task adapters now on the layer; a changed set invalidates the prototypes
    /// and queues added adapters for the subtraction.
    fn refresh(&self, state: &mut RouterState, layers: &[(&str, &LoraLayer)]) {
        let current: Vec<String> = layers
            .iter()
            .filter(|(n, l)| {
                !matches!(l.variant, LoraVariant::Arrow(_)) && *n != ROUTER_NAME && !is_gks_name(n)
            })
            .map(|(n, _)| n.to_string())
            .collect();
        let Some(known) = &state.task_names else {
            state.task_names = Some(current);
            return;
        };
        let (mut a, mut b) = (known.clone(), current.clone());
        a.sort();
        b.sort();
        if a == b {
            return;
        }
        if known.len() < current.len() {
            state.gks_added = current.iter().filter(|n| !known.contains(n)).cloned().collect();
        }
        state.task_names = Some(current);
        state.prototypes = None;
    }

    /// General knowledge subtraction (in place on the task adapters' weights).
    fn subtract_general(&self, state: &mut RouterState, layers: &[(&str, &LoraLayer)]) {
        if !self.use_gks || (state.gks_done && state.gks_added.is_empty()) {
            return;
        }
        let find = |n: &str| layers.iter().find(|(m, _)| *m == n).map(|(_, l)| *l);
        let general: Vec<&LoraLayer> = self.gks_adapter_names.iter().filter_map(|n| find(n)).collect();
        if general.is_empty() {
            return;
        }
        tch::no_grad(|| {
            let avg_a =
                Tensor::stack(&general.iter().map(|l| l.lora_a.shallow_clone()).collect::<Vec<_>>(), 0)
                    .mean_dim(0, false, None::<Kind>);
            let avg_b =
                Tensor::stack(&general.iter().map(|l| l.lora_b.shallow_clone()).collect::<Vec<_>>(), 0)
                    .mean_dim(0, false, None::<Kind>);
            let targets = if state.gks_done {
                state.gks_added.clone()
            } else {
                state.task_names.clone().unwrap_or_default()
            };
            for name in targets {
                if let Some(l) = find(&name) {
                    let _ = l.lora_a.shallow_clone().f_sub_(&avg_a);
                    let _ = l.lora_b.shallow_clone().f_sub_(&avg_b);
                }
            }
        });
        state.gks_done = true;
        state.gks_added.clear();
    }

    /// `top_right_singular_vec_from_BA`: power iteration on `Aᵀ(BᵀB)A` in fp32.
    fn prototype(&self, a: &Tensor, b: &Tensor) -> Tensor {
        let eps = 1e-8;
        let a32 = a.to_kind(Kind::Float);
        let b32 = b.to_kind(Kind::Float);
        let c = b32.tr().matmul(&b32);
        let n = a32.size()[1];
        let v = match self.rng_seed {
            Some(seed) => seeded_randn(seed, n, a32.device()),
            None => Tensor::randn([n], (Kind::Float, a32.device())),
        };
        let mut v = &v / (v.norm() + eps);
        for _ in 0..15 {
            let w = a32.tr().matmul(&c.matmul(&a32.matmul(&v)));
            v = &w / (w.norm() + eps);
        }
        v
    }

    /// The layer output `y` plus the routed mixture of the layer's task adapters for `x` (none:
    /// unchanged).
    pub(crate) fn add_routed(&self, x: &Tensor, y: Tensor, dropout: f64, ctx: &ForwardCtx<'_>) -> Tensor {
        match ctx.siblings.and_then(|s| self.forward(x, s, dropout, ctx.train)) {
            Some(d) => y + d,
            None => y,
        }
    }

    /// The routed delta for `x` (PEFT's `ArrowLoraLinearLayer.forward`), preparing the prototypes and the
    /// subtraction first when needed. `siblings` are the layer's adapters.
    fn forward(
        &self,
        x: &Tensor,
        siblings: &indexmap::IndexMap<String, Box<dyn TunerLayer>>,
        dropout: f64,
        train: bool,
    ) -> Option<Tensor> {
        let layers: Vec<(&str, &LoraLayer)> = siblings
            .iter()
            .filter_map(|(n, t)| t.as_any().downcast_ref::<LoraLayer>().map(|l| (n.as_str(), l)))
            .collect();
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        self.refresh(&mut state, &layers);
        self.subtract_general(&mut state, &layers);
        let names = state.task_names.clone().unwrap_or_default();
        let experts: Vec<&LoraLayer> =
            names.iter().filter_map(|n| layers.iter().find(|(m, _)| m == n).map(|(_, l)| *l)).collect();
        if experts.is_empty() || experts.len() != names.len() {
            return None;
        }
        let kind = experts[0].lora_a.kind();
        if state.prototypes.is_none() {
            let protos: Vec<Tensor> = tch::no_grad(|| {
                experts.iter().map(|l| self.prototype(&l.lora_a, &l.lora_b).to_kind(kind)).collect()
            });
            state.prototypes = Some(Tensor::stack(&protos, 0));
        }
        let protos = state.prototypes.as_ref()?.shallow_clone();
        drop(state);
        let x = if x.kind() != kind { x.to_kind(kind) } else { x.shallow_clone() };
        let shape = x.size();
        let features = *shape.last()?;
        let tok = x.reshape([-1, features]);
        let (t, e) = (tok.size()[0], protos.size()[0]);
        let scales: Vec<f64> = experts.iter().map(|l| l.scaling).collect();
        let scales = Tensor::from_slice(&scales).to_kind(kind).to_device(tok.device());
        let sim = tok.matmul(&protos.tr()).abs();
        let (top_v, idx) = sim.topk(self.top_k.min(e), 1, true, true);
        let full = Tensor::full([t, e], f64::NEG_INFINITY, (kind, tok.device())).scatter(1, &idx, &top_v);
        let coeff = (full / self.temperature).softmax(1, kind);
        let a_stack = Tensor::stack(&experts.iter().map(|l| l.lora_a.shallow_clone()).collect::<Vec<_>>(), 0);
        let b_stack = Tensor::stack(&experts.iter().map(|l| l.lora_b.shallow_clone()).collect::<Vec<_>>(), 0);
        let z = Tensor::einsum("tf,erf->ter", &[&tok, &a_stack], None::<i64>);
        let y = Tensor::einsum("ter,eor->teo", &[&z, &b_stack], None::<i64>);
        let y = y * scales.view([1, -1, 1]);
        let delta = Tensor::einsum("te,teo->to", &[&coeff, &y], None::<i64>);
        let delta = if dropout > 0.0 && train { delta.dropout(dropout, true) } else { delta };
        let out = delta.size()[1];
        let mut out_shape = shape;
        if let Some(last) = out_shape.last_mut() {
            *last = out;
        }
        Some(delta.reshape(out_shape.as_slice()))
    }
}

/// `torch.randn(n, generator=torch.Generator(device).manual_seed(seed))`. On the CPU this is a private
/// libtorch generator (`peft_core::rng::Generator`), so the global stream is left untouched as in PEFT.
/// For CUDA tensors (whose generators peft-core's shim does not create) the global generator is seeded
/// for the draw and reseeded afterwards from a value drawn from it beforehand: the draw equals PEFT's,
/// the global stream afterwards does not.
fn seeded_randn(seed: i64, n: i64, device: tch::Device) -> Tensor {
    if device == tch::Device::Cpu {
        // `as u64`: PyTorch's manual_seed takes the seed modulo 2⁶⁴ too.
        if let Ok(v) = peft_core::rng::Generator::new(seed as u64).and_then(|mut g| g.randn(&[n])) {
            return v;
        }
    }
    let resume = Tensor::randint(i64::from(i32::MAX), [1], (Kind::Int64, tch::Device::Cpu)).int64_value(&[0]);
    tch::manual_seed(seed);
    let v = Tensor::randn([n], (Kind::Float, device));
    tch::manual_seed(resume);
    v
}

/// PEFT's `create_arrow_model`: loads the task adapters (`task_0`, `task_1`, …) and, with `use_gks`,
/// the general adapters (`gks_0`, …) from their directories, checks that they share rank, shapes and
/// target modules on linear layers, then adds and activates the router (`arrow_router`) with
/// `arrow_config` over those modules.
///
/// # Errors
/// Load errors; no task adapters; `use_gks` without general adapters; adapters that disagree in rank,
/// shapes or modules, or target non-linear layers; `top_k` larger than the number of task adapters.
pub fn create_arrow_model<M: Adaptable>(
    model: M,
    base: &tch::nn::VarStore,
    task_adapter_dirs: &[impl AsRef<Path>],
    arrow_config: Value,
    general_adapter_dirs: &[impl AsRef<Path>],
) -> Result<PeftModel<M>> {
    let Some(first) = task_adapter_dirs.first() else {
        return Err(PeftError::Invalid(
            "`task_specific_adapter_paths` should contain at least one adapter path".into(),
        ));
    };
    let mut config = match arrow_config {
        Value::Object(m) => m,
        Value::Null => serde_json::Map::new(),
        other => return Err(PeftError::Invalid(format!("arrow_config must be a dict, got {other}"))),
    };
    let load = |name: String| LoadOptions::named(name);
    let (mut peft, _) =
        PeftModel::from_pretrained(model, base, first, load(format!("{TASK_ADAPTER_PREFIX}0")))?;
    for (i, dir) in task_adapter_dirs.iter().enumerate().skip(1) {
        peft.load_adapter(dir, load(format!("{TASK_ADAPTER_PREFIX}{i}")))?;
    }
    let task_names: Vec<String> =
        (0..task_adapter_dirs.len()).map(|i| format!("{TASK_ADAPTER_PREFIX}{i}")).collect();
    let use_gks = config.get("use_gks").and_then(Value::as_bool).unwrap_or(false);
    let mut gks_names = Vec::new();
    if use_gks {
        if general_adapter_dirs.is_empty() {
            return Err(PeftError::Invalid(
                "You should provide general LoRA paths if you want to use GenKnowSub.".into(),
            ));
        }
        for (i, dir) in general_adapter_dirs.iter().enumerate() {
            let name = format!("{GKS_ADAPTER_PREFIX}{i}");
            peft.load_adapter(dir, load(name.clone()))?;
            gks_names.push(name);
        }
    }
    let top_k = config.get("top_k").and_then(Value::as_i64).unwrap_or(3);
    if top_k > task_names.len() as i64 {
        return Err(PeftError::Invalid(format!(
            "arrow_config.top_k={top_k} is larger than the number of task adapters ({})",
            task_names.len()
        )));
    }
    let all: Vec<String> = task_names.iter().chain(&gks_names).cloned().collect();
    let (modules, r) = check_compatibility(&peft, &all)?;
    config.insert("task_adapter_names".into(), Value::from(task_names));
    config.insert("gks_adapter_names".into(), Value::from(gks_names));
    let router = LoraConfig {
        arrow_config: Some(Value::Object(config)),
        target_modules: Some(peft_core::peft_config::TargetModules::List(modules)),
        r,
        ..LoraConfig::default()
    };
    peft.add_adapter(ROUTER_NAME, router.boxed())?;
    peft.set_adapter(ROUTER_NAME)?;
    Ok(peft)
}

/// `check_loaded_lora_compatibility_arrow` + `ensure_adapters_target_linear_layers_only`: the adapters'
/// shared (sorted) module names and rank.
fn check_compatibility<M: Adaptable>(peft: &PeftModel<M>, adapters: &[String]) -> Result<(Vec<String>, i64)> {
    type Shapes = (Vec<i64>, Vec<i64>);
    let mut reference: Option<(i64, Shapes, std::collections::BTreeSet<String>)> = None;
    for name in adapters {
        let mut modules = std::collections::BTreeSet::new();
        let mut last: Option<(i64, Shapes)> = None;
        let mut offenders = Vec::new();
        peft.model().visit_layers(&mut |l| {
            let Some(layer) = l.slots().get(name).and_then(|t| t.as_any().downcast_ref::<LoraLayer>()) else {
                return;
            };
            if !matches!(layer.kind, crate::layer::LoraKind::Linear { .. }) {
                offenders.push(format!("  - adapter '{name}' on module '{}'", layer.module_name()));
            }
            let short = layer.module_name().rsplit('.').next().unwrap_or_default().to_string();
            modules.insert(short);
            last = Some((layer.lora_a.size()[0], (layer.lora_a.size(), layer.lora_b.size())));
        });
        if !offenders.is_empty() {
            return Err(PeftError::Invalid(format!(
                "LoRA adapters must only target Linear-like layers (nn.Linear, HF Conv1D). Found:\n{}",
                offenders.join("\n")
            )));
        }
        let Some((r, shapes)) = last else {
            return Err(PeftError::Invalid(format!("adapter `{name}` has no LoRA layer")));
        };
        match &reference {
            None => reference = Some((r, shapes, modules)),
            Some((r0, s0, m0)) => {
                if r != *r0 {
                    return Err(PeftError::Invalid(format!("[{name}] rank mismatch: {r} != {r0}")));
                }
                if &shapes != s0 {
                    return Err(PeftError::Invalid(format!("[{name}] shape mismatch: {shapes:?} != {s0:?}")));
                }
                if &modules != m0 {
                    return Err(PeftError::Invalid(format!(
                        "[{name}] target_modules mismatch:\n  this adapter -> {modules:?}\n  reference   -> {m0:?}"
                    )));
                }
            }
        }
    }
    let (r, _, modules) = reference.ok_or_else(|| PeftError::Invalid("no adapters to route over".into()))?;
    Ok((modules.into_iter().collect(), r))
}
