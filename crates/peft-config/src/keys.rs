//! The state-dict key grammar of PEFT adapter files.
//!
//! In memory an adapter tensor has a key like `base_model.model.lin0.lora_A.default.weight` (module path,
//! method attribute, adapter name, tensor name). On disk the adapter name is removed:
//! `base_model.model.lin0.lora_A.weight`. Parameters that are not inside a sub-module carry the adapter
//! name last (`...embed_tokens.lora_embedding_A.default`) and lose it entirely
//! (`...embed_tokens.lora_embedding_A`).

/// The prefix of every key saved from a `PeftModel` (`PeftModel.base_model` is the tuner, `.model` the
/// wrapped model).
pub const PEFT_PREFIX: &str = "base_model.model.";
/// The config file of an adapter directory.
pub const CONFIG_NAME: &str = "adapter_config.json";
/// The weights file of an adapter directory (safetensors; PEFT's default).
pub const SAFETENSORS_WEIGHTS_NAME: &str = "adapter_model.safetensors";
/// The legacy pickle weights file (not read by peft-rs; named in errors).
pub const WEIGHTS_NAME: &str = "adapter_model.bin";
/// The adapter name PEFT uses when none is given; it is saved at the directory's top level.
pub const DEFAULT_ADAPTER_NAME: &str = "default";

/// PEFT's `_remove_adapter_name_from_state_dict_key`: the checkpoint key for an in-memory key.
///
/// `a.lora_A.default.weight` → `a.lora_A.weight`; `a.lora_embedding_A.default` → `a.lora_embedding_A`.
/// Only the adapter name at the end, or just before the last component, is removed, never one in the
/// middle of the path.
pub fn remove_adapter_name(key: &str, adapter: &str) -> String {
    if !key.contains('.') {
        return key.to_string();
    }
    let dotted = format!(".{adapter}");
    if let Some(stripped) = key.strip_suffix(&dotted) {
        return stripped.to_string();
    }
    match key.rsplit_once('.') {
        Some((head, last)) => {
            let head = head.strip_suffix(&dotted).unwrap_or(head);
            format!("{head}.{last}")
        }
        None => key.to_string(),
    }
}

/// PEFT's `_insert_adapter_name_into_state_dict` for one key: the in-memory key for a checkpoint key,
/// given the method's parameter prefix (`"lora_"`). Keys without the prefix are returned unchanged.
pub fn insert_adapter_name(key: &str, adapter: &str, prefix: &str) -> String {
    let Some(pos) = key.rfind(prefix) else {
        return key.to_string();
    };
    let suffix = &key[pos + prefix.len()..];
    match suffix.split_once('.') {
        Some((_, rest)) => {
            let head = &key[..key.len() - rest.len()];
            format!("{head}{adapter}.{rest}")
        }
        None => format!("{key}.{adapter}"),
    }
}

/// Validates an adapter name: it becomes a path segment of tensor keys and a sub-directory name on save.
///
/// # Errors
/// A message saying why the name is unusable.
pub fn validate_adapter_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("an adapter name must not be empty".into());
    }
    if name.contains('.') || name.contains('/') || name.contains('\\') {
        return Err(format!(
            "adapter name {name:?} contains '.', '/' or '\\'; it must be usable as a key segment and a directory"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adapter_name_is_removed_only_in_its_places() {
        assert_eq!(remove_adapter_name("m.lin0.lora_A.default.weight", "default"), "m.lin0.lora_A.weight");
        assert_eq!(
            remove_adapter_name("m.emb.lora_embedding_A.default", "default"),
            "m.emb.lora_embedding_A"
        );
        // A module named like the adapter is kept.
        assert_eq!(
            remove_adapter_name("default.lin0.lora_A.default.weight", "default"),
            "default.lin0.lora_A.weight"
        );
        assert_eq!(
            remove_adapter_name("m.lin0.lora_A.other.weight", "default"),
            "m.lin0.lora_A.other.weight"
        );
        assert_eq!(remove_adapter_name("weight", "default"), "weight");
    }

    #[test]
    fn adapter_name_is_inserted_after_the_method_attribute() {
        assert_eq!(insert_adapter_name("m.lin0.lora_A.weight", "x", "lora_"), "m.lin0.lora_A.x.weight");
        assert_eq!(insert_adapter_name("m.emb.lora_embedding_A", "x", "lora_"), "m.emb.lora_embedding_A.x");
        assert_eq!(insert_adapter_name("m.lin0.bias", "x", "lora_"), "m.lin0.bias");
    }

    #[test]
    fn insert_inverts_remove() {
        for key in ["base_model.model.a.lora_B.default.weight", "base_model.model.e.lora_embedding_B.default"]
        {
            let ck = remove_adapter_name(key, "default");
            assert_eq!(insert_adapter_name(&ck, "default", "lora_"), key);
        }
    }

    #[test]
    fn adapter_names_with_separators_are_rejected() {
        assert!(validate_adapter_name("default").is_ok());
        assert!(validate_adapter_name("my-adapter_2").is_ok());
        assert!(validate_adapter_name("a.b").is_err());
        assert!(validate_adapter_name("a/b").is_err());
        assert!(validate_adapter_name("").is_err());
    }
}
