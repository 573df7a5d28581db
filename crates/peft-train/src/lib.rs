//! Training for peft-rs: what PEFT users get from transformers' `Trainer`, for `peft_core::PeftModel`.
//!
//! * [`Trainer`] — AdamW with decay groups (PyTorch's exact update, resumable), constant / linear / cosine
//!   schedules with warmup, gradient accumulation, gradient-norm clipping, evaluation, deterministic
//!   seeding, checkpoints (adapter + optimizer state + step), a clear stop on a non-finite loss, a progress
//!   bar, `metrics.jsonl`, `loss.png` and a summary.
//! * [`StepCallback`] — hooks after backward, after the optimizer step (gradients still present), on log
//!   and at the end of training, registered on the [`Trainer`]; [`adalora::AdaLoraCallback`] drives
//!   AdaLoRA's rank allocation (added by the trainer itself for AdaLoRA adapters).
//! * [`optim`] — PEFT's LoRA+ grouping and LoRA-FA optimizer.
//! * [`data`] — JSONL datasets (text, prompt/completion, chat, classification), tokenized with
//!   `tokenizer.json`, padded, truncated and optionally grouped by length.
//!
//! Mixed precision: load the base model in bf16/f16 (`peft_models::LoadOptions::kind`) and the adapters
//! stay fp32, as PEFT's `autocast_adapter_dtype` does. Gradient checkpointing needs a custom autograd
//! function, which tch cannot define; see `docs/ARCHITECTURE.md`.

pub mod adalora;
pub mod args;
pub mod callback;
pub mod chat;
pub mod data;
pub mod error;
pub mod optim;
pub mod plot;
pub mod schedule;
pub mod trainer;

pub use callback::StepCallback;
pub use data::{Batch, DataOptions, Dataset, Example, Format, Target};
pub use error::{Result, TrainError};
pub use schedule::Schedule;
pub use trainer::{hf_loss, EvalMetrics, LogEntry, OptimizerKind, TrainSummary, Trainer, TrainingArgs};

/// The label value losses ignore.
pub const IGNORE_INDEX: i64 = peft_models::task::IGNORE_INDEX;
