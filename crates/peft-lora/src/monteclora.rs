//! MonteCLoRA (`monteclora_config`): in training, `lora_A` is replaced by a mixture of `num_samples`
//! Gaussian perturbations of it, with a Wishart-sampled covariance and Dirichlet-approximated mixture
//! weights — PEFT's `MontecloraLinearVariant` and `MontecloraSampler`. At inference (and when merging)
//! the adapter is plain LoRA.
//!
//! The sampler's random numbers come from a buffer of `buffer_size` pre-drawn samples, refilled when
//! used up, drawn in PEFT's order from the same generator — so creation and training steps reproduce
//! PEFT's under the same seed. The variational parameters `std_prior` and `expert_weights_prior` train
//! with the adapter; `gaussian_var_prior` and `expert_weights` are buffers holding the last sample, and
//! everything is saved under PEFT's `lora_monteclora_sampler.*` keys. Add [`monteclora_loss`] (the KL
//! regularizer) to the task loss, as PEFT's `_get_monteclora_loss`.

use crate::config::LoraConfig;
use crate::layer::{LoraLayer, Placement};
use crate::variant::LoraVariant;
use peft_core::config::LayerInit;
use peft_core::error::{PeftError, Result};
use peft_core::{Adaptable, PeftModel};
use serde_json::Value;
use std::sync::Mutex;
use tch::{Device, Kind, Tensor};

type TchResult<T> = std::result::Result<T, tch::TchError>;

/// `monteclora_config`, with PEFT's defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct MonteCloraConfig {
    /// Mixture components per forward pass.
    pub num_samples: i64,
    /// Add `Σ expert_weights²` to the loss.
    pub use_entropy: bool,
    /// Concentration of the Dirichlet prior in the KL term.
    pub dirichlet_prior: f64,
    /// Scale of the Gaussian perturbations.
    pub sample_scaler: f64,
    /// Weight of the KL terms.
    pub kl_loss_weight: f64,
    /// Pre-drawn samples per refill.
    pub buffer_size: i64,
}

impl MonteCloraConfig {
    /// Reads `config.monteclora_config` (missing fields take PEFT's defaults).
    pub fn from_config(config: &LoraConfig) -> Self {
        let v = config.monteclora_config.as_ref();
        let f = |k: &str, d: f64| v.and_then(|v| v.get(k)).and_then(Value::as_f64).unwrap_or(d);
        let i = |k: &str, d: i64| v.and_then(|v| v.get(k)).and_then(Value::as_i64).unwrap_or(d);
        Self {
            num_samples: i("num_samples", 8),
            use_entropy: v.and_then(|v| v.get("use_entropy")).and_then(Value::as_bool).unwrap_or(false),
            dirichlet_prior: f("dirichlet_prior", 0.1),
            sample_scaler: f("sample_scaler", 1e-4),
            kl_loss_weight: f("kl_loss_weight", 1e-5),
            buffer_size: i("buffer_size", 150),
        }
    }
}

/// Pre-drawn standard samples (PEFT's `BufferedMontecloraSampler`).
#[derive(Debug)]
struct NoiseBuffer {
    /// `(buffer, num_samples, in, r)` standard normals.
    mvn: Tensor,
    /// `(buffer, r, r)` standard Wishart samples (Bartlett decomposition).
    wishart: Tensor,
    /// `(buffer, num_samples)` standard normals.
    dirichlet: Tensor,
    /// The next sample to hand out.
    index: i64,
}

/// One adapter's MonteCLoRA sampler on one layer.
#[derive(Debug)]
pub struct MonteClora {
    /// The sampler's settings.
    pub config: MonteCloraConfig,
    /// `(r,)` log standard deviations (trainable).
    pub std_prior: Tensor,
    /// `(num_samples,)` log Dirichlet concentrations (trainable).
    pub expert_weights_prior: Tensor,
    /// `(r, r)` buffer: the last sampled covariance.
    pub gaussian_var_prior: Tensor,
    /// `(num_samples,)` buffer: the last sampled mixture weights.
    pub expert_weights: Tensor,
    /// The last sample with its graph (for the loss), until the next one.
    last: Mutex<Option<(Tensor, Tensor)>>,
    buffer: Mutex<NoiseBuffer>,
    in_features: i64,
    rank: i64,
    options: (Kind, Device),
}

