//! BEFT behaviour beyond the parity matrix: identity at init, the offset itself, merging into the bias,
//! layers without bias, quantized bases, the layers PEFT refuses, bad files — each error naming what is
//! wrong.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use peft_beft::{BeftConfig, BeftLayer};
use peft_core::nn::{self as pnn, ConvConfig, EmbeddingConfig, LinearConfig};
use peft_core::peft_config::TargetModules;
use peft_core::MethodConfig;
use peft_core::{Adaptable, AdapterConfig, PeftError, PeftModel, SaveOptions};
use peft_testkit::{
    assert_mixed_batches_refused, assert_shape_mismatch, assert_unsupported_layer, load_error, max_diff,
    randomize, rng_lock as rng,
};
use tch::nn::{ModuleT, VarStore};
use tch::{Device, Kind, Tensor};

#[derive(Debug, Adaptable)]
struct Net {
    emb: pnn::Embedding,
    lin0: pnn::Linear,
    lin1: pnn::Linear,
    nobias: pnn::Linear,
    conv2d: pnn::Conv,
    gpt2: pnn::Linear,
}

impl Net {
    fn new(vs: &VarStore) -> Self {
        let p = vs.root();
        Net {
            emb: pnn::embedding(&p / "emb", 7, 10, EmbeddingConfig { padding_idx: None, init: true })
                .unwrap(),
            lin0: pnn::linear(&p / "lin0", 10, 20, Default::default()).unwrap(),
            lin1: pnn::linear(&p / "lin1", 20, 2, Default::default()).unwrap(),
            nobias: pnn::linear(&p / "nobias", 10, 8, LinearConfig { bias: false, init: true }).unwrap(),
            conv2d: pnn::conv2d(&p / "conv2d", 4, 6, &[1], ConvConfig::default()).unwrap(),
            gpt2: pnn::transformers_conv1d(&p / "gpt2", 4, 10).unwrap(),
        }
    }
}

impl ModuleT for Net {
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let y = self.lin1.forward_t(&self.lin0.forward_t(x, train).relu(), train);
        Tensor::cat(&[y, self.nobias.forward_t(x, train)], 1)
    }
}

fn net() -> (VarStore, Net) {
    tch::manual_seed(0);
    let vs = VarStore::new(Device::Cpu);
    let n = Net::new(&vs);
    (vs, n)
}

fn config(targets: &[&str]) -> BeftConfig {
    BeftConfig { target_modules: Some(TargetModules::list(targets.iter().copied())), ..BeftConfig::default() }
}

fn beft<'a>(layer: &'a peft_core::AdapterSlots, adapter: &str) -> &'a BeftLayer {
    layer.get(adapter).unwrap().as_any().downcast_ref::<BeftLayer>().unwrap()
}

fn x() -> Tensor {
    Tensor::randn([5, 10], (Kind::Float, Device::Cpu))
}

#[test]
fn the_default_init_is_the_identity_and_still_draws_like_peft() {
    let _rng = rng();
    let (vs, n) = net();
    let mut peft = PeftModel::new(n, &vs, config(&["lin0", "lin1", "nobias"]).boxed(), "default").unwrap();
    let next = Tensor::randn([3], (Kind::Float, Device::Cpu));
    let x = x();
    let y = tch::no_grad(|| peft.forward_t(&x, false));
    let base = tch::no_grad(|| peft.disable_adapters().unwrap().forward_t(&x, false));
    assert!(y.equal(&base));
    assert_eq!(beft(peft.model().lin0.slots(), "default").offsets().size(), [1, 20]);
    // PEFT draws randn((1, out)) per layer before zeroing it: 20 + 2 + 8 values.
    let (_vs, _n) = net();
    let _ = Tensor::randn([1, 20], (Kind::Float, Device::Cpu));
    let _ = Tensor::randn([1, 2], (Kind::Float, Device::Cpu));
    let _ = Tensor::randn([1, 8], (Kind::Float, Device::Cpu));
    assert!(Tensor::randn([3], (Kind::Float, Device::Cpu)).equal(&next));
}

