//! Where a training step's time goes (forward, loss, backward, optimizer), for profiling.
//! `cargo run --release -p peft-bench --example breakdown -- MODEL_DIR [all]`
#![allow(clippy::unwrap_used, clippy::print_stdout, missing_docs)]

use peft_core::peft_config::TargetModules;
use peft_core::MethodConfig;
use peft_core::{ForwardCtx, PeftModel};
use peft_lora::LoraConfig;
use peft_models::{task, HfModel, ModelInputs};
use peft_train::optim::{default_groups, AdamW, Optimizer};
use std::time::Instant;
use tch::{Device, Kind, Tensor};

fn main() {
    tch::set_num_threads(2);
    let dir = std::env::args().nth(1).unwrap();
    let all = std::env::args().nth(2).is_some();
    let loaded = HfModel::load_dir(std::path::Path::new(&dir), None, &Default::default()).unwrap();
    let targets = if all {
        vec!["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    } else {
        vec!["q_proj", "v_proj"]
    };
    let config =
        LoraConfig { r: 16, target_modules: Some(TargetModules::list(targets)), ..LoraConfig::default() };
    let loaded = loaded;
    let peft = PeftModel::new(loaded.model, &loaded.vs, config.boxed(), "default").unwrap();
    println!("{}", peft.trainable_parameters_line());
    let vs_grad: Vec<String> =
        loaded.vs.variables().into_iter().filter(|(_, t)| t.requires_grad()).map(|(n, _)| n).collect();
    println!("base tensors requiring grad: {vs_grad:?}");
    let mut opt =
        AdamW::new(default_groups(peft.named_trainable_parameters(), 1e-4, 0.01), (0.9, 0.999), 1e-8);
    tch::manual_seed(1234);
    let ids = Tensor::randint(1024, [4, 128], (Kind::Int64, Device::Cpu));
    let (mut f, mut l, mut b, mut o) = (vec![], vec![], vec![], vec![]);
    for i in 0..40 {
        let t0 = Instant::now();
        let logits = peft.model().forward(&ModelInputs::ids(&ids), &ForwardCtx::train()).unwrap();
        let t1 = Instant::now();
        let loss = task::causal_lm_loss(&logits, &ids);
        let t2 = Instant::now();
        loss.backward();
        let t3 = Instant::now();
        opt.step(1.0).unwrap();
        opt.zero_grad();
        let t4 = Instant::now();
        if i >= 10 {
            f.push((t1 - t0).as_secs_f64() * 1e3);
            l.push((t2 - t1).as_secs_f64() * 1e3);
            b.push((t3 - t2).as_secs_f64() * 1e3);
            o.push((t4 - t3).as_secs_f64() * 1e3);
        }
    }
    let med = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!(
        "forward {:.2} ms, loss {:.2} ms, backward {:.2} ms, optimizer {:.2} ms",
        med(&mut f),
        med(&mut l),
        med(&mut b),
        med(&mut o)
    );
}
