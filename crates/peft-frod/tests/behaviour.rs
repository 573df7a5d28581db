//! FRoD behaviour beyond the parity matrix: the adapted layer written out independently, the identity at
//! init, merges and exact unmerges (one adapter and two), the model-level file layout, what FRoD cannot
//! take refused by name, and shape mismatches on load named.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use peft_core::peft_config::TargetModules;
use peft_core::{LoadOptions, PeftModel, SaveOptions, TunerLayer};
use peft_frod::{FrodConfig, FrodLayer, MethodConfig};
use peft_testkit::nets::{LayerZoo, Quantized};
use peft_testkit::{assert_unsupported_layer, load_error, max_diff, rng_lock, tuner};
use tch::nn::ModuleT;
use tch::{Device, Kind, Tensor};

fn config(targets: &[&str], sparse_rate: f64) -> FrodConfig {
    FrodConfig {
        target_modules: Some(TargetModules::list(targets.iter().copied())),
        sparse_rate: sparse_rate.into(),
        ..FrodConfig::default()
    }
}

/// Adds `N(0, 0.3²)` to every trained tensor (λ and the values of S), in name order.
fn perturb(peft: &PeftModel<LayerZoo>) {
    let mut vars: Vec<(String, Tensor)> = peft
        .adapter_var_store()
        .variables()
        .into_iter()
        .filter(|(k, _)| k.contains("frod_lambda_"))
        .collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    for (_, mut t) in vars {
        let noise = Tensor::randn_like(&t) * 0.3;
        let _ = tch::no_grad(|| t.f_add_(&noise)).unwrap();
    }
}

fn x() -> Tensor {
    tch::manual_seed(11);
    Tensor::randn([4, 10], (Kind::Float, Device::Cpu))
}

#[test]
fn the_adapted_layer_is_u_times_s_plus_diag_lambda_times_v_transposed() {
    let _rng = rng_lock();
    let (vs, zoo) = LayerZoo::seeded(0);
    let peft = PeftModel::new(zoo, &vs, config(&["lin0", "gpt2"], 0.3).boxed(), "default").unwrap();
    perturb(&peft);
    let x = x();
    for (name, lin) in [("lin0", &peft.model().lin0), ("gpt2", &peft.model().gpt2)] {
        let layer = tuner::<FrodLayer>(lin.slots(), "default");
        let (lambda, values, u, v, idx) = layer.tensors();
        let (lambda, values, u, v, idx) = (&lambda, &values, &u, &v, &idx);
        let mut s = Tensor::zeros([v.size()[0], v.size()[0]], (Kind::Float, Device::Cpu));
        let _ = s.index_put_(&[Some(idx.get(0)), Some(idx.get(1))], values, false);
        let w_eff = u.matmul(&(s + lambda.diag_embed(0, -2, -1))).matmul(&v.tr());
        let b = lin.base().bias.as_ref().unwrap();
        let got = tch::no_grad(|| lin.forward(&x));
        assert!(max_diff(&got, &(x.linear(&w_eff, Some(b)))) < 1e-5, "{name}");
        assert_eq!(idx.size(), [2, 30], "{name}: ⌊0.3·10²⌋ positions");
        assert!(idx.get(0).ne_tensor(&idx.get(1)).all().int64_value(&[]) == 1, "{name}: off the diagonal");
    }
}

#[test]
fn it_starts_as_the_base_layer_and_a_random_init_does_not() {
    let _rng = rng_lock();
    let x = x();
    for init_weights in [true, false] {
        let (vs, zoo) = LayerZoo::seeded(0);
        let cfg = FrodConfig { init_weights, ..config(&["lin0", "lin1"], 0.1) };
        let mut peft = PeftModel::new(zoo, &vs, cfg.boxed(), "default").unwrap();
        let y = tch::no_grad(|| peft.forward_t(&x, false));
        let base = tch::no_grad(|| peft.disable_adapters().unwrap().forward_t(&x, false));
        assert_eq!(max_diff(&y, &base) < 1e-5, init_weights, "init_weights={init_weights}");
    }
}

