//! LoKr behaviour beyond the parity matrix: identity at init, merging in every factor form, the dropouts
//! in training, the options and layers PEFT refuses, bad files — each an error naming what is wrong.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use peft_core::peft_config::TargetModules;
use peft_core::MethodConfig;
use peft_core::{AdapterConfig, PeftModel};
use peft_lokr::{factorization, LokrConfig, LokrInitScheme, LokrInitWeights, LokrLayer};
use peft_lycoris::LycorisOptions;
use peft_testkit::nets::ConvMix;
use peft_testkit::{
    assert_shape_mismatch, load_error, max_diff, randomize, rng_lock as rng, save_with_config_edit,
};
use std::collections::BTreeMap;
use tch::nn::{ModuleT, VarStore};
use tch::{Device, Kind, Tensor};

fn net() -> (VarStore, ConvMix) {
    ConvMix::seeded(0)
}

fn config(targets: &[&str], r: i64) -> LokrConfig {
    LokrConfig {
        lycoris: LycorisOptions {
            r,
            alpha: 6.into(),
            target_modules: Some(TargetModules::list(targets.iter().copied())),
            ..LycorisOptions::default()
        },
        ..LokrConfig::default()
    }
}

fn shapes(peft: &PeftModel<ConvMix>) -> BTreeMap<String, Vec<i64>> {
    peft.adapter_state_dict("default").unwrap().into_iter().map(|(k, t)| (k, t.size())).collect()
}

/// Variants that between them take every factor form: full `lokr_w1`/`lokr_w2` (a 3-D one on the
/// Conv1d), low-rank `w1` (`decompose_both`) and `w2`, the CP core on Conv2d and Conv1d.
fn variants() -> Vec<(&'static str, LokrConfig)> {
    let all = ["lin0", "lin1", "conv2d", "conv1x1", "conv1d"];
    let full = config(&all, 8);
    let mut r1 = config(&all, 1);
    r1.decompose_both = true;
    let mut low = config(&all, 1);
    low.decompose_both = true;
    low.decompose_factor = 1;
    low.lycoris.use_effective_conv2d = true;
    vec![("full", full), ("r1", r1), ("low-rank/cp", low)]
}

#[test]
fn starts_as_the_identity_and_merges_to_the_same_outputs_in_every_form() {
    let _rng = peft_testkit::rng_lock();
    for (what, cfg) in variants() {
        for init in [LokrInitWeights::Bool(true), LokrInitWeights::Scheme(LokrInitScheme::Lycoris)] {
            let (vs, n) = net();
            let cfg = LokrConfig { init_weights: init.clone(), ..cfg.clone() };
            let mut peft = PeftModel::new(n, &vs, cfg.boxed(), "default").unwrap();
            let base = peft.disable_adapters().unwrap().outputs();
            for (a, b) in peft.model().outputs().iter().zip(&base) {
                assert!(a.equal(b), "{what} {init:?}: a zero factor makes the adapter the identity");
            }
            randomize(&peft, 0.5);
            let unmerged = peft.model().outputs();
            for (a, b) in unmerged.iter().zip(&base) {
                assert!(max_diff(a, b) > 1e-3, "{what}: the adapter acts");
            }
            peft.merge_adapter(None, true).unwrap();
            for (a, b) in peft.model().outputs().iter().zip(&unmerged) {
                assert!(max_diff(a, b) < 1e-4, "{what}: merged {}", max_diff(a, b));
            }
            peft.unmerge_adapter().unwrap();
            for (a, b) in peft.model().outputs().iter().zip(&unmerged) {
                assert!(max_diff(a, b) < 1e-4, "{what}: unmerged again");
            }
        }
    }
}

#[test]
fn factor_shapes_follow_the_factorization_and_the_rank() {
    let _rng = peft_testkit::rng_lock();
    let key = |m: &str, t: &str| format!("base_model.model.{m}.{t}");
    let v = variants();
    let (vs, n) = net();
    let s = shapes(&PeftModel::new(n, &vs, v[0].1.clone().boxed(), "default").unwrap());
    // lin0: 20 = 4·5 outputs, 10 = 2·5 inputs.
    assert_eq!(s[&key("lin0", "lokr_w1")], [4, 2]);
    assert_eq!(s[&key("lin0", "lokr_w2")], [5, 5]);
    assert_eq!(s[&key("conv2d", "lokr_w2")], [2, 2, 3, 3]);
    let (vs, n) = net();
    let s = shapes(&PeftModel::new(n, &vs, v[1].1.clone().boxed(), "default").unwrap());
    assert_eq!(s[&key("lin0", "lokr_w2_a")], [5, 1], "r < max(b, d) / 2: a low-rank w2");
    assert_eq!(s[&key("lin0", "lokr_w1_a")], [4, 1], "decompose_both with r < max(a, c) / 2: a low-rank w1");
    assert_eq!(s[&key("conv1d", "lokr_w2")], [2, 2, 3], "a 3-D w2 on the Conv1d");
    let (vs, n) = net();
    let peft = PeftModel::new(n, &vs, v[2].1.clone().boxed(), "default").unwrap();
    let s = shapes(&peft);
    assert_eq!(s[&key("lin0", "lokr_w1")], [1, 1], "decompose_factor 1: 1·20 and 1·10; w1 stays full");
    assert_eq!(s[&key("lin0", "lokr_w2_b")], [1, 10]);
    assert_eq!(s[&key("conv2d", "lokr_t2")], [1, 1, 3, 3]);
    assert_eq!(s[&key("conv2d", "lokr_w2_a")], [1, 4]);
    assert_eq!(s[&key("conv1d", "lokr_t2")], [1, 1, 3, 1]);
    assert!(!s.contains_key(&key("conv1x1", "lokr_t2")), "1x1 convolutions take no core");
    assert_eq!(s[&key("conv1x1", "lokr_w2_b")], [1, 4]);
    let types: Vec<String> = peft.layer_status().iter().map(|l| l.module_type.clone()).collect();
    assert_eq!(types, ["lokr.Linear", "lokr.Linear", "lokr.Conv2d", "lokr.Conv2d", "lokr.Conv1d"]);
    assert_eq!(factorization(20, 3), (2, 10));
    assert_eq!(
        factorization(7, 0),
        (1, 7),
        "a factor that is neither positive nor -1 bounds the search at it"
    );
}

