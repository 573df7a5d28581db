//! `cargo xtask gpu-check`: peft-quant's 4-bit layers on a GPU, checked against the CPU reference and
//! against bitsandbytes itself, and timed beside bitsandbytes and PEFT's LoRA on a bitsandbytes layer — a
//! few minutes on a GPU machine.
//!
//! 1. Kernels: whether bitsandbytes' CUDA library was found and registered (`peft_quant::cuda`).
//! 2. Correctness, for NF4 / FP4, with and without double quantization, f32 / bf16 / f16 and several block
//!    sizes: dequantization on the GPU equals the CPU's bit for bit; the inference matmul on 3 rows (the
//!    fused kernel) and the training matmul with its input gradient equal the CPU's f32 reference within
//!    the dtype's rounding.
//! 3. Parity with bitsandbytes: the same packed weights and statistics given to bitsandbytes'
//!    `dequantize_4bit` and `matmul_4bit` (python/gpu_check.py) give the same dequantized weights (exactly)
//!    and outputs.
//! 4. Speed: Llama-3B-shaped layers in bf16 (NF4 + double quantization): one-token inference, 4 × 768-row
//!    inference and training (forward + backward), for the bare 4-bit layer, LoRA r16 on it and the dense
//!    bf16 layer; medians of synchronised runs, peft-rs / bitsandbytes-or-PEFT ratios.
//!
//! Usage: `peft-gpu-check --python PY [--device cuda|cpu] [--out DIR]`. `--device cpu` runs every step on
//! the CPU with small shapes (a dry run of the script where no GPU is). The exit status is 1 when a
//! correctness check fails.

#![allow(clippy::print_stdout, clippy::print_stderr)]

use anyhow::{anyhow, bail, Context, Result};
use peft_core::nn::LinearBase;
use peft_core::peft_config::TargetModules;
use peft_core::AdaptedLayer;
use peft_core::MethodConfig;
use peft_core::{Adaptable, PeftModel};
use peft_lora::{InitLoraWeights, LoraConfig};
use peft_quant::{cuda, dequantize_4bit_to, quantize_4bit, Linear4bit, QuantState4, QuantType4};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

const CRATE_DIR: &str = env!("CARGO_MANIFEST_DIR");

struct Args {
    python: PathBuf,
    device: Device,
    out: PathBuf,
}

fn parse_args() -> Result<Args> {
    let mut it = std::env::args().skip(1);
    let mut args = Args {
        python: PathBuf::from("python3"),
        device: Device::Cuda(0),
        out: Path::new(CRATE_DIR).join("../../target/gpu-check"),
    };
    while let Some(a) = it.next() {
        let mut value = || it.next().ok_or_else(|| anyhow!("{a} needs a value"));
        match a.as_str() {
            "--python" => args.python = PathBuf::from(value()?),
            "--device" => {
                args.device = match value()?.as_str() {
                    "cuda" => Device::Cuda(0),
                    "cpu" => Device::Cpu,
                    other => bail!("--device cuda|cpu, not {other}"),
                }
            }
            "--out" => args.out = PathBuf::from(value()?),
            other => bail!("unknown argument {other}"),
        }
    }
    Ok(args)
}

fn kind_name(k: Kind) -> &'static str {
    match k {
        Kind::BFloat16 => "bf16",
        Kind::Half => "f16",
        _ => "f32",
    }
}

fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

/// One correctness case: a random weight quantized on the CPU, then computed with on the device.
struct Case {
    name: String,
    quant_type: QuantType4,
    nested: bool,
    blocksize: i64,
    kind: Kind,
}

fn cases() -> Vec<Case> {
    let mut v = Vec::new();
    for quant_type in [QuantType4::Nf4, QuantType4::Fp4] {
        for nested in [false, true] {
            for kind in [Kind::Float, Kind::BFloat16, Kind::Half] {
                v.push((quant_type, nested, 64, kind));
            }
        }
    }
    v.push((QuantType4::Nf4, true, 128, Kind::BFloat16));
    v.push((QuantType4::Nf4, true, 256, Kind::Half));
    v.push((QuantType4::Fp4, false, 32, Kind::BFloat16));
    v.into_iter()
        .map(|(quant_type, nested, blocksize, kind)| Case {
            name: format!(
                "{}_{}_b{blocksize}_{}",
                quant_type.name(),
                if nested { "dq" } else { "plain" },
                kind_name(kind)
            ),
            quant_type,
            nested,
            blocksize,
            kind,
        })
        .collect()
}

