//! RoAd behaviour beyond the parity matrix: identity at init, the rotation itself, merging (weight and
//! bias), mixed-adapter batches, the layers and options PEFT refuses, bad files — each error naming what
//! is wrong.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use peft_core::nn::{self as pnn, ConvConfig, EmbeddingConfig, LinearConfig};
use peft_core::peft_config::TargetModules;
use peft_core::MethodConfig;
use peft_core::{Adaptable, ForwardCtx, PeftError, PeftModel};
use peft_road::{RoadConfig, RoadLayer, RoadVariant};
use peft_testkit::nets::Quantized;
use peft_testkit::{load_error, max_diff, randomize, rng_lock as rng, save_with_config_edit};
use tch::nn::{ModuleT, VarStore};
use tch::{Device, Kind, Tensor};

#[derive(Debug, Adaptable)]
struct Net {
    emb: pnn::Embedding,
    lin0: pnn::Linear,
    lin1: pnn::Linear,
    nobias: pnn::Linear,
    conv2d: pnn::Conv,
    conv1d: pnn::Conv,
    gpt2: pnn::Linear,
}

impl Net {
    fn new(vs: &VarStore) -> Self {
        let p = vs.root();
        Net {
            emb: pnn::embedding(&p / "emb", 7, 10, EmbeddingConfig { padding_idx: None, init: true })
                .unwrap(),
            lin0: pnn::linear(&p / "lin0", 10, 20, Default::default()).unwrap(),
            lin1: pnn::linear(&p / "lin1", 20, 4, Default::default()).unwrap(),
            nobias: pnn::linear(&p / "nobias", 10, 8, LinearConfig { bias: false, init: true }).unwrap(),
            conv2d: pnn::conv2d(&p / "conv2d", 4, 6, &[1], ConvConfig::default()).unwrap(),
            conv1d: pnn::conv1d(&p / "conv1d", 4, 4, 3, ConvConfig::default()).unwrap(),
            gpt2: pnn::transformers_conv1d(&p / "gpt2", 4, 10).unwrap(),
        }
    }

    fn forward_ctx(&self, x: &Tensor, ctx: &ForwardCtx<'_>) -> Tensor {
        let h = self.lin0.forward_ctx(x, ctx).relu();
        let y = self.lin1.forward_ctx(&h, ctx);
        Tensor::cat(&[y, self.nobias.forward_ctx(x, ctx)], 1)
    }
}

impl ModuleT for Net {
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        self.forward_ctx(x, &ForwardCtx::from_train(train))
    }
}

fn net() -> (VarStore, Net) {
    tch::manual_seed(0);
    let vs = VarStore::new(Device::Cpu);
    let n = Net::new(&vs);
    (vs, n)
}

fn config(targets: &[&str], variant: RoadVariant, group_size: i64) -> RoadConfig {
    RoadConfig {
        target_modules: Some(TargetModules::list(targets.iter().copied())),
        variant,
        group_size,
        ..RoadConfig::default()
    }
}

fn road<'a>(layer: &'a peft_core::AdapterSlots, adapter: &str) -> &'a RoadLayer {
    layer.get(adapter).unwrap().as_any().downcast_ref::<RoadLayer>().unwrap()
}

const VARIANTS: [RoadVariant; 3] = [RoadVariant::Road1, RoadVariant::Road2, RoadVariant::Road4];

fn x() -> Tensor {
    Tensor::randn([5, 10], (Kind::Float, Device::Cpu))
}

#[test]
fn the_default_init_is_exactly_the_identity() {
    let _rng = rng();
    for variant in VARIANTS {
        let (vs, n) = net();
        let mut peft =
            PeftModel::new(n, &vs, config(&["lin0", "lin1", "nobias"], variant, 4).boxed(), "default")
                .unwrap();
        let x = x();
        let y = tch::no_grad(|| peft.forward_t(&x, false));
        let base = tch::no_grad(|| peft.disable_adapters().unwrap().forward_t(&x, false));
        assert!(y.equal(&base), "{variant:?}");
        let sizes: Vec<i64> = peft.adapter_var_store().variables().values().map(|t| t.size()[0]).collect();
        let want = variant.parameters(20);
        assert!(sizes.contains(&want), "{variant:?}: {sizes:?}");
    }
}

#[test]
fn each_pair_is_rotated_and_scaled() {
    let _rng = rng();
    let (vs, n) = net();
    let peft = PeftModel::new(n, &vs, config(&["lin0"], RoadVariant::Road1, 4).boxed(), "default").unwrap();
    let layer = road(peft.model().lin0.slots(), "default");
    // Angles k·0.3, scales 1.5 for every pair.
    tch::no_grad(|| {
        layer.theta().shallow_clone().copy_(&(Tensor::arange(10, (Kind::Float, Device::Cpu)) * 0.3));
        let _ = layer.alpha().shallow_clone().fill_(1.5);
    });
    let y = Tensor::randn([3, 20], (Kind::Float, Device::Cpu));
    let out = tch::no_grad(|| layer.rotate(&y));
    let g = 4;
    for group in 0..5 {
        for i in 0..2 {
            let (a, b) = (group * g + i, group * g + i + 2);
            let angle = ((group * 2 + i) as f64) * 0.3;
            let (c, s) = (angle.cos() * 1.5, angle.sin() * 1.5);
            let (ya, yb) = (y.select(1, a), y.select(1, b));
            let want_a = &ya * c - &yb * s;
            let want_b = &ya * s + &yb * c;
            assert!(max_diff(&out.select(1, a), &want_a) < 1e-5, "group {group} element {i}");
            assert!(max_diff(&out.select(1, b), &want_b) < 1e-5, "group {group} element {i}");
        }
    }
}

