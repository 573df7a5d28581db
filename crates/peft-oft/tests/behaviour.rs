//! OFT behaviour beyond the parity matrix: identity at init, orthogonality, merging, block sizing, COFT,
//! the options and layers PEFT refuses, bad files — each error naming what is wrong.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use peft_core::peft_config::TargetModules;
use peft_core::MethodConfig;
use peft_core::PeftModel;
use peft_oft::{OftConfig, OftLayer};
use peft_testkit::nets::{LayerZoo, Quantized};
use peft_testkit::{
    assert_mixed_batches_refused, assert_safe_merge_refuses_nan, assert_shape_mismatch,
    assert_unsupported_layer, load_error, max_diff, randomize, rng_lock as rng, save_with_config_edit, tuner,
};
use tch::nn::{ModuleT, VarStore};
use tch::{Device, Kind, Tensor};

fn config(targets: &[&str], block_size: i64) -> OftConfig {
    OftConfig {
        target_modules: Some(TargetModules::list(targets.iter().copied())),
        oft_block_size: block_size,
        ..OftConfig::default()
    }
}

fn oft<'a>(layer: &'a peft_core::AdapterSlots, adapter: &str) -> &'a OftLayer {
    tuner(layer, adapter)
}

fn net() -> (VarStore, LayerZoo) {
    LayerZoo::seeded(0)
}

/// Every layer OFT adapts, with an input: (name, input, forward).
fn layer_inputs(n: &LayerZoo) -> Vec<(&'static str, Tensor, Tensor)> {
    let ids = Tensor::from_slice(&[0i64, 3, 6, 2, 1, 5]).view([2, 3]);
    let img = Tensor::randn([2, 4, 5, 5], (Kind::Float, Device::Cpu));
    let x = Tensor::randn([3, 10], (Kind::Float, Device::Cpu));
    tch::no_grad(|| {
        vec![
            ("emb", ids.shallow_clone(), n.emb.forward(&ids)),
            ("lin0", x.shallow_clone(), n.lin0.forward(&x)),
            ("conv1x1", img.shallow_clone(), n.conv1x1.forward(&img)),
            ("conv3x3", img.shallow_clone(), n.conv3x3.forward(&img)),
        ]
    })
}

#[test]
fn starts_as_the_identity_except_on_kernels_larger_than_one() {
    let _rng = rng();
    let (vs, n) = net();
    let mut peft =
        PeftModel::new(n, &vs, config(&["emb", "lin0", "conv1x1", "conv3x3"], 4).boxed(), "default").unwrap();
    tch::manual_seed(3);
    let adapted = layer_inputs(peft.model());
    tch::manual_seed(3);
    let disabled = layer_inputs(&peft.disable_adapters().unwrap());
    for ((name, _, a), (_, _, d)) in adapted.iter().zip(&disabled) {
        if *name == "conv3x3" {
            // PEFT's patch fold sums overlapping 3x3 patches: not the identity even with R = I.
            assert!(max_diff(a, d) > 1e-3, "{name}");
        } else {
            assert!(a.equal(d), "{name}: a zero skew matrix is the identity rotation");
        }
    }
}

#[test]
fn rotations_are_orthogonal_with_the_exact_cayley_transform() {
    let _rng = rng();
    let (vs, n) = net();
    let cfg = OftConfig { use_cayley_neumann: false, ..config(&["lin0"], 5) };
    let peft = PeftModel::new(n, &vs, cfg.boxed(), "default").unwrap();
    randomize(&peft, 0.5);
    let layer = oft(peft.model().lin0.slots(), "default");
    assert_eq!((layer.r(), layer.block_size()), (2, 5));
    let r = tch::no_grad(|| layer.delta_weight());
    assert_eq!(r.size(), [10, 10]);
    let eye = Tensor::eye(10, (Kind::Float, Device::Cpu));
    assert!(max_diff(&r.mm(&r.tr()), &eye) < 1e-5, "R Rᵀ = I");
    // Block-diagonal: nothing couples the two blocks.
    assert_eq!(r.narrow(0, 0, 5).narrow(1, 5, 5).abs().max().double_value(&[]), 0.0);
}