#[test]
fn the_offsets_of_every_active_adapter_are_added() {
    let _rng = rng();
    let (vs, n) = net();
    let mut peft = PeftModel::new(n, &vs, config(&["lin0"]).boxed(), "alpha").unwrap();
    peft.add_adapter("gamma", config(&["lin0"]).boxed()).unwrap();
    randomize(&peft, 0.5);
    peft.set_adapters(&["alpha", "gamma"]).unwrap();
    let x = x();
    let y = tch::no_grad(|| peft.model().lin0.forward(&x));
    let slots = peft.model().lin0.slots();
    let base = tch::no_grad(|| peft_core::BaseLayer::forward(peft.model().lin0.base(), &x));
    let sum = beft(slots, "alpha").offsets().flatten(0, -1) + beft(slots, "gamma").offsets().flatten(0, -1);
    assert!(y.equal(&(base + sum)));
}

#[test]
fn merging_adds_the_offset_to_the_bias_and_unmerging_removes_it() {
    let _rng = rng();
    for safe in [false, true] {
        let (vs, n) = net();
        let mut peft = PeftModel::new(n, &vs, config(&["lin0", "lin1"]).boxed(), "default").unwrap();
        randomize(&peft, 0.5);
        let x = x();
        let b0 = peft.model().lin0.base().bias.as_ref().unwrap().copy();
        let w0 = peft.model().lin0.base().weight.copy();
        let unmerged = tch::no_grad(|| peft.forward_t(&x, false));
        peft.merge_adapter(None, safe).unwrap();
        let merged = tch::no_grad(|| peft.forward_t(&x, false));
        assert!(max_diff(&unmerged, &merged) < 1e-5);
        let offset = beft(peft.model().lin0.slots(), "default").offsets().detach().squeeze();
        assert!(peft.model().lin0.base().bias.as_ref().unwrap().equal(&(&b0 + &offset)));
        assert!(peft.model().lin0.base().weight.equal(&w0), "the weight is untouched");
        peft.unmerge_adapter().unwrap();
        assert!(max_diff(peft.model().lin0.base().bias.as_ref().unwrap(), &b0) < 1e-6);
    }
}

#[test]
fn a_layer_without_bias_runs_but_cannot_merge() {
    let _rng = rng();
    let (vs, n) = net();
    let mut peft = PeftModel::new(n, &vs, config(&["nobias"]).boxed(), "default").unwrap();
    assert!(peft.warnings().iter().any(|w| w.contains("has no bias term")), "{:?}", peft.warnings());
    randomize(&peft, 0.5);
    let x = x();
    let y = tch::no_grad(|| peft.model().nobias.forward(&x));
    let base = tch::no_grad(|| peft_core::BaseLayer::forward(peft.model().nobias.base(), &x));
    let offset = beft(peft.model().nobias.slots(), "default").offsets().flatten(0, -1);
    assert!(y.equal(&(base + offset)));
    let err = peft.merge_adapter(None, false).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("`nobias`") && msg.contains("Base layer has no bias, cannot merge bias adapter default"),
        "{msg}"
    );
    assert!(tch::no_grad(|| peft.model().nobias.forward(&x)).equal(&y), "still unmerged");
}

#[test]
fn layers_beft_cannot_adapt_are_refused_by_name() {
    let _rng = rng();
    for target in ["emb", "conv2d", "gpt2"] {
        let (vs, n) = net();
        let err = PeftModel::new(n, &vs, config(&[target]).boxed(), "default").unwrap_err();
        assert_unsupported_layer(&err, target, "BEFT", "only `torch.nn.Linear` is supported");
    }
}

#[derive(Debug, Adaptable)]
struct Quantized {
    proj: pnn::Linear,
}

#[test]
fn quantized_linears_take_the_offset_and_merge_it_into_their_bias() {
    let _rng = rng();
    tch::manual_seed(1);
    let w = Tensor::randn([16, 64], (Kind::Float, Device::Cpu)) * 0.1;
    let q = peft_quant::Linear4bit::quantize(&w, peft_quant::Quant4Options::default()).unwrap();
    let bias = Tensor::randn([16], (Kind::Float, Device::Cpu));
    let vs = VarStore::new(Device::Cpu);
    let model = Quantized {
        proj: peft_core::AdaptedLayer::new(
            "proj",
            pnn::LinearBase::from_quantized(Box::new(q), Some(bias.copy())),
        ),
    };
    let cfg = BeftConfig { target_modules: Some(TargetModules::list(["proj"])), ..BeftConfig::default() };
    let mut peft = PeftModel::new(model, &vs, cfg.boxed(), "default").unwrap();
    for (_, mut t) in peft.adapter_var_store().variables() {
        let _ = tch::no_grad(|| t.f_add_(&(Tensor::randn_like(&t) * 0.3))).unwrap();
    }
    let x = Tensor::randn([3, 64], (Kind::Float, Device::Cpu));
    let base = tch::no_grad(|| peft_core::BaseLayer::forward(peft.model().proj.base(), &x));
    let offset = beft(peft.model().proj.slots(), "default").offsets().flatten(0, -1);
    let y = tch::no_grad(|| peft.model().proj.forward(&x));
    assert!(y.equal(&(&base + &offset)));
    peft.merge_adapter(None, true).unwrap();
    let merged = tch::no_grad(|| peft.model().proj.forward(&x));
    assert!(max_diff(&merged, &y) < 1e-5);
}

