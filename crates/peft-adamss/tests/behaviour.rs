//! AdaMSS behaviour beyond the parity matrix: the adapted layer written out independently (with and
//! without bias), the identity at init, merged == unmerged on trained-looking weights, save → load, ASA's
//! masking, and what AdaMSS cannot take refused by name.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use peft_adamss::{AdamssConfig, AdamssLayer, Asa, MethodConfig};
use peft_core::nn::{self as pnn, LinearConfig};
use peft_core::peft_config::TargetModules;
use peft_core::{Adaptable, LoadOptions, PeftError, PeftModel, SaveOptions, TunerLayer};
use peft_testkit::nets::{seeded, LayerZoo, Quantized};
use peft_testkit::{
    assert_mixed_batches_refused, assert_safe_merge_refuses_nan, assert_unsupported_layer, load_error,
    max_diff, randomize, rng_lock, save_with_config_edit, tuner,
};
use tch::nn::{ModuleT, VarStore};
use tch::{Device, Kind, Tensor};

fn config(targets: &[&str], r: i64, k: i64) -> AdamssConfig {
    AdamssConfig {
        r,
        num_subspaces: k,
        target_modules: Some(TargetModules::list(targets.iter().copied())),
        ..AdamssConfig::default()
    }
}

/// A linear layer with bias and one without.
#[derive(Debug, Adaptable)]
struct TwoLinears {
    with_bias: pnn::Linear,
    no_bias: pnn::Linear,
}

impl TwoLinears {
    fn seeded(seed: i64) -> (VarStore, Self) {
        seeded(seed, |vs| TwoLinears {
            with_bias: pnn::linear(vs.root() / "with_bias", 6, 12, Default::default()).unwrap(),
            no_bias: pnn::linear(vs.root() / "no_bias", 12, 9, LinearConfig { bias: false, init: true })
                .unwrap(),
        })
    }
}

impl ModuleT for TwoLinears {
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        self.no_bias.forward_t(&self.with_bias.forward_t(x, train), train)
    }
}

/// `ΔW|Δb` written out: row `Sᵢ[j]` of the delta is row `j` of `Bᵢ·Aᵢ·Vᵀ`.
fn dense_delta(layer: &AdamssLayer, out: i64) -> Tensor {
    let vt = layer.new_b();
    let delta = Tensor::zeros([out, vt.size()[1]], (Kind::Float, Device::Cpu));
    for (i, seg) in layer.segments().iter().enumerate() {
        let (a, b) = layer.subspace(i).unwrap();
        let rows = b.matmul(&a).matmul(vt);
        for (j, &r) in seg.iter().enumerate() {
            delta.get(r).copy_(&rows.get(j as i64));
        }
    }
    delta
}

#[test]
fn the_adapted_layer_adds_the_scattered_subspace_products_with_and_without_bias() {
    let _rng = rng_lock();
    let (vs, model) = TwoLinears::seeded(0);
    let peft =
        PeftModel::new(model, &vs, config(&["with_bias", "no_bias"], 4, 3).boxed(), "default").unwrap();
    randomize(&peft, 0.3);
    let x = Tensor::randn([4, 6], (Kind::Float, Device::Cpu));
    let lin = &peft.model().with_bias;
    let layer = tuner::<AdamssLayer>(lin.slots(), "default");
    // The subspaces partition the output rows; Vᵀ carries the bias column.
    let mut rows: Vec<i64> = layer.segments().iter().flatten().copied().collect();
    rows.sort_unstable();
    assert_eq!(rows, (0..12).collect::<Vec<_>>());
    assert_eq!(layer.new_b().size(), [4, 7]);
    let d = tch::no_grad(|| dense_delta(layer, 12));
    let (w, b) = (&lin.base().weight, lin.base().bias.as_ref().unwrap());
    let want = x.linear(&(w + d.narrow(1, 0, 6)), Some(&(b + d.select(1, 6))));
    assert!(max_diff(&tch::no_grad(|| lin.forward(&x)), &want) < 1e-5);

    let nb = tuner::<AdamssLayer>(peft.model().no_bias.slots(), "default");
    assert_eq!(nb.new_b().size(), [4, 12], "no bias column without a bias");
    assert!(nb.is_buffer("adamss_newB.default") && !nb.is_trainable_tensor("adamss_newB.default"));
    let h = Tensor::randn([2, 3, 12], (Kind::Float, Device::Cpu));
    let w = &peft.model().no_bias.base().weight;
    let d = tch::no_grad(|| dense_delta(nb, 9));
    let want = h.linear::<Tensor>(&(w + &d), None);
    assert!(max_diff(&tch::no_grad(|| peft.model().no_bias.forward(&h)), &want) < 1e-5, "3-d input");
    let v = Tensor::randn([12], (Kind::Float, Device::Cpu));
    let want = v.unsqueeze(0).linear::<Tensor>(&(w + &d), None).squeeze_dim(0);
    assert!(max_diff(&tch::no_grad(|| peft.model().no_bias.forward(&v)), &want) < 1e-5, "1-d input");
    // PEFT's AdaMSS has no per-row adapters (`adapter_names`).
    assert_mixed_batches_refused(&peft, "ADAMSS");
}

