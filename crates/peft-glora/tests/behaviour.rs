//! GLoRA behaviour beyond the parity matrix: the adapted layer written out independently for every
//! parameterisation (with and without bias), the identity at init, merges from the original weights and
//! PEFT's dividing unmerge, merges in separate calls, mixed batches, and what GLoRA cannot take refused by
//! name.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use peft_core::nn::{self as pnn, LinearConfig};
use peft_core::peft_config::TargetModules;
use peft_core::{Adaptable, ForwardCtx, PeftModel, TunerLayer};
use peft_glora::{GloraConfig, GloraLayer, MethodConfig};
use peft_testkit::nets::{seeded, LayerZoo, Quantized};
use peft_testkit::{
    assert_safe_merge_refuses_nan, assert_shape_mismatch, assert_unsupported_layer, load_error, max_diff,
    randomize, rng_lock, save_with_config_edit, tuner,
};
use std::collections::BTreeMap;
use tch::nn::{ModuleT, VarStore};
use tch::{Device, Kind, Tensor};

fn config(targets: &[&str], ab: &str, c: &str, de: &str) -> GloraConfig {
    GloraConfig {
        r: 3,
        target_modules: Some(TargetModules::list(targets.iter().copied())),
        config_A_B: ab.into(),
        config_C: c.into(),
        config_D_E: de.into(),
        ..GloraConfig::default()
    }
}

/// A linear layer with bias and one without.
#[derive(Debug, Adaptable)]
struct TwoLinears {
    with_bias: pnn::Linear,
    no_bias: pnn::Linear,
}

impl TwoLinears {
    fn seeded(seed: i64) -> (VarStore, Self) {
        seeded(seed, |vs| TwoLinears {
            with_bias: pnn::linear(vs.root() / "with_bias", 6, 5, Default::default()).unwrap(),
            no_bias: pnn::linear(vs.root() / "no_bias", 5, 4, LinearConfig { bias: false, init: true })
                .unwrap(),
        })
    }
}

impl ModuleT for TwoLinears {
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        self.no_bias.forward_t(&self.with_bias.forward_t(x, train), train)
    }
}

fn tensors(layer: &GloraLayer) -> BTreeMap<String, Tensor> {
    layer.named_tensors().into_iter().map(|(k, v)| (k.split('.').next().unwrap().to_string(), v)).collect()
}

#[test]
fn the_adapted_layer_is_w_plus_w_a_plus_b_with_bias_b_plus_b_d_plus_e_plus_w_c() {
    let _rng = rng_lock();
    for (ab, c, de) in [
        ("lora", "lora", "constant"),
        ("vector", "vector", "vector"),
        ("constant", "none", "none"),
        ("none", "lora", "vector"),
    ] {
        let (vs, model) = TwoLinears::seeded(0);
        let cfg = config(&["with_bias", "no_bias"], ab, c, de);
        let peft = PeftModel::new(model, &vs, cfg.boxed(), "default").unwrap();
        randomize(&peft, 0.3);
        let x = Tensor::randn([4, 6], (Kind::Float, Device::Cpu));
        let lin = &peft.model().with_bias;
        let layer = tuner::<GloraLayer>(lin.slots(), "default");
        let t = layer.terms();
        let (w, b) = (&lin.base().weight, lin.base().bias.as_ref().unwrap());
        let w_eff = w + w * t.a.value() + t.b.value();
        let b_eff = b + b * t.d.value() + t.e.value() + w.matmul(&t.c.value()).squeeze_dim(-1);
        let got = tch::no_grad(|| lin.forward(&x));
        assert!(max_diff(&got, &x.linear(&w_eff, Some(&b_eff))) < 1e-5, "{ab}/{c}/{de}");

        // A layer without bias: C, D and E are zero buffers whatever the config says; nothing of them trains.
        let nb = tuner::<GloraLayer>(peft.model().no_bias.slots(), "default");
        for name in ["glora_C.default.zeros", "glora_D.default.zeros", "glora_E.default.zeros"] {
            assert!(nb.is_buffer(name) && !nb.is_trainable_tensor(name), "{name}");
        }
        let named: Vec<String> = nb.named_tensors().into_iter().map(|(k, _)| k).collect();
        assert!(named
            .iter()
            .filter(|k| k.starts_with("glora_C") || k.starts_with("glora_D"))
            .all(|k| k.ends_with("zeros")));
        let (w, t) = (&peft.model().no_bias.base().weight, nb.terms());
        let h = Tensor::randn([4, 5], (Kind::Float, Device::Cpu));
        let want = h.linear::<Tensor>(&(w + w * t.a.value() + t.b.value()), None);
        assert!(max_diff(&tch::no_grad(|| peft.model().no_bias.forward(&h)), &want) < 1e-5, "{ab}: no bias");
    }
}

