//! `#[derive(Adaptable)]` reaches every adaptable layer, in declaration order, through the usual
//! containers, and skips what it is told to skip.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use peft_core::adaptable::layer_names;
use peft_core::nn::{self, Linear};
use peft_core::{Adaptable, PeftError};
use tch::nn::VarStore;

#[derive(Debug, Adaptable)]
struct Attention {
    q_proj: Linear,
    v_proj: Linear,
}

#[derive(Debug, Adaptable)]
struct Layer<A: std::fmt::Debug> {
    self_attn: A,
    mlp: Box<Linear>,
    extra: Option<Linear>,
    #[peft(skip)]
    #[allow(dead_code)]
    notes: Vec<std::path::PathBuf>,
}

#[derive(Debug, Adaptable)]
#[allow(dead_code)]
struct Pair(Linear, #[peft(skip)] u8, [Linear; 2]);

#[derive(Debug, Adaptable)]
struct Model {
    layers: Vec<Layer<Attention>>,
    head: Pair,
}

fn lin(p: tch::nn::Path<'_>) -> Linear {
    nn::linear(p, 2, 2, Default::default()).unwrap()
}

#[test]
fn visits_every_layer_in_declaration_order() {
    let vs = VarStore::new(tch::Device::Cpu);
    let root = vs.root();
    let layers = (0..2)
        .map(|i| {
            let p = &root / "model" / "layers" / i;
            Layer {
                self_attn: Attention {
                    q_proj: lin(&p / "self_attn" / "q_proj"),
                    v_proj: lin(&p / "self_attn" / "v_proj"),
                },
                mlp: Box::new(lin(&p / "mlp")),
                extra: (i == 1).then(|| lin(&p / "extra")),
                notes: vec![],
            }
        })
        .collect();
    let head = Pair(lin(&root / "head" / "a"), 7, [lin(&root / "head" / "b0"), lin(&root / "head" / "b1")]);
    let mut model = Model { layers, head };
    assert_eq!(
        layer_names(&model),
        [
            "model.layers.0.self_attn.q_proj",
            "model.layers.0.self_attn.v_proj",
            "model.layers.0.mlp",
            "model.layers.1.self_attn.q_proj",
            "model.layers.1.self_attn.v_proj",
            "model.layers.1.mlp",
            "model.layers.1.extra",
            "head.a",
            "head.b0",
            "head.b1",
        ]
    );
    // The mutable visitor reaches the same layers and stops at the first error.
    let mut seen = 0;
    let err = model
        .visit_layers_mut(&mut |l| {
            seen += 1;
            if l.name() == "model.layers.1.mlp" {
                Err(PeftError::Invalid("stop".into()))
            } else {
                Ok(())
            }
        })
        .unwrap_err();
    assert_eq!(seen, 6);
    assert!(matches!(err, PeftError::Invalid(_)));
}

#[test]
fn two_layers_under_one_path_are_an_error_not_a_silent_rename() {
    let vs = VarStore::new(tch::Device::Cpu);
    let _first = nn::linear(vs.root() / "lin", 2, 2, Default::default()).unwrap();
    let err = nn::linear(vs.root() / "lin", 2, 2, Default::default()).unwrap_err();
    assert!(matches!(err, PeftError::DuplicateModuleName { ref name } if name == "lin"), "{err:?}");
}

#[test]
fn layers_compute_like_pytorch_modules() {
    let vs = VarStore::new(tch::Device::Cpu);
    let l = nn::linear(vs.root() / "l", 3, 4, Default::default()).unwrap();
    let c = nn::transformers_conv1d(vs.root() / "c", 4, 3).unwrap();
    let x = tch::Tensor::randn([2, 5, 3], tch::kind::FLOAT_CPU);
    let w = &l.base().weight;
    let want = x.matmul(&w.tr()) + l.base().bias.as_ref().unwrap();
    assert!(l.forward(&x).allclose(&want, 1e-6, 1e-6, false));
    // Conv1D stores (in, out) and adds its bias.
    let want = x.matmul(&c.base().weight) + c.base().bias.as_ref().unwrap();
    assert_eq!(c.forward(&x).size(), [2, 5, 4]);
    assert!(c.forward(&x).allclose(&want, 1e-6, 1e-6, false));
    use peft_core::BaseLayer;
    assert_eq!(l.base().kind(), "Linear");
    assert_eq!(c.base().kind(), "Conv1D");
    let lin = c.base().as_linear().unwrap();
    assert_eq!((lin.in_features(), lin.out_features(), lin.fan_in_fan_out()), (3, 4, true));
}
