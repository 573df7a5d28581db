//! PSOFT behaviour beyond the parity matrix: the frozen subspace is the weight's top-r SVD, R is orthogonal
//! (Cayley) and the identity at init, merged == unmerged, only R is saved, the low-rank SVD leaves the
//! global generator as it found it, and the layers and options PSOFT cannot take are refused by name.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use peft_core::peft_config::TargetModules;
use peft_core::{PeftModel, SaveOptions};
use peft_psoft::{MethodConfig, PsoftConfig, PsoftLayer};
use peft_testkit::nets::{LayerZoo, Quantized};
use peft_testkit::{
    assert_mixed_batches_refused, assert_safe_merge_refuses_nan, assert_shape_mismatch,
    assert_unsupported_layer, load_error, max_diff, randomize, rng_lock, save_with_config_edit, tuner,
};
use tch::nn::ModuleT;
use tch::{Device, Kind, Tensor};

fn config(targets: &[&str], r: i64) -> PsoftConfig {
    PsoftConfig {
        r,
        target_modules: Some(TargetModules::list(targets.iter().copied())),
        ..PsoftConfig::default()
    }
}

#[test]
fn the_subspace_is_the_top_singular_triplets_and_r_is_orthogonal() {
    let _rng = rng_lock();
    let (vs, zoo) = LayerZoo::seeded(0);
    let cfg = PsoftConfig { psoft_alpha: 12.into(), ..config(&["lin0"], 4) };
    let peft = PeftModel::new(zoo, &vs, cfg.boxed(), "default").unwrap();
    let layer = tuner::<PsoftLayer>(peft.model().lin0.slots(), "default");
    assert_eq!(layer.scaling(), 3.0);
    let (a, b) = layer.subspace();
    // A's rows are orthonormal right singular vectors; B·A·(α/r) is the best rank-4 approximation of W.
    let w = &peft.model().lin0.base().weight;
    let (u, s, v) = w.svd(true, true);
    let best = u.narrow(1, 0, 4).matmul(&s.narrow(0, 0, 4).diag(0)).matmul(&v.narrow(1, 0, 4).tr());
    assert!(max_diff(&(b.matmul(a) * 3.0), &best) < 1e-5);
    assert!(max_diff(&a.matmul(&a.tr()), &Tensor::eye(4, (Kind::Float, Device::Cpu))) < 1e-5);
    // R = I at init; after training-like noise (mags kept at 1) the Cayley transform stays orthogonal.
    let eye = Tensor::eye(4, (Kind::Float, Device::Cpu));
    assert!(max_diff(&layer.r_matrix(), &eye) == 0.0);
    for (name, mut t) in peft_core::TunerLayer::named_tensors(layer) {
        if name.contains(".weight") {
            tch::no_grad(|| t.copy_(&(Tensor::randn_like(&t) * 0.5)));
        }
    }
    let r = tch::no_grad(|| layer.r_matrix());
    assert!(max_diff(&r.matmul(&r.tr()), &eye) < 1e-5, "{}", max_diff(&r.matmul(&r.tr()), &eye));
    assert!(max_diff(&r, &eye) > 0.1);
}

#[test]
fn starts_as_the_identity_and_merges_to_the_same_outputs() {
    let _rng = rng_lock();
    tch::manual_seed(8);
    let x = Tensor::randn([5, 10], (Kind::Float, Device::Cpu));
    for cfg in [
        config(&["lin0", "lin1"], 2),
        PsoftConfig { use_cayley_neumann: true, cayley_neumann_eps: Some(0.4), ..config(&["lin0"], 3) },
        PsoftConfig { psoft_orth: false, ab_svd_init: "pissa_init".into(), ..config(&["lin0"], 3) },
    ] {
        let (vs, zoo) = LayerZoo::seeded(0);
        let mut peft = PeftModel::new(zoo, &vs, cfg.clone().boxed(), "default").unwrap();
        let base = tch::no_grad(|| peft.disable_adapters().unwrap().forward_t(&x, false));
        assert!(tch::no_grad(|| peft.forward_t(&x, false)).equal(&base), "{cfg:?}: R = I is the identity");
        randomize(&peft, 0.3);
        let unmerged = tch::no_grad(|| peft.forward_t(&x, false));
        assert!(max_diff(&unmerged, &base) > 1e-3, "the adapter acts");
        let w0 = peft.model().lin0.base().weight.copy();
        peft.merge_adapter(None, true).unwrap();
        let merged = tch::no_grad(|| peft.forward_t(&x, false));
        assert!(max_diff(&merged, &unmerged) < 1e-5, "merged {}", max_diff(&merged, &unmerged));
        peft.unmerge_adapter().unwrap();
        assert!(max_diff(&peft.model().lin0.base().weight, &w0) < 1e-6);
    }
}

