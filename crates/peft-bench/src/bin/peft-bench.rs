//! `cargo xtask bench`: each workload in peft-rs and in Python PEFT on the same machine, libtorch and
//! thread count, interleaved (peft-rs, PEFT, peft-rs, PEFT, …) after warm-up; prints medians, the ratio
//! peft-rs / PEFT and the targets, and writes `target/bench/results.{json,md,png}`.
//!
//! Usage: `peft-bench --python PY [--quick] [--gpu [--device cpu]] [--threads N] [--only SUBSTR] [--docs FILE]`.
//!
//! `--gpu` runs the same workloads on CUDA in bf16, QLoRA against PEFT on bitsandbytes, and a shortened
//! version of PEFT's method_comparison recipe (LoRA r32 on q,v of a Llama-3B-shaped model with random
//! weights, batch 4 × 768 tokens: tokens/s and peak CUDA memory of both); `--gpu --device cpu` is a dry
//! run of that suite on the CPU with small models.

#![allow(clippy::print_stdout, clippy::print_stderr)]

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Instant;

const CRATE_DIR: &str = env!("CARGO_MANIFEST_DIR");

struct Args {
    python: PathBuf,
    quick: bool,
    gpu: bool,
    /// `--device cpu` with `--gpu`: the GPU suite on the CPU, shrunk (a dry run).
    dry_run: bool,
    threads: usize,
    only: Option<String>,
    docs: Option<PathBuf>,
    out: PathBuf,
}

fn parse_args() -> Result<Args> {
    let mut it = std::env::args().skip(1);
    let root = Path::new(CRATE_DIR).join("../..");
    let mut args = Args {
        python: PathBuf::from("python3"),
        quick: false,
        gpu: false,
        dry_run: false,
        threads: 2,
        only: None,
        docs: None,
        out: root.join("target").join("bench"),
    };
    while let Some(a) = it.next() {
        let mut value = || it.next().ok_or_else(|| anyhow!("{a} needs a value"));
        match a.as_str() {
            "--python" => args.python = PathBuf::from(value()?),
            "--quick" => args.quick = true,
            "--gpu" => args.gpu = true,
            "--device" => match value()?.as_str() {
                "cpu" => args.dry_run = true,
                "cuda" => args.dry_run = false,
                other => bail!("--device cuda|cpu, not {other}"),
            },
            "--threads" => args.threads = value()?.parse()?,
            "--only" => args.only = Some(value()?),
            "--docs" => args.docs = Some(PathBuf::from(value()?)),
            "--out" => args.out = PathBuf::from(value()?),
            other => bail!("unknown argument {other}"),
        }
    }
    Ok(args)
}

/// A worker process speaking the line-JSON protocol.
struct Worker {
    name: &'static str,
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Worker {
    fn spawn(name: &'static str, mut cmd: Command) -> Result<Self> {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting the {name} worker: {cmd:?}"))?;
        let stdin = child.stdin.take().ok_or_else(|| anyhow!("no stdin"))?;
        let stdout = BufReader::new(child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?);
        Ok(Self { name, child, stdin, stdout })
    }

    fn request(&mut self, req: &Value) -> Result<Value> {
        writeln!(self.stdin, "{req}")?;
        self.stdin.flush()?;
        let mut line = String::new();
        if self.stdout.read_line(&mut line)? == 0 {
            bail!("the {} worker exited", self.name);
        }
        let resp: Value =
            serde_json::from_str(&line).with_context(|| format!("{} worker said {line:?}", self.name))?;
        if let Some(e) = resp.get("error") {
            bail!("{} worker: {}", self.name, e.as_str().unwrap_or_default());
        }
        Ok(resp)
    }

    fn times(&mut self, iters: usize) -> Result<Vec<f64>> {
        let r = self.request(&json!({"op": "run", "iters": iters}))?;
        Ok(r["times_ms"].as_array().into_iter().flatten().filter_map(Value::as_f64).collect())
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "{}", json!({"op": "quit"}));
        let _ = self.stdin.flush();
        let _ = self.child.wait();
    }
}

