//! A small model and helpers shared by the peft-lora integration tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use peft_core::nn::{self, Linear, LinearConfig};
use peft_core::peft_config::TargetModules;
use peft_core::MethodConfig;
use peft_core::{Adaptable, PeftModel};
use peft_lora::{InitLoraWeights, LoraConfig};
use tch::nn::{ModuleT, VarStore};
use tch::{Device, Kind, Tensor};

#[derive(Debug, Adaptable)]
pub struct Mlp {
    pub lin0: Linear,
    pub lin1: Linear,
    pub lin2: Linear,
}

impl Mlp {
    pub fn new(vs: &VarStore) -> Self {
        let p = vs.root();
        Mlp {
            lin0: nn::linear(&p / "lin0", 6, 8, Default::default()).unwrap(),
            lin1: nn::linear(&p / "lin1", 8, 8, LinearConfig { bias: false, ..Default::default() }).unwrap(),
            lin2: nn::linear(&p / "lin2", 8, 3, Default::default()).unwrap(),
        }
    }
}

impl ModuleT for Mlp {
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let h = self.lin0.forward_t(x, train).relu();
        let h = self.lin1.forward_t(&h, train).tanh();
        self.lin2.forward_t(&h, train)
    }
}

pub fn config(targets: &[&str]) -> LoraConfig {
    LoraConfig {
        r: 4,
        lora_alpha: 8.into(),
        target_modules: Some(TargetModules::list(targets.iter().copied())),
        init_lora_weights: InitLoraWeights::Bool(false),
        ..LoraConfig::default()
    }
}

/// A fresh model (random base weights) and its var store.
pub fn model() -> (VarStore, Mlp) {
    let vs = VarStore::new(Device::Cpu);
    let m = Mlp::new(&vs);
    (vs, m)
}

/// A PeftModel with one adapter on `targets` whose weights are not the identity.
pub fn peft(targets: &[&str]) -> (VarStore, PeftModel<Mlp>) {
    let (vs, m) = model();
    let p = PeftModel::new(m, &vs, config(targets).boxed(), "default").unwrap();
    (vs, p)
}

pub fn input() -> Tensor {
    Tensor::randn([5, 6], (Kind::Float, Device::Cpu))
}

pub fn out(m: &Mlp, x: &Tensor) -> Tensor {
    tch::no_grad(|| m.forward_t(x, false))
}

pub fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

/// A copy of a var store's values, to compare weights before/after.
pub fn snapshot(vs: &VarStore) -> Vec<(String, Tensor)> {
    let mut v: Vec<(String, Tensor)> =
        vs.variables().into_iter().map(|(k, t)| (k, t.detach().copy())).collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}
