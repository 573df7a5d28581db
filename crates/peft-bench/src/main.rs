//! The peft-rs side of `cargo xtask bench`: a worker answering one JSON request per line on stdin,
//! with the same protocol and workloads as the PEFT worker (`python/worker.py`), so the driver can
//! interleave the two on the same machine, libtorch and thread count.
//!
//! Usage: `peft-bench-worker THREADS`.

use anyhow::{anyhow, bail, Context, Result};
use peft_core::MethodConfig;
use peft_core::{ForwardCtx, LoadOptions, PeftModel};
use peft_lora::{LoraConfig, LoraModelExt};
use peft_models::generate::{generate_ctx, GenerationConfig};
use peft_models::{task, HfModel, ModelInputs};
use peft_train::optim::{default_groups, AdamW, Optimizer};
use serde_json::{json, Value};
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::time::Instant;
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

/// The device of the current workload: CUDA runs are synchronised before a timer is read.
static ON_CUDA: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Seconds since `t`, after the GPU finished the queued work.
fn done(t: Instant) -> f64 {
    if ON_CUDA.load(std::sync::atomic::Ordering::Relaxed) {
        tch::Cuda::synchronize(0);
    }
    t.elapsed().as_secs_f64()
}

/// `w["device"]`: `"cuda"` (device 0) or the CPU.
fn device_of(w: &Value) -> Device {
    match w["device"].as_str() {
        Some("cuda") => Device::Cuda(0),
        _ => Device::Cpu,
    }
}

fn load_base(w: &Value) -> Result<(HfModel, VarStore)> {
    let dtype_only = json!({"dtype": w["dtype"], "device": w["device"]});
    load_base_with(str_of(w, "model")?, &dtype_only)
}

/// Loads the base model, in `w["dtype"]` (`"bf16"`) and quantized to `w["quantize"]` (`"nf4"`: QLoRA's
/// NF4 with double quantization, computing in the base dtype).
fn load_base_with(path: &str, w: &Value) -> Result<(HfModel, VarStore)> {
    let kind = match w["dtype"].as_str() {
        Some("bf16") => Kind::BFloat16,
        Some("f32") | None => Kind::Float,
        Some(other) => bail!("unknown dtype {other}"),
    };
    let quantize = match w["quantize"].as_str() {
        None => None,
        Some(name) => Some(peft_quant::QuantizeSpec::FourBit(peft_quant::Quant4Options {
            quant_type: peft_quant::QuantType4::from_name(name)
                .ok_or_else(|| anyhow!("unknown quant type {name}"))?,
            blocksize: 64,
            double_quant: true,
            compute_dtype: Some(kind),
        })),
    };
    let opts = peft_models::LoadOptions { kind, quantize, device: device_of(w), ..Default::default() };
    // A directory, or a `.gguf` file (dequantized as transformers' `from_pretrained(…, gguf_file=…)`).
    let loaded = HfModel::load_path(std::path::Path::new(path), None, &opts)
        .with_context(|| format!("loading {path}"))?;
    Ok((loaded.model, loaded.vs))
}

fn random_ids(w: &Value, batch: i64, seq: i64) -> Tensor {
    tch::manual_seed(1234);
    Tensor::randint(1024, [batch, seq], (Kind::Int64, Device::Cpu)).to_device(device_of(w))
}

fn str_of<'a>(w: &'a Value, key: &str) -> Result<&'a str> {
    w[key].as_str().ok_or_else(|| anyhow!("workload field `{key}` missing"))
}

fn int_of(w: &Value, key: &str) -> Result<i64> {
    w[key].as_i64().ok_or_else(|| anyhow!("workload field `{key}` missing"))
}

/// `[[name, dir], …]`.
fn named_dirs(w: &Value) -> Result<Vec<(String, PathBuf)>> {
    let list = w["adapters"].as_array().ok_or_else(|| anyhow!("workload field `adapters` missing"))?;
    list.iter()
        .map(|p| match (p[0].as_str(), p[1].as_str()) {
            (Some(n), Some(d)) => Ok((n.to_string(), PathBuf::from(d))),
            _ => Err(anyhow!("`adapters` entries are [name, dir]")),
        })
        .collect()
}

