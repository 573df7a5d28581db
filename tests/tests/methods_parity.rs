//! Parity with the pinned PEFT 0.21.2 for every method other than LoRA, in both directions, on the matrix
//! the method files `tests/oracle/method_<name>.py` define (`gen_methods.py` turns each into fixtures).
//! Adding a row there adds a case here; a new method crate only needs to be linked below.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use peft_core::config::to_config_file_text;
use peft_core::{LoadOptions, PeftModel, SaveOptions};
use peft_parity::compare::{assert_close, assert_differs, assert_identical};
use peft_parity::harness::{
    self, assert_same_config, assert_same_status, base_model, forward, method_config, replay_training_case,
    rust_outputs_for, sorted_vars, strings, TrainingHooks,
};
use peft_parity::models::{read_all, read_tensor, TestModel};
use peft_parity::oracle::{self, read_json};
use serde_json::Value;
use std::collections::BTreeMap;
use tch::nn::VarStore;
use tch::{Device, Tensor};

// The method crates under test (linking registers their peft_types).
use peft as _;

/// Outputs must be bit-identical (the same ATen ops in the same order) unless a case of the generator
/// says otherwise (`atol`, for methods whose PEFT ops have no bit-exact counterpart).
fn atol(meta: &Value) -> f64 {
    meta["atol"].as_f64().unwrap_or(0.0)
}

/// Every `(fixtures root, case)` of one section (`cases`, `init`, `train`, `configs`) over all method files
/// (`tests/oracle/method_*.py`), each generated and cached on its own.
fn each_case(section: &str) -> Vec<(std::path::PathBuf, String)> {
    let mut out = Vec::new();
    for stem in oracle::method_files() {
        let root = oracle::method_fixtures(&stem);
        for case in harness::manifest_list(&root, section) {
            out.push((root.join(section).join(&case), case));
        }
    }
    out
}

/// The case's method, for the parity report (`IA3 peft->rs`, …).
fn record(direction: &str, method: &str, case: &str) {
    oracle::record(&format!("{} {direction}", method.to_ascii_lowercase()), case);
}

#[test]
fn peft_saves_peft_rs_loads_same_outputs() {
    let _rng = oracle::rng_guard();
    let cases = each_case("cases");
    assert!(!cases.is_empty(), "the oracle matrix is empty");
    for (d, case) in cases {
        let meta = read_json(&d.join("case.json"));
        let (vs, model) = base_model(&d, meta["model"].as_str().unwrap());
        let x = read_tensor(&d.join("input.safetensors"), "x");
        let expected = read_all(&d.join("outputs.safetensors"));
        assert_close(&forward(&model, &x), &expected["base"], 0.0, &format!("{case}: base model"));
        // The comparison is meaningful only if the adapter changes the output.
        assert_differs(&expected["unmerged"], &expected["base"], 1e-4, &format!("{case}: adapter effect"));

        let names = strings(&meta["adapters"]);
        let adir = d.join("adapter");
        // PEFT saves the adapter named "default" at the top, the others in subfolders.
        let opts = |n: &String| LoadOptions {
            subfolder: (n != "default").then(|| n.clone()),
            ..LoadOptions::named(n.clone())
        };
        let (mut peft, report) = PeftModel::from_pretrained(model, &vs, &adir, opts(&names[0])).unwrap();
        assert!(!report.trainable, "{case}: loaded for inference");
        for n in &names[1..] {
            peft.load_adapter(&adir, opts(n)).unwrap();
        }
        let active = strings(&meta["active"]);
        let outputs = rust_outputs_for(peft, &x, &active, &meta["merge"]);
        assert_eq!(
            outputs.keys().collect::<Vec<_>>(),
            expected.keys().filter(|k| k.as_str() != "base").collect::<Vec<_>>(),
            "{case}: states"
        );
        for (state, ours) in &outputs {
            assert_close(ours, &expected[state], atol(&meta), &format!("{case}: {state}"));
        }
        record("peft->rs", meta["method"].as_str().unwrap(), &case);
    }
}

/// Adds `scale`·N(0, 1) to every adapter tensor (the `modules_to_save` copies included), in name order.
fn perturb(peft: &PeftModel<TestModel>, scale: f64) {
    for (_, mut t) in sorted_vars(peft.adapter_var_store()) {
        if !t.is_floating_point() {
            continue; // positions (SHiRA's indices)
        }
        let noise = Tensor::randn_like(&t) * scale;
        let _ = tch::no_grad(|| t.f_add_(&noise)).unwrap();
    }
}