#[test]
fn several_active_adapters_rotate_in_turn() {
    let _rng = rng();
    let (vs, n) = net();
    let mut peft = PeftModel::new(n, &vs, config(&["lin0"], RoadVariant::Road2, 4).boxed(), "alpha").unwrap();
    peft.add_adapter("beta", config(&["lin0"], RoadVariant::Road4, 10).boxed()).unwrap();
    randomize(&peft, 0.5);
    peft.set_adapters(&["alpha", "beta"]).unwrap();
    let x = x();
    let y = tch::no_grad(|| peft.model().lin0.forward(&x));
    let slots = peft.model().lin0.slots();
    let base = tch::no_grad(|| peft_core::BaseLayer::forward(peft.model().lin0.base(), &x));
    let want = tch::no_grad(|| road(slots, "beta").rotate(&road(slots, "alpha").rotate(&base)));
    assert!(y.equal(&want));
}

#[test]
fn merged_equals_unmerged_with_and_without_bias_and_unmerging_restores() {
    let _rng = rng();
    for variant in VARIANTS {
        let (vs, n) = net();
        let mut peft =
            PeftModel::new(n, &vs, config(&["lin0", "lin1", "nobias"], variant, 4).boxed(), "default")
                .unwrap();
        randomize(&peft, 0.5);
        let x = x();
        let (w0, b0) =
            (peft.model().lin0.base().weight.copy(), peft.model().lin0.base().bias.as_ref().unwrap().copy());
        let unmerged = tch::no_grad(|| peft.forward_t(&x, false));
        let base = tch::no_grad(|| peft.disable_adapters().unwrap().forward_t(&x, false));
        assert!(max_diff(&unmerged, &base) > 1e-3);
        peft.merge_adapter(None, true).unwrap();
        let merged = tch::no_grad(|| peft.forward_t(&x, false));
        assert!(max_diff(&unmerged, &merged) < 1e-4, "{variant:?}: {}", max_diff(&unmerged, &merged));
        assert!(max_diff(peft.model().lin0.base().bias.as_ref().unwrap(), &b0) > 1e-3, "the bias is rotated");
        peft.unmerge_adapter().unwrap();
        assert!(max_diff(&peft.model().lin0.base().weight, &w0) < 1e-5);
        assert!(max_diff(peft.model().lin0.base().bias.as_ref().unwrap(), &b0) < 1e-5);
    }
}

#[test]
fn mixed_batches_give_each_row_its_adapter() {
    let _rng = rng();
    let (vs, n) = net();
    let mut peft =
        PeftModel::new(n, &vs, config(&["lin0", "lin1"], RoadVariant::Road1, 2).boxed(), "alpha").unwrap();
    // beta is not on lin1: its rows keep lin1's base output there.
    peft.add_adapter("beta", config(&["lin0", "nobias"], RoadVariant::Road4, 4).boxed()).unwrap();
    randomize(&peft, 0.5);
    let x = Tensor::randn([6, 10], (Kind::Float, Device::Cpu));
    let rows = ["alpha", "beta", "__base__", "alpha", "beta", "beta"];
    let ra = peft.row_adapters(&rows).unwrap();
    let mixed = tch::no_grad(|| peft.model().forward_ctx(&x, &ForwardCtx::eval().with_rows(&ra)));
    for name in ["alpha", "beta", "__base__"] {
        let full = if name == "__base__" {
            tch::no_grad(|| peft.disable_adapters().unwrap().forward_t(&x, false))
        } else {
            peft.set_adapter(name).unwrap();
            tch::no_grad(|| peft.forward_t(&x, false))
        };
        for (i, _) in rows.iter().enumerate().filter(|(_, r)| **r == name) {
            assert!(mixed.get(i as i64).equal(&full.get(i as i64)), "row {i} ({name})");
        }
    }
    // Unknown names and merged adapters are refused.
    assert!(peft.row_adapters(&["alpha", "gamma"]).unwrap_err().to_string().contains("gamma"));
    peft.merge_adapter(None, false).unwrap();
    assert!(peft.row_adapters(&["alpha"]).unwrap_err().to_string().contains("merged"));
}

