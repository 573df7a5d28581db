//! The steps every method's parity tests share: reading a generator's manifest, building the base model
//! of a case, computing the outputs in every state PEFT records, and comparing status reports and
//! configs with PEFT's.

use crate::compare::assert_close;
use crate::models::{load_var_store, TestModel};
use crate::oracle::read_json;
use peft_core::{AdapterConfig, PeftModel};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;
use tch::nn::{ModuleT, VarStore};
use tch::{Device, Tensor};

/// The names a generator lists under `key` in its `manifest.json`.
pub fn manifest_list(fixtures: &Path, key: &str) -> Vec<String> {
    let m = read_json(&fixtures.join("manifest.json"));
    m[key].as_array().map(|a| strings_of(a)).unwrap_or_default()
}

fn strings_of(a: &[Value]) -> Vec<String> {
    a.iter().map(|v| v.as_str().expect("a string").to_string()).collect()
}

/// A JSON array of strings.
pub fn strings(v: &Value) -> Vec<String> {
    strings_of(v.as_array().expect("an array"))
}

/// An evaluation-mode forward pass without gradients.
pub fn forward(m: &TestModel, x: &Tensor) -> Tensor {
    tch::no_grad(|| m.forward_t(x, false))
}

/// The base model of a case directory (`base.safetensors` holds its weights).
pub fn base_model(case_dir: &Path, model: &str) -> (VarStore, TestModel) {
    let vs = VarStore::new(Device::Cpu);
    let m = TestModel::build(model, &vs).unwrap();
    load_var_store(&vs, &case_dir.join("base.safetensors"));
    (vs, m)
}

/// A method's config from the keyword arguments the oracle passed to its config class (`peft_type`
/// added), through the registry, so any linked method works.
pub fn method_config(peft_type: &str, kwargs: &Value) -> Box<dyn AdapterConfig> {
    let mut map = kwargs.as_object().cloned().unwrap_or_default();
    map.insert("peft_type".into(), peft_type.into());
    let mut warnings = vec![];
    peft_core::registry::parse_config(map, "<oracle kwargs>", &mut warnings)
        .unwrap_or_else(|e| panic!("{peft_type} config from {kwargs}: {e}"))
}

/// The outputs in every state PEFT's `outputs_of` records (unmerged, disabled, merged,
/// unmerged_after_merge, merge_and_unload); consumes the model. Without `merge` (adapters PEFT cannot
/// merge) the unmerged states only — and merging must fail, leaving the model unchanged.
pub fn rust_outputs(
    mut peft: PeftModel<TestModel>,
    x: &Tensor,
    active: &[String],
    merge: bool,
) -> BTreeMap<String, Tensor> {
    let names: Vec<&str> = active.iter().map(String::as_str).collect();
    peft.set_adapters(&names).unwrap();
    let mut out = BTreeMap::new();
    out.insert("unmerged".to_string(), forward(peft.model(), x));
    {
        let disabled = peft.disable_adapters().unwrap();
        out.insert("disabled".to_string(), forward(&disabled, x));
    }
    if !merge {
        let err = peft.merge_adapter(None, false).unwrap_err();
        assert!(err.to_string().contains("not supported"), "{err}");
        // Nothing was merged: the model still computes the unmerged output.
        assert_close(&forward(peft.model(), x), &out["unmerged"], 0.0, "after a refused merge");
        return out;
    }
    peft.merge_adapter(None, false).unwrap();
    out.insert("merged".to_string(), forward(peft.model(), x));
    peft.unmerge_adapter().unwrap();
    out.insert("unmerged_after_merge".to_string(), forward(peft.model(), x));
    let bare = peft.merge_and_unload(None, false).unwrap();
    out.insert("merge_and_unload".to_string(), forward(&bare, x));
    out
}

