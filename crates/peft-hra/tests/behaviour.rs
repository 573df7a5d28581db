//! HRA behaviour beyond the parity matrix: identity at the symmetric init, orthogonality, merging, several
//! adapters, the layers and options PEFT refuses, bad files — each error naming what is wrong.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use peft_core::peft_config::{LayerIndices, LayersPattern, TargetModules};
use peft_core::MethodConfig;
use peft_core::{AdapterConfig, BiasMode, PeftError, PeftModel};
use peft_hra::{HraConfig, HraLayer};
use peft_testkit::nets::{LayerZoo, Quantized};
use peft_testkit::{
    assert_mixed_batches_refused, assert_safe_merge_refuses_nan, assert_shape_mismatch,
    assert_unsupported_layer, load_error, max_diff, randomize, rng_lock as rng, save_with_config_edit, tuner,
};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

fn config(targets: &[&str], r: i64) -> HraConfig {
    HraConfig {
        target_modules: Some(TargetModules::list(targets.iter().copied())),
        r,
        ..HraConfig::default()
    }
}

fn hra<'a>(layer: &'a peft_core::AdapterSlots, adapter: &str) -> &'a HraLayer {
    tuner(layer, adapter)
}

fn net() -> (VarStore, LayerZoo) {
    LayerZoo::seeded(0)
}

/// The layers HRA adapts, with an input: (name, input, output).
fn outputs(n: &LayerZoo, x: &Tensor, img: &Tensor) -> Vec<(&'static str, Tensor)> {
    tch::no_grad(|| {
        vec![
            ("lin0", n.lin0.forward(x)),
            ("lin1", n.lin1.forward(&n.lin0.forward(x))),
            ("conv1x1", n.conv1x1.forward(img)),
            ("conv3x3", n.conv3x3.forward(img)),
        ]
    })
}

fn inputs() -> (Tensor, Tensor) {
    (
        Tensor::randn([3, 10], (Kind::Float, Device::Cpu)),
        Tensor::randn([2, 4, 5, 5], (Kind::Float, Device::Cpu)),
    )
}

#[test]
fn the_symmetric_init_is_the_identity_and_an_odd_r_is_not() {
    let _rng = rng();
    let (x, img) = inputs();
    let targets = ["lin0", "lin1", "conv1x1", "conv3x3"];
    let (vs, n) = net();
    let mut peft = PeftModel::new(n, &vs, config(&targets, 4).boxed(), "default").unwrap();
    let adapted = outputs(peft.model(), &x, &img);
    let base = outputs(&peft.disable_adapters().unwrap(), &x, &img);
    for ((name, a), (_, b)) in adapted.iter().zip(&base) {
        assert!(max_diff(a, b) < 1e-5, "{name}: {}", max_diff(a, b));
    }
    // The paired columns are equal.
    let u = hra(peft.model().lin0.slots(), "default").vectors().copy();
    assert!(u.select(1, 0).equal(&u.select(1, 1)) && u.select(1, 2).equal(&u.select(1, 3)));
    assert!(!u.select(1, 0).equal(&u.select(1, 2)));

    let (vs, n) = net();
    let mut peft = PeftModel::new(n, &vs, config(&targets, 3).boxed(), "default").unwrap();
    assert!(peft.warnings().iter().any(|w| w.contains("can NOT be performed when r is odd")));
    let adapted = outputs(peft.model(), &x, &img);
    let base = outputs(&peft.disable_adapters().unwrap(), &x, &img);
    assert!(max_diff(&adapted[0].1, &base[0].1) > 1e-3);
}

#[test]
fn reflections_are_orthogonal_and_reverse_inverts_them() {
    let _rng = rng();
    for gs in [false, true] {
        let (vs, n) = net();
        let cfg = HraConfig { apply_gs: gs, init_weights: false, ..config(&["lin0", "conv3x3"], 5) };
        let peft = PeftModel::new(n, &vs, cfg.boxed(), "default").unwrap();
        for (layer, dim) in [(peft.model().lin0.slots(), 10), (peft.model().conv3x3.slots(), 36)] {
            let l = hra(layer, "default");
            let h = tch::no_grad(|| l.delta_weight(false));
            let back = tch::no_grad(|| l.delta_weight(true));
            let eye = Tensor::eye(dim, (Kind::Float, Device::Cpu));
            assert_eq!(h.size(), [dim, dim]);
            assert!(max_diff(&h.mm(&h.tr()), &eye) < 1e-5, "gs={gs}: not orthogonal");
            assert!(max_diff(&h.mm(&back), &eye) < 1e-5, "gs={gs}: reverse is not the inverse");
            if gs {
                // I − 2QQᵀ is symmetric and its own inverse.
                assert!(max_diff(&h, &h.tr()) < 1e-6);
            }
        }
    }
}

