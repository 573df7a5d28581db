//! VB-LoRA behaviour beyond the parity matrix: one bank per adapter shared by its layers (saved once,
//! trained by all of them), merged == unmerged, the layers, sizes and options PEFT refuses or peft-rs does
//! not implement, bad files.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use peft_core::peft_config::TargetModules;
use peft_core::{AdapterConfig, LoadOptions, PeftModel, SaveOptions};
use peft_testkit::nets::{LayerZoo, Quantized};
use peft_testkit::{
    assert_mixed_batches_refused, assert_safe_merge_refuses_nan, assert_shape_mismatch,
    assert_unsupported_layer, load_error, max_diff, randomize, rng_lock, save_with_config_edit, tuner,
};
use peft_vblora::{MethodConfig, VbloraConfig, VbloraLayer};
use tch::nn::ModuleT;
use tch::{Device, Kind, Tensor};

fn config(targets: &[&str]) -> VbloraConfig {
    VbloraConfig {
        r: 2,
        num_vectors: 6,
        vector_length: 2,
        target_modules: Some(TargetModules::list(targets.iter().copied())),
        ..VbloraConfig::default()
    }
}

#[test]
fn the_layers_of_an_adapter_share_one_bank_saved_once_and_trained_by_all() {
    let _rng = rng_lock();
    let (vs, zoo) = LayerZoo::seeded(0);
    let mut peft = PeftModel::new(zoo, &vs, config(&["lin0", "lin1"]).boxed(), "a").unwrap();
    peft.add_adapter("b", config(&["lin0"]).boxed()).unwrap();
    let bank = |layer: &peft_core::AdapterSlots, adapter: &str| {
        tuner::<VbloraLayer>(layer, adapter).tensors().2.shallow_clone()
    };
    let (a0, a1) = (bank(peft.model().lin0.slots(), "a"), bank(peft.model().lin1.slots(), "a"));
    assert_eq!(a0.data_ptr(), a1.data_ptr(), "one bank for the adapter's layers");
    assert_ne!(a0.data_ptr(), bank(peft.model().lin0.slots(), "b").data_ptr(), "each adapter has its own");
    let keys: Vec<String> = peft.adapter_state_dict("a").unwrap().into_iter().map(|(k, _)| k).collect();
    assert_eq!(
        keys.iter().filter(|k| k.contains("vector_bank")).collect::<Vec<_>>(),
        ["base_model.vblora_vector_bank"]
    );
    // Logits 2·5·6 + 10·2·6 (lin0) and 2·10·6 + 1·2·6 (lin1), plus one 6 × 2 bank.
    peft.set_adapter("a").unwrap();
    assert_eq!(peft.num_parameters().0, (60 + 120) + (120 + 12) + 12);
    // Both layers' gradients reach the shared bank.
    tch::manual_seed(1);
    let x = Tensor::randn([3, 10], (Kind::Float, Device::Cpu));
    peft.model().lin0.forward_t(&x, true).sum(Kind::Float).backward();
    let from_lin0 = a0.grad().copy();
    peft.model()
        .lin1
        .forward_t(&Tensor::randn([3, 20], (Kind::Float, Device::Cpu)), true)
        .sum(Kind::Float)
        .backward();
    assert!(from_lin0.abs().sum(Kind::Float).double_value(&[]) > 0.0);
    assert!(max_diff(&a0.grad(), &from_lin0) > 0.0, "lin1 adds to the same bank's gradient");
}

#[test]
fn merged_equals_unmerged_and_the_delta_is_the_composed_lora() {
    let _rng = rng_lock();
    let (vs, zoo) = LayerZoo::seeded(0);
    let mut peft = PeftModel::new(zoo, &vs, config(&["lin0", "lin1", "gpt2"]).boxed(), "default").unwrap();
    randomize(&peft, 0.3);
    tch::manual_seed(2);
    let x = Tensor::randn([4, 10], (Kind::Float, Device::Cpu));
    let layer = tuner::<VbloraLayer>(peft.model().lin0.slots(), "default");
    let (a, b) = tch::no_grad(|| layer.factors());
    assert_eq!((a.size(), b.size()), (vec![2, 10], vec![20, 2]));
    let base = peft.model().lin0.base();
    let want = x.linear(&base.weight, base.bias.as_ref()) + x.linear::<Tensor>(&b.matmul(&a), None);
    assert!(max_diff(&tch::no_grad(|| peft.model().lin0.forward_t(&x, false)), &want) < 1e-5);
    let gx = Tensor::randn([4, 10], (Kind::Float, Device::Cpu));
    let unmerged = tch::no_grad(|| (peft.forward_t(&x, false), peft.model().gpt2.forward_t(&gx, false)));
    peft.merge_adapter(None, true).unwrap();
    let merged = tch::no_grad(|| (peft.forward_t(&x, false), peft.model().gpt2.forward_t(&gx, false)));
    assert!(max_diff(&merged.0, &unmerged.0) < 1e-5 && max_diff(&merged.1, &unmerged.1) < 1e-5);
}

