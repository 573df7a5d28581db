//! Super-Tuning behaviour beyond the parity matrix: PEFT's support selection (ties included, pinned from
//! PEFT 0.21.2), the adapted layer written out, the identity at init, merges of several adapters and their
//! exact undoing, the positions left out of files by `save_precomputed_indices: false`, and what Super-Tuning
//! cannot take refused by name.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use peft_core::nn::{self as pnn, LinearConfig};
use peft_core::peft_config::{Num, TargetModules};
use peft_core::{Adaptable, LoadOptions, PeftError, PeftModel, SaveOptions, TunerLayer};
use peft_supertuning::{magnitude_support, MethodConfig, SupertuningConfig, SupertuningLayer};
use peft_testkit::nets::{seeded, LayerZoo, Quantized};
use peft_testkit::{
    assert_mixed_batches_refused, assert_shape_mismatch, assert_unsupported_layer, load_error, max_diff,
    rng_lock, save_with_config_edit, tuner,
};
use tch::nn::{ModuleT, VarStore};
use tch::{Device, Kind, Tensor};

fn config(targets: &[&str], sparsity: f64, r: Option<i64>) -> SupertuningConfig {
    SupertuningConfig {
        target_modules: Some(TargetModules::list(targets.iter().copied())),
        sparsity: Num::from(sparsity),
        r,
        ..SupertuningConfig::default()
    }
}

/// Adds `N(0, scale²)` to every floating-point adapter tensor in name order (the positions are integers).
fn perturb<M: Adaptable>(peft: &PeftModel<M>, scale: f64) {
    let mut vars: Vec<(String, Tensor)> = peft.adapter_var_store().variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    for (_, mut t) in vars.into_iter().filter(|(_, t)| t.is_floating_point()) {
        let noise = Tensor::randn_like(&t) * scale;
        let _ = tch::no_grad(|| t.f_add_(&noise)).unwrap();
    }
}

fn layer<'a>(lin: &'a pnn::Linear, adapter: &str) -> &'a SupertuningLayer {
    tuner::<SupertuningLayer>(lin.slots(), adapter)
}

/// One bias-free 5 → 4 linear layer `lin` with a given weight.
#[derive(Debug, Adaptable)]
struct One {
    lin: pnn::Linear,
}

impl ModuleT for One {
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        self.lin.forward_t(x, train)
    }
}

fn one(weight: &[f32]) -> (VarStore, One) {
    let (vs, m) = seeded(0, |vs| One {
        lin: pnn::linear(vs.root() / "lin", 5, 4, LinearConfig { bias: false, init: true }).unwrap(),
    });
    let w = Tensor::from_slice(weight).view([4, 5]);
    tch::no_grad(|| m.lin.base().weight.shallow_clone().copy_(&w));
    (vs, m)
}

#[test]
fn the_support_is_peft_topk_including_its_tie_breaks() {
    let _rng = rng_lock();
    #[rustfmt::skip]
    let tied = [1., -1., 0.5, 0., -0.5, 0.5, 1., -1., 0., 0., -1., 0.5, 0.5, -0.5, 1., 0., 0., 1., -1., 0.5];
    // Positions PEFT 0.21.2 selects on these weights (CPU), in its order.
    let cases: [(&[f32], f64, bool, &[i32]); 4] = [
        (&tied, 0.5, true, &[1, 18, 17, 14, 10, 7, 0, 6, 2, 12]),
        (&tied, 0.5, false, &[15, 3, 16, 9, 8, 19, 13, 12, 11, 5]),
        (&[0.25; 20], 0.7, true, &[15, 11, 12, 13, 14, 17]),
        (&[0.25; 20], 0.7, false, &[15, 11, 12, 13, 14, 17]),
    ];
    for (weight, sparsity, select_top, want) in cases {
        let (vs, m) = one(weight);
        let cfg = SupertuningConfig { select_top, ..config(&["lin"], sparsity, None) };
        let peft = PeftModel::new(m, &vs, cfg.boxed(), "default").unwrap();
        let idx = layer(&peft.model().lin, "default").indices();
        assert_eq!(idx.kind(), Kind::Int);
        assert_eq!(Vec::<i32>::try_from(idx).unwrap(), want, "sparsity {sparsity}, select_top {select_top}");
    }
    // topk breaks ties differently for another k (torch.topk(w.abs().flatten(), 3) gives the same).
    let w = Tensor::from_slice(&tied).view([4, 5]);
    assert_eq!(Vec::<i32>::try_from(&magnitude_support(&w, 3, true).unwrap()).unwrap(), [14, 7, 10]);
}

