//! RandLoRA behaviour beyond the parity matrix: the layer written out from its bases, identity at init,
//! merging (dense and GPT-2 `Conv1D`), PEFT's backward against autograd's, the shared bases and their
//! file form, quantized bases, and the errors for what RandLoRA cannot do.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use peft_core::peft_config::TargetModules;
use peft_core::{LoadOptions, MethodConfig, PeftError, PeftModel, SaveOptions, TunerLayer};
use peft_randlora::{RandloraConfig, RandloraLayer};
use peft_testkit::nets::{LayerZoo, Quantized};
use peft_testkit::{
    assert_mixed_batches_refused, assert_safe_merge_refuses_nan, assert_unsupported_layer, load_error,
    max_diff, randomize, rng_lock, save_with_config_edit, tuner,
};
use tch::nn::ModuleT;
use tch::{Device, Kind, Tensor};

fn config(targets: &[&str], r: i64) -> RandloraConfig {
    RandloraConfig {
        r,
        randlora_alpha: 8.into(),
        target_modules: Some(TargetModules::list(targets.iter().copied())),
        ..RandloraConfig::default()
    }
}

fn layer<'a>(peft: &'a PeftModel<LayerZoo>, which: &str, adapter: &str) -> &'a RandloraLayer {
    let l = match which {
        "lin0" => &peft.model().lin0,
        "lin1" => &peft.model().lin1,
        _ => &peft.model().gpt2,
    };
    tuner::<RandloraLayer>(l.slots(), adapter)
}

/// The layer's update written out from the bases: `U @ S · scaling` `(M, m)`, transposed when the layer
/// is wider than tall (`m = out`), with `S = (Λ[:, :, None] · A[:, :, :m] · Γ[None]).flatten(0, 1)` and
/// `U = B[:M, :n, :].flatten(1)`.
fn written_out(l: &RandloraLayer, in_features: i64, out_features: i64) -> Tensor {
    let (m, big) = (in_features.min(out_features), in_features.max(out_features));
    let (a, b) = l.bases();
    let n = l.num_bases();
    let s = (l.lambda().unsqueeze(2) * a.narrow(2, 0, m) * l.gamma().unsqueeze(0)).reshape([-1, m]);
    let u = b.narrow(0, 0, big).narrow(1, 0, n).reshape([big, -1]);
    let w = u.matmul(&s) * l.scaling();
    if m == in_features {
        w
    } else {
        w.tr()
    }
}

#[test]
fn the_layer_adds_its_scaled_bases_and_starts_as_the_identity() {
    let _rng = rng_lock();
    let (vs, zoo) = LayerZoo::seeded(0);
    let mut peft = PeftModel::new(zoo, &vs, config(&["lin0", "lin1"], 4).boxed(), "default").unwrap();
    tch::manual_seed(3);
    let x = Tensor::randn([4, 10], (Kind::Float, Device::Cpu));
    let base = tch::no_grad(|| peft.disable_adapters().unwrap().forward_t(&x, false));
    assert!(tch::no_grad(|| peft.forward_t(&x, false)).equal(&base), "lambda = 0 changes nothing");
    // One pair of bases sized by the largest layer (20 × 20): A (4, 1, 20), B (20, 5, 4), shared.
    let (l0, l1) = (layer(&peft, "lin0", "default"), layer(&peft, "lin1", "default"));
    assert_eq!((l0.bases().0.size(), l0.bases().1.size()), (vec![4, 1, 20], vec![20, 5, 4]));
    assert_eq!(l0.bases().0.data_ptr(), l1.bases().0.data_ptr(), "the layers share the tensor");
    // lin0 (10 → 20): 3 bases over its 10 inputs, gamma = 1 / max(3, 10); lin1 (20 → 2): 1 base.
    assert_eq!((l0.lambda().size(), l0.gamma().size()), (vec![4, 3], vec![3, 10]));
    assert_eq!((l1.lambda().size(), l1.gamma().size()), (vec![4, 1], vec![1, 2]));
    assert_eq!(l0.gamma().max().double_value(&[]), f64::from(0.1f32));
    assert_eq!(l1.gamma().min().double_value(&[]), 0.5);
    assert_eq!(peft.num_parameters().0, 12 + 30 + 4 + 2, "only the diagonals train");

    randomize(&peft, 0.3);
    let h = Tensor::randn([4, 20], (Kind::Float, Device::Cpu));
    for (name, input, (i, o)) in [("lin0", &x, (10, 20)), ("lin1", &h, (20, 2))] {
        let lin = if name == "lin0" { &peft.model().lin0 } else { &peft.model().lin1 };
        let l = tuner::<RandloraLayer>(lin.slots(), "default");
        let w = &lin.base().weight + written_out(l, i, o);
        let want = input.linear(&w, lin.base().bias.as_ref());
        assert!(max_diff(&tch::no_grad(|| lin.forward(input)), &want) < 1e-4, "{name}");
    }
    let unmerged = tch::no_grad(|| peft.forward_t(&x, false));
    peft.merge_adapter(None, true).unwrap();
    let merged = tch::no_grad(|| peft.forward_t(&x, false));
    assert!(max_diff(&merged, &unmerged) < 1e-5, "merged == unmerged");
    peft.unmerge_adapter().unwrap();
    assert!(max_diff(&tch::no_grad(|| peft.forward_t(&x, false)), &unmerged) < 1e-5);
}

