//! Bad input gives a typed error naming the file, the key and the shapes — never a panic.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{config, model, peft, snapshot};
use peft_core::io::{read_safetensors, write_safetensors};
use peft_core::MethodConfig;
use peft_core::{AdapterOptions, LoadOptions, PeftError, PeftModel, SaveOptions};
use peft_lora::{InitLoraWeights, LoraConfig};
use std::path::Path;
use tch::Tensor;

fn saved_adapter(dir: &Path) {
    let (_vs, p) = peft(&["lin0", "lin2"]);
    p.save_pretrained(dir, &SaveOptions::default()).unwrap();
}

fn load(dir: &Path) -> Result<(), PeftError> {
    let (vs, m) = model();
    PeftModel::from_pretrained(m, &vs, dir, LoadOptions::default()).map(|_| ())
}

fn weights(dir: &Path) -> std::path::PathBuf {
    dir.join("adapter_model.safetensors")
}

#[test]
fn load_rejects_a_truncated_weights_file_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    saved_adapter(dir.path());
    let bytes = std::fs::read(weights(dir.path())).unwrap();
    std::fs::write(weights(dir.path()), &bytes[..bytes.len() / 2]).unwrap();
    let err = load(dir.path()).unwrap_err();
    assert!(matches!(err, PeftError::Safetensors { .. }), "{err:?}");
    assert!(err.to_string().contains("adapter_model.safetensors"), "{err}");
}

#[test]
fn load_rejects_a_shape_mismatch_naming_key_and_both_shapes() {
    let dir = tempfile::tempdir().unwrap();
    saved_adapter(dir.path());
    // The config now says r = 8 while the file holds r = 4 tensors.
    let cfg_path = dir.path().join("adapter_config.json");
    let text = std::fs::read_to_string(&cfg_path).unwrap().replace("\"r\": 4", "\"r\": 8");
    std::fs::write(&cfg_path, text).unwrap();
    let err = load(dir.path()).unwrap_err();
    match &err {
        PeftError::ShapeMismatch { key, expected, found, path } => {
            assert_eq!(key, "base_model.model.lin0.lora_A.weight");
            assert_eq!(expected, &vec![8, 6]);
            assert_eq!(found, &vec![4, 6]);
            assert!(path.ends_with("adapter_model.safetensors"));
        }
        other => panic!("expected a shape mismatch, got {other:?}"),
    }
    let msg = err.to_string();
    assert!(msg.contains("[8, 6]") && msg.contains("[4, 6]") && msg.contains("lora_A"), "{msg}");
}

#[test]
fn load_rejects_unexpected_and_missing_tensors_naming_them() {
    let dir = tempfile::tempdir().unwrap();
    saved_adapter(dir.path());
    let mut tensors: Vec<(String, Tensor)> =
        read_safetensors(&weights(dir.path())).unwrap().into_iter().map(|t| (t.key, t.tensor)).collect();
    tensors.push(("base_model.model.lin9.lora_A.weight".into(), Tensor::zeros([4, 6], tch::kind::FLOAT_CPU)));
    write_safetensors(&weights(dir.path()), &tensors).unwrap();
    let err = load(dir.path()).unwrap_err();
    assert!(
        matches!(&err, PeftError::UnexpectedKeys { keys, .. } if keys == &["base_model.model.lin9.lora_A.weight"]),
        "{err:?}"
    );

    tensors.retain(|(k, _)| !k.contains("lin9") && k != "base_model.model.lin2.lora_B.weight");
    write_safetensors(&weights(dir.path()), &tensors).unwrap();
    let err = load(dir.path()).unwrap_err();
    assert!(
        matches!(&err, PeftError::MissingKeys { keys, .. } if keys == &["base_model.model.lin2.lora_B.weight"]),
        "{err:?}"
    );
}

#[test]
fn a_failed_load_leaves_the_model_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    saved_adapter(dir.path());
    let bytes = std::fs::read(weights(dir.path())).unwrap();
    std::fs::write(weights(dir.path()), &bytes[..20]).unwrap();
    let (_vs, mut p) = peft(&["lin1"]);
    let before = p.num_parameters();
    let err = p.load_adapter(dir.path(), LoadOptions::named("other")).unwrap_err();
    assert!(matches!(err, PeftError::Safetensors { .. }));
    assert_eq!(p.adapter_names(), ["default"]);
    assert_eq!(p.num_parameters(), before);
    assert_eq!(p.targeted_modules("other"), Vec::<String>::new());
}