#[test]
fn orthogonal_init_is_the_identity_and_random_init_is_not() {
    let _rng = rng_lock();
    tch::manual_seed(3);
    let x = Tensor::randn([5, 6], (Kind::Float, Device::Cpu));
    for init in [Some("orthogonal".to_string()), None] {
        let (vs, model) = TwoLinears::seeded(0);
        let cfg = AdamssConfig { init_weights: init.clone(), ..config(&["with_bias", "no_bias"], 5, 4) };
        let mut peft = PeftModel::new(model, &vs, cfg.boxed(), "default").unwrap();
        let y = tch::no_grad(|| peft.forward_t(&x, false));
        let base = tch::no_grad(|| peft.disable_adapters().unwrap().forward_t(&x, false));
        assert_eq!(max_diff(&y, &base) == 0.0, init.is_some(), "{init:?}");
    }
}

#[test]
fn merged_equals_unmerged_and_unmerge_restores_weight_and_bias() {
    let _rng = rng_lock();
    let (vs, model) = TwoLinears::seeded(1);
    let mut peft =
        PeftModel::new(model, &vs, config(&["with_bias", "no_bias"], 6, 3).boxed(), "default").unwrap();
    randomize(&peft, 0.5);
    let x = Tensor::randn([3, 6], (Kind::Float, Device::Cpu));
    let (w0, b0) = (
        peft.model().with_bias.base().weight.copy(),
        peft.model().with_bias.base().bias.as_ref().unwrap().copy(),
    );
    let y = tch::no_grad(|| peft.forward_t(&x, false));
    for safe in [false, true] {
        peft.merge_adapter(None, safe).unwrap();
        let merged = tch::no_grad(|| peft.forward_t(&x, false));
        assert!(max_diff(&merged, &y) < 1e-5, "safe={safe}");
        assert!(
            max_diff(&peft.model().with_bias.base().bias.as_ref().unwrap().copy(), &b0) > 1e-4,
            "bias moved"
        );
        peft.unmerge_adapter().unwrap();
        assert!(max_diff(&peft.model().with_bias.base().weight, &w0) < 1e-6);
        assert!(max_diff(peft.model().with_bias.base().bias.as_ref().unwrap(), &b0) < 1e-6);
    }
    assert_safe_merge_refuses_nan(&mut peft, |m| m.with_bias.base().weight.shallow_clone());
}

#[test]
fn saved_adapters_reload_to_the_same_subspaces_and_outputs() {
    let _rng = rng_lock();
    let (vs, model) = TwoLinears::seeded(2);
    let peft =
        PeftModel::new(model, &vs, config(&["with_bias", "no_bias"], 5, 3).boxed(), "default").unwrap();
    randomize(&peft, 0.3);
    let x = Tensor::randn([3, 6], (Kind::Float, Device::Cpu));
    let y = tch::no_grad(|| peft.forward_t(&x, false));
    let dir = tempfile::tempdir().unwrap();
    peft.save_pretrained(dir.path(), &SaveOptions::default()).unwrap();
    let (vs2, model2) = TwoLinears::seeded(2);
    let (back, _) = PeftModel::from_pretrained(model2, &vs2, dir.path(), LoadOptions::default()).unwrap();
    assert!(tch::no_grad(|| back.forward_t(&x, false)).equal(&y));
    let seg = |p: &PeftModel<TwoLinears>| {
        tuner::<AdamssLayer>(p.model().with_bias.slots(), "default").segments().to_vec()
    };
    assert_eq!(seg(&peft), seg(&back));
}

#[test]
fn files_of_another_shape_fail_naming_the_key() {
    let _rng = rng_lock();
    let (vs, model) = TwoLinears::seeded(0);
    let peft = PeftModel::new(model, &vs, config(&["with_bias"], 5, 3).boxed(), "default").unwrap();
    let dir = save_with_config_edit(&peft, "\"r\": 5", "\"r\": 4");
    let (vs2, model2) = TwoLinears::seeded(0);
    match load_error(model2, &vs2, dir.path()) {
        PeftError::ShapeMismatch { key, expected, found, .. } => {
            assert!(key.contains("with_bias.adamss_"), "{key}");
            assert_ne!(expected, found);
        }
        other => panic!("expected a shape mismatch, got {other:?}"),
    }
}