#[test]
fn every_parameterisation_starts_as_the_base_layer_and_random_init_does_not() {
    let _rng = rng_lock();
    tch::manual_seed(3);
    let x = Tensor::randn([5, 6], (Kind::Float, Device::Cpu));
    for (ab, c, de) in
        [("lora", "lora", "constant"), ("vector", "vector", "vector"), ("constant", "none", "none")]
    {
        for init_weights in [true, false] {
            let (vs, model) = TwoLinears::seeded(0);
            let cfg = GloraConfig { init_weights, ..config(&["with_bias", "no_bias"], ab, c, de) };
            let mut peft = PeftModel::new(model, &vs, cfg.boxed(), "default").unwrap();
            let y = tch::no_grad(|| peft.forward_t(&x, false));
            let base = tch::no_grad(|| peft.disable_adapters().unwrap().forward_t(&x, false));
            assert_eq!(max_diff(&y, &base) == 0.0, init_weights, "{ab}/{c}/{de} init_weights={init_weights}");
        }
    }
    // The shapes PEFT gives each path.
    let (vs, model) = TwoLinears::seeded(0);
    let peft =
        PeftModel::new(model, &vs, config(&["with_bias"], "vector", "lora", "vector").boxed(), "d").unwrap();
    let t = tensors(tuner::<GloraLayer>(peft.model().with_bias.slots(), "d"));
    assert_eq!(t["glora_A"].size(), [5, 1]);
    assert_eq!(t["glora_D"].size(), [5]);
    let names: Vec<String> = tuner::<GloraLayer>(peft.model().with_bias.slots(), "d")
        .named_tensors()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert!(names.contains(&"glora_C.d.Xd".to_string()) && names.contains(&"glora_C.d.Xu".to_string()));
}

#[test]
fn several_adapters_merge_from_the_original_weights_and_unmerge_by_division() {
    let _rng = rng_lock();
    tch::manual_seed(6);
    let x = Tensor::randn([5, 10], (Kind::Float, Device::Cpu));
    let (vs, zoo) = LayerZoo::seeded(0);
    let mut peft =
        PeftModel::new(zoo, &vs, config(&["lin0", "lin1"], "lora", "lora", "constant").boxed(), "a").unwrap();
    peft.add_adapter("b", config(&["lin0"], "vector", "vector", "vector").boxed()).unwrap();
    randomize(&peft, 0.2);
    peft.set_adapters(&["a", "b"]).unwrap();
    let (w0, b0) = {
        let base = peft.model().lin0.base();
        (base.weight.copy(), base.bias.as_ref().unwrap().copy())
    };
    let unmerged = tch::no_grad(|| peft.forward_t(&x, false));
    let slots = peft.model().lin0.slots();
    let (ta, tb) = (tuner::<GloraLayer>(slots, "a").terms(), tuner::<GloraLayer>(slots, "b").terms());
    // W = W₀ + (W₀⊙A_a + B_a) + (W₀⊙A_b + B_b): both deltas from W₀.
    let want_w =
        tch::no_grad(|| &w0 + (&w0 * ta.a.value() + ta.b.value()) + (&w0 * tb.a.value() + tb.b.value()));
    peft.merge_adapter(None, false).unwrap();
    assert!(max_diff(&peft.model().lin0.base().weight, &want_w) < 1e-6);
    assert!(max_diff(&tch::no_grad(|| peft.forward_t(&x, false)), &unmerged) < 1e-5, "merged == unmerged");
    assert_eq!(tuner::<GloraLayer>(peft.model().lin0.slots(), "b").merged_adapters(), ["a", "b"]);
    peft.unmerge_adapter().unwrap();
    // PEFT's unmerge divides, so W₀ comes back up to rounding.
    assert!(max_diff(&peft.model().lin0.base().weight, &w0) < 1e-6);
    assert!(max_diff(peft.model().lin0.base().bias.as_ref().unwrap(), &b0) < 1e-6);
    assert!(tuner::<GloraLayer>(peft.model().lin0.slots(), "a").merged_adapters().is_empty());

    // Merged in two calls: the second call unmerges `a` and merges both again from the recovered W₀.
    peft.merge_adapter(Some(&["a"]), false).unwrap();
    peft.merge_adapter(Some(&["b"]), false).unwrap();
    assert!(max_diff(&peft.model().lin0.base().weight, &want_w) < 1e-5);
    assert!(max_diff(&tch::no_grad(|| peft.forward_t(&x, false)), &unmerged) < 1e-5);
    peft.unmerge_adapter().unwrap();
    assert!(max_diff(&peft.model().lin0.base().weight, &w0) < 1e-5);
    assert!(max_diff(&tch::no_grad(|| peft.forward_t(&x, false)), &unmerged) < 1e-5);
}

