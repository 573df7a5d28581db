//! The bad-input suite: corrupt and unusual inputs, configs, adapter files, special files and CLI misuse
//! against `peft run`, `inspect` and `generate` on several architectures. Every case must end with a
//! one-line `error: …` naming what is wrong (exit status 1, after any `warning: …` lines) or a defined
//! success — never a panic, a C++ backtrace, a hang or a crash.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use peft_parity::oracle;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tch::Tensor;

/// What a case must end with.
enum Want {
    /// Exit status 1 and one `error:` line containing each of these.
    Error(Vec<String>),
    /// Exit status 0.
    Success,
}

fn error(parts: &[&str]) -> Want {
    Want::Error(parts.iter().map(|s| s.to_string()).collect())
}

struct Case {
    name: String,
    args: Vec<String>,
    want: Want,
}

/// Runs `peft` with a deadline; `None` when it had to be killed (a hang).
fn run_peft(args: &[String]) -> Option<(i32, String)> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_peft"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
            // A signal (a crash) has no code.
            return Some((status.code().unwrap_or(-1), err));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The verdict on one case: `None` when it behaved.
fn judge(case: &Case) -> Option<String> {
    let Some((code, err)) = run_peft(&case.args) else {
        return Some(format!("{}: hung (killed after 60 s)", case.name));
    };
    let err = err.trim();
    match &case.want {
        Want::Success if code == 0 => None,
        Want::Success => Some(format!("{}: expected success, got exit {code}: {err}", case.name)),
        Want::Error(parts) => {
            // Warnings may come first, each on its own line; the error is one last line.
            let (warnings, last) = err.rsplit_once('\n').unwrap_or(("", err));
            let only_warnings = warnings.lines().all(|l| l.starts_with("warning: "));
            if code != 1 || !last.starts_with("error: ") || !only_warnings {
                return Some(format!("{}: not a one-line error (exit {code}): {err:?}", case.name));
            }
            let err = last;
            let missing: Vec<&String> = parts.iter().filter(|p| !err.contains(p.as_str())).collect();
            (!missing.is_empty()).then(|| format!("{}: error {err:?} does not name {missing:?}", case.name))
        }
    }
}

fn models() -> PathBuf {
    oracle::fixtures("gen_models.py").join("cases")
}

fn s(p: &Path) -> String {
    p.to_str().unwrap().to_string()
}

fn ids(values: &[i64], rows: i64) -> Tensor {
    Tensor::from_slice(values).view([rows, -1])
}

fn write_inputs(path: &Path, tensors: Vec<(&str, Tensor)>) -> PathBuf {
    let named: Vec<(String, Tensor)> = tensors.into_iter().map(|(k, t)| (k.to_string(), t)).collect();
    peft_core::io::write_safetensors(path, &named).unwrap();
    path.to_path_buf()
}

/// A copy of a fixture model with `config.json` edited.
fn model_with(work: &Path, case: &str, key: &str, value: Value) -> PathBuf {
    let src = models().join(case).join("model");
    let dir = work.join(format!("model-{case}-{key}-{}", value.to_string().replace(['"', '.', '-'], "_")));
    std::fs::create_dir_all(&dir).unwrap();
    let mut config: Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    config[key] = value;
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    std::fs::copy(src.join("model.safetensors"), dir.join("model.safetensors")).unwrap();
    dir
}

/// A copy of a fixture adapter with its config edited by `edit` (or its weights replaced by `weights`).
fn adapter_with(
    work: &Path,
    name: &str,
    src: &Path,
    edit: impl FnOnce(&mut Value),
    weights: Option<&[u8]>,
) -> PathBuf {
    let dir = work.join(format!("adapter-{name}"));
    std::fs::create_dir_all(&dir).unwrap();
    let mut config: Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("adapter_config.json")).unwrap()).unwrap();
    edit(&mut config);
    std::fs::write(dir.join("adapter_config.json"), config.to_string()).unwrap();
    match weights {
        Some(bytes) => std::fs::write(dir.join("adapter_model.safetensors"), bytes).unwrap(),
        None => {
            std::fs::copy(src.join("adapter_model.safetensors"), dir.join("adapter_model.safetensors"))
                .unwrap();
        }
    }
    dir
}

