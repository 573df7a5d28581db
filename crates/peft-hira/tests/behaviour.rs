//! HiRA behaviour beyond the parity matrix: the update written out independently on every layer kind,
//! identity at init, merged == unmerged with several adapters merged separately, exact unmerging, and the
//! layers, options and files HiRA cannot take refused by name.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use peft_core::peft_config::TargetModules;
use peft_core::PeftModel;
use peft_hira::{HiraConfig, HiraInit, HiraLayer, MethodConfig};
use peft_testkit::nets::{ConvMix, LayerZoo, Quantized};
use peft_testkit::{
    assert_mixed_batches_refused, assert_safe_merge_refuses_nan, assert_shape_mismatch,
    assert_unsupported_layer, load_error, max_diff, randomize, rng_lock, save_with_config_edit, tuner,
};
use tch::{Device, Kind, Tensor};

fn config(targets: &[&str], r: i64) -> HiraConfig {
    HiraConfig {
        r,
        target_modules: Some(TargetModules::list(targets.iter().copied())),
        ..HiraConfig::default()
    }
}

#[test]
fn the_update_is_the_weight_times_a_low_rank_matrix_on_every_layer_kind() {
    let _rng = rng_lock();
    let (vs, zoo) = LayerZoo::seeded(0);
    let peft = PeftModel::new(
        zoo,
        &vs,
        config(&["lin0", "emb", "conv3x3", "conv1x1", "gpt2"], 3).boxed(),
        "default",
    )
    .unwrap();
    randomize(&peft, 0.5);
    let m = peft.model();
    // Linear: y = base(x) + x·(W ⊙ B·A)ᵀ.
    let x = Tensor::randn([4, 10], (Kind::Float, Device::Cpu));
    let (a, b) = tuner::<HiraLayer>(m.lin0.slots(), "default").factors();
    let base = m.lin0.base();
    let want = x.linear(&base.weight, base.bias.as_ref()) + x.matmul(&(&base.weight * b.matmul(a)).tr());
    assert!(max_diff(&tch::no_grad(|| m.lin0.forward(&x)), &want) < 1e-5);
    // Conv1D (weight stored (in, out)): the same update, transposed into its layout.
    let x4 = Tensor::randn([3, 10], (Kind::Float, Device::Cpu));
    let (a, b) = tuner::<HiraLayer>(m.gpt2.slots(), "default").factors();
    let w = m.gpt2.base().weight.tr();
    let want = tch::no_grad(|| peft_core::layer::BaseLayer::forward(m.gpt2.base(), &x4))
        + x4.matmul(&(&w * b.matmul(a)).tr());
    assert!(max_diff(&tch::no_grad(|| m.gpt2.forward(&x4)), &want) < 1e-5);
    // Embedding: rows of W ⊙ (B·A)ᵀ added to the base rows.
    let ids = Tensor::from_slice(&[0i64, 3, 6, 3]);
    let (a, b) = tuner::<HiraLayer>(m.emb.slots(), "default").factors();
    let w = &m.emb.base().weight;
    let want = w.index_select(0, &ids) + (w * b.matmul(a).tr()).index_select(0, &ids);
    assert!(max_diff(&tch::no_grad(|| m.emb.forward(&ids)), &want) < 1e-5);
    // Conv2d 3×3: ΔW[o, i, kh, kw] = Σ_r B[o, r]·A[r, i, kh, kw], multiplied into W, convolved without bias.
    let img = Tensor::randn([2, 4, 5, 5], (Kind::Float, Device::Cpu));
    let layer = tuner::<HiraLayer>(m.conv3x3.slots(), "default");
    let (a, b) = layer.factors();
    let delta = Tensor::einsum("or,rihw->oihw", &[b.flatten(1, -1), a.shallow_clone()], None::<i64>);
    assert!(max_diff(&tch::no_grad(|| layer.delta_weight()), &delta) < 1e-6);
    let w = &m.conv3x3.base().weight;
    let want = tch::no_grad(|| peft_core::layer::BaseLayer::forward(m.conv3x3.base(), &img))
        + img.conv2d(&(w * &delta), None::<Tensor>, [1, 1], [1, 1], [1, 1], 1);
    assert!(max_diff(&tch::no_grad(|| m.conv3x3.forward(&img)), &want) < 1e-5);
    // Conv2d 1×1: the squeezed matrix product, the same numbers.
    let layer = tuner::<HiraLayer>(m.conv1x1.slots(), "default");
    let (a, b) = layer.factors();
    let want = b.flatten(1, -1).matmul(&a.flatten(1, -1)).view([6, 4, 1, 1]);
    assert!(tch::no_grad(|| layer.delta_weight()).equal(&want));
}

