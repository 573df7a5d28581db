//! LiLy behaviour beyond the parity matrix: the layer written out from its factors and router, the
//! identity at init, PEFT's sharing of `lily_A` / `lily_B` (one tensor, trained by every layer using it,
//! listed once), the batch-wide mixture, and what LiLy cannot take refused by name.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use peft_core::nn as pnn;
use peft_core::peft_config::TargetModules;
use peft_core::{Adaptable, PeftModel};
use peft_lily::{LilyConfig, LilyLayer, MethodConfig};
use peft_testkit::nets::{seeded, LayerZoo, Quantized};
use peft_testkit::{
    assert_shape_mismatch, assert_unsupported_layer, load_error, max_diff, randomize, rng_lock,
    save_with_config_edit, tuner,
};
use tch::nn::{ModuleT, VarStore};
use tch::{Device, Kind, Tensor};

fn config(targets: &[&str], r: i64, stride_a: i64, num_b: i64) -> LilyConfig {
    LilyConfig {
        r,
        stride_A: stride_a,
        num_B: num_b,
        target_modules: Some(TargetModules::list(targets.iter().copied())),
        ..LilyConfig::default()
    }
}

/// Three blocks of two 6 × 6 linears (`blocks.i.q`, `blocks.i.v`), then a 6 → 2 head `head.v`.
#[derive(Debug, Adaptable)]
struct Stack {
    q0: pnn::Linear,
    v0: pnn::Linear,
    q1: pnn::Linear,
    v1: pnn::Linear,
    q2: pnn::Linear,
    v2: pnn::Linear,
    v_head: pnn::Linear,
}

impl Stack {
    fn seeded(seed: i64) -> (VarStore, Self) {
        seeded(seed, |vs| {
            let lin = |name: &str, o: i64| {
                let path = name.split('.').fold(vs.root(), |p, part| p / part);
                pnn::linear(path, 6, o, Default::default()).unwrap()
            };
            Stack {
                q0: lin("blocks.0.q", 6),
                v0: lin("blocks.0.v", 6),
                q1: lin("blocks.1.q", 6),
                v1: lin("blocks.1.v", 6),
                q2: lin("blocks.2.q", 6),
                v2: lin("blocks.2.v", 6),
                v_head: lin("head.v", 2),
            }
        })
    }

    fn layers(&self) -> [&pnn::Linear; 7] {
        [&self.q0, &self.v0, &self.q1, &self.v1, &self.q2, &self.v2, &self.v_head]
    }
}

impl ModuleT for Stack {
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let mut h = x.shallow_clone();
        for l in &self.layers()[..6] {
            h = l.forward_t(&h, train).relu();
        }
        self.v_head.forward_t(&h, train)
    }
}

fn lily(l: &pnn::Linear) -> &LilyLayer {
    tuner::<LilyLayer>(l.slots(), "default")
}

#[test]
fn the_layer_adds_scaled_h_times_the_batch_mean_mixture_of_experts() {
    let _rng = rng_lock();
    let (vs, zoo) = LayerZoo::seeded(0);
    let cfg = LilyConfig { scaling: 0.7, ..config(&["lin0"], 3, 1, 4) };
    let peft = PeftModel::new(zoo, &vs, cfg.boxed(), "default").unwrap();
    randomize(&peft, 0.5);
    let l = lily(&peft.model().lin0);
    let (a, b, router) = l.tensors();
    assert_eq!((a.size(), b.size(), router.size()), (vec![3, 10], vec![12, 20], vec![4, 3]));
    tch::manual_seed(1);
    let x = Tensor::randn([2, 5, 10], (Kind::Float, Device::Cpu));
    let base = peft.model().lin0.base();
    let h = x.matmul(&a.tr());
    // One mixture for the whole batch: the softmax averaged over every row of every sequence.
    let p = h.matmul(&router.tr()).softmax(-1, Kind::Float).reshape([-1, 4]).mean_dim(
        [0i64].as_slice(),
        false,
        Kind::Float,
    );
    let mut combined = Tensor::zeros([3, 20], (Kind::Float, Device::Cpu));
    for e in 0..4 {
        combined += b.reshape([4, 3, 20]).get(e) * p.get(e);
    }
    let want = x.linear(&base.weight, base.bias.as_ref()) + h.matmul(&combined) * 0.7;
    let got = tch::no_grad(|| peft.model().lin0.forward(&x));
    assert!(max_diff(&got, &want) < 1e-5);
    // Another batch around the same row gives that row another output: the mixture is batch-wide.
    let row = x.get(0).get(0).unsqueeze(0);
    let alone = tch::no_grad(|| peft.model().lin0.forward(&row));
    assert!(max_diff(&alone, &got.get(0).get(0).unsqueeze(0)) > 1e-7);
}

