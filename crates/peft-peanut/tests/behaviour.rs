//! PEANuT behaviour beyond the parity matrix: the update written out independently, identity at init,
//! merged == unmerged with several adapters, exact unmerging, the file keys, and the layers, configs and
//! files PEANuT cannot take refused by name.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use peft_core::peft_config::TargetModules;
use peft_core::{Activation, PeftError, PeftModel, SaveOptions};
use peft_peanut::{MethodConfig, PeanutConfig, PeanutLayer};
use peft_testkit::nets::{LayerZoo, Quantized};
use peft_testkit::{
    assert_mixed_batches_refused, assert_safe_merge_refuses_nan, assert_shape_mismatch,
    assert_unsupported_layer, load_error, max_diff, randomize, rng_lock, save_with_config_edit, tuner,
};
use tch::nn::ModuleT;
use tch::{Device, Kind, Tensor};

fn config(targets: &[&str], r: i64, depth: i64, act: &str) -> PeanutConfig {
    PeanutConfig {
        r,
        depth,
        act_fn: act.into(),
        target_modules: Some(TargetModules::list(targets.iter().copied())),
        ..PeanutConfig::default()
    }
}

#[test]
fn the_update_is_the_weight_aware_network_of_the_paper() {
    let _rng = rng_lock();
    let (vs, zoo) = LayerZoo::seeded(0);
    let cfg = PeanutConfig { scaling: 0.7, ..config(&["lin0"], 3, 2, "gelu_new") };
    let peft = PeftModel::new(zoo, &vs, cfg.boxed(), "default").unwrap();
    randomize(&peft, 0.4);
    let layer = tuner::<PeanutLayer>(peft.model().lin0.slots(), "default");
    assert_eq!((layer.r(), layer.depth(), layer.activation()), (3, 2, Activation::GeluNew));
    let t: std::collections::BTreeMap<String, Tensor> =
        peft_core::TunerLayer::named_tensors(layer).into_iter().collect();
    let w = |k: &str| t[k].shallow_clone();
    let gelu_new = |v: &Tensor| {
        let c = (2.0 / std::f64::consts::PI).sqrt();
        v * 0.5 * (((v + v * v * v * 0.044715) * c).tanh() + 1.0)
    };
    let base = peft.model().lin0.base().weight.shallow_clone();
    // A: out → r on the weight's columns, two encoders (residuals kept), two decoders, B: r → out.
    let h0 = gelu_new(&base.tr().matmul(&w("peanut_A.default.weight").tr()));
    let h1 = gelu_new(&h0.matmul(&w("peanut_encoders.default.0.weight").tr()));
    let h2 = gelu_new(&h1.matmul(&w("peanut_encoders.default.1.weight").tr()));
    let d0 = gelu_new(&h2.matmul(&w("peanut_decoders.default.0.weight").tr())) + &h1;
    let d1 = gelu_new(&d0.matmul(&w("peanut_decoders.default.1.weight").tr())) + &h0;
    let want = (d1.matmul(&w("peanut_B.default.weight").tr()) * 0.7).tr();
    let got = tch::no_grad(|| layer.delta_weight(&base));
    assert_eq!(got.size(), [20, 10]);
    assert!(max_diff(&got, &want) < 1e-6, "{}", max_diff(&got, &want));
    // The forward pass adds x·ΔWᵀ to the base output.
    let x = Tensor::randn([4, 10], (Kind::Float, Device::Cpu));
    let bias = peft.model().lin0.base().bias.as_ref().map(Tensor::shallow_clone);
    let y = tch::no_grad(|| peft.model().lin0.forward(&x));
    let want_y = x.linear(&base, bias.as_ref()) + x.matmul(&want.tr());
    assert!(max_diff(&y, &want_y) < 1e-5, "{}", max_diff(&y, &want_y));
}

#[test]
fn starts_as_the_identity_and_merges_several_adapters_from_the_unmerged_weight() {
    let _rng = rng_lock();
    tch::manual_seed(5);
    let x = Tensor::randn([6, 10], (Kind::Float, Device::Cpu));
    let (vs, zoo) = LayerZoo::seeded(0);
    let mut peft = PeftModel::new(zoo, &vs, config(&["lin0", "lin1"], 4, 1, "relu").boxed(), "a").unwrap();
    let base = tch::no_grad(|| peft.disable_adapters().unwrap().forward_t(&x, false));
    assert!(tch::no_grad(|| peft.forward_t(&x, false)).equal(&base), "B = 0 is the identity");
    peft.add_adapter("b", config(&["lin0"], 2, 0, "tanh").boxed()).unwrap();
    randomize(&peft, 0.3);
    peft.set_adapters(&["a", "b"]).unwrap();
    let unmerged = tch::no_grad(|| peft.forward_t(&x, false));
    assert!(max_diff(&unmerged, &base) > 1e-3, "the adapters act");
    let w0 = peft.model().lin0.base().weight.copy();
    // Both deltas come from the unmerged weight, whichever is merged first and however the merges are split.
    peft.merge_adapter(Some(&["b"]), false).unwrap();
    peft.merge_adapter(Some(&["a"]), false).unwrap();
    let merged = tch::no_grad(|| peft.forward_t(&x, false));
    assert!(max_diff(&merged, &unmerged) < 1e-5, "merged {}", max_diff(&merged, &unmerged));
    let slots = peft.model().lin0.slots();
    let (da, db) = tch::no_grad(|| {
        (
            tuner::<PeanutLayer>(slots, "a").delta_weight(&w0),
            tuner::<PeanutLayer>(slots, "b").delta_weight(&w0),
        )
    });
    assert!(max_diff(&peft.model().lin0.base().weight, &(&w0 + db + da)) < 1e-6);
    // Unmerging puts back the very weight, bit for bit (PEFT copies its cached weight back).
    peft.unmerge_adapter().unwrap();
    assert!(peft.model().lin0.base().weight.equal(&w0), "unmerge restores the weight exactly");
    assert!(tch::no_grad(|| peft.forward_t(&x, false)).equal(&unmerged));
}

