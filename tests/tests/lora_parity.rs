//! LoRA parity with the pinned PEFT 0.21.2, in both directions, on the matrix `tests/oracle/gen_lora.py`
//! defines. Adding a row there adds a case here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use peft_core::config::to_config_file_text;
use peft_core::peft_config::patterns::PatternMap;
use peft_core::peft_config::{TargetMatch, TargetMatcher};
use peft_core::MethodConfig;
use peft_core::{AdapterConfig, LoadOptions, PeftModel, SaveOptions};
use peft_lora::{LoraConfig, LoraModelExt};
use peft_parity::compare::{assert_close, assert_differs, assert_identical};
use peft_parity::harness::{
    self, assert_same_config, assert_same_status, base_model, forward, replay_training_case, rust_outputs,
    sorted_vars, strings, TrainingHooks,
};
use peft_parity::models::{load_var_store, read_all, read_tensor, TestModel};
use peft_parity::oracle::{self, read_json};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;
use tch::nn::{ModuleT, VarStore};
use tch::{Device, Kind, Tensor};

/// Outputs are compared at this absolute tolerance (f32); in practice they are bit-identical.
const ATOL: f64 = 1e-5;

fn fixtures() -> std::path::PathBuf {
    oracle::fixtures("gen_lora.py")
}

fn manifest_list(key: &str) -> Vec<String> {
    harness::manifest_list(&fixtures(), key)
}

/// A LoraConfig from the kwargs the oracle passed to `LoraConfig(**kwargs)`.
fn lora_config(kwargs: &Value) -> LoraConfig {
    let mut map = kwargs.as_object().unwrap().clone();
    map.insert("peft_type".into(), "LORA".into());
    let mut warnings = vec![];
    LoraConfig::from_json_map(map, "<oracle kwargs>", &mut warnings).unwrap()
}

#[test]
fn peft_saves_peft_rs_loads_same_outputs() {
    let _rng = oracle::rng_guard();
    let root = fixtures();
    let cases = manifest_list("cases");
    assert!(cases.len() >= 15, "the oracle matrix shrank: {cases:?}");
    for case in cases {
        let d = root.join("cases").join(&case);
        let meta = read_json(&d.join("case.json"));
        let (vs, model) = base_model(&d, meta["model"].as_str().unwrap());
        let x = read_tensor(&d.join("input.safetensors"), "x");
        let expected = read_all(&d.join("outputs.safetensors"));
        assert_close(&forward(&model, &x), &expected["base"], ATOL, &format!("{case}: base model"));
        // The comparison is meaningful only if the adapter changes the output.
        assert_differs(&expected["unmerged"], &expected["base"], 1e-4, &format!("{case}: adapter effect"));

        let names = strings(&meta["adapters"]);
        let adir = d.join("adapter");
        let (mut peft, report) =
            PeftModel::from_pretrained(model, &vs, &adir, LoadOptions::named(names[0].clone())).unwrap();
        assert!(!report.trainable, "{case}: loaded for inference");
        for n in &names[1..] {
            let opts = LoadOptions { subfolder: Some(n.clone()), ..LoadOptions::named(n.clone()) };
            peft.load_adapter(&adir, opts).unwrap();
        }
        if let Some(want) = expected.get("monteclora_loss") {
            let ours = peft_lora::monteclora::monteclora_loss(&peft, None).unwrap().reshape([1]);
            assert_close(&ours, want, 1e-6, &format!("{case}: monteclora_loss"));
        }
        if let Some(want) = expected.get("kasa_loss") {
            let ours = peft_lora::kasa::kasa_loss(&peft, None).reshape([1]);
            assert_close(&ours, want, 1e-6, &format!("{case}: kasa_loss"));
        }
        let outputs =
            rust_outputs(peft, &x, &strings(&meta["active"]), meta["merge"].as_bool().unwrap_or(true));
        assert_eq!(
            outputs.keys().collect::<Vec<_>>(),
            expected
                .keys()
                .filter(|k| !["base", "kasa_loss", "monteclora_loss"].contains(&k.as_str()))
                .collect::<Vec<_>>()
        );
        for (state, ours) in &outputs {
            assert_close(ours, &expected[state], ATOL, &format!("{case}: {state}"));
        }
        oracle::record("peft->rs", &case);
    }
}

/// Adds 0.1·N(0,1) where PEFT's generator does: biases ("all", or the adapted layers' only), or the
/// `modules_to_save` copies; or scales DoRA magnitudes by 1 + 0.2·N(0,1).
fn perturb(vs: &VarStore, peft: &PeftModel<TestModel>, mode: &str) {
    if mode == "dora" || mode == "tokens" {
        let pattern = if mode == "dora" { "lora_magnitude_vector" } else { "trainable_tokens_delta" };
        for (name, mut t) in sorted_vars(peft.adapter_var_store()) {
            if name.contains(pattern) {
                let noise = Tensor::randn_like(&t) * 0.2 + 1.0;
                let _ = tch::no_grad(|| t.f_mul_(&noise)).unwrap();
            }
        }
        return;
    }
    if mode == "monteclora" {
        // One training forward fills the sampler's buffers; then the variational parameters move.
        let x = Tensor::randn([3, 10], (tch::Kind::Float, Device::Cpu));
        let _ = tch::no_grad(|| peft.forward_t(&x, true));
        for (name, mut t) in sorted_vars(peft.adapter_var_store()) {
            if name.contains("_prior") {
                let noise = Tensor::randn_like(&t) * 0.3;
                let _ = tch::no_grad(|| t.f_add_(&noise)).unwrap();
            }
        }
        return;
    }
    if mode == "modules_to_save" {
        for (name, mut t) in sorted_vars(peft.adapter_var_store()) {
            if name.contains(".modules_to_save.") {
                let noise = Tensor::randn_like(&t) * 0.1;
                let _ = tch::no_grad(|| t.f_add_(&noise)).unwrap();
            }
        }
        return;
    }
    let adapted: Vec<String> = peft.adapter_names().iter().flat_map(|a| peft.targeted_modules(a)).collect();
    for (name, mut t) in sorted_vars(vs) {
        let Some(module) = name.strip_suffix(".bias") else { continue };
        if mode == "all" || adapted.iter().any(|a| a == module) {
            let noise = Tensor::randn_like(&t) * 0.1;
            let _ = tch::no_grad(|| t.f_add_(&noise)).unwrap();
        }
    }
}