#[test]
fn gpt2_conv1d_layers_merge_in_their_transposed_layout() {
    let _rng = rng_lock();
    let (vs, zoo) = LayerZoo::seeded(0);
    let mut peft = PeftModel::new(zoo, &vs, config(&["gpt2"], 3).boxed(), "default").unwrap();
    assert!(peft.warnings().iter().any(|w| w.contains("Setting fan_in_fan_out to True")));
    randomize(&peft, 0.3);
    let x = Tensor::randn([5, 10], (Kind::Float, Device::Cpu));
    let unmerged = tch::no_grad(|| peft.model().gpt2.forward(&x));
    let w0 = peft.model().gpt2.base().weight.copy();
    let want = &w0 + written_out(layer(&peft, "gpt2", "default"), 10, 4).tr();
    peft.merge_adapter(None, false).unwrap();
    assert!(max_diff(&peft.model().gpt2.base().weight, &want) < 1e-5, "(in, out) layout");
    assert!(max_diff(&tch::no_grad(|| peft.model().gpt2.forward(&x)), &unmerged) < 1e-5);
}

#[test]
fn peft_backward_gives_autograds_gradients_up_to_rounding_and_none_for_the_bases() {
    let _rng = rng_lock();
    tch::manual_seed(11);
    let opts = (Kind::Float, Device::Cpu);
    let a = Tensor::randn([3, 1, 5], opts);
    let lambda = Tensor::randn([3, 2], opts).set_requires_grad(true);
    let gamma = Tensor::randn([2, 5], opts).set_requires_grad(true);
    let g = Tensor::randn([3, 2, 5], opts);
    let out = peft_randlora::layer::unique_base_grad(&a, &lambda, &gamma).unwrap();
    let plain = lambda.unsqueeze(2) * &a * gamma.unsqueeze(0);
    assert!(out.equal(&plain), "the forward is the product");
    let ours = Tensor::run_backward(&[(&out * &g).sum(Kind::Float)], &[&lambda, &gamma], false, false);
    let auto = Tensor::run_backward(&[(&plain * &g).sum(Kind::Float)], &[&lambda, &gamma], false, false);
    for (o, w) in ours.iter().zip(&auto) {
        assert_eq!(o.size(), w.size());
        assert!(max_diff(o, w) < 1e-5);
    }
    assert!(!a.requires_grad());
}

#[test]
fn sparse_bases_are_ternary_and_very_sparse_ones_sparser() {
    let _rng = rng_lock();
    let zeros = |cfg: RandloraConfig| {
        let (vs, zoo) = LayerZoo::seeded(0);
        let peft = PeftModel::new(zoo, &vs, cfg.boxed(), "default").unwrap();
        let b = layer(&peft, "lin0", "default").bases().1.copy();
        let values = b.flatten(0, -1).unique_dim(0, true, false, false).0;
        assert_eq!(values.size(), [3], "-s, 0, s");
        let s = values.double_value(&[2]);
        assert!((values.double_value(&[0]) + s).abs() < 1e-6 && values.double_value(&[1]) == 0.0);
        b.eq(0.0).to_kind(Kind::Float).mean(Kind::Float).double_value(&[])
    };
    let sparse = zeros(RandloraConfig { sparse: true, ..config(&["lin0", "lin1"], 2) });
    let very = zeros(RandloraConfig { very_sparse: true, sparse: true, ..config(&["lin0", "lin1"], 2) });
    assert!((sparse - 2.0 / 3.0).abs() < 0.1, "{sparse}");
    assert!(very > sparse, "{very} vs {sparse}");
}

