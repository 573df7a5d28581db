//! Converting an adapter whose initialisation rewrote the base weights (PiSSA, OLoRA, LoRA-GA, CorDA)
//! into a plain LoRA adapter for the original base: PEFT's `subtract_mutated_init`.
//!
//! With `W = W_res + s·B₀A₀` at init and `W_res + s·BA` after training, the update on the original base
//! is `s·(BA − B₀A₀) = s·[B, −B₀]·[A; A₀]`: a LoRA adapter of rank `2r` with the same scaling, so alpha
//! doubles (or grows by √2 with rsLoRA) and so do `rank_pattern` / `alpha_pattern` entries.
//!
//! Differences from PEFT, each a fix: PEFT keeps only keys containing `lora_A` / `lora_B`, dropping
//! embedding factors (`lora_embedding_A/B`, whose rank then no longer matches the doubled config),
//! `modules_to_save` copies and trained biases; here embedding factors are concatenated like the others,
//! a `lora_B` bias becomes its trained change `b − b₀`, and every other tensor is kept unchanged.

use crate::config::{Alpha, InitLoraWeights, LoraConfig};
use peft_core::config::{AdapterConfig, ConvertedAdapter, InitialWeightConversion, NamedTensors};
use peft_core::error::{PeftError, Result};
use std::collections::BTreeMap;
use tch::Tensor;

/// LoRA's conversion for `SaveOptions::convert_initial_adapter`: the initial weights are saved under
/// the default init, the trained adapter becomes [`to_original_base`]'s rank-`2r` adapter.
impl InitialWeightConversion for LoraConfig {
    fn config_for_initial_weights(&self) -> Box<dyn AdapterConfig> {
        Box::new(LoraConfig { init_lora_weights: InitLoraWeights::Bool(true), ..self.clone() })
    }

    fn convert_for_original_base(
        &self,
        trained: NamedTensors,
        initial: &BTreeMap<String, Tensor>,
    ) -> Result<ConvertedAdapter> {
        to_original_base(self, trained, initial)
    }
}

fn doubled(a: &Alpha) -> Alpha {
    match a.0.as_i64() {
        Some(i) => Alpha::from(2 * i),
        None => Alpha::from(2.0 * a.value()),
    }
}

/// See the module documentation.
///
/// # Errors
/// rsLoRA together with rank/alpha patterns (PEFT refuses: the scaling cannot be kept), a key missing from
/// the initial weights, or a libtorch failure.
pub fn to_original_base(
    config: &LoraConfig,
    trained: peft_core::config::NamedTensors,
    initial: &std::collections::BTreeMap<String, tch::Tensor>,
) -> Result<peft_core::config::ConvertedAdapter> {
    if config.use_rslora && (!config.rank_pattern.is_empty() || !config.alpha_pattern.is_empty()) {
        return Err(PeftError::Invalid(
            "Passing `path_initial_model_for_weight_conversion` to `save_pretrained` is not supported when using \
             `rank_pattern` or `alpha_pattern` at the same time as `use_rslora=True`."
                .into(),
        ));
    }
    let mut out = Vec::with_capacity(trained.len());
    for (key, t) in trained {
        let is_a = key.contains(".lora_A.") || key.ends_with(".lora_embedding_A");
        let is_b_weight = key.contains(".lora_B.weight") || key.ends_with(".lora_embedding_B");
        let is_b_bias = key.ends_with(".lora_B.bias");
        if !(is_a || is_b_weight || is_b_bias) {
            out.push((key, t));
            continue;
        }
        let Some(t0) = initial.get(&key) else {
            return Err(PeftError::Invalid(format!(
                "the initial adapter has no tensor `{key}`: save the adapter right after creating it, before \
                 training, and pass that directory"
            )));
        };
        let f = || -> std::result::Result<Tensor, tch::TchError> {
            let t0 = t0.f_to_kind(t.kind())?.f_to_device(t.device())?;
            if is_a {
                Tensor::f_cat(&[&t, &t0], 0)
            } else if is_b_weight {
                Tensor::f_cat(&[&t, &t0.f_neg()?], 1)
            } else {
                t.f_sub(&t0)
            }
        };
        let converted = tch::no_grad(f).map_err(PeftError::torch(format!("converting `{key}`")))?;
        out.push((key, converted));
    }
    let mut converted = config.clone();
    converted.init_lora_weights = InitLoraWeights::Bool(true);
    converted.r *= 2;
    converted.lora_alpha = if config.use_rslora {
        Alpha::from(config.lora_alpha.value() * 2f64.sqrt())
    } else {
        doubled(&config.lora_alpha)
    };
    for v in converted.rank_pattern.values_mut() {
        *v *= 2;
    }
    for v in converted.alpha_pattern.values_mut() {
        *v = doubled(v);
    }
    Ok((out, Box::new(converted)))
}