/// A correctness verdict: the largest difference relative to the reference's largest value.
struct Verdict {
    what: String,
    rel: f64,
    exact: bool,
    limit: f64,
}

impl Verdict {
    fn new(what: String, got: &Tensor, want: &Tensor, limit: f64) -> Self {
        let got = got.to_device(Device::Cpu).to_kind(Kind::Float);
        let want = want.to_device(Device::Cpu).to_kind(Kind::Float);
        let scale = want.abs().max().double_value(&[]).max(1e-30);
        let diff = (&got - &want).abs().max().double_value(&[]);
        Verdict { what, rel: diff / scale, exact: diff == 0.0, limit }
    }

    fn ok(&self) -> bool {
        self.rel <= self.limit
    }
}

/// The rounding allowance of a dtype for a 512-term dot product against an f32 reference.
fn tolerance(kind: Kind) -> f64 {
    match kind {
        Kind::Float => 1e-4,
        _ => 2e-2,
    }
}

struct Exchange {
    tensors: Vec<(String, Tensor)>,
    meta: Vec<Value>,
    ours: Vec<(String, Tensor)>,
}

fn state_tensors(name: &str, packed: &Tensor, s: &QuantState4, out: &mut Vec<(String, Tensor)>) {
    out.push((format!("{name}.packed"), packed.shallow_clone()));
    out.push((format!("{name}.absmax"), s.absmax.shallow_clone()));
    out.push((format!("{name}.code"), s.code.shallow_clone()));
    if let Some(n) = &s.nested {
        out.push((format!("{name}.nested_absmax"), n.absmax.shallow_clone()));
        out.push((format!("{name}.nested_code"), n.code.shallow_clone()));
    }
}

fn correctness(device: Device, verdicts: &mut Vec<Verdict>) -> Result<Exchange> {
    let (n, k) = (384i64, 512i64);
    let mut ex = Exchange { tensors: Vec::new(), meta: Vec::new(), ours: Vec::new() };
    for (i, c) in cases().iter().enumerate() {
        tch::manual_seed(100 + i as i64);
        let w = Tensor::randn([n, k], (Kind::Float, Device::Cpu)) * 0.05;
        let (packed, state) = quantize_4bit(&w.to_kind(c.kind), c.blocksize, c.quant_type, c.nested)?;
        let layer_cpu = Linear4bit::from_parts(packed.shallow_clone(), state.share(), Some(c.kind))?;
        let layer = layer_cpu.to_device(device);

        // Dequantization: bit for bit.
        let dq_ref = dequantize_4bit_to(&packed, &state, c.kind)?;
        let dq = dequantize_4bit_to(&layer.packed, &layer.state, c.kind)?;
        verdicts.push(Verdict::new(format!("{} dequantize", c.name), &dq, &dq_ref, 0.0));

        let x_small = (Tensor::randn([3, k], (Kind::Float, Device::Cpu))).to_kind(c.kind);
        let bias = (Tensor::randn([n], (Kind::Float, Device::Cpu)) * 0.1).to_kind(c.kind);
        let x_train = Tensor::randn([2, 32, k], (Kind::Float, Device::Cpu)).to_kind(c.kind);
        let g = Tensor::randn([2, 32, n], (Kind::Float, Device::Cpu));
        let w_ref = dq_ref.to_kind(Kind::Float);
        let tol = tolerance(c.kind);

        // Inference on 3 rows (bitsandbytes' fused kernel on CUDA).
        let bias_d = bias.to_device(device);
        let y_small = tch::no_grad(|| layer.forward_with(&x_small.to_device(device), Some(&bias_d)));
        let y_small_ref = x_small.to_kind(Kind::Float).linear(&w_ref, Some(&bias.to_kind(Kind::Float)));
        verdicts.push(Verdict::new(format!("{} inference, 3 rows", c.name), &y_small, &y_small_ref, tol));

        // Training: output and input gradient.
        let xt = x_train.to_device(device).set_requires_grad(true);
        let y = layer.forward_with(&xt, Some(&bias_d));
        (y.to_kind(Kind::Float) * g.to_device(device)).sum(Kind::Float).backward();
        let dx = xt.grad();
        let y_ref = x_train.to_kind(Kind::Float).linear(&w_ref, Some(&bias.to_kind(Kind::Float)));
        let dx_ref = g.matmul(&w_ref);
        verdicts.push(Verdict::new(format!("{} training output", c.name), &y, &y_ref, tol));
        verdicts.push(Verdict::new(format!("{} input gradient", c.name), &dx, &dx_ref, tol));

        state_tensors(&c.name, &packed, &state, &mut ex.tensors);
        for (key, t) in [("x_small", &x_small), ("bias", &bias), ("x_train", &x_train), ("g", &g)] {
            ex.tensors.push((format!("{}.{key}", c.name), t.shallow_clone()));
        }
        for (key, t) in [("dq", &dq), ("y_small", &y_small), ("y_train", &y.detach()), ("dx", &dx)] {
            ex.ours.push((format!("{}.{key}", c.name), t.to_device(Device::Cpu)));
        }
        ex.meta.push(json!({
            "name": c.name, "quant_type": c.quant_type.name(), "nested": c.nested, "blocksize": c.blocksize,
            "dtype": kind_name(c.kind), "shape": [n, k],
            "offset": state.nested.as_ref().map(|s| f64::from(s.offset)).unwrap_or(0.0),
        }));
    }
    Ok(ex)
}

