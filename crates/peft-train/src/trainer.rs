//! The training loop: what transformers' `Trainer` does for PEFT users, on a [`PeftModel`].

use crate::callback::StepCallback;
use crate::data::{collate, epoch_batches, Batch, Dataset, Target};
use crate::error::{Result, TrainError};
use crate::optim::{self, AdamW, LoraFa, Optimizer};
use indicatif::{ProgressBar, ProgressStyle};
use peft_core::{Adaptable, ForwardCtx, PeftModel, SaveOptions};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

pub use crate::args::{OptimizerKind, TrainingArgs};

/// Computes `(loss, logits)` for a batch; see [`hf_loss`] for `peft_models::HfModel`.
pub type LossFn<M> = dyn Fn(&M, &Batch, &ForwardCtx<'_>) -> Result<(Tensor, Tensor)>;

/// The loss of an [`peft_models::HfModel`] for its task: shifted causal-LM cross-entropy, or plain
/// cross-entropy for classification and seq2seq (labels −100 ignored).
///
/// # Errors
/// A model whose task has no loss (feature extraction), or malformed inputs.
pub fn hf_loss(
    model: &peft_models::HfModel,
    batch: &Batch,
    ctx: &ForwardCtx<'_>,
) -> Result<(Tensor, Tensor)> {
    use peft_models::{task, ModelInputs, Task};
    let inputs = ModelInputs::with_mask(&batch.input_ids, Some(&batch.attention_mask));
    let logits = model.forward(&inputs, ctx)?;
    let loss = match model.task() {
        Task::CausalLm => task::causal_lm_loss(&logits, &batch.labels),
        Task::SequenceClassification | Task::TokenClassification => {
            task::cross_entropy_loss(&logits, &batch.labels)
        }
        other => return Err(TrainError::Config(format!("training a {other} model is not supported"))),
    };
    Ok((loss, logits))
}

/// One line of the metrics log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LogEntry {
    /// Optimizer step.
    pub step: usize,
    /// Epoch (fractional).
    pub epoch: f64,
    /// Mean training loss since the last entry.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loss: Option<f64>,
    /// Learning rate used by the last step.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub learning_rate: Option<f64>,
    /// Gradient norm before clipping.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grad_norm: Option<f64>,
    /// Training throughput.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokens_per_second: Option<f64>,
    /// Evaluation loss.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eval_loss: Option<f64>,
    /// Evaluation accuracy (classification).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eval_accuracy: Option<f64>,
}

/// Evaluation results.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalMetrics {
    /// Mean loss.
    pub loss: f64,
    /// Accuracy for classification (class labels), else `None`.
    pub accuracy: Option<f64>,
}

/// What a training run did.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainSummary {
    /// Optimizer steps taken.
    pub steps: usize,
    /// Trainable / total parameters.
    pub parameters: (i64, i64),
    /// Wall time.
    pub seconds: f64,
    /// Peak resident memory (bytes), when the OS reports it.
    pub peak_rss_bytes: Option<u64>,
    /// Last logged training loss.
    pub final_loss: Option<f64>,
    /// Final evaluation.
    pub eval: Option<EvalMetrics>,
    /// The log.
    pub log: Vec<LogEntry>,
}

impl std::fmt::Display for TrainSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (t, a) = self.parameters;
        write!(f, "{} steps in {:.1}s; trainable params {t} of {a}", self.steps, self.seconds)?;
        if let Some(l) = self.final_loss {
            write!(f, "; final loss {l:.4}")?;
        }
        if let Some(e) = self.eval {
            write!(f, "; eval loss {:.4}", e.loss)?;
            if let Some(acc) = e.accuracy {
                write!(f, ", accuracy {:.2}%", 100.0 * acc)?;
            }
        }
        if let Some(m) = self.peak_rss_bytes {
            write!(f, "; peak memory {:.0} MiB", m as f64 / (1024.0 * 1024.0))?;
        }
        Ok(())
    }
}

/// Peak resident set size of this process (Linux `VmHWM`).
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Trainer state saved in checkpoints.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct TrainerState {
    global_step: usize,
    micro_step: usize,
    log: Vec<LogEntry>,
}

