//! MiSS behaviour beyond the parity matrix: identity at init and merged == unmerged in every variant,
//! unmerging restores the weight, the layers, sizes and variant mixes PEFT cannot run are errors naming
//! them, bad files fail naming key and shapes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use peft_core::peft_config::TargetModules;
use peft_core::PeftModel;
use peft_miss::{MethodConfig, MissConfig, MissInit, MissLayer, MissVariant};
use peft_testkit::nets::{LayerZoo, Quantized};
use peft_testkit::{
    assert_mixed_batches_refused, assert_safe_merge_refuses_nan, assert_shape_mismatch,
    assert_unsupported_layer, load_error, max_diff, randomize, rng_lock, save_with_config_edit, tuner,
};
use tch::nn::ModuleT;
use tch::{Device, Kind, Tensor};

fn config(targets: &[&str], r: i64, init: MissInit) -> MissConfig {
    MissConfig {
        r,
        init_weights: init,
        target_modules: Some(TargetModules::list(targets.iter().copied())),
        ..MissConfig::default()
    }
}

fn variants() -> Vec<(&'static str, MissConfig)> {
    vec![
        ("balance", config(&["lin0", "lin1"], 4, MissInit::Bool(true))),
        ("balance padded", config(&["lin0", "lin1"], 3, MissInit::Bool(true))),
        ("mini", MissConfig { mini_r: 2, ..config(&["lin0", "lin1"], 3, MissInit::Variant("mini".into())) }),
        ("bat", config(&["lin0", "lin1"], 2, MissInit::Variant("bat".into()))),
    ]
}

#[test]
fn every_variant_starts_as_the_identity_and_merges_to_the_same_outputs() {
    let _rng = rng_lock();
    tch::manual_seed(3);
    let x = Tensor::randn([5, 10], (Kind::Float, Device::Cpu));
    for (name, cfg) in variants() {
        let (vs, zoo) = LayerZoo::seeded(0);
        let mut peft = PeftModel::new(zoo, &vs, cfg.boxed(), "default").unwrap();
        let base = tch::no_grad(|| peft.disable_adapters().unwrap().forward_t(&x, false));
        assert!(
            tch::no_grad(|| peft.forward_t(&x, false)).equal(&base),
            "{name}: a zero block is the identity"
        );
        randomize(&peft, 0.3);
        let unmerged = tch::no_grad(|| peft.forward_t(&x, false));
        assert!(max_diff(&unmerged, &base) > 1e-3, "{name}: the adapter acts");
        let w0 = peft.model().lin0.base().weight.copy();
        peft.merge_adapter(None, true).unwrap();
        let merged = tch::no_grad(|| peft.forward_t(&x, false));
        assert!(max_diff(&merged, &unmerged) < 1e-5, "{name}: merged {}", max_diff(&merged, &unmerged));
        peft.unmerge_adapter().unwrap();
        assert!(
            max_diff(&peft.model().lin0.base().weight, &w0) < 1e-5,
            "{name}: unmerge restores the weight"
        );
    }
}

#[test]
fn the_balance_update_adds_the_block_to_every_input_shard() {
    let _rng = rng_lock();
    let (vs, zoo) = LayerZoo::seeded(0);
    let peft =
        PeftModel::new(zoo, &vs, config(&["lin0"], 3, MissInit::Bool(false)).boxed(), "default").unwrap();
    let layer = tuner::<MissLayer>(peft.model().lin0.slots(), "default");
    assert_eq!((layer.variant(), layer.block().size()), (MissVariant::Balance, vec![3, 20]));
    // W[:, k·r + j] += B[j, :], the last shard cut at in_features = 10.
    let delta = layer.additive_delta();
    assert_eq!(delta.size(), [20, 10]);
    for col in 0..10 {
        assert!(delta.select(1, col).equal(&layer.block().select(0, col % 3)), "column {col}");
    }
    // The forward pass: the padded input's shards summed, times the block.
    let x = Tensor::randn([2, 10], (Kind::Float, Device::Cpu));
    let padded =
        x.constant_pad_nd([0, 2]).view([2, 4, 3]).sum_dim_intlist([1i64].as_slice(), false, Kind::Float);
    let base = peft.model().lin0.base();
    let want = x.linear(&base.weight, base.bias.as_ref()) + padded.matmul(layer.block());
    assert!(max_diff(&tch::no_grad(|| peft.model().lin0.forward(&x)), &want) < 1e-6);
}

