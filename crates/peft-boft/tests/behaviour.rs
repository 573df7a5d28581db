//! BOFT behaviour beyond the parity matrix: identity at init, orthogonality and the butterfly structure,
//! merging, the multiplicative dropout, the layers and options PEFT refuses, bad files — each error
//! naming what is wrong.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use peft_boft::{BoftConfig, BoftLayer, MethodConfig};
use peft_core::peft_config::TargetModules;
use peft_core::{AdapterConfig, PeftModel};
use peft_testkit::nets::{LayerZoo, Quantized};
use peft_testkit::{
    assert_mixed_batches_refused, assert_safe_merge_refuses_nan, assert_shape_mismatch,
    assert_unsupported_layer, load_error, max_diff, randomize, rng_lock as rng, save_with_config_edit, tuner,
};
use tch::nn::{ModuleT, VarStore};
use tch::{Device, Kind, Tensor};

fn config(targets: &[&str], block_size: i64, factors: i64) -> BoftConfig {
    BoftConfig {
        target_modules: Some(TargetModules::list(targets.iter().copied())),
        boft_block_size: block_size,
        boft_n_butterfly_factor: factors,
        ..BoftConfig::default()
    }
}

fn boft<'a>(layer: &'a peft_core::AdapterSlots, adapter: &str) -> &'a BoftLayer {
    tuner(layer, adapter)
}

fn net() -> (VarStore, LayerZoo) {
    LayerZoo::seeded(0)
}

/// The layers BOFT adapts, with an input: (name, forward).
fn layer_outputs(n: &LayerZoo, train: bool) -> Vec<(&'static str, Tensor)> {
    tch::manual_seed(3);
    let x = Tensor::randn([3, 10], (Kind::Float, Device::Cpu));
    let h = Tensor::randn([2, 4, 20], (Kind::Float, Device::Cpu));
    let img = Tensor::randn([2, 4, 5, 5], (Kind::Float, Device::Cpu));
    let run = || {
        vec![
            ("lin0", n.lin0.forward_t(&x, train)),
            ("lin1", n.lin1.forward_t(&h, train)),
            ("conv1x1", n.conv1x1.forward_t(&img, train)),
            ("conv3x3", n.conv3x3.forward_t(&img, train)),
        ]
    };
    if train {
        run()
    } else {
        tch::no_grad(run)
    }
}

const TARGETS: [&str; 4] = ["lin0", "lin1", "conv1x1", "conv3x3"];

#[test]
fn starts_as_the_identity_on_every_layer_class() {
    let _rng = rng();
    // lin0: 10 = 5·2; lin1: 20 = 10·2; conv1x1: 4 = 2·2; conv3x3: 36 = 18·2.
    let (vs, n) = net();
    let mut peft = PeftModel::new(n, &vs, config(&TARGETS, 2, 1).boxed(), "default").unwrap();
    let adapted = layer_outputs(peft.model(), false);
    let disabled = layer_outputs(&peft.disable_adapters().unwrap(), false);
    for ((name, a), (_, d)) in adapted.iter().zip(&disabled) {
        assert!(max_diff(a, d) < 1e-6, "{name}: zero blocks and unit scales are the identity");
    }
}

#[test]
fn rotations_are_orthogonal_and_butterflies_couple_neighbouring_blocks() {
    let _rng = rng();
    let (vs, n) = net();
    // lin1: 20 inputs, blocks of 2, two factors: the product couples chunks of 4.
    let peft = PeftModel::new(n, &vs, config(&["lin1"], 2, 2).boxed(), "default").unwrap();
    randomize(&peft, 0.5);
    let layer = boft(peft.model().lin1.slots(), "default");
    let layout = layer.layout();
    assert_eq!((layout.block_size, layout.block_num, layout.factors), (2, 10, 2));
    assert_eq!(layer.boft_r().size(), [2, 10, 2, 2]);
    let (m, s) = tch::no_grad(|| layer.delta_weight());
    assert_eq!((m.size(), s.size()), (vec![20, 20], vec![2, 1]));
    let eye = Tensor::eye(20, (Kind::Float, Device::Cpu));
    assert!(max_diff(&m.mm(&m.tr()), &eye) < 1e-5, "M Mᵀ = I");
    // Dense within each chunk of 4, zero across chunks.
    for chunk in 0..5 {
        let block = m.narrow(0, 4 * chunk, 4).narrow(1, 4 * chunk, 4);
        assert!(block.ne(0.0).all().int64_value(&[]) == 1, "chunk {chunk} is dense");
    }
    assert_eq!(m.narrow(0, 0, 4).narrow(1, 4, 16).abs().max().double_value(&[]), 0.0);
}