#[test]
fn a_mixed_batch_gives_each_row_its_own_adapter() {
    let _rng = rng_lock();
    tch::manual_seed(4);
    let x = Tensor::randn([4, 10], (Kind::Float, Device::Cpu));
    let (vs, zoo) = LayerZoo::seeded(0);
    let mut peft =
        PeftModel::new(zoo, &vs, config(&["lin0", "lin1"], "lora", "lora", "vector").boxed(), "a").unwrap();
    peft.add_adapter("b", config(&["lin0"], "constant", "vector", "constant").boxed()).unwrap();
    randomize(&peft, 0.3);
    let mut single = BTreeMap::new();
    for name in ["a", "b"] {
        peft.set_adapters(&[name]).unwrap();
        single.insert(name, tch::no_grad(|| peft.forward_t(&x, false)));
    }
    let base = tch::no_grad(|| peft.disable_adapters().unwrap().forward_t(&x, false));
    let rows = ["b", "__base__", "a", "b"];
    let ra = peft.row_adapters(&rows).unwrap();
    let ctx = ForwardCtx::eval().with_rows(&ra);
    let m = peft.model();
    let mixed = tch::no_grad(|| m.lin1.forward_ctx(&m.lin0.forward_ctx(&x, &ctx).relu(), &ctx));
    for (i, row) in rows.iter().enumerate() {
        let want = if *row == "__base__" { &base } else { &single[row] };
        assert!(max_diff(&mixed.get(i as i64), &want.get(i as i64)) < 1e-6, "row {i} ({row})");
    }
}

#[test]
fn layers_and_options_glora_cannot_take_are_refused_by_name() {
    let _rng = rng_lock();
    for target in ["gpt2", "emb", "conv1x1"] {
        let (vs, zoo) = LayerZoo::seeded(0);
        let err = PeftModel::new(zoo, &vs, config(&[target], "lora", "lora", "constant").boxed(), "default")
            .unwrap_err();
        assert_unsupported_layer(&err, target, "GLORA", "is not a plain torch.nn.Linear");
    }
    let (vs, q) = Quantized::seeded(1, None);
    let err =
        PeftModel::new(q, &vs, config(&["proj"], "lora", "lora", "constant").boxed(), "default").unwrap_err();
    assert_unsupported_layer(&err, "proj", "GLORA", "is not a plain torch.nn.Linear");
    let mut w = vec![];
    for (json, message) in [
        (
            r#"{"peft_type": "GLORA", "config_A_B": "svd"}"#,
            "Invalid config_A_B value: 'svd'. Valid values are: constant, lora, none, vector.",
        ),
        (
            r#"{"peft_type": "GLORA", "config_C": "constant"}"#,
            "Invalid config_C value: 'constant'. Valid values are: lora, none, vector.",
        ),
        (
            r#"{"peft_type": "GLORA", "config_D_E": "lora"}"#,
            "Invalid config_D_E value: 'lora'. Valid values are: constant, none, vector.",
        ),
    ] {
        let err = GloraConfig::from_json_str(json, &mut w).unwrap_err();
        assert!(err.to_string().contains(message), "{err}");
    }
    let bad = GloraConfig { config_C: "constant".into(), ..config(&["lin0"], "lora", "lora", "constant") };
    let (vs, zoo) = LayerZoo::seeded(0);
    assert!(PeftModel::new(zoo, &vs, bad.boxed(), "default").unwrap_err().to_string().contains("config_C"));
}