fn rs_command(args: &Args) -> Result<Command> {
    let exe = std::env::current_exe()?;
    let mut cmd = Command::new(exe.with_file_name("peft-bench-worker"));
    cmd.arg(args.threads.to_string()).env("OMP_NUM_THREADS", args.threads.to_string());
    Ok(cmd)
}

fn spawn_workers(args: &Args) -> Result<(Worker, Worker)> {
    let mut rs_cmd = rs_command(args)?;
    let mut py_cmd = Command::new(&args.python);
    py_cmd.arg(Path::new(CRATE_DIR).join("python").join("worker.py")).arg(args.threads.to_string());
    for cmd in [&mut rs_cmd, &mut py_cmd] {
        cmd.env("OMP_NUM_THREADS", args.threads.to_string());
    }
    Ok((Worker::spawn("peft-rs", rs_cmd)?, Worker::spawn("PEFT", py_cmd)?))
}

/// One workload: the request both workers get, and how to time it.
struct Spec {
    name: String,
    what: String,
    workload: Value,
    warmup: usize,
    reps: usize,
    iters: usize,
}

struct Measured {
    name: String,
    what: String,
    rs: f64,
    py: f64,
    /// Training workloads: PEFT's time inside the matrix-product and attention kernels, which any
    /// implementation running the same model must spend too.
    essential: Option<f64>,
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}

fn specs(fx: &Path, quick: bool) -> Vec<Spec> {
    let model = |m: &str| fx.join("models").join(m).display().to_string();
    let adapter = |a: &str| fx.join("adapters").join(a).display().to_string();
    let all = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];
    let (reps, heavy_reps) = if quick { (3, 2) } else { (9, 5) };
    let mut out = Vec::new();
    let mut add = |name: &str, what: &str, workload: Value, iters: usize, reps: usize| {
        out.push(Spec { name: name.into(), what: what.into(), workload, warmup: 1, reps, iters })
    };
    for (size, what, r) in [("small", "Llama h256 ×2", reps), ("medium", "Llama h1024 ×4", heavy_reps)] {
        for (targets, tname) in [(json!(["q_proj", "v_proj"]), "qv"), (json!(all), "all")] {
            if quick && size == "medium" && tname == "all" {
                continue;
            }
            add(
                &format!("train_{size}_{tname}"),
                &format!("training step, {what}, r16 {tname}, 4×128, AdamW"),
                json!({"kind": "train", "model": model(size), "lora": {"r": 16, "target_modules": targets},
                       "batch": 4, "seq": 128, "lr": 1e-4}),
                if size == "small" { 3 } else { 1 },
                r,
            );
        }
    }
    let fwd = |adapters: Value, active: Value, merged: bool, disabled: bool| {
        json!({"kind": "forward", "model": model("medium"), "adapters": adapters, "active": active,
               "merged": merged, "disabled": disabled, "batch": 4, "seq": 128})
    };
    let lora = json!([["default", adapter("medium_lora")]]);
    add(
        "fwd_base",
        "forward, Llama h1024 ×4, adapters disabled",
        fwd(lora.clone(), json!(["default"]), false, true),
        2,
        reps,
    );
    add(
        "fwd_lora",
        "forward, unmerged LoRA r16 all-linear",
        fwd(lora.clone(), json!(["default"]), false, false),
        2,
        reps,
    );
    add("fwd_merged", "forward, merged LoRA", fwd(lora, json!(["default"]), true, false), 2, reps);
    add(
        "fwd_dora",
        "forward, DoRA r16 all-linear (eval)",
        fwd(json!([["default", adapter("medium_dora")]]), json!(["default"]), false, false),
        2,
        reps,
    );
    let multi = json!([
        ["m0", adapter("medium_multi_0")],
        ["m1", adapter("medium_multi_1")],
        ["m2", adapter("medium_multi_2")]
    ]);
    add(
        "fwd_multi",
        "forward, 3 active adapters",
        fwd(multi, json!(["m0", "m1", "m2"]), false, false),
        2,
        reps,
    );
    add(
        "load_37mb",
        "from_pretrained, 37 MB adapter (Llama h2048 ×8, r32 all-linear)",
        json!({"kind": "load", "model": model("big"), "adapter": adapter("big_a")}),
        1,
        heavy_reps + 2,
    );
    add(
        "hotswap_37mb",
        "hotswap_adapter, 37 MB adapter",
        json!({"kind": "hotswap", "model": model("big"), "adapters": [adapter("big_a"), adapter("big_b")]}),
        2,
        heavy_reps + 2,
    );
    add(
        "merge_and_unload",
        "merge_and_unload, 37 MB adapter",
        json!({"kind": "merge_unload", "model": model("big"), "adapter": adapter("big_a")}),
        1,
        heavy_reps,
    );
    for k in [1usize, 4, 16, 32] {
        let adapters: Vec<Value> =
            (0..k).map(|i| json!([format!("a{i}"), adapter(&format!("small_mixed_{i}"))])).collect();
        let rows: Vec<String> = (0..32).map(|i| format!("a{}", i % k)).collect();
        add(
            &format!("mixed_k{k}"),
            &format!("mixed batch, 32 rows × 64 tokens, {k} distinct adapters (Llama h256 ×2, r16 q,v)"),
            json!({"kind": "mixed", "model": model("small"), "adapters": adapters, "rows": rows, "seq": 64}),
            2,
            reps,
        );
    }
    out
}