#[test]
fn layers_road_cannot_adapt_are_refused_by_name() {
    let _rng = rng();
    for target in ["emb", "conv2d", "conv1d", "gpt2"] {
        let (vs, n) = net();
        let err =
            PeftModel::new(n, &vs, config(&[target], RoadVariant::Road1, 2).boxed(), "default").unwrap_err();
        match &err {
            PeftError::UnsupportedLayer { module, peft_type, .. } => {
                assert_eq!(module, target);
                assert_eq!(peft_type, "ROAD");
            }
            other => panic!("{target}: expected UnsupportedLayer, got {other:?}"),
        }
        assert!(
            err.to_string().contains("only the following modules are supported: `torch.nn.Linear`"),
            "{err}"
        );
    }
}

#[test]
fn quantized_linears_are_refused() {
    let _rng = rng();
    let (vs, model) = Quantized::seeded(1, None);
    let cfg = RoadConfig {
        target_modules: Some(TargetModules::list(["proj"])),
        group_size: 16,
        ..RoadConfig::default()
    };
    let err = PeftModel::new(model, &vs, cfg.boxed(), "default").unwrap_err();
    assert!(
        matches!(err, PeftError::UnsupportedLayer { .. }) && err.to_string().contains("quantized"),
        "{err}"
    );
}

#[test]
fn a_group_size_that_does_not_divide_the_outputs_is_refused() {
    let _rng = rng();
    let (vs, n) = net();
    // lin0 has 20 outputs.
    let err =
        PeftModel::new(n, &vs, config(&["lin0"], RoadVariant::Road2, 8).boxed(), "default").unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("`lin0`") && msg.contains("divisible by group_size (8)") && msg.contains("20"),
        "{msg}"
    );
    // The default (64) fits no layer of this model.
    let (vs, n) = net();
    let cfg = RoadConfig { target_modules: Some(TargetModules::list(["lin1"])), ..RoadConfig::default() };
    assert!(PeftModel::new(n, &vs, cfg.boxed(), "default").is_err());
}

#[test]
fn config_checks_follow_peft() {
    let _rng = rng();
    let parse = |text: &str| {
        let mut w = vec![];
        RoadConfig::from_json_str(text, &mut w)
    };
    let err = parse(r#"{"peft_type": "ROAD", "variant": "road_3"}"#).unwrap_err();
    assert!(err.to_string().contains("Invalid variant road_3 specified"), "{err}");
    for g in [0, -2, 7] {
        let err = parse(&format!(r#"{{"peft_type": "ROAD", "group_size": {g}}}"#)).unwrap_err();
        assert!(
            err.to_string().contains(&format!(
                "The group_size must be divisible by 2 when using RoadLayer, but got {g}"
            )),
            "{err}"
        );
    }
    let c = parse(r#"{"peft_type": "ROAD", "variant": "road_4", "target_modules": ["q", "q"]}"#).unwrap();
    assert_eq!(c.variant, RoadVariant::Road4);
    assert_eq!(c.target_modules, Some(TargetModules::list(["q"])));
    assert_eq!(peft_core::AdapterConfig::to_json(&c)["variant"], "road_4");
    // Configs built in code are checked too.
    let (vs, n) = net();
    let err =
        PeftModel::new(n, &vs, config(&["lin0"], RoadVariant::Road1, 3).boxed(), "default").unwrap_err();
    assert!(err.to_string().contains("but got 3"), "{err}");
}

#[test]
fn a_non_finite_safe_merge_is_refused_and_nothing_is_written() {
    let _rng = rng();
    let (vs, n) = net();
    let mut peft =
        PeftModel::new(n, &vs, config(&["lin0"], RoadVariant::Road2, 4).boxed(), "default").unwrap();
    let layer = road(peft.model().lin0.slots(), "default");
    tch::no_grad(|| {
        let _ = layer.alpha().shallow_clone().fill_(f64::INFINITY);
    });
    let w = peft.model().lin0.base().weight.copy();
    let b = peft.model().lin0.base().bias.as_ref().unwrap().copy();
    let err = peft.merge_adapter(None, true).unwrap_err();
    assert!(matches!(err, PeftError::NonFiniteMerge { .. }), "{err:?}");
    assert!(peft.model().lin0.base().weight.equal(&w));
    assert!(peft.model().lin0.base().bias.as_ref().unwrap().equal(&b));
}

#[test]
fn a_file_with_another_variant_fails_to_load_naming_key_and_shapes() {
    let _rng = rng();
    let (vs, n) = net();
    let peft = PeftModel::new(n, &vs, config(&["lin0"], RoadVariant::Road1, 4).boxed(), "default").unwrap();
    let keys: Vec<String> = peft.adapter_state_dict("default").unwrap().into_iter().map(|(k, _)| k).collect();
    assert_eq!(keys, ["base_model.model.lin0.road_theta", "base_model.model.lin0.road_alpha"]);
    let dir = save_with_config_edit(&peft, "\"road_1\"", "\"road_2\"");
    let (vs2, n2) = net();
    let err = load_error(n2, &vs2, dir.path());
    match &err {
        PeftError::ShapeMismatch { key, expected, found, .. } => {
            assert!(key.starts_with("base_model.model.lin0.road_"), "{key}");
            assert_eq!((expected.as_slice(), found.as_slice()), (&[20][..], &[10][..]));
        }
        other => panic!("expected a shape mismatch, got {other:?}"),
    }
}