#[test]
fn the_config_round_trips_through_peft_json() {
    let mut warnings = Vec::new();
    let text =
        r#"{"peft_type": "GLORA", "target_modules": ["lin0", "lin0"], "config_A_B": "vector", "r": 4}"#;
    let config = GloraConfig::from_json_str(text, &mut warnings).unwrap();
    assert_eq!(config.target_modules, Some(TargetModules::list(["lin0"])), "the list becomes a set");
    let again =
        GloraConfig::from_json_str(&peft_core::config::to_config_file_text(&config), &mut warnings).unwrap();
    assert_eq!(config, again);
    assert!(warnings.is_empty(), "{warnings:?}");
}

#[test]
fn files_of_another_shape_fail_naming_key_and_shapes_and_nan_merges_are_refused() {
    let _rng = rng_lock();
    let (vs, zoo) = LayerZoo::seeded(0);
    let mut peft =
        PeftModel::new(zoo, &vs, config(&["lin0"], "lora", "lora", "constant").boxed(), "default").unwrap();
    let dir = save_with_config_edit(&peft, "\"r\": 3", "\"r\": 2");
    let (vs2, zoo2) = LayerZoo::seeded(0);
    let err = load_error(zoo2, &vs2, dir.path());
    assert_shape_mismatch(&err, "base_model.model.lin0.glora_A.Xd", &[20, 2], &[20, 3]);
    let dir = save_with_config_edit(&peft, "\"config_A_B\": \"lora\"", "\"config_A_B\": \"none\"");
    let (vs2, zoo2) = LayerZoo::seeded(0);
    assert!(load_error(zoo2, &vs2, dir.path()).to_string().contains("glora_A"));
    assert_safe_merge_refuses_nan(&mut peft, |m| m.lin0.base().weight.shallow_clone());
}

#[test]
fn a_safe_merge_refused_on_one_layer_leaves_every_layer_unmerged() {
    let _rng = rng_lock();
    let (vs, zoo) = LayerZoo::seeded(0);
    let mut peft =
        PeftModel::new(zoo, &vs, config(&["lin0", "lin1"], "lora", "lora", "constant").boxed(), "default")
            .unwrap();
    randomize(&peft, 0.3);
    let w0 = peft.model().lin0.base().weight.copy();
    let lin1 =
        |p: &PeftModel<LayerZoo>| tuner::<GloraLayer>(p.model().lin1.slots(), "default").named_tensors();
    let kept: Vec<Tensor> = lin1(&peft).into_iter().map(|(_, t)| t.copy()).collect();
    for (_, mut t) in lin1(&peft) {
        let _ = tch::no_grad(|| t.fill_(f64::NAN));
    }
    assert!(peft.merge_adapter(None, true).is_err());
    assert!(peft.model().lin0.base().weight.equal(&w0), "lin0 restored");
    assert!(peft.model().lin0.slots().merged().is_empty());
    for ((_, mut t), k) in lin1(&peft).into_iter().zip(&kept) {
        tch::no_grad(|| t.copy_(k));
    }
    let t = tuner::<GloraLayer>(peft.model().lin0.slots(), "default").terms();
    let want = tch::no_grad(|| &w0 + (&w0 * t.a.value() + t.b.value()));
    peft.merge_adapter(None, true).unwrap();
    assert!(max_diff(&peft.model().lin0.base().weight, &want) < 1e-6);
}