#[test]
fn one_neumann_term_is_the_identity_whatever_the_weights() {
    let _rng = rng();
    let (vs, n) = net();
    let cfg = OftConfig { num_cayley_neumann_terms: 1, ..config(&["lin0"], 5) };
    let peft = PeftModel::new(n, &vs, cfg.boxed(), "default").unwrap();
    randomize(&peft, 0.5);
    let r = tch::no_grad(|| oft(peft.model().lin0.slots(), "default").delta_weight());
    assert!(r.equal(&Tensor::eye(10, (Kind::Float, Device::Cpu))));
}

#[test]
fn merged_equals_unmerged_on_linear_embedding_and_1x1_convolutions() {
    let _rng = rng();
    for share in [false, true] {
        let (vs, n) = net();
        let cfg = OftConfig { block_share: share, ..config(&["emb", "lin0", "conv1x1"], 2) };
        let mut peft = PeftModel::new(n, &vs, cfg.boxed(), "default").unwrap();
        randomize(&peft, 0.3);
        tch::manual_seed(3);
        let unmerged = layer_inputs(peft.model());
        for safe in [false, true] {
            peft.merge_adapter(None, safe).unwrap();
            tch::manual_seed(3);
            let merged = layer_inputs(peft.model());
            for ((name, _, u), (_, _, m)) in unmerged.iter().zip(&merged).take(3) {
                assert!(max_diff(u, m) < 1e-5, "{name} (share {share}, safe {safe})");
            }
            peft.unmerge_adapter().unwrap();
            tch::manual_seed(3);
            let back = layer_inputs(peft.model());
            for ((name, _, u), (_, _, b)) in unmerged.iter().zip(&back).take(3) {
                assert!(max_diff(u, b) < 1e-5, "{name}: unmerging multiplies by the inverse");
            }
        }
    }
}

#[test]
fn block_sizes_are_adjusted_per_layer_with_a_warning() {
    let _rng = rng();
    let (vs, n) = net();
    // lin0: 10 inputs -> blocks of 5; conv1x1: 4·1² = 4 -> 4 (32 > 4); conv3x3: 4·3² = 36 -> 6.
    let peft = PeftModel::new(n, &vs, config(&["lin0", "conv1x1", "conv3x3"], 6).boxed(), "default").unwrap();
    let sizes: Vec<(i64, i64)> =
        [peft.model().lin0.slots(), peft.model().conv1x1.slots(), peft.model().conv3x3.slots()]
            .iter()
            .map(|s| {
                let l = oft(s, "default");
                (l.r(), l.block_size())
            })
            .collect();
    assert_eq!(sizes, [(2, 5), (1, 4), (6, 6)]);
    assert!(peft
        .warnings()
        .iter()
        .any(|w| w == "Invalid `oft_block_size` (6)! Adjusted `oft_block_size` to (5)."));
    assert!(peft
        .warnings()
        .iter()
        .any(|w| w == "Invalid `oft_block_size` (6)! Adjusted `oft_block_size` to (4)."));
    // The config keeps the value given, as PEFT's does.
    let saved = peft.config("default").unwrap().to_json();
    assert_eq!(saved["oft_block_size"], 6);

    let (vs, n) = net();
    let cfg = OftConfig { r: 3, oft_block_size: 0, ..config(&["lin0"], 0) };
    let peft = PeftModel::new(n, &vs, cfg.boxed(), "default").unwrap();
    let l = oft(peft.model().lin0.slots(), "default");
    assert_eq!((l.r(), l.block_size()), (2, 5));
    assert!(
        peft.warnings().iter().any(|w| w == "Invalid `r` (3)! Adjusted `r` to (2)."),
        "{:?}",
        peft.warnings()
    );
}

#[test]
fn coft_writes_the_projection_back_into_the_parameter() {
    let _rng = rng();
    let (vs, n) = net();
    let cfg = OftConfig { coft: true, eps: 0.5, ..config(&["lin0"], 5) };
    let peft = PeftModel::new(n, &vs, cfg.boxed(), "default").unwrap();
    randomize(&peft, 1.0);
    let w = oft(peft.model().lin0.slots(), "default").weight().shallow_clone();
    let before = w.copy();
    let x = Tensor::randn([3, 10], (Kind::Float, Device::Cpu));
    let _ = tch::no_grad(|| peft.model().lin0.forward(&x));
    assert!(!w.equal(&before), "the forward pass projected the parameter");
    // Each block's skew matrix (twice the upper triangle's squared norm) is now on the sphere of radius
    // eps / sqrt(blocks).
    let radius = 0.5 / 2f64.sqrt();
    for block in 0..2 {
        let norm = (w.get(block).square().sum(Kind::Double) * 2.0).sqrt().double_value(&[]);
        assert!((norm - radius).abs() < 1e-6, "block {block}: {norm} vs {radius}");
    }
}