/// One standard Wishart(df = p, I) sample by the Bartlett decomposition, drawing as
/// `torch.distributions.Wishart._bartlett_sampling` does.
fn bartlett(p: i64, options: (Kind, Device)) -> TchResult<Tensor> {
    let df = Tensor::f_arange(p, options)?.f_neg()?.f_add_scalar(p as f64)?;
    let chi2 = df.f_mul_scalar(0.5)?.f_internal_standard_gamma()?.f_div_scalar(0.5)?;
    let chi2 = chi2.f_clamp_min(f32::MIN_POSITIVE as f64)?;
    let mut noise = chi2.f_sqrt()?.f_clamp_min(f32::EPSILON as f64)?.f_diag_embed(0, -2, -1)?;
    let idx = Tensor::f_tril_indices(p, p, -1, (Kind::Int64, options.1))?;
    let off = Tensor::f_randn([p * (p - 1) / 2], options)?;
    let (i, j) = (idx.f_get(0)?, idx.f_get(1)?);
    noise = noise.f_index_put_(&[Some(i), Some(j)], &off, false)?;
    let chol = Tensor::f_eye(p, options)?.f_matmul(&noise)?;
    chol.f_matmul(&chol.f_transpose(-2, -1)?)
}

impl NoiseBuffer {
    fn draw(c: &MonteCloraConfig, in_features: i64, rank: i64, options: (Kind, Device)) -> TchResult<Self> {
        tch::no_grad(|| {
            let mvn = Tensor::f_randn([c.buffer_size, c.num_samples, in_features, rank], options)?;
            let dirichlet = Tensor::f_randn([c.buffer_size, c.num_samples], options)?;
            let f32_opts = (Kind::Float, options.1);
            let wishart: Vec<Tensor> = (0..c.buffer_size)
                .map(|_| bartlett(rank, f32_opts).and_then(|w| w.f_to_kind(options.0)))
                .collect::<TchResult<_>>()?;
            Ok(Self { mvn, wishart: Tensor::f_stack(&wishart, 0)?, dirichlet, index: 0 })
        })
    }
}

impl MonteClora {
    /// The sampler of the placed `layer`'s adapter, created with `config`, as PEFT's
    /// `MontecloraSampler.__init__` draws it (`rand` for the two priors, then a full noise buffer) in the
    /// base weight's float dtype on its device. The priors are placed like the factors and registered
    /// as trainable, the last-sample tensors as buffers, under `lora_monteclora_sampler`.
    ///
    /// # Errors
    /// A libtorch failure.
    pub(crate) fn create(
        config: &LoraConfig,
        layer: &LoraLayer,
        ctx: &LayerInit<'_, '_>,
        placement: &Placement,
    ) -> Result<Self> {
        let c = MonteCloraConfig::from_config(config);
        let (in_features, rank) = (layer.features().0, layer.r);
        let options = placement.base_options();
        let f = || -> TchResult<([Tensor; 4], NoiseBuffer)> {
            let cpu = (options.0, Device::Cpu);
            let std_prior = Tensor::f_rand([rank], cpu)?.f_to_device(options.1)?;
            let ew_prior = Tensor::f_rand([c.num_samples], cpu)?.f_to_device(options.1)?;
            let var = Tensor::f_eye(rank, options)?;
            let ew = Tensor::f_ones([c.num_samples], options)?.f_div_scalar(c.num_samples as f64)?;
            let buffer = NoiseBuffer::draw(&c, in_features, rank, options)?;
            Ok(([std_prior, ew_prior, var, ew], buffer))
        };
        let ([std, ewp, var, ew], buffer) =
            f().map_err(PeftError::torch("initialising the MonteCLoRA sampler"))?;
        let p = &ctx.path / "lora_monteclora_sampler" / layer.adapter_name();
        Ok(Self {
            config: c,
            std_prior: p.add("std_prior", placement.place(std)?, true),
            expert_weights_prior: p.add("expert_weights_prior", placement.place(ewp)?, true),
            gaussian_var_prior: p.add("gaussian_var_prior", var, false),
            expert_weights: p.add("expert_weights", ew, false),
            last: Mutex::new(None),
            buffer: Mutex::new(buffer),
            in_features,
            rank,
            options,
        })
    }