#[test]
fn layers_and_options_adamss_cannot_take_are_refused_by_name() {
    let _rng = rng_lock();
    for target in ["gpt2", "emb", "conv1x1"] {
        let (vs, zoo) = LayerZoo::seeded(0);
        let err = PeftModel::new(zoo, &vs, config(&[target], 4, 2).boxed(), "default").unwrap_err();
        assert_unsupported_layer(&err, target, "ADAMSS", "only `torch.nn.Linear` is supported");
    }
    let (vs, q) = Quantized::seeded(1, None);
    let err = PeftModel::new(q, &vs, config(&["proj"], 4, 2).boxed(), "default").unwrap_err();
    assert_unsupported_layer(&err, "proj", "ADAMSS", "only `torch.nn.Linear` is supported");
    let mut w = vec![];
    for (json, message) in [
        (
            r#"{"peft_type": "ADAMSS", "init_weights": "gaussian"}"#,
            "init_weights must be 'orthogonal' or None, got gaussian",
        ),
        (
            r#"{"peft_type": "ADAMSS", "init_weights": true}"#,
            "init_weights must be 'orthogonal' or None, got True",
        ),
        (
            r#"{"peft_type": "ADAMSS", "use_asa": true, "mask_interval": 0}"#,
            "`mask_interval` must be a positive integer",
        ),
        (
            r#"{"peft_type": "ADAMSS", "use_asa": true, "init_warmup": 5, "final_warmup": 5}"#,
            "`init_warmup` must be smaller than `final_warmup`",
        ),
        (
            r#"{"peft_type": "ADAMSS", "use_asa": true, "asa_target_subspaces": 0}"#,
            "`asa_target_subspaces` must be a positive integer",
        ),
        (
            r#"{"peft_type": "ADAMSS", "use_asa": true, "asa_schedule_exponent": 0}"#,
            "`asa_schedule_exponent` must be a positive number",
        ),
    ] {
        let err = AdamssConfig::from_json_str(json, &mut w).unwrap_err();
        assert!(err.to_string().contains(message), "{err}");
    }
    // Without use_asa the schedule is not checked, as in PEFT.
    AdamssConfig::from_json_str(r#"{"peft_type": "ADAMSS", "mask_interval": 0}"#, &mut w).unwrap();
    // `false` is PEFT's old spelling of None.
    let c = AdamssConfig::from_json_str(r#"{"peft_type": "ADAMSS", "init_weights": false}"#, &mut w).unwrap();
    assert_eq!(c.init_weights, None);
    let (vs, zoo) = LayerZoo::seeded(0);
    let bad = AdamssConfig { subspace_rank: -1, ..config(&["lin0"], 4, 2) };
    assert!(PeftModel::new(zoo, &vs, bad.boxed(), "default")
        .unwrap_err()
        .to_string()
        .contains("subspace_rank"));
    // PEFT raises a zero rank to 1.
    let (vs, zoo) = LayerZoo::seeded(0);
    let zero = AdamssConfig { subspace_rank: 0, ..config(&["lin0"], 4, 2) };
    let peft = PeftModel::new(zoo, &vs, zero.boxed(), "default").unwrap();
    let l = tuner::<AdamssLayer>(peft.model().lin0.slots(), "default");
    assert_eq!(l.subspace(0).unwrap().0.size(), [1, 4]);
}

#[test]
fn asa_keeps_the_scheduled_number_of_subspaces_training() {
    let _rng = rng_lock();
    let (vs, model) = TwoLinears::seeded(4);
    let cfg = AdamssConfig {
        use_asa: true,
        asa_target_subspaces: 2,
        init_warmup: 0,
        final_warmup: 4,
        mask_interval: 2,
        ..config(&["with_bias", "no_bias"], 5, 3)
    };
    let mut peft = PeftModel::new(model, &vs, cfg.boxed(), "default").unwrap();
    randomize(&peft, 0.3);
    let mut asa = Asa::new();
    let x = Tensor::randn([8, 6], (Kind::Float, Device::Cpu));
    let trainable = |p: &PeftModel<TwoLinears>| {
        let mut n = 0;
        for lin in [&p.model().with_bias, &p.model().no_bias] {
            let l = tuner::<AdamssLayer>(lin.slots(), "default");
            n += (0..l.num_subspaces()).filter(|&i| l.subspace(i).unwrap().0.requires_grad()).count();
        }
        n
    };
    assert_eq!(trainable(&peft), 6);
    let mut targets = Vec::new();
    for step in 0..6 {
        let loss = peft.forward_t(&x, true).square().mean(Kind::Float);
        loss.backward();
        let done = asa.update_and_allocate(&mut peft, step).unwrap();
        targets.push(done[0].target);
        if let Some(t) = done[0].target {
            // PEFT keeps the subspaces scored strictly above the target-th best: target − 1 of them.
            let kept = if t >= 6 { 6 } else { t - 1 };
            assert_eq!(trainable(&peft) as i64, kept, "step {step}");
        }
        for (_, t) in peft.model().with_bias.slots().get("default").unwrap().named_tensors() {
            let mut g = t.grad();
            if g.defined() {
                let _ = g.zero_();
            }
        }
    }
    // total 6: step 0 keeps all, step 2: 2 + 4·(1/2)³ = 2.5 → 2, step 4: the target.
    assert_eq!(targets, [Some(6), None, Some(2), None, Some(2), None]);
    let masked: Vec<Tensor> = {
        let l = tuner::<AdamssLayer>(peft.model().with_bias.slots(), "default");
        (0..l.num_subspaces()).map(|i| l.subspace(i).unwrap().0).filter(|a| !a.requires_grad()).collect()
    };
    assert!(masked.iter().all(|a| !a.grad().defined()), "masked subspaces lose their gradients");
}