/// Prepares (or reuses) the fixtures, keyed by a hash of `prepare.py`.
fn fixtures(args: &Args) -> Result<PathBuf> {
    let script = Path::new(CRATE_DIR).join("python").join("prepare.py");
    let text = std::fs::read(&script).with_context(|| format!("reading {}", script.display()))?;
    let hash =
        text.iter().fold(0xcbf29ce484222325u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x100000001b3));
    let dir = args.out.join(format!("fixtures-{hash:016x}"));
    if dir.join("manifest.json").exists() {
        return Ok(dir);
    }
    println!("preparing fixtures in {} (once) …", dir.display());
    let status = Command::new(&args.python).arg(&script).arg(&dir).status()?;
    if !status.success() {
        bail!("prepare.py failed ({status})");
    }
    Ok(dir)
}

fn measure(spec: &Spec, rs: &mut Worker, py: &mut Worker) -> Result<Measured> {
    let setup = json!({"op": "setup", "workload": spec.workload});
    rs.request(&setup).with_context(|| format!("{}: setup", spec.name))?;
    py.request(&setup).with_context(|| format!("{}: setup", spec.name))?;
    rs.times(spec.warmup)?;
    py.times(spec.warmup)?;
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for _ in 0..spec.reps {
        a.extend(rs.times(spec.iters)?);
        b.extend(py.times(spec.iters)?);
    }
    let essential = if spec.name.starts_with("train_") {
        let r = py.request(&json!({"op": "kernel_time", "iters": spec.iters.max(2)}))?;
        r["essential_ms"].as_f64()
    } else {
        None
    };
    rs.request(&json!({"op": "teardown"}))?;
    py.request(&json!({"op": "teardown"}))?;
    Ok(Measured {
        name: spec.name.clone(),
        what: spec.what.clone(),
        rs: median(&mut a),
        py: median(&mut b),
        essential,
    })
}

/// One QLoRA-comparison run in a fresh peft-rs worker.
struct QloraRun {
    step_ms: f64,
    /// Peak RSS minus the RSS before loading (libtorch's own footprint), in bytes.
    train_bytes: u64,
    /// Bits per quantized parameter at rest (quantized runs).
    bits: Option<f64>,
    /// Bytes of the quantized weights and the number of parameters they hold (quantized runs).
    quantized: (f64, f64),
}