#[test]
fn merged_equals_unmerged_and_unmerging_restores_the_weight_exactly() {
    let _rng = rng_lock();
    let (vs, zoo) = LayerZoo::seeded(0);
    let mut peft = PeftModel::new(zoo, &vs, config(&["lin0", "lin1"], 0.2).boxed(), "a").unwrap();
    peft.add_adapter("b", config(&["lin0"], 0.05).boxed()).unwrap();
    perturb(&peft);
    let x = x();
    let w0 = peft.model().lin0.base().weight.copy();
    let w1 = peft.model().lin1.base().weight.copy();
    for active in [vec!["a"], vec!["a", "b"]] {
        peft.set_adapters(&active).unwrap();
        let y = tch::no_grad(|| peft.forward_t(&x, false));
        peft.merge_adapter(None, true).unwrap();
        let merged = tch::no_grad(|| peft.forward_t(&x, false));
        assert!(max_diff(&y, &merged) < 1e-5, "{active:?}");
        assert!(max_diff(&peft.model().lin0.base().weight, &w0) > 1e-3, "{active:?}: merged");
        peft.unmerge_adapter().unwrap();
        assert!(peft.model().lin0.base().weight.equal(&w0), "{active:?}: W₀ written back");
        assert!(tch::no_grad(|| peft.forward_t(&x, false)).equal(&y), "{active:?}");
    }
    // A safe merge of non-finite values is refused and writes nothing (the positions of S are integers,
    // so only the trained tensors are filled).
    for value in [f64::NAN, f64::INFINITY] {
        for (k, mut t) in peft.adapter_var_store().variables() {
            if k.contains("frod_lambda_") {
                let _ = tch::no_grad(|| t.fill_(value));
            }
        }
        let err = peft.merge_adapter(None, true).unwrap_err();
        assert!(matches!(err, peft_core::PeftError::NonFiniteMerge { .. }), "{value}: {err:?}");
        assert!(peft.model().lin0.base().weight.equal(&w0), "{value}: the weight is unchanged");
        assert!(peft.model().lin1.base().weight.equal(&w1), "{value}: the weight is unchanged");
    }
}

#[test]
fn the_shared_tensors_are_saved_once_per_category_at_the_model_level() {
    let _rng = rng_lock();
    let x = x();
    for save_projection in [true, false] {
        let (vs, zoo) = LayerZoo::seeded(0);
        let cfg = FrodConfig { save_projection, ..config(&["lin0", "lin1"], 0.1) };
        let peft = PeftModel::new(zoo, &vs, cfg.boxed(), "default").unwrap();
        perturb(&peft);
        let y = tch::no_grad(|| peft.forward_t(&x, false));
        let dir = tempfile::tempdir().unwrap();
        peft.save_pretrained(dir.path(), &SaveOptions::default()).unwrap();
        let file = dir.path().join("adapter_model.safetensors");
        let mut keys: Vec<String> =
            Tensor::read_safetensors(&file).unwrap().into_iter().map(|(k, _)| k).collect();
        keys.sort();
        let mut want = vec![
            "base_model.model.lin0.frod_lambda_l",
            "base_model.model.lin0.frod_lambda_s_values",
            "base_model.model.lin1.frod_lambda_l",
            "base_model.model.lin1.frod_lambda_s_values",
        ];
        if save_projection {
            want.extend([
                "base_model.frod_V.lin0",
                "base_model.frod_V.lin1",
                "base_model.frod_s_indices.lin0",
                "base_model.frod_s_indices.lin1",
                "base_model.frod_s_size.lin0",
                "base_model.frod_s_size.lin1",
            ]);
        }
        want.sort();
        assert_eq!(keys, want, "save_projection={save_projection}");
        // Without the projections in the file they are decomposed and drawn again, to the same values.
        let (vs2, zoo2) = LayerZoo::seeded(0);
        let (loaded, _) = PeftModel::from_pretrained(zoo2, &vs2, dir.path(), LoadOptions::default()).unwrap();
        assert!(tch::no_grad(|| loaded.forward_t(&x, false)).equal(&y), "save_projection={save_projection}");
    }
}