#[test]
fn the_number_of_entries_is_python_int_of_the_double_product() {
    let cfg = |s: f64| config(&[], s, None);
    // 1 − 0.9 = 0.09999999999999998: 200 · that is just under 20.
    assert_eq!(cfg(0.9).num_trainable(200), 19);
    assert_eq!(cfg(0.99).num_trainable(100), 1);
    assert_eq!(cfg(0.7).num_trainable(20), 6);
    assert_eq!(cfg(0.0).num_trainable(40), 40);
    assert_eq!(SupertuningConfig { sparsity: Num::from(0), ..cfg(0.0) }.num_trainable(7), 7);
}

#[test]
fn the_adapted_layer_is_the_base_with_its_support_plus_the_lora_pair() {
    let _rng = rng_lock();
    for r in [None, Some(3)] {
        let (vs, zoo) = LayerZoo::seeded(0);
        let cfg = SupertuningConfig { lora_alpha: r.map(|_| Num::from(4.5)), ..config(&["lin0"], 0.8, r) };
        let peft = PeftModel::new(zoo, &vs, cfg.boxed(), "default").unwrap();
        perturb(&peft, 0.3);
        let lin = &peft.model().lin0;
        let l = layer(lin, "default");
        // 200 · (1 − 0.8) = 39.99…: 39 entries.
        assert_eq!(l.values().size(), [39]);
        let (w, b) = (&lin.base().weight, lin.base().bias.as_ref().unwrap());
        let w_eff = w.copy().view([-1]);
        let values = Vec::<f32>::try_from(l.values()).unwrap();
        for (k, i) in Vec::<i32>::try_from(l.indices()).unwrap().into_iter().enumerate() {
            let cur = w_eff.double_value(&[i as i64]);
            let _ = w_eff.get(i as i64).fill_(cur + values[k] as f64);
        }
        let w_eff = w_eff.view([20, 10]);
        let x = Tensor::randn([4, 10], (Kind::Float, Device::Cpu));
        let mut want = x.linear(&w_eff, Some(b));
        if let Some(s) = l.supra() {
            assert_eq!((s.a.size(), s.b.size(), s.scaling()), (vec![3, 10], vec![20, 3], 1.5));
            want += x.matmul(&s.a.tr()).matmul(&s.b.tr()) * 1.5;
        }
        let got = tch::no_grad(|| lin.forward(&x));
        assert!(max_diff(&got, &want) < 1e-5, "r = {r:?}: {}", max_diff(&got, &want));
        let delta = l.delta_weight(w);
        assert!(max_diff(&tch::no_grad(|| x.linear(&(w + &delta), Some(b))), &got) < 1e-5);
    }
}

#[test]
fn the_default_init_is_the_identity_and_a_random_one_is_not() {
    let _rng = rng_lock();
    tch::manual_seed(3);
    let x = Tensor::randn([5, 10], (Kind::Float, Device::Cpu));
    for r in [None, Some(2)] {
        for init_weights in [true, false] {
            let (vs, zoo) = LayerZoo::seeded(0);
            let cfg = SupertuningConfig { init_weights, ..config(&["lin0", "lin1"], 0.5, r) };
            let mut peft = PeftModel::new(zoo, &vs, cfg.boxed(), "default").unwrap();
            let y = tch::no_grad(|| peft.forward_t(&x, false));
            let base = tch::no_grad(|| peft.disable_adapters().unwrap().forward_t(&x, false));
            assert_eq!(max_diff(&y, &base) == 0.0, init_weights, "r = {r:?}, init_weights = {init_weights}");
        }
    }
}

#[test]
fn the_values_and_the_pair_train_and_the_positions_are_a_buffer() {
    let _rng = rng_lock();
    let (vs, zoo) = LayerZoo::seeded(0);
    let peft = PeftModel::new(zoo, &vs, config(&["lin0"], 0.9, Some(2)).boxed(), "default").unwrap();
    // 19 entries (see above), A (2 × 10), B (20 × 2).
    assert_eq!(peft.num_parameters().0, 19 + 20 + 40);
    let l = layer(&peft.model().lin0, "default");
    let names: Vec<String> = l.named_tensors().into_iter().map(|(k, _)| k).collect();
    assert_eq!(
        names,
        [
            "supertuning_values.default",
            "supertuning_indices.default",
            "supertuning_lora_A.default.weight",
            "supertuning_lora_B.default.weight"
        ]
    );
    assert!(
        l.is_buffer("supertuning_indices.default") && !l.is_trainable_tensor("supertuning_indices.default")
    );
    assert!(l.values().requires_grad() && l.supra().unwrap().a.requires_grad());
    assert!(l.describe().starts_with("Linear("), "PEFT's layer status names the class `Linear`");
}