#[test]
fn later_adapters_share_the_first_bases_and_must_match_its_rank_seed_and_saving() {
    let _rng = rng_lock();
    let (vs, zoo) = LayerZoo::seeded(0);
    let mut peft = PeftModel::new(zoo, &vs, config(&["lin0", "lin1"], 4).boxed(), "first").unwrap();
    peft.add_adapter("second", config(&["lin0"], 4).boxed()).unwrap();
    let (a1, a2) = (layer(&peft, "lin0", "first").bases().0, layer(&peft, "lin0", "second").bases().0);
    assert_eq!(a1.data_ptr(), a2.data_ptr());
    let err = peft.add_adapter("third", config(&["lin0"], 2).boxed()).unwrap_err();
    assert!(err.to_string().contains("rank 4") && err.to_string().contains("r=2"), "{err}");
    let seed = RandloraConfig { projection_prng_key: 3, ..config(&["lin0"], 4) };
    let err = peft.add_adapter("fourth", seed.boxed()).unwrap_err();
    assert!(err.to_string().contains("PRNG initialisation key"), "{err}");
    let unsaved = RandloraConfig { save_projection: false, ..config(&["lin0"], 4) };
    let err = peft.add_adapter("fifth", unsaved.boxed()).unwrap_err();
    assert!(err.to_string().contains("saved for all adapters or none"), "{err}");
}

#[test]
fn files_hold_the_bases_at_the_model_level_and_under_every_layer() {
    let _rng = rng_lock();
    let (vs, zoo) = LayerZoo::seeded(0);
    let peft = PeftModel::new(zoo, &vs, config(&["lin0", "lin1"], 4).boxed(), "default").unwrap();
    randomize(&peft, 0.2);
    let dir = tempfile::tempdir().unwrap();
    peft.save_pretrained(dir.path(), &SaveOptions::default()).unwrap();
    let path = dir.path().join("adapter_model.safetensors");
    let file = peft_core::io::read_safetensors(&path).unwrap();
    let mut keys: Vec<&str> = file.iter().map(|t| t.key.as_str()).collect();
    keys.sort_unstable();
    let mut want = vec!["base_model.randlora_A", "base_model.randlora_B"];
    for m in ["lin0", "lin1"] {
        for t in ["randlora_A", "randlora_B", "randlora_gamma", "randlora_lambda"] {
            want.push(Box::leak(format!("base_model.model.{m}.{t}").into_boxed_str()));
        }
    }
    want.sort_unstable();
    assert_eq!(keys, want);
    let x = Tensor::randn([3, 10], (Kind::Float, Device::Cpu));
    let (vs2, zoo2) = LayerZoo::seeded(0);
    let (reloaded, _) = PeftModel::from_pretrained(zoo2, &vs2, dir.path(), LoadOptions::default()).unwrap();
    assert!(reloaded.forward_t(&x, false).equal(&peft.forward_t(&x, false)));

    // A per-layer copy that disagrees with the model-level bases is refused, naming it.
    let edited: Vec<(String, Tensor)> = file
        .into_iter()
        .map(|t| {
            let v = if t.key == "base_model.model.lin1.randlora_B" { t.tensor * 2.0 } else { t.tensor };
            (t.key, v)
        })
        .collect();
    peft_core::io::write_safetensors(&path, &edited).unwrap();
    let (vs3, zoo3) = LayerZoo::seeded(0);
    let err = load_error(zoo3, &vs3, dir.path());
    assert!(err.to_string().contains("`base_model.model.lin1.randlora_B` is a per-layer copy"), "{err}");
}

