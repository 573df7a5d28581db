//! SHiRA behaviour beyond the parity matrix: the mask, training, merging, and the errors for what SHiRA
//! cannot do.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use peft_core::nn as pnn;
use peft_core::peft_config::TargetModules;
use peft_core::MethodConfig;
use peft_core::{Adaptable, PeftError, PeftModel};
use peft_shira::{random_mask_indices, ShiraConfig, ShiraLayer};
use tch::nn::{ModuleT, VarStore};
use tch::{Device, Kind, Tensor};

#[derive(Debug, Adaptable)]
struct Net {
    lin0: pnn::Linear,
    lin1: pnn::Linear,
    c: pnn::Linear,
}

impl ModuleT for Net {
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        self.lin1.forward_t(&self.lin0.forward_t(x, train).relu(), train)
    }
}

fn net() -> (VarStore, Net) {
    let vs = VarStore::new(Device::Cpu);
    let p = vs.root();
    let n = Net {
        lin0: pnn::linear(&p / "lin0", 10, 20, Default::default()).unwrap(),
        lin1: pnn::linear(&p / "lin1", 20, 2, Default::default()).unwrap(),
        c: pnn::transformers_conv1d(&p / "c", 4, 4).unwrap(),
    };
    (vs, n)
}

fn config(targets: &[&str], r: i64) -> ShiraConfig {
    ShiraConfig {
        r,
        random_seed: Some(3),
        init_weights: false,
        target_modules: Some(TargetModules::list(targets.iter().copied())),
        ..ShiraConfig::default()
    }
}

#[test]
fn the_mask_lists_distinct_positions_in_row_major_order() {
    let _rng = peft_testkit::rng_lock();
    let idx = random_mask_indices(20, 10, 30, 3).unwrap();
    assert_eq!((idx.size(), idx.kind()), (vec![2, 30], Kind::Int));
    let flat: Vec<i64> = Vec::try_from((idx.get(0) * 10 + idx.get(1)).to_kind(Kind::Int64)).unwrap();
    assert!(flat.windows(2).all(|w| w[0] < w[1]), "sorted and distinct: {flat:?}");
    assert!(random_mask_indices(20, 10, 30, 3).unwrap().equal(&idx));
    assert!(!random_mask_indices(20, 10, 30, 4).unwrap().equal(&idx));
}

#[test]
fn trains_through_the_sparse_update_and_merges_to_the_same_outputs() {
    let _rng = peft_testkit::rng_lock();
    let (vs, n) = net();
    let mut peft = PeftModel::new(n, &vs, config(&["lin0"], 1).boxed(), "default").unwrap();
    let x = Tensor::randn([4, 10], (Kind::Float, Device::Cpu));
    let l = peft.model().lin0.slots().get("default").unwrap().as_any().downcast_ref::<ShiraLayer>().unwrap();
    assert!(l.weight().requires_grad(), "shira_weight trains");
    let y = peft.forward_t(&x, true);
    assert!(y.requires_grad(), "the output depends on shira_weight");
    y.sum(Kind::Float).backward();
    let l = peft.model().lin0.slots().get("default").unwrap().as_any().downcast_ref::<ShiraLayer>().unwrap();
    let g = l.weight().grad();
    assert!(g.defined() && g.abs().sum(Kind::Float).double_value(&[]) > 0.0);
    let unmerged = tch::no_grad(|| peft.forward_t(&x, false));
    peft.merge_adapter(None, true).unwrap();
    let merged = tch::no_grad(|| peft.forward_t(&x, false));
    assert!((&merged - &unmerged).abs().max().double_value(&[]) < 1e-5);
}

#[test]
fn unsupported_layers_sizes_and_masks_are_errors_naming_them() {
    let _rng = peft_testkit::rng_lock();
    let (vs, n) = net();
    let err = PeftModel::new(n, &vs, config(&["c"], 1).boxed(), "default").unwrap_err();
    assert!(matches!(&err, PeftError::UnsupportedLayer { module, .. } if module == "c"), "{err:?}");
    let (vs, n) = net();
    let err = PeftModel::new(n, &vs, config(&["lin1"], 2).boxed(), "default").unwrap_err();
    assert!(err.to_string().contains("more shira params than the total number of params"), "{err}");
    let (vs, n) = net();
    let other = ShiraConfig { mask_type: "custom".into(), ..config(&["lin0"], 1) };
    let err = PeftModel::new(n, &vs, other.boxed(), "default").unwrap_err();
    assert!(matches!(&err, PeftError::UnsupportedOption { option, .. } if option == "mask_type"), "{err:?}");
}
