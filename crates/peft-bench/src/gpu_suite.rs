//! `cargo xtask bench --gpu`: the workloads of the CPU suite on CUDA in bf16, QLoRA against PEFT on
//! bitsandbytes, and a shortened version of PEFT's method_comparison recipe — sized to finish in about
//! five minutes on one data-centre GPU. `--device cpu` runs the same suite on the CPU with small models
//! (a dry run that exercises every step where no GPU is).

use super::{fixtures, fmt_ms, machine, measure, replace_section, spawn_workers, specs, Args, Measured};
use super::{Spec, Worker};
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// The method_comparison checkpoint (Llama-3.2-3B's shape, random bf16 weights), made once by
/// `prepare.py --llama3b` next to the CPU fixtures.
fn llama3b(args: &Args) -> Result<PathBuf> {
    let script = Path::new(super::CRATE_DIR).join("python").join("prepare.py");
    let text = std::fs::read(&script).with_context(|| format!("reading {}", script.display()))?;
    let hash =
        text.iter().fold(0xcbf29ce484222325u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x100000001b3));
    let dir = args.out.join(format!("fixtures-llama3b-{hash:016x}"));
    if !dir.join("manifest.json").exists() {
        println!("writing the Llama-3B-shaped checkpoint in {} (once) …", dir.display());
        let status = Command::new(&args.python).arg(&script).arg(&dir).arg("--llama3b").status()?;
        if !status.success() {
            bail!("prepare.py --llama3b failed ({status})");
        }
    }
    Ok(dir.join("models").join("llama3b"))
}

fn device(args: &Args) -> &'static str {
    if args.dry_run {
        "cpu"
    } else {
        "cuda"
    }
}

/// The CPU suite's workloads moved to the device in bf16 (in the dry run: the ones on the small model,
/// one repetition).
fn suite(args: &Args, fx: &Path) -> Vec<Spec> {
    let mut out: Vec<Spec> = specs(fx, false)
        .into_iter()
        .filter(|s| !args.dry_run || s.workload["model"].as_str().is_some_and(|m| m.ends_with("small")))
        .collect();
    for s in &mut out {
        s.workload["device"] = json!(device(args));
        s.workload["dtype"] = json!("bf16");
        s.what = format!("{} (bf16)", s.what);
        if args.dry_run {
            s.reps = 1;
            s.iters = 1;
        }
    }
    out
}

/// A training workload: LoRA on `model`, AdamW, in bf16 (4-bit NF4 base with `quantize`).
fn train(model: &str, lora: Value, batch: i64, seq: i64, device: &str, quantize: Option<&str>) -> Value {
    let mut w = json!({"kind": "train", "model": model, "dtype": "bf16", "device": device, "batch": batch,
                       "seq": seq, "lr": 1e-4, "lora": lora});
    if let Some(q) = quantize {
        w["quantize"] = json!(q);
    }
    w
}

/// Peak CUDA memory (bytes allocated by the caching allocator) of each side over `steps` steps of
/// `workload`, in fresh workers, the peak reset after loading.
fn gpu_memory(args: &Args, workload: &Value, steps: usize) -> Result<(u64, u64)> {
    let (mut rs, mut py) = spawn_workers(args)?;
    let peak = |w: &mut Worker| -> Result<u64> {
        w.request(&json!({"op": "setup", "workload": workload}))?;
        w.request(&json!({"op": "reset_gpu_peak"}))?;
        w.times(steps)?;
        let r = w.request(&json!({"op": "gpu_memory"}))?;
        let v = r["peak_allocated"].as_u64().context("no peak_allocated")?;
        w.request(&json!({"op": "teardown"}))?;
        Ok(v)
    };
    Ok((peak(&mut rs)?, peak(&mut py)?))
}

struct Row {
    m: Measured,
    /// Tokens per step (training workloads whose throughput is reported).
    tokens: Option<f64>,
    /// Peak CUDA memory of both sides.
    memory: Option<(u64, u64)>,
}

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

