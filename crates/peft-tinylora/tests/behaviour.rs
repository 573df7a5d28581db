//! TinyLoRA behaviour beyond the parity matrix: the layer written out independently (`B·R·A` with
//! `R = Σ vᵢ·Pᵢ`, `B·A` the best rank-`r` approximation of the weight), the identity at init, merges on
//! every layer kind, the vectors shared per `weight_tying` group and saved once, seeded projections drawn
//! again on load, the status of every layer listing every adapter, and what TinyLoRA cannot take refused
//! by name.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use peft_core::peft_config::{Num, TargetModules};
use peft_core::rng::Generator;
use peft_core::{LoadOptions, PeftError, PeftModel, SaveOptions};
use peft_testkit::nets::{LayerZoo, Quantized};
use peft_testkit::{
    assert_safe_merge_refuses_nan, assert_shape_mismatch, assert_unsupported_layer, load_error, max_diff,
    randomize, rng_lock, save_with_config_edit, tuner,
};
use peft_tinylora::{MethodConfig, TinyloraBase, TinyloraConfig, TinyloraInit, TinyloraLayer};
use tch::nn::ModuleT;
use tch::{Device, Kind, Tensor};

const ZOO_TARGETS: [&str; 4] = ["emb", "lin0", "lin1", "gpt2"];

fn config(targets: &[&str], u: i64) -> TinyloraConfig {
    TinyloraConfig {
        u,
        target_modules: Some(TargetModules::list(targets.iter().copied())),
        ..TinyloraConfig::default()
    }
}

fn zoo(cfg: TinyloraConfig) -> PeftModel<LayerZoo> {
    let (vs, model) = LayerZoo::seeded(0);
    PeftModel::new(model, &vs, cfg.boxed(), "default").unwrap()
}

fn ids() -> Tensor {
    Tensor::from_slice(&[0i64, 3, 6, 1, 2]).view([1, 5])
}

/// The embedding, the MLP and the GPT-2 layer on their inputs.
fn outputs(peft: &PeftModel<LayerZoo>, x: &Tensor, x4: &Tensor) -> Vec<Tensor> {
    let m = peft.model();
    tch::no_grad(|| vec![m.emb.forward(&ids()), m.forward_t(x, false), m.gpt2.forward(x4)])
}

#[test]
fn the_layer_is_base_plus_b_r_a_with_the_svd_of_the_weight() {
    let _rng = rng_lock();
    let peft = zoo(config(&["lin0"], 5));
    let lin = &peft.model().lin0;
    let layer = tuner::<TinyloraLayer>(lin.slots(), "default");
    let (a, b, p, v) = layer.tensors();
    tch::no_grad(|| v.shallow_clone().copy_(&Tensor::randn([5], (Kind::Float, Device::Cpu))));
    assert_eq!((a.size(), b.size(), p.size()), (vec![2, 10], vec![20, 2], vec![5, 2, 2]));
    // B·A is the rank-2 truncation U₂·S₂·V₂ᵀ of the weight, with √S on each side.
    let w = &lin.base().weight;
    let (u, s, vh) = w.svd(true, true);
    let best = u.narrow(1, 0, 2).matmul(&s.narrow(0, 0, 2).diag(0)).matmul(&vh.narrow(1, 0, 2).tr());
    assert!(max_diff(&b.matmul(a), &best) < 1e-5);
    assert!(
        max_diff(
            &a.norm_scalaropt_dim(2, [1i64].as_slice(), false),
            &b.norm_scalaropt_dim(2, [0i64].as_slice(), false)
        ) < 1e-5
    );
    let mut r = Tensor::zeros([2, 2], (Kind::Float, Device::Cpu));
    for i in 0..5 {
        r += p.get(i) * v.get(i).double_value(&[]);
    }
    assert!(max_diff(&layer.r_matrix(), &r) < 1e-6);
    let x = Tensor::randn([4, 10], (Kind::Float, Device::Cpu));
    let want = x.linear(w, lin.base().bias.as_ref()) + x.matmul(&b.matmul(&r).matmul(a).tr());
    assert!(max_diff(&tch::no_grad(|| lin.forward(&x)), &want) < 1e-5);
    // A rank larger than the layer's smaller side is capped.
    let peft = zoo(TinyloraConfig { r: 5, ..config(&["lin1"], 2) });
    let layer = tuner::<TinyloraLayer>(peft.model().lin1.slots(), "default");
    assert_eq!(layer.dims(), (2, 2));
    assert_eq!(layer.tensors().2.size(), [2, 2, 2]);
}