fn load_adapters(w: &Value) -> Result<PeftModel<HfModel>> {
    let (model, vs) = load_base(w)?;
    let mut peft: Option<PeftModel<HfModel>> = None;
    let mut base = Some((model, vs));
    for (name, dir) in named_dirs(w)? {
        match peft.as_mut() {
            None => {
                let (m, vs) = base.take().ok_or_else(|| anyhow!("no base"))?;
                let (p, _) = PeftModel::from_pretrained(m, &vs, &dir, LoadOptions::named(name.clone()))?;

                peft = Some(p);
            }
            Some(p) => {
                p.load_adapter(&dir, LoadOptions::named(name.clone()))?;
            }
        }
    }
    peft.ok_or_else(|| anyhow!("no adapters"))
}

enum Workload {
    Train {
        peft: PeftModel<HfModel>,
        opt: AdamW,
        ids: Tensor,
    },
    Forward {
        peft: PeftModel<HfModel>,
        ids: Tensor,
        disabled: bool,
    },
    Mixed {
        peft: PeftModel<HfModel>,
        ids: Tensor,
        rows: Vec<String>,
    },
    Load {
        base: Option<HfModel>,
        vs: VarStore,
        adapter: PathBuf,
    },
    MergeUnload {
        base: Option<HfModel>,
        vs: VarStore,
        adapter: PathBuf,
    },
    Hotswap {
        peft: PeftModel<HfModel>,
        dirs: Vec<PathBuf>,
        flip: usize,
    },
    /// Greedy generation of a fixed number of tokens (no stop token), one adapter or one per row.
    Decode {
        peft: PeftModel<HfModel>,
        ids: Tensor,
        cfg: GenerationConfig,
        rows: Option<Vec<String>>,
    },
}

