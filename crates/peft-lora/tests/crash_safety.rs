//! Saves survive a crash: a child process saves adapters of alternating shapes in a loop and is killed
//! (SIGKILL) at random moments; every time, the directory holds one complete save — a config and the
//! weights written with it — or nothing yet, never new weights beside an old config.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use peft_core::nn::{self, Linear};
use peft_core::{Adaptable, MethodConfig, PeftModel, SaveOptions};
use peft_lora::LoraConfig;
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use tch::nn::VarStore;

/// Wide enough that one save takes a few milliseconds, so kills land inside saves.
#[derive(Debug, Adaptable)]
struct Wide {
    lin0: Linear,
    lin1: Linear,
}

const CHILD_DIR: &str = "PEFT_RS_CRASH_TEST_DIR";

/// Save number `v` has rank 4 when even, 256 when odd, and every adapter value equal to `v`.
fn rank_of(v: i64) -> i64 {
    if v % 2 == 0 {
        4
    } else {
        256
    }
}

fn writer_loop(dir: &Path) -> ! {
    for v in 0.. {
        let vs = VarStore::new(tch::Device::Cpu);
        let p = vs.root();
        let model = Wide {
            lin0: nn::linear(&p / "lin0", 1024, 1024, Default::default()).unwrap(),
            lin1: nn::linear(&p / "lin1", 1024, 1024, Default::default()).unwrap(),
        };
        let config = LoraConfig {
            r: rank_of(v),
            target_modules: Some(peft_core::peft_config::TargetModules::list(["lin0", "lin1"])),
            ..LoraConfig::default()
        };
        let peft = PeftModel::new(model, &vs, config.boxed(), "default").unwrap();
        for (_, mut t) in peft.adapter_var_store().variables() {
            let _ = tch::no_grad(|| t.fill_(v as f64));
        }
        peft.save_pretrained(dir, &SaveOptions::default()).unwrap();
    }
    unreachable!()
}

/// The save `dir` holds is whole: the config's rank is the weights' rank, and all values are one save's.
fn check_whole(dir: &Path) {
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("adapter_config.json")).unwrap()).unwrap();
    let r = config["r"].as_i64().unwrap();
    let tensors = peft_core::io::read_safetensors(&dir.join("adapter_model.safetensors")).unwrap();
    assert_eq!(tensors.len(), 4);
    let v = tensors[0].tensor.flatten(0, -1).double_value(&[0]) as i64;
    assert_eq!(rank_of(v), r, "weights of save {v} beside the config of another save (r = {r})");
    for t in &tensors {
        assert!(t.tensor.size().contains(&r), "{}: {:?} with r = {r}", t.key, t.tensor.size());
        assert!(t.tensor.eq(v as f64).all().int64_value(&[]) != 0, "{} mixes saves", t.key);
    }
}

#[test]
fn a_save_killed_midway_leaves_the_old_adapter_or_the_new_one() {
    if let Ok(dir) = std::env::var(CHILD_DIR) {
        writer_loop(Path::new(&dir));
    }
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("adapter");
    let mut seen = 0;
    for round in 0..24u64 {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "a_save_killed_midway_leaves_the_old_adapter_or_the_new_one",
                "--exact",
                "--test-threads=1",
            ])
            .env(CHILD_DIR, &dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Kill at a different moment each round: after start-up (libtorch loading) and some saves.
        std::thread::sleep(Duration::from_millis(400 + (round * 37) % 300));
        child.kill().unwrap();
        child.wait().unwrap();
        if dir.join("adapter_config.json").exists() {
            check_whole(&dir);
            seen += 1;
        }
    }
    assert!(seen > 0, "the child never completed a save; the test checked nothing");
    // Staging directories of the killed writers are cleared by the next save.
    let vs = VarStore::new(tch::Device::Cpu);
    let model = Wide {
        lin0: nn::linear(vs.root() / "lin0", 4, 4, Default::default()).unwrap(),
        lin1: nn::linear(vs.root() / "lin1", 4, 4, Default::default()).unwrap(),
    };
    let config = LoraConfig {
        target_modules: Some(peft_core::peft_config::TargetModules::list(["lin0"])),
        ..LoraConfig::default()
    };
    PeftModel::new(model, &vs, config.boxed(), "default")
        .unwrap()
        .save_pretrained(&dir, &SaveOptions::default())
        .unwrap();
    let names: Vec<String> = std::fs::read_dir(root.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into())
        .collect();
    assert_eq!(names, ["adapter"], "left behind: {names:?}");
}