/// Trains the active adapter of a [`PeftModel`].
pub struct Trainer<'a, M: Adaptable> {
    peft: &'a mut PeftModel<M>,
    args: TrainingArgs,
    adapter: String,
    optimizer: Box<dyn Optimizer>,
    state: TrainerState,
    device: Device,
    callbacks: Vec<Box<dyn StepCallback<M>>>,
    /// Whether [`Trainer::train`] adds the callbacks the trained method needs (AdaLoRA's allocator).
    method_callbacks: bool,
}

impl<M: Adaptable> std::fmt::Debug for Trainer<'_, M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trainer")
            .field("args", &self.args)
            .field("step", &self.state.global_step)
            .field("callbacks", &self.callbacks.len())
            .finish_non_exhaustive()
    }
}

fn lora_scalings<M: Adaptable>(peft: &PeftModel<M>) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    peft.model().visit_layers(&mut |layer| {
        for (adapter, tuner) in layer.slots().adapters() {
            let describe = tuner.describe();
            if let Some(s) =
                describe.split("scaling=").nth(1).and_then(|r| r.trim_end_matches(')').parse::<f64>().ok())
            {
                out.insert(format!("base_model.model.{}.lora_B.{adapter}.weight", layer.name()), s);
            }
        }
    });
    out
}

impl<'a, M: Adaptable> Trainer<'a, M> {
    /// Prepares training of the active adapter (exactly one must be active).
    ///
    /// # Errors
    /// Invalid arguments ([`TrainingArgs::validate`]), or no single active adapter.
    pub fn new(peft: &'a mut PeftModel<M>, args: TrainingArgs) -> Result<Self> {
        args.validate()?;
        let adapter = match peft.active_adapters() {
            [one] => one.clone(),
            other => {
                return Err(TrainError::Config(format!("train exactly one active adapter, found {other:?}")))
            }
        };
        peft.set_requires_grad(&[adapter.as_str()], true)?;
        let named = peft.named_trainable_parameters();
        if named.is_empty() {
            return Err(TrainError::Config("the model has no trainable parameters".into()));
        }
        let device = named[0].1.device();
        let lr = args.learning_rate;
        let optimizer: Box<dyn Optimizer> = match &args.optimizer {
            OptimizerKind::Adamw => Box::new(AdamW::new(
                optim::default_groups(named, lr, args.weight_decay),
                (args.adam_beta1, args.adam_beta2),
                args.adam_epsilon,
            )),
            OptimizerKind::Loraplus { ratio, lr_embedding } => Box::new(AdamW::new(
                optim::loraplus_groups(named, lr, *ratio, *lr_embedding, args.weight_decay),
                (args.adam_beta1, args.adam_beta2),
                args.adam_epsilon,
            )),
            OptimizerKind::Lorafa => {
                let scalings = lora_scalings(peft);
                Box::new(LoraFa::new(
                    optim::default_groups(named, lr, args.weight_decay),
                    &scalings,
                    1e-6,
                    true,
                ))
            }
        };
        Ok(Self {
            peft,
            args,
            adapter,
            optimizer,
            state: TrainerState::default(),
            device,
            callbacks: Vec::new(),
            method_callbacks: true,
        })
    }

    /// Registers a [`StepCallback`]; callbacks run in the order they were added. They own their state
    /// (`'static`), so a trainer still borrows only the model; share results through `Rc` / `Arc`.
    pub fn add_callback(&mut self, callback: Box<dyn StepCallback<M>>) {
        self.callbacks.push(callback);
    }

    /// Registers a [`StepCallback`] (builder form of [`Trainer::add_callback`]).
    #[must_use]
    pub fn with_callback(mut self, callback: impl StepCallback<M> + 'static) -> Self {
        self.callbacks.push(Box::new(callback));
        self
    }

    /// Leaves out the callbacks [`Trainer::train`] adds for the trained method by itself (for AdaLoRA,
    /// [`crate::adalora::AdaLoraCallback`]) — for a loop that registers its own.
    #[must_use]
    pub fn without_method_callbacks(mut self) -> Self {
        self.method_callbacks = false;
        self
    }