#[test]
fn merged_equals_unmerged_and_unmerging_restores_the_weights() {
    let _rng = rng();
    for factors in [1, 2] {
        let (vs, n) = net();
        let targets: &[&str] = if factors == 1 { &TARGETS } else { &["lin1", "conv3x3"] };
        let mut peft = PeftModel::new(n, &vs, config(targets, 2, factors).boxed(), "default").unwrap();
        randomize(&peft, 0.3);
        let unmerged = layer_outputs(peft.model(), false);
        for safe in [false, true] {
            peft.merge_adapter(None, safe).unwrap();
            let merged = layer_outputs(peft.model(), false);
            for ((name, u), (_, m)) in unmerged.iter().zip(&merged) {
                assert!(max_diff(u, m) < 1e-5, "{name} (factors {factors}, safe {safe})");
            }
            peft.unmerge_adapter().unwrap();
            let back = layer_outputs(peft.model(), false);
            for ((name, u), (_, b)) in unmerged.iter().zip(&back) {
                assert!(max_diff(u, b) < 1e-5, "{name}: unmerging applies Mᵀ and 1/s");
            }
        }
    }
}

#[test]
fn two_active_adapters_rotate_and_scale_together_and_merge_one_after_the_other() {
    let _rng = rng();
    let (vs, n) = net();
    let mut peft = PeftModel::new(n, &vs, config(&["lin0", "conv3x3"], 2, 1).boxed(), "alpha").unwrap();
    peft.add_adapter("beta", config(&["lin0"], 5, 1).boxed()).unwrap();
    randomize(&peft, 0.3);
    peft.set_adapters(&["alpha", "beta"]).unwrap();
    let x = Tensor::randn([3, 10], (Kind::Float, Device::Cpu));
    let y = tch::no_grad(|| peft.model().lin0.forward(&x));
    let (ma, sa) = tch::no_grad(|| boft(peft.model().lin0.slots(), "alpha").delta_weight());
    let (mb, sb) = tch::no_grad(|| boft(peft.model().lin0.slots(), "beta").delta_weight());
    let base = &peft.model().lin0.base();
    let b = base.bias.as_ref().unwrap();
    let want = (x.mm(&mb.mm(&ma)).linear(&base.weight, Some(b)) - b) * (&sb * &sa).squeeze_dim(-1) + b;
    assert!(max_diff(&y, &want) < 1e-5);
    let before = layer_outputs(peft.model(), false);
    peft.merge_adapter(None, false).unwrap();
    let after = layer_outputs(peft.model(), false);
    for ((name, u), (_, m)) in before.iter().zip(&after) {
        assert!(max_diff(u, m) < 1e-5, "{name}");
    }
}

#[test]
fn the_multiplicative_dropout_acts_in_training_only() {
    let _rng = rng();
    let (vs, n) = net();
    // lin0: 5 blocks of 2; p = 1 replaces every block of the chosen factor by the identity.
    let cfg = BoftConfig { boft_dropout: 1.0, init_weights: false, ..config(&["lin0"], 2, 1) };
    let peft = PeftModel::new(n, &vs, cfg.boxed(), "default").unwrap();
    let x = Tensor::randn([3, 10], (Kind::Float, Device::Cpu));
    let layer = boft(peft.model().lin0.slots(), "default");
    let (m, s) = tch::no_grad(|| layer.delta_weight());
    let base = peft.model().lin0.base();
    let b = base.bias.as_ref().unwrap();
    let eval = tch::no_grad(|| peft.model().lin0.forward_t(&x, false));
    let want = (x.mm(&m).linear(&base.weight, Some(b)) - b) * s.squeeze_dim(-1) + b;
    assert!(max_diff(&eval, &want) < 1e-5, "no dropout in evaluation");
    let train = tch::no_grad(|| peft.model().lin0.forward_t(&x, true));
    let want = (x.linear(&base.weight, Some(b)) - b) * s.squeeze_dim(-1) + b;
    assert!(max_diff(&train, &want) < 1e-5, "every block dropped to the identity: only the scale acts");
}

#[test]
fn the_dropout_draws_from_the_global_generator() {
    let _rng = rng();
    let (vs, n) = net();
    let cfg = BoftConfig { boft_dropout: 0.5, init_weights: false, ..config(&["lin1"], 2, 2) };
    let peft = PeftModel::new(n, &vs, cfg.boxed(), "default").unwrap();
    let h = Tensor::randn([2, 20], (Kind::Float, Device::Cpu));
    let run = |seed: i64| {
        tch::manual_seed(seed);
        tch::no_grad(|| peft.model().lin1.forward_t(&h, true))
    };
    assert!(run(4).equal(&run(4)), "the same seed drops the same blocks");
    let outputs: Vec<Tensor> = (0..8).map(run).collect();
    assert!(outputs.iter().any(|o| !o.equal(&outputs[0])), "other seeds drop other blocks");
}