fn qlora_run(args: &Args, workload: &Value, reps: usize) -> Result<QloraRun> {
    // Step time in a default process.
    let mut rs = Worker::spawn("peft-rs", rs_command(args)?)?;
    rs.request(&json!({"op": "setup", "workload": workload}))?;
    rs.times(1)?;
    let mut t = rs.times(reps)?;
    drop(rs);
    // Memory in a second process. glibc keeps freed blocks of up to 32 MiB in its heap once it has seen
    // one (its dynamic mmap threshold), so RSS would count transient dequantization buffers long after
    // they are freed. A fixed 1 MiB threshold returns large blocks to the system on free: RSS then
    // measures live memory, for both runs alike (it also makes every large allocation fault its pages
    // in again, which is why the time comes from the first process).
    let mut cmd = rs_command(args)?;
    cmd.env("MALLOC_MMAP_THRESHOLD_", "1048576").env("MALLOC_TRIM_THRESHOLD_", "1048576");
    let mut rs = Worker::spawn("peft-rs", cmd)?;
    let base = rs.request(&json!({"op": "rss"}))?["rss"].as_u64().unwrap_or(0);
    rs.request(&json!({"op": "setup", "workload": workload}))?;
    // Loading streams the checkpoint through memory; the training footprint is measured from here on.
    rs.request(&json!({"op": "reset_peak"}))?;
    rs.times(2)?;
    let peak = rs.request(&json!({"op": "memory"}))?["peak_rss"].as_u64().unwrap_or(0);
    let st = rs.request(&json!({"op": "storage"}))?;
    let (bytes, params) =
        (st["quantized_bytes"].as_f64().unwrap_or(0.0), st["quantized_params"].as_f64().unwrap_or(0.0));
    Ok(QloraRun {
        step_ms: median(&mut t),
        train_bytes: peak.saturating_sub(base),
        bits: (params > 0.0).then(|| 8.0 * bytes / params),
        quantized: (bytes, params),
    })
}

/// QLoRA vs bf16 LoRA in peft-rs on the weights-dominated big Llama (h2048 ×8, vocab 1024), batch 1 × 64,
/// LoRA r16 on q,v and on all-linear: `(targets, bf16 run, QLoRA run)`.
fn qlora(args: &Args, fx: &Path) -> Result<Vec<(&'static str, QloraRun, QloraRun)>> {
    let model = fx.join("models").join("big").display().to_string();
    let w = |targets: &Value, quantize: Option<&str>| {
        let mut w = json!({"kind": "train", "model": model, "dtype": "bf16", "batch": 1, "seq": 64, "lr": 1e-4,
                           "lora": {"r": 16, "lora_alpha": 32, "target_modules": targets}});
        if let Some(q) = quantize {
            w["quantize"] = json!(q);
        }
        w
    };
    let reps = if args.quick { 2 } else { 3 };
    let mut out = Vec::new();
    for (name, targets) in [("q,v", json!(["q_proj", "v_proj"])), ("all-linear", json!("all-linear"))] {
        let b = qlora_run(args, &w(&targets, None), reps)?;
        let q = qlora_run(args, &w(&targets, Some("nf4")), reps)?;
        println!(
            "qlora ({name}): bf16 LoRA {:.0} ms / {} MiB, QLoRA {:.0} ms / {} MiB, {:.3} bits per parameter",
            b.step_ms,
            b.train_bytes >> 20,
            q.step_ms,
            q.train_bytes >> 20,
            q.bits.unwrap_or(f64::NAN)
        );
        out.push((name, b, q));
    }
    Ok(out)
}

fn qlora_section(runs: &[(&str, QloraRun, QloraRun)]) -> String {
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    let mut s = String::from(
        "\nQLoRA in peft-rs (fresh processes; Llama h2048 ×8, vocab 1024, batch 1 × 64, LoRA r16, AdamW; step \
         time from a default process; training memory from a second one = peak RSS during two steps (peak reset \
         after loading) minus the RSS before loading, with glibc returning large freed blocks at once):\n\n\
         | LoRA targets | base | step ms | training memory MiB | bits / base parameter | QLoRA / bf16 memory | QLoRA / bf16 step time |\n\
         |---|---|---:|---:|---:|---:|---:|\n",
    );
    for (name, b, q) in runs {
        s.push_str(&format!("| {name} | bf16 | {:.0} | {:.0} | 16 | | |\n", b.step_ms, mib(b.train_bytes)));
        s.push_str(&format!(
            "| {name} | NF4 + double quant (bf16 compute) | {:.0} | {:.0} | {:.3} | **{:.2}** | {:.2} |\n",
            q.step_ms,
            mib(q.train_bytes),
            q.bits.unwrap_or(f64::NAN),
            q.train_bytes as f64 / b.train_bytes.max(1) as f64,
            q.step_ms / b.step_ms
        ));
    }
    s
}

