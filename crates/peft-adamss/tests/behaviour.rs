//! AdaMSS behaviour beyond the parity matrix (identity at init where PEFT's default is the identity,
//! merged == unmerged on non-trivial weights, refused layers and options, NaN-safe merges, shape mismatches
//! on load — see `peft_testkit`'s checks).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use peft_adamss::{AdamssConfig, MethodConfig};

#[test]
fn the_config_round_trips_through_peft_json() {
    let mut warnings = Vec::new();
    let config =
        AdamssConfig::from_json_str(r#"{"peft_type": "ADAMSS", "target_modules": ["lin0"]}"#, &mut warnings)
            .unwrap();
    let text = peft_core::config::to_config_file_text(&config);
    let again = AdamssConfig::from_json_str(&text, &mut warnings).unwrap();
    assert_eq!(config, again);
    assert!(warnings.is_empty(), "{warnings:?}");
}
