//! Property test: any `adapter_config.json` value — every key of every linked method's config given a
//! value of any JSON type (huge, negative, fractional, NaN-like strings, nested) — parses to a config or
//! to an error, never a panic; a config that parses writes a config file that parses again.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use peft::core::registry;
use proptest::prelude::*;
use serde_json::{json, Map, Value};

/// Any JSON value a hand-edited or hostile config could hold.
fn any_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        prop_oneof![Just(0i64), Just(-1), Just(1), Just(2), Just(i64::MAX), Just(1 << 40)]
            .prop_map(Value::from),
        any::<f64>().prop_filter("JSON numbers are finite", |f| f.is_finite()).prop_map(Value::from),
        prop_oneof![Just(0.5f64), Just(-0.0), Just(1e300), Just(1e-300)].prop_map(Value::from),
        "[a-z_.*|0-9]{0,12}".prop_map(Value::from),
        prop_oneof![Just("NaN"), Just("inf"), Just("all-linear"), Just("lora_only"), Just("gaussian")]
            .prop_map(Value::from),
    ];
    leaf.prop_recursive(2, 8, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map("[a-z_.0-9]{1,8}", inner, 0..3)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// The smallest config PEFT accepts for `peft_type` (AdaLoRA needs its schedule's length).
fn minimal(peft_type: &str) -> Value {
    match peft_type {
        "ADALORA" => json!({"peft_type": peft_type, "total_step": 100}),
        _ => json!({"peft_type": peft_type}),
    }
}

/// Every linked method's config written out with its defaults: the keys to vary.
fn default_configs() -> Vec<Map<String, Value>> {
    registry::registered()
        .iter()
        .filter_map(|reg| {
            let cfg =
                registry::config_from_str(&json!({"peft_type": reg.peft_type}).to_string(), &mut Vec::new())
                    .ok()?;
            match cfg.to_json() {
                Value::Object(m) => Some(m),
                _ => None,
            }
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn any_config_parses_or_fails_cleanly(
        which in any::<prop::sample::Index>(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any_value()), 1..4),
        extra in prop::option::of(("[a-z_]{1,10}", any_value())),
    ) {
        let configs = default_configs();
        prop_assume!(!configs.is_empty());
        let mut map = configs[which.index(configs.len())].clone();
        let keys: Vec<String> = map.keys().filter(|k| *k != "peft_type").cloned().collect();
        for (key, value) in edits {
            if !keys.is_empty() {
                map.insert(keys[key.index(keys.len())].clone(), value);
            }
        }
        if let Some((k, v)) = extra {
            map.insert(k, v);
        }
        let text = Value::Object(map).to_string();
        let mut warnings = Vec::new();
        if let Ok(cfg) = registry::config_from_str(&text, &mut warnings) {
            let written = peft::core::config::to_config_file_text(cfg.as_ref());
            let again = registry::config_from_str(&written, &mut Vec::new());
            prop_assert!(again.is_ok(), "{text}\nwrote {written}\nwhich does not parse: {:?}", again.err());
        }
    }
}

#[test]
fn every_linked_method_has_a_default_config() {
    for reg in registry::registered() {
        let parsed = registry::config_from_str(&minimal(reg.peft_type).to_string(), &mut Vec::new());
        assert!(parsed.is_ok(), "{}: {:?}", reg.peft_type, parsed.err());
    }
}