#[test]
fn bases_not_saved_are_drawn_again_and_a_file_without_them_is_refused_otherwise() {
    let _rng = rng_lock();
    let (vs, zoo) = LayerZoo::seeded(0);
    let cfg =
        RandloraConfig { save_projection: false, projection_prng_key: 7, ..config(&["lin0", "lin1"], 4) };
    let peft = PeftModel::new(zoo, &vs, cfg.boxed(), "default").unwrap();
    let mut warnings = vec![];
    RandloraConfig::from_json_str(r#"{"peft_type": "RANDLORA", "save_projection": false}"#, &mut warnings)
        .unwrap();
    assert!(warnings.iter().any(|w| w.contains("Specified to not save basis_A and basis_B")), "{warnings:?}");
    randomize(&peft, 0.2);
    let dir = tempfile::tempdir().unwrap();
    peft.save_pretrained(dir.path(), &SaveOptions::default()).unwrap();
    let file = peft_core::io::read_safetensors(&dir.path().join("adapter_model.safetensors")).unwrap();
    assert!(file.iter().all(|t| !t.key.contains("randlora_A") && !t.key.contains("randlora_B")));
    let x = Tensor::randn([2, 10], (Kind::Float, Device::Cpu));
    let (vs2, zoo2) = LayerZoo::seeded(0);
    let (reloaded, _) = PeftModel::from_pretrained(zoo2, &vs2, dir.path(), LoadOptions::default()).unwrap();
    let rl = tuner::<RandloraLayer>(reloaded.model().lin0.slots(), "default");
    assert!(rl.bases().1.equal(layer(&peft, "lin0", "default").bases().1), "same seed, same bases");
    assert!(reloaded.forward_t(&x, false).equal(&peft.forward_t(&x, false)));

    let dir = save_with_config_edit(&peft, "\"save_projection\": false", "\"save_projection\": true");
    let (vs3, zoo3) = LayerZoo::seeded(0);
    match load_error(zoo3, &vs3, dir.path()) {
        PeftError::MissingKeys { keys, .. } => {
            let want = ["lin0.randlora_A", "lin0.randlora_B", "lin1.randlora_A", "lin1.randlora_B"];
            let mut want: Vec<String> = want.iter().map(|k| format!("base_model.model.{k}")).collect();
            want.extend(["base_model.randlora_A".to_string(), "base_model.randlora_B".to_string()]);
            assert_eq!(keys, want)
        }
        other => panic!("expected missing keys, got {other:?}"),
    }
}

#[test]
fn quantized_bases_run_the_adapter_and_refuse_to_merge_by_name() {
    let _rng = rng_lock();
    let (vs, q) = Quantized::seeded(1, None);
    let mut peft = PeftModel::new(
        q,
        &vs,
        RandloraConfig { r: 4, target_modules: Some(TargetModules::list(["proj"])), ..Default::default() }
            .boxed(),
        "default",
    )
    .unwrap();
    let x = Tensor::randn([3, 64], (Kind::Float, Device::Cpu));
    let base = x.linear::<Tensor>(&peft.model().dequantized(), None);
    assert!(max_diff(&tch::no_grad(|| peft.model().proj.forward(&x)), &base) < 1e-6, "identity at init");
    randomize(&peft, 0.3);
    let l = tuner::<RandloraLayer>(peft.model().proj.slots(), "default");
    let want = x.linear::<Tensor>(&(peft.model().dequantized() + written_out(l, 64, 16)), None);
    assert!(max_diff(&tch::no_grad(|| peft.model().proj.forward(&x)), &want) < 1e-3);
    let err = peft.merge_adapter(None, false).unwrap_err();
    assert!(err.to_string().contains("quantized (Linear4bit) base is not supported"), "{err}");

    // LLM.int8 storage: the same forward over the dequantized weight, the same refusal.
    let w = Tensor::randn([16, 64], (Kind::Float, Device::Cpu)) * 0.1;
    let q8 = peft_quant::Linear8bitLt::quantize(&w, 0.0).unwrap();
    let base = peft_core::nn::LinearBase::from_quantized(Box::new(q8), None);
    let q = Quantized { proj: peft_core::AdaptedLayer::new("proj", base) };
    let vs = tch::nn::VarStore::new(Device::Cpu);
    let cfg =
        RandloraConfig { r: 8, target_modules: Some(TargetModules::list(["proj"])), ..Default::default() };
    let mut peft = PeftModel::new(q, &vs, cfg.boxed(), "default").unwrap();
    randomize(&peft, 0.3);
    let l = tuner::<RandloraLayer>(peft.model().proj.slots(), "default");
    let base_out = tch::no_grad(|| peft_core::BaseLayer::forward(peft.model().proj.base(), &x));
    let want = base_out + x.linear::<Tensor>(&written_out(l, 64, 16), None);
    assert!(max_diff(&tch::no_grad(|| peft.model().proj.forward(&x)), &want) < 1e-3);
    let err = peft.merge_adapter(None, true).unwrap_err();
    assert!(err.to_string().contains("quantized (Linear8bitLt) base is not supported"), "{err}");
}

#[test]
fn layers_and_options_randlora_cannot_take_are_refused_by_name() {
    let _rng = rng_lock();
    let (vs, zoo) = LayerZoo::seeded(0);
    let err = PeftModel::new(zoo, &vs, config(&["emb"], 4).boxed(), "default").unwrap_err();
    assert!(err.to_string().contains("No layers types compatible with RandLora"), "{err}");
    for target in ["emb", "conv1x1"] {
        let (vs, zoo) = LayerZoo::seeded(0);
        let err = PeftModel::new(zoo, &vs, config(&["lin0", target], 4).boxed(), "default").unwrap_err();
        assert_unsupported_layer(&err, target, "RANDLORA", "only `torch.nn.Linear`");
    }
    let mut w = vec![];
    for (json, message) in [
        (
            r#"{"peft_type": "RANDLORA", "r": 0}"#,
            "`r` should be a positive integer value but the value passed is 0",
        ),
        (
            r#"{"peft_type": "RANDLORA", "randlora_dropout": 1.5}"#,
            "dropout probability has to be between 0 and 1",
        ),
        (r#"{"peft_type": "RANDLORA", "bias": "lora"}"#, "Requested bias: lora"),
        (r#"{"peft_type": "RANDLORA", "projection_prng_key": -1}"#, "projection_prng_key"),
        (r#"{"peft_type": "RANDLORA", "layers_pattern": "layers"}"#, "layers_to_transform"),
    ] {
        let err = RandloraConfig::from_json_str(json, &mut w)
            .and_then(|c| peft_core::AdapterConfig::validate(&c).map(|_| c))
            .unwrap_err();
        assert!(err.to_string().contains(message), "{json}: {err}");
    }
    let (vs, zoo) = LayerZoo::seeded(0);
    let peft = PeftModel::new(zoo, &vs, config(&["lin0"], 4).boxed(), "default").unwrap();
    assert_mixed_batches_refused(&peft, "RANDLORA");
}

#[test]
fn files_of_another_rank_fail_naming_a_key_and_nan_merges_are_refused() {
    let _rng = rng_lock();
    let (vs, zoo) = LayerZoo::seeded(0);
    let mut peft = PeftModel::new(zoo, &vs, config(&["lin0"], 4).boxed(), "default").unwrap();
    let dir = save_with_config_edit(&peft, "\"r\": 4", "\"r\": 5");
    let (vs2, zoo2) = LayerZoo::seeded(0);
    match load_error(zoo2, &vs2, dir.path()) {
        PeftError::ShapeMismatch { key, .. } => assert!(key.contains("randlora"), "{key}"),
        other => panic!("expected a shape mismatch, got {other:?}"),
    }
    assert_safe_merge_refuses_nan(&mut peft, |m| m.lin0.base().weight.shallow_clone());
    let named: Vec<String> =
        layer(&peft, "lin0", "default").named_tensors().into_iter().map(|(k, _)| k).collect();
    // Every layer holds the bases (PEFT's per-layer keys); the first also for the model-level keys.
    assert_eq!(
        named,
        [
            "randlora_lambda.default",
            "randlora_gamma.default",
            "randlora_A.default",
            "randlora_B.default",
            "randlora_A@model.default",
            "randlora_B@model.default"
        ]
    );
}

#[test]
fn the_config_round_trips_through_peft_json() {
    let mut warnings = Vec::new();
    let text =
        r#"{"peft_type": "RANDLORA", "target_modules": ["lin0", "lin0"], "randlora_alpha": 12.0, "r": 4}"#;
    let config = RandloraConfig::from_json_str(text, &mut warnings).unwrap();
    assert_eq!(config.target_modules, Some(TargetModules::list(["lin0"])), "the list becomes a set");
    assert_eq!(config.scaling(), 3.0);
    let written = peft_core::config::to_config_file_text(&config);
    assert!(written.contains("\"randlora_alpha\": 12.0"), "kept as written: {written}");
    let again = RandloraConfig::from_json_str(&written, &mut warnings).unwrap();
    assert_eq!(config, again);
    assert!(warnings.is_empty(), "{warnings:?}");
}
