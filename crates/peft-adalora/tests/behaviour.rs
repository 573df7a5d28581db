//! AdaLoRA behaviour beyond the parity matrix: identity at init, merging, the options PEFT refuses and
//! those peft-rs does not implement, bad files, layers it cannot adapt, the rank allocator's errors and
//! `ranknum`'s bookkeeping — each an error naming what is wrong.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use peft_adalora::{
    orthogonal_regularization, rank_pattern_key, set_rank_pattern, AdaLoraConfig, AdaLoraLayer, RankAllocator,
};
use peft_core::nn::{self as pnn, ConvConfig};
use peft_core::peft_config::TargetModules;
use peft_core::MethodConfig;
use peft_core::{Adaptable, AdapterConfig, LoadOptions, PeftError, PeftModel, SaveOptions};
use peft_testkit::{assert_unsupported_layer, load_error, max_diff};
use tch::nn::{ModuleT, VarStore};
use tch::{Device, Kind, Tensor};

#[derive(Debug, Adaptable)]
struct Net {
    lin0: pnn::Linear,
    lin1: pnn::Linear,
    conv: pnn::Conv,
    grouped: pnn::Conv,
    conv1d: pnn::Conv,
    emb: pnn::Embedding,
}

impl Net {
    fn new(vs: &VarStore) -> Self {
        let p = vs.root();
        let pad1 = ConvConfig { padding: vec![1], ..Default::default() };
        Net {
            lin0: pnn::linear(&p / "lin0", 10, 20, Default::default()).unwrap(),
            lin1: pnn::linear(&p / "lin1", 20, 2, Default::default()).unwrap(),
            conv: pnn::conv2d(&p / "conv", 2, 4, &[3], ConvConfig { stride: vec![2], ..pad1.clone() })
                .unwrap(),
            grouped: pnn::conv2d(&p / "grouped", 4, 4, &[3], ConvConfig { groups: 2, ..pad1 }).unwrap(),
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

fn config(targets: &[&str]) -> AdaLoraConfig {
    AdaLoraConfig {
        target_modules: Some(TargetModules::list(targets.iter().copied())),
        init_r: 4,
        target_r: 2,
        total_step: Some(10),
        ..AdaLoraConfig::default()
    }
}

fn net() -> (VarStore, Net) {
    tch::manual_seed(0);
    let vs = VarStore::new(Device::Cpu);
    let n = Net::new(&vs);
    (vs, n)
}

/// Adds noise to the saved tensors (not `ranknum`, which is not saved).
fn randomize(peft: &PeftModel<Net>) {
    for (name, mut t) in peft.named_parameters() {
        if name.contains(".lora_") {
            let noise = Tensor::randn_like(&t) * 0.5;
            let _ = tch::no_grad(|| t.f_add_(&noise)).unwrap();
        }
    }
}

#[test]
fn starts_as_the_identity_and_merges_to_the_same_outputs() {
    let _rng = peft_testkit::rng_lock();
    let (vs, n) = net();
    let mut peft = PeftModel::new(n, &vs, config(&["lin0", "lin1"]).boxed(), "default").unwrap();
    let x = Tensor::randn([4, 10], (Kind::Float, Device::Cpu));
    let base = tch::no_grad(|| peft.disable_adapters().unwrap().forward_t(&x, false));
    assert!(tch::no_grad(|| peft.forward_t(&x, false)).equal(&base), "lora_E = 0 changes nothing");
    randomize(&peft);
    let unmerged = tch::no_grad(|| peft.forward_t(&x, false));
    assert!(max_diff(&unmerged, &base) > 1e-3, "the adapter acts");
    peft.merge_adapter(None, true).unwrap();
    let merged = tch::no_grad(|| peft.forward_t(&x, false));
    assert!(max_diff(&merged, &unmerged) < 1e-5);
    peft.unmerge_adapter().unwrap();
    let after = tch::no_grad(|| peft.forward_t(&x, false));
    assert!(max_diff(&after, &unmerged) < 1e-5);
}

#[test]
fn conv2d_merges_to_the_same_outputs_and_safe_merge_refuses_nan() {
    let _rng = peft_testkit::rng_lock();
    let (vs, n) = net();
    let mut peft = PeftModel::new(n, &vs, config(&["conv"]).boxed(), "default").unwrap();
    randomize(&peft);
    let x = Tensor::randn([3, 2, 6, 6], (Kind::Float, Device::Cpu));
    let run = |p: &PeftModel<Net>| tch::no_grad(|| p.model().conv.forward_t(&x, false));
    let unmerged = run(&peft);
    let base = tch::no_grad(|| peft.disable_adapters().unwrap().conv.forward_t(&x, false));
    assert!(max_diff(&unmerged, &base) > 1e-3, "the adapter acts");
    peft.merge_adapter(None, false).unwrap();
    assert!(max_diff(&run(&peft), &unmerged) < 1e-5);
    peft.unmerge_adapter().unwrap();

    let weight = peft.model().conv.base().weight.copy();
    let e = peft.named_parameters().into_iter().find(|(n, _)| n.ends_with("conv.lora_E.default")).unwrap().1;
    let _ = tch::no_grad(|| e.shallow_clone().fill_(f64::NAN));
    let err = peft.merge_adapter(None, true).unwrap_err();
    assert!(matches!(err, PeftError::NonFiniteMerge { .. }), "{err:?}");
    assert!(peft.model().conv.base().weight.equal(&weight), "a refused merge writes nothing");
}

#[test]
fn layers_adalora_cannot_adapt_are_refused_by_name() {
    let _rng = peft_testkit::rng_lock();
    for (target, hint) in [("conv1d", "Conv2d"), ("emb", "Conv2d"), ("grouped", "groups=2")] {
        let (vs, n) = net();
        let err = PeftModel::new(n, &vs, config(&[target]).boxed(), "default").unwrap_err();
        assert_unsupported_layer(&err, target, "ADALORA", hint);
    }
}

fn parse(json: &str) -> (peft_core::Result<AdaLoraConfig>, Vec<String>) {
    let mut warnings = vec![];
    let r = AdaLoraConfig::from_json_str(json, &mut warnings);
    (r, warnings)
}

#[test]
fn post_init_errors_and_warnings_are_peft_s() {
    let _rng = peft_testkit::rng_lock();
    let cases = [
        (r#"{"peft_type": "ADALORA"}"#, "total_step"),
        (r#"{"peft_type": "ADALORA", "total_step": 0}"#, "total_step"),
        (r#"{"peft_type": "ADALORA", "total_step": 10, "use_dora": true}"#, "does not support DoRA"),
        (
            r#"{"peft_type": "ADALORA", "total_step": 10, "init_lora_weights": "loftq", "loftq_config": {"loftq_bits": 4}}"#,
            "does not support LOFTQ",
        ),
        (r#"{"peft_type": "ADALORA", "total_step": 10, "init_lora_weights": "loftq"}"#, "loftq_config"),
        (r#"{"peft_type": "ADALORA", "total_step": 10, "orth_reg_weight": -1}"#, "orth_reg_weight"),
        (r#"{"peft_type": "ADALORA", "total_step": 10, "tinit": 5, "tfinal": 5}"#, "budgeting phase"),
        (r#"{"peft_type": "ADALORA", "total_step": 10, "layers_pattern": "layers"}"#, "layers_to_transform"),
        (
            r#"{"peft_type": "ADALORA", "total_step": 10, "rank_pattern": {"a.lora_E": [1, 0]}}"#,
            "rank_pattern",
        ),
    ];
    for (json, needle) in cases {
        let err = parse(json).0.unwrap_err();
        assert!(err.to_string().contains(needle), "{json}: {err}");
    }
    let (ok, warnings) =
        parse(r#"{"peft_type": "ADALORA", "total_step": 10, "r": 4, "loftq_config": {"loftq_bits": 4}}"#);
    let ok = ok.unwrap();
    assert_eq!(ok.loftq_config, serde_json::json!({}), "PEFT drops a loftq_config it does not use");
    assert!(warnings.iter().any(|w| w.contains("`r` is not used in AdaLora")), "{warnings:?}");
    assert!(warnings.iter().any(|w| w.contains("loftq_config")), "{warnings:?}");
    let (ok, warnings) = parse(r#"{"peft_type": "ADALORA", "total_step": 10}"#);
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(ok.unwrap().to_json()["deltaT"], 1);
}

#[test]
fn options_peft_rs_does_not_implement_are_rejected_by_name() {
    let _rng = peft_testkit::rng_lock();
    let cases: Vec<(&str, AdaLoraConfig)> = vec![
        ("use_rslora", AdaLoraConfig { use_rslora: true, ..config(&["lin0"]) }),
        (
            "alpha_pattern",
            AdaLoraConfig { alpha_pattern: serde_json::json!({"lin0": 4}), ..config(&["lin0"]) },
        ),
        (
            "init_lora_weights",
            AdaLoraConfig {
                init_lora_weights: peft_adalora::InitLoraWeights::Scheme("pissa".into()),
                ..config(&["lin0"])
            },
        ),
        (
            "target_parameters",
            AdaLoraConfig { target_parameters: Some(vec!["w".into()]), ..config(&["lin0"]) },
        ),
        ("lora_bias", AdaLoraConfig { lora_bias: true, ..config(&["lin0"]) }),
        (
            "alora_invocation_tokens",
            AdaLoraConfig { alora_invocation_tokens: Some(serde_json::json!([1, 2])), ..config(&["lin0"]) },
        ),
    ];
    for (option, cfg) in cases {
        let (vs, n) = net();
        let err = PeftModel::new(n, &vs, cfg.boxed(), "default").unwrap_err();
        match &err {
            PeftError::UnsupportedOption { option: o, peft_type, .. } => {
                assert_eq!(o, option);
                assert_eq!(peft_type, "ADALORA");
            }
            other => panic!("{option}: expected UnsupportedOption, got {other:?}"),
        }
    }
}

#[test]
fn only_one_adapter_may_train() {
    let _rng = peft_testkit::rng_lock();
    let (vs, n) = net();
    let mut peft = PeftModel::new(n, &vs, config(&["lin0"]).boxed(), "default").unwrap();
    let err = peft.add_adapter("other", config(&["lin0"]).boxed()).unwrap_err();
    assert!(err.to_string().contains("only 1 trainable adapter"), "{err}");
    let mut frozen = config(&["lin0"]);
    frozen.common.inference_mode = true;
    peft.add_adapter("other", frozen.boxed()).unwrap();
    assert_eq!(peft_adalora::trainable_adapter(&peft).as_deref(), Some("default"));
    assert!(RankAllocator::new(&peft, "other").unwrap_err().to_string().contains("inference mode"));
}

#[test]
fn ranknum_is_a_frozen_unsaved_parameter_and_leaves_with_its_adapter() {
    let _rng = peft_testkit::rng_lock();
    let (vs, n) = net();
    let base_total: i64 = vs.variables().values().map(|t| t.numel() as i64).sum();
    let mut peft = PeftModel::new(n, &vs, config(&["lin0", "lin1"]).boxed(), "default").unwrap();
    let adapter = 4 * 10 + 20 * 4 + 4 + 4 * 20 + 2 * 4 + 4;
    // As PEFT counts: the two ranknums are frozen parameters.
    assert_eq!(peft.num_parameters(), (adapter, base_total + adapter + 2));
    let keys: Vec<String> = peft.adapter_state_dict("default").unwrap().into_iter().map(|(k, _)| k).collect();
    assert!(keys.iter().all(|k| !k.contains("ranknum")), "{keys:?}");
    assert_eq!(keys.len(), 6);
    peft.add_adapter(
        "beta",
        AdaLoraConfig {
            common: {
                let mut c = config(&[]).common;
                c.inference_mode = true;
                c
            },
            ..config(&["lin0"])
        }
        .boxed(),
    )
    .unwrap();
    peft.delete_adapter("beta").unwrap();
    assert_eq!(
        peft.num_parameters(),
        (adapter, base_total + adapter + 2),
        "a deleted adapter counts nothing"
    );
}

#[test]
fn a_file_of_another_rank_fails_naming_key_and_shapes() {
    let _rng = peft_testkit::rng_lock();
    let (vs, n) = net();
    let peft = PeftModel::new(n, &vs, config(&["lin0"]).boxed(), "default").unwrap();
    let dir = tempfile::tempdir().unwrap();
    peft.save_pretrained(dir.path(), &SaveOptions::default()).unwrap();
    let path = dir.path().join("adapter_config.json");
    let text = std::fs::read_to_string(&path).unwrap().replace("\"init_r\": 4", "\"init_r\": 3");
    std::fs::write(&path, text).unwrap();
    let (vs2, n2) = net();
    let err = load_error(n2, &vs2, dir.path());
    match &err {
        PeftError::ShapeMismatch { key, expected, found, .. } => {
            assert!(key.starts_with("base_model.model.lin0.lora_"), "{key}");
            assert_ne!(expected, found);
        }
        other => panic!("expected ShapeMismatch, got {other:?}"),
    }
}

#[test]
fn a_rank_pattern_truncates_saves_and_resizes_loads() {
    let _rng = peft_testkit::rng_lock();
    let (vs, n) = net();
    let mut peft = PeftModel::new(n, &vs, config(&["lin0", "lin1"]).boxed(), "default").unwrap();
    randomize(&peft);
    let pattern: peft_adalora::RankPattern = [
        (rank_pattern_key("lin0", "default"), vec![true, false, true, false]),
        (rank_pattern_key("lin1", "default"), vec![false, false, false, false]),
    ]
    .into_iter()
    .collect();
    assert_eq!(rank_pattern_key("lin0", "default"), "lin0.lora_E");
    set_rank_pattern(&mut peft, "default", Some(pattern.clone())).unwrap();
    let saved: std::collections::BTreeMap<String, Vec<i64>> =
        peft.adapter_state_dict("default").unwrap().into_iter().map(|(k, t)| (k, t.size())).collect();
    assert_eq!(saved["base_model.model.lin0.lora_A"], vec![2, 10]);
    assert_eq!(saved["base_model.model.lin1.lora_B"], vec![2, 0]);
    let dir = tempfile::tempdir().unwrap();
    peft.save_pretrained(dir.path(), &SaveOptions::default()).unwrap();
    let (vs2, n2) = net();
    let (loaded, _) = PeftModel::from_pretrained(n2, &vs2, dir.path(), LoadOptions::default()).unwrap();
    let mut ranks = vec![];
    loaded.model().visit_layers(&mut |l| {
        if let Some(t) = l.slots().get("default").and_then(|t| t.as_any().downcast_ref::<AdaLoraLayer>()) {
            ranks.push((t.rank(), t.ranknum().double_value(&[0])));
        }
    });
    // ranknum keeps init_r (the scaling is unchanged), except for a layer reduced to nothing.
    assert_eq!(ranks, vec![(2, 4.0), (0, 0.0)]);

    // A pattern entry of the wrong length is an error naming it.
    let text = std::fs::read_to_string(dir.path().join("adapter_config.json")).unwrap();
    let text = text.replacen("true,\n      false,\n      true,\n      false", "true,\n      false", 1);
    std::fs::write(dir.path().join("adapter_config.json"), text).unwrap();
    let (vs3, n3) = net();
    let err = load_error(n3, &vs3, dir.path());
    assert!(err.to_string().contains("lin0.lora_E") && err.to_string().contains("init_r = 4"), "{err}");
}

#[test]
fn the_allocator_refuses_what_peft_cannot_do() {
    let _rng = peft_testkit::rng_lock();
    let (vs, n) = net();
    let cfg = AdaLoraConfig { target_r: 4, ..config(&["lin0"]) };
    let mut peft = PeftModel::new(n, &vs, cfg.boxed(), "default").unwrap();
    let mut alloc = RankAllocator::new(&peft, "default").unwrap();
    assert_eq!((alloc.init_budget(), alloc.target_budget()), (4, 4));
    let err = alloc.update_and_allocate(&mut peft, 1).unwrap_err();
    assert!(err.to_string().contains("no gradient"), "{err}");
    let x = Tensor::randn([4, 10], (Kind::Float, Device::Cpu));
    peft.forward_t(&x, true).sum(Kind::Float).backward();
    // target_r == init_r leaves nothing to mask: PEFT's kthvalue fails the same way.
    let err = alloc.update_and_allocate(&mut peft, 1).unwrap_err();
    assert!(err.to_string().contains("kthvalue"), "{err}");
}

#[test]
fn orthogonal_regularization_vanishes_on_orthonormal_factors() {
    let _rng = peft_testkit::rng_lock();
    let (vs, n) = net();
    let cfg = AdaLoraConfig { orth_reg_weight: 0.25.into(), ..config(&["lin0"]) };
    let peft = PeftModel::new(n, &vs, cfg.boxed(), "default").unwrap();
    let params = peft.named_parameters();
    let get = |s: &str| params.iter().find(|(n, _)| n.ends_with(s)).unwrap().1.shallow_clone();
    let (a, b) = (get("lin0.lora_A.default"), get("lin0.lora_B.default"));
    let expected = {
        let na =
            (a.matmul(&a.tr()) - Tensor::eye(4, (Kind::Float, Device::Cpu))).square().sum(Kind::Float).sqrt();
        let nb =
            (b.tr().matmul(&b) - Tensor::eye(4, (Kind::Float, Device::Cpu))).square().sum(Kind::Float).sqrt();
        (na + nb) / 2.0 * 0.25
    };
    let reg = orthogonal_regularization(&peft, "default").unwrap();
    assert!((reg.double_value(&[]) - expected.double_value(&[])).abs() < 1e-5);
    assert!(reg.requires_grad(), "the term trains the factors");
    tch::no_grad(|| {
        a.shallow_clone().copy_(&Tensor::eye_m(4, 10, (Kind::Float, Device::Cpu)));
        b.shallow_clone().copy_(&Tensor::eye_m(20, 4, (Kind::Float, Device::Cpu)));
    });
    assert_eq!(orthogonal_regularization(&peft, "default").unwrap().double_value(&[]), 0.0);
}

#[test]
fn init_r_zero_is_allowed_and_changes_nothing() {
    let _rng = peft_testkit::rng_lock();
    let (vs, n) = net();
    let cfg = AdaLoraConfig {
        init_r: 0,
        init_lora_weights: peft_adalora::InitLoraWeights::Bool(false),
        ..config(&["lin0"])
    };
    let mut peft = PeftModel::new(n, &vs, cfg.boxed(), "default").unwrap();
    let x = Tensor::randn([4, 10], (Kind::Float, Device::Cpu));
    let base = tch::no_grad(|| peft.disable_adapters().unwrap().forward_t(&x, false));
    assert!(tch::no_grad(|| peft.forward_t(&x, false)).equal(&base));
    peft.merge_adapter(None, true).unwrap();
    assert!(tch::no_grad(|| peft.forward_t(&x, false)).equal(&base));
}

#[test]
fn architecture_defaults_are_adalora_s_table() {
    let _rng = peft_testkit::rng_lock();
    let cfg = AdaLoraConfig::default();
    assert_eq!(cfg.default_target_modules("t5"), Some(TargetModules::list(["q", "k", "v", "o", "wi", "wo"])));
    assert_eq!(cfg.default_target_modules("llama"), Some(TargetModules::list(["q_proj", "v_proj"])));
    assert_eq!(cfg.default_target_modules("mistral"), None, "PEFT's AdaLoRA table has no mistral entry");
}
