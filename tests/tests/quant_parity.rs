//! peft-quant against bitsandbytes (pinned in tests/oracle/requirements.txt) and PEFT's LoRA on
//! bitsandbytes 4-bit layers: formats bit for bit, both directions of a QLoRA adapter.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use peft_core::layer::AdaptedLayer;
use peft_core::nn::LinearBase;
use peft_core::MethodConfig;
use peft_core::{Adaptable, ForwardCtx, LoadOptions, PeftModel, SaveOptions};
use peft_lora::LoraConfig;
use peft_models::{HfModel, ModelInputs, Task};
use peft_parity::compare::{assert_close, assert_differs, assert_identical};
use peft_parity::oracle::{self, read_json};
use peft_quant::{
    dequantize_4bit, dequantize_blockwise, dynamic_map, quantize_4bit, quantize_blockwise, quantized_storage,
    Int8Weight, Linear4bit, Quant4Options, QuantState4, QuantType4, QuantizeSpec,
};
use std::collections::BTreeMap;
use std::path::Path;
use tch::nn::{OptimizerConfig, VarStore};
use tch::{Device, Kind, Tensor};

fn fixtures() -> std::path::PathBuf {
    oracle::fixtures("gen_quant.py")
}

fn read_all(path: &Path) -> BTreeMap<String, Tensor> {
    Tensor::read_safetensors(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).into_iter().collect()
}

fn names(section: &str) -> Vec<String> {
    let m = read_json(&fixtures().join("manifest.json"));
    m[section].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect()
}

#[test]
fn code_books_equal_bitsandbytes() {
    let f = read_all(&fixtures().join("codes.safetensors"));
    assert_identical(&QuantType4::Nf4.code(), &f["nf4"], "nf4 code");
    assert_identical(&QuantType4::Fp4.code(), &f["fp4"], "fp4 code");
    assert_identical(&dynamic_map(), &f["dynamic"], "dynamic map");
    oracle::record("bnb->rs", "code books");
}

#[test]
fn blockwise_8bit_equals_bitsandbytes_cpu_kernel() {
    let code = dynamic_map();
    for name in names("blockwise") {
        let f = read_all(&fixtures().join("blockwise").join(format!("{name}.safetensors")));
        let bs = f["blocksize"].int64_value(&[]);
        let (q, absmax) = quantize_blockwise(&f["input"], &code, bs).unwrap();
        assert_identical(&q, &f["q"], &format!("{name}: codes"));
        assert_identical(&absmax, &f["absmax"], &format!("{name}: absmax"));
        let back = dequantize_blockwise(&f["q"], &f["absmax"], &code, bs, Kind::Float).unwrap();
        assert_identical(&back, &f["dequantized"], &format!("{name}: dequantized"));
        oracle::record("bnb->rs", &format!("blockwise {name}"));
    }
}

#[test]
fn four_bit_formats_equal_bitsandbytes() {
    for name in names("4bit") {
        let f = read_all(&fixtures().join("4bit").join(format!("{name}.safetensors")));
        let get = |k: &str| f.get(k).map(Tensor::shallow_clone);
        // Read bitsandbytes' state, dequantize its packed weight.
        let theirs = QuantState4::from_state_dict(&get, "", &name).unwrap();
        let back = dequantize_4bit(&f["weight"], &theirs).unwrap();
        assert_identical(&back, &f["dequantized"], &format!("{name}: dequantized"));
        // Quantize the same input: identical packed codes and quant-state tensors (JSON bytes included).
        let (packed, ours) =
            quantize_4bit(&f["input"], theirs.blocksize, theirs.quant_type, theirs.nested.is_some()).unwrap();
        assert_identical(&packed, &f["weight"], &format!("{name}: packed weight"));
        let sd: BTreeMap<String, Tensor> = ours.state_dict("").unwrap().into_iter().collect();
        let expected: Vec<&String> = f.keys().filter(|k| k.starts_with("weight.")).collect();
        assert_eq!(sd.keys().collect::<Vec<_>>(), expected, "{name}: quant-state keys");
        for (k, v) in &sd {
            assert_identical(v, &f[k], &format!("{name}: {k}"));
        }
        oracle::record("bnb->rs", &format!("4-bit {name}"));
    }
}

