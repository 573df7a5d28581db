//! Criterion micro-benchmarks of peft-rs's own hot paths (no Python side): the LoRA layer forward
//! (unmerged, merged, DoRA), a mixed batch over 8 adapters, a hotswap and an adapter load.
//!
//! `cargo bench -p peft-bench` (or `cargo xtask bench`, which runs these after the side-by-side table).

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use criterion::{criterion_group, criterion_main, Criterion};
use peft_core::peft_config::TargetModules;
use peft_core::MethodConfig;
use peft_core::{nn, Adaptable, ForwardCtx, LoadOptions, PeftModel, SaveOptions};
use peft_lora::{InitLoraWeights, LoraConfig, LoraModelExt};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

#[derive(Debug, Adaptable)]
struct Proj {
    proj: nn::Linear,
}

const IN: i64 = 1024;
const OUT: i64 = 1024;
const TOKENS: i64 = 512;

fn model() -> (Proj, VarStore) {
    tch::manual_seed(0);
    let vs = VarStore::new(Device::Cpu);
    let proj = nn::linear(vs.root() / "proj", IN, OUT, Default::default()).unwrap();
    (Proj { proj }, vs)
}

fn config(dora: bool) -> LoraConfig {
    LoraConfig {
        r: 16,
        lora_alpha: 32.into(),
        use_dora: dora,
        init_lora_weights: InitLoraWeights::Bool(false),
        target_modules: Some(TargetModules::list(["proj"])),
        ..LoraConfig::default()
    }
}

fn peft(dora: bool) -> PeftModel<Proj> {
    let (m, vs) = model();
    let mut p = PeftModel::new(m, &vs, config(dora).boxed(), "default").unwrap();
    p.set_requires_grad(&["default"], false).ok();
    p
}

fn bench_forward(c: &mut Criterion) {
    tch::set_num_threads(2);
    let x = Tensor::randn([TOKENS, IN], (Kind::Float, Device::Cpu));
    let mut g = c.benchmark_group("linear 1024×1024, 512 tokens, r16");
    let base = model().0;
    g.bench_function("base", |b| b.iter(|| tch::no_grad(|| base.proj.forward(&x))));
    let lora = peft(false);
    g.bench_function("LoRA unmerged", |b| b.iter(|| tch::no_grad(|| lora.model().proj.forward(&x))));
    let mut merged = peft(false);
    merged.merge_adapter(None, false).unwrap();
    g.bench_function("LoRA merged", |b| b.iter(|| tch::no_grad(|| merged.model().proj.forward(&x))));
    let dora = peft(true);
    g.bench_function("DoRA (eval cache)", |b| b.iter(|| tch::no_grad(|| dora.model().proj.forward(&x))));
    g.finish();
}

fn bench_mixed(c: &mut Criterion) {
    let (m, vs) = model();
    let mut p = PeftModel::new(m, &vs, config(false).boxed(), "a0").unwrap();
    for i in 1..8 {
        p.add_adapter(&format!("a{i}"), config(false).boxed()).unwrap();
    }
    for i in 0..8 {
        p.set_requires_grad(&[format!("a{i}").as_str()], false).ok();
    }
    let names: Vec<String> = (0..32).map(|i| format!("a{}", i % 8)).collect();
    let rows: Vec<&str> = names.iter().map(String::as_str).collect();
    let x = Tensor::randn([32, 16, IN], (Kind::Float, Device::Cpu));
    c.bench_function("mixed batch, 32 rows × 16 tokens, 8 adapters", |b| {
        b.iter(|| {
            let ra = p.row_adapters(&rows).unwrap();
            let ctx = ForwardCtx::eval().with_rows(&ra);
            tch::no_grad(|| p.model().proj.forward_ctx(&x, &ctx))
        })
    });
}

fn bench_io(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a");
    let b = dir.path().join("b");
    peft(false).save_pretrained(&a, &SaveOptions::default()).unwrap();
    peft(false).save_pretrained(&b, &SaveOptions::default()).unwrap();
    let mut p = peft(false);
    let mut flip = false;
    c.bench_function("hotswap, one 1024×1024 layer r16", |bench| {
        bench.iter(|| {
            flip = !flip;
            p.hotswap_adapter(if flip { &b } else { &a }, "default").unwrap();
        })
    });
    let mut slot = Some(model());
    c.bench_function("from_pretrained + unload, one layer r16", |bench| {
        bench.iter(|| {
            let (m, vs) = slot.take().unwrap();
            let (p, _) = PeftModel::from_pretrained(m, &vs, &a, LoadOptions::default()).unwrap();
            slot = Some((p.unload(), vs));
        })
    });
}

criterion_group!(benches, bench_forward, bench_mixed, bench_io);
criterion_main!(benches);