#[test]
fn layers_sizes_and_options_vblora_cannot_use_are_refused() {
    let _rng = rng_lock();
    for target in ["emb", "conv1x1"] {
        let (vs, zoo) = LayerZoo::seeded(0);
        let err = PeftModel::new(zoo, &vs, config(&[target]).boxed(), "default").unwrap_err();
        assert_unsupported_layer(&err, target, "VBLORA", "`torch.nn.Linear`");
    }
    let (vs, zoo) = LayerZoo::seeded(0);
    let cfg = VbloraConfig { vector_length: 4, ..config(&["lin0"]) };
    let err = PeftModel::new(zoo, &vs, cfg.boxed(), "default").unwrap_err();
    assert!(err.to_string().contains("`in_features` 10 must be divisible by `vector_length` 4"), "{err}");
    let err = VbloraConfig { topk: 7, ..config(&["lin0"]) }.validate().unwrap_err();
    assert!(err.to_string().contains("`topk` 7"), "{err}");
    // Quantized bases take the adapter (the forward adds to the 4-bit layer's output).
    let (vs, q) = Quantized::seeded(1, None);
    let cfg = VbloraConfig { vector_length: 4, ..config(&["proj"]) };
    let peft = PeftModel::new(q, &vs, cfg.boxed(), "default").unwrap();
    assert!(peft.model().proj.slots().get("default").is_some());
}

#[test]
fn safe_merges_files_of_another_bank_and_mixed_batches() {
    let _rng = rng_lock();
    let (vs, zoo) = LayerZoo::seeded(0);
    let mut peft = PeftModel::new(zoo, &vs, config(&["lin0"]).boxed(), "default").unwrap();
    assert_mixed_batches_refused(&peft, "VBLORA");
    let dir = save_with_config_edit(&peft, "\"num_vectors\": 6", "\"num_vectors\": 4");
    let (vs2, zoo2) = LayerZoo::seeded(0);
    let err = load_error(zoo2, &vs2, dir.path());
    assert_shape_mismatch(&err, "base_model.model.lin0.vblora_logits_A", &[2, 5, 4], &[2, 5, 6]);
    assert_safe_merge_refuses_nan(&mut peft, |m| m.lin0.base().weight.shallow_clone());
}

#[test]
fn a_top_k_only_file_is_small_reloads_to_the_same_outputs_and_refuses_training() {
    let _rng = rng_lock();
    let (vs, zoo) = LayerZoo::seeded(0);
    let cfg = VbloraConfig { topk: 3, save_only_topk_weights: true, ..config(&["lin0", "lin1"]) };
    let peft = PeftModel::new(zoo, &vs, cfg.boxed(), "default").unwrap();
    randomize(&peft, 0.5);
    tch::manual_seed(2);
    let x = Tensor::randn([4, 10], (Kind::Float, Device::Cpu));
    let y = tch::no_grad(|| peft.forward_t(&x, false));
    let dir = tempfile::tempdir().unwrap();
    peft.save_pretrained(dir.path(), &SaveOptions::default()).unwrap();
    let file = Tensor::read_safetensors(dir.path().join("adapter_model.safetensors")).unwrap();
    let keys: std::collections::BTreeMap<String, Tensor> = file.into_iter().collect();
    let idx = &keys["base_model.model.lin0.vblora_logits_A_topk_indices"];
    assert_eq!((idx.kind(), idx.size()), (Kind::Uint8, vec![2, 5, 3]), "indices in the smallest dtype");
    assert_eq!(keys["base_model.model.lin0.vblora_logits_A_topk_weights"].size(), [2, 5, 2], "k − 1 weights");
    assert!(!keys.contains_key("base_model.model.lin0.vblora_logits_A"));
    let (vs2, zoo2) = LayerZoo::seeded(0);
    let (reloaded, _) = PeftModel::from_pretrained(zoo2, &vs2, dir.path(), LoadOptions::default()).unwrap();
    assert!(max_diff(&tch::no_grad(|| reloaded.forward_t(&x, false)), &y) < 1e-6);
    let (vs3, zoo3) = LayerZoo::seeded(0);
    let err =
        PeftModel::from_pretrained(zoo3, &vs3, dir.path(), LoadOptions::default().trainable()).unwrap_err();
    assert!(err.to_string().contains("holds no logits to train"), "{err}");
    // A file missing the weights of some indices names them.
    let path = dir.path().join("adapter_model.safetensors");
    let kept: Vec<(String, Tensor)> =
        keys.into_iter().filter(|(k, _)| !k.ends_with("lin1.vblora_logits_B_topk_weights")).collect();
    Tensor::write_safetensors(&kept, &path).unwrap();
    let (vs4, zoo4) = LayerZoo::seeded(0);
    let err = load_error(zoo4, &vs4, dir.path());
    assert!(err.to_string().contains("lin1.vblora_logits_B_topk_weights"), "{err}");
}
