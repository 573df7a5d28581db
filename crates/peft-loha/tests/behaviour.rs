//! LoHa behaviour beyond the parity matrix: identity at init, merging (flat and CP forms), the dropouts
//! in training, the options and layers PEFT refuses, bad files — each an error naming what is wrong.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use peft_core::peft_config::TargetModules;
use peft_core::MethodConfig;
use peft_core::{AdapterConfig, PeftError, PeftModel};
use peft_loha::LohaConfig;
use peft_lycoris::LycorisOptions;
use peft_testkit::nets::ConvMix;
use peft_testkit::{load_error, max_diff, randomize, rng_lock as rng, save_with_config_edit};
use std::collections::BTreeMap;
use tch::nn::{ModuleT, VarStore};
use tch::{Device, Kind, Tensor};

fn net() -> (VarStore, ConvMix) {
    ConvMix::seeded(0)
}

fn config(targets: &[&str], r: i64) -> LohaConfig {
    LohaConfig {
        lycoris: LycorisOptions {
            r,
            alpha: 6.into(),
            target_modules: Some(TargetModules::list(targets.iter().copied())),
            ..LycorisOptions::default()
        },
        ..LohaConfig::default()
    }
}

fn shapes(peft: &PeftModel<ConvMix>) -> BTreeMap<String, Vec<i64>> {
    peft.adapter_state_dict("default").unwrap().into_iter().map(|(k, t)| (k, t.size())).collect()
}

#[test]
fn starts_as_the_identity_and_merges_to_the_same_outputs_in_both_forms() {
    let _rng = rng();
    for effective in [false, true] {
        let (vs, n) = net();
        let mut cfg = config(&["lin0", "lin1", "conv2d", "conv1x1", "conv1d"], 3);
        cfg.lycoris.use_effective_conv2d = effective;
        let mut peft = PeftModel::new(n, &vs, cfg.boxed(), "default").unwrap();
        let base = peft.disable_adapters().unwrap().outputs();
        for (a, b) in peft.model().outputs().iter().zip(&base) {
            assert!(a.equal(b), "effective={effective}: hada_w2_b = 0 makes the adapter the identity");
        }
        randomize(&peft, 0.5);
        let unmerged = peft.model().outputs();
        for (a, b) in unmerged.iter().zip(&base) {
            assert!(max_diff(a, b) > 1e-3, "effective={effective}: the adapter acts");
        }
        peft.merge_adapter(None, true).unwrap();
        for (a, b) in peft.model().outputs().iter().zip(&unmerged) {
            assert!(max_diff(a, b) < 1e-4, "effective={effective}: merged {}", max_diff(a, b));
        }
        peft.unmerge_adapter().unwrap();
        for (a, b) in peft.model().outputs().iter().zip(&unmerged) {
            assert!(max_diff(a, b) < 1e-4, "effective={effective}: unmerged again");
        }
    }
}

#[test]
fn the_cp_form_has_cores_except_for_kernels_of_size_one() {
    let _rng = rng();
    let (vs, n) = net();
    let mut cfg = config(&["conv2d", "conv1x1", "conv1d", "lin0"], 3);
    cfg.lycoris.use_effective_conv2d = true;
    let peft = PeftModel::new(n, &vs, cfg.boxed(), "default").unwrap();
    let s = shapes(&peft);
    let key = |m: &str, t: &str| format!("base_model.model.{m}.{t}");
    assert_eq!(s[&key("conv2d", "hada_t1")], [3, 3, 3, 3]);
    assert_eq!(s[&key("conv2d", "hada_w1_a")], [3, 4]);
    assert_eq!(s[&key("conv2d", "hada_w2_b")], [3, 2]);
    assert_eq!(s[&key("conv1d", "hada_t2")], [3, 3, 3, 1], "Conv1d cores get a trailing kernel dim of 1");
    assert!(!s.contains_key(&key("conv1x1", "hada_t1")), "1x1 convolutions stay flat");
    assert_eq!(s[&key("conv1x1", "hada_w1_b")], [3, 4]);
    assert_eq!(s[&key("lin0", "hada_w1_a")], [20, 3]);
    assert_eq!(s.len(), 6 + 4 + 6 + 4);
    let types: Vec<String> = peft.layer_status().iter().map(|l| l.module_type.clone()).collect();
    assert_eq!(types, ["loha.Linear", "loha.Conv2d", "loha.Conv2d", "loha.Conv1d"]);
}

#[test]
fn rank_dropout_acts_in_training_only() {
    let _rng = rng();
    let (vs, n) = net();
    let mut cfg = config(&["lin0"], 3);
    cfg.lycoris.rank_dropout = 0.5;
    let peft = PeftModel::new(n, &vs, cfg.boxed(), "default").unwrap();
    randomize(&peft, 0.5);
    let x = Tensor::randn([4, 10], (Kind::Float, Device::Cpu));
    let eval = tch::no_grad(|| peft.forward_t(&x, false));
    assert!(eval.equal(&tch::no_grad(|| peft.forward_t(&x, false))));
    tch::manual_seed(9);
    let train = tch::no_grad(|| peft.forward_t(&x, true));
    assert!(max_diff(&train, &eval) > 1e-4, "rows of the delta are dropped and the rest rescaled");
    tch::manual_seed(9);
    assert!(
        train.equal(&tch::no_grad(|| peft.forward_t(&x, true))),
        "the draws come from the seeded generator"
    );
}

#[test]
fn invalid_configs_name_the_key() {
    let _rng = rng();
    let mut warnings = vec![];
    let err =
        LohaConfig::from_json_str(r#"{"peft_type": "LOHA", "layers_pattern": "layers"}"#, &mut warnings)
            .unwrap_err();
    assert!(err.to_string().contains("`layers_to_transform` must also be specified"), "{err}");
    let err =
        LohaConfig::from_json_str(r#"{"peft_type": "LOHA", "rank_pattern": {"lin(": 2}}"#, &mut warnings)
            .unwrap_err();
    assert!(err.to_string().contains("rank_pattern"), "{err}");
    let err = LohaConfig::from_json_str(r#"{"peft_type": "LOHA", "init_weights": "lycoris"}"#, &mut warnings)
        .unwrap_err();
    assert!(err.to_string().contains("init_weights"), "{err}");
    let err = LohaConfig::from_json_str(r#"{"peft_type": "LOHA", "r": "8"}"#, &mut warnings).unwrap_err();
    assert!(err.to_string().contains("invalid value for `r`"), "{err}");
    let cfg = LohaConfig::from_json_str(
        r#"{"peft_type": "LOHA", "target_modules": ["a", "b", "a"], "alpha": 2.5, "future_key": 1}"#,
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
    let dir = save_with_config_edit(&peft, "\"r\": 4", "\"r\": 2");
    let (vs2, n2) = net();
    let err = load_error(n2, &vs2, dir.path());
    match &err {
        PeftError::ShapeMismatch { key, expected, found, .. } => {
            assert!(key.starts_with("base_model.model.lin0.hada_"), "{key}");
            assert_ne!(expected, found);
            assert!(expected.contains(&2) && found.contains(&4), "{expected:?} vs {found:?}");
        }
        other => panic!("expected a shape mismatch, got {other:?}"),
    }
}