#[test]
fn a_non_finite_safe_merge_is_refused() {
    let _rng = rng();
    let (vs, n) = net();
    let mut peft = PeftModel::new(n, &vs, config(&["lin0"]).boxed(), "default").unwrap();
    for (_, mut t) in peft.adapter_var_store().variables() {
        let _ = tch::no_grad(|| t.f_fill_(f64::NAN)).unwrap();
    }
    let b = peft.model().lin0.base().bias.as_ref().unwrap().copy();
    let err = peft.merge_adapter(None, true).unwrap_err();
    assert!(matches!(err, PeftError::NonFiniteMerge { .. }), "{err:?}");
    assert!(peft.model().lin0.base().bias.as_ref().unwrap().equal(&b));
}

#[test]
fn default_targets_are_peft_s_value_projections() {
    let c = BeftConfig::default();
    for (model_type, want) in
        [("t5", "v"), ("bert", "value"), ("deberta-v2", "value_proj"), ("qwen3", "v_proj")]
    {
        assert_eq!(c.default_target_modules(model_type), Some(TargetModules::list([want])), "{model_type}");
    }
    assert_eq!(c.default_target_modules("gpt2"), None);
}

#[test]
fn configs_parse_like_peft() {
    let mut w = vec![];
    let c = BeftConfig::from_json_str(
        r#"{"peft_type": "BEFT", "target_modules": ["v", "v"], "init_weights": false}"#,
        &mut w,
    )
    .unwrap();
    assert_eq!(c.target_modules, Some(TargetModules::list(["v"])));
    assert!(!c.init_weights && w.is_empty());
    // Keys BeftConfig does not have (e.g. exclude_modules) are dropped with a warning, as PEFT drops them.
    let mut w = vec![];
    let _ = BeftConfig::from_json_str(r#"{"peft_type": "BEFT", "exclude_modules": ["x"]}"#, &mut w).unwrap();
    assert!(w.iter().any(|m| m.contains("exclude_modules")), "{w:?}");
    let err = BeftConfig::from_json_str(r#"{"peft_type": "IA3"}"#, &mut vec![]).unwrap_err();
    assert!(err.to_string().contains("peft_type"), "{err}");
}

#[test]
fn a_file_for_another_layer_size_fails_to_load_naming_key_and_shapes() {
    let _rng = rng();
    let (vs, n) = net();
    let peft = PeftModel::new(n, &vs, config(&["lin1"]).boxed(), "default").unwrap();
    let keys: Vec<String> = peft.adapter_state_dict("default").unwrap().into_iter().map(|(k, _)| k).collect();
    assert_eq!(keys, ["base_model.model.lin1.beft_bias"]);
    let dir = tempfile::tempdir().unwrap();
    peft.save_pretrained(dir.path(), &SaveOptions::default()).unwrap();
    // The same file read against lin0 (20 outputs instead of 2).
    let file = dir.path().join("adapter_model.safetensors");
    let tensors = Tensor::read_safetensors(&file).unwrap();
    let renamed: Vec<(String, Tensor)> =
        tensors.into_iter().map(|(k, t)| (k.replace("lin1", "lin0"), t)).collect();
    Tensor::write_safetensors(&renamed, &file).unwrap();
    let cfg = dir.path().join("adapter_config.json");
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, text.replace("\"lin1\"", "\"lin0\"")).unwrap();
    let (vs2, n2) = net();
    let err = load_error(n2, &vs2, dir.path());
    assert_shape_mismatch(&err, "base_model.model.lin0.beft_bias", &[1, 20], &[1, 2]);
}

#[test]
fn mixed_batches_are_refused_rather_than_ignored() {
    let _rng = rng();
    let (vs, n) = net();
    let peft = PeftModel::new(n, &vs, config(&["lin0"]).boxed(), "default").unwrap();
    assert_mixed_batches_refused(&peft, "BEFT");
}