#[test]
fn several_adapters_merge_to_the_unmerged_outputs_and_unmerge_back() {
    let _rng = rng_lock();
    tch::manual_seed(6);
    let x = Tensor::randn([5, 10], (Kind::Float, Device::Cpu));
    let (vs, zoo) = LayerZoo::seeded(0);
    let mut peft = PeftModel::new(zoo, &vs, config(&["lin0", "lin1"], 0.7, Some(2)).boxed(), "a").unwrap();
    peft.add_adapter("b", SupertuningConfig { select_top: false, ..config(&["lin0"], 0.4, None) }.boxed())
        .unwrap();
    perturb(&peft, 0.2);
    peft.set_adapters(&["b", "a"]).unwrap();
    let w0 = peft.model().lin0.base().weight.copy();
    let unmerged = tch::no_grad(|| peft.forward_t(&x, false));
    for safe in [false, true] {
        peft.merge_adapter(None, safe).unwrap();
        let merged = tch::no_grad(|| peft.forward_t(&x, false));
        assert!(max_diff(&merged, &unmerged) < 1e-5, "safe = {safe}");
        let slots = peft.model().lin0.slots();
        let want = &w0
            + layer(&peft.model().lin0, "b").delta_weight(&w0)
            + layer(&peft.model().lin0, "a").delta_weight(&w0);
        assert!(max_diff(&peft.model().lin0.base().weight, &want) < 1e-6);
        assert_eq!(slots.merged(), ["b", "a"]);
        peft.unmerge_adapter().unwrap();
        assert!(max_diff(&peft.model().lin0.base().weight, &w0) < 1e-6, "safe = {safe}");
        assert!(max_diff(&tch::no_grad(|| peft.forward_t(&x, false)), &unmerged) < 1e-6);
    }
}

#[test]
fn a_safe_merge_of_non_finite_values_is_refused_and_changes_nothing() {
    let _rng = rng_lock();
    let (vs, zoo) = LayerZoo::seeded(0);
    let mut peft = PeftModel::new(zoo, &vs, config(&["lin0"], 0.5, Some(2)).boxed(), "default").unwrap();
    let w0 = peft.model().lin0.base().weight.copy();
    let _ = tch::no_grad(|| layer(&peft.model().lin0, "default").values().shallow_clone().fill_(f64::NAN));
    let err = peft.merge_adapter(None, true).unwrap_err();
    assert!(matches!(err, PeftError::NonFiniteMerge { .. }), "{err:?}");
    assert!(peft.model().lin0.base().weight.equal(&w0), "a refused merge changed the base weight");
    assert!(peft.model().lin0.slots().merged().is_empty());
}

#[test]
fn without_saved_indices_the_file_has_none_and_loading_recomputes_them() {
    let _rng = rng_lock();
    let (vs, zoo) = LayerZoo::seeded(0);
    let cfg = SupertuningConfig { save_precomputed_indices: false, ..config(&["lin0"], 0.9, Some(1)) };
    let peft = PeftModel::new(zoo, &vs, cfg.boxed(), "default").unwrap();
    perturb(&peft, 0.3);
    let keys: Vec<String> = peft.adapter_state_dict("default").unwrap().into_iter().map(|(k, _)| k).collect();
    assert_eq!(
        keys,
        [
            "base_model.model.lin0.supertuning_values",
            "base_model.model.lin0.supertuning_lora_A.weight",
            "base_model.model.lin0.supertuning_lora_B.weight"
        ]
    );
    let dir = tempfile::tempdir().unwrap();
    peft.save_pretrained(dir.path(), &SaveOptions::default()).unwrap();
    let (vs2, zoo2) = LayerZoo::seeded(0);
    let (loaded, report) =
        PeftModel::from_pretrained(zoo2, &vs2, dir.path(), LoadOptions::default()).unwrap();
    assert!(
        report.warnings.iter().any(|w| w.contains("save_precomputed_indices=False")),
        "{:?}",
        report.warnings
    );
    let (a, b) = (layer(&peft.model().lin0, "default"), layer(&loaded.model().lin0, "default"));
    assert!(a.indices().equal(b.indices()) && a.values().equal(b.values()));
    let x = Tensor::randn([3, 10], (Kind::Float, Device::Cpu));
    assert!(tch::no_grad(|| loaded.forward_t(&x, false)).equal(&tch::no_grad(|| peft.forward_t(&x, false))));

    // The positions live in one buffer dict per layer: every adapter must agree.
    let (vs, zoo) = LayerZoo::seeded(0);
    let mut peft = PeftModel::new(zoo, &vs, config(&["lin0"], 0.9, None).boxed(), "a").unwrap();
    let other = SupertuningConfig { save_precomputed_indices: false, ..config(&["lin0"], 0.9, None) };
    let err = peft.add_adapter("b", other.boxed()).unwrap_err();
    assert!(err.to_string().contains("indices must be saved for all adapters or none"), "{err}");
}