    /// The model being trained.
    pub fn model(&self) -> &PeftModel<M> {
        self.peft
    }

    /// Optimizer steps so far.
    pub fn global_step(&self) -> usize {
        self.state.global_step
    }

    /// The log so far.
    pub fn log(&self) -> &[LogEntry] {
        &self.state.log
    }

    fn total_steps(&self, n_examples: usize) -> usize {
        let batches = n_examples.div_ceil(self.args.per_device_train_batch_size);
        let per_epoch = batches.div_ceil(self.args.gradient_accumulation_steps).max(1);
        self.args.max_steps.unwrap_or_else(|| (self.args.num_train_epochs * per_epoch as f64).ceil() as usize)
    }

    /// Mean loss (and accuracy for class labels) over `data`.
    ///
    /// # Errors
    /// A forward failure.
    pub fn evaluate(&self, data: &Dataset, loss_fn: &LossFn<M>, pad_id: i64) -> Result<EvalMetrics> {
        let ctx = ForwardCtx::eval();
        let lengths: Vec<usize> = data.examples.iter().map(|e| e.input_ids.len()).collect();
        let (mut loss_sum, mut n, mut correct, mut total) = (0.0, 0usize, 0i64, 0i64);
        for idx in epoch_batches(&lengths, self.args.per_device_eval_batch_size, 0, 0, false, false) {
            let exs: Vec<_> = idx.iter().map(|&i| &data.examples[i]).collect();
            let batch = collate(&exs, pad_id, self.device);
            // Per-row values from each batch's ids (Activated LoRA's offsets, as PEFT's forward computes them).
            let values = self.peft.row_values(&batch.input_ids, None)?;
            let ctx = match &values {
                Some(o) => ctx.with_row_values(o),
                None => ctx,
            };
            let (loss, logits) = tch::no_grad(|| loss_fn(self.peft.model(), &batch, &ctx))?;
            loss_sum += loss.double_value(&[]) * exs.len() as f64;
            n += exs.len();
            if matches!(data.examples[idx[0]].target, Target::Class(_)) {
                let pred = logits.argmax(-1, false);
                correct += pred.eq_tensor(&batch.labels).sum(Kind::Int64).int64_value(&[]);
                total += exs.len() as i64;
            }
        }
        Ok(EvalMetrics {
            loss: loss_sum / n.max(1) as f64,
            accuracy: (total > 0).then(|| correct as f64 / total as f64),
        })
    }

