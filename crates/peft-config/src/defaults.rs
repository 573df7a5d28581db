//! PEFT's per-architecture defaults (`peft.utils.constants`): the modules a method adapts when a config
//! names none, by transformers `model_type`.
//!
//! Most methods copy LoRA's table (`TRANSFORMERS_MODELS_TO_<METHOD>_TARGET_MODULES_MAPPING =
//! TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING.copy()`, sometimes with an entry changed); the
//! others have tables of their own. [`target_modules`] answers for any method by its `peft_type`.
//!
//! ```
//! use peft_config::defaults::target_modules;
//! use peft_config::TargetModules;
//!
//! assert_eq!(target_modules("LORA", "llama"), Some(TargetModules::list(["q_proj", "v_proj"])));
//! assert_eq!(target_modules("IA3", "llama"), Some(TargetModules::list(["k_proj", "v_proj", "down_proj"])));
//! assert_eq!(target_modules("LOHA", "no-such-model"), None);
//! ```

use crate::targets::TargetModules;

fn list(names: &[&str]) -> Option<TargetModules> {
    Some(TargetModules::list(names.iter().copied()))
}

/// `TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING`.
pub fn lora(model_type: &str) -> Option<TargetModules> {
    let names: &[&str] = match model_type {
        "t5" | "mt5" => &["q", "v"],
        "bart" | "opt" | "gptj" | "gpt_neo" | "llama" | "llama4" | "mistral" | "mixtral" | "stablelm"
        | "gemma" | "gemma2" | "gemma3_text" | "qwen2" | "qwen3" => &["q_proj", "v_proj"],
        "gpt2" | "gpt_bigcode" => &["c_attn"],
        "bloom" | "gpt_neox" | "chatglm" | "falcon" | "RefinedWeb" | "RefinedWebModel" => {
            &["query_key_value"]
        }
        "blip-2" => &["q", "v", "q_proj", "v_proj"],
        "bert" | "roberta" | "xlm-roberta" | "electra" | "layoutlm" => &["query", "value"],
        "deberta-v2" => &["query_proj", "value_proj"],
        "deberta" => &["in_proj"],
        "mpt" => &["Wqkv"],
        "btlm" => &["c_proj", "c_attn"],
        "codegen" => &["qkv_proj"],
        "phi" => &["q_proj", "v_proj", "fc1", "fc2"],
        "nemotron_h" => &["q_proj", "k_proj", "v_proj", "o_proj"],
        "rwkv" => &["key", "value", "receptance", "output"],
        "rwkv7" => &["r_proj", "k_proj", "v_proj", "o_proj", "key", "value"],
        "gemma4" => return Some(TargetModules::Regex(r".*language_model\..*\.(q_proj|v_proj)".into())),
        _ => return None,
    };
    list(names)
}

/// `TRANSFORMERS_MODELS_TO_ADALORA_TARGET_MODULES_MAPPING`: its own table, not a copy of LoRA's (all
/// attention and MLP projections for T5 / BART / OPT / RoBERTa, no entry for Mistral, …).
pub fn adalora(model_type: &str) -> Option<TargetModules> {
    let names: &[&str] = match model_type {
        "t5" => &["q", "k", "v", "o", "wi", "wo"],
        "mt5" => &["q", "k", "v", "o", "wi_0", "wi_1", "wo"],
        "bart" | "opt" => &["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"],
        "gpt2" | "gpt_bigcode" => &["c_attn"],
        "bloom" | "gpt_neox" => &["query_key_value"],
        "gptj" | "gpt_neo" | "llama" | "llama4" | "gemma" | "gemma2" | "gemma3_text" | "qwen2" | "qwen3" => {
            &["q_proj", "v_proj"]
        }
        "bert" => &["query", "value"],
        "roberta" => &["query", "key", "value", "dense"],
        "deberta-v2" => &["query_proj", "key_proj", "value_proj", "dense"],
        "deberta" => &["in_proj"],
        "nemotron_h" => &["q_proj", "k_proj", "v_proj", "o_proj"],
        "gemma4" => return Some(TargetModules::Regex(r".*language_model\..*\.(q_proj|v_proj)".into())),
        _ => return None,
    };
    list(names)
}