#[test]
fn layers_boft_cannot_adapt_are_refused_by_name() {
    let _rng = rng();
    for (target, hint) in [
        ("emb", "torch.nn.Conv2d` (optionally quantized) are supported"),
        ("conv1d", "torch.nn.Conv2d` (optionally quantized) are supported"),
        ("conv3d", "torch.nn.Conv2d` (optionally quantized) are supported"),
        ("gpt2", "torch.nn.Conv2d` (optionally quantized) are supported"),
        ("grouped", "groups > 1"),
        ("dilated", "dilation"),
        ("tall", "non-square kernel"),
    ] {
        let (vs, n) = net();
        let err = PeftModel::new(n, &vs, config(&[target], 2, 1).boxed(), "default").unwrap_err();
        assert_unsupported_layer(&err, target, "BOFT", hint);
    }
}

#[test]
fn block_layouts_peft_refuses_are_refused_with_its_messages() {
    let _rng = rng();
    for (cfg, message) in [
        (config(&["lin0"], 4, 1), "in_features (10) must be divisible by boft_block_size (4)!"),
        (config(&["lin0"], 2, 2), "Invalid combination of in_features (10), boft_n_butterfly_factor (2)"),
        (config(&["conv3x3"], 3, 2), "boft_block_size (3) must be an even number!"),
        (config(&["lin1"], 4, 3), "Invalid combination of in_features (20), boft_n_butterfly_factor (3)"),
        (
            config(&["conv1x1"], 3, 1),
            "Convolutional kernel dimension (4) must be divisible by boft_block_size (3)!",
        ),
        (config(&["lin0"], 2, 0), "You can only specify boft_n_butterfly_factor 0 to be a positive integer"),
        (
            BoftConfig { boft_block_size: 0, boft_block_num: 3, ..config(&["lin1"], 0, 1) },
            "in_features (20) must be divisible by boft_block_num (3)!",
        ),
    ] {
        let (vs, n) = net();
        let err = PeftModel::new(n, &vs, cfg.boxed(), "default").unwrap_err();
        assert!(err.to_string().contains(message), "{err}");
        assert!(
            err.to_string().contains("`lin") || err.to_string().contains("`conv"),
            "names the layer: {err}"
        );
    }
}