#[test]
fn rank_dropout_zeroes_rows_and_rescales_only_with_rank_dropout_scale() {
    let _rng = rng();
    for scale in [false, true] {
        let (vs, n) = net();
        let mut cfg = config(&["lin0"], 3);
        cfg.lycoris.rank_dropout = 0.5;
        cfg.rank_dropout_scale = scale;
        let peft = PeftModel::new(n, &vs, cfg.boxed(), "default").unwrap();
        randomize(&peft, 0.5);
        let layer =
            peft.model().lin0.slots().get("default").unwrap().as_any().downcast_ref::<LokrLayer>().unwrap();
        let full = tch::no_grad(|| layer.delta_weight(false));
        tch::manual_seed(9);
        let dropped = tch::no_grad(|| layer.delta_weight(true));
        tch::manual_seed(9);
        let keep = Tensor::rand([20], (Kind::Float, Device::Cpu)).gt(0.5).to_kind(Kind::Float);
        let factor = if scale { 1.0 / keep.mean(None::<Kind>).double_value(&[]) } else { 1.0 };
        assert!(
            keep.sum(None::<Kind>).double_value(&[]) > 0.0 && keep.sum(None::<Kind>).double_value(&[]) < 20.0
        );
        let want = &full * keep.view([-1, 1]) * factor;
        assert!(max_diff(&dropped, &want) < 1e-6, "scale={scale}: {}", max_diff(&dropped, &want));
        let x = Tensor::randn([4, 10], (Kind::Float, Device::Cpu));
        let eval = tch::no_grad(|| peft.forward_t(&x, false));
        tch::manual_seed(9);
        assert!(max_diff(&tch::no_grad(|| peft.forward_t(&x, true)), &eval) > 1e-4, "training drops rows");
    }
}

#[test]
fn invalid_configs_name_the_key() {
    let _rng = rng();
    let mut warnings = vec![];
    let err =
        LokrConfig::from_json_str(r#"{"peft_type": "LOKR", "layers_pattern": "layers"}"#, &mut warnings)
            .unwrap_err();
    assert!(err.to_string().contains("`layers_to_transform` must also be specified"), "{err}");
    let err =
        LokrConfig::from_json_str(r#"{"peft_type": "LOKR", "rank_pattern": {"lin(": 2}}"#, &mut warnings)
            .unwrap_err();
    assert!(err.to_string().contains("rank_pattern"), "{err}");
    let err =
        LokrConfig::from_json_str(r#"{"peft_type": "LOKR", "init_weights": "gaussian"}"#, &mut warnings)
            .unwrap_err();
    assert!(err.to_string().contains("init_weights"), "{err}");
    let err = LokrConfig::from_json_str(r#"{"peft_type": "LOKR", "r": "8"}"#, &mut warnings).unwrap_err();
    assert!(err.to_string().contains("invalid value for `r`"), "{err}");
    let cfg = LokrConfig::from_json_str(
        r#"{"peft_type": "LOKR", "target_modules": ["a", "b", "a"], "alpha": 2.5, "future_key": 1}"#,
        &mut warnings,
    )
    .unwrap();
    assert_eq!(cfg.lycoris.target_modules, Some(TargetModules::list(["a", "b"])));
    assert_eq!(cfg.to_json()["alpha"], 2.5);
    assert!(warnings.iter().any(|w| w.contains("future_key")), "{warnings:?}");
}

#[test]
fn a_file_of_another_rank_fails_naming_key_and_shapes() {
    let _rng = rng();
    let (vs, n) = net();
    let peft = PeftModel::new(n, &vs, config(&["lin0"], 4).boxed(), "default").unwrap();
    let dir = save_with_config_edit(&peft, "\"decompose_factor\": -1", "\"decompose_factor\": 2");
    let (vs2, n2) = net();
    let err = load_error(n2, &vs2, dir.path());
    assert_shape_mismatch(&err, "base_model.model.lin0.lokr_w1", &[2, 2], &[4, 2]);
}