/// Copies of an adapter's weights with the first value of one tensor made `+inf`: every tensor of each kind
/// (its key with layer numbers taken out), as `(key, file bytes)`.
fn with_one_inf(weights: &Path) -> Vec<(String, Vec<u8>)> {
    with_one_value(weights, f64::INFINITY)
}

/// As [`with_one_inf`] with any value.
fn with_one_value(weights: &Path, value: f64) -> Vec<(String, Vec<u8>)> {
    let tensors = peft_core::io::read_safetensors(weights).unwrap();
    let mut kinds = std::collections::BTreeSet::new();
    let mut files = Vec::new();
    for (i, t) in tensors.iter().enumerate() {
        let kind: String = t.key.chars().filter(|c| !c.is_ascii_digit()).collect();
        if !kinds.insert(kind) {
            continue;
        }
        let named: Vec<(String, Tensor)> = tensors
            .iter()
            .enumerate()
            .map(|(j, u)| {
                let copy = u.tensor.copy();
                if i == j {
                    let _ = copy.view(-1).get(0).fill_(value);
                }
                (u.key.clone(), copy)
            })
            .collect();
        let tmp = tempfile::NamedTempFile::new().unwrap();
        peft_core::io::write_safetensors(tmp.path(), &named).unwrap();
        files.push((t.key.clone(), std::fs::read(tmp.path()).unwrap()));
    }
    files
}

fn mkfifo(path: &Path) {
    assert!(Command::new("mkfifo").arg(path).status().unwrap().success());
}

fn run_args(model: &Path, input: &Path, out: &Path, extra: &[&str]) -> Vec<String> {
    let mut v =
        vec!["run".into(), "--model".into(), s(model), "--input".into(), s(input), "--output".into(), s(out)];
    v.extend(extra.iter().map(|e| e.to_string()));
    v
}

/// Corrupt safetensors files: what a truncated download, a wrong file or a hostile header looks like.
fn corrupt_files(work: &Path) -> Vec<(String, PathBuf)> {
    let good = std::fs::read(models().join("llama_causal").join("inputs.safetensors")).unwrap();
    let header_len = u64::from_le_bytes(good[..8].try_into().unwrap()) as usize;
    let mut files = vec![
        ("empty file".to_string(), Vec::new()),
        ("seven bytes".into(), vec![1u8; 7]),
        ("truncated data".into(), good[..good.len() - 5].to_vec()),
        ("truncated header".into(), good[..8 + header_len / 2].to_vec()),
        ("header length 2^63".into(), [(1u64 << 63).to_le_bytes().to_vec(), good[8..].to_vec()].concat()),
        ("header not JSON".into(), [(4u64).to_le_bytes().to_vec(), b"nope".to_vec()].concat()),
    ];
    let header = String::from_utf8(good[8..8 + header_len].to_vec()).unwrap();
    for (what, from, to) in [
        ("unknown dtype", "\"I64\"", "\"Q7\""),
        ("offsets past the end", "\"data_offsets\":[0,", "\"data_offsets\":[900000,"),
        ("shape not matching the bytes", "\"shape\":[2,7]", "\"shape\":[2,9]"),
        ("negative shape", "\"shape\":[2,7]", "\"shape\":[-2,7]"),
    ] {
        let edited = header.replacen(from, to, 1);
        if edited != header {
            let mut bytes = (edited.len() as u64).to_le_bytes().to_vec();
            bytes.extend(edited.as_bytes());
            bytes.extend(&good[8 + header_len..]);
            files.push((what.to_string(), bytes));
        }
    }
    files
        .into_iter()
        .enumerate()
        .map(|(i, (what, bytes))| {
            let path = work.join(format!("corrupt-{i}.safetensors"));
            std::fs::write(&path, bytes).unwrap();
            (what, path)
        })
        .collect()
}