/// Peak RSS of a fresh worker pair running `spec` (the training workload).
fn memory(args: &Args, spec: &Spec) -> Result<(u64, u64)> {
    let (mut rs, mut py) = spawn_workers(args)?;
    let setup = json!({"op": "setup", "workload": spec.workload});
    let peak = |w: &mut Worker| -> Result<u64> {
        w.request(&setup)?;
        w.times(3)?;
        let r = w.request(&json!({"op": "memory"}))?;
        r["peak_rss"].as_u64().ok_or_else(|| anyhow!("no peak_rss"))
    };
    Ok((peak(&mut rs)?, peak(&mut py)?))
}

struct Check {
    what: String,
    value: f64,
    limit: f64,
    /// The lowest value reachable with the same kernels (see [`Measured::essential`]).
    floor: Option<f64>,
}

fn checks(m: &[Measured], mem: Option<(u64, u64)>) -> Vec<Check> {
    let get = |n: &str| m.iter().find(|x| x.name == n);
    let mut out = Vec::new();
    let mut ratio = |n: &str, limit: f64| {
        if let Some(x) = get(n) {
            let floor = x.essential.map(|e| e / x.py);
            out.push(Check { what: format!("{n}: peft-rs / PEFT"), value: x.rs / x.py, limit, floor });
        }
    };
    ratio("train_small_qv", 0.70);
    ratio("train_medium_qv", 0.95);
    ratio("merge_and_unload", 0.5);
    ratio("mixed_k32", 1.0);
    let mut ours = |a: &str, b: &str, limit: f64| {
        if let (Some(x), Some(y)) = (get(a), get(b)) {
            out.push(Check { what: format!("{a} / {b} (peft-rs)"), value: x.rs / y.rs, limit, floor: None });
        }
    };
    ours("fwd_lora", "fwd_merged", 1.10);
    ours("fwd_dora", "fwd_lora", 1.15);
    ours("mixed_k32", "mixed_k1", 1.2);
    if let Some(x) = get("load_37mb") {
        out.push(Check { what: "load_37mb (peft-rs, ms)".into(), value: x.rs, limit: 100.0, floor: None });
    }
    if let Some(x) = get("hotswap_37mb") {
        out.push(Check { what: "hotswap_37mb (peft-rs, ms)".into(), value: x.rs, limit: 10.0, floor: None });
    }
    if let Some((rs, py)) = mem {
        out.push(Check {
            what: "peak RSS, training (peft-rs / PEFT)".into(),
            value: rs as f64 / py as f64,
            limit: 1.0,
            floor: None,
        });
    }
    out
}

