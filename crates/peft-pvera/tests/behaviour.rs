//! PVeRA behaviour beyond the parity matrix: the mean path in evaluation and the merge, reparameterised
//! samples in training and with sample_at_inference (from the layer's own generator when seeded), one set
//! of projections for all layers and adapters, and the layers, ranks and files PVeRA cannot take.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use peft_core::peft_config::TargetModules;
use peft_core::{PeftModel, SaveOptions};
use peft_pvera::{MethodConfig, PveraConfig, PveraLayer};
use peft_testkit::nets::{LayerZoo, Quantized};
use peft_testkit::{
    assert_mixed_batches_refused, assert_safe_merge_refuses_nan, assert_unsupported_layer, max_diff,
    randomize, rng_lock, tuner,
};
use tch::nn::ModuleT;
use tch::{Device, Kind, Tensor};

fn config(targets: &[&str], r: i64) -> PveraConfig {
    PveraConfig {
        r,
        target_modules: Some(TargetModules::list(targets.iter().copied())),
        ..PveraConfig::default()
    }
}

#[test]
fn evaluation_takes_the_mean_path_and_merges_to_it() {
    let _rng = rng_lock();
    tch::manual_seed(2);
    let x = Tensor::randn([6, 10], (Kind::Float, Device::Cpu));
    let (vs, zoo) = LayerZoo::seeded(0);
    let mut peft = PeftModel::new(zoo, &vs, config(&["lin0", "lin1"], 3).boxed(), "default").unwrap();
    let base = tch::no_grad(|| peft.disable_adapters().unwrap().forward_t(&x, false));
    assert!(tch::no_grad(|| peft.forward_t(&x, false)).equal(&base), "λ_b = 0 is the identity");
    randomize(&peft, 0.5);
    // The mean path written out: λ_b ⊙ (B_s · (λ_d[:r] ⊙ A_s[:r] · x)).
    let layer = tuner::<PveraLayer>(peft.model().lin0.slots(), "default");
    let (a, b) = layer.projections();
    assert_eq!(
        (a.size(), b.size()),
        (vec![6, 20], vec![20, 3]),
        "sized by the largest layer (lin0 in 10, lin1 in 20)"
    );
    let (ld, lb) = (layer.lambda_d(), layer.lambda_b());
    let mean = (x.matmul(&a.narrow(1, 0, 10).tr()) * ld).narrow(1, 0, 3);
    let want = tch::no_grad(|| peft_core::layer::BaseLayer::forward(peft.model().lin0.base(), &x))
        + mean.matmul(&b.narrow(0, 0, 20).tr()) * lb;
    assert!(max_diff(&tch::no_grad(|| peft.model().lin0.forward(&x)), &want) < 1e-5);
    let unmerged = tch::no_grad(|| peft.forward_t(&x, false));
    peft.merge_adapter(None, true).unwrap();
    let merged = tch::no_grad(|| peft.forward_t(&x, false));
    assert!(max_diff(&merged, &unmerged) < 1e-5, "{}", max_diff(&merged, &unmerged));
    peft.unmerge_adapter().unwrap();
    assert!(max_diff(&tch::no_grad(|| peft.forward_t(&x, false)), &unmerged) < 1e-5);
    assert_safe_merge_refuses_nan(&mut peft, |m| m.lin0.base().weight.shallow_clone());
}

#[test]
fn training_samples_the_code_and_a_seeded_layer_generator_repeats_its_noise() {
    let _rng = rng_lock();
    tch::manual_seed(2);
    let x = Tensor::randn([6, 10], (Kind::Float, Device::Cpu));
    let build = |cfg: PveraConfig| {
        let (vs, zoo) = LayerZoo::seeded(0);
        let peft = PeftModel::new(zoo, &vs, cfg.boxed(), "default").unwrap();
        randomize(&peft, 0.5);
        (vs, peft)
    };
    let (_vs, peft) = build(config(&["lin0"], 3));
    let eval = tch::no_grad(|| peft.forward_t(&x, false));
    let (t1, t2) = tch::no_grad(|| (peft.forward_t(&x, true), peft.forward_t(&x, true)));
    assert!(max_diff(&t1, &eval) > 1e-4 && max_diff(&t1, &t2) > 1e-4, "training samples afresh");
    // sample_at_inference with generator_seed: each model's layers draw the same stream from their seed,
    // whatever the global generator does in between.
    let cfg = PveraConfig { sample_at_inference: true, generator_seed: Some(9), ..config(&["lin0"], 3) };
    let (_va, a) = build(cfg.clone());
    let (_vb, b) = build(cfg);
    tch::manual_seed(123);
    let ya = tch::no_grad(|| a.forward_t(&x, false));
    tch::manual_seed(456);
    let yb = tch::no_grad(|| b.forward_t(&x, false));
    assert!(ya.equal(&yb), "{}", max_diff(&ya, &yb));
    assert!(max_diff(&ya, &tch::no_grad(|| a.forward_t(&x, false))) > 1e-4, "the stream moves on");
}