    /// A training forward pass: plain LoRA with A replaced by [`Self::perturbed_a`]. `x` is the input
    /// cast to the adapter dtype, `y` the output so far.
    pub(crate) fn forward(&self, layer: &LoraLayer, x: Tensor, y: Tensor) -> Tensor {
        let x = if layer.dropout > 0.0 { x.dropout(layer.dropout, true) } else { x };
        let after_a = x.linear::<&Tensor>(&self.perturbed_a(&layer.lora_a), None);
        y + after_a.linear(&layer.lora_b, layer.lora_b_bias.as_ref()) * layer.scaling
    }

    /// Appends the sampler's tensors to `out` under PEFT's names (`lora_monteclora_sampler.<adapter>.*`).
    pub(crate) fn push_tensors(&self, adapter: &str, out: &mut Vec<(String, Tensor)>) {
        let p = format!("lora_monteclora_sampler.{adapter}");
        out.push((format!("{p}.std_prior"), self.std_prior.shallow_clone()));
        out.push((format!("{p}.expert_weights_prior"), self.expert_weights_prior.shallow_clone()));
        out.push((format!("{p}.gaussian_var_prior"), self.gaussian_var_prior.shallow_clone()));
        out.push((format!("{p}.expert_weights"), self.expert_weights.shallow_clone()));
    }

    /// The next pre-drawn sample, refilling the buffer when it is used up.
    fn next_sample(&self) -> TchResult<(Tensor, Tensor, Tensor)> {
        let mut buf = self.buffer.lock().unwrap_or_else(|p| p.into_inner());
        if buf.index >= self.config.buffer_size {
            *buf = NoiseBuffer::draw(&self.config, self.in_features, self.rank, self.options)?;
        }
        let i = buf.index;
        buf.index += 1;
        Ok((buf.mvn.f_get(i)?, buf.wishart.f_get(i)?, buf.dirichlet.f_get(i)?))
    }

    /// `MontecloraSampler.forward`: `(noise (num_samples, in, r), mixture weights (num_samples,))`,
    /// recording the sample in the buffers.
    fn sample(&self) -> TchResult<(Tensor, Tensor)> {
        let (kind, device) = (self.std_prior.kind(), self.std_prior.device());
        let (z_mvn, z_wishart, z_dirichlet) = self.next_sample()?;
        let z_mvn = z_mvn.f_to_device(device)?.f_to_kind(kind)?;
        let z_wishart = z_wishart.f_to_device(device)?.f_to_kind(kind)?;
        let z_dirichlet = z_dirichlet.f_to_device(device)?.f_to_kind(kind)?;
        let std = self.std_prior.f_exp()?.f_diag(0)?;
        // Wishart reparameterization: keep the clipped diagonal.
        let updated = std.f_matmul(&z_wishart)?.f_matmul(&std.f_tr()?)?;
        let gaussian_var = updated.f_diag(0)?.f_clamp_min(1e-3)?.f_diag(0)?;
        // Multivariate reparameterization (Cholesky in fp32).
        let l = gaussian_var.f_to_kind(Kind::Float)?.f_linalg_cholesky(false)?.f_to_kind(kind)?;
        let varsum = Tensor::f_einsum("eio,op->eip", &[&z_mvn, &l], None::<i64>)?;
        let var = varsum.f_nan_to_num(1e-3, None, None)?.f_mul_scalar(self.config.sample_scaler)?;
        // Dirichlet approximation in log space.
        let logits = self.dirichlet_reparameterization(&self.expert_weights_prior.f_exp()?, &z_dirichlet)?;
        let weights = logits.f_softmax(-1, kind)?;
        tch::no_grad(|| -> TchResult<()> {
            self.gaussian_var_prior.shallow_clone().f_copy_(&gaussian_var)?;
            self.expert_weights.shallow_clone().f_copy_(&weights)?;
            Ok(())
        })?;
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((gaussian_var.shallow_clone(), weights.shallow_clone()));
        Ok((var, weights))
    }