pub(super) fn main(args: &Args) -> Result<()> {
    if !args.dry_run && !tch::Cuda::is_available() {
        bail!(
            "--gpu: libtorch sees no CUDA device here; run it on a GPU machine (or `--gpu --device cpu` for a \
             dry run of the suite on the CPU)"
        );
    }
    std::fs::create_dir_all(&args.out)?;
    let started = Instant::now();
    let fx = fixtures(args)?;
    let dev = device(args);
    let mut all = suite(args, &fx);
    let (big, big_what, mc_model, mc_what, mc_batch, mc_seq) = if args.dry_run {
        let small = fx.join("models").join("small").display().to_string();
        (small.clone(), "Llama h256 ×2", small, "Llama h256 ×2", 2, 64)
    } else {
        let big = fx.join("models").join("big").display().to_string();
        (big, "Llama h2048 ×8", llama3b(args)?.display().to_string(), "Llama-3B shape", 4, 768)
    };
    let qv = json!(["q_proj", "v_proj"]);
    let (reps, iters) = if args.dry_run { (1, 1) } else { (3, 2) };
    let mut add = |name: &str, what: &str, workload: Value| {
        all.push(Spec { name: name.into(), what: what.into(), workload, warmup: 1, reps, iters })
    };
    let lora16 = json!({"r": 16, "lora_alpha": 32, "target_modules": qv});
    add(
        "qlora_bf16_base",
        &format!("training step, {big_what}, r16 q,v, 4×128, bf16 base"),
        train(&big, lora16.clone(), 4, 128, dev, None),
    );
    add(
        "qlora_nf4_base",
        "training step, same, NF4 + double quant base (PEFT: bitsandbytes)",
        train(&big, lora16, 4, 128, dev, Some("nf4")),
    );
    // PEFT's method_comparison LoRA experiment: r32, alpha 64, no dropout, q_proj and v_proj.
    let mc = train(
        &mc_model,
        json!({"r": 32, "lora_alpha": 64, "lora_dropout": 0.0, "target_modules": qv}),
        mc_batch,
        mc_seq,
        dev,
        None,
    );
    add(
        "method_comparison",
        &format!("method_comparison (shortened): {mc_what}, LoRA r32 q,v, {mc_batch}×{mc_seq}, AdamW"),
        mc.clone(),
    );
    let chosen: Vec<&Spec> =
        all.iter().filter(|s| args.only.as_deref().is_none_or(|o| s.name.contains(o))).collect();

    let (mut rs, mut py) = spawn_workers(args)?;
    let mut rows = Vec::new();
    for spec in &chosen {
        let t = Instant::now();
        let m = measure(spec, &mut rs, &mut py)?;
        println!(
            "{:<18} peft-rs {:>9} ms   PEFT {:>9} ms   ratio {:.2}   ({:.0} s)",
            m.name,
            fmt_ms(m.rs),
            fmt_ms(m.py),
            m.rs / m.py,
            t.elapsed().as_secs_f64()
        );
        let tokens = spec.workload["kind"].as_str().filter(|k| *k == "train").map(|_| {
            (spec.workload["batch"].as_i64().unwrap_or(0) * spec.workload["seq"].as_i64().unwrap_or(0)) as f64
        });
        rows.push(Row { m, tokens, memory: None });
    }
    drop((rs, py));
    if !args.dry_run {
        for row in
            rows.iter_mut().filter(|r| r.m.name.starts_with("qlora_") || r.m.name == "method_comparison")
        {
            if let Some(spec) = all.iter().find(|s| s.name == row.m.name) {
                let mem = gpu_memory(args, &spec.workload, 2)?;
                println!(
                    "{}: peak CUDA memory peft-rs {:.0} MiB, PEFT {:.0} MiB",
                    row.m.name,
                    mib(mem.0),
                    mib(mem.1)
                );
                row.memory = Some(mem);
            }
        }
    }

    let header = format!(
        "Machine: {}; {}. bf16 on {}, medians of interleaved runs (synchronised); libtorch 2.13.0 on both \
         sides; PEFT 0.21.2, transformers and bitsandbytes from tests/oracle/requirements.txt.",
        machine(),
        if args.dry_run {
            "dry run on the CPU (small models, one repetition)".to_string()
        } else {
            format!("GPU {}", gpu_name())
        },
        dev
    );
    let text = gpu_report(&rows, &header);
    println!("\n{text}");
    std::fs::write(args.out.join("gpu-results.md"), &text)?;
    let json_rows: Vec<Value> = rows
        .iter()
        .map(|r| {
            json!({"name": r.m.name, "what": r.m.what, "peft_rs_ms": r.m.rs, "peft_ms": r.m.py,
                   "ratio": r.m.rs / r.m.py, "tokens_per_step": r.tokens,
                   "peak_cuda_bytes": r.memory.map(|(a, b)| json!({"peft_rs": a, "peft": b}))})
        })
        .collect();
    std::fs::write(
        args.out.join("gpu-results.json"),
        serde_json::to_string_pretty(
            &json!({"machine": machine(), "dry_run": args.dry_run, "workloads": json_rows}),
        )?,
    )?;
    if let (Some(docs), false) = (&args.docs, args.dry_run) {
        replace_section(docs, "bench-gpu", &text)?;
    }
    println!("done in {:.0} s; results in {}", started.elapsed().as_secs_f64(), args.out.display());
    Ok(())
}