fn cases(work: &Path) -> Vec<Case> {
    let m = models();
    let out = work.join("out.safetensors");
    let mut v = Vec::new();
    let mut add = |name: String, args: Vec<String>, want: Want| v.push(Case { name, args, want });

    // Out-of-range and malformed inputs, on every architecture (vocabulary 128, 64 positions).
    for arch in ["llama_causal", "qwen2_causal", "gpt2_causal", "bert_seqcls", "t5_seq2seq"] {
        let model = m.join(arch).join("model");
        let t5 = arch.starts_with("t5");
        // T5 needs decoder ids with the batch of the encoder ids.
        let with_dec = |mut t: Vec<(&'static str, Tensor)>| {
            if t5 {
                let rows = t[0].1.size()[0];
                t.push(("decoder_input_ids", Tensor::zeros([rows, 3], (tch::Kind::Int64, tch::Device::Cpu))));
            }
            t
        };
        for bad in [128i64, 1_000_000_000, -1, i64::MIN] {
            let input = write_inputs(
                &work.join(format!("{arch}-id{bad}.st")),
                with_dec(vec![("input_ids", ids(&[1, 2, bad, 3], 2))]),
            );
            add(
                format!("{arch}: token id {bad}"),
                run_args(&model, &input, &out, &[]),
                error(&["input_ids", &bad.to_string()]),
            );
        }
        let long = write_inputs(
            &work.join(format!("{arch}-long.st")),
            with_dec(vec![("input_ids", Tensor::ones([1, 65], (tch::Kind::Int64, tch::Device::Cpu)))]),
        );
        let long_want = if matches!(arch, "gpt2_causal" | "bert_seqcls") {
            error(&["65 positions", "64"])
        } else {
            Want::Success
        };
        add(format!("{arch}: 65 tokens"), run_args(&model, &long, &out, &[]), long_want);
        let empty = write_inputs(
            &work.join(format!("{arch}-empty.st")),
            with_dec(vec![("input_ids", Tensor::zeros([2, 0], (tch::Kind::Int64, tch::Device::Cpu)))]),
        );
        add(
            format!("{arch}: [2, 0] input"),
            run_args(&model, &empty, &out, &[]),
            error(&["input_ids", "empty"]),
        );
        let rows0 = write_inputs(
            &work.join(format!("{arch}-rows0.st")),
            vec![("input_ids", Tensor::zeros([0, 3], (tch::Kind::Int64, tch::Device::Cpu)))],
        );
        add(format!("{arch}: [0, 3] input"), run_args(&model, &rows0, &out, &[]), error(&["input_ids"]));
        let flat = write_inputs(
            &work.join(format!("{arch}-1d.st")),
            vec![("input_ids", Tensor::from_slice(&[1i64, 2, 3]))],
        );
        add(format!("{arch}: 1-d input"), run_args(&model, &flat, &out, &[]), error(&["input_ids"]));
        let mask = write_inputs(
            &work.join(format!("{arch}-mask.st")),
            with_dec(vec![("input_ids", ids(&[1, 2, 3, 4], 2)), ("attention_mask", ids(&[1, 1, 1], 1))]),
        );
        add(
            format!("{arch}: mask of another shape"),
            run_args(&model, &mask, &out, &[]),
            error(&["attention_mask"]),
        );
    }
    let bert = m.join("bert_seqcls").join("model");
    for (what, tt) in [
        ("segment 2", ids(&[0, 1, 2, 0], 2)),
        ("segment -1", ids(&[0, -1, 0, 0], 2)),
        ("segments of another shape", ids(&[0, 1], 1)),
    ] {
        let input = write_inputs(
            &work.join(format!("bert-tt-{}.st", what.replace(' ', "_"))),
            vec![("input_ids", ids(&[1, 2, 3, 4], 2)), ("token_type_ids", tt)],
        );
        add(format!("bert: {what}"), run_args(&bert, &input, &out, &[]), error(&["token_type_ids"]));
    }
    let t5 = m.join("t5_seq2seq").join("model");
    for (what, dec) in [
        ("decoder batch 3", ids(&[0, 1, 2], 3)),
        ("decoder id 128", ids(&[0, 128], 2)),
        ("decoder id -5", ids(&[0, -5], 2)),
    ] {
        let input = write_inputs(
            &work.join(format!("t5-{}.st", what.replace(' ', "_"))),
            vec![("input_ids", ids(&[1, 2, 3, 4], 2)), ("decoder_input_ids", dec)],
        );
        add(format!("t5: {what}"), run_args(&t5, &input, &out, &[]), error(&["decoder_input_ids"]));
    }

    // Model configs with impossible sizes: refused when the config is read, naming the file and key.
    let good_input = m.join("llama_causal").join("inputs.safetensors");
    for (arch, key, value) in [
        ("llama_causal", "num_attention_heads", Value::from(0)),
        ("llama_causal", "num_attention_heads", Value::from(-1)),
        ("llama_causal", "num_attention_heads", Value::from(1_000_000_000_000i64)),
        ("llama_causal", "num_attention_heads", serde_json::json!(1e12)),
        ("llama_causal", "num_key_value_heads", Value::from(3)),
        ("llama_causal", "num_hidden_layers", Value::from(-1)),
        ("llama_causal", "vocab_size", Value::from(0)),
        ("llama_causal", "hidden_size", Value::from("32")),
        ("gpt2_causal", "n_head", Value::from(5)),
        ("gpt2_causal", "n_positions", Value::from(1.5)),
        ("bert_seqcls", "max_position_embeddings", Value::from("64")),
        ("bert_seqcls", "type_vocab_size", Value::from(0)),
        ("t5_seq2seq", "relative_attention_num_buckets", Value::from(-1)),
        ("t5_seq2seq", "relative_attention_max_distance", Value::from(-1)),
        ("t5_seq2seq", "relative_attention_num_buckets", Value::from(1)),
    ] {
        let model = model_with(work, arch, key, value.clone());
        add(
            format!("{arch}: config {key} = {value}"),
            run_args(&model, &good_input, &out, &[]),
            error(&["config.json", key]),
        );
    }

    // A config within every size limit whose weights do not fit in memory (256 GiB of MLP weights):
    // the allocation failure names the tensor and its size.
    let huge = model_with(work, "llama_causal", "intermediate_size", Value::from(1 << 24));
    let huge_config = huge.join("config.json");
    let mut config: Value = serde_json::from_str(&std::fs::read_to_string(&huge_config).unwrap()).unwrap();
    config["hidden_size"] = Value::from(4096);
    std::fs::write(&huge_config, config.to_string()).unwrap();
    add(
        "llama_causal: weights larger than memory".into(),
        run_args(&huge, &good_input, &out, &[]),
        error(&["cannot allocate `model.layers.0.mlp.gate_proj.weight`", "[16777216, 4096]", "256.0 GiB"]),
    );

    // Corrupt input files.
    let llama = m.join("llama_causal").join("model");
    for (what, path) in corrupt_files(work) {
        add(format!("input: {what}"), run_args(&llama, &path, &out, &[]), error(&[&s(&path)]));
    }

    // Special files: refused at once, never blocking.
    let fifo_input = work.join("input.fifo");
    mkfifo(&fifo_input);
    add(
        "input: a FIFO".into(),
        run_args(&llama, &fifo_input, &out, &[]),
        error(&["input.fifo", "regular file"]),
    );
    add("input: a directory".into(), run_args(&llama, work, &out, &[]), error(&[&s(work)]));
    let src = m.join("llama_causal").join("adapters").join("qv");
    let fifo_adapter = work.join("fifo-adapter");
    std::fs::create_dir_all(&fifo_adapter).unwrap();
    mkfifo(&fifo_adapter.join("adapter_config.json"));
    for cmd in ["run", "inspect"] {
        let args = match cmd {
            "run" => run_args(&llama, &good_input, &out, &["--adapter", &s(&fifo_adapter)]),
            _ => vec!["inspect".into(), s(&fifo_adapter)],
        };
        add(
            format!("{cmd}: adapter_config.json is a FIFO"),
            args,
            error(&["adapter_config.json", "regular file"]),
        );
    }

    // Adapter files PEFT would not write.
    let bad_adapters: Vec<(&str, PathBuf, &str)> = vec![
        (
            "unknown peft_type",
            adapter_with(work, "type", &src, |c| c["peft_type"] = "NOT_A_METHOD".into(), None),
            "NOT_A_METHOD",
        ),
        ("negative rank", adapter_with(work, "rank", &src, |c| c["r"] = (-4).into(), None), "r"),
        ("rank as a string", adapter_with(work, "rank-str", &src, |c| c["r"] = "8".into(), None), "r"),
        (
            "targets matching nothing",
            adapter_with(
                work,
                "targets",
                &src,
                |c| c["target_modules"] = serde_json::json!(["no_such_module"]),
                None,
            ),
            "no_such_module",
        ),
        (
            "weights truncated",
            adapter_with(work, "trunc", &src, |_| {}, Some(&[0u8; 12])),
            "adapter_model.safetensors",
        ),
        (
            "weights of another model",
            adapter_with(
                work,
                "other",
                &src,
                |_| {},
                Some(&std::fs::read(m.join("llama_causal").join("inputs.safetensors")).unwrap()),
            ),
            "adapter_model.safetensors",
        ),
    ];
    for (what, dir, names) in bad_adapters {
        add(
            format!("adapter: {what}"),
            run_args(&llama, &good_input, &out, &["--adapter", &s(&dir)]),
            error(&[names]),
        );
    }
    let not_json = work.join("adapter-not-json");
    std::fs::create_dir_all(&not_json).unwrap();
    std::fs::write(not_json.join("adapter_config.json"), "{\"peft_type\": ").unwrap();
    add(
        "adapter: config not JSON".into(),
        run_args(&llama, &good_input, &out, &["--adapter", &s(&not_json)]),
        error(&["adapter_config.json"]),
    );

    // A broken adapter (one value made +inf) under `--merge`: the safe merge refuses it, whichever tensor of
    // whichever method and layer type holds it (LoRA on linear layers, embeddings and GPT-2's Conv1D,
    // IA³, FourierFT, VeRA's shared projections, trainable tokens, modules_to_save heads).
    for (arch, adapter) in [
        ("bert_seqcls", "dense"),
        ("bert_seqcls", "ia3"),
        ("bert_seqcls", "qv"),
        ("llama_causal", "all"),
        ("llama_causal", "fourierft"),
        ("llama_causal", "ia3"),
        ("llama_causal", "vera"),
        ("gpt2_causal", "attn"),
        ("gpt2_causal", "tokens"),
        ("llama3_rope_tied", "emb"),
        ("llama3_rope_tied", "tt"),
        ("t5_seq2seq", "ff"),
    ] {
        let case = m.join(arch);
        let src = case.join("adapters").join(adapter);
        for (key, bytes) in with_one_inf(&src.join("adapter_model.safetensors")) {
            let dir = adapter_with(work, &format!("inf-{arch}-{adapter}-{key}"), &src, |_| {}, Some(&bytes));
            // A head tied to the embedding saves the embedding's rows again under its own key; both keys
            // load into one tensor in module order, so the head's (finite) copy is what stays, as in PEFT.
            let overwritten = adapter == "tt" && key.contains("embed_tokens");
            add(
                format!("--merge of {arch}/{adapter} with +inf in {key}"),
                run_args(
                    &case.join("model"),
                    &case.join("inputs.safetensors"),
                    &out,
                    &["--adapter", &s(&dir), "--merge"],
                ),
                if overwritten { Want::Success } else { error(&["infinite", "nothing was merged"]) },
            );
        }
    }

    // Generation: options checked before any work, the position table's end foreseen, NaN logits
    // refused when sampling.
    let gen = |model: &Path, extra: &[&str]| {
        let mut v: Vec<String> =
            vec!["generate".into(), "--model".into(), s(model), "--prompt".into(), "t5 t9 t33 t70".into()];
        v.extend(extra.iter().map(|e| e.to_string()));
        v
    };
    let llama_gen = m.join("llama_causal").join("model");
    for (extra, names) in [
        (&["--max-new-tokens", "0"][..], "max_new_tokens"),
        (&["--do-sample", "--temperature", "0"][..], "temperature"),
        (&["--do-sample", "--temperature", "nan"][..], "temperature"),
        (&["--do-sample", "--top-p", "0"][..], "top_p"),
        (&["--do-sample", "--top-k=-1"][..], "top_k"),
    ] {
        add(format!("generate {}", extra.join(" ")), gen(&llama_gen, extra), error(&[names]));
    }
    let long_prompt: Vec<String> = (0..60).map(|i| format!("t{}", i % 100)).collect();
    let mut long = gen(&m.join("gpt2_causal").join("model"), &["--max-new-tokens", "10"]);
    long[4] = long_prompt.join(" ");
    add("generate past GPT-2's 64 positions".into(), long, error(&["position embeddings"]));
    let qv = m.join("llama_causal").join("adapters").join("qv");
    let (_, nan_bytes) = with_one_value(&qv.join("adapter_model.safetensors"), f64::NAN).remove(0);
    let nan_adapter = adapter_with(work, "nan-sample", &qv, |_| {}, Some(&nan_bytes));
    add(
        "generate --do-sample with NaN logits".into(),
        gen(&llama_gen, &["--adapter", &s(&nan_adapter), "--do-sample", "--seed", "1"]),
        error(&["NaN"]),
    );

    // Training arguments: refused by name before any data or model is read.
    let data = work.join("train.jsonl");
    std::fs::write(&data, "{\"text\": \"hello\"}\n").unwrap();
    for (flag, value, names) in [
        ("--save-steps", "0", "--save-steps"),
        ("--eval-steps", "0", "--eval-steps"),
        ("--logging-steps", "0", "--logging-steps"),
        ("--max-length", "0", "--max-length"),
        ("--max-steps", "0", "--max-steps"),
        ("--epochs", "NaN", "--epochs"),
        ("--epochs", "-1", "--epochs"),
        ("--epochs", "inf", "--epochs"),
        ("--lr", "nan", "--lr"),
        ("--lr", "-1e-3", "--lr"),
        ("--batch-size", "0", "--batch-size"),
        ("--grad-accum", "0", "--grad-accum"),
        ("--weight-decay", "inf", "--weight-decay"),
        ("--max-grad-norm", "nan", "--max-grad-norm"),
        ("--lora-alpha", "nan", "--lora-alpha"),
        ("--lora-alpha", "inf", "--lora-alpha"),
        ("--lora-dropout", "1.5", "--lora-dropout"),
        ("--r", "0", "--r"),
    ] {
        let output = work.join(format!("train-out{flag}{value}"));
        add(
            format!("train {flag} {value}"),
            vec![
                "train".into(),
                "--model".into(),
                s(&llama),
                "--data".into(),
                s(&data),
                "--output".into(),
                s(&output),
                "--quiet".into(),
                format!("{flag}={value}"),
            ],
            error(&[names]),
        );
    }

    // CLI misuse.
    add(
        "train --assistant-only-loss without --format chat".into(),
        vec![
            "train".into(),
            "--model".into(),
            s(&llama),
            "--data".into(),
            s(&data),
            "--output".into(),
            s(&work.join("train-out-assistant-only")),
            "--quiet".into(),
            "--assistant-only-loss".into(),
        ],
        error(&["--assistant-only-loss", "--format chat"]),
    );
    add(
        "--device cuda:99".into(),
        run_args(&llama, &good_input, &out, &["--device", "cuda:99"]),
        error(&["cuda"]),
    );
    add("--device tpu".into(), run_args(&llama, &good_input, &out, &["--device", "tpu"]), error(&["tpu"]));
    add("--dtype f8".into(), run_args(&llama, &good_input, &out, &["--dtype", "f8"]), error(&["f8"]));
    add(
        "--output in a missing directory".into(),
        run_args(&llama, &good_input, &work.join("no/such/dir/out.st"), &[]),
        error(&["no/such/dir"]),
    );
    add(
        "a missing model".into(),
        run_args(&work.join("no-model"), &good_input, &out, &[]),
        error(&["no-model"]),
    );
    v
}

#[test]
fn every_bad_input_gives_one_clear_line() {
    let work = tempfile::tempdir().unwrap();
    let cases = cases(work.path());
    let failures: Vec<String> = cases.iter().filter_map(judge).collect();
    assert!(
        failures.is_empty(),
        "{} of {} cases misbehaved:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn a_closed_stdout_ends_quietly() {
    let adapter = models().join("llama_causal").join("adapters").join("qv");
    let mut child = Command::new(env!("CARGO_BIN_EXE_peft"))
        .args(["inspect", "--json", adapter.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // `| head -0`: the reader goes away before anything is written.
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && err.trim().is_empty(), "exit {:?}, stderr {err:?}", out.status);
}