#[test]
fn int8_weights_and_matmuls_equal_bitsandbytes() {
    for name in names("int8") {
        let f = read_all(&fixtures().join("int8").join(format!("{name}.safetensors")));
        let w = Int8Weight::quantize(&f["dense_weight"]).unwrap();
        assert_identical(&w.cb, &f["CB"], &format!("{name}: CB"));
        assert_identical(&w.scb, &f["SCB"], &format!("{name}: SCB"));
        let bias = f.get("dense_bias");
        let x = &f["input"];
        for (threshold, tag) in [(0.0, "t0"), (6.0, "t6")] {
            let eval = w.linear_int8(x, bias, threshold);
            assert_close(
                &eval,
                &f[&format!("eval_{tag}")],
                1e-5,
                &format!("{name}: inference, threshold {threshold}"),
            );
            let train = w.linear_dequantized(x, bias);
            assert_close(
                &train,
                &f[&format!("train_{tag}")],
                1e-5,
                &format!("{name}: training, threshold {threshold}"),
            );
        }
        oracle::record("bnb->rs", &format!("int8 {name}"));
    }
}

/// The Python `QMLP` of gen_quant.py with 4-bit bases.
#[derive(Debug, Adaptable)]
struct QMlp {
    lin0: peft_core::nn::Linear,
    lin1: peft_core::nn::Linear,
}

impl QMlp {
    fn forward(&self, x: &Tensor) -> Tensor {
        let ctx = ForwardCtx::eval();
        tch::no_grad(|| self.lin1.forward_ctx(&self.lin0.forward_ctx(x, &ctx).relu(), &ctx))
    }

    fn layer(name: &str, q: Linear4bit, bias: Option<Tensor>) -> peft_core::nn::Linear {
        AdaptedLayer::new(name, LinearBase::from_quantized(Box::new(q), bias))
    }

    fn from_4bit(sd: &BTreeMap<String, Tensor>, source: &str) -> Self {
        let get = |k: &str| sd.get(k).map(Tensor::shallow_clone);
        let layer = |name: &str| {
            let state = QuantState4::from_state_dict(&get, &format!("{name}."), source).unwrap();
            let q = Linear4bit::from_parts(
                sd[&format!("{name}.weight")].shallow_clone(),
                state,
                Some(Kind::Float),
            )
            .unwrap();
            Self::layer(name, q, get(&format!("{name}.bias")))
        };
        Self { lin0: layer("lin0"), lin1: layer("lin1") }
    }

    fn quantized(dense: &BTreeMap<String, Tensor>, opts: Quant4Options) -> Self {
        let layer = |name: &str| {
            let q = Linear4bit::quantize(&dense[&format!("{name}.weight")], opts).unwrap();
            Self::layer(name, q, Some(dense[&format!("{name}.bias")].shallow_clone()))
        };
        Self { lin0: layer("lin0"), lin1: layer("lin1") }
    }

    /// The state dict bitsandbytes' `Linear4bit` layers save: the weight with its quant state, the bias.
    fn state_dict(&self) -> Vec<(String, Tensor)> {
        let mut v = Vec::new();
        for (name, l) in [("lin0", &self.lin0), ("lin1", &self.lin1)] {
            let base = l.base();
            v.extend(base.quantized.as_ref().unwrap().state_dict(&format!("{name}.")).unwrap());
            if let Some(b) = &base.bias {
                v.push((format!("{name}.bias"), b.shallow_clone()));
            }
        }
        v
    }
}

