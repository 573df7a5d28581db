//! The PeftModel operations with LoRA: invariants that hold whatever the weights.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{config, input, max_diff, model, out, peft, snapshot};
use peft_core::status::{RequiresGrad, Tristate};
use peft_core::MethodConfig;
use peft_core::{inspect_targets, LoadOptions, PeftModel, SaveOptions};
use peft_lora::{LoraBias, LoraConfig, LoraLayer};
use tch::Tensor;

#[test]
fn default_init_is_the_identity() {
    let (vs, m) = model();
    let x = input();
    let base = out(&m, &x);
    let cfg = LoraConfig {
        init_lora_weights: peft_lora::InitLoraWeights::Bool(true),
        ..config(&["lin0", "lin1", "lin2"])
    };
    let p = PeftModel::new(m, &vs, cfg.boxed(), "default").unwrap();
    assert!(out(p.model(), &x).equal(&base));
    // ... but it is not an empty adapter: A is random, B is zero.
    let sd: std::collections::BTreeMap<String, Tensor> =
        p.adapter_state_dict("default").unwrap().into_iter().collect();
    assert!(sd["base_model.model.lin0.lora_A.weight"].abs().sum(None).double_value(&[]) > 0.0);
    assert_eq!(sd["base_model.model.lin0.lora_B.weight"].abs().sum(None).double_value(&[]), 0.0);
}

#[test]
fn merged_output_matches_unmerged_and_unmerge_restores_the_weights() {
    let (vs, mut p) = peft(&["lin0", "lin1", "lin2"]);
    let x = input();
    let before = snapshot(&vs);
    let unmerged = out(p.model(), &x);
    p.merge_adapter(None, false).unwrap();
    assert!(p.is_merged());
    let merged = out(p.model(), &x);
    assert!(max_diff(&merged, &unmerged) < 1e-5, "{}", max_diff(&merged, &unmerged));
    assert!(snapshot(&vs).iter().zip(&before).any(|(a, b)| !a.1.equal(&b.1)), "merge changed base weights");
    // Merging again is a no-op (PEFT: "All adapters are already merged").
    p.merge_adapter(None, false).unwrap();
    assert!(max_diff(&out(p.model(), &x), &merged) == 0.0);
    p.unmerge_adapter().unwrap();
    for ((k, a), (_, b)) in snapshot(&vs).iter().zip(&before) {
        assert!(max_diff(a, b) < 1e-6, "{k} not restored");
    }
    // safe merge gives the same as unsafe merge.
    p.merge_adapter(None, true).unwrap();
    assert!(max_diff(&out(p.model(), &x), &merged) < 1e-6);
}

#[test]
fn disabling_in_a_scope_gives_the_base_output_and_restores_everything() {
    let (vs, m) = model();
    let x = input();
    let base = out(&m, &x);
    let mut p = PeftModel::new(m, &vs, config(&["lin0", "lin2"]).boxed(), "default").unwrap();
    let adapted = out(p.model(), &x);
    assert!(max_diff(&adapted, &base) > 1e-4);
    {
        let disabled = p.disable_adapters().unwrap();
        assert!(out(&disabled, &x).equal(&base));
    }
    assert!(!p.adapters_disabled());
    assert!(out(p.model(), &x).equal(&adapted));
    assert!(p.adapter_var_store().trainable_variables().iter().all(|t| t.requires_grad()));
    // A merged model disables to the base output too, and comes back unmerged.
    p.merge_adapter(None, false).unwrap();
    {
        let disabled = p.disable_adapters().unwrap();
        assert!(max_diff(&out(&disabled, &x), &base) < 1e-6);
    }
    assert!(!p.is_merged());
    assert!(max_diff(&out(p.model(), &x), &adapted) < 1e-6);
}