#[test]
fn peft_rs_saves_peft_loads_same_outputs() {
    let _rng = oracle::rng_guard();
    let work = tempfile::tempdir().unwrap();
    // case -> (its case.json, our outputs per state, our saved config per adapter)
    type Ours = (Value, BTreeMap<String, Tensor>, BTreeMap<String, Value>);
    let mut ours: BTreeMap<String, Ours> = BTreeMap::new();
    for (d, case) in each_case("cases") {
        let meta = read_json(&d.join("case.json"));
        let method = meta["method"].as_str().unwrap().to_string();
        let model_name = meta["model"].as_str().unwrap();
        let (vs, model) = base_model(&d, model_name);
        let x = read_tensor(&d.join("input.safetensors"), "x");
        let names = strings(&meta["adapters"]);
        let active = strings(&meta["active"]);
        tch::manual_seed(11);
        let first = method_config(&method, &meta["configs"][&names[0]]);
        let mut peft = PeftModel::new(model, &vs, first, &names[0]).unwrap();
        for n in &names[1..] {
            peft.add_adapter(n, method_config(&method, &meta["configs"][n])).unwrap();
        }
        let scale = meta["perturb"].as_f64().unwrap_or(0.3);
        if scale > 0.0 {
            perturb(&peft, scale);
        }
        let merge = if meta["merge"].is_null() { Value::from(true) } else { meta["merge"].clone() };
        assert_same_status(&mut peft, &active, &meta["status"], &case);
        let out_dir = work.path().join(&case);
        std::fs::create_dir_all(&out_dir).unwrap();
        std::fs::copy(d.join("base.safetensors"), out_dir.join("base.safetensors")).unwrap();
        std::fs::copy(d.join("input.safetensors"), out_dir.join("input.safetensors")).unwrap();
        let case_json =
            serde_json::json!({"model": model_name, "adapters": names, "active": active, "merge": merge});
        std::fs::write(out_dir.join("case.json"), case_json.to_string()).unwrap();
        let adir = out_dir.join("adapter");
        peft.save_pretrained(&adir, &SaveOptions::default()).unwrap();
        let configs: BTreeMap<String, Value> = names
            .iter()
            .map(|n| {
                let sub = if n == "default" { adir.clone() } else { adir.join(n) };
                (n.clone(), read_json(&sub.join("adapter_config.json")))
            })
            .collect();
        let outputs = rust_outputs_for(peft, &x, &active, &merge);
        assert_differs(&outputs["unmerged"], &outputs["disabled"], 1e-4, &format!("{case}: adapter effect"));
        ours.insert(case, (meta, outputs, configs));
    }

    oracle::run_script("check_load.py", &[work.path()]);

    for (case, (meta, outputs, configs)) in &ours {
        let peft_out = read_all(&work.path().join(case).join("peft_outputs.safetensors"));
        assert_eq!(outputs.keys().collect::<Vec<_>>(), peft_out.keys().collect::<Vec<_>>(), "{case}: states");
        for (state, ours) in outputs {
            assert_close(ours, &peft_out[state], atol(meta), &format!("{case}: {state} (PEFT loaded ours)"));
        }
        let peft_configs = read_json(&work.path().join(case).join("peft_configs.json"));
        for (adapter, ours) in configs {
            assert_same_config(ours, &peft_configs[adapter], true, &format!("{case}/{adapter}"));
        }
        record("rs->peft", meta["method"].as_str().unwrap(), case);
    }
}

#[test]
fn same_seed_gives_peft_identical_adapter_init() {
    let _rng = oracle::rng_guard();
    for (d, case) in each_case("init") {
        let meta = read_json(&d.join("case.json"));
        let method = meta["method"].as_str().unwrap();
        tch::manual_seed(0);
        let vs = VarStore::new(Device::Cpu);
        let model = TestModel::build(meta["model"].as_str().unwrap(), &vs).unwrap();
        let base = read_all(&d.join("base.safetensors"));
        for (k, v) in vs.variables() {
            assert_identical(&v, &base[&k], &format!("{case}: base init of {k}"));
        }
        let peft = PeftModel::new(model, &vs, method_config(method, &meta["config"]), "default").unwrap();
        let file = read_all(&d.join("adapter").join("adapter_model.safetensors"));
        let ours: BTreeMap<String, Tensor> =
            peft.adapter_state_dict("default").unwrap().into_iter().collect();
        assert_eq!(ours.keys().collect::<Vec<_>>(), file.keys().collect::<Vec<_>>(), "{case}: adapter keys");
        for (k, v) in &ours {
            assert_identical(v, &file[k], &format!("{case}: adapter init of {k}"));
        }
        let trainable: Vec<String> = peft
            .named_trainable_parameters()
            .into_iter()
            .map(|(k, _)| k)
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        assert_eq!(trainable, strings(&read_json(&d.join("trainable.json"))), "{case}: trainable parameters");
        // The config PEFT saved after injection (all-linear expanded, fan_in_fan_out corrected).
        let ours_dir = tempfile::tempdir().unwrap();
        peft.save_pretrained(ours_dir.path(), &SaveOptions::default()).unwrap();
        let peft_saved = read_json(&d.join("adapter").join("adapter_config.json"));
        let our_saved = read_json(&ours_dir.path().join("adapter_config.json"));
        assert_same_config(&our_saved, &peft_saved, false, &format!("{case}: saved config"));
        record("init", method, &case);
    }
}

#[test]
fn training_steps_give_peft_identical_adapter_weights() {
    let _rng = oracle::rng_guard();
    for (d, case) in each_case("train") {
        let meta = replay_training_case(&d, &case, &TrainingHooks::default());
        record("train", meta["method"].as_str().unwrap(), &case);
    }
}

#[test]
fn peft_written_configs_parse_and_rewrite_byte_identical() {
    for (dir, name) in each_case("configs") {
        let meta = read_json(&dir.join("case.json"));
        let text = std::fs::read_to_string(dir.join("adapter_config.json")).unwrap();
        let mut warnings = vec![];
        let config = peft_core::registry::load_config(&dir, &mut warnings).unwrap();
        // PEFT's own warnings (VeRA without saved projections, …) are expected; a dropped key is not.
        assert!(warnings.iter().all(|w| !w.contains("unknown key")), "{name}: {warnings:?}");
        assert_eq!(
            to_config_file_text(config.as_ref()),
            text,
            "{name}: rewritten config differs from PEFT's file"
        );
        config.validate().unwrap_or_else(|e| panic!("{name}: {e}"));
        record("config", meta["method"].as_str().unwrap(), &name);
    }
}
