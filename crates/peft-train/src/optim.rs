//! Optimizers with PyTorch's exact update rules, whose state can be saved and resumed.
//!
//! * [`AdamW`]: `torch.optim.AdamW` (the single-tensor path PyTorch uses on CPU), op for op, with
//!   per-parameter learning rate and weight decay (parameter groups).
//! * [`loraplus_groups`]: PEFT's `create_loraplus_optimizer` grouping (B matrices at `lr × ratio`).
//! * [`LoraFa`]: PEFT's `LoraFAOptimizer` (A frozen, B's gradient projected through `(A Aᵀ)⁻¹`).

use crate::error::{Result, TrainError};
use std::collections::BTreeMap;
use tch::{Kind, Tensor};

/// One parameter with its own learning rate and weight decay.
#[derive(Debug)]
pub struct Param {
    /// PEFT's in-memory name (`base_model.model.lin0.lora_A.default.weight`).
    pub name: String,
    /// The tensor (a shallow clone of the model's parameter).
    pub tensor: Tensor,
    /// Base learning rate (schedules scale it).
    pub lr: f64,
    /// Decoupled weight decay.
    pub weight_decay: f64,
}

/// What every optimizer here provides.
pub trait Optimizer {
    /// Applies one update from the current gradients (`no_grad`).
    ///
    /// # Errors
    /// A libtorch failure.
    fn step(&mut self, lr_factor: f64) -> Result<()>;
    /// The parameters.
    fn params(&self) -> &[Param];
    /// The state to save (moment tensors by `<param>/<name>`, step counts as 0-d tensors).
    fn state_tensors(&self) -> Vec<(String, Tensor)>;
    /// Restores [`Optimizer::state_tensors`].
    ///
    /// # Errors
    /// Missing or misshapen state.
    fn load_state_tensors(&mut self, state: &BTreeMap<String, Tensor>) -> Result<()>;

    /// Clears every gradient.
    fn zero_grad(&mut self) {
        for p in self.params() {
            let mut g = p.tensor.grad();
            if g.defined() {
                let _ = g.zero_();
            }
        }
    }
}

fn torch(context: &str) -> impl FnOnce(tch::TchError) -> TrainError + '_ {
    move |source| TrainError::Torch { context: context.to_string(), source }
}

/// `param += value * t1 / t2` as ATen's `addcdiv_` computes it (`(value · t1) / t2`, then the add).
fn addcdiv_(
    param: &mut Tensor,
    t1: &Tensor,
    t2: &Tensor,
    value: f64,
) -> std::result::Result<(), tch::TchError> {
    let upd = t1.f_mul_scalar(value)?.f_div(t2)?;
    param.f_add_(&upd).map(drop)
}

/// `t += value * a * b` as ATen's `addcmul_` computes it: its kernel multiplies `value · a` by `b` and adds
/// `t` in one fused multiply-add, so a separate product and sum would round differently on some entries.
/// tch's `addcmul_` has no `value`; folding it into the first factor gives the kernel the same operands.
fn addcmul_(t: &mut Tensor, a: &Tensor, b: &Tensor, value: f64) -> std::result::Result<(), tch::TchError> {
    t.f_addcmul_(&a.f_mul_scalar(value)?, b).map(drop)
}

#[derive(Debug)]
struct AdamState {
    step: f64,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
}

