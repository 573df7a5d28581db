//! Quantizing a model's linear layers in place (transformers' `load_in_4bit` / `load_in_8bit`), and the
//! [`QuantizedLinear`] storage peft-core's `LinearBase` computes with.

use crate::error::Result;
use crate::int8::Int8Weight;
use crate::layers::{Linear4bit, Linear8bitLt, Quant4Options};
use crate::QuantError;
use peft_core::layer::BaseLayer;
use peft_core::nn::{LinearBase, QuantizedLinear};
use peft_core::Adaptable;
use std::any::Any;
use tch::{Kind, Tensor};

/// What to quantize linear layers to.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum QuantizeSpec {
    /// bitsandbytes 4-bit (`load_in_4bit`).
    FourBit(Quant4Options),
    /// LLM.int8 (`load_in_8bit`) with this outlier threshold (`llm_int8_threshold`, 6.0 by default).
    EightBit {
        /// Outlier threshold; 0 disables the decomposition.
        threshold: f64,
    },
    /// Int8 weight-only per output channel on libtorch's `_weight_int8pack_mm` (inference; training
    /// falls back to dense matmuls).
    Int8WeightOnly,
    /// Int4 weight-only per group on libtorch's int4 CPU kernel (inference; training falls back to dense
    /// matmuls).
    Int4WeightOnly {
        /// Input values per group: 32, 64, 128 or 256.
        group_size: i64,
    },
}

impl QuantizeSpec {
    /// transformers' defaults for `load_in_4bit=True`: FP4 without double quantization (users usually
    /// choose NF4 + double quantization explicitly), compute dtype float32.
    pub fn load_in_4bit() -> Self {
        Self::FourBit(Quant4Options {
            quant_type: crate::QuantType4::Fp4,
            blocksize: 64,
            double_quant: false,
            compute_dtype: Some(Kind::Float),
        })
    }

    /// QLoRA's setup: NF4, double quantization, compute dtype float32.
    pub fn qlora() -> Self {
        Self::FourBit(Quant4Options { compute_dtype: Some(Kind::Float), ..Quant4Options::default() })
    }

    /// transformers' defaults for `load_in_8bit=True` (threshold 6.0).
    pub fn load_in_8bit() -> Self {
        Self::EightBit { threshold: 6.0 }
    }

    /// Quantizes one dense `(out, in)` weight into storage for a [`LinearBase`].
    ///
    /// # Errors
    /// A weight that is not a 2-D float tensor.
    pub fn quantize(&self, weight: &Tensor) -> Result<Box<dyn QuantizedLinear>> {
        Ok(match self {
            Self::FourBit(opts) => Box::new(Linear4bit::quantize(weight, *opts)?),
            Self::EightBit { threshold } => Box::new(Linear8bitLt::quantize(weight, *threshold)?),
            Self::Int8WeightOnly => Box::new(crate::affine::Int8WeightOnly::quantize(weight)?),
            Self::Int4WeightOnly { group_size } => {
                Box::new(crate::affine::Int4WeightOnly::quantize(weight, *group_size)?)
            }
        })
    }
}