/// The GPU's name as `nvidia-smi` reports it (for the report header).
fn gpu_name() -> String {
    Command::new("nvidia-smi")
        .args(["--query-gpu=name", "--format=csv,noheader"])
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.lines().next().unwrap_or("").trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "CUDA device 0".into())
}

fn gpu_report(rows: &[Row], header: &str) -> String {
    let mut s = String::new();
    s.push_str(header);
    s.push_str("\n\n| workload | what | peft-rs ms | PEFT ms | peft-rs / PEFT |\n|---|---|---:|---:|---:|\n");
    for r in rows {
        s.push_str(&format!(
            "| `{}` | {} | {} | {} | **{:.2}** |\n",
            r.m.name,
            r.m.what,
            fmt_ms(r.m.rs),
            fmt_ms(r.m.py),
            r.m.rs / r.m.py
        ));
    }
    let get = |n: &str| rows.iter().find(|r| r.m.name == n);
    if let Some(r) = get("method_comparison") {
        if let Some(tokens) = r.tokens {
            s.push_str(&format!(
                "\nmethod_comparison (shortened): peft-rs {:.0} tokens/s, PEFT {:.0} tokens/s (peft-rs / PEFT \
                 throughput **{:.2}**)",
                tokens / (r.m.rs / 1000.0),
                tokens / (r.m.py / 1000.0),
                r.m.py / r.m.rs
            ));
            if let Some((a, b)) = r.memory {
                s.push_str(&format!(
                    "; peak CUDA memory peft-rs {:.0} MiB, PEFT {:.0} MiB (**{:.2}**)",
                    mib(a),
                    mib(b),
                    a as f64 / b.max(1) as f64
                ));
            }
            s.push_str(".\n");
        }
    }
    if let (Some(b), Some(q)) = (get("qlora_bf16_base"), get("qlora_nf4_base")) {
        s.push_str(&format!(
            "\nQLoRA step time / bf16 LoRA step time: peft-rs **{:.2}**, PEFT on bitsandbytes **{:.2}**",
            q.m.rs / b.m.rs,
            q.m.py / b.m.py
        ));
        if let (Some((ba, bb)), Some((qa, qb))) = (b.memory, q.memory) {
            s.push_str(&format!(
                "; peak CUDA memory QLoRA / bf16: peft-rs **{:.2}** ({:.0} / {:.0} MiB), PEFT **{:.2}** ({:.0} / \
                 {:.0} MiB)",
                qa as f64 / ba.max(1) as f64,
                mib(qa),
                mib(ba),
                qb as f64 / bb.max(1) as f64,
                mib(qb),
                mib(bb)
            ));
        }
        s.push_str(".\n");
    }
    let mut ours = |a: &str, b: &str| {
        if let (Some(x), Some(y)) = (get(a), get(b)) {
            s.push_str(&format!("\n{a} / {b} (peft-rs): {:.2}", x.m.rs / y.m.rs));
        }
    };
    ours("fwd_lora", "fwd_merged");
    ours("fwd_dora", "fwd_lora");
    ours("mixed_k32", "mixed_k1");
    s.push('\n');
    s
}