#[test]
fn files_name_the_encoder_and_decoder_lists_without_the_adapter() {
    let _rng = rng_lock();
    let (vs, zoo) = LayerZoo::seeded(0);
    let peft = PeftModel::new(zoo, &vs, config(&["lin0"], 2, 2, "silu").boxed(), "other").unwrap();
    let dir = tempfile::tempdir().unwrap();
    peft.save_pretrained(dir.path(), &SaveOptions::default()).unwrap();
    // As in PEFT, an adapter not called "default" goes into a directory of its name.
    let file = dir.path().join("other").join("adapter_model.safetensors");
    let tensors = Tensor::read_safetensors(&file).unwrap();
    let mut keys: Vec<String> = tensors.into_iter().map(|(k, _)| k).collect();
    keys.sort();
    let prefix = "base_model.model.lin0.";
    let want: Vec<String> = [
        "peanut_A.weight",
        "peanut_B.weight",
        "peanut_decoders.0.weight",
        "peanut_decoders.1.weight",
        "peanut_encoders.0.weight",
        "peanut_encoders.1.weight",
    ]
    .iter()
    .map(|k| format!("{prefix}{k}"))
    .collect();
    assert_eq!(keys, want);
}

#[test]
fn layers_and_configs_peanut_cannot_take_are_refused_by_name() {
    let _rng = rng_lock();
    for target in ["emb", "conv1x1", "conv1d", "gpt2"] {
        let (vs, zoo) = LayerZoo::seeded(0);
        let err = PeftModel::new(zoo, &vs, config(&[target], 2, 0, "relu").boxed(), "default").unwrap_err();
        assert_unsupported_layer(&err, target, "PEANUT", "`torch.nn.Linear` only");
    }
    let (vs, q) = Quantized::seeded(1, None);
    let err = PeftModel::new(q, &vs, config(&["proj"], 4, 0, "relu").boxed(), "default").unwrap_err();
    assert_unsupported_layer(&err, "proj", "PEANUT", "quantized weights are refused");
    let mut w = vec![];
    for (json, want) in [
        (r#"{"peft_type": "PEANUT", "r": 0}"#, "`r` must be a positive integer; got 0."),
        (r#"{"peft_type": "PEANUT", "depth": -1}"#, "`depth` can only be a non-negative integer; got -1."),
        (
            r#"{"peft_type": "PEANUT", "act_fn": "gelu_fancy"}"#,
            "Unsupported `act_fn`: gelu_fancy. Must be one of",
        ),
    ] {
        let err = PeanutConfig::from_json_str(json, &mut w).unwrap_err();
        assert!(err.to_string().contains(want), "{err}");
    }
    // An in-memory config is checked the same way before any layer is touched.
    let (vs, zoo) = LayerZoo::seeded(0);
    let err = PeftModel::new(zoo, &vs, config(&["lin0"], 2, 0, "swishy").boxed(), "default").unwrap_err();
    assert!(err.to_string().contains("swishy"), "{err}");
}

#[test]
fn files_of_another_shape_or_depth_fail_naming_the_keys() {
    let _rng = rng_lock();
    let (vs, zoo) = LayerZoo::seeded(0);
    let mut peft = PeftModel::new(zoo, &vs, config(&["lin0"], 2, 1, "relu").boxed(), "default").unwrap();
    assert_mixed_batches_refused(&peft, "PEANUT");
    let dir = save_with_config_edit(&peft, "\"r\": 2", "\"r\": 3");
    let (vs2, zoo2) = LayerZoo::seeded(0);
    let err = load_error(zoo2, &vs2, dir.path());
    assert_shape_mismatch(&err, "base_model.model.lin0.peanut_A.weight", &[3, 20], &[2, 20]);
    let dir = save_with_config_edit(&peft, "\"depth\": 1", "\"depth\": 2");
    let (vs2, zoo2) = LayerZoo::seeded(0);
    match load_error(zoo2, &vs2, dir.path()) {
        PeftError::MissingKeys { keys, .. } => assert_eq!(
            keys,
            [
                "base_model.model.lin0.peanut_decoders.1.weight",
                "base_model.model.lin0.peanut_encoders.1.weight"
            ]
        ),
        other => panic!("expected MissingKeys, got {other}"),
    }
    assert_safe_merge_refuses_nan(&mut peft, |m| m.lin0.base().weight.shallow_clone());
}