impl QuantizedLinear for Linear4bit {
    fn class_name(&self) -> &'static str {
        "Linear4bit"
    }
    fn in_features(&self) -> i64 {
        self.state.shape[1]
    }
    fn out_features(&self) -> i64 {
        self.state.shape[0]
    }
    fn forward(&self, x: &Tensor, bias: Option<&Tensor>) -> Tensor {
        self.forward_with(x, bias)
    }
    fn dequantize(&self) -> Tensor {
        Linear4bit::dequantize(self)
    }
    fn requantize(&self, weight: &Tensor) -> peft_core::Result<Box<dyn QuantizedLinear>> {
        let opts = Quant4Options {
            quant_type: self.state.quant_type,
            blocksize: self.state.blocksize,
            double_quant: self.state.nested.is_some(),
            compute_dtype: self.compute_dtype,
        };
        Ok(Box::new(Linear4bit::quantize(&weight.to_kind(self.state.dtype), opts)?))
    }
    fn compute_kind(&self) -> Kind {
        self.compute_dtype.unwrap_or(self.state.dtype)
    }
    fn share(&self) -> Box<dyn QuantizedLinear> {
        Box::new(Linear4bit {
            packed: self.packed.shallow_clone(),
            state: self.state.share(),
            compute_dtype: self.compute_dtype,
        })
    }
    fn state_dict(&self, prefix: &str) -> peft_core::Result<Vec<(String, Tensor)>> {
        Ok(Linear4bit::state_dict(self, prefix)?)
    }
    fn storage_bytes(&self) -> i64 {
        let bytes = |t: &Tensor| t.numel() as i64 * t.kind().elt_size_in_bytes() as i64;
        let mut n = bytes(&self.packed) + bytes(&self.state.absmax) + bytes(&self.state.code);
        if let Some(nested) = &self.state.nested {
            n += bytes(&nested.absmax) + bytes(&nested.code) + 4;
        }
        n
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

impl QuantizedLinear for Linear8bitLt {
    fn class_name(&self) -> &'static str {
        "Linear8bitLt"
    }
    fn in_features(&self) -> i64 {
        self.weight.cb.size()[1]
    }
    fn out_features(&self) -> i64 {
        self.weight.cb.size()[0]
    }
    fn forward(&self, x: &Tensor, bias: Option<&Tensor>) -> Tensor {
        self.forward_with(x, bias)
    }
    fn dequantize(&self) -> Tensor {
        self.weight.dequantize(Kind::Float)
    }
    fn requantize(&self, weight: &Tensor) -> peft_core::Result<Box<dyn QuantizedLinear>> {
        let q = Linear8bitLt::quantize(weight, self.threshold)?;
        q.set_training(self.is_training());
        Ok(Box::new(q))
    }
    fn compute_kind(&self) -> Kind {
        Kind::Float
    }
    fn share(&self) -> Box<dyn QuantizedLinear> {
        let w = Int8Weight { cb: self.weight.cb.shallow_clone(), scb: self.weight.scb.shallow_clone() };
        let q = Linear8bitLt::new(w, self.threshold);
        q.set_training(self.is_training());
        Box::new(q)
    }
    fn state_dict(&self, prefix: &str) -> peft_core::Result<Vec<(String, Tensor)>> {
        Ok(Linear8bitLt::state_dict(self, prefix))
    }
    fn storage_bytes(&self) -> i64 {
        self.weight.cb.numel() as i64 + 4 * self.weight.scb.numel() as i64
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// Whether a module is left dense: the output embedding (`lm_head`, as transformers keeps it) and every
/// name in `skip` (a full module name, or a name ending in `.<skip>`).
fn skipped(name: &str, output_embedding: Option<&str>, skip: &[String]) -> bool {
    output_embedding == Some(name) || skip.iter().any(|s| name == s || name.ends_with(&format!(".{s}")))
}

/// The layers `quantize_model` (and quantize-on-load) convert: every dense `nn.Linear` (not a `Conv1D`,
/// not already quantized) except the output embedding and the modules in `skip`, in module order.
pub fn quantization_targets<M: Adaptable + ?Sized>(model: &M, skip: &[String]) -> Vec<String> {
    let output = model.output_embedding();
    let mut out = Vec::new();
    model.visit_layers(&mut |layer| {
        let name = layer.name();
        let dense_linear = layer
            .base()
            .as_any()
            .downcast_ref::<LinearBase>()
            .is_some_and(|l| !l.fan_in_fan_out && l.quantized.is_none());
        if dense_linear && !skipped(name, output.as_deref(), skip) {
            out.push(name.to_string());
        }
    });
    out
}

/// Installs quantized storage (by layer name) into the model's linear layers, releasing their dense
/// weights.
///
/// # Errors
/// A name that is no linear layer of the model, or storage whose shape does not fit the layer.
pub fn install_quantized<M: Adaptable + ?Sized>(
    model: &mut M,
    mut storages: std::collections::BTreeMap<String, Box<dyn QuantizedLinear>>,
) -> Result<()> {
    model
        .visit_layers_mut(&mut |layer| {
            let Some(q) = storages.remove(layer.name()) else { return Ok(()) };
            let name = layer.name().to_string();
            let (base, _) = layer.parts_mut();
            match base.as_any_mut().and_then(|a| a.downcast_mut::<LinearBase>()) {
                Some(lin) => lin.set_quantized(q),
                None => Err(peft_core::PeftError::Invalid(format!("`{name}` is not a linear layer"))),
            }
        })
        .map_err(|e| QuantError::Invalid(e.to_string()))?;
    if !storages.is_empty() {
        return Err(QuantError::Invalid(format!(
            "quantized weights for modules the model does not have: {:?}",
            storages.keys().collect::<Vec<_>>()
        )));
    }
    Ok(())
}

/// Quantizes every dense `nn.Linear` of `model` in place (releasing the dense weights), except the
/// output embedding and the modules in `skip` — what `from_pretrained(..., quantization_config=
/// BitsAndBytesConfig(load_in_4bit=True))` does. Returns the names of the quantized layers.
///
/// Call it before attaching adapters.
///
/// # Errors
/// A layer that already has adapters, or a quantization failure (named by module).
pub fn quantize_model<M: Adaptable + ?Sized>(
    model: &mut M,
    spec: &QuantizeSpec,
    skip: &[String],
) -> Result<Vec<String>> {
    let targets = quantization_targets(model, skip);
    let mut storages = std::collections::BTreeMap::new();
    let mut failure = None;
    model.visit_layers(&mut |layer| {
        let name = layer.name();
        if failure.is_some() || !targets.iter().any(|t| t == name) {
            return;
        }
        if !layer.slots().is_empty() {
            failure = Some(QuantError::Invalid(format!(
                "`{name}` already has adapters; quantize the base model before attaching them"
            )));
            return;
        }
        let Some(lin) = layer.base().as_any().downcast_ref::<LinearBase>() else { return };
        match spec.quantize(&lin.weight.detach()) {
            Ok(q) => drop(storages.insert(name.to_string(), q)),
            Err(e) => failure = Some(QuantError::Invalid(format!("quantizing `{name}`: {e}"))),
        }
    });
    if let Some(e) = failure {
        return Err(e);
    }
    install_quantized(model, storages)?;
    Ok(targets)
}

/// Switches every LLM.int8 layer of `model` between training mode (dequantize and matmul, as
/// bitsandbytes does for `module.train()` on CPU) and inference mode (int8 matmul).
pub fn set_int8_training<M: Adaptable + ?Sized>(model: &M, training: bool) {
    model.visit_layers(&mut |layer| {
        let base: &dyn BaseLayer = layer.base();
        if let Some(q) = base.as_any().downcast_ref::<LinearBase>().and_then(|l| l.quantized.as_ref()) {
            if let Some(int8) = q.as_any().downcast_ref::<Linear8bitLt>() {
                int8.set_training(training);
            }
        }
    });
}

/// Bytes held by the quantized weights of `model`, and the number of quantized layers.
pub fn quantized_storage<M: Adaptable + ?Sized>(model: &M) -> (i64, usize) {
    let mut bytes = 0;
    let mut layers = 0;
    model.visit_layers(&mut |layer| {
        if let Some(q) = layer.base().as_any().downcast_ref::<LinearBase>().and_then(|l| l.quantized.as_ref())
        {
            bytes += q.storage_bytes();
            layers += 1;
        }
    });
    (bytes, layers)
}

/// Replaces every quantized linear of `model` by its dense dequantized weight in `kind` (the dtype the
/// rest of the model computes in; transformers'
/// `model.dequantize()`): the way to a 16-bit merged model — dequantize, then merge adapters without
/// re-quantizing, then save. Returns the names of the layers converted.
///
/// # Errors
/// A libtorch failure while writing a weight.
pub fn dequantize_model<M: Adaptable + ?Sized>(model: &mut M, kind: Kind) -> Result<Vec<String>> {
    let mut done = Vec::new();
    model
        .visit_layers_mut(&mut |layer| {
            let name = layer.name().to_string();
            let (base, _) = layer.parts_mut();
            let Some(lin) = base.as_any_mut().and_then(|a| a.downcast_mut::<LinearBase>()) else {
                return Ok(());
            };
            let Some(q) = lin.quantized.take() else { return Ok(()) };
            let dense = q.dequantize().to_kind(kind);
            tch::no_grad(|| lin.weight.set_data(&dense));
            if let Some(b) = lin.bias.as_mut() {
                let bias = b.to_kind(kind);
                tch::no_grad(|| b.set_data(&bias));
            }
            done.push(name);
            Ok(())
        })
        .map_err(|e| QuantError::Invalid(e.to_string()))?;
    Ok(done)
}
