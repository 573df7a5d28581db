//! bitsandbytes-compatible quantized bases for peft-rs.
//!
//! * [`four_bit`]: NF4 / FP4 blockwise quantization with optional double quantization —
//!   [`quantize_4bit`] / [`dequantize_4bit`] give bit-identical results to bitsandbytes, and
//!   [`QuantState4::state_dict`] / [`QuantState4::from_state_dict`] read and write the quant-state tensors
//!   bitsandbytes and transformers put in 4-bit checkpoints (`weight.absmax`, `weight.quant_map`,
//!   `weight.nested_absmax`, `weight.nested_quant_map`, `weight.quant_state.bitsandbytes__nf4`).
//! * [`blockwise`]: 8-bit blockwise quantization with the dynamic map (the second level of double
//!   quantization), matching bitsandbytes' CPU kernel.
//! * [`int8`]: LLM.int8 row-wise quantization (`CB`, `SCB`) and its matmuls.
//! * [`layers`]: [`Linear4bit`] and [`Linear8bitLt`], frozen bases LoRA and the other linear methods
//!   attach to; [`model`]: quantizing a model's linear layers (`load_in_4bit` / `load_in_8bit`).
//! * [`autograd`]: the QLoRA matmul (C++ autograd function: no dense weight kept for backward).
//! * [`cuda`]: bitsandbytes' CUDA kernels for 4-bit layers on GPUs (loaded at run time from its wheel,
//!   probed, with a clean fallback), and the CUDA caching allocator's memory counters.
//! * [`affine`]: int8 / int4 weight-only formats on libtorch's packed kernels.
//! * [`loftq`]: LoftQ initialisation (`init_lora_weights="loftq"`).
//!
//! ```
//! use peft_quant::{dequantize_4bit, quantize_4bit, QuantType4};
//! use tch::{Device, Kind, Tensor};
//!
//! let w = Tensor::randn([2048, 2048], (Kind::Float, Device::Cpu));
//! let (packed, state) = quantize_4bit(&w, 64, QuantType4::Nf4, true).unwrap();
//! assert_eq!(packed.size(), [2048 * 2048 / 2, 1]);
//! assert!(state.bits_per_value() < 4.13); // 4 bits + 8-bit maxima per 64 + f32 per 16 384 + code tables
//! let back = dequantize_4bit(&packed, &state).unwrap();
//! assert_eq!(back.size(), [2048, 2048]);
//! ```

pub mod affine;
pub mod autograd;
pub mod blockwise;
pub mod codes;
pub mod cuda;
pub mod error;
pub mod four_bit;
pub mod int8;
pub mod layers;
pub mod loftq;
pub mod model;

pub use affine::{Int4WeightOnly, Int8WeightOnly};
pub use blockwise::{dequantize_blockwise, quantize_blockwise};
pub use codes::{dynamic_map, QuantType4};
pub use error::{QuantError, Result};
pub use four_bit::{dequantize_4bit, dequantize_4bit_to, quantize_4bit, NestedState, QuantState4};
pub use int8::{vectorwise_quant, Int8Weight};
pub use layers::{Linear4bit, Linear8bitLt, Quant4Options};
pub use loftq::loftq_init;
pub use model::{
    dequantize_model, install_quantized, quantization_targets, quantize_model, quantized_storage,
    set_int8_training, QuantizeSpec,
};