#[test]
fn qlora_adapters_saved_by_peft_give_the_same_outputs() {
    for name in names("qlora") {
        let d = fixtures().join("qlora").join(&name);
        let sd = read_all(&d.join("base_4bit.safetensors"));
        let io = read_all(&d.join("io.safetensors"));
        let model = QMlp::from_4bit(&sd, "base_4bit.safetensors");
        assert_close(&model.forward(&io["x"]), &io["y_base"], 1e-5, &format!("{name}: 4-bit base"));
        assert_differs(&io["y"], &io["y_base"], 1e-3, &format!("{name}: adapter effect"));
        let vs = VarStore::new(Device::Cpu);
        let (peft, _) =
            PeftModel::from_pretrained(model, &vs, d.join("adapter"), LoadOptions::default()).unwrap();
        assert_close(&peft.model().forward(&io["x"]), &io["y"], 1e-5, &format!("{name}: QLoRA output"));
        oracle::record("peft->rs", &format!("qlora {name}"));
        // merge_and_unload re-quantizes the merged weights exactly as PEFT does on bitsandbytes.
        let merged = peft.merge_and_unload(None, false).unwrap();
        let ours: BTreeMap<String, Tensor> = merged.state_dict().into_iter().collect();
        let theirs = read_all(&d.join("merged_4bit.safetensors"));
        assert_eq!(ours.keys().collect::<Vec<_>>(), theirs.keys().collect::<Vec<_>>(), "{name}: merged keys");
        for (k, v) in &ours {
            assert_identical(v, &theirs[k], &format!("{name}: merged 4-bit {k}"));
        }
        assert_close(&merged.forward(&io["x"]), &io["y_merged"], 1e-5, &format!("{name}: merged output"));
        oracle::record("peft->rs", &format!("qlora merge_and_unload {name}"));
    }
}

#[test]
fn qlora_adapters_saved_by_peft_rs_load_in_peft_on_bitsandbytes() {
    let _rng = oracle::rng_guard();
    let root = tempfile::tempdir().unwrap();
    let cases = names("qlora");
    let mut ours = BTreeMap::new();
    for (i, name) in cases.iter().enumerate() {
        let src = fixtures().join("qlora").join(name);
        let case = read_json(&src.join("case.json"));
        let d = root.path().join("qlora_rs").join(name);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::copy(src.join("dense.safetensors"), d.join("dense.safetensors")).unwrap();
        std::fs::copy(src.join("case.json"), d.join("case.json")).unwrap();
        let dense = read_all(&src.join("dense.safetensors"));
        let opts = Quant4Options {
            quant_type: QuantType4::from_name(case["quant_type"].as_str().unwrap()).unwrap(),
            blocksize: 64,
            double_quant: case["dq"].as_bool().unwrap(),
            compute_dtype: Some(Kind::Float),
        };
        let model = QMlp::quantized(&dense, opts);
        let sd = model.state_dict();
        let refs: Vec<(&str, &Tensor)> = sd.iter().map(|(k, v)| (k.as_str(), v)).collect();
        Tensor::write_safetensors(&refs, d.join("base_4bit.safetensors")).unwrap();
        tch::manual_seed(500 + i as i64);
        let r = case["r"].as_i64().unwrap();
        let config = serde_json::json!({
            "peft_type": "LORA", "r": r, "lora_alpha": 2 * r, "target_modules": ["lin0", "lin1"],
            "init_lora_weights": false,
        });
        let mut warnings = vec![];
        let config =
            LoraConfig::from_json_map(config.as_object().unwrap().clone(), "test", &mut warnings).unwrap();
        let vs = VarStore::new(Device::Cpu);
        let peft = PeftModel::new(model, &vs, config.boxed(), "default").unwrap();
        peft.save_pretrained(d.join("adapter"), &SaveOptions::default()).unwrap();
        let x = Tensor::randn([5, 64], (Kind::Float, Device::Cpu));
        let y = peft.model().forward(&x);
        Tensor::write_safetensors(&[("x", &x)], d.join("io.safetensors")).unwrap();
        ours.insert(name.clone(), y);
    }
    oracle::run_script("gen_quant.py", &[Path::new("--check-rs"), root.path()]);
    for name in &cases {
        let d = root.path().join("qlora_rs").join(name);
        let report = read_json(&d.join("bnb_equal.json"));
        assert_eq!(report["keys_rs"], report["keys_bnb"], "{name}: 4-bit state-dict keys");
        for (k, same) in report["keys_equal"].as_object().unwrap() {
            assert_eq!(same.as_bool(), Some(true), "{name}: `{k}` differs from bitsandbytes' quantization");
        }
        let theirs = read_all(&d.join("peft_outputs.safetensors"));
        assert_close(&ours[name], &theirs["y"], 1e-5, &format!("{name}: PEFT on bitsandbytes vs peft-rs"));
        oracle::record("rs->peft", &format!("qlora {name}"));
    }
}

