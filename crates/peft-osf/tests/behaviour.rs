//! OSF behaviour beyond the parity matrix: the identity at init, the SVD split, merged == unmerged, the
//! gradient projection (orthogonal to the frozen directions in every layer shape, in a plain tch loop),
//! only the first active adapter acting, and what OSF cannot take refused by name.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use peft_core::nn as pnn;
use peft_core::peft_config::{Num, TargetModules};
use peft_core::{Adaptable, PeftModel, TunerLayer};
use peft_osf::{MethodConfig, OsfConfig, OsfLayer};
use peft_testkit::nets::{seeded, LayerZoo, Quantized};
use peft_testkit::{
    assert_safe_merge_refuses_nan, assert_shape_mismatch, assert_unsupported_layer, load_error, max_diff,
    rng_lock, save_with_config_edit, tuner,
};
use tch::nn::{ModuleT, OptimizerConfig, VarStore};
use tch::{Device, Kind, Tensor};

fn config(targets: &[&str], rank: Option<Num>) -> OsfConfig {
    OsfConfig {
        effective_rank: rank,
        target_modules: Some(TargetModules::list(targets.iter().copied())),
        ..OsfConfig::default()
    }
}

/// A tall (12 → 20), a square (12 → 12) and a wide (12 → 5) linear layer in a row.
#[derive(Debug, Adaptable)]
struct Shapes {
    tall: pnn::Linear,
    square: pnn::Linear,
    wide: pnn::Linear,
}

impl Shapes {
    fn seeded(seed: i64) -> (VarStore, Self) {
        seeded(seed, |vs| Shapes {
            tall: pnn::linear(vs.root() / "tall", 12, 20, Default::default()).unwrap(),
            square: pnn::linear(vs.root() / "square", 20, 20, Default::default()).unwrap(),
            wide: pnn::linear(vs.root() / "wide", 20, 5, Default::default()).unwrap(),
        })
    }
}

impl ModuleT for Shapes {
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let h = self.tall.forward_t(x, train).tanh();
        self.wide.forward_t(&self.square.forward_t(&h, train).tanh(), train)
    }
}

fn layer<'a>(peft: &'a PeftModel<Shapes>, name: &str) -> &'a OsfLayer {
    let m = peft.model();
    let l = match name {
        "tall" => &m.tall,
        "square" => &m.square,
        _ => &m.wide,
    };
    tuner::<OsfLayer>(l.slots(), "default")
}

fn weight(peft: &PeftModel<Shapes>, name: &str) -> Tensor {
    let m = peft.model();
    match name {
        "tall" => m.tall.base().weight.shallow_clone(),
        "square" => m.square.base().weight.shallow_clone(),
        _ => m.wide.base().weight.shallow_clone(),
    }
}

/// Adds noise to the trained factors only (the frozen buffers stay the SVD's).
fn perturb<M: Adaptable>(peft: &PeftModel<M>, scale: f64) {
    for (_, mut t) in peft.named_trainable_parameters() {
        let noise = Tensor::randn_like(&t) * scale;
        let _ = tch::no_grad(|| t.f_add_(&noise)).unwrap();
    }
}

/// The frozen top directions of `w` `(U_high, V_high)` with `k` kept.
fn high(w: &Tensor, k: i64) -> (Tensor, Tensor) {
    let (u, _s, vt) = peft_core::linalg::svd(&w.detach()).unwrap();
    (u.narrow(1, 0, k), vt.narrow(0, 0, k))
}

const NAMES: [&str; 3] = ["tall", "square", "wide"];