/// Configs built in Rust code (not parsed from PEFT) that PEFT must load back identically.
fn rust_written_configs() -> Vec<(&'static str, LoraConfig)> {
    use peft_core::peft_config::{LayerIndices, LayersPattern, TargetModules, TaskType};
    use peft_lora::{InitLoraWeights, LoraBias};
    let mut patterns = LoraConfig {
        target_modules: Some(TargetModules::list(["q_proj", "v_proj"])),
        r: 16,
        lora_alpha: 0.75.into(),
        ..LoraConfig::default()
    };
    patterns.rank_pattern.insert(r"layers\.0\..*".into(), 4);
    patterns.alpha_pattern.insert("v_proj".into(), 2.into());
    vec![
        ("defaults", LoraConfig::default()),
        ("patterns", patterns),
        (
            "layers",
            LoraConfig {
                target_modules: Some(TargetModules::list(["lin0"])),
                layers_to_transform: Some(LayerIndices::Many(vec![0, 3])),
                layers_pattern: Some(LayersPattern::One("layers".into())),
                exclude_modules: Some(TargetModules::Regex(".*head.*".into())),
                ..LoraConfig::default()
            },
        ),
        (
            "task",
            LoraConfig {
                common: peft_core::peft_config::PeftConfigCommon {
                    task_type: Some(TaskType::SeqCls),
                    base_model_name_or_path: Some("sentence-transformers/all-MiniLM-L6-v2".into()),
                    ..LoraConfig::default().common
                },
                target_modules: Some(TargetModules::Regex(r".*\.(query|value)".into())),
                bias: LoraBias::All,
                use_rslora: true,
                lora_dropout: 0.1,
                init_lora_weights: InitLoraWeights::Scheme("gaussian".into()),
                ..LoraConfig::default()
            },
        ),
        (
            // Partial sub-config dicts: written with every dataclass field, as PEFT holds them.
            "subconfigs",
            LoraConfig {
                kasa_config: Some(serde_json::json!({"gamma": 0.25})),
                eva_config: Some(serde_json::json!({"rho": 1.5})),
                init_lora_weights: InitLoraWeights::Scheme("eva".into()),
                ..LoraConfig::default()
            },
        ),
    ]
}

#[test]
fn peft_rs_saves_peft_loads_same_outputs() {
    let _rng = oracle::rng_guard();
    let root = fixtures();
    let work = tempfile::tempdir().unwrap();
    // case -> (our outputs per state, our saved config per adapter)
    type Ours = (BTreeMap<String, Tensor>, BTreeMap<String, Value>);
    let mut ours: BTreeMap<String, Ours> = BTreeMap::new();
    for case in manifest_list("cases") {
        let d = root.join("cases").join(&case);
        let meta = read_json(&d.join("case.json"));
        let model_name = meta["model"].as_str().unwrap();
        let (vs, model) = base_model(&d, model_name);
        let x = read_tensor(&d.join("input.safetensors"), "x");
        let names = strings(&meta["adapters"]);
        let active = strings(&meta["active"]);
        tch::manual_seed(11);
        let first = lora_config(&meta["configs"][&names[0]]);
        let mut peft = PeftModel::new(model, &vs, first.boxed(), &names[0]).unwrap();
        for n in &names[1..] {
            peft.add_adapter(n, lora_config(&meta["configs"][n]).boxed()).unwrap();
        }
        if let Some(mode) = meta["perturb"].as_str() {
            perturb(&vs, &peft, mode);
        }
        let out_dir = work.path().join(&case);
        std::fs::create_dir_all(&out_dir).unwrap();
        std::fs::copy(d.join("base.safetensors"), out_dir.join("base.safetensors")).unwrap();
        std::fs::copy(d.join("input.safetensors"), out_dir.join("input.safetensors")).unwrap();
        let merge = meta["merge"].as_bool().unwrap_or(true);
        assert_same_status(&mut peft, &active, &meta["status"], &case);
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
        let outputs = rust_outputs(peft, &x, &active, merge);
        assert_differs(&outputs["unmerged"], &outputs["disabled"], 1e-4, &format!("{case}: adapter effect"));
        ours.insert(case, (outputs, configs));
    }
    let written = rust_written_configs();
    for (name, config) in &written {
        let dir = work.path().join("configs").join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("adapter_config.json"), to_config_file_text(config)).unwrap();
    }

    oracle::run_script("check_load.py", &[work.path()]);

    for (case, (outputs, configs)) in &ours {
        let peft_out = read_all(&work.path().join(case).join("peft_outputs.safetensors"));
        assert_eq!(outputs.keys().collect::<Vec<_>>(), peft_out.keys().collect::<Vec<_>>(), "{case}: states");
        for (state, ours) in outputs {
            assert_close(ours, &peft_out[state], ATOL, &format!("{case}: {state} (PEFT loaded ours)"));
        }
        let peft_configs = read_json(&work.path().join(case).join("peft_configs.json"));
        for (adapter, ours) in configs {
            assert_same_config(ours, &peft_configs[adapter], true, &format!("{case}/{adapter}"));
        }
        oracle::record("rs->peft", case);
    }
    let peft_configs = read_json(&work.path().join("peft_configs.json"));
    for (name, config) in &written {
        assert_same_config(&config.to_json(), &peft_configs[*name], false, &format!("config {name}"));
        oracle::record("rs->peft config", name);
    }
}

#[test]
fn same_seed_gives_peft_identical_base_and_adapter_init() {
    let _rng = oracle::rng_guard();
    let root = fixtures();
    for case in manifest_list("init") {
        let d = root.join("init").join(&case);
        let meta = read_json(&d.join("case.json"));
        tch::manual_seed(0);
        let vs = VarStore::new(Device::Cpu);
        let model = TestModel::build(meta["model"].as_str().unwrap(), &vs).unwrap();
        let base = read_all(&d.join("base.safetensors"));
        for (k, v) in vs.variables() {
            assert_identical(&v, &base[&k], &format!("{case}: base init of {k}"));
        }
        let config = lora_config(&meta["config"]);
        let peft = PeftModel::new(model, &vs, config.boxed(), "default").unwrap();
        let file = read_all(&d.join("adapter").join("adapter_model.safetensors"));
        let ours: BTreeMap<String, Tensor> =
            peft.adapter_state_dict("default").unwrap().into_iter().collect();
        assert_eq!(ours.keys().collect::<Vec<_>>(), file.keys().collect::<Vec<_>>(), "{case}: adapter keys");
        for (k, v) in &ours {
            assert_identical(v, &file[k], &format!("{case}: adapter init of {k}"));
        }
        // Inits that rewrite the base (PiSSA, OLoRA) leave the same residual weights.
        let after = read_all(&d.join("base_after.safetensors"));
        let vars = vs.variables();
        assert_eq!(vars.len(), after.len(), "{case}: base parameters");
        for (k, v) in &after {
            assert_identical(&vars[k], v, &format!("{case}: base weight {k} after init"));
        }
        // The same tensors train (MiCA freezes B).
        let trainable: Vec<String> = peft
            .named_trainable_parameters()
            .into_iter()
            .map(|(k, _)| k)
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let peft_trainable: Vec<String> = strings(&read_json(&d.join("trainable.json")));
        assert_eq!(trainable, peft_trainable, "{case}: trainable parameters");
        // The config PEFT saved after injection (all-linear expanded, fan_in_fan_out corrected).
        let peft_saved = read_json(&d.join("adapter").join("adapter_config.json"));
        let ours_dir = tempfile::tempdir().unwrap();
        peft.save_pretrained(ours_dir.path(), &SaveOptions::default()).unwrap();
        let our_saved = read_json(&ours_dir.path().join("adapter_config.json"));
        assert_same_config(&our_saved, &peft_saved, false, &format!("{case}: saved config"));
        oracle::record("init", &case);
    }
}