#[test]
fn b_starts_at_zero_so_the_model_starts_as_the_base_and_random_init_does_not() {
    let _rng = rng_lock();
    tch::manual_seed(2);
    let x = Tensor::randn([4, 6], (Kind::Float, Device::Cpu));
    for init_weights in [true, false] {
        let (vs, stack) = Stack::seeded(0);
        let cfg = LilyConfig { init_weights, ..config(&["q", "v"], 2, 2, 2) };
        let mut peft = PeftModel::new(stack, &vs, cfg.boxed(), "default").unwrap();
        let y = tch::no_grad(|| peft.forward_t(&x, false));
        let base = tch::no_grad(|| peft.disable_adapters().unwrap().forward_t(&x, false));
        assert_eq!(max_diff(&y, &base) == 0.0, init_weights, "init_weights={init_weights}");
    }
}

#[test]
fn layers_of_one_target_and_shape_share_b_and_runs_of_stride_a_share_a() {
    let _rng = rng_lock();
    let (vs, stack) = Stack::seeded(0);
    let peft = PeftModel::new(stack, &vs, config(&["q", "v"], 2, 2, 3).boxed(), "default").unwrap();
    let m = peft.model();
    let (q, v) = ([&m.q0, &m.q1, &m.q2], [&m.v0, &m.v1, &m.v2]);
    for group in [q, v] {
        let (a0, b0, _) = lily(group[0]).tensors();
        // Blocks 0 and 1 form one run of stride_A = 2; block 2 starts the next.
        assert!(lily(group[1]).tensors().0.equal(a0) && lily(group[1]).owns() == (false, false));
        assert!(!lily(group[2]).tensors().0.equal(a0) && lily(group[2]).owns() == (true, false));
        for l in group {
            assert_eq!(lily(l).tensors().1.data_ptr(), b0.data_ptr(), "one lily_B per target");
        }
    }
    // `q` and `v` never share; `head.v` (the target `v`, another shape) is a group of its own.
    assert_ne!(lily(&m.q0).tensors().1.data_ptr(), lily(&m.v0).tensors().1.data_ptr());
    assert!(lily(&m.v_head).owns() == (true, true));
    // Each shared tensor counts once and is listed once, under its first layer.
    let (a_n, b_n, router_n) = (2 * 6, 3 * 2 * 6, 3 * 2);
    let heads = 2 * 6 + 3 * 2 * 2 + router_n;
    assert_eq!(peft.num_parameters().0, 2 * (2 * a_n + b_n + 3 * router_n) + heads);
    let names: Vec<String> = peft.named_trainable_parameters().into_iter().map(|(k, _)| k).collect();
    assert!(names.contains(&"base_model.model.blocks.0.q.lily_B.default.weight".to_string()));
    assert!(
        !names
            .iter()
            .any(|n| n.starts_with("base_model.model.blocks.1.q.lily_") && !n.contains("lily_router")),
        "{names:?}"
    );
    // The file holds every layer's copy, as PEFT's state dict does.
    let keys: Vec<String> = peft.adapter_state_dict("default").unwrap().into_iter().map(|(k, _)| k).collect();
    assert_eq!(keys.len(), 7 * 3);
}

#[test]
fn a_shared_factor_gathers_the_gradient_of_every_layer_using_it() {
    let _rng = rng_lock();
    let (vs, stack) = Stack::seeded(0);
    let peft = PeftModel::new(stack, &vs, config(&["q"], 2, 3, 2).boxed(), "default").unwrap();
    randomize(&peft, 0.3);
    tch::manual_seed(3);
    let x = Tensor::randn([4, 6], (Kind::Float, Device::Cpu));
    peft.forward_t(&x, true).sum(Kind::Float).backward();
    let m = peft.model();
    let (a, b, _) = lily(&m.q0).tensors();
    assert!(a.grad().defined() && b.grad().defined());
    // The gradient is one tensor's: q1 and q2 read the very tensor q0 holds.
    assert!(lily(&m.q2).tensors().0.grad().equal(&a.grad()));
}

