//! GraLoRA behaviour beyond the parity matrix: identity at init, merged == unmerged on linear and Conv1D
//! layers with and without the hybrid LoRA, sequence inputs equal to their tokens one by one, the layers
//! and sizes PEFT refuses, bad files.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use peft_core::peft_config::TargetModules;
use peft_core::PeftModel;
use peft_gralora::{GraloraConfig, GraloraLayer, MethodConfig};
use peft_testkit::nets::LayerZoo;
use peft_testkit::{
    assert_mixed_batches_refused, assert_safe_merge_refuses_nan, assert_shape_mismatch,
    assert_unsupported_layer, load_error, max_diff, randomize, rng_lock, save_with_config_edit, tuner,
};
use tch::nn::ModuleT;
use tch::{Device, Kind, Tensor};

fn config(targets: &[&str], r: i64, k: i64, hybrid_r: i64) -> GraloraConfig {
    GraloraConfig {
        r,
        gralora_k: k,
        hybrid_r,
        target_modules: Some(TargetModules::list(targets.iter().copied())),
        ..GraloraConfig::default()
    }
}

#[test]
fn starts_as_the_identity_and_merges_to_the_same_outputs() {
    let _rng = rng_lock();
    tch::manual_seed(3);
    let x = Tensor::randn([5, 10], (Kind::Float, Device::Cpu));
    let gx = Tensor::randn([5, 10], (Kind::Float, Device::Cpu));
    for hybrid_r in [0, 2] {
        let (vs, zoo) = LayerZoo::seeded(0);
        let cfg = config(&["lin0", "lin1", "gpt2"], 4, 2, hybrid_r);
        let mut peft = PeftModel::new(zoo, &vs, cfg.boxed(), "default").unwrap();
        let outputs =
            |p: &PeftModel<LayerZoo>| tch::no_grad(|| (p.forward_t(&x, false), p.model().gpt2.forward(&gx)));
        let base = tch::no_grad(|| {
            let off = peft.disable_adapters().unwrap();
            (off.forward_t(&x, false), off.gpt2.forward(&gx))
        });
        let start = outputs(&peft);
        assert!(
            start.0.equal(&base.0) && start.1.equal(&base.1),
            "hybrid_r={hybrid_r}: B = 0 is the identity"
        );
        randomize(&peft, 0.3);
        let unmerged = outputs(&peft);
        assert!(max_diff(&unmerged.0, &base.0) > 1e-3 && max_diff(&unmerged.1, &base.1) > 1e-3);
        peft.merge_adapter(None, true).unwrap();
        let merged = outputs(&peft);
        assert!(
            max_diff(&merged.0, &unmerged.0) < 1e-4,
            "hybrid_r={hybrid_r}: {}",
            max_diff(&merged.0, &unmerged.0)
        );
        assert!(max_diff(&merged.1, &unmerged.1) < 1e-4, "hybrid_r={hybrid_r}: Conv1D");
        peft.unmerge_adapter().unwrap();
        // W + ΔW − ΔW rounds at the size of ΔW (scaled by alpha / r = 16 here).
        assert!(
            max_diff(&outputs(&peft).0, &unmerged.0) < 1e-4,
            "{}",
            max_diff(&outputs(&peft).0, &unmerged.0)
        );
    }
}

#[test]
fn a_sequence_gives_what_its_tokens_give_one_by_one() {
    let _rng = rng_lock();
    let (vs, zoo) = LayerZoo::seeded(0);
    let peft = PeftModel::new(zoo, &vs, config(&["lin0"], 10, 5, 2).boxed(), "default").unwrap();
    randomize(&peft, 0.3);
    let layer = tuner::<GraloraLayer>(peft.model().lin0.slots(), "default");
    assert_eq!(layer.blocks().0.size(), [5, 2, 10]);
    assert_eq!(layer.blocks().1.size(), [5, 10, 4]);
    let seq = Tensor::randn([2, 3, 10], (Kind::Float, Device::Cpu));
    let y = tch::no_grad(|| peft.model().lin0.forward(&seq));
    let flat = tch::no_grad(|| peft.model().lin0.forward(&seq.view([6, 10])));
    assert!(max_diff(&y.view([6, 20]), &flat) < 1e-5);
    // The unmerged forward is the delta weight as a matrix.
    let base = peft.model().lin0.base();
    let want = seq.linear(&(&base.weight + tch::no_grad(|| layer.delta_weight())), base.bias.as_ref());
    assert!(max_diff(&y, &want) < 1e-5, "{}", max_diff(&y, &want));
}

#[test]
fn layers_and_sizes_gralora_cannot_use_are_refused() {
    let _rng = rng_lock();
    for target in ["emb", "conv1x1"] {
        let (vs, zoo) = LayerZoo::seeded(0);
        let err = PeftModel::new(zoo, &vs, config(&[target], 2, 2, 0).boxed(), "default").unwrap_err();
        assert_unsupported_layer(&err, target, "GRALORA", "`torch.nn.Linear`");
    }
    // lin1 has 2 outputs: a grid of 5 does not divide them.
    let (vs, zoo) = LayerZoo::seeded(0);
    let err = PeftModel::new(zoo, &vs, config(&["lin1"], 5, 5, 0).boxed(), "default").unwrap_err();
    assert!(
        err.to_string().contains("out_features should be divisible by gralora_k, but got 2 and 5"),
        "{err}"
    );
    let mut w = vec![];
    let err = GraloraConfig::from_json_str(r#"{"peft_type": "GRALORA", "r": 6, "gralora_k": 4}"#, &mut w)
        .unwrap_err();
    assert!(err.to_string().contains("r should be divisible by gralora_k, but got 6 and 4"), "{err}");
    let err =
        GraloraConfig::from_json_str(r#"{"peft_type": "GRALORA", "gralora_k": 0}"#, &mut w).unwrap_err();
    assert!(err.to_string().contains("`gralora_k` should be a positive integer"), "{err}");
    let (vs, zoo) = LayerZoo::seeded(0);
    let err = PeftModel::new(zoo, &vs, config(&["lin0"], 4, 2, -1).boxed(), "default").unwrap_err();
    assert!(err.to_string().contains("`hybrid_r` should be a non-negative integer"), "{err}");
}

#[test]
fn safe_merges_files_of_another_rank_and_mixed_batches() {
    let _rng = rng_lock();
    let (vs, zoo) = LayerZoo::seeded(0);
    let mut peft = PeftModel::new(zoo, &vs, config(&["lin0"], 4, 2, 0).boxed(), "default").unwrap();
    assert_mixed_batches_refused(&peft, "GRALORA");
    let dir = save_with_config_edit(&peft, "\"r\": 4", "\"r\": 2");
    let (vs2, zoo2) = LayerZoo::seeded(0);
    let err = load_error(zoo2, &vs2, dir.path());
    assert_shape_mismatch(&err, "base_model.model.lin0.gralora_A", &[2, 5, 2], &[2, 5, 4]);
    assert_safe_merge_refuses_nan(&mut peft, |m| m.lin0.base().weight.shallow_clone());
}
