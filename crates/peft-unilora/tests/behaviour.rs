//! UniLoRA behaviour beyond the parity matrix: the layer written out from θ and its maps, the balanced
//! map and its scales, merged == unmerged on `nn.Linear` and `Conv1D`, saved and redrawn maps, the
//! model-wide θ dict, and what UniLoRA cannot take refused by name.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use peft_core::peft_config::{LayerIndices, TargetModules};
use peft_core::{LoadOptions, PeftError, PeftModel, SaveOptions, TunerLayer};
use peft_testkit::nets::{LayerZoo, Quantized};
use peft_testkit::{
    assert_safe_merge_refuses_nan, assert_shape_mismatch, assert_unsupported_layer, load_error, max_diff,
    randomize, rng_lock, save_with_config_edit, tuner,
};
use peft_unilora::{MethodConfig, UniloraConfig, UniloraLayer};
use tch::nn::ModuleT;
use tch::{Device, Kind, Tensor};

fn config(targets: &[&str], r: i64, theta_d_length: i64) -> UniloraConfig {
    UniloraConfig {
        r,
        theta_d_length,
        target_modules: Some(TargetModules::list(targets.iter().copied())),
        ..UniloraConfig::default()
    }
}

fn layer<'a>(peft: &'a PeftModel<LayerZoo>, module: &str, adapter: &str) -> &'a UniloraLayer {
    let m = peft.model();
    let slots = match module {
        "lin0" => m.lin0.slots(),
        "lin1" => m.lin1.slots(),
        "gpt2" => m.gpt2.slots(),
        other => panic!("no test layer {other}"),
    };
    tuner::<UniloraLayer>(slots, adapter)
}

#[test]
fn the_layer_adds_b_a_x_with_factors_gathered_from_theta_and_scaled() {
    let _rng = rng_lock();
    let (vs, zoo) = LayerZoo::seeded(0);
    let peft = PeftModel::new(zoo, &vs, config(&["lin0", "lin1"], 3, 50).boxed(), "default").unwrap();
    let l = layer(&peft, "lin0", "default");
    let (theta, ia, ib, sa, sb) = l.tensors();
    assert_eq!((theta.size(), ia.size(), ib.size()), (vec![50], vec![3, 10], vec![20, 3]));
    let a = theta.index(&[Some(ia)]) * sa;
    let b = theta.index(&[Some(ib)]) * sb;
    tch::manual_seed(1);
    let x = Tensor::randn([4, 10], (Kind::Float, Device::Cpu));
    let base = peft.model().lin0.base();
    let want = x.linear(&base.weight, base.bias.as_ref()) + x.matmul(&a.tr()).matmul(&b.tr());
    let got = tch::no_grad(|| peft.model().lin0.forward(&x));
    assert!(max_diff(&got, &want) < 1e-6);
    // PEFT's default θ is U(−0.02, 0.02) and both factors come from it: not the identity.
    assert!(max_diff(&got, &tch::no_grad(|| x.linear(&base.weight, base.bias.as_ref()))) > 0.0);
    // Both layers read the one θ; only the first holds and saves it.
    let l1 = layer(&peft, "lin1", "default");
    assert!(l1.tensors().0.equal(theta));
    assert!(l.named_tensors().iter().any(|(n, _)| n == "unilora_theta_d.default"));
    assert!(l1.named_tensors().iter().all(|(n, _)| !n.starts_with("unilora_theta_d")));
    assert_eq!(peft.num_parameters().0, 50);
}

#[test]
fn every_entry_of_theta_is_used_equally_often_and_scaled_by_its_count() {
    let _rng = rng_lock();
    let (vs, zoo) = LayerZoo::seeded(0);
    let peft = PeftModel::new(zoo, &vs, config(&["lin0", "lin1", "gpt2"], 2, 37).boxed(), "default").unwrap();
    let (mut all, mut scales) = (Vec::new(), Vec::new());
    for m in ["lin0", "lin1", "gpt2"] {
        let (_, ia, ib, sa, sb) = layer(&peft, m, "default").tensors();
        for (i, s) in [(ia, sa), (ib, sb)] {
            all.extend(Vec::<i64>::try_from(i.flatten(0, -1)).unwrap());
            scales.extend(Vec::<f32>::try_from(s.flatten(0, -1)).unwrap());
        }
    }
    // D = (2·10 + 20·2) + (2·20 + 2·2) + (2·10 + 4·2) = 132 entries over 37 values: 3 or 4 uses each.
    assert_eq!(all.len(), 132);
    let mut counts = [0usize; 37];
    all.iter().for_each(|&i| counts[i as usize] += 1);
    assert!(counts.iter().all(|&c| c == 3 || c == 4), "{counts:?}");
    for (i, s) in all.iter().zip(&scales) {
        assert_eq!(*s, (counts[*i as usize] as f32).sqrt().recip());
    }
}