    /// Trains on `train`, evaluating on `eval` every `eval_steps` and at the end; saves checkpoints every
    /// `save_steps` and the final adapter (plus `metrics.jsonl`, `training_args.json` and `loss.png`) to
    /// `output_dir`.
    ///
    /// Registered [`StepCallback`]s run at their points of every step. An AdaLoRA adapter is trained as
    /// PEFT prescribes without further code: [`crate::adalora::AdaLoraCallback`] is added first (unless
    /// [`Trainer::without_method_callbacks`]), which needs the config's `total_step` to equal the steps
    /// this run takes.
    ///
    /// # Errors
    /// [`TrainError::NonFiniteLoss`] when the loss becomes NaN/inf, I/O errors, model errors, the first
    /// error of a callback.
    pub fn train(
        &mut self,
        train: &Dataset,
        eval: Option<&Dataset>,
        loss_fn: &LossFn<M>,
        pad_id: i64,
    ) -> Result<TrainSummary> {
        let start = Instant::now();
        std::fs::create_dir_all(&self.args.output_dir)
            .map_err(|source| TrainError::Io { path: self.args.output_dir.clone(), source })?;
        write_json(&self.args.output_dir.join(ARGS_FILE), &self.args)?;
        // This run's log starts now (with the resumed checkpoint's entries, if any), not after an earlier
        // run's lines.
        self.write_metrics()?;
        let total = self.total_steps(train.examples.len());
        if self.method_callbacks {
            // What PEFT's users wire into their loops by hand: AdaLoRA's rank allocation after each
            // optimizer step and its orthogonal regularisation in the loss. Added once, first.
            self.method_callbacks = false;
            if let Some(cb) = crate::adalora::method_callback(self.peft, &self.adapter, total)? {
                if self.state.global_step > 0 {
                    return Err(TrainError::Checkpoint(
                        "resuming AdaLoRA training is not supported: the rank allocator's importance \
                         statistics are not part of the checkpoint"
                            .into(),
                    ));
                }
                self.callbacks.insert(0, cb);
            }
        }
        let warmup = if self.args.warmup_steps > 0 {
            self.args.warmup_steps
        } else {
            (self.args.warmup_ratio * total as f64).ceil() as usize
        };
        let lengths: Vec<usize> = train.examples.iter().map(|e| e.input_ids.len()).collect();
        let accum = self.args.gradient_accumulation_steps;
        let n_batches = lengths.len().div_ceil(self.args.per_device_train_batch_size);
        // Resumed runs reseed per position (libtorch's RNG state cannot be saved through tch).
        let seed = if self.state.global_step == 0 {
            self.args.seed
        } else {
            self.args.seed.wrapping_add(self.state.global_step as u64)
        };
        tch::manual_seed(seed as i64);
        let bar = if self.args.progress {
            let b = ProgressBar::new(total as u64);
            b.set_style(
                ProgressStyle::with_template(
                    "{bar:30} {pos}/{len} steps [{elapsed_precise}<{eta_precise}] {msg}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            b.set_position(self.state.global_step as u64);
            b
        } else {
            ProgressBar::hidden()
        };
        let ctx = ForwardCtx::train();
        let (mut loss_acc, mut loss_n, mut tokens, mut last_log) = (0.0, 0usize, 0i64, Instant::now());
        let mut last_lr;
        let mut last_grad_norm = None;
        let mut epoch = self.state.micro_step / n_batches.max(1);
        'outer: while self.state.global_step < total {
            let batches = epoch_batches(
                &lengths,
                self.args.per_device_train_batch_size,
                self.args.seed,
                epoch,
                self.args.shuffle,
                self.args.group_by_length,
            );
            let skip = self.state.micro_step % n_batches.max(1);
            for (bi, idx) in batches.iter().enumerate().skip(skip) {
                let exs: Vec<_> = idx.iter().map(|&i| &train.examples[i]).collect();
                let batch = collate(&exs, pad_id, self.device);
                let values = self.peft.row_values(&batch.input_ids, None)?;
                let ctx = match &values {
                    Some(o) => ctx.with_row_values(o),
                    None => ctx,
                };
                let (mut loss, _) = loss_fn(self.peft.model(), &batch, &ctx)?;
                for cb in &mut self.callbacks {
                    loss = cb.adjust_loss(self.peft, loss)?;
                }
                let lv = loss.double_value(&[]);
                let lr_now = self.args.learning_rate
                    * self.args.lr_scheduler_type.factor(self.state.global_step, warmup, total);
                if !lv.is_finite() {
                    bar.abandon();
                    return Err(TrainError::NonFiniteLoss {
                        step: self.state.global_step,
                        loss: lv,
                        lr: lr_now,
                    });
                }
                (loss / accum as f64).backward();
                loss_acc += lv;
                loss_n += 1;
                tokens += batch.tokens;
                self.state.micro_step += 1;
                let boundary = (bi + 1) % accum == 0 || bi + 1 == batches.len();
                if !boundary {
                    continue;
                }
                let step_index = self.state.global_step;
                for cb in &mut self.callbacks {
                    cb.after_backward(self.peft, step_index)?;
                }
                if let Some(max) = self.args.max_grad_norm {
                    last_grad_norm = Some(optim::clip_grad_norm(self.optimizer.params(), max)?);
                }
                let factor = self.args.lr_scheduler_type.factor(self.state.global_step, warmup, total);
                self.optimizer.step(factor)?;
                // The gradients stay until every callback has seen them (AdaLoRA's allocator needs them).
                for cb in &mut self.callbacks {
                    cb.after_optimizer_step(self.peft, step_index)?;
                }
                self.optimizer.zero_grad();
                last_lr = Some(self.args.learning_rate * factor);
                self.state.global_step += 1;
                let step = self.state.global_step;
                let epoch_f = self.state.micro_step as f64 / n_batches.max(1) as f64;
                bar.set_position(step as u64);
                if step % self.args.logging_steps.max(1) == 0 || step == total {
                    let secs = last_log.elapsed().as_secs_f64().max(1e-9);
                    let entry = LogEntry {
                        step,
                        epoch: epoch_f,
                        loss: Some(loss_acc / loss_n.max(1) as f64),
                        learning_rate: last_lr,
                        grad_norm: last_grad_norm,
                        tokens_per_second: Some(tokens as f64 / secs),
                        eval_loss: None,
                        eval_accuracy: None,
                    };
                    bar.set_message(format!(
                        "loss {:.4} lr {:.2e} {:.0} tok/s",
                        entry.loss.unwrap_or(f64::NAN),
                        last_lr.unwrap_or(0.0),
                        entry.tokens_per_second.unwrap_or(0.0)
                    ));
                    self.push_log(entry)?;
                    (loss_acc, loss_n, tokens, last_log) = (0.0, 0, 0, Instant::now());
                }
                if let (Some(every), Some(ev)) = (self.args.eval_steps, eval) {
                    if step % every == 0 && step != total {
                        self.eval_and_log(ev, loss_fn, pad_id, step, epoch_f)?;
                    }
                }
                if let Some(every) = self.args.save_steps {
                    if step % every == 0 {
                        self.save_checkpoint(&self.args.output_dir.join(format!("checkpoint-{step}")))?;
                    }
                }
                if step >= total {
                    break 'outer;
                }
            }
            epoch += 1;
        }
        bar.finish();
        for cb in &mut self.callbacks {
            cb.on_train_end(self.peft, self.state.global_step)?;
        }
        let mut final_eval = None;
        if let Some(ev) = eval {
            let epoch_f = self.state.micro_step as f64 / n_batches.max(1) as f64;
            final_eval = Some(self.eval_and_log(ev, loss_fn, pad_id, self.state.global_step, epoch_f)?);
        }
        self.peft.save_pretrained(
            &self.args.output_dir,
            &SaveOptions { selected_adapters: Some(vec![self.adapter.clone()]), ..Default::default() },
        )?;
        crate::plot::loss_curve(&self.args.output_dir.join("loss.png"), &self.state.log)?;
        let summary = TrainSummary {
            steps: self.state.global_step,
            parameters: self.peft.num_parameters(),
            seconds: start.elapsed().as_secs_f64(),
            peak_rss_bytes: peak_rss_bytes(),
            final_loss: self.state.log.iter().rev().find_map(|e| e.loss),
            eval: final_eval,
            log: self.state.log.clone(),
        };
        write_json(&self.args.output_dir.join("train_summary.json"), &summary)?;
        Ok(summary)
    }

    fn eval_and_log(
        &mut self,
        data: &Dataset,
        loss_fn: &LossFn<M>,
        pad_id: i64,
        step: usize,
        epoch: f64,
    ) -> Result<EvalMetrics> {
        let m = self.evaluate(data, loss_fn, pad_id)?;
        self.push_log(LogEntry {
            step,
            epoch,
            loss: None,
            learning_rate: None,
            grad_norm: None,
            tokens_per_second: None,
            eval_loss: Some(m.loss),
            eval_accuracy: m.accuracy,
        })?;
        Ok(m)
    }

    /// Records a log entry; `metrics.jsonl` holds this run's entries (those of the checkpoint it resumed
    /// from included), rewritten atomically, so a new run never appends to an old run's log.
    fn push_log(&mut self, entry: LogEntry) -> Result<()> {
        let line = serde_json::to_string(&entry).map_err(|e| TrainError::Config(e.to_string()))?;
        log::info!("{line}");
        self.state.log.push(entry);
        self.write_metrics()?;
        if let Some(entry) = self.state.log.last() {
            for cb in &mut self.callbacks {
                cb.on_log(self.peft, entry)?;
            }
        }
        Ok(())
    }

    fn write_metrics(&self) -> Result<()> {
        let mut text = String::new();
        for e in &self.state.log {
            text.push_str(&serde_json::to_string(e).map_err(|e| TrainError::Config(e.to_string()))?);
            text.push('\n');
        }
        peft_core::io::atomic_write(&self.args.output_dir.join(METRICS_FILE), text.as_bytes())?;
        Ok(())
    }

    /// Writes a checkpoint: the adapter, the optimizer state, the trainer state and the arguments, all in
    /// one step (a staged directory swapped into place), so a checkpoint directory is complete or absent.
    ///
    /// # Errors
    /// I/O failures.
    pub fn save_checkpoint(&self, dir: &Path) -> Result<()> {
        let mut stage = peft_core::durable::StagedDir::new(dir, false)?;
        self.peft.save_pretrained_staged(
            &mut stage,
            &SaveOptions { selected_adapters: Some(vec![self.adapter.clone()]), ..Default::default() },
        )?;
        stage.write(OPTIMIZER_FILE, &peft_core::io::safetensors_bytes(&self.optimizer.state_tensors())?)?;
        stage.write(STATE_FILE, json_bytes(&self.state)?.as_slice())?;
        stage.write(ARGS_FILE, json_bytes(&self.args)?.as_slice())?;
        stage.commit()?;
        Ok(())
    }

    /// Restores a checkpoint written by [`Trainer::save_checkpoint`]: adapter weights, optimizer state and
    /// the step; [`Trainer::train`] then continues where it stopped.
    ///
    /// # Errors
    /// A missing or inconsistent checkpoint.
    pub fn resume_from(&mut self, dir: &Path) -> Result<()> {
        // Only a complete checkpoint is taken; nothing is changed before all its files are found.
        let required = [
            peft_core::peft_config::keys::CONFIG_NAME,
            peft_core::peft_config::keys::SAFETENSORS_WEIGHTS_NAME,
            OPTIMIZER_FILE,
            STATE_FILE,
        ];
        let missing: Vec<&str> = required.into_iter().filter(|f| !dir.join(f).is_file()).collect();
        if !missing.is_empty() {
            return Err(TrainError::Checkpoint(format!(
                "{} is not a complete checkpoint (missing {})",
                dir.display(),
                missing.join(", ")
            )));
        }
        let weights = dir.join(peft_core::peft_config::keys::SAFETENSORS_WEIGHTS_NAME);
        self.peft.load_adapter_weights(&self.adapter, &weights)?;
        let state: BTreeMap<String, Tensor> =
            peft_core::io::read_safetensors(&dir.join("optimizer.safetensors"))?
                .into_iter()
                .map(|t| (t.key, t.tensor))
                .collect();
        self.optimizer.load_state_tensors(&state)?;
        let path = dir.join("trainer_state.json");
        let text = peft_core::peft_config::files::read_text_bounded(
            &path,
            peft_core::peft_config::files::MAX_JSON_BYTES,
        )
        .map_err(|source| TrainError::Io { path: path.clone(), source })?;
        self.state = serde_json::from_str(&text)
            .map_err(|e| TrainError::Checkpoint(format!("{}: {e}", path.display())))?;
        Ok(())
    }
}

/// A checkpoint's optimizer state.
const OPTIMIZER_FILE: &str = "optimizer.safetensors";
/// A checkpoint's trainer state (step, log).
const STATE_FILE: &str = "trainer_state.json";
/// The training arguments, in checkpoints and in the output directory.
const ARGS_FILE: &str = "training_args.json";
/// One JSON line per log entry, rewritten whole (atomically) at each entry.
const METRICS_FILE: &str = "metrics.jsonl";

fn json_bytes<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    serde_json::to_vec_pretty(value).map_err(|e| TrainError::Config(e.to_string()))
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    peft_core::io::atomic_write(path, &json_bytes(value)?)?;
    Ok(())
}