fn qlora_spec() -> QuantizeSpec {
    QuantizeSpec::FourBit(Quant4Options {
        quant_type: QuantType4::Nf4,
        blocksize: 64,
        double_quant: true,
        compute_dtype: Some(Kind::Float),
    })
}

fn logits(model: &HfModel, ids: &Tensor, ctx: &ForwardCtx<'_>) -> Tensor {
    let ins = ModelInputs { input_ids: Some(ids), ..ModelInputs::default() };
    model.forward(&ins, ctx).unwrap()
}

#[test]
fn llama_in_4bit_matches_transformers_and_peft_quantized_on_load_or_saved_quantized() {
    let d = fixtures().join("llama");
    let io = read_all(&d.join("io.safetensors"));
    let ids = &io["input_ids"];
    let cases = [
        ("quantized on load", d.join("dense"), Some(qlora_spec())),
        ("saved 4-bit by transformers", d.join("4bit"), None),
    ];
    let mut storages = Vec::new();
    for (what, dir, quantize) in cases {
        let opts = peft_models::LoadOptions { quantize, ..Default::default() };
        let loaded = HfModel::load_dir(&dir, Some(Task::CausalLm), &opts).unwrap();
        let (bytes, layers) = quantized_storage(&loaded.model);
        assert_eq!(layers, 14, "{what}: every linear of the 2 decoder layers, not lm_head");
        storages.push(bytes);
        let base = tch::no_grad(|| logits(&loaded.model, ids, &ForwardCtx::eval()));
        assert_close(&base, &io["base_logits"], 1e-4, &format!("{what}: 4-bit base logits"));
        let (peft, _) = PeftModel::from_pretrained(
            loaded.model,
            &loaded.vs,
            d.join("adapter"),
            LoadOptions { is_trainable: true, ..LoadOptions::default() },
        )
        .unwrap();
        let ours = tch::no_grad(|| logits(peft.model(), ids, &ForwardCtx::eval()));
        // Parameter counts as PEFT reports them for a 4-bit model (packed weights count at full size).
        let counts = read_json(&d.join("params.json"));
        let (trainable, total) = peft.num_parameters();
        assert_eq!(
            (trainable, total),
            (counts["trainable"].as_i64().unwrap(), counts["total"].as_i64().unwrap()),
            "{what}: parameter counts"
        );
        assert_differs(&io["logits"], &io["base_logits"], 1e-3, &format!("{what}: adapter effect"));
        assert_close(&ours, &io["logits"], 1e-4, &format!("{what}: QLoRA logits"));
        oracle::record("peft->rs", &format!("llama 4-bit, {what}"));
    }
    assert_eq!(storages[0], storages[1], "the same quantized bytes either way");

    // A 16-bit merged model: dequantize the base, merge without re-quantizing — the merged model gives the
    // QLoRA model's logits.
    let opts = peft_models::LoadOptions { quantize: Some(qlora_spec()), ..Default::default() };
    let mut loaded = HfModel::load_dir(&d.join("dense"), Some(Task::CausalLm), &opts).unwrap();
    let converted = peft_quant::dequantize_model(&mut loaded.model, Kind::Float).unwrap();
    assert_eq!(converted.len(), 14);
    assert_eq!(quantized_storage(&loaded.model).1, 0);
    let (peft, _) =
        PeftModel::from_pretrained(loaded.model, &loaded.vs, d.join("adapter"), LoadOptions::default())
            .unwrap();
    let merged = peft.merge_and_unload(None, false).unwrap();
    let dense = tch::no_grad(|| logits(&merged, ids, &ForwardCtx::eval()));
    assert_close(&dense, &io["logits"], 1e-4, "dequantized and merged");
    oracle::record("peft->rs", "llama 4-bit, dequantized and merged");
}