fn device_arg(device: Device) -> &'static str {
    if device.is_cuda() {
        "cuda"
    } else {
        "cpu"
    }
}

fn python(args: &Args, op_args: &[&std::ffi::OsStr]) -> Result<()> {
    let script = Path::new(CRATE_DIR).join("python").join("gpu_check.py");
    let status = Command::new(&args.python)
        .arg(&script)
        .args(op_args)
        .status()
        .with_context(|| format!("running {}", script.display()))?;
    if !status.success() {
        bail!("{} {:?} failed ({status})", script.display(), op_args);
    }
    Ok(())
}

fn parity_with_bitsandbytes(args: &Args, ex: &Exchange, verdicts: &mut Vec<Verdict>) -> Result<()> {
    let inp = args.out.join("cases.safetensors");
    let meta = args.out.join("cases.json");
    let out = args.out.join("bitsandbytes.safetensors");
    Tensor::write_safetensors(&ex.tensors, &inp)?;
    std::fs::write(&meta, serde_json::to_string(&ex.meta)?)?;
    python(
        args,
        &[
            "parity".as_ref(),
            inp.as_os_str(),
            meta.as_os_str(),
            out.as_os_str(),
            device_arg(args.device).as_ref(),
        ],
    )?;
    let theirs: std::collections::HashMap<String, Tensor> =
        Tensor::read_safetensors(&out)?.into_iter().collect();
    for (key, ours) in &ex.ours {
        let t = theirs.get(key).ok_or_else(|| anyhow!("bitsandbytes wrote no {key}"))?;
        let case = key.split('.').next().unwrap_or_default();
        let kind = ex
            .meta
            .iter()
            .find(|m| m["name"] == case)
            .and_then(|m| m["dtype"].as_str())
            .map(|d| match d {
                "bf16" => Kind::BFloat16,
                "f16" => Kind::Half,
                _ => Kind::Float,
            })
            .unwrap_or(Kind::Float);
        // Dequantization is the same arithmetic: bit for bit. Matmuls may accumulate in another order.
        let limit = if key.ends_with(".dq") { 0.0 } else { tolerance(kind) / 2.0 };
        verdicts.push(Verdict::new(format!("{key} vs bitsandbytes"), ours, t, limit));
    }
    Ok(())
}

/// A one-layer model for the LoRA timing.
#[derive(Debug, Adaptable)]
struct OneLayer {
    proj: peft_core::nn::Linear,
}

struct Shape {
    name: &'static str,
    out: i64,
    inp: i64,
}