    fn dirichlet_reparameterization(&self, alpha: &Tensor, z: &Tensor) -> TchResult<Tensor> {
        let eps = 1e-6;
        let n = self.config.num_samples as f64;
        let alpha = alpha.f_clamp_min(eps)?;
        let log_alpha = alpha.f_log()?;
        let mu = log_alpha.f_sub(&log_alpha.f_mean(None)?)?;
        let inv = alpha.f_reciprocal()?;
        let diag_term = inv
            .f_mul_scalar(1.0 - 2.0 / n)?
            .f_add(&inv.f_sum(None)?.f_mul_scalar(1.0 / (n * n))?)?
            .f_clamp_min(eps)?;
        let eye = Tensor::f_eye(self.config.num_samples, (alpha.kind(), alpha.device()))?;
        let sigma = diag_term.f_diag(0)?.f_add(&eye.f_mul_scalar(eps)?)?;
        let l = match sigma.f_to_kind(Kind::Float)?.f_linalg_cholesky(false) {
            Ok(l) => l,
            Err(_) => {
                sigma.f_add(&eye.f_mul_scalar(1e-4)?)?.f_to_kind(Kind::Float)?.f_linalg_cholesky(false)?
            }
        };
        l.f_to_kind(sigma.kind())?.f_matmul(z)?.f_add(&mu)
    }

    /// The `lora_A` to use in a training forward pass: the mixture of perturbed copies of `a`, or `a`
    /// itself when a sample is not finite (PEFT warns and does the same).
    fn perturbed_a(&self, a: &Tensor) -> Tensor {
        let f = || -> TchResult<Tensor> {
            let (vars, weights) = self.sample()?;
            let nan = |t: &Tensor| t.f_isnan().and_then(|m| m.f_any()).map(|m| m.int64_value(&[]) != 0);
            if nan(&vars)? || nan(&weights)? {
                return Ok(a.shallow_clone());
            }
            let noise = vars.f_nan_to_num(0.0, None, None)?;
            let perturbed = a.f_tr()?.f_add(&noise)?;
            Tensor::f_einsum("n,nij->ij", &[&weights, &perturbed], None::<i64>)?.f_tr()
        };
        f().unwrap_or_else(|_| a.shallow_clone())
    }

    /// `get_variational_loss`: `(kl_loss_weight · (KL_dirichlet + KL_wishart + KL_gaussian), entropy)`.
    fn variational_loss(&self) -> TchResult<(Tensor, Tensor)> {
        let c = &self.config;
        let n = c.num_samples;
        let r = self.rank as f64;
        let last = self
            .last
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|(g, w)| (g.shallow_clone(), w.shallow_clone()));
        let (gaussian_var, weights) = match last {
            Some((g, w)) => (g, w),
            None => (self.gaussian_var_prior.shallow_clone(), self.expert_weights.shallow_clone()),
        };
        // Dirichlet KL against a symmetric prior.
        let alpha2 = self.expert_weights_prior.f_exp()?;
        let alpha1 = Tensor::f_full([n], c.dirichlet_prior, (Kind::Float, alpha2.device()))?;
        let gamma = |x: &Tensor| x.f_lgamma().and_then(|l| l.f_exp());
        let kl1 = gamma(&alpha2.f_sum(None)?)?
            .f_div(&gamma(&alpha1.f_sum(None)?)?)?
            .f_log()?
            .f_add(&gamma(&alpha2)?.f_div(&gamma(&alpha1)?)?.f_log()?.f_sum(None)?)?
            .f_add(
                &alpha2
                    .f_sub(&alpha1)?
                    .f_mul(&alpha2.f_digamma()?.f_sub(&alpha2.f_sum(None)?.f_digamma()?)?)?
                    .f_sum(None)?,
            )?;
        // Wishart KL of diag(exp(std_prior)).
        let std = self.std_prior.f_exp()?.f_diag(0)?;
        let var = std.f_matmul(&std.f_tr()?)?.f_diag(0)?.f_diag(0)?;
        let kl2 = var
            .f_log()?
            .f_trace()?
            .f_neg()?
            .f_mul_scalar(r)?
            .f_add(&var.f_trace()?.f_mul_scalar(r)?)?
            .f_sub_scalar(r * r)?
            .f_mul_scalar(0.5)?;
        // Gaussian KL of the last sampled covariance.
        let v = gaussian_var.f_clamp_min(1e-6)?;
        let kl3 =
            v.f_trace()?.f_sub(&v.f_log()?.f_trace()?)?.f_sub_scalar(r)?.f_mul_scalar(n as f64 * 0.5)?;
        let kl = kl1.f_add(&kl2)?.f_add(&kl3)?.f_mul_scalar(c.kl_loss_weight)?;
        let entropy = if c.use_entropy {
            weights.f_square()?.f_sum(None)?
        } else {
            Tensor::f_zeros([], (kl.kind(), kl.device()))?
        };
        Ok((kl, entropy))
    }
}