impl AdamState {
    /// The checkpoint form of per-parameter Adam state: `<name>/exp_avg`, `<name>/exp_avg_sq`, `<name>/step`.
    fn export(params: &[Param], state: &[Option<AdamState>]) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for (p, s) in params.iter().zip(state) {
            if let Some(s) = s {
                out.push((format!("{}/exp_avg", p.name), s.exp_avg.shallow_clone()));
                out.push((format!("{}/exp_avg_sq", p.name), s.exp_avg_sq.shallow_clone()));
                out.push((format!("{}/step", p.name), Tensor::from(s.step)));
            }
        }
        out
    }

    /// Restores what [`AdamState::export`] wrote, onto each parameter's device and dtype; a parameter
    /// without saved state keeps none (it starts fresh, as in torch).
    fn import(
        params: &[Param],
        state: &mut [Option<AdamState>],
        saved: &BTreeMap<String, Tensor>,
    ) -> Result<()> {
        for (p, st) in params.iter().zip(state.iter_mut()) {
            let get = |k: &str| saved.get(&format!("{}/{k}", p.name));
            if let (Some(m), Some(v), Some(step)) = (get("exp_avg"), get("exp_avg_sq"), get("step")) {
                if m.size() != p.tensor.size() || v.size() != p.tensor.size() {
                    return Err(TrainError::Checkpoint(format!(
                        "optimizer state of `{}` has shape {:?}/{:?}, the parameter {:?}",
                        p.name,
                        m.size(),
                        v.size(),
                        p.tensor.size()
                    )));
                }
                let (dev, kind) = (p.tensor.device(), p.tensor.kind());
                *st = Some(AdamState {
                    step: step.double_value(&[]),
                    exp_avg: m.to_device(dev).to_kind(kind),
                    exp_avg_sq: v.to_device(dev).to_kind(kind),
                });
            }
        }
        Ok(())
    }
}

/// `torch.optim.AdamW(params, lr, betas, eps, weight_decay)`.
#[derive(Debug)]
pub struct AdamW {
    params: Vec<Param>,
    state: Vec<Option<AdamState>>,
    beta1: f64,
    beta2: f64,
    eps: f64,
}

impl AdamW {
    /// AdamW over `params` (PyTorch defaults: betas (0.9, 0.999), eps 1e-8).
    pub fn new(params: Vec<Param>, betas: (f64, f64), eps: f64) -> Self {
        let state = params.iter().map(|_| None).collect();
        Self { params, state, beta1: betas.0, beta2: betas.1, eps }
    }
}

impl Optimizer for AdamW {
    fn step(&mut self, lr_factor: f64) -> Result<()> {
        let (beta1, beta2, eps) = (self.beta1, self.beta2, self.eps);
        tch::no_grad(|| -> Result<()> {
            for (p, st) in self.params.iter_mut().zip(self.state.iter_mut()) {
                let grad = p.tensor.grad();
                if !grad.defined() {
                    continue;
                }
                let lr = p.lr * lr_factor;
                let s = match st {
                    Some(s) => s,
                    None => st.insert(AdamState {
                        step: 0.0,
                        exp_avg: p.tensor.f_zeros_like().map_err(torch("allocating AdamW state"))?,
                        exp_avg_sq: p.tensor.f_zeros_like().map_err(torch("allocating AdamW state"))?,
                    }),
                };
                s.step += 1.0;
                let t = &mut p.tensor;
                let mut f = || -> std::result::Result<(), tch::TchError> {
                    if p.weight_decay != 0.0 {
                        let _ = t.f_mul_scalar_(1.0 - lr * p.weight_decay)?;
                    }
                    let _ = s.exp_avg.f_lerp_(&grad, 1.0 - beta1)?;
                    let _ = s.exp_avg_sq.f_mul_scalar_(beta2)?;
                    addcmul_(&mut s.exp_avg_sq, &grad, &grad, 1.0 - beta2)?;
                    let bias_correction1 = 1.0 - beta1.powf(s.step);
                    let bias_correction2 = 1.0 - beta2.powf(s.step);
                    let step_size = lr / bias_correction1;
                    let denom =
                        s.exp_avg_sq.f_sqrt()?.f_div_scalar(bias_correction2.powf(0.5))?.f_add_scalar(eps)?;
                    addcdiv_(t, &s.exp_avg, &denom, -step_size)
                };
                f().map_err(torch("an AdamW step"))?;
            }
            Ok(())
        })
    }

    fn params(&self) -> &[Param] {
        &self.params
    }

    fn state_tensors(&self) -> Vec<(String, Tensor)> {
        AdamState::export(&self.params, &self.state)
    }

    fn load_state_tensors(&mut self, state: &BTreeMap<String, Tensor>) -> Result<()> {
        AdamState::import(&self.params, &mut self.state, state)
    }
}

/// The trainable parameters of a model as AdamW groups in the Hugging Face Trainer's way: weight
/// decay on everything but biases (and LayerNorm weights, which never train here).
pub fn default_groups(named: Vec<(String, Tensor)>, lr: f64, weight_decay: f64) -> Vec<Param> {
    named
        .into_iter()
        .map(|(name, tensor)| {
            let wd = if name.contains("bias") { 0.0 } else { weight_decay };
            Param { name, tensor, lr, weight_decay: wd }
        })
        .collect()
}

