//! Training arguments, named and checked as transformers' `TrainingArguments`.

use crate::error::{Result, TrainError};
use crate::schedule::Schedule;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Which optimizer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
#[serde(tag = "name", rename_all = "snake_case")]
pub enum OptimizerKind {
    /// `torch.optim.AdamW` with transformers' decay groups.
    #[default]
    Adamw,
    /// PEFT's LoRA+ (`create_loraplus_optimizer` with AdamW).
    Loraplus {
        /// `loraplus_lr_ratio`: B's learning rate is `lr × ratio`.
        ratio: f64,
        /// `loraplus_lr_embedding`.
        lr_embedding: f64,
    },
    /// PEFT's LoRA-FA (A frozen).
    Lorafa,
}

/// Training arguments, named as transformers' `TrainingArguments`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TrainingArgs {
    /// Where checkpoints, the final adapter and the metrics go.
    pub output_dir: PathBuf,
    /// Peak learning rate.
    pub learning_rate: f64,
    /// Decoupled weight decay (not on biases).
    pub weight_decay: f64,
    /// Adam beta1.
    pub adam_beta1: f64,
    /// Adam beta2.
    pub adam_beta2: f64,
    /// Adam epsilon.
    pub adam_epsilon: f64,
    /// Gradient-norm clipping (`None` = off).
    pub max_grad_norm: Option<f64>,
    /// Epochs (may be fractional).
    pub num_train_epochs: f64,
    /// Optimizer steps; overrides epochs when set.
    pub max_steps: Option<usize>,
    /// Schedule.
    pub lr_scheduler_type: Schedule,
    /// Warmup steps.
    pub warmup_steps: usize,
    /// Warmup as a fraction of all steps (used when `warmup_steps` is 0).
    pub warmup_ratio: f64,
    /// Examples per micro-batch.
    pub per_device_train_batch_size: usize,
    /// Examples per evaluation batch.
    pub per_device_eval_batch_size: usize,
    /// Micro-batches per optimizer step.
    pub gradient_accumulation_steps: usize,
    /// Log every this many steps.
    pub logging_steps: usize,
    /// Evaluate every this many steps (and at the end).
    pub eval_steps: Option<usize>,
    /// Save a checkpoint every this many steps.
    pub save_steps: Option<usize>,
    /// Seed of libtorch's RNG (dropout) and of data shuffling.
    pub seed: u64,
    /// Shuffle examples every epoch.
    pub shuffle: bool,
    /// Batch examples of similar length together.
    pub group_by_length: bool,
    /// The optimizer.
    pub optimizer: OptimizerKind,
    /// Show a progress bar.
    pub progress: bool,
}

impl Default for TrainingArgs {
    fn default() -> Self {
        Self {
            output_dir: PathBuf::from("output"),
            learning_rate: 5e-5,
            weight_decay: 0.0,
            adam_beta1: 0.9,
            adam_beta2: 0.999,
            adam_epsilon: 1e-8,
            max_grad_norm: Some(1.0),
            num_train_epochs: 3.0,
            max_steps: None,
            lr_scheduler_type: Schedule::Linear,
            warmup_steps: 0,
            warmup_ratio: 0.0,
            per_device_train_batch_size: 8,
            per_device_eval_batch_size: 8,
            gradient_accumulation_steps: 1,
            logging_steps: 10,
            eval_steps: None,
            save_steps: None,
            seed: 42,
            shuffle: true,
            group_by_length: false,
            optimizer: OptimizerKind::Adamw,
            progress: true,
        }
    }
}

impl TrainingArgs {
    /// Checks every argument before any work is done: finite, non-negative rates and decays, betas in
    /// `[0, 1)`, a positive number of epochs (or of `max_steps`), non-zero batch sizes and step intervals
    /// (an interval of 0 would divide by zero), a warmup ratio in `[0, 1]`.
    ///
    /// # Errors
    /// [`TrainError::Config`] naming the argument and its value.
    pub fn validate(&self) -> Result<()> {
        let bad = |name: &str, value: &dyn std::fmt::Display, want: &str| {
            Err(TrainError::Config(format!("{name} = {value}: {want}")))
        };
        for (name, value) in [
            ("learning_rate", self.learning_rate),
            ("weight_decay", self.weight_decay),
            ("adam_epsilon", self.adam_epsilon),
        ] {
            if !value.is_finite() || value < 0.0 {
                return bad(name, &value, "must be a finite number ≥ 0");
            }
        }
        for (name, value) in [("adam_beta1", self.adam_beta1), ("adam_beta2", self.adam_beta2)] {
            if !(0.0..1.0).contains(&value) {
                return bad(name, &value, "must be in [0, 1)");
            }
        }
        if let Some(norm) = self.max_grad_norm {
            if !norm.is_finite() || norm <= 0.0 {
                return bad(
                    "max_grad_norm",
                    &norm,
                    "must be a finite number > 0 (or unset to disable clipping)",
                );
            }
        }
        match self.max_steps {
            Some(0) => return bad("max_steps", &0, "must be at least 1"),
            Some(_) => {}
            None if !self.num_train_epochs.is_finite() || self.num_train_epochs <= 0.0 => {
                return bad("num_train_epochs", &self.num_train_epochs, "must be a finite number > 0");
            }
            None => {}
        }
        if !(0.0..=1.0).contains(&self.warmup_ratio) {
            return bad("warmup_ratio", &self.warmup_ratio, "must be in [0, 1]");
        }
        for (name, value) in [
            ("per_device_train_batch_size", Some(self.per_device_train_batch_size)),
            ("per_device_eval_batch_size", Some(self.per_device_eval_batch_size)),
            ("gradient_accumulation_steps", Some(self.gradient_accumulation_steps)),
            ("logging_steps", Some(self.logging_steps)),
            ("eval_steps", self.eval_steps),
            ("save_steps", self.save_steps),
        ] {
            if value == Some(0) {
                return bad(name, &0, "must be at least 1");
            }
        }
        if let OptimizerKind::Loraplus { ratio, lr_embedding } = self.optimizer {
            if !ratio.is_finite() || ratio <= 0.0 {
                return bad("loraplus_lr_ratio", &ratio, "must be a finite number > 0");
            }
            if !lr_embedding.is_finite() || lr_embedding < 0.0 {
                return bad("loraplus_lr_embedding", &lr_embedding, "must be a finite number ≥ 0");
            }
        }
        Ok(())
    }
}