#[test]
fn only_r_is_saved_and_the_lowrank_svd_leaves_the_global_generator_alone() {
    let _rng = rng_lock();
    let cfg = PsoftConfig {
        psoft_svd: "lowrank".into(),
        random_seed: 3,
        psoft_mag_a: false,
        ..config(&["lin0"], 3)
    };
    let (_vs, _zoo) = LayerZoo::seeded(0);
    let expected = Tensor::rand([4], (Kind::Float, Device::Cpu));
    let (vs, zoo) = LayerZoo::seeded(0);
    // PEFT runs svd_lowrank inside fork_rng after seeding random_seed: the global stream goes on unchanged.
    let peft = PeftModel::new(zoo, &vs, cfg.boxed(), "default").unwrap();
    assert!(Tensor::rand([4], (Kind::Float, Device::Cpu)).equal(&expected));
    let dir = tempfile::tempdir().unwrap();
    peft.save_pretrained(dir.path(), &SaveOptions::default()).unwrap();
    let mut keys: Vec<String> = Tensor::read_safetensors(dir.path().join("adapter_model.safetensors"))
        .unwrap()
        .into_iter()
        .map(|(k, t)| format!("{k} {:?}", t.size()))
        .collect();
    keys.sort();
    assert_eq!(
        keys,
        ["base_model.model.lin0.psoft_R.vector_b [3]", "base_model.model.lin0.psoft_R.weight [3]"]
    );
}

#[test]
fn layers_sizes_and_options_psoft_cannot_take_are_refused_by_name() {
    let _rng = rng_lock();
    for target in ["emb", "conv1x1", "gpt2"] {
        let (vs, zoo) = LayerZoo::seeded(0);
        let err = PeftModel::new(zoo, &vs, config(&[target], 2).boxed(), "default").unwrap_err();
        assert_unsupported_layer(&err, target, "PSOFT", "`torch.nn.Linear` only");
    }
    let (vs, q) = Quantized::seeded(1, None);
    let err = PeftModel::new(q, &vs, config(&["proj"], 2).boxed(), "default").unwrap_err();
    assert_unsupported_layer(&err, "proj", "PSOFT", "PSOFT init requires float32/float16/bfloat16");
    let (vs, zoo) = LayerZoo::seeded(0);
    let err = PeftModel::new(zoo, &vs, config(&["lin1"], 3).boxed(), "default").unwrap_err();
    assert!(err
        .to_string()
        .contains("`r` (3) must be less than or equal to min(in_features, out_features) (20, 2)"));
    let mut w = vec![];
    for (json, want) in [
        (r#"{"peft_type": "PSOFT", "r": 0}"#, "`r` must be a positive integer; got 0."),
        (
            r#"{"peft_type": "PSOFT", "ab_svd_init": "olora"}"#,
            "`ab_svd_init` must be one of ['pissa_init', 'psoft_init']; got 'olora'.",
        ),
        (
            r#"{"peft_type": "PSOFT", "psoft_svd": "qr"}"#,
            "`psoft_svd` must be one of ['full', 'lowrank']; got 'qr'.",
        ),
        (
            r#"{"peft_type": "PSOFT", "use_cayley_neumann": true, "num_cayley_neumann_terms": 0}"#,
            "`num_cayley_neumann_terms` must be a positive integer; got 0.",
        ),
        (
            r#"{"peft_type": "PSOFT", "use_cayley_neumann": true, "cayley_neumann_eps": 1.5}"#,
            "`cayley_neumann_eps` must be in (0, 1) when set; got 1.5.",
        ),
    ] {
        let err = PsoftConfig::from_json_str(json, &mut w).unwrap_err();
        assert!(err.to_string().contains(want), "{err}");
    }
    // Options that other options make unused are warned about, as PEFT does.
    let mut w = vec![];
    PsoftConfig::from_json_str(
        r#"{"peft_type": "PSOFT", "psoft_svd_lowrank_niter": 3, "cayley_neumann_eps": 0.5}"#,
        &mut w,
    )
    .unwrap();
    assert_eq!(w.len(), 2, "{w:?}");
    // fan_in_fan_out on nn.Linear: reset in the config that is saved, with PEFT's warning.
    let (vs, zoo) = LayerZoo::seeded(0);
    let cfg = PsoftConfig { fan_in_fan_out: true, ..config(&["lin0"], 2) };
    let peft = PeftModel::new(zoo, &vs, cfg.boxed(), "default").unwrap();
    assert_eq!(peft.config("default").unwrap().to_json()["fan_in_fan_out"], false);
}

#[test]
fn files_of_another_rank_fail_naming_key_and_shapes() {
    let _rng = rng_lock();
    let (vs, zoo) = LayerZoo::seeded(0);
    let mut peft = PeftModel::new(zoo, &vs, config(&["lin0"], 4).boxed(), "default").unwrap();
    assert_mixed_batches_refused(&peft, "PSOFT");
    let dir = save_with_config_edit(&peft, "\"r\": 4", "\"r\": 3");
    let (vs2, zoo2) = LayerZoo::seeded(0);
    let err = load_error(zoo2, &vs2, dir.path());
    // The first mismatching key in file order (psoft_R.vector_a sorts first).
    assert_shape_mismatch(&err, "base_model.model.lin0.psoft_R.vector_a", &[3], &[4]);
    randomize(&peft, 0.2);
    assert_safe_merge_refuses_nan(&mut peft, |m| m.lin0.base().weight.shallow_clone());
}
