//! The state UniLoRA keeps above its layers: the model's θ vectors ([`SharedTheta`], PEFT's model-level
//! `unilora_theta_d` `ParameterDict`, which every layer also holds) and, while an adapter is being
//! created, its drawn θ and index map ([`AdapterPlan`]).

use crate::config::UniloraConfig;
use crate::numpy_rng::generate_index;
use peft_core::config::{TargetLayer, TargetView};
use peft_core::{PeftError, Result};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use tch::{Device, Kind, Tensor};

/// The θ of every UniLoRA adapter of a model, in creation order: one dict, shared by the configs of all
/// of them and by all their layers. The first layer of an adapter registers its θ here; dropping that
/// layer (deleting the adapter) takes it out again.
#[derive(Clone, Debug, Default)]
pub struct SharedTheta(pub Option<Arc<Mutex<ThetaDict>>>);

/// `(adapter, θ)` in creation order: PEFT's `unilora_theta_d` `ParameterDict`.
pub type ThetaDict = Vec<(String, Tensor)>;

impl PartialEq for SharedTheta {
    /// Configs compare by what is saved; the θ vectors are not part of the config.
    fn eq(&self, _other: &Self) -> bool {
        true
    }
}

impl SharedTheta {
    /// An empty dict (the model's first UniLoRA adapter).
    pub fn new() -> Self {
        Self(Some(Arc::new(Mutex::new(Vec::new()))))
    }

    fn lock(&self) -> Option<MutexGuard<'_, ThetaDict>> {
        self.0.as_ref().map(|m| m.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Records `adapter`'s θ (replacing an earlier entry of that name).
    pub fn insert(&self, adapter: &str, theta: &Tensor) {
        if let Some(mut d) = self.lock() {
            d.retain(|(a, _)| a != adapter);
            d.push((adapter.to_string(), theta.shallow_clone()));
        }
    }

    /// Forgets `adapter`'s θ.
    pub fn remove(&self, adapter: &str) {
        if let Some(mut d) = self.lock() {
            d.retain(|(a, _)| a != adapter);
        }
    }

    /// `adapter`'s θ, once its first layer registered it.
    pub fn get(&self, adapter: &str) -> Option<Tensor> {
        self.lock()?.iter().find(|(a, _)| a == adapter).map(|(_, t)| t.shallow_clone())
    }

    /// Every adapter's θ, in creation order.
    pub fn entries(&self) -> Vec<(String, Tensor)> {
        self.lock()
            .map(|d| d.iter().map(|(a, t)| (a.clone(), t.shallow_clone())).collect())
            .unwrap_or_default()
    }
}

/// One adapter's θ as drawn (until its first layer places and registers it) and its index map.
#[derive(Debug)]
pub struct Plan {
    /// θ `(theta_d_length,)`, f32 on the CPU, as drawn; taken by the first layer.
    pub theta: Option<Tensor>,
    /// The index map of all the adapter's layers, flattened `(D,)` int64 on the CPU.
    pub indices: Tensor,
    /// `1/√(uses)` of every entry of θ (0 for unused ones), f32 `(theta_d_length,)`.
    pub inv_sqrt_counts: Tensor,
    /// Where each layer's part of `indices` starts (its `A`, then its `B`).
    pub offsets: HashMap<String, i64>,
}

/// The [`Plan`] of the adapter being created (absent outside `before_layers` … `create_layer`).
#[derive(Clone, Debug, Default)]
pub struct AdapterPlan(pub Option<Arc<Mutex<Plan>>>);

impl PartialEq for AdapterPlan {
    /// Configs compare by what is saved.
    fn eq(&self, _other: &Self) -> bool {
        true
    }
}

impl AdapterPlan {
    /// PEFT's order of draws for one adapter: θ from the global generator (`U(−bound, bound)` with
    /// `init_weights`, else `N(0, 1)`), then — after the layers, in PEFT, but from NumPy's own generator,
    /// so the order does not matter — the index map over every linear target (`r·in` entries of `A`, then
    /// `out·r` of `B`, layer after layer in model order) and the scales `1/√count` from its counts.
    ///
    /// # Errors
    /// A libtorch failure, or a map too large for memory.
    pub fn draw(config: &UniloraConfig, targets: &[TargetLayer]) -> Result<Self> {
        let torch = |what: &'static str| PeftError::torch(what);
        let d = config.theta_d_length;
        let opts = (Kind::Float, Device::Cpu);
        let theta = if config.init_weights {
            let mut t = Tensor::f_empty([d], opts).map_err(torch("allocating UniLoRA's theta_d"))?;
            let bound = config.init_theta_d_bound;
            peft_core::init::uniform_(&mut t, -bound, bound)?;
            t
        } else {
            Tensor::f_randn([d], opts).map_err(torch("drawing UniLoRA's theta_d"))?
        };
        let r = config.r;
        let mut offsets = HashMap::new();
        let mut total = 0i64;
        // Other bases are refused by name when their layer is created.
        for t in targets.iter().filter(|t| t.view == TargetView::Linear) {
            offsets.insert(t.name.clone(), total);
            total += r * t.in_features + t.out_features * r;
        }
        let map = generate_index(total as usize, d as usize, config.proj_seed as u64);
        let indices = Tensor::f_from_slice(&map).map_err(torch("storing UniLoRA's index map"))?;
        let inv_sqrt_counts =
            inverse_sqrt_counts(&indices, d).map_err(torch("counting UniLoRA's indices"))?;
        Ok(Self(Some(Arc::new(Mutex::new(Plan { theta: Some(theta), indices, inv_sqrt_counts, offsets })))))
    }
}

/// PEFT's scales: `bincount(indices, minlength=d)`, then `rsqrt` of the counts of the used entries written
/// into zeros (the same ops, so the same bits).
fn inverse_sqrt_counts(indices: &Tensor, d: i64) -> std::result::Result<Tensor, tch::TchError> {
    let counts = indices.f_bincount(None::<Tensor>, d)?;
    let used = counts.f_gt(0)?;
    let values = counts.f_masked_select(&used)?.f_to_kind(Kind::Float)?.f_rsqrt()?;
    let mut inv = Tensor::f_zeros([d], (Kind::Float, Device::Cpu))?;
    let _ = inv.f_index_put_(&[Some(used)], &values, false)?;
    Ok(inv)
}