#[test]
fn the_adapter_is_the_identity_at_init_and_splits_the_svd() {
    let _rng = rng_lock();
    let (vs, model) = Shapes::seeded(0);
    let mut peft = PeftModel::new(model, &vs, config(&NAMES, Some(Num::from(3))).boxed(), "default").unwrap();
    let x = Tensor::randn([4, 12], (Kind::Float, Device::Cpu));
    let y = tch::no_grad(|| peft.forward_t(&x, false));
    let base = tch::no_grad(|| peft.disable_adapters().unwrap().forward_t(&x, false));
    assert!(max_diff(&y, &base) < 1e-6, "identity at init");
    for (name, m) in [("tall", 12), ("square", 20), ("wide", 5)] {
        let l = layer(&peft, name);
        assert_eq!(l.effective_rank(), 3);
        let (u, s, v) = l.low();
        assert_eq!(
            (u.size(), s.size(), v.size()),
            (vec![l_out(name), m - 3], vec![m - 3], vec![m - 3, l_in(name)])
        );
        // U_high S_high V_high + U_low S_low V_low is the weight.
        let w = weight(&peft, name);
        let (uh, vh) = high(&w, 3);
        let (_, s_all, _) = peft_core::linalg::svd(&w.detach()).unwrap();
        let top = (&uh * s_all.narrow(0, 0, 3).unsqueeze(0)).mm(&vh);
        let rebuilt = top + (u * s.unsqueeze(0)).mm(v);
        assert!(max_diff(&rebuilt, &w) < 1e-5, "{name}: the SVD split rebuilds the weight");
        assert!(max_diff(&l.delta_weight(), &w.zeros_like()) < 1e-6, "{name}: no delta at init");
    }
}

fn l_out(name: &str) -> i64 {
    match name {
        "tall" | "square" => 20,
        _ => 5,
    }
}

fn l_in(name: &str) -> i64 {
    match name {
        "tall" => 12,
        _ => 20,
    }
}

#[test]
fn merged_output_matches_unmerged_and_merge_and_unload_keeps_it() {
    let _rng = rng_lock();
    let (vs, model) = Shapes::seeded(1);
    let mut peft = PeftModel::new(model, &vs, config(&NAMES, None).boxed(), "default").unwrap();
    perturb(&peft, 0.3);
    let x = Tensor::randn([4, 12], (Kind::Float, Device::Cpu));
    let unmerged = tch::no_grad(|| peft.forward_t(&x, false));
    let base = tch::no_grad(|| peft.disable_adapters().unwrap().forward_t(&x, false));
    assert!(max_diff(&unmerged, &base) > 1e-3, "the perturbed adapter acts");
    peft.merge_adapter(None, true).unwrap();
    let merged = tch::no_grad(|| peft.forward_t(&x, false));
    assert!(max_diff(&merged, &unmerged) < 1e-5, "merged == unmerged");
    let err = peft.unmerge_adapter().unwrap_err();
    assert!(err.to_string().contains("OSF models do not support unmerging"), "{err}");
    let unloaded = peft.merge_and_unload(None, false).unwrap();
    assert!(max_diff(&tch::no_grad(|| unloaded.forward_t(&x, false)), &unmerged) < 1e-5);
}

#[test]
fn gradients_of_the_low_factors_are_orthogonal_to_the_frozen_directions_in_a_plain_tch_loop() {
    let _rng = rng_lock();
    let (vs, model) = Shapes::seeded(2);
    let peft = PeftModel::new(model, &vs, config(&NAMES, Some(Num::from(4))).boxed(), "default").unwrap();
    perturb(&peft, 0.2);
    let highs: Vec<(Tensor, Tensor)> = NAMES.iter().map(|n| high(&weight(&peft, n), 4)).collect();
    let start: Vec<(Tensor, Tensor)> = NAMES
        .iter()
        .map(|n| {
            let (u, _, v) = layer(&peft, n).low();
            (u.copy(), v.copy())
        })
        .collect();
    let x = Tensor::randn([8, 12], (Kind::Float, Device::Cpu));
    let mut opt = tch::nn::Sgd::default().build(peft.adapter_var_store(), 0.5).unwrap();
    for step in 0..3 {
        opt.zero_grad();
        let loss = peft.forward_t(&x, true).square().mean(Kind::Float);
        loss.backward();
        for (name, (uh, vh)) in NAMES.iter().zip(&highs) {
            let (u, s, v) = layer(&peft, name).low();
            let (du, dv) = (u.grad(), v.grad());
            assert!(du.abs().max().double_value(&[]) > 1e-6, "{name}: U_low gets a gradient");
            assert!(s.grad().abs().max().double_value(&[]) > 1e-6, "{name}: S_low is not projected");
            assert!(
                uh.transpose(0, 1).mm(&du).abs().max().double_value(&[]) < 1e-6,
                "{name} step {step}: dU ⟂ U_high"
            );
            assert!(
                dv.mm(&vh.transpose(0, 1)).abs().max().double_value(&[]) < 1e-6,
                "{name} step {step}: dV ⟂ V_high"
            );
        }
        opt.step();
    }
    // The trained factors stay where they started relative to the frozen part: still orthogonal to it.
    for ((name, (uh, vh)), (u0, v0)) in NAMES.iter().zip(&highs).zip(&start) {
        let (u, _, v) = layer(&peft, name).low();
        let moved_u = u - u0;
        let moved_v = v - v0;
        assert!(moved_u.abs().max().double_value(&[]) > 1e-4, "{name}: U_low trained");
        assert!(uh.transpose(0, 1).mm(&moved_u).abs().max().double_value(&[]) < 1e-5, "{name}: ΔU ⟂ U_high");
        assert!(moved_v.mm(&vh.transpose(0, 1)).abs().max().double_value(&[]) < 1e-5, "{name}: ΔV ⟂ V_high");
    }
}