#[test]
fn a_missing_config_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let err = load(dir.path()).unwrap_err();
    assert!(err.to_string().contains("adapter_config.json"), "{err}");
}

#[test]
fn unknown_and_unavailable_peft_types_say_what_to_do() {
    let mut w = vec![];
    let err = peft_core::registry::config_from_str(r#"{"peft_type": "NOT_A_METHOD"}"#, &mut w).unwrap_err();
    assert!(matches!(err, PeftError::UnknownPeftType { .. }), "{err:?}");
    assert!(err.to_string().contains("LORA"), "lists the known types: {err}");
    // VeRA ships in its own crate, which this test binary does not link: the error says which crate to add.
    let err = peft_core::registry::config_from_str(r#"{"peft_type": "VERA", "r": 256}"#, &mut w).unwrap_err();
    assert!(matches!(err, PeftError::MethodNotLinked { .. }), "{err:?}");
    assert!(err.to_string().contains("peft-vera"), "{err}");
    // A PEFT method peft-rs does not implement yet is named as such, with the crate it would live in.
    assert!(!peft_core::registry::shipped().contains(&"XLORA"));
    let err = peft_core::registry::config_from_str(r#"{"peft_type": "XLORA"}"#, &mut w).unwrap_err();
    assert!(matches!(err, PeftError::MethodNotImplemented { .. }), "{err:?}");
    assert!(err.to_string().contains("peft-xlora"), "{err}");
    let err = peft_core::registry::config_from_str(r#"{"r": 8}"#, &mut w).unwrap_err();
    assert!(err.to_string().contains("peft_type"), "{err}");
    // LORA is linked (this test uses peft-lora), so it parses.
    let _ = peft_lora::PEFT_TYPE;
    peft_core::registry::config_from_str(r#"{"peft_type": "LORA"}"#, &mut w).unwrap();
}

#[test]
fn wrong_value_types_name_the_key() {
    let mut w = vec![];
    let err = LoraConfig::from_json_str(r#"{"peft_type": "LORA", "r": "eight"}"#, &mut w).unwrap_err();
    assert!(err.to_string().contains("`r`"), "{err}");
    let err = LoraConfig::from_json_str(r#"{"peft_type": "LORA", "bias": "some"}"#, &mut w).unwrap_err();
    assert!(err.to_string().contains("`bias`"), "{err}");
    let err = LoraConfig::from_json_str(r#"{"peft_type": "LORA", "task_type": "CHAT"}"#, &mut w).unwrap_err();
    assert!(err.to_string().contains("task_type"), "{err}");
}

#[test]
fn unknown_keys_are_accepted_with_a_warning() {
    let mut w = vec![];
    let c = LoraConfig::from_json_str(r#"{"peft_type": "LORA", "r": 4, "shiny_new_option": true}"#, &mut w)
        .unwrap();
    assert_eq!(c.r, 4);
    assert_eq!(w.len(), 1);
    assert!(w[0].contains("shiny_new_option"), "{w:?}");
}

#[test]
fn targets_that_match_nothing_are_all_named() {
    let (vs, m) = model();
    let err = PeftModel::new(m, &vs, config(&["lin0", "lin7", "q_proj"]).boxed(), "default").unwrap_err();
    match &err {
        PeftError::NoMatchingTargets { entries, available, .. } => {
            assert_eq!(entries, &["lin7", "q_proj"]);
            assert!(available.contains("lin2"), "{available}");
        }
        other => panic!("{other:?}"),
    }
    // PEFT's lenient behaviour is available explicitly.
    let (vs, m) = model();
    let opts = AdapterOptions { allow_unmatched_targets: true, ..Default::default() };
    let p = PeftModel::with_options(m, &vs, config(&["lin0", "lin7"]).boxed(), "default", opts).unwrap();
    assert_eq!(p.targeted_modules("default"), ["lin0"]);
    // Nothing at all is always an error.
    let (vs, m) = model();
    let err = PeftModel::with_options(m, &vs, config(&["nope"]).boxed(), "default", opts).unwrap_err();
    assert!(matches!(err, PeftError::NoMatchingTargets { .. }), "{err:?}");
}

#[test]
fn a_duplicate_adapter_name_is_rejected_without_side_effects() {
    let (_vs, mut p) = peft(&["lin0"]);
    let before = p.num_parameters();
    let err = p.add_adapter("default", config(&["lin1"]).boxed()).unwrap_err();
    assert!(matches!(err, PeftError::DuplicateAdapter { ref name } if name == "default"), "{err:?}");
    assert_eq!(p.num_parameters(), before);
    assert_eq!(p.targeted_modules("default"), ["lin0"]);
    let err = p.add_adapter("a.b", config(&["lin1"]).boxed()).unwrap_err();
    assert!(matches!(err, PeftError::InvalidAdapterName { .. }), "{err:?}");
}

#[test]
fn loftq_needs_its_config() {
    let (vs, m) = model();
    let cfg = LoraConfig { init_lora_weights: InitLoraWeights::Scheme("loftq".into()), ..config(&["lin0"]) };
    let err = PeftModel::new(m, &vs, cfg.boxed(), "default").unwrap_err();
    assert!(err.to_string().contains("loftq_config"), "{err}");
}

#[test]
fn options_not_implemented_yet_are_rejected_by_name() {
    let cases: Vec<(&str, LoraConfig)> = vec![
        ("megatron_config", LoraConfig { megatron_config: Some(serde_json::json!({})), ..config(&["lin0"]) }),
        ("ensure_weight_tying", LoraConfig { ensure_weight_tying: true, ..config(&["lin0"]) }),
        (
            "target_parameters",
            LoraConfig { target_parameters: Some(vec!["lin0.weight".into()]), ..config(&["lin0"]) },
        ),
    ];
    for (option, cfg) in cases {
        let (vs, m) = model();
        let err = PeftModel::new(m, &vs, cfg.boxed(), "default").unwrap_err();
        assert!(
            matches!(&err, PeftError::UnsupportedOption { option: o, .. } if o == option),
            "{option}: {err:?}"
        );
        assert!(err.to_string().contains(option));
    }
}

#[test]
fn invalid_regexes_and_inconsistent_layer_options_are_config_errors() {
    let (vs, m) = model();
    let cfg = LoraConfig {
        target_modules: Some(peft_core::peft_config::TargetModules::Regex("lin(".into())),
        ..LoraConfig::default()
    };
    let err = PeftModel::new(m, &vs, cfg.boxed(), "default").unwrap_err();
    assert!(err.to_string().contains("lin("), "{err}");
    let mut w = vec![];
    let err = LoraConfig::from_json_str(
        r#"{"peft_type": "LORA", "target_modules": "lin0", "layers_to_transform": [0]}"#,
        &mut w,
    )
    .unwrap_err();
    assert!(err.to_string().contains("layers_to_transform"), "{err}");
}

#[test]
fn safe_merge_refuses_non_finite_weights_and_changes_nothing() {
    let (vs, mut p) = peft(&["lin0", "lin2"]);
    let before = snapshot(&vs);
    // Break lin2's adapter.
    let lin2_b =
        p.adapter_var_store().variables().remove("base_model.model.lin2.lora_B.default.weight").unwrap();
    let _ = tch::no_grad(|| lin2_b.shallow_clone().fill_(f64::NAN));
    let err = p.merge_adapter(None, true).unwrap_err();
    match &err {
        PeftError::NonFiniteMerge { adapter, module } => {
            assert_eq!(adapter, "default");
            assert_eq!(module, "lin2");
        }
        other => panic!("{other:?}"),
    }
    assert!(!p.is_merged(), "lin0 was rolled back");
    for ((k, a), (_, b)) in before.iter().zip(snapshot(&vs)) {
        assert!(a.equal(&b), "{k} changed");
    }
}

#[test]
fn lora_bias_cannot_merge_into_a_layer_without_bias() {
    let (vs, m) = model();
    let cfg = LoraConfig { lora_bias: true, ..config(&["lin1"]) };
    let mut p = PeftModel::new(m, &vs, cfg.boxed(), "default").unwrap();
    assert!(p.warnings().iter().any(|w| w.contains("has no bias")), "{:?}", p.warnings());
    let err = p.merge_adapter(None, false).unwrap_err();
    assert!(err.to_string().contains("no bias"), "{err}");
    assert!(!p.is_merged());
}

#[test]
fn unknown_adapters_are_errors_listing_the_available_ones() {
    let (_vs, mut p) = peft(&["lin0"]);
    let err = p.set_adapter("nope").unwrap_err();
    assert!(
        matches!(&err, PeftError::UnknownAdapter { available, .. } if available == &["default"]),
        "{err:?}"
    );
    assert!(p.delete_adapter("nope").is_err());
    assert!(p.merge_adapter(Some(&["nope"]), false).is_err());
    let err = p.save_pretrained(
        tempfile::tempdir().unwrap().path(),
        &SaveOptions { selected_adapters: Some(vec!["x".into()]), ..Default::default() },
    );
    assert!(err.is_err());
}

#[test]
fn sub_configs_are_completed_checked_and_strict_where_peft_is() {
    use peft_core::config::AdapterConfig;
    let mut w = Vec::new();
    let parse = |text: &str, w: &mut Vec<String>| LoraConfig::from_json_str(text, w);
    // Missing fields get the dataclass defaults; unknown ones are dropped with a warning naming them.
    let c = parse(r#"{"peft_type": "LORA", "kasa_config": {"beta": 0.5, "zeta": 1}}"#, &mut w).unwrap();
    assert_eq!(c.kasa_config, Some(serde_json::json!({"beta": 0.5, "gamma": 0.001})));
    assert!(w.iter().any(|m| m.contains("kasa_config.zeta")), "{w:?}");
    // Value checks of the sub-config's own __post_init__.
    let err = parse(r#"{"peft_type": "LORA", "kasa_config": {"beta": -1}}"#, &mut w).unwrap_err();
    assert!(err.to_string().contains("`beta` must be non-negative"), "{err}");
    let err = parse(r#"{"peft_type": "LORA", "eva_config": {"tau": 2}}"#, &mut w).unwrap_err();
    assert!(err.to_string().contains("`tau` must be between"), "{err}");
    // MontecloraConfig(**dict) has no filtering in PEFT: unknown keys are errors.
    let err = parse(r#"{"peft_type": "LORA", "monteclora_config": {"samples": 3}}"#, &mut w).unwrap_err();
    assert!(err.to_string().contains("`monteclora_config` has no field `samples`"), "{err}");
    let err = parse(r#"{"peft_type": "LORA", "kasa_config": [1]}"#, &mut w).unwrap_err();
    assert!(err.to_string().contains("`kasa_config` must be a dict"), "{err}");
    // A config built in code is checked and written complete, too.
    let coded = LoraConfig { kasa_config: Some(serde_json::json!({"gamma": -2.0})), ..LoraConfig::default() };
    assert!(coded.validate().unwrap_err().to_string().contains("`gamma` must be non-negative"));
    let coded = LoraConfig { lora_ga_config: Some(serde_json::json!({})), ..LoraConfig::default() };
    assert_eq!(coded.to_json()["lora_ga_config"]["stable_gamma"], 16);
}

#[test]
fn variant_combinations_and_bdlora_layouts_are_checked_like_peft() {
    let try_new = |cfg: LoraConfig| {
        let (vs, m) = model();
        PeftModel::new(m, &vs, cfg.boxed(), "default").map(|_| ()).unwrap_err().to_string()
    };
    let bd = |v: serde_json::Value| LoraConfig { use_bdlora: Some(v), ..config(&["lin0", "lin1"]) };
    // Two variants at once.
    let err =
        try_new(LoraConfig { use_dora: true, kasa_config: Some(serde_json::json!({})), ..config(&["lin1"]) });
    assert!(err.contains("Invalid or unsupported variant combination: ('kasa_config', 'use_dora')"), "{err}");
    // A module in both lists, in neither (strict), and blocks that do not divide the features.
    let err =
        try_new(bd(serde_json::json!({"target_modules_bd_a": ["lin"], "target_modules_bd_b": ["lin1"]})));
    assert!(err.contains("Target lin1 matches both A and B"), "{err}");
    let err = try_new(bd(serde_json::json!({"target_modules_bd_a": ["lin0"]})));
    assert!(err.contains("Target lin1 matches neither A nor B"), "{err}");
    let err = try_new(bd(
        serde_json::json!({"target_modules_bd_a": ["lin0"], "target_modules_bd_b": ["lin1"], "nblocks": 3}),
    ));
    assert!(err.contains("`lin0`") && err.contains("not divisible by nblocks=3"), "{err}");
    // Overlapping lists are a config error before any layer is touched.
    let err =
        try_new(bd(serde_json::json!({"target_modules_bd_a": ["lin0"], "target_modules_bd_b": ["lin0"]})));
    assert!(err.contains("overlapping modules"), "{err}");
}
