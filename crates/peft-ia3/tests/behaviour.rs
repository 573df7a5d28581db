//! (IA)³ behaviour beyond the parity matrix: identity at init, merging, the options PEFT refuses, bad
//! files, and the layers it cannot adapt — each an error naming what is wrong.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use peft_core::nn::{self as pnn, ConvConfig};
use peft_core::peft_config::TargetModules;
use peft_core::MethodConfig;
use peft_core::{Adaptable, AdapterConfig, PeftModel, SaveOptions};
use peft_ia3::Ia3Config;
use peft_testkit::nets::Quantized;
use peft_testkit::{
    assert_mixed_batches_refused, assert_shape_mismatch, assert_unsupported_layer, load_error, randomize,
};
use tch::nn::{ModuleT, VarStore};
use tch::{Device, Kind, Tensor};

#[derive(Debug, Adaptable)]
struct Net {
    lin0: pnn::Linear,
    lin1: pnn::Linear,
    conv1d: pnn::Conv,
    emb: pnn::Embedding,
}

impl Net {
    fn new(vs: &VarStore) -> Self {
        let p = vs.root();
        Net {
            lin0: pnn::linear(&p / "lin0", 10, 20, Default::default()).unwrap(),
            lin1: pnn::linear(&p / "lin1", 20, 2, Default::default()).unwrap(),
            conv1d: pnn::conv1d(&p / "conv1d", 2, 2, 3, ConvConfig::default()).unwrap(),
            emb: pnn::embedding(&p / "emb", 5, 10, Default::default()).unwrap(),
        }
    }
}

impl ModuleT for Net {
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        self.lin1.forward_t(&self.lin0.forward_t(x, train).relu(), train)
    }
}

fn config(targets: &[&str], ff: &[&str]) -> Ia3Config {
    Ia3Config {
        target_modules: Some(TargetModules::list(targets.iter().copied())),
        feedforward_modules: Some(TargetModules::list(ff.iter().copied())),
        ..Ia3Config::default()
    }
}

fn net() -> (VarStore, Net) {
    tch::manual_seed(0);
    let vs = VarStore::new(Device::Cpu);
    let n = Net::new(&vs);
    (vs, n)
}

#[test]
fn starts_as_the_identity_and_merges_to_the_same_outputs() {
    let _rng = peft_testkit::rng_lock();
    let (vs, n) = net();
    let mut peft = PeftModel::new(n, &vs, config(&["lin0", "lin1"], &["lin1"]).boxed(), "default").unwrap();
    let x = Tensor::randn([4, 10], (Kind::Float, Device::Cpu));
    let base = tch::no_grad(|| peft.disable_adapters().unwrap().forward_t(&x, false));
    assert!(tch::no_grad(|| peft.forward_t(&x, false)).equal(&base), "vectors of ones change nothing");
    randomize(&peft, 0.5);
    let unmerged = tch::no_grad(|| peft.forward_t(&x, false));
    assert!((&unmerged - &base).abs().max().double_value(&[]) > 1e-3, "the adapter acts");
    peft.merge_adapter(None, true).unwrap();
    let merged = tch::no_grad(|| peft.forward_t(&x, false));
    assert!((&merged - &unmerged).abs().max().double_value(&[]) < 1e-5);
    peft.unmerge_adapter().unwrap();
    // Unmerging divides by vector + 1e-8: close, not exact (PEFT warns the same).
    let after = tch::no_grad(|| peft.forward_t(&x, false));
    assert!((&after - &unmerged).abs().max().double_value(&[]) < 1e-4);
}

#[test]
fn layers_ia3_cannot_adapt_are_refused_by_name() {
    let _rng = peft_testkit::rng_lock();
    for target in ["conv1d", "emb"] {
        let (vs, n) = net();
        let err = PeftModel::new(n, &vs, config(&[target], &[]).boxed(), "default").unwrap_err();
        assert_unsupported_layer(&err, target, "IA3", "Conv2d");
    }
}