#[test]
fn only_the_first_active_adapter_acts_as_in_peft() {
    let _rng = rng_lock();
    let (vs, model) = Shapes::seeded(3);
    let mut peft = PeftModel::new(model, &vs, config(&["square"], None).boxed(), "a").unwrap();
    peft.add_adapter("b", config(&["square", "wide"], Some(Num::from(2))).boxed()).unwrap();
    perturb(&peft, 0.3);
    let x = Tensor::randn([4, 12], (Kind::Float, Device::Cpu));
    let out = |p: &PeftModel<Shapes>| tch::no_grad(|| p.forward_t(&x, false));
    peft.set_adapter("a").unwrap();
    let a = out(&peft);
    peft.set_adapters(&["a", "b"]).unwrap();
    assert!(out(&peft).equal(&a), "b does not act after a, not even on `wide`, which has no a");
    peft.set_adapter("b").unwrap();
    let b = out(&peft);
    peft.set_adapters(&["b", "a"]).unwrap();
    assert!(out(&peft).equal(&b));
}

#[test]
fn layers_and_ranks_osf_cannot_take_are_refused_by_name() {
    let _rng = rng_lock();
    for (target, hint) in [
        ("gpt2", "Conv1D is not a torch.nn.Linear"),
        ("emb", "OSF adapts torch.nn.Linear only"),
        ("conv1x1", "OSF adapts torch.nn.Linear only"),
    ] {
        let (vs, zoo) = LayerZoo::seeded(0);
        let err = PeftModel::new(zoo, &vs, config(&[target], None).boxed(), "default").unwrap_err();
        assert_unsupported_layer(&err, target, "OSF", hint);
    }
    let (vs, q) = Quantized::seeded(1, None);
    let err = PeftModel::new(q, &vs, config(&["proj"], None).boxed(), "default").unwrap_err();
    assert_unsupported_layer(&err, "proj", "OSF", "quantized linears are not supported");
    for rank in [Num::from(0), Num::from(-2), Num::from(0.01)] {
        let (vs, zoo) = LayerZoo::seeded(0);
        let err =
            PeftModel::new(zoo, &vs, config(&["lin1"], Some(rank.clone())).boxed(), "default").unwrap_err();
        assert!(
            err.to_string()
                .contains("`effective_rank` should be a positive integer value but the value passed is 0"),
            "{rank:?}: {err}"
        );
    }
    let mut w = vec![];
    let err =
        OsfConfig::from_json_str(r#"{"peft_type": "OSF", "rank_pattern": {"lin(": 2}}"#, &mut w).unwrap_err();
    assert!(err.to_string().contains("rank_pattern key \"lin(\" is not a valid regex"), "{err}");
}

#[test]
fn the_config_keeps_what_peft_keeps() {
    let mut warnings = Vec::new();
    let text = r#"{"peft_type": "OSF", "target_modules": ["lin0", "lin0"], "effective_rank": 1.0,
        "rank_pattern": {"a": 0.5, "z": 1}, "target_svd_config": {"lin0.weight": 8}}"#;
    let config = OsfConfig::from_json_str(text, &mut warnings).unwrap();
    assert_eq!(config.target_modules, Some(TargetModules::list(["lin0", "lin0"])), "not made a set");
    assert_eq!(config.effective_rank_for("lin0", 10), 10, "1.0 is a fraction: all of them");
    assert_eq!(config.effective_rank_for("lin_z", 10), 1);
    assert_eq!(config.effective_rank_for("a_z", 10), 5, "the first matching pattern decides");
    let mut patterns = indexmap::IndexMap::new();
    patterns.insert("z".to_string(), Num::from(1));
    patterns.insert("a".to_string(), Num::from(0.5));
    let in_memory = OsfConfig { rank_pattern: Some(patterns), ..OsfConfig::default() };
    assert_eq!(in_memory.effective_rank_for("a_z", 10), 1, "in insertion order");
    assert_eq!(in_memory.effective_rank_for("a", 10), 5);
    assert_eq!(config.init_weights, Some(true));
    let again =
        OsfConfig::from_json_str(&peft_core::config::to_config_file_text(&config), &mut warnings).unwrap();
    assert_eq!(config, again);
    assert!(warnings.is_empty(), "{warnings:?}");
}