/// PEFT's `create_loraplus_optimizer` groups: LoRA embedding matrices at `lr_embedding`, `lora_B` and 1-D
/// parameters at `lr × ratio` (no decay on biases), everything else (`lora_A`) at `lr`. All groups use
/// `loraplus_weight_decay` (PEFT's default 0) except the no-decay one.
pub fn loraplus_groups(
    named: Vec<(String, Tensor)>,
    lr: f64,
    ratio: f64,
    lr_embedding: f64,
    weight_decay: f64,
) -> Vec<Param> {
    named
        .into_iter()
        .map(|(name, tensor)| {
            let (lr, wd) = if name.contains("lora_embedding_") {
                (lr_embedding, weight_decay)
            } else if name.contains("lora_B") || tensor.dim() == 1 {
                (lr * ratio, if name.contains("bias") { 0.0 } else { weight_decay })
            } else {
                (lr, weight_decay)
            };
            Param { name, tensor, lr, weight_decay: wd }
        })
        .collect()
}

/// PEFT's `LoraFAOptimizer` (AdamW-HF with LoRA-FA's projected update for B).
///
/// Every `lora_A` is frozen. For each `(A, B)` pair, `g_B ← (1/s²) · g_B · (A Aᵀ + 1e-8 I)⁺`, computed in
/// bf16 when PEFT would (its `autocast` when bf16 is available, which includes CPUs), then Adam moments
/// are kept for B only. Other trainable parameters get plain AdamW-HF (moments with `mul_`/`add_`, bias
/// correction folded into the step size, decay after the update).
#[derive(Debug)]
pub struct LoraFa {
    params: Vec<Param>,
    /// Per parameter: LoRA scaling of its layer (for B), `None` otherwise.
    scaling: Vec<Option<f64>>,
    state: Vec<Option<AdamState>>,
    beta1: f64,
    beta2: f64,
    eps: f64,
    bf16: bool,
}

impl LoraFa {
    /// LoRA-FA over `params` (A frozen here). `scaling` gives each B's LoRA scaling, by parameter name.
    /// PEFT's defaults: betas (0.9, 0.999), eps 1e-6, bf16 projection.
    pub fn new(params: Vec<Param>, scaling: &BTreeMap<String, f64>, eps: f64, bf16: bool) -> Self {
        for p in &params {
            if p.name.contains("lora_A") {
                let _ = p.tensor.set_requires_grad(false);
            }
        }
        let scaling = params.iter().map(|p| scaling.get(&p.name).copied()).collect();
        let state = params.iter().map(|_| None).collect();
        Self { params, scaling, state, beta1: 0.9, beta2: 0.999, eps, bf16 }
    }

    fn adam_hf(
        p: &mut Tensor,
        grad: &Tensor,
        s: &mut AdamState,
        lr: f64,
        wd: f64,
        (beta1, beta2, eps): (f64, f64, f64),
    ) -> std::result::Result<(), tch::TchError> {
        s.step += 1.0;
        let _ = s.exp_avg.f_mul_scalar_(beta1)?;
        let _ = s.exp_avg.f_add_(&grad.f_mul_scalar(1.0 - beta1)?)?;
        let _ = s.exp_avg_sq.f_mul_scalar_(beta2)?;
        addcmul_(&mut s.exp_avg_sq, grad, grad, 1.0 - beta2)?;
        let denom = s.exp_avg_sq.f_sqrt()?.f_add_scalar(eps)?;
        let bc1 = 1.0 - beta1.powf(s.step);
        let bc2 = 1.0 - beta2.powf(s.step);
        let step_size = lr * bc2.sqrt() / bc1;
        addcdiv_(p, &s.exp_avg, &denom, -step_size)?;
        if wd > 0.0 {
            let d = p.f_mul_scalar(-lr * wd)?;
            let _ = p.f_add_(&d)?;
        }
        Ok(())
    }
}

