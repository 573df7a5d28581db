//! add_weighted_adapter: the corrected behaviours behind options, and the refusals (PEFT parity of every
//! combination type lives in tests/tests/lora_parity.rs).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{config, input, max_diff, model, out};
use peft_core::MethodConfig;
use peft_core::{PeftError, PeftModel};
use peft_lora::{Combination, LoraConfig, LoraLayer, LoraModelExt, WeightedAdapterOptions};
use tch::Tensor;

fn two_adapters(cfg: impl Fn(&[&str]) -> LoraConfig) -> (tch::nn::VarStore, PeftModel<common::Mlp>) {
    let (vs, m) = model();
    let mut p = PeftModel::new(m, &vs, cfg(&["lin0", "lin1", "lin2"]).boxed(), "a").unwrap();
    p.add_adapter("b", cfg(&["lin0", "lin2"]).boxed()).unwrap();
    (vs, p)
}

/// The sum of the delta weights of `adapters` on `lin0`, weighted.
fn summed_delta(p: &PeftModel<common::Mlp>, adapters: &[(&str, f64)]) -> Tensor {
    let slots = p.model().lin0.slots();
    adapters
        .iter()
        .map(|(a, w)| {
            slots.get(a).unwrap().as_any().downcast_ref::<LoraLayer>().unwrap().delta_weight().unwrap() * *w
        })
        .reduce(|x, y| x + y)
        .unwrap()
}

fn delta_of(p: &PeftModel<common::Mlp>, adapter: &str) -> Tensor {
    summed_delta(p, &[(adapter, 1.0)])
}

#[test]
fn cat_is_exact_and_rslora_scaling_is_kept_at_one_only_on_request() {
    let rs = |t: &[&str]| LoraConfig { use_rslora: true, ..config(t) };
    let (_vs, mut p) = two_adapters(rs);
    let want = summed_delta(&p, &[("a", 0.5), ("b", 2.0)]);
    let cat = WeightedAdapterOptions { combination: Combination::Cat, ..Default::default() };
    p.add_weighted_adapter(&["a", "b"], &[0.5, 2.0], "peft", &cat).unwrap();
    // PEFT's numbers: scaling alpha/sqrt(r) = sqrt(8) on weights that already carry each scaling.
    let got = delta_of(&p, "peft");
    assert!(max_diff(&got, &(&want * 8f64.sqrt())) < 1e-5, "{}", max_diff(&got, &(&want * 8f64.sqrt())));
    let fixed = WeightedAdapterOptions { unit_scaling: true, ..cat };
    p.add_weighted_adapter(&["a", "b"], &[0.5, 2.0], "fixed", &fixed).unwrap();
    assert!(max_diff(&delta_of(&p, "fixed"), &want) < 1e-5);
}

#[test]
fn svd_rank_above_a_layer_dimension_pads_with_zero_components() {
    let (_vs, mut p) = two_adapters(config);
    let x = input();
    // lin2 has 3 outputs: rank 7 keeps at most 3 singular components there; the product is exact.
    let opts = WeightedAdapterOptions { svd_rank: Some(7), ..Default::default() };
    p.add_weighted_adapter(&["a", "b"], &[1.0, 1.0], "svd", &opts).unwrap();
    let want = {
        let slots = p.model().lin2.slots();
        let d = |a: &str| {
            slots.get(a).unwrap().as_any().downcast_ref::<LoraLayer>().unwrap().delta_weight().unwrap()
        };
        d("a") + d("b")
    };
    let lin2 = p.model().lin2.slots().get("svd").unwrap().as_any().downcast_ref::<LoraLayer>().unwrap();
    assert_eq!(lin2.lora_b.size(), [3, 7]);
    assert!(max_diff(&lin2.delta_weight().unwrap(), &want) < 1e-5);
    p.set_adapter("svd").unwrap();
    assert!(out(p.model(), &x).isfinite().all().int64_value(&[]) == 1);
}

#[test]
fn refusals_name_their_reason() {
    let (_vs, mut p) = two_adapters(config);
    let err = p.add_weighted_adapter(&["a", "b"], &[1.0, 1.0], "a", &Default::default()).unwrap_err();
    assert!(matches!(err, PeftError::DuplicateAdapter { .. }), "{err}");
    let err = p.add_weighted_adapter(&["a", "nope"], &[1.0, 1.0], "x", &Default::default()).unwrap_err();
    assert!(err.to_string().contains("nope"), "{err}");
    let ties = WeightedAdapterOptions { combination: Combination::Ties, ..Default::default() };
    let err = p.add_weighted_adapter(&["a", "b"], &[1.0, 1.0], "x", &ties).unwrap_err();
    assert!(err.to_string().contains("density"), "{err}");
    p.add_adapter("r2", LoraConfig { r: 2, ..config(&["lin0"]) }.boxed()).unwrap();
    let lin = WeightedAdapterOptions { combination: Combination::Linear, ..Default::default() };
    let err = p.add_weighted_adapter(&["a", "r2"], &[1.0, 1.0], "x", &lin).unwrap_err();
    assert!(err.to_string().contains("same r"), "{err}");
    p.add_adapter("dora", LoraConfig { use_dora: true, ..config(&["lin0"]) }.boxed()).unwrap();
    let err = p.add_weighted_adapter(&["a", "dora"], &[1.0, 1.0], "x", &Default::default()).unwrap_err();
    assert!(err.to_string().contains("DoRA"), "{err}");
    assert!(p.config("x").is_none(), "a failed combination leaves no adapter behind");
}