#[test]
fn set_adapter_switches_outputs_and_trainability_and_several_active_adapters_add_up() {
    let (vs, m) = model();
    let x = input();
    let base = out(&m, &x);
    let mut p = PeftModel::new(m, &vs, config(&["lin0", "lin2"]).boxed(), "a").unwrap();
    p.add_adapter("b", config(&["lin1", "lin2"]).boxed()).unwrap();
    assert_eq!(p.active_adapters(), ["a"], "a new adapter is not activated");
    let out_a = out(p.model(), &x);
    let status = p.model_status();
    assert_eq!(status.requires_grad["a"], RequiresGrad::True);
    assert_eq!(status.requires_grad["b"], RequiresGrad::False);

    p.set_adapter("b").unwrap();
    let out_b = out(p.model(), &x);
    assert!(max_diff(&out_a, &out_b) > 1e-4);
    let status = p.model_status();
    assert_eq!(status.requires_grad["a"], RequiresGrad::False);
    assert_eq!(status.requires_grad["b"], RequiresGrad::True);

    p.set_adapters(&["a", "b"]).unwrap();
    let both = out(p.model(), &x);
    assert!(max_diff(&both, &out_a) > 1e-4 && max_diff(&both, &out_b) > 1e-4);
    // Both adapters active equals both merged.
    p.merge_adapter(None, false).unwrap();
    assert!(max_diff(&out(p.model(), &x), &both) < 1e-5);
    assert_eq!(p.model_status().merged_adapters, Some(vec!["a".to_string(), "b".to_string()]));
    // Switching adapters unmerges first (with a warning), as PEFT does.
    p.set_adapter("a").unwrap();
    assert!(!p.is_merged());
    assert!(p.warnings().iter().any(|w| w.contains("unmerging")));
    assert!(max_diff(&out(p.model(), &x), &out_a) < 1e-5);
    assert!(max_diff(&out(p.model(), &x), &base) > 1e-4);
}

#[test]
fn delete_adapter_removes_layers_and_tensors_and_picks_the_next_active() {
    let (_vs, mut p) = peft(&["lin0"]);
    p.add_adapter("other", config(&["lin1", "lin2"]).boxed()).unwrap();
    let vars_before = p.adapter_var_store().variables().len();
    p.merge_adapter(None, false).unwrap();
    assert!(matches!(p.delete_adapter("default"), Err(peft_core::PeftError::AdapterMerged { .. })));
    p.unmerge_adapter().unwrap();
    p.delete_adapter("default").unwrap();
    assert_eq!(p.adapter_names(), ["other"]);
    assert_eq!(p.active_adapters(), ["other"]);
    assert!(p.warnings().iter().any(|w| w.contains("`other` is now active")), "{:?}", p.warnings());
    assert_eq!(p.adapter_var_store().variables().len(), vars_before - 2);
    assert_eq!(p.adapter_var_store().trainable_variables().len(), vars_before - 2);
    // The rebuilt store holds the layers' own tensors: a step through it moves what the layers use.
    let kept = p.adapter_var_store().variables();
    assert!(kept.values().all(|t| t.requires_grad()));
    let x = input();
    let before = out(p.model(), &x);
    let mut opt =
        tch::nn::OptimizerConfig::build(tch::nn::Sgd::default(), p.adapter_var_store(), 0.5).unwrap();
    opt.backward_step(&tch::nn::ModuleT::forward_t(p.model(), &x, true).sum(None));
    assert!(max_diff(&out(p.model(), &x), &before) > 1e-4);
    assert!(p.targeted_modules("default").is_empty());
    p.delete_adapter("other").unwrap();
    assert!(p.active_adapters().is_empty());
    assert_eq!(p.adapter_var_store().variables().len(), 0);
}

#[test]
fn save_puts_non_default_adapters_in_subfolders_and_selected_adapters_limits_it() {
    let (vs, mut p) = peft(&["lin0"]);
    p.add_adapter("other", config(&["lin2"]).boxed()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    p.save_pretrained(dir.path(), &SaveOptions::default()).unwrap();
    for f in [
        "adapter_config.json",
        "adapter_model.safetensors",
        "other/adapter_config.json",
        "other/adapter_model.safetensors",
    ] {
        assert!(dir.path().join(f).is_file(), "{f}");
    }
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| !n.starts_with('.')), "temporary files left: {names:?}");
    let header =
        peft_core::io::read_safetensors_header(&dir.path().join("other/adapter_model.safetensors")).unwrap();
    let keys: Vec<&str> = header.iter().map(|(k, _, _)| k.as_str()).collect();
    assert_eq!(keys, ["base_model.model.lin2.lora_A.weight", "base_model.model.lin2.lora_B.weight"]);
    let cfg = std::fs::read_to_string(dir.path().join("adapter_config.json")).unwrap();
    assert!(cfg.contains("\"inference_mode\": true"), "PEFT always saves inference_mode=true");

    let only = tempfile::tempdir().unwrap();
    p.save_pretrained(
        only.path(),
        &SaveOptions { selected_adapters: Some(vec!["default".into()]), ..Default::default() },
    )
    .unwrap();
    assert!(!only.path().join("other").exists());

    // Both load back, the second from its subfolder.
    let x = input();
    p.set_adapter("other").unwrap();
    let expected = out(p.model(), &x);
    let (vs2, m2) = model();
    let mut vs2 = vs2;
    vs2.copy(&vs).unwrap();
    let (mut q, _) = PeftModel::from_pretrained(m2, &vs2, dir.path(), LoadOptions::default()).unwrap();
    let report = q
        .load_adapter(
            dir.path(),
            LoadOptions { subfolder: Some("other".into()), ..LoadOptions::named("other").trainable() },
        )
        .unwrap();
    assert!(report.trainable);
    assert_eq!(report.tensors_loaded, 2);
    q.set_adapter("other").unwrap();
    assert!(out(q.model(), &x).equal(&expected));
}