#[test]
fn files_of_another_rank_fail_naming_key_and_shapes_and_nan_merges_are_refused() {
    let _rng = rng_lock();
    let (vs, zoo) = LayerZoo::seeded(0);
    let mut peft =
        PeftModel::new(zoo, &vs, config(&["lin0"], Some(Num::from(4))).boxed(), "default").unwrap();
    let dir = save_with_config_edit(&peft, "\"effective_rank\": 4", "\"effective_rank\": 3");
    let (vs2, zoo2) = LayerZoo::seeded(0);
    let err = load_error(zoo2, &vs2, dir.path());
    assert_shape_mismatch(&err, "base_model.model.lin0.osf_svd_params.S_low", &[7], &[6]);
    let saved: Vec<String> = peft_core::io::read_safetensors(&dir.path().join("adapter_model.safetensors"))
        .unwrap()
        .into_iter()
        .map(|t| t.key)
        .collect();
    assert_eq!(saved.len(), 3, "only the trained factors are saved: {saved:?}");
    assert_safe_merge_refuses_nan(&mut peft, |m| m.lin0.base().weight.shallow_clone());
}

#[test]
fn layer_status_names_the_module_type() {
    let _rng = rng_lock();
    let (vs, model) = Shapes::seeded(0);
    let peft = PeftModel::new(model, &vs, config(&["wide"], None).boxed(), "default").unwrap();
    let l = layer(&peft, "wide");
    assert!(l.describe().starts_with("osf.Linear("), "{}", l.describe());
    assert_eq!(l.effective_rank(), 2);
}

#[test]
fn an_adapter_loaded_frozen_and_unfrozen_later_still_projects_its_gradients() {
    let _rng = rng_lock();
    let (vs, model) = Shapes::seeded(4);
    let peft = PeftModel::new(model, &vs, config(&NAMES, Some(Num::from(4))).boxed(), "default").unwrap();
    perturb(&peft, 0.2);
    let dir = tempfile::tempdir().unwrap();
    peft.save_pretrained(dir.path(), &peft_core::SaveOptions::default()).unwrap();
    let (vs2, model2) = Shapes::seeded(4);
    let (mut loaded, report) =
        PeftModel::from_pretrained(model2, &vs2, dir.path(), peft_core::LoadOptions::default()).unwrap();
    assert!(!report.trainable, "loaded for inference: the hooks were registered on frozen tensors");
    loaded.set_requires_grad(&["default"], true).unwrap();
    let x = Tensor::randn([8, 12], (Kind::Float, Device::Cpu));
    loaded.forward_t(&x, true).square().mean(Kind::Float).backward();
    for name in NAMES {
        let (uh, vh) = high(&weight(&loaded, name), 4);
        let (u, _, v) = layer(&loaded, name).low();
        assert!(u.grad().abs().max().double_value(&[]) > 1e-6, "{name}: a gradient");
        assert!(uh.transpose(0, 1).mm(&u.grad()).abs().max().double_value(&[]) < 1e-6, "{name}: dU ⟂ U_high");
        assert!(v.grad().mm(&vh.transpose(0, 1)).abs().max().double_value(&[]) < 1e-6, "{name}: dV ⟂ V_high");
    }
}