#[test]
fn the_default_init_is_the_identity_and_uniform_is_not() {
    let _rng = rng_lock();
    tch::manual_seed(5);
    let x = Tensor::randn([3, 10], (Kind::Float, Device::Cpu));
    let x4 = Tensor::randn([3, 10], (Kind::Float, Device::Cpu));
    for (init, identity) in
        [(TinyloraInit::Bool(true), true), (TinyloraInit::Scheme("uniform".into()), false)]
    {
        let cfg = TinyloraConfig {
            init_weights: init.clone(),
            init_v_bound: Num::from(0.5),
            ..config(&ZOO_TARGETS, 4)
        };
        let mut peft = zoo(cfg);
        let ours = outputs(&peft, &x, &x4);
        let base = {
            let guard = peft.disable_adapters().unwrap();
            let m = &*guard;
            tch::no_grad(|| vec![m.emb.forward(&ids()), m.forward_t(&x, false), m.gpt2.forward(&x4)])
        };
        for (o, b) in ours.iter().zip(&base) {
            assert_eq!(max_diff(o, b) == 0.0, identity, "{init:?}");
        }
    }
}

#[test]
fn merged_output_matches_unmerged_on_every_layer_kind() {
    let _rng = rng_lock();
    tch::manual_seed(1);
    let x = Tensor::randn([3, 10], (Kind::Float, Device::Cpu));
    let x4 = Tensor::randn([3, 10], (Kind::Float, Device::Cpu));
    let mut peft = zoo(TinyloraConfig { weight_tying: Num::from(0.5), ..config(&ZOO_TARGETS, 3) });
    randomize(&peft, 0.5);
    let unmerged = outputs(&peft, &x, &x4);
    let base_w = peft.model().gpt2.base().weight.copy();
    peft.merge_adapter(None, true).unwrap();
    assert!(max_diff(&peft.model().gpt2.base().weight, &base_w) > 1e-4, "the merge changed Conv1D's weight");
    for (m, u) in outputs(&peft, &x, &x4).iter().zip(&unmerged) {
        assert!(max_diff(m, u) < 1e-5);
    }
    peft.unmerge_adapter().unwrap();
    assert!(max_diff(&peft.model().gpt2.base().weight, &base_w) < 1e-6);
    let bare = peft.merge_and_unload(None, false).unwrap();
    assert!(max_diff(&tch::no_grad(|| bare.gpt2.forward(&x4)), &unmerged[2]) < 1e-5);
}

#[test]
fn weight_tying_groups_share_one_vector_saved_once() {
    let _rng = rng_lock();
    // 4 layers in model order (emb, lin0, lin1, gpt2), weight_tying 0.5: two groups of two.
    let peft = zoo(TinyloraConfig { weight_tying: Num::from(0.5), ..config(&ZOO_TARGETS, 3) });
    assert_eq!(peft.num_parameters().0, 2 * 3);
    let m = peft.model();
    let v = |slots| tuner::<TinyloraLayer>(slots, "default").tensors().3.shallow_clone();
    let vs = [v(m.emb.slots()), v(m.lin0.slots()), v(m.lin1.slots()), v(m.gpt2.slots())];
    let groups: Vec<(usize, i64)> = [m.emb.slots(), m.lin0.slots(), m.lin1.slots(), m.gpt2.slots()]
        .into_iter()
        .map(|s| tuner::<TinyloraLayer>(s, "default").group())
        .collect();
    assert_eq!(groups, [(0, 0), (0, 1), (1, 2), (1, 3)]);
    assert_eq!(vs[0].data_ptr(), vs[1].data_ptr());
    assert_eq!(vs[2].data_ptr(), vs[3].data_ptr());
    assert_ne!(vs[0].data_ptr(), vs[2].data_ptr());
    // PEFT lists the vectors under the first layer and saves them once, at the model level.
    let trainable: Vec<String> = peft.named_trainable_parameters().into_iter().map(|(k, _)| k).collect();
    assert_eq!(
        trainable,
        ["base_model.model.emb.tinylora_v.default.0", "base_model.model.emb.tinylora_v.default.1"]
    );
    let keys: Vec<String> = peft.adapter_state_dict("default").unwrap().into_iter().map(|(k, _)| k).collect();
    assert_eq!(keys.iter().filter(|k| k.contains("tinylora_v")).count(), 2);
    assert!(keys.contains(&"base_model.tinylora_v.1".to_string()), "{keys:?}");
    // Both layers of a group train the one vector.
    let y = m.lin1.forward(&m.lin0.forward(&Tensor::randn([2, 10], (Kind::Float, Device::Cpu))));
    y.sum(Kind::Float).backward();
    assert!(vs[1].grad().abs().sum(Kind::Float).double_value(&[]) > 0.0);
    assert!(vs[2].grad().abs().sum(Kind::Float).double_value(&[]) > 0.0);
    // weight_tying 1: one vector for the whole model.
    assert_eq!(
        zoo(TinyloraConfig { weight_tying: Num::from(1.0), ..config(&ZOO_TARGETS, 3) }).num_parameters().0,
        3
    );
}

