//! VeRA behaviour beyond the parity matrix: identity at init, merging, the shared projections, and the
//! errors for what VeRA cannot do.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use peft_core::nn as pnn;
use peft_core::peft_config::TargetModules;
use peft_core::MethodConfig;
use peft_core::{Adaptable, LoadOptions, PeftError, PeftModel, SaveOptions};
use peft_vera::{VeraConfig, VeraLayer};
use tch::nn::{ModuleT, VarStore};
use tch::{Device, Kind, Tensor};

#[derive(Debug, Adaptable)]
struct Net {
    lin0: pnn::Linear,
    lin1: pnn::Linear,
    emb: pnn::Embedding,
}

impl Net {
    fn new(vs: &VarStore) -> Self {
        let p = vs.root();
        Net {
            lin0: pnn::linear(&p / "lin0", 10, 20, Default::default()).unwrap(),
            lin1: pnn::linear(&p / "lin1", 20, 2, Default::default()).unwrap(),
            emb: pnn::embedding(&p / "emb", 5, 10, Default::default()).unwrap(),
        }
    }
}

impl ModuleT for Net {
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        self.lin1.forward_t(&self.lin0.forward_t(x, train).relu(), train)
    }
}

fn net() -> (VarStore, Net) {
    tch::manual_seed(0);
    let vs = VarStore::new(Device::Cpu);
    let n = Net::new(&vs);
    (vs, n)
}

fn config(targets: &[&str], r: i64) -> VeraConfig {
    VeraConfig {
        r,
        target_modules: Some(TargetModules::list(targets.iter().copied())),
        ..VeraConfig::default()
    }
}

fn layer<'a>(peft: &'a PeftModel<Net>, which: &str, adapter: &str) -> &'a VeraLayer {
    let l = if which == "lin0" { &peft.model().lin0 } else { &peft.model().lin1 };
    l.slots().get(adapter).unwrap().as_any().downcast_ref::<VeraLayer>().unwrap()
}

#[test]
fn starts_as_the_identity_shares_one_projection_and_merges_to_the_same_outputs() {
    let _rng = peft_testkit::rng_lock();
    let (vs, n) = net();
    let mut peft = PeftModel::new(n, &vs, config(&["lin0", "lin1"], 4).boxed(), "default").unwrap();
    let x = Tensor::randn([4, 10], (Kind::Float, Device::Cpu));
    let base = tch::no_grad(|| peft.disable_adapters().unwrap().forward_t(&x, false));
    assert!(tch::no_grad(|| peft.forward_t(&x, false)).equal(&base), "lambda_b = 0 changes nothing");
    // One projection pair, sized by the largest layer: vera_A (4, 20), vera_B (20, 4).
    let (a0, b0) = layer(&peft, "lin0", "default").projections();
    let (a1, _) = layer(&peft, "lin1", "default").projections();
    assert_eq!((a0.size(), b0.size()), (vec![4, 20], vec![20, 4]));
    assert_eq!(a0.data_ptr(), a1.data_ptr(), "the layers share the tensor");
    for mut t in peft.adapter_var_store().trainable_variables() {
        let noise = Tensor::randn_like(&t);
        let _ = tch::no_grad(|| t.f_add_(&noise)).unwrap();
    }
    let unmerged = tch::no_grad(|| peft.forward_t(&x, false));
    assert!((&unmerged - &base).abs().max().double_value(&[]) > 1e-3);
    peft.merge_adapter(None, true).unwrap();
    let merged = tch::no_grad(|| peft.forward_t(&x, false));
    assert!((&merged - &unmerged).abs().max().double_value(&[]) < 1e-5);
    peft.unmerge_adapter().unwrap();
    assert!((tch::no_grad(|| peft.forward_t(&x, false)) - &unmerged).abs().max().double_value(&[]) < 1e-5);
    // Only the vectors train and count: 20 + 2 (lambda_b) + 4 + 4 (lambda_d).
    assert_eq!(peft.num_parameters().0, 30);
}

#[test]
fn layers_vera_cannot_adapt_are_refused_by_name() {
    let _rng = peft_testkit::rng_lock();
    let (vs, n) = net();
    let err = PeftModel::new(n, &vs, config(&["emb"], 4).boxed(), "default").unwrap_err();
    // No linear layer among the targets: the projections cannot be sized.
    assert!(err.to_string().contains("No layers types compatible with VeRA"), "{err}");
    let (vs, n) = net();
    let err = PeftModel::new(n, &vs, config(&["lin0", "emb"], 4).boxed(), "default").unwrap_err();
    match &err {
        PeftError::UnsupportedLayer { module, peft_type, .. } => {
            assert_eq!((module.as_str(), peft_type.as_str()), ("emb", "VERA"))
        }
        other => panic!("expected UnsupportedLayer, got {other:?}"),
    }
}