#[test]
fn files_of_another_size_fail_naming_key_and_shapes() {
    let _rng = rng_lock();
    let (vs, zoo) = LayerZoo::seeded(0);
    let peft = PeftModel::new(zoo, &vs, config(&["lin0"], 0.9, Some(2)).boxed(), "default").unwrap();
    let dir = save_with_config_edit(&peft, "\"sparsity\": 0.9", "\"sparsity\": 0.8");
    let (vs2, zoo2) = LayerZoo::seeded(0);
    let err = load_error(zoo2, &vs2, dir.path());
    // The positions come first in the file; the values would fail the same way.
    assert_shape_mismatch(&err, "base_model.model.lin0.supertuning_indices", &[39], &[19]);
    let dir = save_with_config_edit(&peft, "\"r\": 2", "\"r\": 3");
    let (vs2, zoo2) = LayerZoo::seeded(0);
    let err = load_error(zoo2, &vs2, dir.path());
    assert_shape_mismatch(&err, "base_model.model.lin0.supertuning_lora_A.weight", &[3, 10], &[2, 10]);
    let dir = save_with_config_edit(&peft, "\"r\": 2", "\"r\": null");
    let (vs2, zoo2) = LayerZoo::seeded(0);
    let err = load_error(zoo2, &vs2, dir.path());
    assert!(err.to_string().contains("lora_alpha is set but r is None"), "{err}");
}