#[test]
fn feedforward_modules_must_be_targets_and_must_be_given_for_custom_models() {
    let _rng = peft_testkit::rng_lock();
    let mut warnings = vec![];
    let err = Ia3Config::from_json_str(
        r#"{"peft_type": "IA3", "target_modules": ["lin0"], "feedforward_modules": ["lin1"]}"#,
        &mut warnings,
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("subset of `target_modules`") && err.to_string().contains("lin1"),
        "{err}"
    );

    let (vs, n) = net();
    let cfg = Ia3Config { target_modules: Some(TargetModules::list(["lin0"])), ..Ia3Config::default() };
    let err = PeftModel::new(n, &vs, cfg.boxed(), "default").unwrap_err();
    assert!(err.to_string().contains("feedforward_modules"), "{err}");
}

#[test]
fn architecture_defaults_fill_targets_and_feedforward_modules() {
    let _rng = peft_testkit::rng_lock();
    let mut cfg = Ia3Config::default();
    cfg.prepare_for_model(Some("llama")).unwrap();
    assert_eq!(cfg.feedforward_modules, Some(TargetModules::list(["down_proj"])));
    assert_eq!(
        cfg.default_target_modules("llama"),
        Some(TargetModules::list(["k_proj", "v_proj", "down_proj"]))
    );
    let mut unknown = Ia3Config { target_modules: Some(TargetModules::list(["x"])), ..Ia3Config::default() };
    let err = unknown.prepare_for_model(Some("no-such-model")).unwrap_err();
    assert!(err.to_string().contains("no-such-model"), "{err}");
}

#[test]
fn mixed_batches_are_refused_rather_than_ignored() {
    let _rng = peft_testkit::rng_lock();
    let (vs, n) = net();
    let peft = PeftModel::new(n, &vs, config(&["lin0"], &[]).boxed(), "default").unwrap();
    assert_mixed_batches_refused(&peft, "IA3");
}

#[test]
fn an_output_scaling_file_does_not_load_as_input_scaling() {
    let _rng = peft_testkit::rng_lock();
    let (vs, n) = net();
    let peft = PeftModel::new(n, &vs, config(&["lin0"], &[]).boxed(), "default").unwrap();
    let dir = tempfile::tempdir().unwrap();
    peft.save_pretrained(dir.path(), &SaveOptions::default()).unwrap();
    let cfg = dir.path().join("adapter_config.json");
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, text.replace("\"feedforward_modules\": []", "\"feedforward_modules\": [\"lin0\"]"))
        .unwrap();
    let (vs2, n2) = net();
    let err = load_error(n2, &vs2, dir.path());
    assert_shape_mismatch(&err, "base_model.model.lin0.ia3_l", &[1, 10], &[20, 1]);
}

#[test]
fn quantized_bases_scale_their_output_but_refuse_merging() {
    let _rng = peft_testkit::rng_lock();
    let (vs, model) = Quantized::seeded(1, None);
    let dense = model.dequantized();
    let mut peft = PeftModel::new(model, &vs, config(&["proj"], &[]).boxed(), "default").unwrap();
    for (_, mut t) in peft.adapter_var_store().variables() {
        let _ = tch::no_grad(|| t.f_fill_(2.0)).unwrap();
    }
    let x = Tensor::randn([3, 64], (Kind::Float, Device::Cpu));
    let y = tch::no_grad(|| peft.model().proj.forward(&x));
    let want = x.linear::<Tensor>(&dense, None) * 2.0;
    assert!((&y - &want).abs().max().double_value(&[]) < 1e-5);
    let err = peft.merge_adapter(None, false).unwrap_err();
    assert!(err.to_string().contains("4-bit or 8-bit"), "{err}");
    assert!(tch::no_grad(|| peft.model().proj.forward(&x)).equal(&y), "a refused merge changes nothing");
}