#[test]
fn module_dropout_changes_nothing_and_draws_nothing_as_in_peft() {
    let _rng = rng();
    let x = Tensor::randn([3, 10], (Kind::Float, Device::Cpu));
    let run = |dropout: f64| {
        let (vs, n) = net();
        let cfg = OftConfig { module_dropout: dropout, init_weights: false, ..config(&["lin0"], 5) };
        let peft = PeftModel::new(n, &vs, cfg.boxed(), "default").unwrap();
        tch::manual_seed(5);
        let y = peft.model().lin0.forward_t(&x, true);
        (y, Tensor::randn([4], (Kind::Float, Device::Cpu)))
    };
    let (y0, next0) = run(0.0);
    let (y1, next1) = run(0.9);
    assert!(y0.equal(&y1));
    assert!(next0.equal(&next1), "no random numbers drawn");
}

#[test]
fn layers_oft_cannot_adapt_are_refused_by_name() {
    let _rng = rng();
    for (target, hint) in [
        ("conv1d", "torch.nn.Embedding"),
        ("conv3d", "torch.nn.Embedding"),
        ("gpt2", "torch.nn.Embedding"),
        ("dilated", "dilation > 1"),
        ("tall", "non-square kernel"),
    ] {
        let (vs, n) = net();
        let err = PeftModel::new(n, &vs, config(&[target], 2).boxed(), "default").unwrap_err();
        assert_unsupported_layer(&err, target, "OFT", hint);
    }
}

#[test]
fn grouped_convolutions_run_but_refuse_merging() {
    let _rng = rng();
    let (vs, n) = net();
    let mut peft = PeftModel::new(n, &vs, config(&["grouped"], 6).boxed(), "default").unwrap();
    randomize(&peft, 0.3);
    let img = Tensor::randn([2, 4, 5, 5], (Kind::Float, Device::Cpu));
    let y = tch::no_grad(|| peft.model().grouped.forward(&img));
    let err = peft.merge_adapter(None, false).unwrap_err();
    assert!(err.to_string().contains("grouped") && err.to_string().contains("not supported"), "{err}");
    assert!(tch::no_grad(|| peft.model().grouped.forward(&img)).equal(&y), "nothing was merged");
}

#[test]
fn a_non_finite_safe_merge_is_refused() {
    let _rng = rng();
    let (vs, n) = net();
    let mut peft = PeftModel::new(n, &vs, config(&["lin0"], 5).boxed(), "default").unwrap();
    assert_safe_merge_refuses_nan(&mut peft, |m| m.lin0.base().weight.shallow_clone());
}

#[test]
fn fan_in_fan_out_is_corrected_on_linear_layers() {
    let _rng = rng();
    let (vs, n) = net();
    let cfg = OftConfig { fan_in_fan_out: true, ..config(&["lin0"], 5) };
    let peft = PeftModel::new(n, &vs, cfg.boxed(), "default").unwrap();
    assert_eq!(peft.config("default").unwrap().to_json()["fan_in_fan_out"], false);
    assert!(peft.warnings().iter().any(|w| w.contains("Setting fan_in_fan_out to False")));
}