#[test]
fn merges_are_refused_as_in_peft_and_other_layers_by_name() {
    let _rng = rng_lock();
    let (vs, zoo) = LayerZoo::seeded(0);
    let mut peft = PeftModel::new(zoo, &vs, config(&["lin0"], 2, 1, 2).boxed(), "default").unwrap();
    let err = peft.merge_adapter(None, false).unwrap_err();
    assert!(err.to_string().contains("This method is not supported for Lily."), "{err}");
    assert!(peft.model().lin0.slots().merged().is_empty());
    for target in ["gpt2", "emb", "conv1x1"] {
        let (vs, zoo) = LayerZoo::seeded(0);
        let err = PeftModel::new(zoo, &vs, config(&[target], 2, 1, 2).boxed(), "default").unwrap_err();
        assert_unsupported_layer(&err, target, "LILY", "Lily does not support target modules of type");
    }
    // PEFT's `nn.Linear` check admits bitsandbytes' linears; the mixture needs only the base's output.
    let (vs, q) = Quantized::seeded(1, None);
    let peft = PeftModel::new(q, &vs, config(&["proj"], 2, 1, 2).boxed(), "default").unwrap();
    let x = Tensor::randn([2, 64], (Kind::Float, Device::Cpu));
    assert_eq!(tch::no_grad(|| peft.model().proj.forward(&x)).size(), [2, 16]);
}

#[test]
fn options_lily_refuses_are_refused_by_name() {
    let mut w = vec![];
    for (json, message) in [
        (r#"{"peft_type": "LILY", "stride_A": 0}"#, "`stride_A` must be at least 1."),
        (r#"{"peft_type": "LILY", "num_B": 1}"#, "`num_B` must be at least 2 for the router to be trained."),
        (
            r#"{"peft_type": "LILY", "layers_pattern": "layers"}"#,
            "When `layers_pattern` is specified, `layers_to_transform` must also be specified.",
        ),
    ] {
        let err = LilyConfig::from_json_str(json, &mut w).unwrap_err();
        assert!(err.to_string().contains(message), "{json}: {err}");
    }
    let _rng = rng_lock();
    let (vs, zoo) = LayerZoo::seeded(0);
    let err = PeftModel::new(zoo, &vs, config(&["lin0"], 0, 1, 2).boxed(), "default").unwrap_err();
    assert!(
        err.to_string().contains("`r` should be a positive integer value but the value passed is 0"),
        "{err}"
    );
}

#[test]
fn files_of_another_shape_fail_naming_key_and_shapes() {
    let _rng = rng_lock();
    let (vs, zoo) = LayerZoo::seeded(0);
    let peft = PeftModel::new(zoo, &vs, config(&["lin0"], 2, 1, 2).boxed(), "default").unwrap();
    let dir = save_with_config_edit(&peft, "\"num_B\": 2", "\"num_B\": 3");
    let (vs2, zoo2) = LayerZoo::seeded(0);
    assert_shape_mismatch(
        &load_error(zoo2, &vs2, dir.path()),
        "base_model.model.lin0.lily_B.weight",
        &[6, 20],
        &[4, 20],
    );
}

#[test]
fn the_config_round_trips_through_peft_json() {
    let mut warnings = Vec::new();
    let text = r#"{"peft_type": "LILY", "target_modules": ["q", "q", "v"], "stride_A": 2, "num_B": 4, "scaling": 0.5}"#;
    let config = LilyConfig::from_json_str(text, &mut warnings).unwrap();
    assert_eq!(config.target_modules, Some(TargetModules::list(["q", "v"])), "the list becomes a set");
    let again =
        LilyConfig::from_json_str(&peft_core::config::to_config_file_text(&config), &mut warnings).unwrap();
    assert_eq!(config, again);
    assert!(warnings.is_empty(), "{warnings:?}");
}