/// [`rust_outputs`] for a case's `merge` value: `true` / `false` (absent: `true`), or `"no_unmerge"` for
/// methods that merge but cannot unmerge (OSF): the unmerged states, `merged` and `merge_and_unload`, and
/// unmerging must fail.
pub fn rust_outputs_for(
    mut peft: PeftModel<TestModel>,
    x: &Tensor,
    active: &[String],
    merge: &Value,
) -> BTreeMap<String, Tensor> {
    if merge.as_str() != Some("no_unmerge") {
        return rust_outputs(peft, x, active, merge.as_bool().unwrap_or(true));
    }
    let names: Vec<&str> = active.iter().map(String::as_str).collect();
    peft.set_adapters(&names).unwrap();
    let mut out = BTreeMap::new();
    out.insert("unmerged".to_string(), forward(peft.model(), x));
    {
        let disabled = peft.disable_adapters().unwrap();
        out.insert("disabled".to_string(), forward(&disabled, x));
    }
    peft.merge_adapter(None, false).unwrap();
    out.insert("merged".to_string(), forward(peft.model(), x));
    assert!(peft.unmerge_adapter().is_err(), "unmerging is refused");
    let bare = peft.merge_and_unload(None, false).unwrap();
    out.insert("merge_and_unload".to_string(), forward(&bare, x));
    out
}

/// Compares `get_layer_status` / `get_model_status` with PEFT's for the same adapters, `active` set.
pub fn assert_same_status(peft: &mut PeftModel<TestModel>, active: &[String], expected: &Value, case: &str) {
    let names: Vec<&str> = active.iter().map(String::as_str).collect();
    peft.set_adapters(&names).unwrap();
    let layers: Vec<Value> = peft
        .layer_status()
        .iter()
        .map(|l| {
            let mut v = l.to_json();
            v["name"] = Value::from(format!("model.{}", l.name)); // PEFT names modules from the tuner
            v
        })
        .collect();
    assert_eq!(Value::from(layers), expected["layers"], "{case}: get_layer_status");
    let mut model = peft.model_status().to_json();
    let mut theirs = expected["model"].clone();
    // The base model's type is a Python class there, a Rust type here.
    model["base_model_type"] = Value::Null;
    theirs["base_model_type"] = Value::Null;
    assert_eq!(model, theirs, "{case}: get_model_status");
}

/// Config keys PEFT holds as sets: their order in PEFT's `to_dict()` follows string hashing.
const SET_KEYS: &[&str] = &["target_modules", "exclude_modules", "feedforward_modules"];

/// Compares our config JSON with PEFT's `to_dict()` of the same config, key by key. Set-valued keys are
/// compared as sets and numbers by value (PEFT writes `8` and `8.0` for the same alpha). `saved`: PEFT
/// read it back from a saved adapter, so `inference_mode` is true there.
pub fn assert_same_config(ours: &Value, peft: &Value, saved: bool, what: &str) {
    let ours = ours.as_object().unwrap_or_else(|| panic!("{what}: our config is not an object"));
    let peft = peft.as_object().unwrap_or_else(|| panic!("{what}: PEFT config missing"));
    fn norm(k: &str, v: &Value) -> Value {
        match v {
            Value::Array(a) if SET_KEYS.contains(&k) && a.iter().all(Value::is_string) => {
                let mut s: Vec<String> = a.iter().filter_map(|x| x.as_str().map(String::from)).collect();
                s.sort();
                Value::from(s)
            }
            Value::Number(n) => n.as_f64().map_or(v.clone(), Value::from),
            Value::Array(a) => Value::Array(a.iter().map(|x| norm("", x)).collect()),
            Value::Object(m) => Value::Object(m.iter().map(|(k, x)| (k.clone(), norm(k, x))).collect()),
            _ => v.clone(),
        }
    }
    let keys: std::collections::BTreeSet<&String> = ours.keys().chain(peft.keys()).collect();
    for k in keys {
        if k == "inference_mode" && saved {
            assert_eq!(peft[k], Value::Bool(true), "{what}: PEFT loads saved adapters for inference");
            continue;
        }
        let a = ours.get(k).map(|v| norm(k, v));
        let b = peft.get(k).map(|v| norm(k, v));
        assert_eq!(a, b, "{what}: key `{k}` differs (ours vs PEFT)");
    }
}