fn fmt_ms(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn report(m: &[Measured], mem: Option<(u64, u64)>, checks: &[Check], header: &str) -> String {
    let mut s = String::new();
    s.push_str(header);
    s.push_str("\n\n| workload | what | peft-rs ms | PEFT ms | peft-rs / PEFT |\n|---|---|---:|---:|---:|\n");
    for x in m {
        s.push_str(&format!(
            "| `{}` | {} | {} | {} | **{:.2}** |\n",
            x.name,
            x.what,
            fmt_ms(x.rs),
            fmt_ms(x.py),
            x.rs / x.py
        ));
    }
    if let Some((rs, py)) = mem {
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        s.push_str(&format!(
            "| `peak_rss_train` | peak RSS of a fresh process running `train_medium_qv` (MiB) | {:.0} | {:.0} | **{:.2}** |\n",
            mib(rs),
            mib(py),
            rs as f64 / py as f64
        ));
    }
    s.push_str("\n| target | value | limit | met | floor (same kernels) |\n|---|---:|---:|:---:|---:|\n");
    for c in checks {
        let met = if c.value <= c.limit {
            "yes"
        } else if c.floor.is_some_and(|f| f > c.limit) {
            "**no** (out of reach: floor above limit)"
        } else {
            "**no**"
        };
        let floor = c.floor.map(|f| format!("{f:.3}")).unwrap_or_default();
        s.push_str(&format!("| {} | {:.3} | {} | {met} | {floor} |\n", c.what, c.value, c.limit));
    }
    s
}

fn chart(path: &Path, m: &[Measured]) -> Result<()> {
    use plotters::prelude::*;
    use plotters::style::text_anchor::{HPos, Pos, VPos};
    let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular());
    let n = m.len();
    let root = BitMapBackend::new(path, (900, 70 + 26 * n as u32)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let max = m.iter().map(|x| x.rs / x.py).fold(1.2f64, f64::max) * 1.1;
    // Numeric y so every bar gets its own label and a gap; the first workload on top.
    let mut c = ChartBuilder::on(&root)
        .caption("peft-rs time / PEFT time (lower is better)", ("sans-serif", 20))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(150)
        .build_cartesian_2d(0f64..max, -0.5f64..(n as f64 - 0.5))
        .map_err(|e| anyhow!("{e}"))?;
    c.configure_mesh().disable_y_mesh().y_labels(0).draw().map_err(|e| anyhow!("{e}"))?;
    let row = |i: usize| (n - 1 - i) as f64;
    c.draw_series(m.iter().enumerate().map(|(i, x)| {
        let r = x.rs / x.py;
        let color = if r <= 1.0 { GREEN.mix(0.7) } else { RED.mix(0.7) };
        Rectangle::new([(0.0, row(i) - 0.35), (r, row(i) + 0.35)], color.filled())
    }))
    .map_err(|e| anyhow!("{e}"))?;
    c.draw_series(LineSeries::new(vec![(1.0, -0.5), (1.0, n as f64 - 0.5)], BLACK))
        .map_err(|e| anyhow!("{e}"))?;
    let style = ("sans-serif", 14).into_font().color(&BLACK).pos(Pos::new(HPos::Right, VPos::Center));
    for (i, x) in m.iter().enumerate() {
        let (px, py) = c.backend_coord(&(0.0, row(i)));
        root.draw(&Text::new(x.name.clone(), (px - 6, py), style.clone())).map_err(|e| anyhow!("{e}"))?;
    }
    root.present().map_err(|e| anyhow!("{e}"))?;
    Ok(())
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    format!("{cpu}, {cores} cores visible")
}

fn main() -> Result<()> {
    let args = parse_args()?;
    if args.gpu {
        return gpu::main(&args);
    }
    std::fs::create_dir_all(&args.out)?;
    let started = Instant::now();
    let fx = fixtures(&args)?;
    let mut all = specs(&fx, args.quick);
    all.extend(decode::specs(&fx, args.quick));
    let chosen: Vec<&Spec> =
        all.iter().filter(|s| args.only.as_deref().is_none_or(|o| s.name.contains(o))).collect();
    let (mut rs, mut py) = spawn_workers(&args)?;
    let mut measured = Vec::new();
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
        measured.push(m);
    }
    drop((rs, py));
    let (decoded, measured): (Vec<Measured>, Vec<Measured>) =
        measured.into_iter().partition(|m| decode::is_decode(&m.name));
    let mem = match all.iter().find(|s| s.name == "train_medium_qv") {
        Some(spec) if args.only.is_none() => {
            let m = memory(&args, spec)?;
            println!("peak RSS (train_medium_qv): peft-rs {} MiB, PEFT {} MiB", m.0 >> 20, m.1 >> 20);
            Some(m)
        }
        _ => None,
    };
    let mut checks = checks(&measured, mem);
    let qlora_runs = if args.only.as_deref().is_none_or(|o| "qlora".contains(o)) {
        let runs = qlora(&args, &fx)?;
        for (name, b, q) in &runs {
            // The floor: bf16 training memory with its linear weights (2 bytes per parameter) replaced by
            // the 4-bit storage and nothing else changed — adapters, optimizer state, activations and
            // libtorch's working memory are the same in both runs.
            let (qbytes, params) = q.quantized;
            let floor = (b.train_bytes as f64 - 2.0 * params + qbytes) / b.train_bytes.max(1) as f64;
            checks.push(Check {
                what: format!("QLoRA / bf16 LoRA training memory, r16 {name} (peft-rs)"),
                value: q.train_bytes as f64 / b.train_bytes.max(1) as f64,
                limit: 0.40,
                floor: Some(floor),
            });
        }
        if let Some((_, _, q)) = runs.first() {
            checks.push(Check {
                what: "bits per 4-bit base parameter at rest".into(),
                value: q.bits.unwrap_or(f64::NAN),
                limit: 4.13,
                floor: None,
            });
        }
        Some(runs)
    } else {
        None
    };
    let header = format!(
        "Machine: {}. {} threads for both sides, f32 on CPU, medians of interleaved runs{}. libtorch 2.13.0 \
         (the venv's torch) on both sides; PEFT 0.21.2, transformers from tests/oracle/requirements.txt.",
        machine(),
        args.threads,
        if args.quick { " (--quick: fewer repetitions)" } else { "" }
    );
    if !decoded.is_empty() {
        let text = decode::report(&decoded, &all, &header);
        println!("\n{text}");
        std::fs::write(args.out.join("results-decode.md"), &text)?;
        if let Some(docs) = &args.docs {
            replace_section(docs, "bench-decode", &text)?;
        }
        if measured.is_empty() && qlora_runs.is_none() {
            println!("done in {:.0} s; results in {}", started.elapsed().as_secs_f64(), args.out.display());
            return Ok(());
        }
    }
    let mut text = report(&measured, mem, &checks, &header);
    if let Some(runs) = &qlora_runs {
        text.push_str(&qlora_section(runs));
    }
    println!("\n{text}");
    std::fs::write(args.out.join("results.md"), &text)?;
    let json_rows: Vec<Value> = measured
        .iter()
        .map(|x| json!({"name": x.name, "what": x.what, "peft_rs_ms": x.rs, "peft_ms": x.py, "ratio": x.rs / x.py}))
        .collect();
    std::fs::write(
        args.out.join("results.json"),
        serde_json::to_string_pretty(
            &json!({"machine": machine(), "threads": args.threads, "quick": args.quick,
            "workloads": json_rows, "peak_rss": mem.map(|(a, b)| json!({"peft_rs": a, "peft": b}))}),
        )?,
    )?;
    chart(&args.out.join("ratios.png"), &measured)?;
    // A partial run (--only) leaves the full run's table as it is.
    if let (Some(docs), None) = (&args.docs, &args.only) {
        update_docs(docs, &text, &args.out.join("ratios.png"))?;
    }
    println!("done in {:.0} s; results in {}", started.elapsed().as_secs_f64(), args.out.display());
    Ok(())
}

