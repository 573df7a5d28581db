//! What LoHa and LoKr share through the LyCORIS machinery, checked on both: safe merges that refuse
//! non-finite weights and change nothing, module dropout (one draw per layer in training, none in
//! evaluation), the layers and ranks PEFT refuses, PEFT's default targets and the refusal of mixed
//! batches. Each method's own factors are tested in its crate.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use peft_core::peft_config::TargetModules;
use peft_core::{AdapterConfig, MethodConfig, PeftError, PeftModel};
use peft_loha::LohaConfig;
use peft_lokr::LokrConfig;
use peft_lycoris::LycorisOptions;
use peft_testkit::nets::{ConvMix, Quantized};
use peft_testkit::{assert_mixed_batches_refused, assert_unsupported_layer, max_diff, randomize, rng_lock};
use tch::nn::ModuleT;
use tch::{Device, Kind, Tensor};

/// One LyCORIS method: its type, how its config wraps the shared options, the first factor it creates,
/// and the key and shape of a rank-2 factor on `lin0` (10 → 20).
struct Method {
    peft_type: &'static str,
    make: fn(LycorisOptions) -> Box<dyn AdapterConfig>,
    first_factor: &'static str,
    rank2_factor: (&'static str, [i64; 2]),
}

fn methods() -> [Method; 2] {
    [
        Method {
            peft_type: "LOHA",
            make: |lycoris| LohaConfig { lycoris, ..LohaConfig::default() }.boxed(),
            first_factor: "hada_w1_a",
            rank2_factor: ("base_model.model.lin0.hada_w1_a", [20, 2]),
        },
        Method {
            peft_type: "LOKR",
            make: |lycoris| LokrConfig { lycoris, ..LokrConfig::default() }.boxed(),
            first_factor: "lokr_w1",
            rank2_factor: ("base_model.model.lin0.lokr_w2_a", [5, 2]),
        },
    ]
}

fn options(targets: &[&str], r: i64) -> LycorisOptions {
    LycorisOptions {
        r,
        alpha: 6.into(),
        target_modules: Some(TargetModules::list(targets.iter().copied())),
        ..LycorisOptions::default()
    }
}

fn model(m: &Method, o: LycorisOptions) -> peft_core::Result<PeftModel<ConvMix>> {
    let (vs, n) = ConvMix::seeded(0);
    PeftModel::new(n, &vs, (m.make)(o), "default")
}

#[test]
fn a_non_finite_safe_merge_is_refused_and_changes_nothing() {
    let _rng = rng_lock();
    for m in methods() {
        let mut peft = model(&m, options(&["lin0"], 2)).unwrap();
        randomize(&peft, 0.5);
        let base = peft.disable_adapters().unwrap().outputs();
        for (name, mut t) in peft.adapter_var_store().variables() {
            if name.contains(m.first_factor) {
                let _ = tch::no_grad(|| t.f_fill_(f64::INFINITY)).unwrap();
            }
        }
        let err = peft.merge_adapter(None, true).unwrap_err();
        assert!(matches!(err, PeftError::NonFiniteMerge { ref module, .. } if module == "lin0"), "{err:?}");
        assert!(peft.model().lin0.slots().merged().is_empty());
        let after = peft.disable_adapters().unwrap().outputs();
        assert!(after[0].equal(&base[0]), "{}: the base weight is untouched", m.peft_type);
    }
}

#[test]
fn module_dropout_draws_once_per_layer_in_training_and_never_in_evaluation() {
    let _rng = rng_lock();
    for m in methods() {
        let peft =
            model(&m, LycorisOptions { module_dropout: 0.0, ..options(&["lin0", "lin1"], 2) }).unwrap();
        randomize(&peft, 0.5);
        let x = Tensor::randn([4, 10], (Kind::Float, Device::Cpu));
        let rand1 = || Tensor::rand([1], (Kind::Float, Device::Cpu));
        let eval = tch::no_grad(|| peft.forward_t(&x, false));
        tch::manual_seed(3);
        let train = tch::no_grad(|| peft.forward_t(&x, true));
        let after_train = rand1();
        tch::manual_seed(3);
        let _ = (rand1(), rand1());
        assert!(after_train.equal(&rand1()), "{}: one torch.rand(1) per adapted layer", m.peft_type);
        assert!(train.equal(&eval), "{}: module_dropout = 0 keeps every adapter", m.peft_type);
        tch::manual_seed(3);
        let _ = tch::no_grad(|| peft.forward_t(&x, false));
        let after_eval = rand1();
        tch::manual_seed(3);
        assert!(after_eval.equal(&rand1()), "{}: evaluation draws nothing", m.peft_type);

        let mut peft =
            model(&m, LycorisOptions { module_dropout: 1.0, ..options(&["lin0", "lin1"], 2) }).unwrap();
        randomize(&peft, 0.5);
        let train = tch::no_grad(|| peft.forward_t(&x, true));
        let adapted = tch::no_grad(|| peft.forward_t(&x, false));
        let base = tch::no_grad(|| peft.disable_adapters().unwrap().forward_t(&x, false));
        assert!(train.equal(&base), "{}: module_dropout = 1 skips every adapter in training", m.peft_type);
        assert!(max_diff(&adapted, &base) > 1e-3, "{}: but not in evaluation", m.peft_type);
    }
}

#[test]
fn layers_lycoris_cannot_adapt_are_refused_by_name() {
    let _rng = rng_lock();
    for m in methods() {
        for target in ["gpt", "emb", "conv3d"] {
            let err = model(&m, options(&[target], 2)).unwrap_err();
            assert_unsupported_layer(&err, target, m.peft_type, "Conv2d, Conv1d, Linear");
        }
        let (vs, q) = Quantized::seeded(1, None);
        let err = PeftModel::new(q, &vs, (m.make)(options(&["proj"], 2)), "default").unwrap_err();
        assert!(matches!(&err, PeftError::UnsupportedLayer { kind, .. } if kind == "Linear4bit"), "{err:?}");
        assert!(err.to_string().contains("quantized"), "{err}");
    }
}

#[test]
fn ranks_must_be_positive_after_the_rank_pattern() {
    let _rng = rng_lock();
    for m in methods() {
        let err = model(&m, options(&["lin0"], 0)).unwrap_err();
        assert!(
            err.to_string().contains("`r` should be a positive integer value but the value passed is 0"),
            "{}: {err}",
            m.peft_type
        );
        let mut o = options(&["lin0", "lin1"], 4);
        o.rank_pattern.insert("lin1".into(), -2);
        let err = model(&m, o).unwrap_err();
        assert!(err.to_string().contains("the value passed is -2"), "{err}");
        // A zero default rank is fine when the pattern covers every target.
        let mut o = options(&["lin0"], 0);
        o.rank_pattern.insert("lin0".into(), 2);
        let peft = model(&m, o).unwrap();
        let (key, shape) = m.rank2_factor;
        let saved = peft.adapter_state_dict("default").unwrap();
        let (_, t) = saved.iter().find(|(k, _)| k == key).unwrap_or_else(|| panic!("{key} is saved"));
        assert_eq!(t.size(), shape, "{key}");
    }
}

#[test]
fn architecture_defaults_and_mixed_batches() {
    let _rng = rng_lock();
    for m in methods() {
        let cfg = (m.make)(LycorisOptions::default());
        assert_eq!(cfg.default_target_modules("llama"), Some(TargetModules::list(["q_proj", "v_proj"])));
        assert_eq!(cfg.default_target_modules("gpt2"), Some(TargetModules::list(["c_attn"])));
        let peft = model(&m, options(&["lin0"], 2)).unwrap();
        assert_mixed_batches_refused(&peft, m.peft_type);
    }
}