#[test]
fn parameter_counts_follow_peft() {
    let (_vs, p) = peft(&["lin0", "lin1"]);
    // base: lin0 6*8+8, lin1 8*8, lin2 8*3+3 = 147; LoRA r=4: lin0 4*6+8*4, lin1 4*8+8*4 = 120.
    assert_eq!(p.num_parameters(), (120, 267));
    assert_eq!(
        p.trainable_parameters_line(),
        "trainable params: 120 || all params: 267 || trainable%: 44.9438"
    );
}

#[test]
fn bias_modes_train_and_save_the_right_biases() {
    let (vs, m) = model();
    let cfg = LoraConfig { bias: LoraBias::All, ..config(&["lin0"]) };
    let p = PeftModel::new(m, &vs, cfg.boxed(), "default").unwrap();
    let keys: Vec<String> = p.adapter_state_dict("default").unwrap().into_iter().map(|(k, _)| k).collect();
    assert!(keys.contains(&"base_model.model.lin0.base_layer.bias".to_string()), "{keys:?}");
    assert!(keys.contains(&"base_model.model.lin2.bias".to_string()), "{keys:?}");
    assert!(vs.variables()["lin2.bias"].requires_grad());
    assert!(!vs.variables()["lin2.weight"].requires_grad());
    // bias + lora params: lin0 bias 8 + lin2 bias 3 + LoRA 56.
    assert_eq!(p.num_parameters().0, 8 + 3 + 56);

    let (vs, m) = model();
    let cfg = LoraConfig { bias: LoraBias::LoraOnly, ..config(&["lin0"]) };
    let p = PeftModel::new(m, &vs, cfg.boxed(), "default").unwrap();
    let keys: Vec<String> = p.adapter_state_dict("default").unwrap().into_iter().map(|(k, _)| k).collect();
    assert!(keys.contains(&"base_model.model.lin0.base_layer.bias".to_string()));
    assert!(!keys.iter().any(|k| k.contains("lin2")), "{keys:?}");
    assert!(!vs.variables()["lin2.bias"].requires_grad());
}

#[test]
fn only_adapter_weights_are_trainable_and_receive_gradients() {
    let (vs, p) = peft(&["lin0", "lin2"]);
    let x = input();
    let loss = tch::nn::ModuleT::forward_t(p.model(), &x, true).sum(None);
    loss.backward();
    for (k, t) in vs.variables() {
        assert!(!t.requires_grad(), "base {k} must be frozen");
        assert!(!t.grad().defined(), "base {k} got a gradient");
    }
    for (k, t) in p.adapter_var_store().variables() {
        assert!(t.grad().defined(), "{k} got no gradient");
    }
}

#[test]
fn layer_and_model_status_describe_the_adapters() {
    let (_vs, mut p) = peft(&["lin0", "lin2"]);
    p.add_adapter("b", config(&["lin2"]).boxed()).unwrap();
    let layers = p.layer_status();
    assert_eq!(layers.iter().map(|l| l.name.as_str()).collect::<Vec<_>>(), ["lin0", "lin2"]);
    assert_eq!(layers[0].module_type, "lora.Linear");
    assert_eq!(layers[1].available_adapters, ["b", "default"]);
    assert_eq!(layers[1].active_adapters, ["default"]);
    assert_eq!(layers[1].devices["b"], ["cpu"]);
    p.merge_adapter(None, false).unwrap();
    let s = p.model_status();
    assert_eq!(s.adapter_model_type, "LoraModel");
    assert_eq!(s.num_adapter_layers, 2);
    assert_eq!(s.enabled, Tristate::True);
    assert_eq!(s.merged_adapters, Some(vec!["default".to_string()]));
    assert_eq!(s.peft_types["b"], "LORA");
    assert_eq!(s.base_model_type, "Mlp");
}