#[test]
fn merged_output_matches_unmerged_on_linear_and_conv1d_and_unmerge_restores() {
    let _rng = rng_lock();
    tch::manual_seed(5);
    let x = Tensor::randn([6, 10], (Kind::Float, Device::Cpu));
    let (vs, zoo) = LayerZoo::seeded(0);
    let mut peft = PeftModel::new(zoo, &vs, config(&["lin0", "lin1", "gpt2"], 4, 30).boxed(), "a").unwrap();
    peft.add_adapter("b", config(&["lin0"], 2, 11).boxed()).unwrap();
    randomize(&peft, 0.5);
    peft.set_adapters(&["a", "b"]).unwrap();
    let w0 = peft.model().gpt2.base().weight.copy();
    let run = |p: &PeftModel<LayerZoo>| tch::no_grad(|| (p.forward_t(&x, false), p.model().gpt2.forward(&x)));
    let (y, g) = run(&peft);
    // The Conv1D weight is stored (in, out): its ΔW is transposed.
    let l = layer(&peft, "gpt2", "a");
    assert_eq!(l.delta_weight().size(), w0.size());
    peft.merge_adapter(None, true).unwrap();
    let (ym, gm) = run(&peft);
    assert!(max_diff(&ym, &y) < 1e-5 && max_diff(&gm, &g) < 1e-5);
    assert!(max_diff(&peft.model().gpt2.base().weight, &(&w0 + l_delta(&peft))) < 1e-6);
    peft.unmerge_adapter().unwrap();
    assert!(max_diff(&peft.model().gpt2.base().weight, &w0) < 1e-6);
    assert!(max_diff(&run(&peft).0, &y) < 1e-5);
}

fn l_delta(peft: &PeftModel<LayerZoo>) -> Tensor {
    tch::no_grad(|| layer(peft, "gpt2", "a").delta_weight())
}

#[test]
fn without_save_indices_the_file_holds_theta_alone_and_the_map_is_redrawn_on_load() {
    let _rng = rng_lock();
    tch::manual_seed(2);
    let x = Tensor::randn([3, 10], (Kind::Float, Device::Cpu));
    for save_indices in [false, true] {
        let (vs, zoo) = LayerZoo::seeded(0);
        let cfg = UniloraConfig { save_indices, proj_seed: 9, ..config(&["lin0", "lin1"], 2, 16) };
        let peft = PeftModel::new(zoo, &vs, cfg.boxed(), "default").unwrap();
        randomize(&peft, 0.3);
        let keys: Vec<String> =
            peft.adapter_state_dict("default").unwrap().into_iter().map(|(k, _)| k).collect();
        assert!(keys.contains(&"base_model.unilora_theta_d".to_string()));
        assert_eq!(keys.len(), if save_indices { 9 } else { 1 }, "{keys:?}");
        if save_indices {
            assert!(keys.contains(&"base_model.model.lin1.unilora_scales_B".to_string()), "{keys:?}");
        }
        let dir = tempfile::tempdir().unwrap();
        peft.save_pretrained(dir.path(), &SaveOptions::default()).unwrap();
        let y = tch::no_grad(|| peft.forward_t(&x, false));
        let (vs2, zoo2) = LayerZoo::seeded(0);
        let (back, _) = PeftModel::from_pretrained(zoo2, &vs2, dir.path(), LoadOptions::default()).unwrap();
        assert!(tch::no_grad(|| back.forward_t(&x, false)).equal(&y), "save_indices={save_indices}");
    }
}

#[test]
fn saved_maps_and_scales_are_the_ones_used_after_loading() {
    let _rng = rng_lock();
    let (vs, zoo) = LayerZoo::seeded(0);
    let cfg = UniloraConfig { save_indices: true, ..config(&["lin0"], 2, 8) };
    let peft = PeftModel::new(zoo, &vs, cfg.boxed(), "default").unwrap();
    let dir = tempfile::tempdir().unwrap();
    peft.save_pretrained(dir.path(), &SaveOptions::default()).unwrap();
    // A file whose map differs from what proj_seed draws (another index routine, as PEFT allows for).
    let file = dir.path().join("adapter_model.safetensors");
    let mut tensors = Tensor::read_safetensors(&file).unwrap();
    for (k, t) in tensors.iter_mut() {
        if k.ends_with("unilora_indices_A") {
            *t = t.zeros_like();
        }
        if k.ends_with("unilora_scales_A") {
            *t = t.ones_like();
        }
    }
    Tensor::write_safetensors(&tensors, &file).unwrap();
    let (vs2, zoo2) = LayerZoo::seeded(0);
    let (back, _) = PeftModel::from_pretrained(zoo2, &vs2, dir.path(), LoadOptions::default()).unwrap();
    let (theta, ia, _, sa, _) = layer(&back, "lin0", "default").tensors();
    assert_eq!(ia.sum(Kind::Int64).int64_value(&[]), 0);
    assert_eq!(sa.min().double_value(&[]), 1.0);
    let (a, _) = layer(&back, "lin0", "default").factors(false);
    assert!(a.equal(&theta.get(0).expand([2, 10], false)));
}