#[test]
fn later_adapters_reuse_the_first_projections_and_must_match_its_rank_and_seed() {
    let _rng = peft_testkit::rng_lock();
    let (vs, n) = net();
    let mut peft = PeftModel::new(n, &vs, config(&["lin0", "lin1"], 4).boxed(), "first").unwrap();
    peft.add_adapter("second", config(&["lin0"], 4).boxed()).unwrap();
    let (a_first, _) = layer(&peft, "lin0", "first").projections();
    let (a_second, _) = layer(&peft, "lin0", "second").projections();
    assert_eq!(a_first.data_ptr(), a_second.data_ptr());
    let err = peft.add_adapter("third", config(&["lin0"], 8).boxed()).unwrap_err();
    assert!(err.to_string().contains("rank 4") && err.to_string().contains("r=8"), "{err}");
    let other_seed = VeraConfig { projection_prng_key: 3, ..config(&["lin0"], 4) };
    let err = peft.add_adapter("fourth", other_seed.boxed()).unwrap_err();
    assert!(err.to_string().contains("PRNG initialisation key"), "{err}");
}

#[test]
fn projections_not_saved_are_drawn_again_and_a_file_without_them_is_refused_otherwise() {
    let _rng = peft_testkit::rng_lock();
    let (vs, n) = net();
    let cfg = VeraConfig { save_projection: false, ..config(&["lin0", "lin1"], 4) };
    let peft = PeftModel::new(n, &vs, cfg.boxed(), "default").unwrap();
    for mut t in peft.adapter_var_store().trainable_variables() {
        let _ = tch::no_grad(|| t.f_fill_(0.5)).unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    peft.save_pretrained(dir.path(), &SaveOptions::default()).unwrap();
    let file = peft_core::io::read_safetensors(&dir.path().join("adapter_model.safetensors")).unwrap();
    assert!(file.iter().all(|t| !t.key.contains("vera_A")), "projections are not saved");
    let x = Tensor::randn([2, 10], (Kind::Float, Device::Cpu));
    let (mut vs2, n2) = net();
    vs2.copy(&vs).unwrap(); // (tests run on parallel threads: the global seed alone does not fix the base)
    let (reloaded, _) = PeftModel::from_pretrained(n2, &vs2, dir.path(), LoadOptions::default()).unwrap();
    let (pa, _) = layer(&peft, "lin0", "default").projections();
    let rl =
        reloaded.model().lin0.slots().get("default").unwrap().as_any().downcast_ref::<VeraLayer>().unwrap();
    assert!(rl.projections().0.equal(pa), "same seed, same projections");
    assert!(rl.lambda_d().equal(layer(&peft, "lin0", "default").lambda_d()), "loaded lambda_d");
    assert!(reloaded.forward_t(&x, false).equal(&peft.forward_t(&x, false)), "same outputs");

    // The config now claims the projections were saved: they are missing from the file.
    let cfg_path = dir.path().join("adapter_config.json");
    let text = std::fs::read_to_string(&cfg_path)
        .unwrap()
        .replace("\"save_projection\": false", "\"save_projection\": true");
    std::fs::write(&cfg_path, text).unwrap();
    let (vs3, n3) = net();
    match PeftModel::from_pretrained(n3, &vs3, dir.path(), LoadOptions::default()).unwrap_err() {
        PeftError::MissingKeys { keys, .. } => assert_eq!(keys, ["base_model.vera_A", "base_model.vera_B"]),
        other => panic!("expected missing keys, got {other:?}"),
    }
}

#[test]
fn invalid_values_are_errors_naming_them() {
    let _rng = peft_testkit::rng_lock();
    let (vs, n) = net();
    let err = PeftModel::new(n, &vs, config(&["lin0"], 0).boxed(), "default").unwrap_err();
    assert!(err.to_string().contains("`r` should be a positive integer"), "{err}");
    let mut warnings = vec![];
    let err =
        VeraConfig::from_json_str(r#"{"peft_type": "VERA", "layers_pattern": "layers"}"#, &mut warnings)
            .unwrap_err();
    assert!(err.to_string().contains("layers_to_transform"), "{err}");
    let (vs, n) = net();
    let peft = PeftModel::new(n, &vs, config(&["lin0"], 4).boxed(), "default").unwrap();
    assert!(peft.row_adapters(&["default"]).unwrap_err().to_string().contains("not supported for VERA"));
}