#[test]
fn inspect_targets_is_a_dry_run() {
    let (_vs, m) = model();
    let cfg = LoraConfig {
        target_modules: Some(peft_core::peft_config::TargetModules::Regex("all-linear".into())),
        exclude_modules: Some(peft_core::peft_config::TargetModules::list(["lin1", "nothing"])),
        ..LoraConfig::default()
    };
    let report = inspect_targets(&m, &cfg).unwrap();
    assert_eq!(report.targeted, ["lin0", "lin2"]);
    assert_eq!(report.excluded, ["lin1"]);
    assert_eq!(report.unused_excludes, ["nothing"]);
    assert!(m.lin0.slots().is_empty(), "nothing was attached");
    let typo = config(&["lin0", "lni1"]);
    assert_eq!(inspect_targets(&m, &typo).unwrap().unmatched_entries, ["lni1"]);
}

#[test]
fn rank_alpha_patterns_and_rslora_set_each_layers_scaling() {
    let (vs, m) = model();
    let mut cfg = LoraConfig { use_rslora: true, ..config(&["lin0", "lin1", "lin2"]) };
    cfg.rank_pattern.insert("lin1".into(), 2);
    cfg.alpha_pattern.insert("lin2".into(), 16.into());
    let p = PeftModel::new(m, &vs, cfg.boxed(), "default").unwrap();
    let scaling = |l: &peft_core::nn::Linear| {
        let t = l.slots().get("default").unwrap().as_any().downcast_ref::<LoraLayer>().unwrap();
        (t.r, t.scaling)
    };
    assert_eq!(scaling(&p.model().lin0), (4, 8.0 / 2.0));
    assert_eq!(scaling(&p.model().lin1), (2, 8.0 / 2f64.sqrt()));
    assert_eq!(scaling(&p.model().lin2), (4, 16.0 / 2.0));
}

#[test]
fn merge_and_unload_returns_a_plain_model_with_merged_weights() {
    let (vs, p) = peft(&["lin0", "lin1"]);
    let x = input();
    let adapted = out(p.model(), &x);
    let bare = p.merge_and_unload(None, true).unwrap();
    assert!(bare.lin0.slots().is_empty() && bare.lin1.slots().is_empty());
    assert!(max_diff(&out(&bare, &x), &adapted) < 1e-5);
    // The caller's var store holds the merged weights: save it and they are a plain model.
    assert!(vs.variables().keys().all(|k| !k.contains("lora")));
}

#[test]
fn modules_to_save_trains_a_copy_saved_under_peft_keys() {
    let (vs, m) = model();
    let x = input();
    let cfg = LoraConfig { modules_to_save: Some(vec!["lin2".into()]), ..config(&["lin0"]) };
    let mut p = PeftModel::new(m, &vs, cfg.boxed(), "default").unwrap();
    let keys: Vec<String> = p.adapter_state_dict("default").unwrap().into_iter().map(|(k, _)| k).collect();
    assert_eq!(
        keys,
        [
            "base_model.model.lin0.lora_A.weight",
            "base_model.model.lin0.lora_B.weight",
            "base_model.model.lin2.weight",
            "base_model.model.lin2.bias",
        ]
    );
    // The copy trains, the original stays frozen.
    let copy = p.adapter_var_store().variables()["base_model.model.lin2.modules_to_save.default.weight"]
        .shallow_clone();
    assert!(copy.requires_grad());
    assert!(!vs.variables()["lin2.weight"].requires_grad());
    let before = out(p.model(), &x);
    let _ = tch::no_grad(|| copy.shallow_clone().f_add_(&(Tensor::ones_like(&copy) * 0.3))).unwrap();
    let changed = out(p.model(), &x);
    assert!(max_diff(&before, &changed) > 1e-3, "the copy is used in forward");
    {
        let disabled = p.disable_adapters().unwrap();
        let base_only = out(&disabled, &x);
        assert!(max_diff(&base_only, &changed) > 1e-3, "disabled adapters use the original");
    }
    // Merging writes the copy into the base; unmerging restores the original exactly.
    let orig = vs.variables()["lin2.weight"].detach().copy();
    p.merge_adapter(None, false).unwrap();
    assert!(max_diff(&out(p.model(), &x), &changed) < 1e-5);
    p.unmerge_adapter().unwrap();
    assert!(vs.variables()["lin2.weight"].equal(&orig));
    // Round trip through save/load (after unmerge, lin0's base is back up to float rounding).
    let expected = out(p.model(), &x);
    assert!(max_diff(&expected, &changed) < 1e-5);
    let dir = tempfile::tempdir().unwrap();
    p.save_pretrained(dir.path(), &SaveOptions::default()).unwrap();
    let (vs2, m2) = model();
    let mut vs2 = vs2;
    vs2.copy(&vs).unwrap();
    let (q, _) = PeftModel::from_pretrained(m2, &vs2, dir.path(), LoadOptions::default()).unwrap();
    assert!(out(q.model(), &x).equal(&expected));
    assert_eq!(q.layer_status()[1].module_type, "ModulesToSaveWrapper");
}