#[test]
fn starts_as_the_identity_and_merges_adapters_from_the_unmerged_weight() {
    let _rng = rng_lock();
    tch::manual_seed(4);
    let (vs, net) = ConvMix::seeded(0);
    let all = ["lin0", "lin1", "conv2d", "conv1x1", "conv1d", "gpt", "emb"];
    let mut peft = PeftModel::new(net, &vs, config(&all, 2).boxed(), "a").unwrap();
    let base = peft.disable_adapters().unwrap().outputs();
    for (y, b) in peft.model().outputs().iter().zip(&base) {
        assert!(y.equal(b), "B = 0 (embedding: A = 0) is the identity");
    }
    peft.add_adapter("b", config(&["lin0", "conv2d"], 3).boxed()).unwrap();
    randomize(&peft, 0.4);
    peft.set_adapters(&["a", "b"]).unwrap();
    let unmerged = peft.model().outputs();
    for (y, b) in unmerged.iter().zip(&base) {
        assert!(max_diff(y, b) > 1e-3, "the adapters act");
    }
    let w0 = peft.model().lin0.base().weight.copy();
    let conv0 = peft.model().conv2d.base().weight.copy();
    // Merged one at a time, the second from the unmerged weight as PEFT's cached copy gives it.
    peft.merge_adapter(Some(&["b"]), false).unwrap();
    peft.merge_adapter(Some(&["a"]), true).unwrap();
    for (y, u) in peft.model().outputs().iter().zip(&unmerged) {
        assert!(max_diff(y, u) < 1e-4, "merged {}", max_diff(y, u));
    }
    let slots = peft.model().lin0.slots();
    let (da, db) = tch::no_grad(|| {
        (tuner::<HiraLayer>(slots, "a").delta_weight(), tuner::<HiraLayer>(slots, "b").delta_weight())
    });
    let want = &w0 + &w0 * db + &w0 * da;
    assert!(max_diff(&peft.model().lin0.base().weight, &want) < 1e-6);
    // Unmerging puts back the very weights.
    peft.unmerge_adapter().unwrap();
    assert!(peft.model().lin0.base().weight.equal(&w0));
    assert!(peft.model().conv2d.base().weight.equal(&conv0));
}

#[test]
fn init_schemes_draw_as_peft_per_layer_kind() {
    let _rng = rng_lock();
    let layer = |cfg: HiraConfig, module: &str| {
        let (vs, zoo) = LayerZoo::seeded(0);
        let peft = PeftModel::new(zoo, &vs, cfg.boxed(), "default").unwrap();
        let slots = match module {
            "lin0" => peft.model().lin0.slots(),
            _ => peft.model().emb.slots(),
        };
        let (a, b) = tuner::<HiraLayer>(slots, "default").factors();
        (a.copy(), b.copy())
    };
    let with =
        |init: Option<HiraInit>, target: &str| HiraConfig { init_weights: init, ..config(&[target], 4) };
    // Linear, true: Kaiming-uniform A (bound 1/√in), zero B.
    let (a, b) = layer(with(Some(HiraInit::Bool(true)), "lin0"), "lin0");
    assert!(b.abs().max().double_value(&[]) == 0.0 && a.abs().max().double_value(&[]) <= 1.0 / 10f64.sqrt());
    // Linear, "Gaussian" (any case): A ~ N(0, 1/r).
    let (a, b) = layer(with(Some(HiraInit::Scheme("Gaussian".into())), "lin0"), "lin0");
    assert!(b.abs().max().double_value(&[]) == 0.0 && a.std(true).double_value(&[]) < 0.5);
    // Linear, null or false: both keep their N(0, 1) draws.
    let (a, b) = layer(with(None, "lin0"), "lin0");
    assert!(a.std(true).double_value(&[]) > 0.5 && b.std(true).double_value(&[]) > 0.5);
    // Embedding, null: PEFT's reset runs (only `false` skips it): zero A, N(0, 1) B.
    let (a, b) = layer(with(None, "emb"), "emb");
    assert!(a.abs().max().double_value(&[]) == 0.0 && b.std(true).double_value(&[]) > 0.5);
    let (a, _) = layer(with(Some(HiraInit::Bool(false)), "emb"), "emb");
    assert!(a.std(true).double_value(&[]) > 0.5);
    // Unknown schemes: refused on linear layers with PEFT's message.
    let (vs, zoo) = LayerZoo::seeded(0);
    let err =
        PeftModel::new(zoo, &vs, with(Some(HiraInit::Scheme("olora".into())), "lin0").boxed(), "default")
            .unwrap_err();
    assert!(err.to_string().contains("Unknown initialization init_weights='olora'"), "{err}");
}

