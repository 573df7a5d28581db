//! DEFT behaviour beyond the parity matrix: the projection and injection written out independently, the
//! identity at init (R = rightᵀ·W), QR's orthogonal projection, merges of several adapters from the weight
//! as the merge call found it, unmerging with the kept factors, and what DEFT cannot take refused by name.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use peft_core::peft_config::TargetModules;
use peft_core::PeftModel;
use peft_deft::{DeftConfig, DeftLayer, MethodConfig};
use peft_testkit::nets::{LayerZoo, Quantized};
use peft_testkit::{
    assert_mixed_batches_refused, assert_safe_merge_refuses_nan, assert_shape_mismatch,
    assert_unsupported_layer, load_error, max_diff, randomize, rng_lock, save_with_config_edit, tuner,
};
use tch::nn::ModuleT;
use tch::{Device, Kind, Tensor};

fn config(targets: &[&str], r: i64) -> DeftConfig {
    DeftConfig {
        r,
        target_modules: Some(TargetModules::list(targets.iter().copied())),
        ..DeftConfig::default()
    }
}

#[test]
fn the_adapted_weight_is_the_weight_with_a_subspace_replaced() {
    let _rng = rng_lock();
    for (qr, para) in [(false, false), (true, false), (true, true)] {
        let (vs, zoo) = LayerZoo::seeded(0);
        let cfg = DeftConfig {
            decomposition_method: if qr { "qr" } else { "relu" }.into(),
            para,
            alpha: Some(6.into()),
            ..config(&["lin0"], 3)
        };
        let peft = PeftModel::new(zoo, &vs, cfg.boxed(), "default").unwrap();
        randomize(&peft, 0.3);
        let layer = tuner::<DeftLayer>(peft.model().lin0.slots(), "default");
        let (q, right) = layer.projection().unwrap();
        let t: std::collections::BTreeMap<String, Tensor> =
            peft_core::TunerLayer::named_tensors(layer).into_iter().collect();
        let p = &t["deft_P.default"];
        if qr {
            // Q has orthonormal columns spanning P's.
            assert!(max_diff(&q.tr().matmul(&q), &Tensor::eye(3, (Kind::Float, Device::Cpu))) < 1e-5);
            assert!(max_diff(&q.matmul(&q.tr()).matmul(p), p) < 1e-5);
        } else {
            assert!(q.equal(p) && right.equal(&p.relu()));
        }
        // W' = (I − Q·rightᵀ)·W + Q·(2·R): the layer's output for any input.
        let w = &peft.model().lin0.base().weight;
        let bias = peft.model().lin0.base().bias.as_ref().unwrap();
        let proj = Tensor::eye(20, (Kind::Float, Device::Cpu)) - q.matmul(&right.tr());
        let mut w_new = proj.matmul(w);
        if !para {
            w_new += q.matmul(&(&t["deft_R.default"] * 2.0));
        }
        let x = Tensor::randn([4, 10], (Kind::Float, Device::Cpu));
        let want = x.linear(&w_new, Some(bias));
        let got = tch::no_grad(|| peft.model().lin0.forward(&x));
        assert!(max_diff(&got, &want) < 1e-5, "qr={qr} para={para}: {}", max_diff(&got, &want));
    }
}