#[test]
fn qlora_training_lowers_the_loss_and_its_adapter_loads_in_peft_on_a_4bit_base() {
    let _rng = oracle::rng_guard();
    let d = fixtures().join("llama");
    let opts = peft_models::LoadOptions { quantize: Some(qlora_spec()), ..Default::default() };
    let loaded = HfModel::load_dir(&d.join("dense"), Some(Task::CausalLm), &opts).unwrap();
    let config = peft_lora::LoraConfig {
        r: 8,
        lora_alpha: 16.into(),
        target_modules: Some(peft_core::peft_config::TargetModules::list(["q_proj", "v_proj", "down_proj"])),
        ..Default::default()
    };
    tch::manual_seed(7);
    let peft = PeftModel::new(loaded.model, &loaded.vs, config.boxed(), "default").unwrap();
    let ids = Tensor::randint(200, [4, 16], (Kind::Int64, Device::Cpu));
    let mut opt = tch::nn::AdamW::default().build(peft.adapter_var_store(), 1e-2).unwrap();
    let mut losses = Vec::new();
    for _ in 0..8 {
        let out = logits(peft.model(), &ids, &ForwardCtx::train());
        let v = out.size()[2];
        let loss = out
            .narrow(1, 0, 15)
            .reshape([-1, v])
            .cross_entropy_for_logits(&ids.narrow(1, 1, 15).reshape([-1]));
        opt.backward_step(&loss);
        losses.push(loss.double_value(&[]));
    }
    assert!(losses.iter().all(|l| l.is_finite()), "{losses:?}");
    assert!(losses[7] < 0.9 * losses[0], "QLoRA training lowers the loss: {losses:?}");

    let root = tempfile::tempdir().unwrap();
    #[cfg(unix)]
    std::os::unix::fs::symlink(d.join("dense"), root.path().join("dense")).unwrap();
    peft.save_pretrained(root.path().join("adapter"), &SaveOptions::default()).unwrap();
    let eval_ids = read_all(&d.join("io.safetensors"))["input_ids"].shallow_clone();
    Tensor::write_safetensors(&[("input_ids", &eval_ids)], root.path().join("io.safetensors")).unwrap();
    let ours = tch::no_grad(|| logits(peft.model(), &eval_ids, &ForwardCtx::eval()));
    oracle::run_script("gen_quant.py", &[Path::new("--check-llama"), root.path()]);
    let theirs = read_all(&root.path().join("peft_logits.safetensors"));
    assert_close(
        &ours,
        &theirs["logits"],
        1e-4,
        "trained QLoRA adapter: PEFT on transformers 4-bit vs peft-rs",
    );
    oracle::record("rs->peft", "llama 4-bit, QLoRA trained in peft-rs");
}

/// The dense twin of gen_quant.py's `QMLP` (lin0 64→128, relu, lin1 128→64).
#[derive(Debug, Adaptable)]
struct DMlp {
    lin0: peft_core::nn::Linear,
    lin1: peft_core::nn::Linear,
}

impl DMlp {
    fn load(vs: &VarStore, dense: &BTreeMap<String, Tensor>) -> Self {
        let p = vs.root();
        let cfg = peft_core::nn::LinearConfig { bias: true, init: false };
        let m = Self {
            lin0: peft_core::nn::linear(&p / "lin0", 64, 128, cfg).unwrap(),
            lin1: peft_core::nn::linear(&p / "lin1", 128, 64, cfg).unwrap(),
        };
        tch::no_grad(|| {
            for (k, mut v) in vs.variables() {
                v.copy_(&dense[&k]);
            }
        });
        m
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let ctx = ForwardCtx::eval();
        tch::no_grad(|| self.lin1.forward_ctx(&self.lin0.forward_ctx(x, &ctx).relu(), &ctx))
    }
}