/// Every variable of a var store, sorted by name (a deterministic order for seeded perturbations).
pub fn sorted_vars(vs: &VarStore) -> Vec<(String, Tensor)> {
    let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    vars
}

/// A hook run on the model being trained.
pub type ModelHook<'h, R> = &'h dyn Fn(&PeftModel<TestModel>) -> R;

/// What a training case adds to the plain loop (LoRA variants with their own noise and regularizer).
#[derive(Default)]
pub struct TrainingHooks<'h> {
    /// Runs once before the first step (MonteCLoRA redraws its sampler's noise, as PEFT's does).
    pub before: Option<ModelHook<'h, ()>>,
    /// Added to the loss of every step.
    pub extra_loss: Option<ModelHook<'h, Tensor>>,
}

/// Replays a training case of a generator (`case.json`: model, optimizer, lr, seed, steps and PEFT's
/// losses; `initial/` and `final/` adapters; `data.safetensors`): loads the initial adapter trainable,
/// runs the steps with tch's optimizer and the NLL loss, and checks every loss and every final tensor
/// against PEFT's. Tensors PEFT did not change (frozen ones saved with the adapter, VeRA's projections)
/// must be unchanged here too; at least one must train. Returns the case's `case.json`.
pub fn replay_training_case(d: &Path, case: &str, hooks: &TrainingHooks<'_>) -> Value {
    use crate::compare::assert_identical;
    use crate::models::{read_all, read_tensor};
    use tch::nn::OptimizerConfig;

    let meta = read_json(&d.join("case.json"));
    let (vs, model) = base_model(d, meta["model"].as_str().expect("case.json names the model"));
    let load = peft_core::LoadOptions::default().trainable();
    let (peft, report) = PeftModel::from_pretrained(model, &vs, d.join("initial"), load).unwrap();
    assert!(report.trainable, "{case}: the initial adapter loads trainable");
    let x = read_tensor(&d.join("data.safetensors"), "x");
    let y = read_tensor(&d.join("data.safetensors"), "y");
    let lr = meta["lr"].as_f64().expect("lr");
    let mut opt = match meta["optimizer"].as_str().expect("optimizer") {
        "sgd" => tch::nn::Sgd::default().build(peft.adapter_var_store(), lr).unwrap(),
        "adamw" => tch::nn::AdamW::default().build(peft.adapter_var_store(), lr).unwrap(),
        other => panic!("{case}: unknown optimizer {other}"),
    };
    tch::manual_seed(meta["seed"].as_i64().expect("seed"));
    if let Some(before) = hooks.before {
        before(&peft);
    }
    let mut losses = vec![];
    for _ in 0..meta["steps"].as_i64().expect("steps") {
        opt.zero_grad();
        let out = peft.forward_t(&x, true);
        let classes = *out.size().last().expect("logits have a class dimension");
        let mut loss = out.reshape([-1, classes]).nll_loss(&y.reshape([-1]));
        if let Some(extra) = hooks.extra_loss {
            loss += extra(&peft);
        }
        loss.backward();
        opt.step();
        losses.push(loss.double_value(&[]));
    }
    let peft_losses: Vec<f64> =
        meta["losses"].as_array().expect("losses").iter().filter_map(Value::as_f64).collect();
    assert_eq!(losses.len(), peft_losses.len(), "{case}: number of steps");
    for (i, (a, b)) in losses.iter().zip(&peft_losses).enumerate() {
        assert!((a - b).abs() < 1e-6, "{case}: loss at step {i}: {a} vs PEFT {b}");
    }
    let final_weights = read_all(&d.join("final").join("adapter_model.safetensors"));
    let initial = read_all(&d.join("initial").join("adapter_model.safetensors"));
    let mut trained = 0;
    for (k, v) in peft.adapter_state_dict("default").unwrap() {
        if final_weights[&k].equal(&initial[&k]) {
            assert_identical(&v, &initial[&k], &format!("{case}: frozen {k}"));
            continue;
        }
        trained += 1;
        assert_close(&v, &final_weights[&k], 1e-6, &format!("{case}: trained {k}"));
    }
    assert!(trained > 0, "{case}: nothing trained");
    meta
}
