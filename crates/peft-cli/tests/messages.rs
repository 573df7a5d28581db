//! Where `peft`'s messages go: results on stdout, warnings and log lines on stderr (chosen by -q, -v and
//! RUST_LOG), a loud warning for a task head left random, and `inspect` never downloading a base model.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use peft_parity::oracle;
use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

fn cases() -> PathBuf {
    oracle::fixtures("gen_models.py").join("cases")
}

fn peft(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_peft"));
    cmd.args(args).env_remove("RUST_LOG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("the peft binary runs")
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn stderr(out: &Output) -> String {
    assert!(out.status.success(), "peft failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `peft [flags] run` on BERT loaded as a sequence classifier from its feature-extraction checkpoint
/// (which has no classifier), without an adapter.
fn run_headless(flags: &[&str], env: &[(&str, &str)]) -> Output {
    let case = cases().join("bert_features");
    let out = tempfile::NamedTempFile::new().unwrap();
    let (model, input) = (case.join("model"), case.join("inputs.safetensors"));
    let mut args: Vec<&str> = flags.to_vec();
    args.extend([
        "run",
        "--model",
        s(&model),
        "--task",
        "sequence-classification",
        "--input",
        s(&input),
        "--output",
        s(out.path()),
    ]);
    peft(&args, env)
}

#[test]
fn a_task_head_left_random_is_a_warning_on_stderr_unless_quiet() {
    let err = stderr(&run_headless(&[], &[]));
    assert!(
        err.starts_with("warning: ") && err.contains("`classifier.weight`") && err.contains("not meaningful"),
        "{err:?}"
    );
    assert_eq!(stderr(&run_headless(&["-q"], &[])), "");
    assert_eq!(stderr(&run_headless(&[], &[("RUST_LOG", "error")])), "");
    // -v adds info lines (the fresh initialisation as the model loads), RUST_LOG=debug too.
    for (flags, env) in [(&["-v"][..], &[][..]), (&[][..], &[("RUST_LOG", "debug")][..])] {
        let err = stderr(&run_headless(flags, env));
        assert!(
            err.lines().any(|l| l.starts_with("info: ") && l.contains("fresh initialisation")),
            "{err:?}"
        );
    }
    let bad = run_headless(&[], &[("RUST_LOG", "peft_core=loud")]);
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success() && err.starts_with("error: RUST_LOG") && err.contains("loud"), "{err:?}");
}

#[test]
fn an_adapter_saving_the_head_silences_the_random_head_warning_and_v_shows_the_load_report() {
    let case = cases().join("bert_seqcls");
    let out = tempfile::NamedTempFile::new().unwrap();
    // The sequence classifier's checkpoint without its head: the adapter's modules_to_save provides it.
    let work = tempfile::tempdir().unwrap();
    let model = work.path().join("model");
    std::fs::create_dir(&model).unwrap();
    std::fs::copy(case.join("model").join("config.json"), model.join("config.json")).unwrap();
    let weights: Vec<(String, tch::Tensor)> =
        peft_core::io::read_safetensors(&case.join("model").join("model.safetensors"))
            .unwrap()
            .into_iter()
            .filter(|t| !t.key.starts_with("classifier."))
            .map(|t| (t.key, t.tensor))
            .collect();
    peft_core::io::write_safetensors(&model.join("model.safetensors"), &weights).unwrap();
    let headless = stderr(&peft(
        &[
            "run",
            "--model",
            s(&model),
            "--input",
            s(&case.join("inputs.safetensors")),
            "--output",
            s(out.path()),
        ],
        &[],
    ));
    assert!(headless.contains("not meaningful"), "{headless:?}");
    let run = peft(
        &[
            "-v",
            "run",
            "--model",
            s(&model),
            "--adapter",
            s(&case.join("adapters").join("dense")),
            "--input",
            s(&case.join("inputs.safetensors")),
            "--output",
            s(out.path()),
        ],
        &[],
    );
    let err = stderr(&run);
    assert!(!err.contains("not meaningful"), "{err:?}");
    assert!(err.lines().any(|l| l.starts_with("info: loaded LORA adapter `default`")), "{err:?}");
}

#[test]
fn inspect_never_downloads_the_base_model_it_names() {
    // The adapter names a hub model that is not cached; a local server stands in for the hub and must
    // receive no connection.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let work = tempfile::tempdir().unwrap();
    let src = cases().join("llama_causal").join("adapters").join("qv");
    let adapter = work.path().join("adapter");
    std::fs::create_dir(&adapter).unwrap();
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("adapter_config.json")).unwrap()).unwrap();
    config["base_model_name_or_path"] = "some-org/a-very-large-model".into();
    std::fs::write(adapter.join("adapter_config.json"), config.to_string()).unwrap();
    std::fs::copy(src.join("adapter_model.safetensors"), adapter.join("adapter_model.safetensors")).unwrap();
    let cache = work.path().join("hub-cache");
    let env = [("HF_ENDPOINT", endpoint.as_str()), ("HF_HUB_CACHE", s(&cache))];
    let out = peft(&["inspect", "--json", s(&adapter)], &env);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["base_model_name_or_path"], "some-org/a-very-large-model");
    assert!(report["targets_matched_on_base"].is_null());
    std::thread::sleep(Duration::from_millis(50));
    match listener.accept() {
        Ok((mut stream, _)) => {
            let mut request = String::new();
            let _ = stream.read_to_string(&mut request);
            panic!("inspect contacted the hub: {request:?}");
        }
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock),
    }
    // With -v it says why the targets were not matched.
    let err = stderr(&peft(&["-v", "inspect", s(&adapter)], &env));
    assert!(err.contains("inspect never downloads"), "{err:?}");
    // An explicit --model is used (a directory here).
    let out = peft(
        &["inspect", "--json", "--model", s(&cases().join("llama_causal").join("model")), s(&adapter)],
        &env,
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(report["targets_matched_on_base"].as_array().is_some_and(|a| !a.is_empty()), "{report}");
}
