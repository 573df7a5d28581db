//! GGUF checkpoints for peft-rs: a strict reader of the GGUF container and the dequantization the `gguf`
//! package performs (the code transformers runs when it loads a `.gguf` file), bit for bit.
//!
//! * [`Gguf`]: open and check a file; its metadata ([`MetaValue`]), its tensor directory ([`TensorInfo`])
//!   and each tensor as `f32` values or a [`tch::Tensor`].
//! * [`quant`]: the GGML types peft-rs reads (F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 and the
//!   K-quants Q2_K–Q6_K) and their block-parallel dequantization.
//!
//! Every malformed file gives one [`GgufError`] line naming the file, what is wrong and where.
//!
//! ```no_run
//! let file = peft_gguf::Gguf::open("SmolLM2-135M-Instruct.Q4_1.gguf")?;
//! assert_eq!(file.require_str("general.architecture")?, "llama");
//! let embed = file.tensor("token_embd.weight")?; // (vocab, hidden), f32
//! println!("{:?}", embed.size());
//! # Ok::<(), peft_gguf::GgufError>(())
//! ```

pub mod error;
pub mod quant;
mod reader;

pub use error::{GgufError, Result};
pub use quant::GgmlType;
pub use reader::{Gguf, MetaValue, TensorInfo};