/// Replaces the generated part of docs/BENCHMARKS.md (between the markers) and copies the chart next
/// to it.
fn update_docs(docs: &Path, table: &str, png: &Path) -> Result<()> {
    replace_section(docs, "bench", &format!("{table}\n![ratios](benchmarks.png)"))?;
    if let Some(dir) = docs.parent() {
        std::fs::copy(png, dir.join("benchmarks.png"))?;
    }
    Ok(())
}

/// Replaces the text between `<!-- {tag}:begin -->` and `<!-- {tag}:end -->` in `docs`.
fn replace_section(docs: &Path, tag: &str, body: &str) -> Result<()> {
    let begin = format!("<!-- {tag}:begin -->");
    let end = format!("<!-- {tag}:end -->");
    let text = std::fs::read_to_string(docs).with_context(|| format!("reading {}", docs.display()))?;
    let (Some(a), Some(b)) = (text.find(&begin), text.find(&end)) else {
        bail!("{} lacks the {begin} / {end} markers", docs.display());
    };
    let new = format!("{}{begin}\n{body}\n{}", &text[..a], &text[b..]);
    std::fs::write(docs, new)?;
    Ok(())
}

#[path = "../decode.rs"]
mod decode;
#[path = "../gpu_suite.rs"]
mod gpu;