#[test]
fn projections_are_seeded_per_layer_and_drawn_again_on_load() {
    let _rng = rng_lock();
    let cfg = TinyloraConfig { projection_seed: 9, save_projection: false, ..config(&["lin0", "lin1"], 4) };
    let peft = zoo(cfg);
    for (i, slots) in [peft.model().lin0.slots(), peft.model().lin1.slots()].into_iter().enumerate() {
        let mut want = Tensor::zeros([4, 2, 2], (Kind::Float, Device::Cpu));
        Generator::new(9 + i as u64).unwrap().normal_(&mut want, 0.0, 1.0 / 2f64.sqrt()).unwrap();
        assert!(tuner::<TinyloraLayer>(slots, "default").tensors().2.equal(&want), "layer {i}");
    }
    let mut v = peft.named_trainable_parameters().remove(0).1;
    tch::no_grad(|| v.copy_(&Tensor::from_slice(&[0.3f32, -0.2, 0.5, 0.1])));
    let dir = tempfile::tempdir().unwrap();
    peft.save_pretrained(dir.path(), &SaveOptions::default()).unwrap();
    let saved = peft_core::io::read_safetensors(&dir.path().join("adapter_model.safetensors")).unwrap();
    assert!(saved.iter().all(|t| !t.key.contains("tinylora_P")));
    let x = Tensor::randn([3, 10], (Kind::Float, Device::Cpu));
    let (vs2, model2) = LayerZoo::seeded(0);
    let (reloaded, _) = PeftModel::from_pretrained(model2, &vs2, dir.path(), LoadOptions::default()).unwrap();
    let y = tch::no_grad(|| peft.model().forward_t(&x, false));
    assert!(tch::no_grad(|| reloaded.model().forward_t(&x, false)).equal(&y));
}

#[test]
fn every_layer_lists_every_adapter_and_deleted_ones_leave() {
    let _rng = rng_lock();
    let mut peft = zoo(config(&["lin0", "lin1"], 2));
    peft.add_adapter("other", config(&["lin1"], 3).boxed()).unwrap();
    let status = peft.layer_status();
    assert_eq!(status[0].name, "lin0");
    assert_eq!(status[0].available_adapters, ["default", "other"]);
    assert_eq!(status[0].requires_grad.keys().collect::<Vec<_>>(), ["default", "other"]);
    // The second adapter's projections on lin1 are seeded with the first adapter's index of lin1 (1).
    let other = tuner::<TinyloraLayer>(peft.model().lin1.slots(), "other");
    assert_eq!(other.group(), (0, 1));
    peft.delete_adapter("other").unwrap();
    assert_eq!(peft.layer_status()[0].available_adapters, ["default"]);
    assert_eq!(peft.layer_status()[1].available_adapters, ["default"]);
}