#[test]
fn loftq_initialisation_equals_peft() {
    for name in names("loftq") {
        let d = fixtures().join("loftq").join(&name);
        let case = read_json(&d.join("case.json"));
        let vs = VarStore::new(Device::Cpu);
        let model = DMlp::load(&vs, &read_all(&d.join("dense.safetensors")));
        let r = case["r"].as_i64().unwrap();
        let config = serde_json::json!({
            "peft_type": "LORA", "r": r, "lora_alpha": 2 * r, "target_modules": ["lin0", "lin1"],
            "init_lora_weights": "loftq",
            "loftq_config": {"loftq_bits": case["bits"], "loftq_iter": case["iters"]},
        });
        let mut warnings = vec![];
        let config =
            LoraConfig::from_json_map(config.as_object().unwrap().clone(), "test", &mut warnings).unwrap();
        let peft = PeftModel::new(model, &vs, config.boxed(), "default").unwrap();
        // A and B from the same quantization and SVD; the base replaced by the dequantized weight.
        let theirs = read_all(&d.join("adapter").join("adapter_model.safetensors"));
        let ours: BTreeMap<String, Tensor> =
            peft.adapter_state_dict("default").unwrap().into_iter().collect();
        assert_eq!(
            ours.keys().collect::<Vec<_>>(),
            theirs.keys().collect::<Vec<_>>(),
            "{name}: adapter keys"
        );
        for (k, v) in &ours {
            assert_close(v, &theirs[k], 1e-5, &format!("{name}: {k}"));
        }
        let after = read_all(&d.join("base_after.safetensors"));
        for (k, v) in vs.variables() {
            assert_identical(&v, &after[&k], &format!("{name}: base {k} after LoftQ"));
        }
        let io = read_all(&d.join("io.safetensors"));
        assert_close(&peft.model().forward(&io["x"]), &io["y"], 1e-5, &format!("{name}: output"));
        // The saved config carries the LoftQ settings as PEFT writes them.
        let dir = tempfile::tempdir().unwrap();
        peft.save_pretrained(dir.path(), &SaveOptions::default()).unwrap();
        let ours_cfg = read_json(&dir.path().join("adapter_config.json"));
        let theirs_cfg = read_json(&d.join("adapter").join("adapter_config.json"));
        for key in ["init_lora_weights", "loftq_config", "r", "lora_alpha"] {
            assert_eq!(ours_cfg[key], theirs_cfg[key], "{name}: saved `{key}`");
        }
        oracle::record("peft->rs", &format!("loftq {name}"));
    }
}

/// The weight-only formats on libtorch's packed kernels (no Python counterpart in the oracle: torchao is
/// not pinned): a Llama quantized on load stays close to the dense model's logits.
#[test]
fn llama_with_weight_only_int8_and_int4_stays_close_to_dense() {
    let d = fixtures().join("llama");
    let ids = read_all(&d.join("io.safetensors"))["input_ids"].shallow_clone();
    let dense = HfModel::load_dir(&d.join("dense"), Some(Task::CausalLm), &Default::default()).unwrap();
    let want = tch::no_grad(|| logits(&dense.model, &ids, &ForwardCtx::eval()));
    for (spec, tol) in
        [(QuantizeSpec::Int8WeightOnly, 0.02), (QuantizeSpec::Int4WeightOnly { group_size: 64 }, 0.2)]
    {
        let opts = peft_models::LoadOptions { quantize: Some(spec), ..Default::default() };
        let q = HfModel::load_dir(&d.join("dense"), Some(Task::CausalLm), &opts).unwrap();
        assert_eq!(quantized_storage(&q.model).1, 14, "{spec:?}");
        let got = tch::no_grad(|| logits(&q.model, &ids, &ForwardCtx::eval()));
        let rel = (&got - &want).norm().double_value(&[]) / want.norm().double_value(&[]);
        assert!(rel < tol && rel > 0.0, "{spec:?}: relative logit error {rel}");
    }
}