/// Redraws every MonteCLoRA sampler's noise buffer from the current random state (in module order, then
/// adapter order), as calling PEFT's `sampler.sampler._refill_buffer()` on each does — e.g. right after
/// `tch::manual_seed` to make a training run reproducible.
///
/// # Errors
/// A libtorch failure.
pub fn redraw_noise<M: Adaptable>(peft: &PeftModel<M>) -> Result<()> {
    let mut failure = None;
    peft.model().visit_layers(&mut |l| {
        for (_, tuner) in l.slots().adapters() {
            let Some(LoraVariant::MonteClora(mc)) =
                tuner.as_any().downcast_ref::<LoraLayer>().map(|l| &l.variant)
            else {
                continue;
            };
            match NoiseBuffer::draw(&mc.config, mc.in_features, mc.rank, mc.options) {
                Ok(b) => *mc.buffer.lock().unwrap_or_else(|p| p.into_inner()) = b,
                Err(e) => failure = Some(e),
            }
        }
    });
    match failure {
        Some(e) => Err(PeftError::torch("redrawing MonteCLoRA noise")(e)),
        None => Ok(()),
    }
}

/// PEFT's `LoraModel._get_monteclora_loss`: the mean over MonteCLoRA layers of `adapters` (default:
/// the active ones) of the KL regularizer plus the optional entropy term; zero when there are none.
///
/// PEFT returns zero while the model is in eval mode; this computes the regularizer in either mode.
///
/// # Errors
/// A libtorch failure.
pub fn monteclora_loss<M: Adaptable>(peft: &PeftModel<M>, adapters: Option<&[&str]>) -> Result<Tensor> {
    let names: Vec<String> = match adapters {
        Some(a) => a.iter().map(|s| s.to_string()).collect(),
        None => peft.active_adapters().to_vec(),
    };
    let mut total: Option<Tensor> = None;
    let mut count = 0i64;
    let mut failure = None;
    peft.model().visit_layers(&mut |l| {
        for name in &names {
            let Some(layer) = l.slots().get(name).and_then(|t| t.as_any().downcast_ref::<LoraLayer>()) else {
                continue;
            };
            let LoraVariant::MonteClora(mc) = &layer.variant else { continue };
            match mc.variational_loss().and_then(|(kl, ent)| kl.f_add(&ent)) {
                Ok(term) => {
                    total = Some(match total.take() {
                        Some(t) => t + term,
                        None => term,
                    });
                    count += 1;
                }
                Err(e) => failure = Some(e),
            }
        }
    });
    if let Some(e) = failure {
        return Err(PeftError::torch("computing the MonteCLoRA loss")(e));
    }
    Ok(match total {
        Some(t) => t / count as f64,
        None => Tensor::from(0.0f32),
    })
}