#[test]
fn unsupported_layers_and_options_are_refused_by_name() {
    let _rng = rng_lock();
    let (vs, model) = LayerZoo::seeded(0);
    let err = PeftModel::new(model, &vs, config(&["conv3x3"], 2).boxed(), "default").unwrap_err();
    assert_unsupported_layer(&err, "conv3x3", "TINYLORA", "`torch.nn.Embedding`");
    let (vs, model) = Quantized::seeded(0, None);
    let err = PeftModel::new(model, &vs, config(&["proj"], 2).boxed(), "default").unwrap_err();
    assert_unsupported_layer(&err, "proj", "TINYLORA", "quantized");
    // Strings other than "uniform" are refused (PEFT would leave v uninitialised).
    let cfg =
        TinyloraConfig { init_weights: TinyloraInit::Scheme("gaussian".into()), ..config(&["lin0"], 2) };
    let (vs, model) = LayerZoo::seeded(0);
    let err = PeftModel::new(model, &vs, cfg.boxed(), "default").unwrap_err();
    assert!(
        matches!(err, PeftError::UnsupportedOption { .. }) && err.to_string().contains("init_weights"),
        "{err}"
    );
    // PEFT's __post_init__ checks, on files.
    for (bad, needle) in
        [(r#""r": 0"#, "`r`"), (r#""u": -1"#, "`u`"), (r#""weight_tying": 1.5"#, "weight_tying")]
    {
        let json = format!(r#"{{"peft_type": "TINYLORA", "target_modules": ["lin0"], {bad}}}"#);
        let err = TinyloraConfig::from_json_str(&json, &mut Vec::new()).unwrap_err();
        assert!(err.to_string().contains(needle), "{bad}: {err}");
    }
    // Every adapter saves its projections, or none.
    let mut peft = zoo(config(&["lin0"], 2));
    let err = peft
        .add_adapter("b", TinyloraConfig { save_projection: false, ..config(&["lin0"], 2) }.boxed())
        .unwrap_err();
    assert!(err.to_string().contains("must be saved for all adapters or none"), "{err}");
    // A second adapter on GPT-2's Conv1D that says fan_in_fan_out=false: PEFT decomposes the stored
    // (in, out) weight and fails in the forward pass.
    let mut peft = zoo(config(&["gpt2"], 2));
    let err = peft.add_adapter("b", config(&["gpt2"], 2).boxed()).unwrap_err();
    assert!(err.to_string().contains("set fan_in_fan_out=true"), "{err}");
    let ok = TinyloraConfig { fan_in_fan_out: true, ..config(&["gpt2"], 2) };
    peft.add_adapter("c", ok.boxed()).unwrap();
    let c = tuner::<TinyloraLayer>(peft.model().gpt2.slots(), "c");
    assert_eq!(c.base_kind(), TinyloraBase::Linear { fan_in_fan_out: true });
    assert_eq!(c.tensors().0.size(), [2, 10]);
}

#[test]
fn a_safe_merge_refuses_non_finite_weights() {
    let _rng = rng_lock();
    let mut peft = zoo(config(&["lin0", "emb"], 3));
    assert_safe_merge_refuses_nan(&mut peft, |m| m.lin0.base().weight.shallow_clone());
}

#[test]
fn a_file_of_another_shape_is_refused_naming_the_key() {
    let _rng = rng_lock();
    let peft = zoo(TinyloraConfig { weight_tying: Num::from(1.0), ..config(&["lin0", "lin1"], 3) });
    let dir = save_with_config_edit(&peft, r#""u": 3"#, r#""u": 4"#);
    let (vs, model) = LayerZoo::seeded(0);
    let err = load_error(model, &vs, dir.path());
    assert_shape_mismatch(&err, "base_model.model.lin0.tinylora_P", &[4, 2, 2], &[3, 2, 2]);
}

#[test]
fn half_precision_bases_get_f32_adapters_and_keep_their_output_dtype() {
    let _rng = rng_lock();
    let (mut vs, model) = LayerZoo::seeded(0);
    vs.bfloat16();
    let cfg = TinyloraConfig {
        init_weights: TinyloraInit::Scheme("uniform".into()),
        ..config(&["lin0", "emb"], 3)
    };
    let mut peft = PeftModel::new(model, &vs, cfg.boxed(), "default").unwrap();
    let layer = tuner::<TinyloraLayer>(peft.model().lin0.slots(), "default");
    let (a, b, p, v) = layer.tensors();
    assert!([a, b, p, v].iter().all(|t| t.kind() == Kind::Float), "autocast adapters are f32");
    let x = Tensor::randn([3, 10], (Kind::Float, Device::Cpu)).to_kind(Kind::BFloat16);
    let y = tch::no_grad(|| peft.model().lin0.forward(&x));
    assert_eq!(y.kind(), Kind::BFloat16);
    peft.merge_adapter(None, true).unwrap();
    let merged = tch::no_grad(|| peft.model().lin0.forward(&x));
    assert!(max_diff(&merged.to_kind(Kind::Float), &y.to_kind(Kind::Float)) < 5e-2);
}

#[test]
fn projections_missing_from_a_file_are_drawn_from_the_seed() {
    let _rng = rng_lock();
    let peft = zoo(TinyloraConfig { projection_seed: 4, ..config(&["lin0", "lin1"], 3) });
    let mut v = peft.named_trainable_parameters().remove(0).1;
    tch::no_grad(|| v.copy_(&Tensor::from_slice(&[0.4f32, -0.3, 0.2])));
    let dir = tempfile::tempdir().unwrap();
    peft.save_pretrained(dir.path(), &SaveOptions::default()).unwrap();
    let file = dir.path().join("adapter_model.safetensors");
    let kept: Vec<(String, Tensor)> = peft_core::io::read_safetensors(&file)
        .unwrap()
        .into_iter()
        .filter(|t| !t.key.contains("tinylora_P"))
        .map(|t| (t.key, t.tensor))
        .collect();
    assert_eq!(kept.len(), 6, "A, B and v of two layers");
    peft_core::io::write_safetensors(&file, &kept).unwrap();
    let (vs2, model2) = LayerZoo::seeded(0);
    let (reloaded, _) = PeftModel::from_pretrained(model2, &vs2, dir.path(), LoadOptions::default()).unwrap();
    let x = Tensor::randn([3, 10], (Kind::Float, Device::Cpu));
    let y = tch::no_grad(|| peft.model().forward_t(&x, false));
    assert!(tch::no_grad(|| reloaded.model().forward_t(&x, false)).equal(&y));
}