#[test]
fn config_checks_follow_peft() {
    let parse = |text: &str| {
        let mut w = vec![];
        BoftConfig::from_json_str(text, &mut w)
    };
    let c = parse(r#"{"peft_type": "BOFT"}"#).unwrap();
    assert_eq!((c.boft_block_size, c.boft_block_num, c.boft_n_butterfly_factor), (4, 0, 1));
    for (text, message) in [
        (
            r#"{"peft_type": "BOFT", "boft_block_size": 4, "boft_block_num": 2}"#,
            "You can only specify either",
        ),
        (r#"{"peft_type": "BOFT", "boft_block_size": 0}"#, "Either `boft_block_size` or `boft_block_num`"),
        (
            r#"{"peft_type": "BOFT", "layers_pattern": "layers"}"#,
            "`layers_to_transform` must also be specified",
        ),
        (r#"{"peft_type": "BOFT", "boft_block_size": -2}"#, "must not be negative"),
        (r#"{"peft_type": "BOFT", "boft_dropout": 1.5}"#, "`boft_dropout` (1.5) must be at most 1"),
        (r#"{"peft_type": "BOFT", "bias": "some"}"#, "Requested bias: some"),
    ] {
        let err = match parse(text) {
            Err(e) => e,
            Ok(c) => c.validate().unwrap_err(),
        };
        assert!(err.to_string().contains(message), "{text}: {err}");
    }
    // Configs built in code are checked too.
    let (vs, n) = net();
    let cfg = BoftConfig { boft_block_num: 2, ..config(&["lin0"], 5, 1) };
    let err = PeftModel::new(n, &vs, cfg.boxed(), "default").unwrap_err();
    assert!(err.to_string().contains("You can only specify either boft_block_size (5)"), "{err}");
}

#[test]
fn fan_in_fan_out_is_corrected_on_linear_layers() {
    let _rng = rng();
    let (vs, n) = net();
    let cfg = BoftConfig { fan_in_fan_out: true, ..config(&["lin0"], 5, 1) };
    let peft = PeftModel::new(n, &vs, cfg.boxed(), "default").unwrap();
    assert_eq!(peft.config("default").unwrap().to_json()["fan_in_fan_out"], false);
    assert!(peft.warnings().iter().any(|w| w.contains("Setting fan_in_fan_out to False")));
}

#[test]
fn a_non_finite_safe_merge_is_refused_on_linear_and_conv_layers() {
    let _rng = rng();
    let (vs, n) = net();
    let mut peft = PeftModel::new(n, &vs, config(&["lin0"], 5, 1).boxed(), "default").unwrap();
    assert_safe_merge_refuses_nan(&mut peft, |m| m.lin0.base().weight.shallow_clone());
    let (vs, n) = net();
    let mut peft = PeftModel::new(n, &vs, config(&["conv3x3"], 4, 1).boxed(), "default").unwrap();
    assert_safe_merge_refuses_nan(&mut peft, |m| m.conv3x3.base().weight.shallow_clone());
}

#[test]
fn files_with_other_layouts_fail_to_load_naming_key_and_shapes() {
    let _rng = rng();
    let (vs, n) = net();
    let peft = PeftModel::new(n, &vs, config(&["lin1"], 2, 1).boxed(), "default").unwrap();
    // A file trained with one factor (PEFT without its CUDA extension) under a config saying two.
    let dir =
        save_with_config_edit(&peft, "\"boft_n_butterfly_factor\": 1", "\"boft_n_butterfly_factor\": 2");
    let (vs2, n2) = net();
    let err = load_error(n2, &vs2, dir.path());
    assert_shape_mismatch(&err, "base_model.model.lin1.boft_R", &[2, 10, 2, 2], &[1, 10, 2, 2]);
    let dir = save_with_config_edit(&peft, "\"boft_block_size\": 2", "\"boft_block_size\": 4");
    let (vs2, n2) = net();
    let err = load_error(n2, &vs2, dir.path());
    assert_shape_mismatch(&err, "base_model.model.lin1.boft_R", &[1, 5, 4, 4], &[1, 10, 2, 2]);
}

#[test]
fn checkpoint_keys_are_peft_s() {
    let _rng = rng();
    let (vs, n) = net();
    let peft = PeftModel::new(n, &vs, config(&["lin0", "conv1x1"], 2, 1).boxed(), "default").unwrap();
    let keys: Vec<(String, Vec<i64>)> =
        peft.adapter_state_dict("default").unwrap().into_iter().map(|(k, t)| (k, t.size())).collect();
    assert_eq!(
        keys,
        [
            ("base_model.model.lin0.boft_R".to_string(), vec![1, 5, 2, 2]),
            ("base_model.model.lin0.boft_s".to_string(), vec![20, 1]),
            ("base_model.model.conv1x1.boft_R".to_string(), vec![1, 2, 2, 2]),
            ("base_model.model.conv1x1.boft_s".to_string(), vec![1, 6]),
        ]
    );
}

#[test]
fn mixed_batches_are_refused_rather_than_ignored() {
    let _rng = rng();
    let (vs, n) = net();
    let peft = PeftModel::new(n, &vs, config(&["lin0"], 5, 1).boxed(), "default").unwrap();
    assert_mixed_batches_refused(&peft, "BOFT");
}

#[test]
fn quantized_bases_rotate_their_input_and_merge_by_requantizing() {
    let _rng = rng();
    let bias = Tensor::randn([16], (Kind::Float, Device::Cpu));
    let (vs, model) = Quantized::seeded(1, Some(&bias));
    let dense = model.dequantized();
    let mut peft = PeftModel::new(model, &vs, config(&["proj"], 8, 2).boxed(), "default").unwrap();
    randomize(&peft, 0.1);
    let x = Tensor::randn([3, 64], (Kind::Float, Device::Cpu));
    let y = tch::no_grad(|| peft.model().proj.forward(&x));
    let (m, s) = tch::no_grad(|| boft(peft.model().proj.slots(), "default").delta_weight());
    let want = (x.mm(&m).linear(&dense, Some(&bias)) - &bias) * s.squeeze_dim(-1) + &bias;
    assert!(max_diff(&y, &want) < 1e-5);
    peft.merge_adapter(None, false).unwrap();
    let merged = tch::no_grad(|| peft.model().proj.forward(&x));
    // PEFT's quantized path: dequantize, rotate and scale, re-quantize (which rounds the weight again).
    let target = (m.mm(&dense.tr()).tr() * &s).contiguous();
    let requantized =
        peft_quant::Linear4bit::quantize(&target, peft_quant::Quant4Options::default()).unwrap();
    let want = x.linear(&requantized.dequantize(), Some(&bias));
    assert!(max_diff(&merged, &want) < 1e-5, "{}", max_diff(&merged, &want));
}

#[test]
fn the_config_round_trips_through_peft_json() {
    let mut warnings = Vec::new();
    let config = BoftConfig::from_json_str(
        r#"{"peft_type": "BOFT", "target_modules": ["lin0"], "boft_block_num": 4, "boft_block_size": 0}"#,
        &mut warnings,
    )
    .unwrap();
    let text = peft_core::config::to_config_file_text(&config);
    let again = BoftConfig::from_json_str(&text, &mut warnings).unwrap();
    assert_eq!(config, again);
    assert!(warnings.is_empty(), "{warnings:?}");
}