#[test]
fn layers_sizes_and_variant_mixes_miss_cannot_run_are_refused() {
    let _rng = rng_lock();
    for target in ["emb", "conv1x1", "conv1d", "gpt2"] {
        let (vs, zoo) = LayerZoo::seeded(0);
        let err = PeftModel::new(zoo, &vs, config(&[target], 2, MissInit::Bool(true)).boxed(), "default")
            .unwrap_err();
        assert_unsupported_layer(&err, target, "MISS", "only `torch.nn.Linear`");
    }
    let cases: [(MissConfig, &str); 4] = [
        (
            config(&["lin0"], 11, MissInit::Bool(true)),
            "`r` (11) must be less than or equal to in_features (10)",
        ),
        (
            config(&["lin0"], 0, MissInit::Bool(true)),
            "`r` should be a positive integer value but the value passed is 0",
        ),
        (config(&["lin0"], 3, MissInit::Variant("bat".into())), "must be fully divisible into [r, r] blocks"),
        (
            MissConfig { mini_r: 3, ..config(&["lin0"], 2, MissInit::Variant("mini".into())) },
            "out_features (20) must be divisible by mini_r (3)",
        ),
    ];
    for (cfg, want) in cases {
        let (vs, zoo) = LayerZoo::seeded(0);
        let err = PeftModel::new(zoo, &vs, cfg.boxed(), "default").unwrap_err();
        assert!(err.to_string().contains(want), "{err}");
    }
    // The layer's variant is the first adapter's.
    let (vs, zoo) = LayerZoo::seeded(0);
    let mut peft = PeftModel::new(zoo, &vs, config(&["lin0"], 2, MissInit::Bool(true)).boxed(), "a").unwrap();
    let err =
        peft.add_adapter("b", config(&["lin0"], 2, MissInit::Variant("bat".into())).boxed()).unwrap_err();
    assert!(err.to_string().contains("share its variant"), "{err}");
    peft.add_adapter("c", config(&["lin0"], 5, MissInit::Bool(false)).boxed()).unwrap();
    // Unknown variants and bias values are refused by name.
    let mut w = vec![];
    let cfg =
        MissConfig::from_json_str(r#"{"peft_type": "MISS", "init_weights": "gaussian"}"#, &mut w).unwrap();
    let (vs, zoo) = LayerZoo::seeded(0);
    let err = PeftModel::new(zoo, &vs, cfg.boxed(), "default").unwrap_err();
    assert!(err.to_string().contains("init_weights") && err.to_string().contains("gaussian"), "{err}");
}

#[test]
fn quantized_bases_take_the_additive_variants_and_refuse_bat() {
    let _rng = rng_lock();
    let (vs, q) = Quantized::seeded(1, None);
    let dense = q.dequantized();
    let mut peft =
        PeftModel::new(q, &vs, config(&["proj"], 8, MissInit::Bool(true)).boxed(), "default").unwrap();
    randomize(&peft, 0.2);
    let x = Tensor::randn([3, 64], (Kind::Float, Device::Cpu));
    let layer = tuner::<MissLayer>(peft.model().proj.slots(), "default");
    let want = x.linear::<Tensor>(&(&dense + layer.additive_delta()), None);
    let y = tch::no_grad(|| peft.model().proj.forward(&x));
    assert!(max_diff(&y, &want) < 1e-4, "{}", max_diff(&y, &want));
    peft.merge_adapter(None, true).unwrap();
    let (vs, q) = Quantized::seeded(1, None);
    let err =
        PeftModel::new(q, &vs, config(&["proj"], 8, MissInit::Variant("bat".into())).boxed(), "default")
            .unwrap_err();
    assert_unsupported_layer(&err, "proj", "MISS", "quantized");
}

#[test]
fn safe_merges_files_of_another_rank_and_mixed_batches() {
    let _rng = rng_lock();
    let (vs, zoo) = LayerZoo::seeded(0);
    let mut peft =
        PeftModel::new(zoo, &vs, config(&["lin0"], 2, MissInit::Bool(true)).boxed(), "default").unwrap();
    assert_mixed_batches_refused(&peft, "MISS");
    let dir = save_with_config_edit(&peft, "\"r\": 2", "\"r\": 5");
    let (vs2, zoo2) = LayerZoo::seeded(0);
    let err = load_error(zoo2, &vs2, dir.path());
    assert_shape_mismatch(&err, "base_model.model.lin0.miss_block", &[5, 20], &[2, 20]);
    assert_safe_merge_refuses_nan(&mut peft, |m| m.lin0.base().weight.shallow_clone());
}