impl Optimizer for LoraFa {
    fn step(&mut self, lr_factor: f64) -> Result<()> {
        let hp = (self.beta1, self.beta2, self.eps);
        let bf16 = self.bf16;
        tch::no_grad(|| -> Result<()> {
            let mut last_a: Option<usize> = None;
            for i in 0..self.params.len() {
                let name = self.params[i].name.clone();
                if name.contains("lora_A") {
                    last_a = Some(i);
                    continue;
                }
                let grad = self.params[i].tensor.grad();
                if !grad.defined() {
                    continue;
                }
                let lr = self.params[i].lr * lr_factor;
                let wd = self.params[i].weight_decay;
                let grad = if name.contains("lora_B") {
                    let a = match last_a.take() {
                        Some(j) => self.params[j].tensor.shallow_clone(),
                        None => {
                            return Err(TrainError::Config(format!(
                                "LoRA-FA: `{name}` has no preceding lora_A"
                            )))
                        }
                    };
                    let s = self.scaling[i]
                        .ok_or_else(|| TrainError::Config(format!("LoRA-FA: no scaling for `{name}`")))?;
                    let f = || -> std::result::Result<Tensor, tch::TchError> {
                        let r = a.size()[0];
                        let aat = a.f_matmul(&a.f_tr()?)?;
                        let eye = Tensor::f_eye(r, (aat.kind(), aat.device()))?.f_mul_scalar(1e-8)?;
                        let inv = aat.f_add(&eye)?.f_linalg_pinv_atol_rtol_float(None, None, false)?;
                        let g = if bf16 {
                            grad.f_to_kind(Kind::BFloat16)?.f_matmul(&inv.f_to_kind(Kind::BFloat16)?)?
                        } else {
                            grad.f_matmul(&inv)?
                        };
                        g.f_mul_scalar(1.0 / s.powi(2))?.f_to_kind(grad.kind())
                    };
                    f().map_err(torch("projecting a LoRA-FA gradient"))?
                } else {
                    grad
                };
                let p = &mut self.params[i].tensor;
                let st = &mut self.state[i];
                let s = match st {
                    Some(s) => s,
                    None => st.insert(AdamState {
                        step: 0.0,
                        exp_avg: p.f_zeros_like().map_err(torch("allocating LoRA-FA state"))?,
                        exp_avg_sq: p.f_zeros_like().map_err(torch("allocating LoRA-FA state"))?,
                    }),
                };
                Self::adam_hf(p, &grad, s, lr, wd, hp).map_err(torch("a LoRA-FA step"))?;
            }
            Ok(())
        })
    }

    fn params(&self) -> &[Param] {
        &self.params
    }

    fn state_tensors(&self) -> Vec<(String, Tensor)> {
        AdamState::export(&self.params, &self.state)
    }

    fn load_state_tensors(&mut self, state: &BTreeMap<String, Tensor>) -> Result<()> {
        AdamState::import(&self.params, &mut self.state, state)
    }
}

/// `torch.nn.utils.clip_grad_norm_(params, max_norm)`: scales all gradients so their global L2 norm is at
/// most `max_norm`; returns the norm before clipping.
///
/// # Errors
/// A libtorch failure.
pub fn clip_grad_norm(params: &[Param], max_norm: f64) -> Result<f64> {
    tch::no_grad(|| -> Result<f64> {
        let grads: Vec<Tensor> = params.iter().map(|p| p.tensor.grad()).filter(Tensor::defined).collect();
        if grads.is_empty() {
            return Ok(0.0);
        }
        let norms: Vec<Tensor> = grads
            .iter()
            .map(|g| g.f_norm())
            .collect::<std::result::Result<_, _>>()
            .map_err(torch("computing gradient norms"))?;
        let total = Tensor::f_stack(&norms, 0)
            .and_then(|s| s.f_norm())
            .map_err(torch("computing the gradient norm"))?;
        // `max_norm / (total + 1e-6)`: Python's scalar / tensor is `reciprocal() * scalar`.
        let clip =
            (total.f_add_scalar(1e-6).and_then(|d| d.f_reciprocal()).and_then(|r| r.f_mul_scalar(max_norm)))
                .and_then(|c| c.f_clamp_max(1.0))
                .map_err(torch("clipping gradients"))?;
        for mut g in grads {
            let _ = g.f_mul_(&clip.to_kind(g.kind())).map_err(torch("clipping gradients"))?;
        }
        Ok(total.double_value(&[]))
    })
}