#[test]
fn config_checks_follow_peft() {
    let _rng = rng();
    let parse = |text: &str| {
        let mut w = vec![];
        OftConfig::from_json_str(text, &mut w).map(|c| (c, w))
    };
    let err = parse(r#"{"peft_type": "OFT", "r": 4, "oft_block_size": 8}"#).unwrap_err();
    assert!(err.to_string().contains("You can only specify either r (4) or oft_block_size (8)"), "{err}");
    let err = parse(r#"{"peft_type": "OFT", "r": 0, "oft_block_size": 0}"#).unwrap_err();
    assert!(err.to_string().contains("Either `r` or `oft_block_size` must be non-zero"), "{err}");
    let err = parse(r#"{"peft_type": "OFT", "layers_pattern": "layers"}"#).unwrap_err();
    assert!(err.to_string().contains("`layers_to_transform` must also be specified"), "{err}");
    let err = parse(r#"{"peft_type": "OFT", "oft_block_size": -4}"#).unwrap_err();
    assert!(err.to_string().contains("negative"), "{err}");
    // A file from before PEFT 0.14 (no oft_block_size, r = 8).
    let err = parse(r#"{"peft_type": "OFT", "r": 8, "module_dropout": 0.0}"#).unwrap_err();
    assert!(err.to_string().contains("OFT has been updated since PEFT 0.14.0"), "{err}");
    let (c, w) = parse(r#"{"peft_type": "OFT"}"#).unwrap();
    assert_eq!(c.oft_block_size, 32);
    assert!(w.iter().any(|m| m.contains("`oft_block_size` is missing")), "{w:?}");
    // Cayley–Neumann adapters from before 0.18 warn; new ones do not.
    let (_, w) = parse(
        r#"{"peft_type": "OFT", "oft_block_size": 8, "use_cayley_neumann": true, "peft_version": "0.17.1"}"#,
    )
    .unwrap();
    assert!(
        w.iter().any(|m| m.contains("cayley-neumann parameterization has been slightly changed")),
        "{w:?}"
    );
    let (_, w) = parse(
        r#"{"peft_type": "OFT", "oft_block_size": 8, "use_cayley_neumann": true, "peft_version": "0.21.2"}"#,
    )
    .unwrap();
    assert!(w.is_empty(), "{w:?}");
    // Configs built in code are checked too.
    let (vs, n) = net();
    let cfg = OftConfig { r: 2, ..config(&["lin0"], 5) };
    let err = PeftModel::new(n, &vs, cfg.boxed(), "default").unwrap_err();
    assert!(err.to_string().contains("You can only specify either r (2)"), "{err}");
}

#[test]
fn a_file_with_other_block_sizes_fails_to_load_naming_key_and_shapes() {
    let _rng = rng();
    let (vs, n) = net();
    let peft = PeftModel::new(n, &vs, config(&["lin0"], 5).boxed(), "default").unwrap();
    let dir = save_with_config_edit(&peft, "\"oft_block_size\": 5", "\"oft_block_size\": 2");
    let (vs2, n2) = net();
    let err = load_error(n2, &vs2, dir.path());
    assert_shape_mismatch(&err, "base_model.model.lin0.oft_R.weight", &[5, 1], &[2, 10]);
}

#[test]
fn embeddings_save_under_peft_s_key() {
    let _rng = rng();
    let (vs, n) = net();
    let peft = PeftModel::new(n, &vs, config(&["emb", "lin0"], 5).boxed(), "default").unwrap();
    let keys: Vec<String> = peft.adapter_state_dict("default").unwrap().into_iter().map(|(k, _)| k).collect();
    assert_eq!(keys, ["base_model.model.emb.oft_embedding_R.weight", "base_model.model.lin0.oft_R.weight"]);
}

#[test]
fn mixed_batches_are_refused_rather_than_ignored() {
    let _rng = rng();
    let (vs, n) = net();
    let peft = PeftModel::new(n, &vs, config(&["lin0"], 5).boxed(), "default").unwrap();
    assert_mixed_batches_refused(&peft, "OFT");
}

#[test]
fn quantized_bases_rotate_their_input_and_merge_by_requantizing() {
    let _rng = rng();
    let (vs, model) = Quantized::seeded(1, None);
    let dense = model.dequantized();
    let cfg = OftConfig {
        target_modules: Some(TargetModules::list(["proj"])),
        oft_block_size: 16,
        ..OftConfig::default()
    };
    let mut peft = PeftModel::new(model, &vs, cfg.boxed(), "default").unwrap();
    randomize(&peft, 0.1);
    let x = Tensor::randn([3, 64], (Kind::Float, Device::Cpu));
    let y = tch::no_grad(|| peft.model().proj.forward(&x));
    let r = tch::no_grad(|| oft(peft.model().proj.slots(), "default").delta_weight());
    let want = x.mm(&r).linear::<Tensor>(&dense, None);
    assert!(max_diff(&y, &want) < 1e-5);
    peft.merge_adapter(None, false).unwrap();
    let merged = tch::no_grad(|| peft.model().proj.forward(&x));
    // PEFT's quantized path: dequantize, rotate, re-quantize (which rounds the rotated weight again).
    let target = r.mm(&dense.tr()).tr().contiguous();
    let requantized =
        peft_quant::Linear4bit::quantize(&target, peft_quant::Quant4Options::default()).unwrap();
    let want = x.linear::<Tensor>(&requantized.dequantize(), None);
    assert!(max_diff(&merged, &want) < 1e-5, "{}", max_diff(&merged, &want));
}
