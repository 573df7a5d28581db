//! Checkpoints saved quantized by transformers + bitsandbytes (`quantization_config` with
//! `quant_method: "bitsandbytes"` in config.json): the packed 4-bit weights with their quant states, or
//! the int8 weights with `SCB`, installed as peft-quant storage in the model's linear layers.

use crate::config::HfConfig;
use crate::error::{ModelError, Result};
use crate::weights::{checkpoint_files, LoadSpec};
use peft_core::nn::QuantizedLinear;
use peft_core::Adaptable;
use peft_quant::{Int8Weight, Linear4bit, Linear8bitLt, QuantState4};
use std::collections::BTreeMap;
use std::path::PathBuf;
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

const QUANT_SUFFIXES: [&str; 7] = [
    ".weight.absmax",
    ".weight.quant_map",
    ".weight.nested_absmax",
    ".weight.nested_quant_map",
    ".weight.quant_state.bitsandbytes__nf4",
    ".weight.quant_state.bitsandbytes__fp4",
    ".SCB",
];

#[derive(Debug)]
enum Bits {
    Four { compute: Kind },
    Eight { threshold: f64 },
}

/// The quantized tensors of a bitsandbytes checkpoint, read before the dense weights load.
#[derive(Debug)]
pub(crate) struct Prequantized {
    bits: Bits,
    /// Every quantization tensor, by checkpoint key.
    tensors: BTreeMap<String, Tensor>,
    /// (checkpoint module prefix, layer name) of each quantized linear.
    modules: Vec<(String, String)>,
    source: PathBuf,
    device: Device,
}

fn kind_from_name(name: &str) -> Option<Kind> {
    match name.trim_start_matches("torch.") {
        "float32" => Some(Kind::Float),
        "bfloat16" => Some(Kind::BFloat16),
        "float16" => Some(Kind::Half),
        _ => None,
    }
}

impl Prequantized {
    /// Reads the quantization tensors when config.json declares a bitsandbytes quantization.
    pub(crate) fn scan(
        dir: &std::path::Path,
        config: &HfConfig,
        vs: &VarStore,
        spec: &LoadSpec,
    ) -> Result<Option<Self>> {
        let Some(qc) = config.raw().get("quantization_config") else { return Ok(None) };
        let bad = |what: String| {
            ModelError::Input(format!("{}: quantization_config: {what}", config.path().display()))
        };
        let method = qc.get("quant_method").and_then(|v| v.as_str()).unwrap_or("");
        if method != "bitsandbytes" {
            return Err(bad(format!(
                "quant_method {method:?} is not supported (peft-rs reads bitsandbytes 4-bit and 8-bit checkpoints)"
            )));
        }
        let flag = |k: &str| {
            qc.get(k)
                .or_else(|| qc.get(format!("_{k}")))
                .and_then(serde_json::Value::as_bool)
                .unwrap_or(false)
        };
        let bits = if flag("load_in_4bit") {
            let name = qc.get("bnb_4bit_compute_dtype").and_then(|v| v.as_str()).unwrap_or("float32");
            let compute = kind_from_name(name)
                .ok_or_else(|| bad(format!("unsupported bnb_4bit_compute_dtype {name:?}")))?;
            Bits::Four { compute }
        } else if flag("load_in_8bit") {
            Bits::Eight {
                threshold: qc.get("llm_int8_threshold").and_then(serde_json::Value::as_f64).unwrap_or(6.0),
            }
        } else {
            return Err(bad("neither load_in_4bit nor load_in_8bit is set".into()));
        };
        let vars = vs.variables();
        let mut tensors = BTreeMap::new();
        let mut modules = Vec::new();
        for file in checkpoint_files(dir)? {
            peft_core::io::for_each_tensor::<ModelError>(&file, |key, t| {
                if QUANT_SUFFIXES.iter().any(|s| key.ends_with(s)) || key.ends_with(".weight_format") {
                    tensors.insert(key.to_string(), t);
                } else if key.ends_with(".weight") && matches!(t.kind(), Kind::Uint8 | Kind::Int8) {
                    let module = key.trim_end_matches(".weight").to_string();
                    let mut candidates = vec![module.clone()];
                    if let Some(p) = &spec.prefix {
                        match module.strip_prefix(&format!("{p}.")) {
                            Some(stripped) => candidates.push(stripped.to_string()),
                            None => candidates.push(format!("{p}.{module}")),
                        }
                    }
                    let layer = candidates
                        .into_iter()
                        .find(|c| vars.contains_key(&format!("{c}.weight")))
                        .ok_or_else(|| ModelError::UnexpectedWeights {
                            path: file.clone(),
                            keys: vec![key.to_string()],
                        })?;
                    tensors.insert(key.to_string(), t);
                    modules.push((module, layer));
                }
                Ok(())
            })?;
        }
        Ok(Some(Self { bits, tensors, modules, source: dir.to_path_buf(), device: vs.device() }))
    }