#[test]
fn pissa_and_olora_convert_to_plain_lora_for_the_original_base_like_peft() {
    let _rng = oracle::rng_guard();
    let root = fixtures();
    let cases = manifest_list("conversion");
    assert!(cases.len() >= 4, "{cases:?}");
    for case in cases {
        let d = root.join("conversion").join(&case);
        let meta = read_json(&d.join("case.json"));
        let model_name = meta["model"].as_str().unwrap();
        tch::manual_seed(0);
        let vs = VarStore::new(Device::Cpu);
        let model = TestModel::build(model_name, &vs).unwrap();
        let mut peft = PeftModel::new(model, &vs, lora_config(&meta["config"]).boxed(), "default").unwrap();
        for (k, v) in read_all(&d.join("base_after.safetensors")) {
            assert_identical(&vs.variables()[&k], &v, &format!("{case}: residual {k}"));
        }
        let work = tempfile::tempdir().unwrap();
        let initial = work.path().join("initial");
        peft.save_pretrained(&initial, &SaveOptions::default()).unwrap();
        let ours = read_all(&initial.join("adapter_model.safetensors"));
        for (k, v) in read_all(&d.join("initial").join("adapter_model.safetensors")) {
            assert_identical(&ours[&k], &v, &format!("{case}: initial {k}"));
        }
        // "Train": take PEFT's perturbed weights.
        peft.load_adapter_weights("default", &d.join("trained").join("adapter_model.safetensors")).unwrap();
        let outputs = read_all(&d.join("outputs.safetensors"));
        let x = &outputs["x"];
        assert_close(
            &forward(peft.model(), x),
            &outputs["trained"],
            ATOL,
            &format!("{case}: trained output"),
        );
        let converted = work.path().join("converted");
        let opts = SaveOptions { convert_initial_adapter: Some(initial.clone()), ..Default::default() };
        peft.save_pretrained(&converted, &opts).unwrap();
        let theirs = read_all(&d.join("converted").join("adapter_model.safetensors"));
        let mine = read_all(&converted.join("adapter_model.safetensors"));
        assert_eq!(
            mine.keys().collect::<Vec<_>>(),
            theirs.keys().collect::<Vec<_>>(),
            "{case}: converted keys"
        );
        for (k, v) in &theirs {
            assert_identical(&mine[k], v, &format!("{case}: converted {k}"));
        }
        for (file, what) in [
            (converted.join("adapter_config.json"), "converted"),
            (initial.join("adapter_config.json"), "initial"),
        ] {
            // Lists are sets in PEFT (their order in the file follows string hashing).
            let peft_json = read_json(&d.join(what).join("adapter_config.json"));
            assert_same_config(&read_json(&file), &peft_json, false, &format!("{case}: {what} config"));
        }
        // The converted adapter on the original base reproduces the trained model.
        let vs2 = VarStore::new(Device::Cpu);
        tch::manual_seed(0);
        let original = TestModel::build(model_name, &vs2).unwrap();
        let (loaded, _) =
            PeftModel::from_pretrained(original, &vs2, &converted, LoadOptions::default()).unwrap();
        let out = forward(loaded.model(), x);
        assert_close(&out, &outputs["converted"], ATOL, &format!("{case}: converted on the original base"));
        assert_close(&out, &outputs["trained"], 1e-4, &format!("{case}: converted = trained"));
        oracle::record("conversion", &case);
    }
}

#[test]
fn training_steps_give_peft_identical_adapter_weights() {
    let _rng = oracle::rng_guard();
    let root = fixtures();
    for case in manifest_list("train") {
        let d = root.join("train").join(&case);
        // MonteCLoRA: PEFT redraws the sampler's noise after seeding and adds its regularizer to the loss.
        let monteclora = read_json(&d.join("case.json"))["extra_loss"].as_str() == Some("monteclora");
        let redraw = |p: &PeftModel<TestModel>| peft_lora::monteclora::redraw_noise(p).unwrap();
        let extra = |p: &PeftModel<TestModel>| peft_lora::monteclora::monteclora_loss(p, None).unwrap();
        let hooks = if monteclora {
            TrainingHooks { before: Some(&redraw), extra_loss: Some(&extra) }
        } else {
            TrainingHooks::default()
        };
        replay_training_case(&d, &case, &hooks);
        oracle::record("train", &case);
    }
}

#[test]
fn peft_written_configs_parse_and_rewrite_byte_identical() {
    let root = fixtures();
    let _link = peft_lora::PEFT_TYPE;
    for name in manifest_list("configs") {
        let dir = root.join("configs").join(&name);
        let text = std::fs::read_to_string(dir.join("adapter_config.json")).unwrap();
        let mut warnings = vec![];
        let config = peft_core::registry::load_config(&dir, &mut warnings).unwrap();
        assert!(warnings.is_empty(), "{name}: {warnings:?}");
        assert_eq!(
            to_config_file_text(config.as_ref()),
            text,
            "{name}: rewritten config differs from PEFT's file"
        );
        config.validate().unwrap_or_else(|e| panic!("{name}: {e}"));
        oracle::record("config", &name);
    }
}

#[test]
fn target_matching_agrees_with_peft() {
    let m = read_json(&fixtures().join("matching.json"));
    let names = strings(&m["names"]);
    for (i, case) in m["configs"].as_array().unwrap().iter().enumerate() {
        let config = lora_config(&case["config"]);
        let matcher = TargetMatcher::new(&config.target_spec()).unwrap();
        for name in &names {
            let ours = match matcher.check(name) {
                TargetMatch::Targeted { .. } => "targeted",
                TargetMatch::Excluded => "excluded",
                TargetMatch::NotTargeted => "not_targeted",
            };
            assert_eq!(ours, case["verdicts"][name], "config {} on `{name}`", case["config"]);
        }
        oracle::record("matching", &format!("targets-{i}"));
    }
    for (i, case) in m["patterns"].as_array().unwrap().iter().enumerate() {
        let map: indexmap::IndexMap<String, usize> =
            strings(&case["patterns"]).into_iter().enumerate().map(|(j, p)| (p, j)).collect();
        let pm = PatternMap::new("rank_pattern", &map).unwrap();
        for name in &names {
            let ours = pm.lookup(name).map(|(p, _)| p.to_string());
            let theirs = case["chosen"][name].as_str().map(str::to_string);
            assert_eq!(ours, theirs, "patterns {:?} on `{name}`", case["patterns"]);
        }
        oracle::record("matching", &format!("patterns-{i}"));
    }
}