#[test]
fn adapters_share_the_first_projections_and_files_carry_them_once() {
    let _rng = rng_lock();
    let (vs, zoo) = LayerZoo::seeded(0);
    let mut peft = PeftModel::new(zoo, &vs, config(&["lin0", "lin1"], 2).boxed(), "default").unwrap();
    peft.add_adapter("other", config(&["lin0"], 2).boxed()).unwrap();
    let slots = peft.model().lin0.slots();
    let (a0, _) = tuner::<PveraLayer>(slots, "default").projections();
    let (a1, _) = tuner::<PveraLayer>(slots, "other").projections();
    assert_eq!(a0.data_ptr(), a1.data_ptr(), "one tensor for every layer and adapter");
    let err = peft.add_adapter("wider", config(&["lin0"], 4).boxed()).unwrap_err();
    assert!(err.to_string().contains("share the projections of the first one"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    peft.save_pretrained(dir.path(), &SaveOptions::default()).unwrap();
    let mut keys: Vec<String> = Tensor::read_safetensors(dir.path().join("adapter_model.safetensors"))
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "base_model.model.lin0.pvera_lambda_b",
            "base_model.model.lin0.pvera_lambda_d",
            "base_model.model.lin1.pvera_lambda_b",
            "base_model.model.lin1.pvera_lambda_d",
            "base_model.pvera_A",
            "base_model.pvera_B",
        ]
    );
}

#[test]
fn layers_and_options_pvera_cannot_take_are_refused_by_name() {
    let _rng = rng_lock();
    for target in ["emb", "conv1x1"] {
        let (vs, zoo) = LayerZoo::seeded(0);
        let err = PeftModel::new(zoo, &vs, config(&[target, "lin0"], 2).boxed(), "default").unwrap_err();
        assert_unsupported_layer(&err, target, "PVERA", "only `torch.nn.Linear`");
    }
    let (vs, zoo) = LayerZoo::seeded(0);
    let err = PeftModel::new(zoo, &vs, config(&["emb"], 2).boxed(), "default").unwrap_err();
    assert!(err.to_string().contains("No layers types compatible with PVeRA were found"), "{err}");
    let (vs, zoo) = LayerZoo::seeded(0);
    let mut peft = PeftModel::new(zoo, &vs, config(&["lin0"], 2).boxed(), "default").unwrap();
    let other = PveraConfig { projection_prng_key: 1, ..config(&["lin0"], 2) };
    let err = peft.add_adapter("b", other.boxed()).unwrap_err();
    assert!(
        err.to_string().contains("PVeRA PRNG initialisation key must be the same for all adapters"),
        "{err}"
    );
    assert_mixed_batches_refused(&peft, "PVERA");
    let mut w = vec![];
    let err = PveraConfig::from_json_str(r#"{"peft_type": "PVERA", "layers_pattern": "layers"}"#, &mut w)
        .unwrap_err();
    assert!(err.to_string().contains("`layers_to_transform` must also be specified"), "{err}");
    PveraConfig::from_json_str(r#"{"peft_type": "PVERA", "save_projection": false}"#, &mut w).unwrap();
    assert!(w.iter().any(|m| m.contains("Specified to not save pvera_A and pvera_B")), "{w:?}");
    // Quantized bases take the adapter on their dequantized output path.
    let (vs, q) = Quantized::seeded(1, None);
    let dense = q.dequantized();
    let mut peft = PeftModel::new(q, &vs, config(&["proj"], 2).boxed(), "default").unwrap();
    randomize(&peft, 0.3);
    let x = Tensor::randn([3, 64], (Kind::Float, Device::Cpu));
    let layer = tuner::<PveraLayer>(peft.model().proj.slots(), "default");
    let want = x.linear::<Tensor>(&(&dense + layer.delta_weight().unwrap()), None);
    assert!(max_diff(&tch::no_grad(|| peft.model().proj.forward(&x)), &want) < 1e-4);
    peft.merge_adapter(None, true).unwrap();
}