    /// Keeps the dense loader away from the quantized tensors and from the weights they replace.
    pub(crate) fn adjust_spec(&self, spec: &mut LoadSpec) {
        spec.ignore_keys.extend(self.tensors.keys().cloned());
        spec.provided_elsewhere.extend(self.modules.iter().map(|(_, layer)| format!("{layer}.weight")));
    }

    fn storage(&self, module: &str) -> Result<Box<dyn QuantizedLinear>> {
        let source = self.source.display().to_string();
        let err = |e: peft_quant::QuantError| ModelError::Input(format!("{source}: `{module}`: {e}"));
        let get = |k: &str| self.tensors.get(k).map(|t| t.to_device(self.device));
        let weight = get(&format!("{module}.weight")).ok_or_else(|| ModelError::MissingWeights {
            path: self.source.clone(),
            keys: vec![format!("{module}.weight")],
        })?;
        Ok(match self.bits {
            Bits::Four { compute } => {
                let state =
                    QuantState4::from_state_dict(&get, &format!("{module}."), &source).map_err(err)?;
                Box::new(Linear4bit::from_parts(weight, state, Some(compute)).map_err(err)?)
            }
            Bits::Eight { threshold } => {
                let scb = get(&format!("{module}.SCB")).ok_or_else(|| ModelError::MissingWeights {
                    path: self.source.clone(),
                    keys: vec![format!("{module}.SCB")],
                })?;
                let w = Int8Weight::new(weight, scb, &format!("{source}: `{module}`")).map_err(err)?;
                Box::new(Linear8bitLt::new(w, threshold))
            }
        })
    }

    /// Installs the quantized storage in the model's linear layers.
    pub(crate) fn install<M: Adaptable + ?Sized>(self, model: &mut M) -> Result<()> {
        let storages = self
            .modules
            .iter()
            .map(|(module, layer)| Ok((layer.clone(), self.storage(module)?)))
            .collect::<Result<BTreeMap<_, _>>>()?;
        peft_quant::install_quantized(model, storages)
            .map_err(|e| ModelError::Input(format!("{}: {e}", self.source.display())))
    }
}

/// `<layer>.weight` variable name → layer name, for every layer quantize-on-load converts
/// ([`peft_quant::quantization_targets`]).
pub(crate) fn quantizable_weights<M: Adaptable + ?Sized>(model: &M) -> BTreeMap<String, String> {
    peft_quant::quantization_targets(model, &[]).into_iter().map(|l| (format!("{l}.weight"), l)).collect()
}

/// Releases a variable's storage (the layer holding a shallow clone sees the same empty tensor).
pub(crate) fn release(var: &Tensor) -> Result<()> {
    let empty =
        Tensor::f_empty([0], (var.kind(), var.device())).map_err(ModelError::torch("releasing a weight"))?;
    let mut v = var.shallow_clone();
    tch::no_grad(|| v.set_data(&empty));
    Ok(())
}