impl Workload {
    fn setup(w: &Value) -> Result<Self> {
        Ok(match str_of(w, "kind")? {
            "train" => {
                let (model, vs) = load_base_with(str_of(w, "model")?, w)?;
                let mut cfg = w["lora"].clone();
                cfg["peft_type"] = json!("LORA");
                let mut warnings = vec![];
                let config = LoraConfig::from_json_str(&cfg.to_string(), &mut warnings)?;
                let peft = PeftModel::new(model, &vs, config.boxed(), "default")?;

                let lr = w["lr"].as_f64().unwrap_or(1e-4);
                let opt = AdamW::new(
                    default_groups(peft.named_trainable_parameters(), lr, 0.01),
                    (0.9, 0.999),
                    1e-8,
                );
                let ids = random_ids(w, int_of(w, "batch")?, int_of(w, "seq")?);
                Workload::Train { peft, opt, ids }
            }
            "forward" => {
                let mut peft = load_adapters(w)?;
                let active: Vec<String> = w["active"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect();
                let active: Vec<&str> = active.iter().map(String::as_str).collect();
                peft.set_adapters_for_inference(&active)?;
                if w["merged"].as_bool() == Some(true) {
                    peft.merge_adapter(None, false)?;
                }
                let ids = random_ids(w, int_of(w, "batch")?, int_of(w, "seq")?);
                Workload::Forward { peft, ids, disabled: w["disabled"].as_bool() == Some(true) }
            }
            "mixed" => {
                let peft = load_adapters(w)?;
                let rows: Vec<String> = w["rows"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect();
                let ids = random_ids(w, rows.len() as i64, int_of(w, "seq")?);
                Workload::Mixed { peft, ids, rows }
            }
            "load" => {
                let (model, vs) = load_base(w)?;
                Workload::Load { base: Some(model), vs, adapter: PathBuf::from(str_of(w, "adapter")?) }
            }
            "merge_unload" => {
                let (model, vs) = load_base(w)?;
                Workload::MergeUnload { base: Some(model), vs, adapter: PathBuf::from(str_of(w, "adapter")?) }
            }
            "hotswap" => {
                let (model, vs) = load_base(w)?;
                let dirs: Vec<PathBuf> = w["adapters"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|v| v.as_str().map(PathBuf::from))
                    .collect();
                if dirs.len() != 2 {
                    bail!("hotswap needs two adapter directories");
                }
                let (peft, _) = PeftModel::from_pretrained(model, &vs, &dirs[0], LoadOptions::default())?;

                Workload::Hotswap { peft, dirs, flip: 1 }
            }
            "decode" => {
                let mut peft = load_adapters(w)?;
                let rows: Option<Vec<String>> = w["rows"]
                    .as_array()
                    .map(|r| r.iter().filter_map(|v| v.as_str().map(String::from)).collect());
                if rows.is_none() {
                    let first = named_dirs(w)?.into_iter().next().map(|(n, _)| n).unwrap_or_default();
                    peft.set_adapters_for_inference(&[first.as_str()])?;
                    if w["merged"].as_bool() == Some(true) {
                        peft.merge_adapter(None, false)?;
                    }
                }
                let batch = rows.as_ref().map_or(1, |r| r.len() as i64);
                let ids = random_ids(w, batch, int_of(w, "prompt")?);
                // No stop token: both sides generate exactly `new_tokens` (PEFT's side sets min_new_tokens).
                let cfg = GenerationConfig {
                    max_new_tokens: int_of(w, "new_tokens")?,
                    eos_token_ids: vec![],
                    pad_token_id: Some(0),
                    ..GenerationConfig::default()
                };
                Workload::Decode { peft, ids, cfg, rows }
            }
            other => bail!("unknown workload kind {other}"),
        })
    }

    /// One timed iteration, in seconds.
    fn run_once(&mut self) -> Result<f64> {
        Ok(match self {
            Workload::Train { peft, opt, ids } => {
                let t = Instant::now();
                let logits = peft.model().forward(&ModelInputs::ids(ids), &ForwardCtx::train())?;
                let loss = task::causal_lm_loss(&logits, ids);
                loss.backward();
                opt.step(1.0)?;
                opt.zero_grad();
                done(t)
            }
            Workload::Forward { peft, ids, disabled } => {
                let t = Instant::now();
                if *disabled {
                    let off = peft.disable_adapters()?;
                    let _ = tch::no_grad(|| off.forward(&ModelInputs::ids(ids), &ForwardCtx::eval()))?;
                } else {
                    let _ =
                        tch::no_grad(|| peft.model().forward(&ModelInputs::ids(ids), &ForwardCtx::eval()))?;
                }
                done(t)
            }
            Workload::Mixed { peft, ids, rows } => {
                let t = Instant::now();
                let names: Vec<&str> = rows.iter().map(String::as_str).collect();
                let ra = peft.row_adapters(&names)?;
                let ctx = ForwardCtx::eval().with_rows(&ra);
                let _ = tch::no_grad(|| peft.model().forward(&ModelInputs::ids(ids), &ctx))?;
                done(t)
            }
            Workload::Load { base, vs, adapter } => {
                let model = base.take().ok_or_else(|| anyhow!("base model missing"))?;
                let t = Instant::now();
                let (peft, _) = PeftModel::from_pretrained(model, vs, &*adapter, LoadOptions::default())?;
                let elapsed = done(t);
                *base = Some(peft.unload());
                elapsed
            }
            Workload::MergeUnload { base, vs, adapter } => {
                let model = base.take().ok_or_else(|| anyhow!("base model missing"))?;
                let (peft, _) = PeftModel::from_pretrained(model, vs, &*adapter, LoadOptions::default())?;
                let t = Instant::now();
                let model = peft.merge_and_unload(None, false)?;
                let elapsed = done(t);
                *base = Some(model);
                elapsed
            }
            Workload::Decode { peft, ids, cfg, rows } => {
                let t = Instant::now();
                let names: Vec<&str> = rows.iter().flatten().map(String::as_str).collect();
                let ra = if rows.is_some() { Some(peft.row_adapters(&names)?) } else { None };
                let ctx = match &ra {
                    Some(ra) => ForwardCtx::eval().with_rows(ra),
                    None => ForwardCtx::eval(),
                };
                let out = generate_ctx(peft.model(), ids, None, cfg, &ctx)?;
                let elapsed = done(t);
                let want = ids.size()[1] + cfg.max_new_tokens;
                if out.size()[1] != want {
                    bail!("generated {} positions, expected {want}", out.size()[1]);
                }
                elapsed
            }
            Workload::Hotswap { peft, dirs, flip } => {
                let dir = dirs[*flip].clone();
                *flip = 1 - *flip;
                let t = Instant::now();
                peft.hotswap_adapter(&dir, "default")?;
                done(t)
            }
        })
    }
}

fn peak_rss() -> u64 {
    peft_train::trainer::peak_rss_bytes().unwrap_or(0)
}

/// The current resident set size (`VmRSS`), in bytes.
fn current_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    kb * 1024
}

/// Bytes held by quantized weights and the number of parameters they represent.
fn quantized_params(model: &HfModel) -> (i64, i64) {
    use peft_core::Adaptable;
    let (bytes, _) = peft_quant::quantized_storage(model);
    let mut params = 0;
    model.visit_layers(&mut |l| {
        if let Some(q) =
            l.base().as_any().downcast_ref::<peft_core::nn::LinearBase>().and_then(|b| b.quantized.as_ref())
        {
            params += q.in_features() * q.out_features();
        }
    });
    (bytes, params)
}

fn handle(req: &Value, workload: &mut Option<Workload>) -> Result<Option<Value>> {
    Ok(Some(match req["op"].as_str().unwrap_or_default() {
        "setup" => {
            *workload = None;
            let on_cuda = device_of(&req["workload"]).is_cuda();
            if on_cuda && !tch::Cuda::is_available() {
                bail!("the workload asks for CUDA, which libtorch does not see here");
            }
            ON_CUDA.store(on_cuda, std::sync::atomic::Ordering::Relaxed);
            *workload = Some(Workload::setup(&req["workload"])?);
            json!({"ok": true})
        }
        "run" => {
            let w = workload.as_mut().ok_or_else(|| anyhow!("run before setup"))?;
            let iters = req["iters"].as_u64().unwrap_or(1);
            let times = (0..iters).map(|_| w.run_once().map(|s| s * 1000.0)).collect::<Result<Vec<f64>>>()?;
            json!({"times_ms": times})
        }
        "teardown" => {
            *workload = None;
            json!({"ok": true})
        }
        "memory" => json!({"peak_rss": peak_rss()}),
        // The CUDA caching allocator's peak since the last reset (torch.cuda.max_memory_allocated).
        "gpu_memory" => json!({"peak_allocated": peft_quant::cuda::memory(0)?.peak_allocated}),
        "reset_gpu_peak" => {
            peft_quant::cuda::reset_peak_memory(0)?;
            json!({"ok": true})
        }
        "rss" => json!({"rss": current_rss()}),
        "reset_peak" => {
            // Linux: writing 5 to clear_refs resets VmHWM to the current RSS.
            let ok = std::fs::write("/proc/self/clear_refs", "5").is_ok();
            json!({"ok": ok, "rss": current_rss()})
        }
        "storage" => {
            let (bytes, params) = match workload.as_ref() {
                Some(Workload::Train { peft, .. }) => quantized_params(peft.model()),
                _ => (0, 0),
            };
            json!({"quantized_bytes": bytes, "quantized_params": params})
        }
        "quit" => return Ok(None),
        other => bail!("unknown op {other}"),
    }))
}

fn main() -> Result<()> {
    let threads: i32 = std::env::args().nth(1).map(|s| s.parse()).transpose()?.unwrap_or(2);
    tch::set_num_threads(threads);
    let mut workload: Option<Workload> = None;
    let stdin = std::io::stdin();
    let mut out = std::io::stdout().lock();
    for line in stdin.lock().lines() {
        let req: Value = serde_json::from_str(&line?)?;
        let resp = match handle(&req, &mut workload) {
            Ok(Some(v)) => v,
            Ok(None) => break,
            Err(e) => json!({"error": format!("{e:#}")}),
        };
        writeln!(out, "{resp}")?;
        out.flush()?;
    }
    Ok(())
}