#[test]
fn layers_and_options_frod_cannot_take_are_refused_by_name() {
    let _rng = rng_lock();
    for target in ["emb", "conv1x1", "conv1d"] {
        let (vs, zoo) = LayerZoo::seeded(0);
        let err = PeftModel::new(zoo, &vs, config(&["lin0", target], 0.1).boxed(), "default").unwrap_err();
        assert_unsupported_layer(&err, target, "FROD", "only the following modules are supported");
    }
    let (vs, q) = Quantized::seeded(1, None);
    let err = PeftModel::new(q, &vs, config(&["proj"], 0.1).boxed(), "default").unwrap_err();
    assert!(err.to_string().contains("proj") && err.to_string().contains("quantized"), "{err}");
    let (vs, zoo) = LayerZoo::seeded(0);
    let err = PeftModel::new(zoo, &vs, config(&["emb"], 0.1).boxed(), "default").unwrap_err();
    assert!(err.to_string().contains("No layer types compatible with FRoD"), "{err}");

    let mut w = vec![];
    for (json, message) in [
        (r#"{"peft_type": "FROD", "sparse_rate": 1.5}"#, "`sparse_rate` should be between 0 and 1, got 1.5."),
        (
            r#"{"peft_type": "FROD", "layers_pattern": "layers"}"#,
            "When `layers_pattern` is specified, `layers_to_transform` must also be specified.",
        ),
    ] {
        let err = FrodConfig::from_json_str(json, &mut w).unwrap_err();
        assert!(err.to_string().contains(message), "{err}");
    }
    let (vs, zoo) = LayerZoo::seeded(0);
    let cfg = FrodConfig { frod_dropout: 1.5, ..config(&["lin0"], 0.1) };
    assert!(PeftModel::new(zoo, &vs, cfg.boxed(), "d")
        .unwrap_err()
        .to_string()
        .contains("dropout probability"));

    // Every FRoD adapter of a model shares the seed, save_projection and the offload setting.
    let (vs, zoo) = LayerZoo::seeded(0);
    let mut peft = PeftModel::new(zoo, &vs, config(&["lin0"], 0.1).boxed(), "a").unwrap();
    for (cfg, what) in [
        (FrodConfig { projection_prng_key: 1, ..config(&["lin0"], 0.1) }, "PRNG"),
        (FrodConfig { save_projection: false, ..config(&["lin0"], 0.1) }, "save_projection"),
        (FrodConfig { runtime_offload_base_weight: true, ..config(&["lin0"], 0.1) }, "offloading"),
    ] {
        let err = peft.add_adapter("b", cfg.boxed()).unwrap_err();
        assert!(err.to_string().contains(what), "{what}: {err}");
    }
}

#[test]
fn runtime_offload_base_weight_is_a_no_op_on_the_cpu() {
    let _rng = rng_lock();
    let x = x();
    let mut ys = Vec::new();
    for offload in [false, true] {
        let (vs, zoo) = LayerZoo::seeded(0);
        let cfg = FrodConfig { runtime_offload_base_weight: offload, ..config(&["lin0", "lin1"], 0.1) };
        let peft = PeftModel::new(zoo, &vs, cfg.boxed(), "default").unwrap();
        perturb(&peft);
        ys.push(tch::no_grad(|| peft.forward_t(&x, false)));
    }
    assert!(ys[0].equal(&ys[1]));
}

#[test]
fn files_of_another_sparsity_fail_naming_the_key() {
    let _rng = rng_lock();
    let (vs, zoo) = LayerZoo::seeded(0);
    let peft = PeftModel::new(zoo, &vs, config(&["lin0"], 0.1).boxed(), "default").unwrap();
    let dir = peft_testkit::save_with_config_edit(&peft, "\"sparse_rate\": 0.1", "\"sparse_rate\": 0.2");
    let (vs2, zoo2) = LayerZoo::seeded(0);
    let err = load_error(zoo2, &vs2, dir.path());
    match &err {
        peft_core::PeftError::ShapeMismatch { key, .. } => {
            assert!(key.contains("frod_s_indices") || key.contains("frod_lambda_s_values"), "{err}")
        }
        other => panic!("expected a shape mismatch, got {other:?}"),
    }
}

#[test]
fn the_config_round_trips_through_peft_json() {
    let mut warnings = Vec::new();
    let text = r#"{"peft_type": "FROD", "target_modules": ["lin0", "lin0"], "sparse_rate": 1, "regularization_alpha": 0.01}"#;
    let config = FrodConfig::from_json_str(text, &mut warnings).unwrap();
    assert_eq!(config.target_modules, Some(TargetModules::list(["lin0"])), "the list becomes a set");
    let written = peft_core::config::to_config_file_text(&config);
    assert!(written.contains("\"sparse_rate\": 1,"), "{written}");
    let again = FrodConfig::from_json_str(&written, &mut warnings).unwrap();
    assert_eq!(config, again);
    assert!(warnings.is_empty(), "{warnings:?}");
}

#[test]
fn gradients_reach_lambda_and_the_values_of_s_as_through_the_dense_formula() {
    let _rng = rng_lock();
    let (vs, zoo) = LayerZoo::seeded(0);
    let peft = PeftModel::new(zoo, &vs, config(&["lin0"], 0.3).boxed(), "default").unwrap();
    perturb(&peft);
    let x = x();
    let lin = &peft.model().lin0;
    let layer = tuner::<FrodLayer>(lin.slots(), "default");
    let (lambda, values, u, v, idx) = layer.tensors();
    assert!(lambda.requires_grad() && values.requires_grad());
    (lin.forward(&x) * Tensor::arange(20, (Kind::Float, Device::Cpu))).sum(Kind::Float).backward();
    let (gl, gs) = (lambda.grad().copy(), values.grad().copy());
    let l2 = lambda.detach().copy().set_requires_grad(true);
    let s2 = values.detach().copy().set_requires_grad(true);
    let s = Tensor::zeros([10, 10], (Kind::Float, Device::Cpu)).index_put(
        &[Some(idx.get(0)), Some(idx.get(1))],
        &s2,
        false,
    );
    let w = u.matmul(&(s + l2.diag_embed(0, -2, -1))).matmul(&v.tr());
    (x.linear::<Tensor>(&w, None) * Tensor::arange(20, (Kind::Float, Device::Cpu)))
        .sum(Kind::Float)
        .backward();
    assert!(max_diff(&gl, &l2.grad()) < 1e-4, "λ: {gl} vs {}", l2.grad());
    assert!(max_diff(&gs, &s2.grad()) < 1e-4, "S: {gs} vs {}", s2.grad());
}

#[test]
fn deleting_an_adapter_takes_it_out_of_every_status_and_mixed_batches_are_refused() {
    let _rng = rng_lock();
    let (vs, zoo) = LayerZoo::seeded(0);
    let mut peft = PeftModel::new(zoo, &vs, config(&["lin0", "lin1"], 0.1).boxed(), "a").unwrap();
    peft.add_adapter("b", config(&["lin0"], 0.1).boxed()).unwrap();
    let (vs2, zoo2) = LayerZoo::seeded(0);
    let single = PeftModel::new(zoo2, &vs2, config(&["lin0"], 0.1).boxed(), "default").unwrap();
    peft_testkit::assert_mixed_batches_refused(&single, "FROD");
    let shared = |p: &PeftModel<LayerZoo>| {
        tuner::<FrodLayer>(p.model().lin1.slots(), "a")
            .status_shared_devices()
            .into_iter()
            .map(|(a, _)| a)
            .collect::<Vec<_>>()
    };
    assert_eq!(shared(&peft), ["a"], "lin1's category has only a's tensors");
    let lin0 = tuner::<FrodLayer>(peft.model().lin0.slots(), "a").status_shared_devices();
    assert_eq!(lin0.into_iter().map(|(a, _)| a).collect::<Vec<_>>(), ["a", "b"]);
    peft.delete_adapter("b").unwrap();
    let lin0 = tuner::<FrodLayer>(peft.model().lin0.slots(), "a").status_shared_devices();
    assert_eq!(lin0.into_iter().map(|(a, _)| a).collect::<Vec<_>>(), ["a"]);
    // A new adapter of that name shares a's tensors again and runs.
    peft.add_adapter("b", config(&["lin0"], 0.1).boxed()).unwrap();
    peft.set_adapters(&["a", "b"]).unwrap();
    let _ = tch::no_grad(|| peft.forward_t(&x(), false));
}

#[test]
fn a_bf16_base_keeps_its_basis_and_u_in_bf16_and_rounds_lambda_through_it() {
    let _rng = rng_lock();
    let (mut vs, zoo) = LayerZoo::seeded(0);
    vs.bfloat16();
    let cfg = FrodConfig { init_weights: false, ..config(&["lin0"], 0.2) };
    let peft = PeftModel::new(zoo, &vs, cfg.boxed(), "default").unwrap();
    let lin = &peft.model().lin0;
    let (lambda, values, u, v, idx) = tuner::<FrodLayer>(lin.slots(), "default").tensors();
    assert_eq!((lambda.kind(), values.kind()), (Kind::Float, Kind::Float), "autocast to f32");
    assert_eq!((u.kind(), v.kind()), (Kind::BFloat16, Kind::BFloat16), "the base dtype");
    for t in [&lambda, &values] {
        assert!(t.equal(&t.to_kind(Kind::BFloat16).to_kind(Kind::Float)), "rounded through bf16");
    }
    let x = x().to_kind(Kind::BFloat16);
    let got = tch::no_grad(|| lin.forward(&x));
    assert_eq!(got.kind(), Kind::BFloat16);
    // PEFT's half-precision path: everything in the input's dtype, S densified.
    let want = tch::no_grad(|| {
        let s = Tensor::zeros([10, 10], (Kind::BFloat16, Device::Cpu)).index_put(
            &[Some(idx.get(0)), Some(idx.get(1))],
            &values.to_kind(Kind::BFloat16),
            false,
        );
        let z = x.matmul(&v);
        let out = (z.matmul(&s.tr()) + &z * lambda.to_kind(Kind::BFloat16)).linear::<Tensor>(&u, None);
        out + lin.base().bias.as_ref().unwrap()
    });
    assert!(got.equal(&want));
}

#[test]
fn a_singular_basis_falls_back_to_the_pseudo_inverse() {
    let _rng = rng_lock();
    let (vs, zoo) = LayerZoo::seeded(0);
    let mut w = zoo.lin0.base().weight.shallow_clone();
    let _ = tch::no_grad(|| w.zero_());
    let peft = PeftModel::new(zoo, &vs, config(&["lin0"], 0.1).boxed(), "default").unwrap();
    let lin = &peft.model().lin0;
    let (lambda, _, u, _, _) = tuner::<FrodLayer>(lin.slots(), "default").tensors();
    assert_eq!(lambda.abs().sum(Kind::Float).double_value(&[]), 0.0, "λ of a zero weight");
    assert_eq!(u.abs().sum(Kind::Float).double_value(&[]), 0.0, "U of a zero weight");
    let x = x();
    let b = lin.base().bias.as_ref().unwrap().shallow_clone();
    assert!(tch::no_grad(|| lin.forward(&x)).equal(&b.expand([4, 20], false)));
}

#[test]
fn a_file_without_projections_needs_save_projection_off() {
    let _rng = rng_lock();
    let (vs, zoo) = LayerZoo::seeded(0);
    let cfg = FrodConfig { save_projection: false, ..config(&["lin0"], 0.1) };
    let peft = PeftModel::new(zoo, &vs, cfg.boxed(), "default").unwrap();
    let dir =
        peft_testkit::save_with_config_edit(&peft, "\"save_projection\": false", "\"save_projection\": true");
    let (vs2, zoo2) = LayerZoo::seeded(0);
    let err = load_error(zoo2, &vs2, dir.path());
    assert!(
        err.to_string().contains("projection tensors") && err.to_string().contains("save_projection"),
        "{err}"
    );
}