#[test]
fn starts_as_the_base_and_merges_adapters_from_the_weight_the_call_found() {
    let _rng = rng_lock();
    tch::manual_seed(6);
    let x = Tensor::randn([5, 10], (Kind::Float, Device::Cpu));
    let (vs, zoo) = LayerZoo::seeded(0);
    let mut peft = PeftModel::new(zoo, &vs, config(&["lin0", "lin1"], 4).boxed(), "a").unwrap();
    let base = tch::no_grad(|| peft.disable_adapters().unwrap().forward_t(&x, false));
    assert!(
        max_diff(&tch::no_grad(|| peft.forward_t(&x, false)), &base) < 1e-5,
        "R = rightᵀ·W restores the base"
    );
    let qr = DeftConfig { decomposition_method: "qr".into(), ..config(&["lin0"], 2) };
    peft.add_adapter("b", qr.boxed()).unwrap();
    randomize(&peft, 0.2);
    peft.set_adapters(&["a", "b"]).unwrap();
    let w0 = peft.model().lin0.base().weight.copy();
    let slots = peft.model().lin0.slots();
    let (la, lb) = (tuner::<DeftLayer>(slots, "a"), tuner::<DeftLayer>(slots, "b"));
    let want = tch::no_grad(|| {
        let da = la.delta_from_factor(&la.factor_of(&w0).unwrap(), Kind::Float).unwrap();
        let db = lb.delta_from_factor(&lb.factor_of(&w0).unwrap(), Kind::Float).unwrap();
        &w0 + da + db
    });
    // One merge call: both factors from w0, as PEFT computes them before adding any delta.
    peft.merge_adapter(None, true).unwrap();
    assert!(max_diff(&peft.model().lin0.base().weight, &want) < 1e-6);
    peft.unmerge_adapter().unwrap();
    assert!(max_diff(&peft.model().lin0.base().weight, &w0) < 1e-6, "the kept factors undo the merge");
}

#[test]
fn layers_and_options_deft_cannot_take_are_refused_by_name() {
    let _rng = rng_lock();
    for target in ["emb", "conv1x1"] {
        let (vs, zoo) = LayerZoo::seeded(0);
        let err = PeftModel::new(zoo, &vs, config(&[target], 2).boxed(), "default").unwrap_err();
        assert_unsupported_layer(&err, target, "DEFT", "only `torch.nn.Linear` and");
    }
    let (vs, q) = Quantized::seeded(1, None);
    let err = PeftModel::new(q, &vs, config(&["proj"], 2).boxed(), "default").unwrap_err();
    assert_unsupported_layer(&err, "proj", "DEFT", "quantized bases are not supported");
    let (vs, zoo) = LayerZoo::seeded(0);
    let err = PeftModel::new(zoo, &vs, config(&["lin0"], 0).boxed(), "default").unwrap_err();
    assert!(
        err.to_string().contains("`r` should be a positive integer value but the value passed is 0"),
        "{err}"
    );
    // r is capped at out_features (lin1 has 2 outputs).
    let (vs, zoo) = LayerZoo::seeded(0);
    let peft = PeftModel::new(zoo, &vs, config(&["lin1"], 8).boxed(), "default").unwrap();
    assert_eq!(tuner::<DeftLayer>(peft.model().lin1.slots(), "default").r(), 2);
    let mut w = vec![];
    let err = DeftConfig::from_json_str(r#"{"peft_type": "DEFT", "decomposition_method": "svd"}"#, &mut w)
        .unwrap_err();
    assert!(
        err.to_string().contains("Unknown decomposition_method 'svd', must be one of ['qr', 'relu']."),
        "{err}"
    );
    let err = DeftConfig::from_json_str(r#"{"peft_type": "DEFT", "layers_pattern": "layers"}"#, &mut w)
        .unwrap_err();
    assert!(err.to_string().contains("`layers_to_transform` must also be specified"), "{err}");
}

#[test]
fn files_of_another_rank_fail_naming_key_and_shapes() {
    let _rng = rng_lock();
    let (vs, zoo) = LayerZoo::seeded(0);
    let mut peft = PeftModel::new(zoo, &vs, config(&["lin0"], 2).boxed(), "default").unwrap();
    assert_mixed_batches_refused(&peft, "DEFT");
    let dir = save_with_config_edit(&peft, "\"r\": 2", "\"r\": 3");
    let (vs2, zoo2) = LayerZoo::seeded(0);
    let err = load_error(zoo2, &vs2, dir.path());
    assert_shape_mismatch(&err, "base_model.model.lin0.deft_P", &[20, 3], &[20, 2]);
    let dir = save_with_config_edit(&peft, "\"para\": false", "\"para\": true");
    let (vs2, zoo2) = LayerZoo::seeded(0);
    let err = load_error(zoo2, &vs2, dir.path());
    assert!(err.to_string().contains("deft_R"), "a PaRa config has no R: {err}");
    assert_safe_merge_refuses_nan(&mut peft, |m| m.lin0.base().weight.shallow_clone());
}