/// `TRANSFORMERS_MODELS_TO_BEFT_TARGET_MODULES_MAPPING`: the value projection of each architecture.
pub fn beft(model_type: &str) -> Option<TargetModules> {
    let name = match model_type {
        "t5" | "mt5" => "v",
        "roberta" | "bert" => "value",
        "deberta-v2" => "value_proj",
        "opt" | "gptj" | "gpt_neo" | "bart" | "llama" | "llama4" | "mistral" | "mixtral" | "phi"
        | "gemma" | "gemma2" | "gemma3_text" | "qwen2" | "qwen3" => "v_proj",
        _ => return None,
    };
    list(&[name])
}

/// `TRANSFORMERS_MODELS_TO_VBLORA_TARGET_MODULES_MAPPING`: its own table (all attention and MLP
/// projections for T5 / BART / OPT, no entry for Mistral, …).
pub fn vblora(model_type: &str) -> Option<TargetModules> {
    let names: &[&str] = match model_type {
        "t5" => &["q", "k", "v", "o", "wi", "wo"],
        "mt5" => &["q", "k", "v", "o", "wi_0", "wi_1", "wo"],
        "bart" | "opt" => &["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"],
        "gpt2" | "gpt_bigcode" => &["c_attn"],
        "bloom" | "gpt_neox" => &["query_key_value"],
        "gptj" | "gpt_neo" | "llama" | "llama4" | "gemma" | "gemma2" | "gemma3_text" | "qwen2" | "qwen3" => {
            &["q_proj", "v_proj"]
        }
        "bert" | "roberta" => &["query", "value"],
        "deberta-v2" => &["query_proj", "key_proj", "value_proj", "dense"],
        "deberta" => &["in_proj"],
        "nemotron_h" => &["q_proj", "k_proj", "v_proj", "o_proj"],
        "gemma4" => return Some(TargetModules::Regex(r".*language_model\..*\.(q_proj|v_proj)".into())),
        _ => return None,
    };
    list(names)
}

/// `TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING`.
pub fn ia3(model_type: &str) -> Option<TargetModules> {
    list(match model_type {
        "t5" => &["k", "v", "wo"],
        "mt5" => &["k", "v", "wi_1"],
        "gpt2" | "gpt_bigcode" => &["c_attn", "mlp.c_proj"],
        "bloom" => &["query_key_value", "mlp.dense_4h_to_h"],
        "roberta" | "bert" => &["key", "value", "output.dense"],
        "opt" => &["q_proj", "k_proj", "fc2"],
        "bart" => &["q_proj", "v_proj", "fc2"],
        "gptj" => &["q_proj", "v_proj", "fc_out"],
        "gpt_neox" | "RefinedWebModel" | "RefinedWeb" | "falcon" => &["query_key_value", "dense_4h_to_h"],
        "gpt_neo" => &["q_proj", "v_proj", "c_proj"],
        "llama" | "mistral" => &["k_proj", "v_proj", "down_proj"],
        "llama4" | "gemma" | "gemma2" | "gemma3_text" | "qwen2" | "qwen3" => {
            &["q_proj", "v_proj", "down_proj"]
        }
        "mixtral" => &["k_proj", "v_proj", "w2"],
        "deberta-v2" => &["key_proj", "value_proj", "output.dense"],
        "deberta" => &["in_proj", "output.dense"],
        "phi" => &["q_proj", "v_proj", "fc2"],
        _ => return None,
    })
}

/// `TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING`.
pub fn ia3_feedforward(model_type: &str) -> Option<TargetModules> {
    list(match model_type {
        "t5" => &["wo"],
        "mt5" => &[],
        "gpt2" | "gpt_bigcode" => &["mlp.c_proj"],
        "bloom" => &["mlp.dense_4h_to_h"],
        "roberta" | "bert" | "deberta-v2" | "deberta" => &["output.dense"],
        "opt" | "bart" | "phi" => &["fc2"],
        "gptj" => &["fc_out"],
        "gpt_neox" | "RefinedWeb" | "RefinedWebModel" | "falcon" => &["dense_4h_to_h"],
        "gpt_neo" => &["c_proj"],
        "llama" | "llama4" | "mistral" | "gemma" | "gemma2" | "gemma3_text" | "qwen2" | "qwen3" => {
            &["down_proj"]
        }
        "mixtral" => &["w2"],
        _ => return None,
    })
}