#[test]
fn the_forward_multiplies_the_weight_by_every_active_adapter_in_order() {
    let _rng = rng();
    let (vs, n) = net();
    let mut peft = PeftModel::new(n, &vs, config(&["lin0"], 4).boxed(), "alpha").unwrap();
    peft.add_adapter("beta", HraConfig { apply_gs: true, ..config(&["lin0"], 2) }.boxed()).unwrap();
    randomize(&peft, 0.5);
    peft.set_adapters(&["alpha", "beta"]).unwrap();
    let x = Tensor::randn([3, 10], (Kind::Float, Device::Cpu));
    let y = tch::no_grad(|| peft.model().lin0.forward(&x));
    let slots = peft.model().lin0.slots();
    let (ha, hb) =
        tch::no_grad(|| (hra(slots, "alpha").delta_weight(false), hra(slots, "beta").delta_weight(false)));
    let base = peft.model().lin0.base();
    let w = base.weight.mm(&ha.mm(&hb));
    let want = x.linear(&w, base.bias.as_ref());
    assert!(max_diff(&y, &want) < 1e-5);
    let wrong = x.linear(&base.weight.mm(&hb.mm(&ha)), base.bias.as_ref());
    assert!(max_diff(&y, &wrong) > 1e-4, "the order matters");
}

#[test]
fn merged_equals_unmerged_and_unmerging_restores_the_weights() {
    let _rng = rng();
    for gs in [false, true] {
        let (x, img) = inputs();
        let targets = ["lin0", "lin1", "conv1x1", "conv3x3"];
        let (vs, n) = net();
        let cfg = HraConfig { apply_gs: gs, ..config(&targets, 4) };
        let mut peft = PeftModel::new(n, &vs, cfg.boxed(), "default").unwrap();
        randomize(&peft, 0.5);
        let w0 = peft.model().conv3x3.base().weight.copy();
        let unmerged = outputs(peft.model(), &x, &img);
        let base = outputs(&peft.disable_adapters().unwrap(), &x, &img);
        peft.merge_adapter(None, true).unwrap();
        let merged = outputs(peft.model(), &x, &img);
        for (((name, u), (_, m)), (_, b)) in unmerged.iter().zip(&merged).zip(&base) {
            assert!(max_diff(u, m) < 1e-4, "gs={gs} {name}: {}", max_diff(u, m));
            assert!(max_diff(u, b) > 1e-3, "gs={gs} {name}: the adapter changes the output");
        }
        peft.unmerge_adapter().unwrap();
        assert!(max_diff(&peft.model().conv3x3.base().weight, &w0) < 1e-5);
        let again = outputs(peft.model(), &x, &img);
        assert!(max_diff(&again[0].1, &unmerged[0].1) < 1e-5);
    }
}

#[test]
fn layers_hra_cannot_adapt_are_refused_by_name() {
    let _rng = rng();
    for (target, hint) in [
        ("emb", "only `torch.nn.Linear` and `torch.nn.Conv2d`"),
        ("conv1d", "only `torch.nn.Linear` and `torch.nn.Conv2d`"),
        ("conv3d", "only `torch.nn.Linear` and `torch.nn.Conv2d`"),
        ("gpt2", "only `torch.nn.Linear` and `torch.nn.Conv2d`"),
        ("grouped", "groups > 1 (got groups=2)"),
        ("tall", "non-square kernel"),
    ] {
        let (vs, n) = net();
        let err = PeftModel::new(n, &vs, config(&[target], 2).boxed(), "default").unwrap_err();
        assert_unsupported_layer(&err, target, "HRA", hint);
    }
}

#[test]
fn quantized_linears_are_refused() {
    let _rng = rng();
    let (vs, model) = Quantized::seeded(1, None);
    let cfg = HraConfig { target_modules: Some(TargetModules::list(["proj"])), ..HraConfig::default() };
    let err = PeftModel::new(model, &vs, cfg.boxed(), "default").unwrap_err();
    assert!(
        matches!(err, PeftError::UnsupportedLayer { .. }) && err.to_string().contains("quantized"),
        "{err}"
    );
}

#[test]
fn a_dilated_convolution_runs_with_peft_s_geometry_and_warns() {
    let _rng = rng();
    let (vs, n) = net();
    let peft = PeftModel::new(n, &vs, config(&["dilated"], 2).boxed(), "default").unwrap();
    assert!(
        peft.warnings().iter().any(|w| w.contains("`dilated`") && w.contains("no dilation")),
        "{:?}",
        peft.warnings()
    );
    let img = Tensor::randn([2, 4, 7, 7], (Kind::Float, Device::Cpu));
    let y = tch::no_grad(|| peft.model().dilated.forward(&img));
    let base = peft.model().dilated.base();
    let h = tch::no_grad(|| hra(peft.model().dilated.slots(), "default").delta_weight(false));
    let w = base.weight.view([6, 36]).mm(&h).view([6, 4, 3, 3]);
    // PEFT's F.conv2d(x, W', b, padding=2, stride=1): no dilation.
    let want = img.conv2d(&w, base.bias.as_ref(), [1, 1], [2, 2], [1, 1], 1);
    assert_eq!(y.size(), want.size());
    assert!(max_diff(&y, &want) < 1e-5);
}

