//! The README's "Using it" example, complete: a small tch model wrapped with LoRA, trained a few steps,
//! saved in PEFT's format. `cargo run -- OUT_DIR` writes `OUT_DIR/adapter/` (the adapter),
//! `OUT_DIR/base.safetensors` (the frozen base weights) and `OUT_DIR/io.safetensors` (an input and the
//! adapted model's output), which `check_peft.py` loads with Python PEFT and compares.

use peft_core::peft_config::TargetModules;
use peft_core::{nn, Adaptable, PeftModel, SaveOptions};
use peft_lora::{LoraConfig, MethodConfig};
use tch::nn::{ModuleT, OptimizerConfig, VarStore};
use tch::{Device, Kind, Tensor};

#[derive(Debug, Adaptable)]
struct Mlp {
    lin0: nn::Linear,
    lin1: nn::Linear,
}

impl ModuleT for Mlp {
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        self.lin1.forward_t(&self.lin0.forward_t(x, train).relu(), train)
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = std::path::PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "out".into()));
    std::fs::create_dir_all(&out)?;
    tch::manual_seed(0);
    let vs = VarStore::new(Device::Cpu);
    let mlp = Mlp {
        lin0: nn::linear(vs.root() / "lin0", 10, 20, Default::default())?,
        lin1: nn::linear(vs.root() / "lin1", 20, 2, Default::default())?,
    };
    vs.save(out.join("base.safetensors"))?;
    let config = LoraConfig {
        r: 8,
        lora_alpha: 16.into(),
        target_modules: Some(TargetModules::list(["lin0", "lin1"])),
        ..LoraConfig::default()
    };
    let peft = PeftModel::new(mlp, &vs, config.boxed(), "default")?; // base frozen, LoRA trainable
    println!("{}", peft.trainable_parameters_line());

    // A few AdamW steps on a toy regression: LoRA's B starts at zero, so training is what moves the
    // output away from the base model's.
    let x = Tensor::randn([32, 10], (Kind::Float, Device::Cpu));
    let target = x.narrow(1, 0, 2).tanh();
    let mut opt = tch::nn::AdamW::default().build(peft.adapter_var_store(), 1e-2)?;
    for step in 0..20 {
        let loss = peft.model().forward_t(&x, true).mse_loss(&target, tch::Reduction::Mean);
        opt.backward_step(&loss);
        if step % 5 == 0 {
            println!("step {step}: loss {:.5}", loss.double_value(&[]));
        }
    }
    peft.save_pretrained(out.join("adapter"), &SaveOptions::default())?; // PEFT's exact format
    let y = tch::no_grad(|| peft.model().forward_t(&x, false));
    Tensor::write_safetensors(&[("x", &x), ("y", &y)], out.join("io.safetensors"))?;
    println!("adapter saved to {}", out.join("adapter").display());
    Ok(())
}
