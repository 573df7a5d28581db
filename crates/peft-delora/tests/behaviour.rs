//! DeLoRA behaviour beyond the parity matrix: identity at init, merged == unmerged and unmerge restores,
//! the column-norm buffer (saved, not trained), the layers and values PEFT refuses, bad files.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use peft_core::peft_config::TargetModules;
use peft_core::{AdapterConfig, PeftModel};
use peft_delora::{DeloraConfig, DeloraLayer, MethodConfig};
use peft_testkit::nets::{LayerZoo, Quantized};
use peft_testkit::{
    assert_mixed_batches_refused, assert_safe_merge_refuses_nan, assert_shape_mismatch,
    assert_unsupported_layer, load_error, max_diff, randomize, rng_lock, save_with_config_edit, tuner,
};
use tch::nn::ModuleT;
use tch::{Device, Kind, Tensor};

fn config(targets: &[&str], r: i64) -> DeloraConfig {
    DeloraConfig {
        r,
        target_modules: Some(TargetModules::list(targets.iter().copied())),
        ..DeloraConfig::default()
    }
}

#[test]
fn starts_as_the_identity_merges_to_the_same_outputs_and_unmerges_exactly_enough() {
    let _rng = rng_lock();
    tch::manual_seed(3);
    let x = Tensor::randn([5, 10], (Kind::Float, Device::Cpu));
    let (vs, zoo) = LayerZoo::seeded(0);
    let mut peft = PeftModel::new(zoo, &vs, config(&["lin0", "lin1"], 4).boxed(), "default").unwrap();
    let base = tch::no_grad(|| peft.disable_adapters().unwrap().forward_t(&x, false));
    assert!(tch::no_grad(|| peft.forward_t(&x, false)).equal(&base), "B = 0 makes the adapter the identity");
    randomize(&peft, 0.3);
    let unmerged = tch::no_grad(|| peft.forward_t(&x, false));
    assert!(max_diff(&unmerged, &base) > 1e-3);
    let w0 = peft.model().lin0.base().weight.copy();
    peft.merge_adapter(None, true).unwrap();
    assert!(max_diff(&tch::no_grad(|| peft.forward_t(&x, false)), &unmerged) < 1e-5);
    peft.unmerge_adapter().unwrap();
    assert!(max_diff(&peft.model().lin0.base().weight, &w0) < 1e-6);
}

#[test]
fn the_column_norms_are_a_saved_buffer_and_lambda_bounds_the_update() {
    let _rng = rng_lock();
    let (vs, zoo) = LayerZoo::seeded(0);
    let peft = PeftModel::new(zoo, &vs, config(&["lin0"], 3).boxed(), "default").unwrap();
    let layer = tuner::<DeloraLayer>(peft.model().lin0.slots(), "default");
    let (_, _, lambda, w_norm) = layer.tensors();
    let want = peft
        .model()
        .lin0
        .base()
        .weight
        .pow_tensor_scalar(2)
        .sum_dim_intlist([0i64].as_slice(), false, Kind::Float)
        .sqrt();
    assert!(max_diff(w_norm, &want) < 1e-6, "the base weight's column norms");
    assert!(!w_norm.requires_grad() && lambda.requires_grad());
    assert_eq!(lambda.double_value(&[0]), 15.0);
    // A (3, 10), B (20, 3), λ: the buffer is not a parameter.
    assert_eq!(peft.num_parameters().0, 30 + 60 + 1);
    let keys: Vec<String> = peft.adapter_state_dict("default").unwrap().into_iter().map(|(k, _)| k).collect();
    assert!(keys.contains(&"base_model.model.lin0.delora_w_norm".to_string()), "{keys:?}");
    // Every rank-one component is normalised: the update's norm is bounded by λ · max column norm.
    randomize(&peft, 5.0);
    let delta = tch::no_grad(|| layer.delta_weight());
    let bound = 15.0 * w_norm.max().double_value(&[]);
    assert!(delta.norm().double_value(&[]) <= bound * 1.0001, "{} > {bound}", delta.norm().double_value(&[]));
}

#[test]
fn layers_and_values_delora_cannot_use_are_refused() {
    let _rng = rng_lock();
    for target in ["emb", "conv1x1", "gpt2"] {
        let (vs, zoo) = LayerZoo::seeded(0);
        let err = PeftModel::new(zoo, &vs, config(&[target], 2).boxed(), "default").unwrap_err();
        assert_unsupported_layer(&err, target, "DELORA", "only `torch.nn.Linear`");
    }
    let (vs, q) = Quantized::seeded(1, None);
    let err = PeftModel::new(q, &vs, config(&["proj"], 2).boxed(), "default").unwrap_err();
    assert_unsupported_layer(&err, "proj", "DELORA", "quantized");
    let mut w = vec![];
    let err = DeloraConfig::from_json_str(r#"{"peft_type": "DELORA", "r": 0}"#, &mut w).unwrap_err();
    assert!(err.to_string().contains("`r` must be a positive integer; got 0."), "{err}");
    let err = DeloraConfig::from_json_str(r#"{"peft_type": "DELORA", "rank_pattern": {"lin(": 2}}"#, &mut w)
        .unwrap_err();
    assert!(err.to_string().contains("rank_pattern"), "{err}");
    let mut cfg = config(&["lin0", "lin1"], 4);
    cfg.rank_pattern.insert("lin1".into(), -1);
    let (vs, zoo) = LayerZoo::seeded(0);
    let err = PeftModel::new(zoo, &vs, cfg.boxed(), "default").unwrap_err();
    assert!(err.to_string().contains("the value passed is -1"), "{err}");
    let cfg = DeloraConfig::from_json_str(r#"{"peft_type": "DELORA", "delora_lambda": 15}"#, &mut w).unwrap();
    assert_eq!(cfg.to_json()["delora_lambda"].to_string(), "15", "the number keeps its form");
}

#[test]
fn safe_merges_files_of_another_rank_and_mixed_batches() {
    let _rng = rng_lock();
    let (vs, zoo) = LayerZoo::seeded(0);
    let mut peft = PeftModel::new(zoo, &vs, config(&["lin0"], 4).boxed(), "default").unwrap();
    assert_mixed_batches_refused(&peft, "DELORA");
    let dir = save_with_config_edit(&peft, "\"r\": 4", "\"r\": 2");
    let (vs2, zoo2) = LayerZoo::seeded(0);
    let err = load_error(zoo2, &vs2, dir.path());
    assert_shape_mismatch(&err, "base_model.model.lin0.delora_A", &[2, 10], &[4, 10]);
    assert_safe_merge_refuses_nan(&mut peft, |m| m.lin0.base().weight.shallow_clone());
}