#[test]
fn sequence_classification_adds_the_heads_to_modules_to_save_as_peft_does() {
    #[derive(Debug, peft_core::Adaptable)]
    struct Classifier {
        dense: peft_core::nn::Linear,
        classifier: peft_core::nn::Linear,
    }
    let vs = tch::nn::VarStore::new(tch::Device::Cpu);
    let m = Classifier {
        dense: peft_core::nn::linear(vs.root() / "dense", 4, 4, Default::default()).unwrap(),
        classifier: peft_core::nn::linear(vs.root() / "classifier", 4, 2, Default::default()).unwrap(),
    };
    let mut cfg = LoraConfig {
        target_modules: Some(peft_core::peft_config::TargetModules::Regex("all-linear".into())),
        ..LoraConfig::default()
    };
    cfg.common.task_type = Some(peft_core::peft_config::TaskType::SeqCls);
    let p = PeftModel::new(m, &vs, cfg.boxed(), "default").unwrap();
    let saved = p.config("default").unwrap().to_json();
    assert_eq!(saved["modules_to_save"], serde_json::json!(["classifier", "score"]));
    // all-linear then excludes the head: only `dense` gets LoRA, `classifier` is trained in full.
    assert_eq!(p.targeted_modules("default"), ["dense", "classifier"]);
    let types: Vec<String> = p.layer_status().into_iter().map(|l| l.module_type).collect();
    assert_eq!(types, ["lora.Linear", "ModulesToSaveWrapper"]);
    // `score` matches nothing here, as one of PEFT's two head names always does: no warning, as in PEFT.
    assert!(!p.warnings().iter().any(|w| w.contains("score")), "{:?}", p.warnings());
}

#[test]
fn missing_target_modules_use_pefts_defaults_for_transformers_models() {
    #[derive(Debug, peft_core::Adaptable)]
    struct Attn {
        q_proj: peft_core::nn::Linear,
        k_proj: peft_core::nn::Linear,
        v_proj: peft_core::nn::Linear,
    }
    #[derive(Debug)]
    struct Llamaish(Attn);
    impl peft_core::Adaptable for Llamaish {
        fn visit_layers(&self, f: &mut dyn FnMut(&dyn peft_core::AdaptableLayer)) {
            self.0.visit_layers(f)
        }
        fn visit_layers_mut(
            &mut self,
            f: &mut dyn FnMut(&mut dyn peft_core::AdaptableLayer) -> peft_core::Result<()>,
        ) -> peft_core::Result<()> {
            self.0.visit_layers_mut(f)
        }
        fn model_type(&self) -> Option<String> {
            Some("llama".into())
        }
    }
    let vs = tch::nn::VarStore::new(tch::Device::Cpu);
    let lin = |n: &str| peft_core::nn::linear(vs.root() / "self_attn" / n, 4, 4, Default::default()).unwrap();
    let m = Llamaish(Attn { q_proj: lin("q_proj"), k_proj: lin("k_proj"), v_proj: lin("v_proj") });
    let p = PeftModel::new(m, &vs, LoraConfig::default().boxed(), "default").unwrap();
    assert_eq!(p.targeted_modules("default"), ["self_attn.q_proj", "self_attn.v_proj"]);
    // A model without a model_type gets a clear error instead.
    let (vs, m) = model();
    let err = PeftModel::new(m, &vs, LoraConfig::default().boxed(), "default").unwrap_err();
    assert!(err.to_string().contains("target_modules"), "{err}");
}