#[test]
fn a_non_finite_safe_merge_is_refused() {
    let _rng = rng();
    let (vs, n) = net();
    let mut peft = PeftModel::new(n, &vs, config(&["lin0"], 2).boxed(), "default").unwrap();
    assert_safe_merge_refuses_nan(&mut peft, |m| m.lin0.base().weight.shallow_clone());
}

#[test]
fn config_checks_follow_peft() {
    let _rng = rng();
    let parse = |text: &str| {
        let mut w = vec![];
        HraConfig::from_json_str(text, &mut w)
    };
    let err =
        parse(r#"{"peft_type": "HRA", "target_modules": "lin.*", "layers_to_transform": [0]}"#).unwrap_err();
    assert!(
        err.to_string().contains("`layers_to_transform` cannot be used when `target_modules` is a str"),
        "{err}"
    );
    let err =
        parse(r#"{"peft_type": "HRA", "target_modules": "lin.*", "layers_pattern": "layers"}"#).unwrap_err();
    assert!(
        err.to_string().contains("`layers_pattern` cannot be used when `target_modules` is a str"),
        "{err}"
    );
    let err = parse(r#"{"peft_type": "HRA", "layers_pattern": "layers"}"#).unwrap_err();
    assert!(err.to_string().contains("`layers_to_transform` must also be specified"), "{err}");
    // PEFT reads any "<method>_only" as the adapted layers' biases, and refuses other values when it
    // builds the model.
    assert_eq!(parse(r#"{"peft_type": "HRA", "bias": "lora_only"}"#).unwrap().bias(), BiasMode::AdaptedOnly);
    let (vs, n) = net();
    let cfg = parse(r#"{"peft_type": "HRA", "bias": "some", "target_modules": ["lin0"]}"#).unwrap();
    let err = PeftModel::new(n, &vs, cfg.boxed(), "default").unwrap_err();
    assert!(err.to_string().contains("Requested bias: some"), "{err}");
    let c = parse(r#"{"peft_type": "HRA", "apply_GS": true, "target_modules": ["a", "a", "b"]}"#).unwrap();
    assert!(c.apply_gs);
    assert_eq!(c.target_modules, Some(TargetModules::list(["a", "b"])));
    // A non-positive r fails before any layer gets the adapter, naming `r`.
    let (vs, n) = net();
    let err = PeftModel::new(n, &vs, config(&["lin0"], 0).boxed(), "default").unwrap_err();
    assert!(
        err.to_string().contains("`r` should be a positive integer value but the value passed is 0"),
        "{err}"
    );
    // Configs built in code are checked too.
    let (vs, n) = net();
    let cfg = HraConfig {
        target_modules: Some(TargetModules::Regex("lin0".into())),
        layers_to_transform: Some(LayerIndices::One(0)),
        layers_pattern: Some(LayersPattern::One("layers".into())),
        ..HraConfig::default()
    };
    assert!(PeftModel::new(n, &vs, cfg.boxed(), "default").is_err());
}

#[test]
fn a_file_with_another_rank_fails_to_load_naming_key_and_shapes() {
    let _rng = rng();
    let (vs, n) = net();
    let peft = PeftModel::new(n, &vs, config(&["lin0"], 4).boxed(), "default").unwrap();
    let keys: Vec<String> = peft.adapter_state_dict("default").unwrap().into_iter().map(|(k, _)| k).collect();
    assert_eq!(keys, ["base_model.model.lin0.hra_u"]);
    let dir = save_with_config_edit(&peft, "\"r\": 4", "\"r\": 2");
    let (vs2, n2) = net();
    let err = load_error(n2, &vs2, dir.path());
    assert_shape_mismatch(&err, "base_model.model.lin0.hra_u", &[10, 2], &[10, 4]);
}

#[test]
fn mixed_batches_are_refused_rather_than_ignored() {
    let _rng = rng();
    let (vs, n) = net();
    let peft = PeftModel::new(n, &vs, config(&["lin0"], 2).boxed(), "default").unwrap();
    assert_mixed_batches_refused(&peft, "HRA");
}

#[test]
fn training_reaches_the_vectors() {
    let _rng = rng();
    let (vs, n) = net();
    let peft = PeftModel::new(n, &vs, config(&["lin0"], 2).boxed(), "default").unwrap();
    let x = Tensor::randn([3, 10], (Kind::Float, Device::Cpu));
    let u = hra(peft.model().lin0.slots(), "default").vectors().shallow_clone();
    peft.model().lin0.forward(&x).sum(Kind::Float).backward();
    assert!(u.grad().defined() && u.grad().abs().sum(Kind::Float).double_value(&[]) > 0.0);
}