#[test]
fn fp16_base_gets_fp32_adapters_like_peft_autocast() {
    let _rng = oracle::rng_guard();
    // PEFT's autocast_adapter_dtype: adapters on a half-precision base are kept in fp32; the forward
    // returns the base dtype.
    let vs = VarStore::new(Device::Cpu);
    let model = TestModel::build("MLP", &vs).unwrap();
    let mut vs = vs;
    vs.half();
    let config = LoraConfig {
        target_modules: Some(peft_core::peft_config::TargetModules::list(["lin0"])),
        init_lora_weights: peft_lora::InitLoraWeights::Bool(false),
        ..LoraConfig::default()
    };
    let peft = PeftModel::new(model, &vs, config.boxed(), "default").unwrap();
    for (k, t) in peft.adapter_state_dict("default").unwrap() {
        assert_eq!(t.kind(), Kind::Float, "{k}");
    }
    let TestModel::Mlp(mlp) = peft.model() else { unreachable!() };
    let x = Tensor::randn([3, 10], (Kind::Half, Device::Cpu));
    assert_eq!(mlp.lin0.forward(&x).kind(), Kind::Half);
}

#[test]
fn dora_eval_cache_follows_reloaded_weights() {
    let _rng = oracle::rng_guard();
    let d = fixtures().join("cases").join("dora_linear");
    let x = read_tensor(&d.join("input.safetensors"), "x");
    let expected = read_all(&d.join("outputs.safetensors"));
    let (vs, model) = base_model(&d, "MLP");
    let (mut peft, _) =
        PeftModel::from_pretrained(model, &vs, d.join("adapter"), LoadOptions::default()).unwrap();
    // Frozen and evaluating: the second forward reads the cached norm and must agree with the first.
    let first = forward(peft.model(), &x);
    assert_close(&first, &expected["unmerged"], ATOL, "first forward");
    assert_identical(&forward(peft.model(), &x), &first, "cached forward");
    // New magnitudes and factors in place: the cache must not hide them.
    let mut changed = BTreeMap::new();
    for (k, v) in read_all(&d.join("adapter").join("adapter_model.safetensors")) {
        changed.insert(k, v * 1.5);
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("adapter_model.safetensors");
    let tensors: Vec<(String, Tensor)> = changed.into_iter().collect();
    peft_core::io::write_safetensors(&file, &tensors).unwrap();
    peft.load_adapter_weights("default", &file).unwrap();
    let after = forward(peft.model(), &x);
    assert_differs(&after, &first, 1e-4, "reloaded weights change the output");
    let (vs2, model2) = base_model(&d, "MLP");
    let (mut fresh, _) =
        PeftModel::from_pretrained(model2, &vs2, d.join("adapter"), LoadOptions::default()).unwrap();
    fresh.load_adapter_weights("default", &file).unwrap();
    assert_identical(&after, &forward(fresh.model(), &x), "reloaded = fresh model with those weights");
}

#[test]
fn conversion_keeps_embedding_factors_and_modules_to_save_that_peft_drops() {
    let _rng = oracle::rng_guard();
    let config = || LoraConfig {
        r: 2,
        target_modules: Some(peft_core::peft_config::TargetModules::list(["emb", "lin0"])),
        modules_to_save: Some(vec!["lin1".into()]),
        init_lora_weights: peft_lora::InitLoraWeights::Scheme("pissa".into()),
        ..LoraConfig::default()
    };
    tch::manual_seed(0);
    let vs = VarStore::new(Device::Cpu);
    let original = VarStore::new(Device::Cpu);
    let model = TestModel::build("EmbMLP", &vs).unwrap();
    let mut original = original;
    let pristine = TestModel::build("EmbMLP", &original).unwrap();
    original.copy(&vs).unwrap();
    let peft = PeftModel::new(model, &vs, config().boxed(), "default").unwrap();
    let work = tempfile::tempdir().unwrap();
    let initial = work.path().join("initial");
    peft.save_pretrained(&initial, &SaveOptions::default()).unwrap();
    // "Train" every adapter tensor, the embedding factors and the modules_to_save copy included.
    for (_, mut t) in peft.adapter_var_store().variables() {
        let noise = Tensor::randn_like(&t) * 0.05;
        let _ = tch::no_grad(|| t.f_add_(&noise)).unwrap();
    }
    let x = Tensor::randint(30, [4, 6], (Kind::Int64, Device::Cpu));
    let trained = forward(peft.model(), &x);
    let converted = work.path().join("converted");
    let opts = SaveOptions { convert_initial_adapter: Some(initial), ..Default::default() };
    peft.save_pretrained(&converted, &opts).unwrap();
    let file = read_all(&converted.join("adapter_model.safetensors"));
    assert_eq!(file["base_model.model.emb.lora_embedding_A"].size(), [4, 30]);
    assert!(file.contains_key("base_model.model.lin1.weight"), "{:?}", file.keys());
    let (loaded, _) =
        PeftModel::from_pretrained(pristine, &original, &converted, LoadOptions::default()).unwrap();
    assert_close(&forward(loaded.model(), &x), &trained, 1e-4, "converted on the original base");
}

#[test]
fn add_weighted_adapter_matches_peft_for_every_combination_type() {
    use peft_lora::{Combination, WeightedAdapterOptions};
    let _rng = oracle::rng_guard();
    let root = fixtures();
    let mut seen = std::collections::BTreeSet::new();
    for case in manifest_list("weighted") {
        let d = root.join("weighted").join(&case);
        let meta = read_json(&d.join("case.json"));
        let (vs, model) = base_model(&d, meta["model"].as_str().unwrap());
        let names = strings(&meta["adapters"]);
        let adir = d.join("adapters");
        let (mut peft, _) = PeftModel::from_pretrained(
            model,
            &vs,
            &adir,
            LoadOptions { subfolder: Some(names[0].clone()), ..LoadOptions::named(names[0].clone()) },
        )
        .unwrap();
        for n in &names[1..] {
            peft.load_adapter(
                &adir,
                LoadOptions { subfolder: Some(n.clone()), ..LoadOptions::named(n.clone()) },
            )
            .unwrap();
        }
        let x = read_tensor(&d.join("input.safetensors"), "x");
        for i in 0..meta["combos"].as_i64().unwrap() {
            let new = format!("w{i}");
            let combo = read_json(&d.join(format!("{new}.json")));
            let what = format!("{case}/{new} ({})", combo["combination_type"]);
            let options = WeightedAdapterOptions {
                combination: Combination::parse(combo["combination_type"].as_str().unwrap()).unwrap(),
                svd_rank: combo["svd_rank"].as_i64(),
                svd_clamp: combo["svd_clamp"].as_f64(),
                svd_full_matrices: combo["svd_full_matrices"].as_bool().unwrap_or(true),
                density: combo["density"].as_f64(),
                majority_sign: peft_lora::merge_utils::MajoritySign::parse(
                    combo["majority_sign_method"].as_str().unwrap_or("total"),
                )
                .unwrap(),
                ..Default::default()
            };
            seen.insert(options.combination.name());
            let adapters = strings(&combo["adapters"]);
            let adapters: Vec<&str> = adapters.iter().map(String::as_str).collect();
            let weights: Vec<f64> =
                combo["weights"].as_array().unwrap().iter().map(|w| w.as_f64().unwrap()).collect();
            tch::manual_seed(100 + i);
            peft.add_weighted_adapter(&adapters, &weights, &new, &options).unwrap();
            let mut expected = read_all(&d.join(format!("{new}.safetensors")));
            let out = expected.remove("__output__").unwrap();
            let ours: BTreeMap<String, Tensor> = peft.adapter_state_dict(&new).unwrap().into_iter().collect();
            assert_eq!(ours.keys().collect::<Vec<_>>(), expected.keys().collect::<Vec<_>>(), "{what}: keys");
            for (k, v) in &expected {
                assert_close(&ours[k], v, 1e-6, &format!("{what}: {k}"));
            }
            let config = peft.config(&new).unwrap().to_json();
            for key in ["r", "lora_alpha", "target_modules", "rank_pattern", "alpha_pattern"] {
                let norm = |v: &Value| match v {
                    Value::Array(a) => {
                        let mut s: Vec<String> = a.iter().map(|x| x.to_string()).collect();
                        s.sort();
                        Value::from(s)
                    }
                    Value::Number(n) => Value::from(n.as_f64().unwrap()),
                    other => other.clone(),
                };
                assert_eq!(norm(&config[key]), norm(&combo["config"][key]), "{what}: config {key}");
            }
            peft.set_adapter(&new).unwrap();
            assert_close(&forward(peft.model(), &x), &out, ATOL, &format!("{what}: output"));
            peft.set_adapter(&names[0]).unwrap();
            peft.delete_adapter(&new).unwrap();
            oracle::record("weighted", &what);
        }
    }
    assert_eq!(seen.len(), Combination::ALL.len(), "every combination type is covered: {seen:?}");
}

#[test]
fn svd_combinations_of_conv1d_and_conv3d_need_the_flatten_option() {
    use peft_lora::{LoraLayer, WeightedAdapterOptions};
    let _rng = oracle::rng_guard();
    let vs = VarStore::new(Device::Cpu);
    let model = TestModel::build("ConvNet", &vs).unwrap();
    let cfg = |alpha: i64| LoraConfig {
        r: 2,
        lora_alpha: alpha.into(),
        target_modules: Some(peft_core::peft_config::TargetModules::list(["conv1d", "conv3d"])),
        init_lora_weights: peft_lora::InitLoraWeights::Bool(false),
        ..LoraConfig::default()
    };
    let mut peft = PeftModel::new(model, &vs, cfg(4).boxed(), "a").unwrap();
    peft.add_adapter("b", cfg(8).boxed()).unwrap();
    let err = peft.add_weighted_adapter(&["a", "b"], &[1.0, 0.5], "w", &Default::default()).unwrap_err();
    assert!(err.to_string().contains("flatten_all_convs"), "{err}");
    let opts = WeightedAdapterOptions { flatten_all_convs: true, svd_rank: Some(4), ..Default::default() };
    peft.add_weighted_adapter(&["a", "b"], &[1.0, 0.5], "w", &opts).unwrap();
    let TestModel::Conv(net) = peft.model() else { unreachable!() };
    for slots in [net.conv1d.slots(), net.conv3d.slots()] {
        let d = |a: &str| {
            slots.get(a).unwrap().as_any().downcast_ref::<LoraLayer>().unwrap().delta_weight().unwrap()
        };
        // Rank 4 holds the sum of two rank-2 deltas exactly.
        assert_close(&d("w"), &(d("a") + d("b") * 0.5), 1e-5, "flattened SVD combination");
    }
}

#[test]
fn hotswap_matches_peft_without_reallocating() {
    let _rng = oracle::rng_guard();
    let d = fixtures().join("hotswap");
    let names = manifest_list("hotswap");
    let outputs = read_all(&d.join("outputs.safetensors"));
    let x = &outputs["x"];
    let (vs, model) = base_model(&d, "MLP");
    let (mut peft, _) =
        PeftModel::from_pretrained(model, &vs, d.join(&names[0]), LoadOptions::default()).unwrap();
    peft.prepare_for_hotswap(8).unwrap();
    let TestModel::Mlp(mlp) = peft.model() else { unreachable!() };
    let a_ptr = mlp.lin0.slots().get("default").unwrap().named_tensors()[0].1.data_ptr();
    assert_close(
        &forward(peft.model(), x),
        &outputs[&format!("direct_{}", names[0])],
        ATOL,
        "padding keeps outputs",
    );
    for name in &names[1..] {
        peft.hotswap_adapter(d.join(name), "default").unwrap();
        let out = forward(peft.model(), x);
        assert_close(
            &out,
            &outputs[&format!("swapped_{name}")],
            ATOL,
            &format!("{name}: PEFT after hotswap"),
        );
        assert_close(
            &out,
            &outputs[&format!("direct_{name}")],
            ATOL,
            &format!("{name}: as if loaded directly"),
        );
        // Saving writes the swapped-in adapter at its own rank, as it was saved.
        let dir = tempfile::tempdir().unwrap();
        peft.save_pretrained(dir.path(), &SaveOptions::default()).unwrap();
        let ours = read_all(&dir.path().join("adapter_model.safetensors"));
        let theirs = read_all(&d.join(name).join("adapter_model.safetensors"));
        for (k, v) in &ours {
            match theirs.get(k) {
                Some(t) => assert_identical(v, t, &format!("{name}: saved {k}")),
                // Layers the new adapter does not target hold zeros.
                None => assert_eq!(v.abs().sum(Kind::Float).double_value(&[]), 0.0, "{name}: {k}"),
            }
        }
        oracle::record("hotswap", name);
    }
    let TestModel::Mlp(mlp) = peft.model() else { unreachable!() };
    let lin0 = mlp.lin0.slots().get("default").unwrap().named_tensors();
    assert_eq!(lin0[0].1.data_ptr(), a_ptr, "hotswapping never reallocates");
    assert_eq!(lin0[0].1.size(), [8, 10]);
    // Without padding, a larger adapter is refused and nothing changes.
    let (vs2, model2) = base_model(&d, "MLP");
    let (mut small, _) =
        PeftModel::from_pretrained(model2, &vs2, d.join(&names[0]), LoadOptions::default()).unwrap();
    let before = forward(small.model(), x);
    let err = small.hotswap_adapter(d.join(&names[3]), "default").unwrap_err();
    assert!(err.to_string().contains("prepare_for_hotswap"), "{err}");
    assert_identical(&forward(small.model(), x), &before, "a refused hotswap changes nothing");
}

#[test]
fn hotswap_uses_rank_patterns_dora_and_grouped_convolutions_correctly() {
    let _rng = oracle::rng_guard();
    let work = tempfile::tempdir().unwrap();
    tch::manual_seed(3);
    let vs = VarStore::new(Device::Cpu);
    let model = TestModel::build("ConvNet", &vs).unwrap();
    let base_file = work.path().join("base.safetensors");
    let named: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    peft_core::io::write_safetensors(&base_file, &named).unwrap();
    let cfg = |r: i64, pattern: Option<(&str, i64)>, dora: bool| {
        let mut c = LoraConfig {
            r,
            lora_alpha: 8.into(),
            use_dora: dora,
            target_modules: Some(peft_core::peft_config::TargetModules::list(["conv2d", "grouped", "lin"])),
            init_lora_weights: peft_lora::InitLoraWeights::Bool(false),
            ..LoraConfig::default()
        };
        if let Some((k, v)) = pattern {
            c.rank_pattern.insert(k.into(), v);
        }
        c
    };
    // PEFT 0.21.2's hotswap ignores rank_pattern when it recomputes the scaling; here the pattern counts.
    let variants = [
        ("first", cfg(4, None, false)),
        ("patterned", cfg(4, Some(("grouped", 2)), false)),
        ("big", cfg(6, None, false)),
    ];
    let x = Tensor::randn([3, 2, 6, 6], (Kind::Float, Device::Cpu));
    let mut direct = BTreeMap::new();
    for (name, c) in &variants {
        let vs_i = VarStore::new(Device::Cpu);
        let m = TestModel::build("ConvNet", &vs_i).unwrap();
        load_var_store(&vs_i, &base_file);
        let p = PeftModel::new(m, &vs_i, c.clone().boxed(), "default").unwrap();
        p.save_pretrained(work.path().join(name), &SaveOptions::default()).unwrap();
        direct.insert(*name, forward(p.model(), &x));
    }
    drop((vs, model));
    let vs2 = VarStore::new(Device::Cpu);
    let m = TestModel::build("ConvNet", &vs2).unwrap();
    load_var_store(&vs2, &base_file);
    let (mut peft, _) =
        PeftModel::from_pretrained(m, &vs2, work.path().join("first"), LoadOptions::default()).unwrap();
    peft.prepare_for_hotswap(6).unwrap();
    assert_close(&forward(peft.model(), &x), &direct["first"], 1e-5, "padded grouped conv");
    for name in ["patterned", "big", "first"] {
        peft.hotswap_adapter(work.path().join(name), "default").unwrap();
        assert_close(&forward(peft.model(), &x), &direct[name], 1e-5, &format!("hotswapped {name}"));
    }
    // DoRA adapters swap their magnitude too.
    let dvs = VarStore::new(Device::Cpu);
    let dm = TestModel::build("ConvNet", &dvs).unwrap();
    load_var_store(&dvs, &base_file);
    let dora_a = PeftModel::new(dm, &dvs, cfg(4, None, true).boxed(), "default").unwrap();
    dora_a.save_pretrained(work.path().join("dora_a"), &SaveOptions::default()).unwrap();
    let dvs2 = VarStore::new(Device::Cpu);
    let dm2 = TestModel::build("ConvNet", &dvs2).unwrap();
    load_var_store(&dvs2, &base_file);
    let dora_b = PeftModel::new(dm2, &dvs2, cfg(4, None, true).boxed(), "default").unwrap();
    for (k, mut t) in dora_b.adapter_var_store().variables() {
        if k.contains("magnitude") {
            let _ = tch::no_grad(|| t.f_mul_scalar_(1.3)).unwrap();
        }
    }
    dora_b.save_pretrained(work.path().join("dora_b"), &SaveOptions::default()).unwrap();
    let want = forward(dora_b.model(), &x);
    let dvs3 = VarStore::new(Device::Cpu);
    let dm3 = TestModel::build("ConvNet", &dvs3).unwrap();
    load_var_store(&dvs3, &base_file);
    let (mut swapped, _) =
        PeftModel::from_pretrained(dm3, &dvs3, work.path().join("dora_a"), LoadOptions::default()).unwrap();
    let _ = forward(swapped.model(), &x); // fills the DoRA eval cache
    swapped.hotswap_adapter(work.path().join("dora_b"), "default").unwrap();
    assert_close(&forward(swapped.model(), &x), &want, 1e-5, "DoRA hotswap");
    let err = swapped.hotswap_adapter(work.path().join("first"), "default").unwrap_err();
    assert!(err.to_string().contains("use_dora"), "{err}");
}

#[test]
fn mixed_batches_match_peft_and_each_row_alone() {
    let _rng = oracle::rng_guard();
    let root = fixtures();
    for case in manifest_list("mixed") {
        let d = root.join("mixed").join(&case);
        let meta = read_json(&d.join("case.json"));
        let (vs, model) = base_model(&d, meta["model"].as_str().unwrap());
        let names = strings(&meta["adapters"]);
        let adir = d.join("adapters");
        let sub = |n: &String| LoadOptions { subfolder: Some(n.clone()), ..LoadOptions::named(n.clone()) };
        let (mut peft, _) = PeftModel::from_pretrained(model, &vs, &adir, sub(&names[0])).unwrap();
        for n in &names[1..] {
            peft.load_adapter(&adir, sub(n)).unwrap();
        }
        let outputs = read_all(&d.join("outputs.safetensors"));
        let x = &outputs["x"];
        let rows = strings(&meta["rows"]);
        let rows: Vec<&str> = rows.iter().map(String::as_str).collect();
        let ra = peft.row_adapters(&rows).unwrap();
        let ctx = peft_core::ForwardCtx::eval().with_rows(&ra);
        let mixed = tch::no_grad(|| peft.model().forward_ctx(x, &ctx));
        assert_close(&mixed, &outputs["mixed"], ATOL, &format!("{case}: mixed batch vs PEFT"));
        // The cached stack gives the same numbers on a second pass.
        assert_identical(
            &tch::no_grad(|| peft.model().forward_ctx(x, &ctx)),
            &mixed,
            &format!("{case}: cached"),
        );
        // Each row equals the row run alone with its adapter.
        for (i, name) in rows.iter().enumerate() {
            let xi = x.narrow(0, i as i64, 1);
            let alone = if *name == peft_core::mixed::BASE {
                let disabled = peft.disable_adapters().unwrap();
                forward(&disabled, &xi)
            } else {
                peft.set_adapter(name).unwrap();
                forward(peft.model(), &xi)
            };
            assert_close(&mixed.narrow(0, i as i64, 1), &alone, ATOL, &format!("{case}: row {i} ({name})"));
        }
        oracle::record("mixed", &case);
    }
    // Unknown names and merged adapters are refused.
    let d = root.join("mixed").join("linear");
    let (vs, model) = base_model(&d, "MLP");
    let opts = LoadOptions { subfolder: Some("a".into()), ..LoadOptions::named("a") };
    let (mut peft, _) = PeftModel::from_pretrained(model, &vs, d.join("adapters"), opts).unwrap();
    assert!(peft.row_adapters(&["a", "zz"]).unwrap_err().to_string().contains("zz"));
    peft.merge_adapter(None, false).unwrap();
    assert!(peft.row_adapters(&["a"]).unwrap_err().to_string().contains("merged"));
}

#[test]
fn mixed_batches_with_dora_adapters_take_the_per_adapter_path() {
    let _rng = oracle::rng_guard();
    let vs = VarStore::new(Device::Cpu);
    let model = TestModel::build("EmbMLP", &vs).unwrap();
    let cfg = |dora: bool, r: i64| LoraConfig {
        r,
        use_dora: dora,
        target_modules: Some(peft_core::peft_config::TargetModules::list(["emb", "lin0", "lin1"])),
        init_lora_weights: peft_lora::InitLoraWeights::Bool(false),
        ..LoraConfig::default()
    };
    let mut peft = PeftModel::new(model, &vs, cfg(true, 4).boxed(), "dora").unwrap();
    peft.add_adapter("plain", cfg(false, 2).boxed()).unwrap();
    let x = Tensor::randint(30, [4, 5], (Kind::Int64, Device::Cpu));
    let rows = ["plain", "dora", peft_core::mixed::BASE, "dora"];
    let ra = peft.row_adapters(&rows).unwrap();
    let mixed = tch::no_grad(|| peft.model().forward_ctx(&x, &peft_core::ForwardCtx::eval().with_rows(&ra)));
    for (i, name) in rows.iter().enumerate() {
        let xi = x.narrow(0, i as i64, 1);
        let alone = if *name == peft_core::mixed::BASE {
            forward(&peft.disable_adapters().unwrap(), &xi)
        } else {
            peft.set_adapter(name).unwrap();
            forward(peft.model(), &xi)
        };
        assert_close(&mixed.narrow(0, i as i64, 1), &alone, ATOL, &format!("row {i} ({name})"));
    }
}

#[test]
fn arrow_routes_like_peft_and_follows_added_task_adapters() {
    let _rng = oracle::rng_guard();
    for case in manifest_list("arrow") {
        let d = fixtures().join("arrow").join(&case);
        let meta = read_json(&d.join("case.json"));
        let outputs = read_all(&d.join("outputs.safetensors"));
        let x = &outputs["x"];
        let (vs, model) = base_model(&d, "MLP");
        let tasks = [d.join("task_a"), d.join("task_b"), d.join("task_c")];
        let general = [d.join("general_a"), d.join("general_b")];
        tch::manual_seed(11);
        let mut peft =
            peft_lora::arrow::create_arrow_model(model, &vs, &tasks, meta["arrow_config"].clone(), &general)
                .unwrap();
        assert_eq!(peft.active_adapters(), ["arrow_router".to_string()]);
        assert_differs(
            &outputs["late"],
            &outputs["again"],
            1e-4,
            &format!("{case}: the added adapter routes"),
        );
        assert_close(&forward(peft.model(), x), &outputs["first"], ATOL, &format!("{case}: first forward"));
        assert_close(
            &forward(peft.model(), x),
            &outputs["again"],
            ATOL,
            &format!("{case}: cached prototypes"),
        );
        // The router's saved config (task and general adapter names included) equals PEFT's.
        let out = tempfile::tempdir().unwrap();
        let only_router =
            SaveOptions { selected_adapters: Some(vec!["arrow_router".into()]), ..Default::default() };
        peft.save_pretrained(out.path(), &only_router).unwrap();
        let config_of =
            |dir: &std::path::Path| read_json(&dir.join("arrow_router").join("adapter_config.json"));
        assert_same_config(
            &config_of(out.path()),
            &config_of(&d.join("saved")),
            false,
            &format!("{case}: router config"),
        );
        peft.load_adapter(d.join("task_late"), LoadOptions::named("task_3")).unwrap();
        assert_close(
            &forward(peft.model(), x),
            &outputs["late"],
            ATOL,
            &format!("{case}: after adding task_3"),
        );
        let err = peft.merge_adapter(None, false).unwrap_err();
        assert!(err.to_string().contains("Cannot merge an active Arrow router"), "{err}");
        oracle::record("arrow", &case);
    }
}

#[test]
fn activated_lora_matches_peft_offsets_and_outputs() {
    let _rng = oracle::rng_guard();
    let d = fixtures().join("alora");
    let meta = read_json(&d.join("case.json"));
    let outputs = read_all(&d.join("outputs.safetensors"));
    let x = &outputs["x"];
    let (vs, model) = base_model(&d, "EmbMLP");
    let sub = |n: &str| LoadOptions { subfolder: Some(n.into()), ..LoadOptions::named(n) };
    let (mut peft, _) = PeftModel::from_pretrained(model, &vs, d.join("adapters"), sub("a")).unwrap();
    peft.load_adapter(d.join("adapters"), sub("b")).unwrap();
    let as_offsets =
        |v: &Value| -> Vec<Option<i64>> { v.as_array().unwrap().iter().map(Value::as_i64).collect() };
    let values = peft.row_values(x, None).unwrap().unwrap();
    let offsets = values.get(peft_lora::alora::ALORA_OFFSETS).unwrap();
    assert_eq!(offsets, as_offsets(&meta["offsets"]).as_slice(), "calculate_alora_offsets");
    let ctx = peft_core::ForwardCtx::eval().with_row_values(&values);
    assert_close(
        &tch::no_grad(|| peft.model().forward_ctx(x, &ctx)),
        &outputs["alora"],
        ATOL,
        "aLoRA forward",
    );
    // Without offsets the adapter does nothing, as in PEFT.
    assert_close(&forward(peft.model(), x), &outputs["no_offsets"], ATOL, "no offsets");
    // A mixed batch: each aLoRA row from its own invocation, the LoRA rows everywhere.
    let rows = strings(&meta["rows"]);
    let rows: Vec<&str> = rows.iter().map(String::as_str).collect();
    let ra = peft.row_adapters(&rows).unwrap();
    let mixed_offsets = peft.row_values(x, Some(&ra)).unwrap().unwrap();
    assert_eq!(
        mixed_offsets.get(peft_lora::alora::ALORA_OFFSETS).unwrap(),
        as_offsets(&meta["mixed_offsets"]).as_slice(),
        "offsets per row adapter"
    );
    let ctx = peft_core::ForwardCtx::eval().with_rows(&ra).with_row_values(&mixed_offsets);
    assert_close(
        &tch::no_grad(|| peft.model().forward_ctx(x, &ctx)),
        &outputs["mixed"],
        ATOL,
        "aLoRA mixed batch",
    );
    let err = peft.merge_adapter(None, false).unwrap_err();
    assert!(err.to_string().contains("aLoRA"), "{err}");
    oracle::record("alora", "embedding model");
}

#[test]
fn eva_finds_peft_components_ranks_and_config() {
    use peft_lora::eva::{self, EvaConfig};
    let _rng = oracle::rng_guard();
    let root = fixtures().join("eva");
    let check = |case: &str, ours: &BTreeMap<String, Tensor>, peft_dir: &Path| {
        let expected = read_all(&peft_dir.join("eva.safetensors"));
        assert_eq!(
            ours.keys().collect::<Vec<_>>(),
            expected.keys().collect::<Vec<_>>(),
            "{case}: EVA layers"
        );
        for (k, v) in &expected {
            assert_close(&ours[k], v, 1e-6, &format!("{case}: EVA components of {k}"));
        }
    };
    // 1. DeepMLP, every position.
    let d = root.join("deep_mlp");
    let (vs, model) = base_model(&d, "DeepMLP");
    let cfg = lora_config(
        &serde_json::json!({"target_modules": ["lin0", "lin1", "out"], "r": 2, "init_lora_weights": "eva"}),
    );
    tch::manual_seed(1);
    let mut peft = PeftModel::new(model, &vs, cfg.boxed(), "default").unwrap();
    let batches: Vec<Tensor> =
        (0..6).map(|i| read_tensor(&d.join("batches.safetensors"), &format!("batch{i}"))).collect();
    let state = eva::get_eva_state_dict(
        &mut peft,
        "default",
        &batches,
        |m: &TestModel, x: &Tensor| {
            let _ = m.forward_ctx(x, &peft_core::ForwardCtx::eval());
            Ok(())
        },
        |_| None,
        1000,
    )
    .unwrap();
    check("deep_mlp", &state, &d);
    eva::initialize_lora_eva_weights(&mut peft, "default", state).unwrap();
    compare_saved(&peft, &d.join("adapter"), "deep_mlp");
    oracle::record("eva", "deep_mlp");

    // 2. A tiny Llama: q/k/v share their input (one PCA), padding and -100 labels are ignored.
    let d = root.join("llama");
    let loaded = peft_models::HfModel::load_dir(
        &d.join("model"),
        Some(peft_models::Task::CausalLm),
        &Default::default(),
    )
    .unwrap();
    let cfg = lora_config(&serde_json::json!({
        "task_type": "CAUSAL_LM", "target_modules": ["q_proj", "k_proj", "v_proj", "down_proj"], "r": 2,
        "init_lora_weights": "eva"
    }));
    let eva_cfg = EvaConfig::from_config(&cfg).unwrap();
    tch::manual_seed(1);
    let mut peft = PeftModel::new(loaded.model, &loaded.vs, cfg.boxed(), "default").unwrap();
    let file = read_all(&d.join("batches.safetensors"));
    let batches: Vec<(Tensor, Tensor, Tensor)> = (0..5)
        .map(|i| {
            let g = |k: &str| file[&format!("{k}{i}")].shallow_clone();
            (g("input_ids"), g("attention_mask"), g("labels"))
        })
        .collect();
    let state = eva::get_eva_state_dict(
        &mut peft,
        "default",
        &batches,
        |m: &peft_models::HfModel, (ids, mask, _): &(Tensor, Tensor, Tensor)| {
            m.forward(&peft_models::ModelInputs::with_mask(ids, Some(mask)), &peft_core::ForwardCtx::eval())
                .map(drop)
                .map_err(|e| peft_core::PeftError::Invalid(e.to_string()))
        },
        |(_, mask, labels)| Some(eva::language_modeling_mask(mask, Some(labels), &eva_cfg)),
        1000,
    )
    .unwrap();
    check("llama", &state, &d);
    eva::initialize_lora_eva_weights(&mut peft, "default", state).unwrap();
    compare_saved(&peft, &d.join("adapter"), "llama");
    oracle::record("eva", "llama");
}

/// Saves `peft` and compares tensors and config with the adapter PEFT saved in `dir`.
fn compare_saved<M: peft_core::Adaptable>(peft: &PeftModel<M>, dir: &Path, what: &str) {
    let out = tempfile::tempdir().unwrap();
    peft.save_pretrained(out.path(), &SaveOptions::default()).unwrap();
    let ours = read_all(&out.path().join("adapter_model.safetensors"));
    let theirs = read_all(&dir.join("adapter_model.safetensors"));
    assert_eq!(ours.keys().collect::<Vec<_>>(), theirs.keys().collect::<Vec<_>>(), "{what}: adapter keys");
    for (k, v) in &theirs {
        assert_close(&ours[k], v, 1e-6, &format!("{what}: {k}"));
    }
    let mut ours = read_json(&out.path().join("adapter_config.json"));
    let mut theirs = read_json(&dir.join("adapter_config.json"));
    // auto_mapping names the Python class; the rest must agree.
    ours["auto_mapping"] = Value::Null;
    theirs["auto_mapping"] = Value::Null;
    assert_same_config(&ours, &theirs, false, &format!("{what}: saved config"));
}

#[test]
fn lora_ga_matches_peft_from_the_same_training_steps() {
    use peft_lora::loraga;
    let _rng = oracle::rng_guard();
    let root = fixtures().join("lora_ga");
    let cases = manifest_list("lora_ga");
    assert!(cases.len() >= 4);
    for case in cases {
        let d = root.join(&case);
        let meta = read_json(&d.join("case.json"));
        let model_name = meta["model"].as_str().unwrap();
        tch::manual_seed(0);
        let vs = VarStore::new(Device::Cpu);
        let mut model = TestModel::build(model_name, &vs).unwrap();
        let mut config = lora_config(&meta["config"]);
        let data = read_all(&d.join("data.safetensors"));
        let (x, y) = (&data["x"], &data["y"]);
        tch::manual_seed(5);
        let grads = loraga::estimate_gradients(&mut model, &vs, &config, |m| {
            for _ in 0..2 {
                m.forward_t(x, true).nll_loss(y).backward();
            }
            Ok(())
        })
        .unwrap();
        config.init_data = grads;
        tch::manual_seed(6);
        let peft = PeftModel::new(model, &vs, config.boxed(), "default").unwrap();
        for (k, v) in read_all(&d.join("base_after.safetensors")) {
            assert_close(&vs.variables()[&k], &v, 1e-6, &format!("{case}: residual {k}"));
        }
        compare_saved(&peft, &d.join("adapter"), &case);
        oracle::record("lora_ga", &case);
    }
}

#[test]
fn corda_matches_peft_from_the_same_samples() {
    use peft_lora::corda;
    let _rng = oracle::rng_guard();
    let root = fixtures().join("corda");
    let cases = manifest_list("corda");
    assert!(cases.len() >= 3);
    for case in cases {
        let d = root.join(&case);
        let meta = read_json(&d.join("case.json"));
        let model_name = meta["model"].as_str().unwrap();
        tch::manual_seed(0);
        let vs = VarStore::new(Device::Cpu);
        let mut model = TestModel::build(model_name, &vs).unwrap();
        let mut config = lora_config(&meta["config"]);
        let samples = read_all(&d.join("samples.safetensors"));
        config.init_data = corda::preprocess_corda(&mut model, &config, |m| {
            for i in 0..3 {
                let _ = m.forward_t(&samples[&format!("x{i}")], false);
            }
            Ok(())
        })
        .unwrap();
        tch::manual_seed(9);
        let peft = PeftModel::new(model, &vs, config.boxed(), "default").unwrap();
        for (k, v) in read_all(&d.join("base_after.safetensors")) {
            assert_close(&vs.variables()[&k], &v, 1e-5, &format!("{case}: residual {k}"));
        }
        compare_saved(&peft, &d.join("adapter"), &case);
        oracle::record("corda", &case);
    }
}
