//! The `peft` binary: `run` reproduces transformers + PEFT logits for every architecture, `inspect` and
//! `generate` work, hub ids resolve offline through the HF cache, and errors are one clear line.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use peft_parity::compare::{assert_close, mask_padding};
use peft_parity::models::read_all;
use peft_parity::oracle::{self, read_json};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use tch::Tensor;

fn fixtures() -> PathBuf {
    oracle::fixtures("gen_models.py")
}

fn peft(args: &[&str], env: &[(&str, &Path)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_peft"));
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("the peft binary runs")
}

fn ok(out: &Output) -> String {
    assert!(out.status.success(), "peft failed ({}):\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn one_line_error(out: &Output) -> String {
    assert!(!out.status.success(), "expected a failure");
    let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
    assert!(err.starts_with("error: ") && !err.contains('\n'), "not a one-line error: {err:?}");
    err
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn logits(path: &Path) -> Tensor {
    read_all(path).remove("logits").expect("a `logits` tensor")
}

fn compare(ours: &Tensor, want: &Tensor, inputs: &BTreeMap<String, Tensor>, task: &str, what: &str) {
    let (ours, want) = match task {
        "SEQ_CLS" | "SEQ_2_SEQ_LM" => (ours.shallow_clone(), want.shallow_clone()),
        _ => (mask_padding(ours, &inputs["attention_mask"]), mask_padding(want, &inputs["attention_mask"])),
    };
    assert_close(&ours, &want, 1e-4, what);
}

#[test]
fn run_reproduces_transformers_and_peft_logits_for_every_architecture() {
    let root = fixtures();
    let work = tempfile::tempdir().unwrap();
    let m = read_json(&root.join("manifest.json"));
    for case in m["cases"].as_array().unwrap().iter().map(|c| c.as_str().unwrap()) {
        let d = root.join("cases").join(case);
        let meta = read_json(&d.join("case.json"));
        let task = meta["task"].as_str().unwrap();
        let inputs_path = d.join("inputs.safetensors");
        let inputs = read_all(&inputs_path);
        let expected = read_all(&d.join("outputs.safetensors"));
        let model = d.join("model");
        let out = work.path().join(format!("{case}.safetensors"));
        let task_flag = match task {
            "CAUSAL_LM" => "causal-lm",
            "SEQ_CLS" => "sequence-classification",
            "TOKEN_CLS" => "token-classification",
            "QUESTION_ANS" => "question-answering",
            "FEATURE_EXTRACTION" => "feature-extraction",
            _ => "seq2seq-lm",
        };
        ok(&peft(
            &[
                "run",
                "--model",
                s(&model),
                "--task",
                task_flag,
                "--input",
                s(&inputs_path),
                "--output",
                s(&out),
            ],
            &[],
        ));
        compare(&logits(&out), &expected["base"], &inputs, task, &format!("peft run {case}"));
        for a in meta["adapters"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()) {
            let adapter = d.join("adapters").join(a);
            for (merge, state) in [(false, "unmerged"), (true, "merged")] {
                let Some(want) = expected.get(&format!("{a}/{state}")) else {
                    continue; // replicated layers cannot be merged
                };
                let mut args = vec![
                    "run",
                    "--model",
                    s(&model),
                    "--adapter",
                    s(&adapter),
                    "--input",
                    s(&inputs_path),
                    "--output",
                    s(&out),
                ];
                if merge {
                    args.push("--merge");
                }
                ok(&peft(&args, &[]));
                compare(
                    &logits(&out),
                    want,
                    &inputs,
                    task,
                    &format!("peft run {case} --adapter {a} ({state})"),
                );
            }
            oracle::record("cli peft run", &format!("{case}/{a}"));
        }
    }
}

#[test]
fn row_adapters_give_each_row_its_own_adapter() {
    let d = fixtures().join("cases").join("llama_causal");
    let expected = read_all(&d.join("outputs.safetensors"));
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("out.safetensors");
    let qv = format!("{}=qv", s(&d.join("adapters").join("qv")));
    let all = format!("{}=all", s(&d.join("adapters").join("all")));
    let input = d.join("inputs.safetensors");
    ok(&peft(
        &[
            "run",
            "--model",
            s(&d.join("model")),
            "--adapter",
            &qv,
            "--adapter",
            &all,
            "--row-adapters",
            "all,__base__",
            "--input",
            s(&input),
            "--output",
            s(&out),
        ],
        &[],
    ));
    let got = logits(&out);
    let mask = read_all(&input)["attention_mask"].shallow_clone();
    assert_close(
        &mask_padding(&got.narrow(0, 0, 1), &mask.narrow(0, 0, 1)),
        &mask_padding(&expected["all/unmerged"].narrow(0, 0, 1), &mask.narrow(0, 0, 1)),
        1e-4,
        "row 0 uses `all`",
    );
    assert_close(
        &mask_padding(&got.narrow(0, 1, 1), &mask.narrow(0, 1, 1)),
        &mask_padding(&expected["base"].narrow(0, 1, 1), &mask.narrow(0, 1, 1)),
        1e-4,
        "row 1 uses no adapter",
    );
    let err = one_line_error(&peft(
        &[
            "run",
            "--model",
            s(&d.join("model")),
            "--adapter",
            &qv,
            "--row-adapters",
            "qv",
            "--input",
            s(&input),
            "--output",
            s(&out),
        ],
        &[],
    ));
    assert!(err.contains("batch of 2"), "{err}");
    oracle::record("cli peft run", "llama_causal/row-adapters");
}

#[test]
fn inspect_describes_an_adapter() {
    let d = fixtures().join("cases").join("bert_seqcls");
    let adapter = d.join("adapters").join("qv");
    let json: serde_json::Value = serde_json::from_str(&ok(&peft(
        &["inspect", s(&adapter), "--model", s(&d.join("model")), "--json"],
        &[],
    )))
    .unwrap();
    assert_eq!(json["peft_type"], "LORA");
    assert_eq!(json["task_type"], "SEQ_CLS");
    assert_eq!(json["r"], 4);
    // 2 layers × (query + value) × (A 4×32 + B 32×4) + classifier copy (3×32 + 3).
    assert_eq!(json["parameters"], 2 * 2 * (4 * 32 + 32 * 4) + 3 * 32 + 3);
    assert_eq!(json["dtypes"], serde_json::json!(["F32"]));
    let matched: Vec<String> = serde_json::from_value(json["targets_matched_on_base"].clone()).unwrap();
    assert!(matched.contains(&"bert.encoder.layer.1.attention.self.value".to_string()), "{matched:?}");
    assert_eq!(matched.len(), 4, "{matched:?}");
    // The head is trained in full (modules_to_save), not adapted.
    assert_eq!(json["modules_to_save"], serde_json::json!(["classifier", "score"]));
    let text = ok(&peft(&["inspect", s(&adapter)], &[]));
    assert!(text.contains("method         LORA") && text.contains("rank / alpha   4 / 8"), "{text}");
}

#[test]
fn generate_matches_transformers_greedy_decoding() {
    let root = fixtures();
    let toks = read_all(&root.join("generation").join("llama").join("tokens.safetensors"));
    let d = root.join("cases").join("llama_causal");
    let want: Vec<i64> = Vec::<i64>::try_from(&toks["gen_single"].select(0, 0)).unwrap()[4..].to_vec();
    let out = ok(&peft(
        &[
            "generate",
            "--model",
            s(&d.join("model")),
            "--prompt",
            "t5 t9 t33 t70",
            "--max-new-tokens",
            "8",
            "--ids",
        ],
        &[],
    ));
    let got: Vec<i64> = out.split_whitespace().map(|t| t.parse().unwrap()).collect();
    assert_eq!(got, want);
    let text = ok(&peft(
        &["generate", "--model", s(&d.join("model")), "--prompt", "t5 t9 t33 t70", "--max-new-tokens", "8"],
        &[],
    ));
    let words: Vec<String> = want.iter().map(|i| format!("t{i}")).collect();
    assert_eq!(text.trim(), words.join(" "));
    // With an adapter, and sampling is reproducible under a seed.
    let adapter = d.join("adapters").join("qv");
    let want: Vec<i64> = Vec::<i64>::try_from(&toks["gen_adapter"].select(0, 0)).unwrap()[4..].to_vec();
    let out = ok(&peft(
        &[
            "generate",
            "--model",
            s(&d.join("model")),
            "--adapter",
            s(&adapter),
            "--prompt",
            "t5 t9 t33 t70",
            "--max-new-tokens",
            "8",
            "--ids",
        ],
        &[],
    ));
    assert_eq!(out.split_whitespace().map(|t| t.parse::<i64>().unwrap()).collect::<Vec<_>>(), want);
    let sample = |seed: &str| {
        ok(&peft(
            &[
                "generate",
                "--model",
                s(&d.join("model")),
                "--prompt",
                "t5",
                "--do-sample",
                "--top-k",
                "20",
                "--top-p",
                "0.9",
                "--temperature",
                "1.5",
                "--seed",
                seed,
                "--max-new-tokens",
                "12",
                "--ids",
            ],
            &[],
        ))
    };
    assert_eq!(sample("7"), sample("7"));
    oracle::record("cli peft generate", "llama_causal");
}

/// A real GGUF checkpoint end to end: `peft generate` reads SmolLM2-135M-Instruct's Q4_1 file, its
/// tokenizer and config from the metadata, and continues greedily as transformers does.
#[test]
fn generate_runs_a_real_gguf_checkpoint() {
    let dir = oracle::fixtures("gen_gguf.py");
    let m = read_json(&dir.join("manifest.json"));
    let path = PathBuf::from(m["smollm2"]["path"].as_str().unwrap());
    let want: Vec<i64> =
        m["smollm2"]["greedy"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect();
    let args =
        ["generate", "--model", s(&path), "--prompt", "The capital of France is", "--max-new-tokens", "8"];
    let ids = ok(&peft(&[&args[..], &["--ids"]].concat(), &[]));
    assert_eq!(ids.split_whitespace().map(|t| t.parse::<i64>().unwrap()).collect::<Vec<_>>(), want);
    let text = ok(&peft(&args, &[]));
    assert!(text.trim_start().starts_with("Paris."), "{text:?}");
    oracle::record("cli peft generate", "smollm2 gguf");
}

#[test]
fn hub_model_ids_resolve_offline_through_the_hf_cache() {
    let d = fixtures().join("cases").join("gpt2_causal");
    let cache = tempfile::tempdir().unwrap();
    let repo = cache.path().join("models--tiny-org--gpt2-tiny");
    let snap = repo.join("snapshots").join("0123abcd");
    std::fs::create_dir_all(&snap).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs").join("main"), "0123abcd").unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(d.join("model").join(f), snap.join(f)).unwrap();
    }
    let out = cache.path().join("out.safetensors");
    let input = d.join("inputs.safetensors");
    let env = [("HF_HUB_CACHE", cache.path()), ("HF_HUB_OFFLINE", Path::new("1"))];
    ok(&peft(&["run", "--model", "tiny-org/gpt2-tiny", "--input", s(&input), "--output", s(&out)], &env));
    let inputs = read_all(&input);
    compare(
        &logits(&out),
        &read_all(&d.join("outputs.safetensors"))["base"],
        &inputs,
        "CAUSAL_LM",
        "hub id from the cache",
    );
    let err = one_line_error(&peft(
        &["run", "--model", "tiny-org/not-cached", "--input", s(&input), "--output", s(&out)],
        &env,
    ));
    assert!(err.contains("HF_HUB_OFFLINE") && err.contains("not-cached"), "{err}");
}

#[test]
fn bad_input_gives_one_clear_line() {
    let d = fixtures().join("cases").join("llama_causal");
    let work = tempfile::tempdir().unwrap();
    let model = d.join("model");
    let out = work.path().join("out.safetensors");
    let run =
        |input: &Path| peft(&["run", "--model", s(&model), "--input", s(input), "--output", s(&out)], &[]);

    let err = one_line_error(&run(&work.path().join("missing.safetensors")));
    assert!(err.contains("missing.safetensors"), "{err}");

    let wrong_name = work.path().join("wrong_name.safetensors");
    peft_core::io::write_safetensors(
        &wrong_name,
        &[("ids".into(), Tensor::from_slice(&[1i64, 2]).view([1, 2]))],
    )
    .unwrap();
    let err = one_line_error(&run(&wrong_name));
    assert!(err.contains("no tensor `input_ids`") && err.contains("\"ids\""), "{err}");

    let wrong_dtype = work.path().join("wrong_dtype.safetensors");
    peft_core::io::write_safetensors(
        &wrong_dtype,
        &[("input_ids".into(), Tensor::from_slice(&[1.0f32, 2.0]).view([1, 2]))],
    )
    .unwrap();
    let err = one_line_error(&run(&wrong_dtype));
    assert!(err.contains("int64") && err.contains("Float"), "{err}");

    let odd = work.path().join("odd");
    std::fs::create_dir_all(&odd).unwrap();
    let cfg = std::fs::read_to_string(model.join("config.json")).unwrap().replace("\"llama\"", "\"falcon\"");
    std::fs::write(odd.join("config.json"), cfg).unwrap();
    std::fs::copy(model.join("model.safetensors"), odd.join("model.safetensors")).unwrap();
    let err = one_line_error(&peft(
        &["run", "--model", s(&odd), "--input", s(&d.join("inputs.safetensors")), "--output", s(&out)],
        &[],
    ));
    assert!(
        err.contains("unsupported model_type \\\"falcon\\\"")
            || err.contains("unsupported model_type \"falcon\""),
        "{err}"
    );
    assert!(err.contains("llama") && err.contains("t5"), "lists the supported types: {err}");

    let err = one_line_error(&peft(
        &[
            "run",
            "--model",
            s(&model),
            "--adapter",
            s(work.path()),
            "--input",
            s(&d.join("inputs.safetensors")),
            "--output",
            s(&out),
        ],
        &[],
    ));
    assert!(err.contains("adapter_config.json"), "{err}");
}

/// The README's `cargo run -q -p peft-cli -- …` lines run as written (with this binary).
#[test]
fn readme_examples_run() {
    let _ = fixtures();
    let root = oracle::workspace_root();
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let prefix = "cargo run -q -p peft-cli -- ";
    let mut ran = 0;
    for line in readme.lines().filter_map(|l| l.trim().strip_prefix(prefix)) {
        let args = split_args(line);
        if args.iter().any(|a| a.contains("HuggingFaceTB")) {
            continue; // needs the network
        }
        let out = Command::new(env!("CARGO_BIN_EXE_peft")).current_dir(&root).args(&args).output().unwrap();
        assert!(
            out.status.success(),
            "README example `{line}` failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        ran += 1;
    }
    assert!(ran >= 3, "the README lost its CLI examples");
}

fn split_args(line: &str) -> Vec<String> {
    let mut args = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in line.chars() {
        match c {
            '"' => quoted = !quoted,
            ' ' if !quoted => {
                if !cur.is_empty() {
                    args.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        args.push(cur);
    }
    args
}

#[test]
fn peft_train_matches_python_and_its_adapter_loads_in_peft() {
    let d = oracle::fixtures("gen_train.py").join("trainer");
    let c = read_json(&d.join("case.json"));
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("adapter");
    let model = d.join("model");
    let f = |k: &str| c[k].to_string();
    let stdout = ok(&peft(
        &[
            "train",
            "--model",
            s(&model),
            "--data",
            s(&d.join("train.jsonl")),
            "--format",
            "text",
            "--r",
            "4",
            "--lora-alpha",
            "8",
            "--lora-dropout",
            "0.1",
            "--target-modules",
            "q_proj,v_proj",
            "--max-steps",
            &f("steps"),
            "--lr",
            &f("lr"),
            "--batch-size",
            &f("batch"),
            "--grad-accum",
            &f("accum"),
            "--warmup-steps",
            &f("warmup"),
            "--weight-decay",
            &f("weight_decay"),
            "--max-grad-norm",
            &f("clip"),
            "--seed",
            &f("seed"),
            "--no-shuffle",
            "--logging-steps",
            "1",
            "--quiet",
            "--output",
            s(&out),
        ],
        &[],
    ));
    assert!(stdout.contains("trainable params:"), "{stdout}");
    for file in [
        "adapter_config.json",
        "adapter_model.safetensors",
        "training_args.json",
        "metrics.jsonl",
        "loss.png",
    ] {
        assert!(out.join(file).is_file(), "{file}");
    }
    // The same steps in Python give the same adapter.
    let ours = read_all(&out.join("adapter_model.safetensors"));
    let theirs = read_all(&d.join("final").join("adapter_model.safetensors"));
    assert_eq!(ours.keys().collect::<Vec<_>>(), theirs.keys().collect::<Vec<_>>());
    for (k, v) in &ours {
        assert_close(v, &theirs[k], 2e-5, &format!("peft train: {k}"));
    }
    // PEFT loads what peft train wrote and computes the same logits as peft run.
    let input = work.path().join("input.safetensors");
    let ids = Tensor::from_slice(&[5i64, 17, 33, 2, 9, 0, 44, 45, 46, 47, 48, 49]).view([2, 6]);
    let mask = Tensor::from_slice(&[1i64, 1, 1, 1, 1, 0, 1, 1, 1, 1, 1, 1]).view([2, 6]);
    peft_core::io::write_safetensors(
        &input,
        &[("input_ids".into(), ids), ("attention_mask".into(), mask.shallow_clone())],
    )
    .unwrap();
    let ours_out = work.path().join("ours.safetensors");
    ok(&peft(
        &["run", "--model", s(&model), "--adapter", s(&out), "--input", s(&input), "--output", s(&ours_out)],
        &[],
    ));
    let theirs_out = work.path().join("theirs.safetensors");
    oracle::run_script("check_adapter.py", &[&model, &out, &input, &theirs_out, Path::new("causal-lm")]);
    assert_close(
        &mask_padding(&logits(&ours_out), &mask),
        &mask_padding(&logits(&theirs_out), &mask),
        1e-5,
        "PEFT loads peft train's adapter",
    );
    oracle::record("rs->peft", "peft train adapter (tiny llama)");
}

#[test]
fn run_loads_a_4bit_base_like_transformers_and_peft() {
    // A Llama quantized by `--load-in-4bit` (NF4, double quantization) and the same model saved 4-bit by
    // transformers, each with an adapter PEFT trained on transformers' 4-bit model.
    let d = oracle::fixtures("gen_quant.py").join("llama");
    let work = tempfile::tempdir().unwrap();
    let io = read_all(&d.join("io.safetensors"));
    let input = work.path().join("input.safetensors");
    Tensor::write_safetensors(&[("input_ids", &io["input_ids"])], &input).unwrap();
    for (model, flags) in [("dense", vec!["--load-in-4bit"]), ("4bit", vec![])] {
        let out = work.path().join(format!("{model}.safetensors"));
        let (model_dir, adapter) = (d.join(model), d.join("adapter"));
        let mut args = vec!["run", "--model", s(&model_dir), "--adapter", s(&adapter)];
        args.extend(["--input", s(&input), "--output", s(&out)]);
        args.extend(flags);
        ok(&peft(&args, &[]));
        assert_close(
            &logits(&out),
            &io["logits"],
            1e-4,
            &format!("peft run on the {model} checkpoint in 4 bits"),
        );
        oracle::record("cli peft run", &format!("llama 4-bit ({model})"));
    }
}

#[test]
fn peft_train_with_a_4bit_base_lowers_the_loss_and_writes_a_loadable_adapter() {
    let d = oracle::fixtures("gen_train.py").join("trainer");
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("qlora");
    let model = d.join("model");
    let data = d.join("train.jsonl");
    let args = [
        "train",
        "--model",
        s(&model),
        "--data",
        s(&data),
        "--format",
        "text",
        "--load-in-4bit",
        "--target-modules",
        "q_proj,v_proj,down_proj",
        "--max-steps",
        "12",
        "--lr",
        "2e-2",
        "--batch-size",
        "4",
        "--seed",
        "3",
        "--no-shuffle",
        "--logging-steps",
        "1",
        "--quiet",
        "--output",
        s(&out),
    ];
    ok(&peft(&args, &[]));
    let losses: Vec<f64> = std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["loss"].as_f64())
        .collect();
    assert!(losses.len() >= 2 && losses.iter().all(|l| l.is_finite()), "{losses:?}");
    let (first, last) = (losses[0], losses[losses.len() - 1]);
    assert!(last < first, "QLoRA training through `peft train` lowers the loss: {losses:?}");
    // The adapter runs on the 4-bit base through `peft run`.
    let input = work.path().join("input.safetensors");
    let ids = Tensor::from_slice(&[5i64, 17, 33, 2, 9, 4]).view([1, 6]);
    peft_core::io::write_safetensors(&input, &[("input_ids".into(), ids)]).unwrap();
    let logits_path = work.path().join("logits.safetensors");
    let run = [
        "run",
        "--model",
        s(&model),
        "--adapter",
        s(&out),
        "--load-in-4bit",
        "--input",
        s(&input),
        "--output",
        s(&logits_path),
    ];
    ok(&peft(&run, &[]));
    let l = logits(&logits_path);
    assert_eq!(l.size()[..2], [1, 6]);
    assert!(l.isfinite().all().int64_value(&[]) == 1);
}

/// `peft train` on a GGUF file: chat records rendered with the template from the file's metadata,
/// tokenized with its tokenizer, a LoRA adapter trained on the dequantized model and saved; `peft run`
/// then loads the GGUF model with that adapter.
#[test]
fn train_and_run_take_a_real_gguf_checkpoint() {
    let dir = oracle::fixtures("gen_gguf.py");
    let m = read_json(&dir.join("manifest.json"));
    let model = PathBuf::from(m["smollm2"]["path"].as_str().unwrap());
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("chat.jsonl");
    let record = |q: &str, a: &str| {
        serde_json::json!({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]})
            .to_string()
    };
    std::fs::write(&data, [record("2+2?", "4"), record("Capital of France?", "Paris")].join("\n")).unwrap();
    let out = work.path().join("adapter");
    let log = ok(&peft(
        &[
            "train",
            "--model",
            s(&model),
            "--data",
            s(&data),
            "--format",
            "chat",
            "--target-modules",
            "q_proj",
            "--r",
            "2",
            "--max-steps",
            "2",
            "--batch-size",
            "2",
            "--output",
            s(&out),
        ],
        &[],
    ));
    assert!(log.contains("adapter saved to"), "{log}");
    let config = read_json(&out.join("adapter_config.json"));
    assert_eq!(config["base_model_name_or_path"], s(&model));
    let inputs = dir.join("smollm2").join("outputs.safetensors");
    let logits_out = work.path().join("logits.safetensors");
    ok(&peft(
        &[
            "run",
            "--model",
            s(&model),
            "--adapter",
            s(&out),
            "--input",
            s(&inputs),
            "--output",
            s(&logits_out),
        ],
        &[],
    ));
    let io = read_all(&inputs);
    let mask = &io["attention_mask"];
    let trained = mask_padding(&logits(&logits_out), mask);
    // Without the adapter `peft run` gives transformers' logits of the GGUF model; the trained adapter
    // moves them.
    let base_out = work.path().join("base.safetensors");
    ok(&peft(&["run", "--model", s(&model), "--input", s(&inputs), "--output", s(&base_out)], &[]));
    let base = mask_padding(&logits(&base_out), mask);
    assert_close(&base, &mask_padding(&io["base"], mask), 2e-3, "peft run on the GGUF model");
    let moved = (&trained - &base).abs().max().double_value(&[]);
    assert!(moved > 1e-4 && moved.is_finite(), "the trained adapter moves the logits by {moved}");
    oracle::record("cli peft train", "smollm2 gguf");
}