/// `quantize_model` on a hand-built model gives the layers `Linear4bit::quantize` gives, and
/// `set_int8_training` switches LLM.int8 layers between bitsandbytes' two CPU paths.
#[test]
fn quantize_model_and_int8_modes_on_a_hand_built_model() {
    let d = fixtures().join("qlora").join("nf4_dq");
    let dense = read_all(&d.join("dense.safetensors"));
    let x = read_all(&d.join("io.safetensors"))["x"].shallow_clone();
    let vs = VarStore::new(Device::Cpu);
    let mut model = DMlp::load(&vs, &dense);
    let spec = qlora_spec();
    let QuantizeSpec::FourBit(opts) = spec else { unreachable!() };
    let names = peft_quant::quantize_model(&mut model, &spec, &[]).unwrap();
    assert_eq!(names, ["lin0", "lin1"]);
    assert!(vs.variables()["lin0.weight"].numel() == 0, "the dense weight is released");
    assert_identical(&model.forward(&x), &QMlp::quantized(&dense, opts).forward(&x), "quantize_model");

    let vs = VarStore::new(Device::Cpu);
    let mut model = DMlp::load(&vs, &dense);
    peft_quant::quantize_model(&mut model, &QuantizeSpec::load_in_8bit(), &[]).unwrap();
    let w0 = Int8Weight::quantize(&dense["lin0.weight"]).unwrap();
    let w1 = Int8Weight::quantize(&dense["lin1.weight"]).unwrap();
    let (b0, b1) = (&dense["lin0.bias"], &dense["lin1.bias"]);
    let inference = w1.linear_int8(&w0.linear_int8(&x, Some(b0), 6.0).relu(), Some(b1), 6.0);
    assert_identical(&model.forward(&x), &inference, "LLM.int8 inference path");
    peft_quant::set_int8_training(&model, true);
    let training = w1.linear_dequantized(&w0.linear_dequantized(&x, Some(b0)).relu(), Some(b1));
    assert_identical(&model.forward(&x), &training, "LLM.int8 training path");
    assert_differs(&inference, &training, 1e-4, "the two paths differ");
}

/// Broken quantized checkpoints are typed errors naming the file and the tensor.
#[test]
fn broken_quant_states_name_the_file_and_key() {
    let d = fixtures().join("qlora").join("nf4_dq");
    let sd = read_all(&d.join("base_4bit.safetensors"));
    let source = "base_4bit.safetensors";
    let without = |skip: &str| {
        let m: BTreeMap<String, Tensor> = sd
            .iter()
            .filter(|(k, _)| k.as_str() != skip)
            .map(|(k, v)| (k.clone(), v.shallow_clone()))
            .collect();
        m
    };
    let missing = without("lin0.weight.absmax");
    let get = |k: &str| missing.get(k).map(Tensor::shallow_clone);
    let err = QuantState4::from_state_dict(&get, "lin0.", source).unwrap_err().to_string();
    assert!(err.contains(source) && err.contains("lin0.weight.absmax"), "{err}");

    let mut garbage = without("");
    garbage.insert("lin0.weight.quant_state.bitsandbytes__nf4".into(), Tensor::from_slice(b"{not json"));
    let get = |k: &str| garbage.get(k).map(Tensor::shallow_clone);
    let err = QuantState4::from_state_dict(&get, "lin0.", source).unwrap_err().to_string();
    assert!(err.contains("lin0.weight.quant_state.bitsandbytes__nf4") && err.contains(source), "{err}");

    // Statistics that do not fit the shape (the kernels index them without bounds checks).
    let mut short = without("");
    short.insert("lin0.weight.nested_absmax".into(), Tensor::zeros([0], (Kind::Float, Device::Cpu)));
    let get = |k: &str| short.get(k).map(Tensor::shallow_clone);
    let err = QuantState4::from_state_dict(&get, "lin0.", source).unwrap_err().to_string();
    assert!(err.contains(source) && err.contains("nested absmax"), "{err}");

    // A packed weight whose size does not fit the state's shape.
    let get = |k: &str| sd.get(k).map(Tensor::shallow_clone);
    let state = QuantState4::from_state_dict(&get, "lin0.", source).unwrap();
    let err =
        Linear4bit::from_parts(Tensor::zeros([10, 1], (Kind::Uint8, Device::Cpu)), state, None).unwrap_err();
    assert!(err.to_string().contains("[128, 64]") || err.to_string().contains("4096"), "{err}");

    // A checkpoint quantized by another method is refused by name.
    let dir = tempfile::tempdir().unwrap();
    let llama = fixtures().join("llama").join("4bit");
    for f in ["model.safetensors", "generation_config.json"] {
        std::fs::copy(llama.join(f), dir.path().join(f)).unwrap();
    }
    let mut config = read_json(&llama.join("config.json"));
    config["quantization_config"]["quant_method"] = serde_json::json!("gptq");
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    let err =
        HfModel::load_dir(dir.path(), Some(Task::CausalLm), &Default::default()).unwrap_err().to_string();
    assert!(err.contains("gptq") && err.contains("config.json"), "{err}");
}