#[test]
fn layers_and_options_hira_cannot_take_are_refused_by_name() {
    let _rng = rng_lock();
    let (vs, zoo) = LayerZoo::seeded(0);
    let err = PeftModel::new(zoo, &vs, config(&["grouped"], 2).boxed(), "default").unwrap_err();
    assert_unsupported_layer(&err, "grouped", "HIRA", "groups > 1 (got groups=2)");
    // A Conv3d with a 1×1×k kernel: PEFT 0.21.2 composes its update as a 2-D 1×1 kernel and fails.
    let (vs, net) = ConvMix::seeded(0);
    let err = PeftModel::new(net, &vs, config(&["conv3d"], 2).boxed(), "default").unwrap_err();
    assert_unsupported_layer(&err, "conv3d", "HIRA", "first two kernel sizes are 1");
    let (vs, q) = Quantized::seeded(1, None);
    let err = PeftModel::new(q, &vs, config(&["proj"], 2).boxed(), "default").unwrap_err();
    assert_unsupported_layer(&err, "proj", "HIRA", "quantized");
    let (vs, zoo) = LayerZoo::seeded(0);
    let err = PeftModel::new(zoo, &vs, config(&["lin0"], 0).boxed(), "default").unwrap_err();
    assert!(
        err.to_string().contains("`r` should be a positive integer value but the value passed is 0"),
        "{err}"
    );
    let mut w = vec![];
    for (json, want) in [
        (
            r#"{"peft_type": "HIRA", "target_modules": "lin.*", "layers_to_transform": [0]}"#,
            "`layers_to_transform` cannot be used when `target_modules` is a str.",
        ),
        (r#"{"peft_type": "HIRA", "rank_pattern": {"(": 2}}"#, "rank_pattern"),
    ] {
        let err = HiraConfig::from_json_str(json, &mut w).unwrap_err();
        assert!(err.to_string().contains(want), "{err}");
    }
    // Unlike most configs, HiRA's lets `layers_pattern` go without `layers_to_transform` (as PEFT's does).
    HiraConfig::from_json_str(r#"{"peft_type": "HIRA", "layers_pattern": "layers"}"#, &mut w).unwrap();
    // The written config keeps fan_in_fan_out as given: PEFT corrects the layer, not the config.
    let (vs, net) = ConvMix::seeded(0);
    let cfg = HiraConfig { fan_in_fan_out: true, ..config(&["lin0"], 2) };
    let peft = PeftModel::new(net, &vs, cfg.boxed(), "default").unwrap();
    let saved = peft.config("default").unwrap().to_json();
    assert_eq!(saved["fan_in_fan_out"], true);
}

#[test]
fn files_of_another_rank_fail_naming_the_keys() {
    let _rng = rng_lock();
    let (vs, zoo) = LayerZoo::seeded(0);
    let mut peft = PeftModel::new(zoo, &vs, config(&["lin0", "emb"], 2).boxed(), "default").unwrap();
    assert_mixed_batches_refused(&peft, "HIRA");
    let dir = save_with_config_edit(&peft, "\"r\": 2", "\"r\": 3");
    let (vs2, zoo2) = LayerZoo::seeded(0);
    let err = load_error(zoo2, &vs2, dir.path());
    assert_shape_mismatch(&err, "base_model.model.emb.hira_embedding_A", &[3, 7], &[2, 7]);
    randomize(&peft, 0.1);
    assert_safe_merge_refuses_nan(&mut peft, |m| m.lin0.base().weight.shallow_clone());
}