/// The default `target_modules` of the method `peft_type` for `model_type`: its own table where PEFT has
/// one, LoRA's (with PEFT's per-method changes) where PEFT copies it. `None` when PEFT has no entry.
pub fn target_modules(peft_type: &str, model_type: &str) -> Option<TargetModules> {
    match (peft_type, model_type) {
        ("IA3", m) => ia3(m),
        ("ADALORA", m) => adalora(m),
        ("BEFT", m) => beft(m),
        ("VBLORA", m) => vblora(m),
        ("FOURIERFT" | "C3A" | "WAVEFT", "gpt2" | "gpt_bigcode") => list(&["mlp.c_proj"]),
        // WaveFT's table is a copy of LoRA's from before btlm and RWKV entered it.
        ("WAVEFT", "btlm" | "rwkv" | "rwkv7") => None,
        ("SHIRA" | "VERA" | "FROD" | "PVERA", "phi") => list(&["q_proj", "v_proj"]),
        ("ADAMSS" | "FROD", "vit") => list(&["query", "value"]),
        ("PVERA", "dinov2") => list(&["query", "value"]),
        (
            "LORA" | "BOFT" | "C3A" | "DELORA" | "DEFT" | "GLORA" | "HRA" | "LOHA" | "LOKR" | "MISS" | "OFT"
            | "POLY" | "RANDLORA" | "ADAMSS" | "ROAD" | "TINYLORA" | "PSOFT" | "LILY" | "GRALORA" | "PEANUT"
            | "FOURIERFT" | "SHIRA" | "SUPERTUNING" | "VERA" | "FROD" | "PVERA" | "HIRA" | "UNILORA"
            | "WAVEFT",
            m,
        ) => lora(m),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_of_the_lora_table_keep_their_changed_entries() {
        assert_eq!(target_modules("LOHA", "gpt2"), Some(TargetModules::list(["c_attn"])));
        assert_eq!(target_modules("FOURIERFT", "gpt2"), Some(TargetModules::list(["mlp.c_proj"])));
        assert_eq!(target_modules("WAVEFT", "gpt2"), Some(TargetModules::list(["mlp.c_proj"])));
        assert_eq!(target_modules("WAVEFT", "rwkv"), None);
        assert_eq!(target_modules("WAVEFT", "llama"), target_modules("LORA", "llama"));
        assert_eq!(target_modules("VERA", "phi"), Some(TargetModules::list(["q_proj", "v_proj"])));
        assert_eq!(
            target_modules("LORA", "phi"),
            Some(TargetModules::list(["q_proj", "v_proj", "fc1", "fc2"]))
        );
        assert_eq!(target_modules("IA3", "bart"), Some(TargetModules::list(["q_proj", "v_proj", "fc2"])));
        assert_eq!(target_modules("IA3", "opt"), Some(TargetModules::list(["q_proj", "k_proj", "fc2"])));
        assert_eq!(ia3_feedforward("mt5"), Some(TargetModules::List(vec![])));
        assert_eq!(target_modules("PROMPT_TUNING", "llama"), None);
        assert_eq!(target_modules("ADALORA", "mistral"), None);
        assert_eq!(
            target_modules("ADALORA", "roberta"),
            Some(TargetModules::list(["query", "key", "value", "dense"]))
        );
        assert_eq!(target_modules("BEFT", "bert"), Some(TargetModules::list(["value"])));
        assert_eq!(target_modules("VBLORA", "mistral"), None);
        assert_eq!(
            target_modules("VBLORA", "t5"),
            Some(TargetModules::list(["q", "k", "v", "o", "wi", "wo"]))
        );
    }
}