#[test]
fn layers_and_options_supertuning_cannot_take_are_refused_by_name() {
    let _rng = rng_lock();
    for target in ["gpt2", "emb", "conv1x1"] {
        let (vs, zoo) = LayerZoo::seeded(0);
        let err = PeftModel::new(zoo, &vs, config(&[target], 0.5, None).boxed(), "default").unwrap_err();
        assert_unsupported_layer(&err, target, "SUPERTUNING", "only `torch.nn.Linear` is supported");
    }
    let (vs, q) = Quantized::seeded(1, None);
    let err = PeftModel::new(q, &vs, config(&["proj"], 0.5, None).boxed(), "default").unwrap_err();
    assert_unsupported_layer(&err, "proj", "SUPERTUNING", "a quantized linear layer");

    // lin1 has 40 entries: PEFT's default sparsity leaves none.
    let (vs, zoo) = LayerZoo::seeded(0);
    let err = PeftModel::new(zoo, &vs, config(&["lin1"], 0.99, None).boxed(), "default").unwrap_err();
    assert!(
        err.to_string().contains("`lin1`: sparsity=0.99 leaves no trainable entries for a weight with 40"),
        "{err}"
    );

    let mut w = vec![];
    for (json, message) in [
        (r#"{"peft_type": "SUPERTUNING", "sparsity": 1.0}"#, "sparsity must be in [0.0, 1.0), got 1.0"),
        (r#"{"peft_type": "SUPERTUNING", "sparsity": -0.5}"#, "sparsity must be in [0.0, 1.0), got -0.5"),
        (r#"{"peft_type": "SUPERTUNING", "r": 0}"#, "r must be a positive integer or None, got 0"),
        (r#"{"peft_type": "SUPERTUNING", "lora_alpha": 8}"#, "lora_alpha is set but r is None"),
        (
            r#"{"peft_type": "SUPERTUNING", "r": 2, "lora_dropout": 1}"#,
            "lora_dropout must be in [0.0, 1.0), got 1",
        ),
        (r#"{"peft_type": "SUPERTUNING", "r": 2.5}"#, "r"),
    ] {
        let err = SupertuningConfig::from_json_str(json, &mut w).unwrap_err();
        assert!(err.to_string().contains(message), "{json}: {err}");
    }
    // The same checks for a config built in memory, before any layer is touched.
    let (vs, zoo) = LayerZoo::seeded(0);
    let bad = SupertuningConfig { lora_dropout: Num::from(-0.1), ..config(&["lin0"], 0.5, Some(2)) };
    assert!(PeftModel::new(zoo, &vs, bad.boxed(), "default")
        .unwrap_err()
        .to_string()
        .contains("lora_dropout"));

    let (vs, zoo) = LayerZoo::seeded(0);
    let peft = PeftModel::new(zoo, &vs, config(&["lin0"], 0.5, None).boxed(), "default").unwrap();
    assert_mixed_batches_refused(&peft, "SUPERTUNING");
}

#[test]
fn the_config_round_trips_through_peft_json_with_peft_defaults() {
    let mut warnings = Vec::new();
    let text = r#"{"peft_type": "SUPERTUNING", "target_modules": ["lin0", "lin0"], "r": 4, "sparsity": 0}"#;
    let config = SupertuningConfig::from_json_str(text, &mut warnings).unwrap();
    assert_eq!(config.target_modules, Some(TargetModules::list(["lin0"])), "the list becomes a set");
    let json = peft_core::config::to_config_file_text(&config);
    // PEFT fills lora_alpha with the integer 2·r and keeps numbers as written.
    assert!(json.contains("\"lora_alpha\": 8,") && json.contains("\"sparsity\": 0,"), "{json}");
    assert!(
        json.contains("\"lora_dropout\": 0.0,") && json.contains("\"save_precomputed_indices\": true"),
        "{json}"
    );
    let again = SupertuningConfig::from_json_str(&json, &mut warnings).unwrap();
    assert_eq!(config, again);
    assert!(warnings.is_empty(), "{warnings:?}");

    // A config built in memory gets the same default when it is used.
    let _rng = rng_lock();
    let (vs, zoo) = LayerZoo::seeded(0);
    let peft = PeftModel::new(zoo, &vs, config_with_r(3).boxed(), "default").unwrap();
    let saved = peft_core::config::to_config_file_text(peft.config("default").unwrap());
    assert!(saved.contains("\"lora_alpha\": 6,"), "{saved}");
    assert_eq!(layer(&peft.model().lin0, "default").supra().unwrap().scaling(), 2.0);

    SupertuningConfig::from_json_str(
        r#"{"peft_type": "SUPERTUNING", "save_precomputed_indices": false}"#,
        &mut warnings,
    )
    .unwrap();
    assert!(warnings.iter().any(|w| w.contains("indices will be recomputed from base weight magnitudes")));
}

fn config_with_r(r: i64) -> SupertuningConfig {
    config(&["lin0"], 0.5, Some(r))
}

#[test]
fn a_half_precision_base_gets_f32_adapters_rounded_through_its_dtype() {
    let _rng = rng_lock();
    let (mut vs, zoo) = LayerZoo::seeded(0);
    vs.bfloat16();
    let cfg = SupertuningConfig { init_weights: false, ..config(&["lin0"], 0.5, Some(2)) };
    let mut peft = PeftModel::new(zoo, &vs, cfg.boxed(), "default").unwrap();
    let l = layer(&peft.model().lin0, "default");
    let s = l.supra().unwrap();
    assert_eq!((l.values().kind(), s.a.kind(), s.b.kind()), (Kind::Float, Kind::Float, Kind::Float));
    // PEFT moves the fresh f32 tensors to the base dtype before upcasting them again.
    for t in [l.values(), &s.a, &s.b] {
        assert!(t.equal(&t.to_kind(Kind::BFloat16).to_kind(Kind::Float)), "rounded through bf16");
    }
    let x = Tensor::randn([4, 10], (Kind::Float, Device::Cpu)).to_kind(Kind::BFloat16);
    let got = tch::no_grad(|| peft.model().lin0.forward(&x));
    assert_eq!(got.kind(), Kind::BFloat16);
    let base = peft.model().lin0.base();
    let want = tch::no_grad(|| {
        let w = &base.weight;
        let idx = l.indices().to_kind(Kind::Int64);
        let w_eff = w.view([-1]).scatter_add(0, &idx, &l.values().to_kind(Kind::BFloat16)).view_as(w);
        let y = x.linear(&w_eff, base.bias.as_ref());
        let pair = x.to_kind(Kind::Float).matmul(&s.a.tr()).matmul(&s.b.tr()) * s.scaling();
        y + pair.to_kind(Kind::BFloat16)
    });
    assert!(got.equal(&want));
    let y = tch::no_grad(|| peft.forward_t(&x, false));
    peft.merge_adapter(None, false).unwrap();
    assert_eq!(peft.model().lin0.base().weight.kind(), Kind::BFloat16);
    let merged = tch::no_grad(|| peft.forward_t(&x, false));
    assert!(max_diff(&merged.to_kind(Kind::Float), &y.to_kind(Kind::Float)) < 0.1);
}