#[test]
fn the_model_wide_theta_dict_lists_every_adapter_on_every_layer_until_deleted() {
    let _rng = rng_lock();
    let (vs, zoo) = LayerZoo::seeded(0);
    let mut peft = PeftModel::new(zoo, &vs, config(&["lin0", "lin1"], 2, 16).boxed(), "a").unwrap();
    peft.add_adapter("b", config(&["lin1"], 2, 8).boxed()).unwrap();
    let status = peft.layer_status();
    let lin0 = status.iter().find(|s| s.name == "lin0").unwrap();
    // PEFT's layers hold the whole dict: lin0 lists `b`, which only lin1 carries.
    assert_eq!(lin0.available_adapters, ["a", "b"]);
    assert_eq!(lin0.requires_grad.len(), 2);
    peft.delete_adapter("b").unwrap();
    for s in peft.layer_status() {
        assert_eq!(s.available_adapters, ["a"], "{}", s.name);
    }
    // A new adapter of the same name draws afresh and rejoins the dict.
    peft.add_adapter("b", config(&["lin0"], 2, 8).boxed()).unwrap();
    assert_eq!(peft.layer_status()[1].available_adapters, ["a", "b"]);
}

#[test]
fn layers_and_options_unilora_cannot_take_are_refused_by_name() {
    let _rng = rng_lock();
    for target in ["emb", "conv1x1", "conv1d"] {
        let (vs, zoo) = LayerZoo::seeded(0);
        let err = PeftModel::new(zoo, &vs, config(&[target], 2, 8).boxed(), "default").unwrap_err();
        assert_unsupported_layer(&err, target, "UNILORA", "only the following modules are supported");
    }
    let (vs, q) = Quantized::seeded(1, None);
    let err = PeftModel::new(q, &vs, config(&["proj"], 2, 8).boxed(), "default").unwrap_err();
    assert_unsupported_layer(&err, "proj", "UNILORA", "quantized linear layers are not supported");
    let mut w = vec![];
    for (json, message) in [
        (r#"{"peft_type": "UNILORA", "r": 0}"#, "`r` should be a positive integer, got 0."),
        (
            r#"{"peft_type": "UNILORA", "theta_d_length": -1}"#,
            "`theta_d_length` should be a positive integer",
        ),
        (r#"{"peft_type": "UNILORA", "unilora_dropout": 1.5}"#, "should be between 0.0 and 1.0, got 1.5."),
        (
            r#"{"peft_type": "UNILORA", "init_theta_d_bound": 0.0}"#,
            "`init_theta_d_bound` should be a positive",
        ),
        (
            r#"{"peft_type": "UNILORA", "bias": "lora_only"}"#,
            "'none', 'all', or 'unilora_only', got lora_only.",
        ),
        (
            r#"{"peft_type": "UNILORA", "target_modules": "lin.*", "layers_to_transform": [0]}"#,
            "`layers_to_transform` cannot be used when `target_modules` is a str.",
        ),
    ] {
        let err = UniloraConfig::from_json_str(json, &mut w).unwrap_err();
        assert!(err.to_string().contains(message), "{json}: {err}");
    }
    let (vs, zoo) = LayerZoo::seeded(0);
    let bad = UniloraConfig { proj_seed: -1, ..config(&["lin0"], 2, 8) };
    let err = PeftModel::new(zoo, &vs, bad.boxed(), "default").unwrap_err();
    assert!(err.to_string().contains("`proj_seed` -1 must be non-negative"), "{err}");
    let (vs, zoo) = LayerZoo::seeded(0);
    let bad = UniloraConfig {
        target_modules: Some(TargetModules::Regex("lin0".into())),
        layers_to_transform: Some(LayerIndices::One(0)),
        ..config(&[], 2, 8)
    };
    assert!(PeftModel::new(zoo, &vs, bad.boxed(), "default")
        .unwrap_err()
        .to_string()
        .contains("layers_to_transform"));
}

#[test]
fn files_of_another_shape_fail_naming_key_and_shapes_and_nan_merges_are_refused() {
    let _rng = rng_lock();
    let (vs, zoo) = LayerZoo::seeded(0);
    let cfg = UniloraConfig { save_indices: true, ..config(&["lin0"], 2, 16) };
    let mut peft = PeftModel::new(zoo, &vs, cfg.boxed(), "default").unwrap();
    let dir = save_with_config_edit(&peft, "\"theta_d_length\": 16", "\"theta_d_length\": 12");
    let (vs2, zoo2) = LayerZoo::seeded(0);
    assert_shape_mismatch(&load_error(zoo2, &vs2, dir.path()), "base_model.unilora_theta_d", &[12], &[16]);
    let dir = save_with_config_edit(&peft, "\"r\": 2", "\"r\": 3");
    let (vs2, zoo2) = LayerZoo::seeded(0);
    let err = load_error(zoo2, &vs2, dir.path());
    assert_shape_mismatch(&err, "base_model.model.lin0.unilora_indices_A", &[3, 10], &[2, 10]);
    assert_safe_merge_refuses_nan(&mut peft, |m| m.lin0.base().weight.shallow_clone());
}

#[test]
fn a_safe_merge_refuses_a_non_finite_theta_even_where_no_entry_of_it_is_used() {
    let _rng = rng_lock();
    let (vs, zoo) = LayerZoo::seeded(0);
    // 1 · 10 + 20 · 1 = 30 map entries on lin0, over a θ of 100: most entries are unused.
    let mut peft = PeftModel::new(zoo, &vs, config(&["lin0"], 1, 100).boxed(), "default").unwrap();
    let (theta, ia, ib, _, _) = layer(&peft, "lin0", "default").tensors();
    let used: Vec<i64> = Vec::try_from(Tensor::cat(&[ia.flatten(0, -1), ib.flatten(0, -1)], 0)).unwrap();
    let unused = (0..100).find(|i| !used.contains(i)).unwrap();
    let t = theta.shallow_clone();
    let _ = tch::no_grad(|| t.get(unused).fill_(f64::NAN));
    assert!(layer(&peft, "lin0", "default").delta_weight().isfinite().all().int64_value(&[]) != 0);
    let err = peft.merge_adapter(None, true).unwrap_err();
    assert!(matches!(err, PeftError::NonFiniteMerge { .. }), "{err:?}");
    peft.merge_adapter(None, false).unwrap();
}

#[test]
fn the_config_round_trips_through_peft_json() {
    let mut warnings = Vec::new();
    let text = r#"{"peft_type": "UNILORA", "target_modules": ["lin0", "lin0"], "theta_d_length": 64, "save_indices": true}"#;
    let config = UniloraConfig::from_json_str(text, &mut warnings).unwrap();
    assert_eq!(config.target_modules, Some(TargetModules::list(["lin0"])), "the list becomes a set");
    let again = UniloraConfig::from_json_str(&peft_core::config::to_config_file_text(&config), &mut warnings)
        .unwrap();
    assert_eq!(config, again);
    assert!(warnings.is_empty(), "{warnings:?}");
}

#[test]
fn a_half_precision_base_gets_f32_theta_and_scales_rounded_through_its_dtype() {
    let _rng = rng_lock();
    let (mut vs, zoo) = LayerZoo::seeded(0);
    vs.bfloat16();
    // 60 entries over 7 values: scales 1/√8 and 1/√9, the first not a bf16 number.
    let mut peft = PeftModel::new(zoo, &vs, config(&["lin0"], 2, 7).boxed(), "default").unwrap();
    let (theta, _, _, sa, sb) = layer(&peft, "lin0", "default").tensors();
    // PEFT casts θ and the scales to the base dtype, then its adapter autocast (buffers included) to f32.
    for t in [theta, sa, sb] {
        assert_eq!(t.kind(), Kind::Float);
        assert!(t.equal(&t.to_kind(Kind::BFloat16).to_kind(Kind::Float)), "rounded through bf16");
    }
    let x = Tensor::randn([4, 10], (Kind::Float, Device::Cpu)).to_kind(Kind::BFloat16);
    let y = tch::no_grad(|| peft.model().lin0.forward(&x));
    assert_eq!(y.kind(), Kind::BFloat16);
    peft.merge_adapter(None, true).unwrap();
    let merged = tch::no_grad(|| peft.model().lin0.forward(&x));
    assert!(max_diff(&merged.to_kind(Kind::Float), &y.to_kind(Kind::Float)) < 0.05);
}