struct Mode {
    name: &'static str,
    rows: i64,
    grad: bool,
    iters: usize,
}

fn timed(device: Device, iters: usize, mut f: impl FnMut()) -> f64 {
    for _ in 0..3 {
        f();
    }
    sync(device);
    let mut v: Vec<f64> = (0..iters)
        .map(|_| {
            let t = Instant::now();
            f();
            sync(device);
            t.elapsed().as_secs_f64() * 1000.0
        })
        .collect();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn run_layer(x: &Tensor, grad: bool, forward: &dyn Fn(&Tensor) -> Tensor) {
    if grad {
        let xi = x.detach().set_requires_grad(true);
        forward(&xi).to_kind(Kind::Float).sum(Kind::Float).backward();
    } else {
        let _ = tch::no_grad(|| forward(x));
    }
}

fn speed(args: &Args) -> Result<(Vec<Value>, Vec<Value>)> {
    let device = args.device;
    let kind = Kind::BFloat16;
    let r = 16i64;
    let (shapes, modes) = if device.is_cuda() {
        (
            vec![
                Shape { name: "q_proj 3072×3072", out: 3072, inp: 3072 },
                Shape { name: "up_proj 8192×3072", out: 8192, inp: 3072 },
                Shape { name: "down_proj 3072×8192", out: 3072, inp: 8192 },
            ],
            vec![
                Mode { name: "gen1", rows: 1, grad: false, iters: 50 },
                Mode { name: "prefill", rows: 4 * 768, grad: false, iters: 20 },
                Mode { name: "train", rows: 4 * 768, grad: true, iters: 20 },
            ],
        )
    } else {
        (
            vec![Shape { name: "small 256×256", out: 256, inp: 256 }],
            vec![
                Mode { name: "gen1", rows: 1, grad: false, iters: 5 },
                Mode { name: "prefill", rows: 64, grad: false, iters: 3 },
                Mode { name: "train", rows: 64, grad: true, iters: 3 },
            ],
        )
    };
    let mut ours = Vec::new();
    for s in &shapes {
        tch::manual_seed(0);
        let w = (Tensor::randn([s.out, s.inp], (Kind::Float, Device::Cpu)) * 0.02).to_kind(kind);
        let q = Linear4bit::quantize(
            &w,
            peft_quant::Quant4Options { compute_dtype: Some(kind), ..Default::default() },
        )?
        .to_device(device);
        let vs = VarStore::new(device);
        let model = OneLayer {
            proj: AdaptedLayer::new("proj", LinearBase::from_quantized(Box::new(q.to_device(device)), None)),
        };
        let config = LoraConfig {
            r,
            lora_alpha: (2 * r).into(),
            init_lora_weights: InitLoraWeights::Bool(false),
            target_modules: Some(TargetModules::list(["proj"])),
            ..LoraConfig::default()
        };
        let peft = PeftModel::new(model, &vs, config.boxed(), "default")?;
        let dense = w.to_device(device);
        let mut row = json!({"name": s.name});
        for m in &modes {
            let x = Tensor::randn([m.rows, s.inp], (kind, device));
            let q4 = timed(device, m.iters, || run_layer(&x, m.grad, &|xi| q.forward_with(xi, None)));
            let lora = timed(device, m.iters, || run_layer(&x, m.grad, &|xi| peft.model().proj.forward(xi)));
            let dn =
                timed(device, m.iters, || run_layer(&x, m.grad, &|xi| xi.linear::<Tensor>(&dense, None)));
            row[format!("{}.q4", m.name)] = json!(q4);
            row[format!("{}.lora", m.name)] = json!(lora);
            row[format!("{}.dense", m.name)] = json!(dn);
        }
        ours.push(row);
    }
    let spec = json!({
        "dtype": kind_name(kind), "r": r,
        "shapes": shapes.iter().map(|s| json!({"name": s.name, "out": s.out, "in": s.inp})).collect::<Vec<_>>(),
        "modes": modes.iter().map(|m| json!({"name": m.name, "rows": m.rows, "grad": m.grad, "iters": m.iters}))
            .collect::<Vec<_>>(),
    });
    let spec_path = args.out.join("speed_spec.json");
    let theirs_path = args.out.join("speed_bitsandbytes.json");
    std::fs::write(&spec_path, spec.to_string())?;
    python(
        args,
        &["time".as_ref(), spec_path.as_os_str(), theirs_path.as_os_str(), device_arg(device).as_ref()],
    )?;
    let theirs: Vec<Value> = serde_json::from_str(&std::fs::read_to_string(&theirs_path)?)?;
    let names: Vec<Value> = modes.iter().map(|m| json!(m.name)).collect();
    Ok((ours.into_iter().zip(theirs).map(|(a, b)| json!({"ours": a, "theirs": b})).collect(), names))
}

fn main() -> Result<()> {
    let args = parse_args()?;
    if args.device.is_cuda() && !tch::Cuda::is_available() {
        bail!(
            "no CUDA device is visible to libtorch here; run on a GPU machine, or `--device cpu` for a dry run \
             of every step on the CPU"
        );
    }
    std::fs::create_dir_all(&args.out)?;
    let started = Instant::now();
    let mut report = String::new();
    let kernels = match cuda::kernels() {
        Ok(k) => format!(
            "bitsandbytes kernels: {} (fused GEMM: {})",
            k.path().display(),
            if k.has_gemm() { "yes" } else { "no" }
        ),
        Err(why) => format!("bitsandbytes kernels: not loaded ({why}); CUDA tensors use tensor ops"),
    };
    println!("{kernels}");
    report.push_str(&format!(
        "# gpu-check\n\nDevice: {}. {kernels}.\n\n",
        if args.device.is_cuda() { "CUDA 0" } else { "CPU (dry run)" }
    ));

    let mut verdicts = Vec::new();
    let ex = correctness(args.device, &mut verdicts)?;
    parity_with_bitsandbytes(&args, &ex, &mut verdicts)?;
    report.push_str(
        "| check | max abs diff / max abs reference | limit | exact | ok |\n|---|---:|---:|:---:|:---:|\n",
    );
    for v in &verdicts {
        report.push_str(&format!(
            "| {} | {:.2e} | {:.0e} | {} | {} |\n",
            v.what,
            v.rel,
            v.limit,
            if v.exact { "yes" } else { "" },
            if v.ok() { "yes" } else { "**NO**" }
        ));
    }
    let failed = verdicts.iter().filter(|v| !v.ok()).count();

    let (rows, modes) = speed(&args)?;
    report.push_str(
        "\nSpeed (bf16, NF4 + double quantization, median ms; peft-rs / bitsandbytes for the 4-bit layer, \
         peft-rs / PEFT for LoRA r16 on it, and the dense bf16 layer for scale):\n\n\
         | layer | mode | 4-bit peft-rs | 4-bit bitsandbytes | ratio | LoRA peft-rs | LoRA PEFT | ratio | dense peft-rs | dense torch |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for row in &rows {
        for m in modes.iter().filter_map(Value::as_str) {
            let get = |side: &str, what: &str| row[side][format!("{m}.{what}")].as_f64().unwrap_or(f64::NAN);
            report.push_str(&format!(
                "| {} | {m} | {:.3} | {:.3} | **{:.2}** | {:.3} | {:.3} | **{:.2}** | {:.3} | {:.3} |\n",
                row["ours"]["name"].as_str().unwrap_or_default(),
                get("ours", "q4"),
                get("theirs", "q4"),
                get("ours", "q4") / get("theirs", "q4"),
                get("ours", "lora"),
                get("theirs", "lora"),
                get("ours", "lora") / get("theirs", "lora"),
                get("ours", "dense"),
                get("theirs", "dense"),
            ));
        }
    }
    report.push_str(&format!(
        "\n{} of {} correctness checks passed; {:.0} s.\n",
        verdicts.len() - failed,
        verdicts.len(),
        started.elapsed().as_secs_f64()
    ));
    println!("{report}");
    std::fs::write(args.out.join("results.md"), &report)?;
    std::fs::write(args.out.join("speed.json"), serde_json::to_string_pretty(&rows)?)?;
    if failed > 0 {
        eprintln!("gpu-check: {failed} correctness check(s) failed");
        std::process::exit(1);
    }
    Ok(())
}
