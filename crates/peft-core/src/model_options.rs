//! [`ModelOptions`]: what an adapter asks of the model as a whole, beyond its layers.
//!
//! A config states these once, as data ([`crate::AdapterConfig::model_options`]), instead of answering
//! one trait method each; core acts on them without knowing which method asked.

use crate::error::{PeftError, Result};
use crate::trainable_tokens::TokenIndices;

/// Model-level needs of one adapter. `ModelOptions::default()` is what most methods need: nothing.
#[derive(Clone, Debug)]
pub struct ModelOptions {
    /// `trainable_token_indices`: embedding rows trained in full beside the method (see
    /// [`crate::trainable_tokens`]).
    pub trainable_token_indices: Option<TokenIndices>,
    /// `layer_replication`: `[start, end)` ranges the model's layers are rebuilt from before the adapter
    /// is added.
    pub layer_replication: Option<Vec<(usize, usize)>>,
    /// `ensure_weight_tying`: heads tied to the input embedding stay tied through the adapter even when
    /// the token lists differ (an error then).
    pub ensure_weight_tying: bool,
    /// The method adapts the model's input embedding (PEFT's `TrainableTokensModel`): without
    /// `target_modules` the target is the input embedding's module name (`"embed_tokens"` when the
    /// model declares none), and after injection every module tied to the embedding gets the adapter's
    /// [`crate::TunerLayer::tied_copy`].
    pub adapts_input_embedding: bool,
    /// PEFT condenses long explicit `target_modules` lists to distinguishing suffixes (and saves them
    /// so); methods whose tuner skips that step (IA³) say `false`.
    pub condense_target_modules: bool,
    /// A batch may route each row to its own adapter of this method (PEFT's `adapter_names` forward
    /// argument). PEFT silently ignores the argument for other methods; peft-rs refuses.
    pub mixed_batches: bool,
}

impl Default for ModelOptions {
    fn default() -> Self {
        Self {
            trainable_token_indices: None,
            layer_replication: None,
            ensure_weight_tying: false,
            adapts_input_embedding: false,
            condense_target_modules: true,
            mixed_batches: false,
        }
    }
}

/// Parses PEFT's `layer_replication` value (`[[start, end], …]`, `null` for none).
///
/// # Errors
/// Anything but a list of `[start, end]` pairs with `start < end`, naming the value.
pub fn parse_layer_replication(value: Option<&serde_json::Value>) -> Result<Option<Vec<(usize, usize)>>> {
    let Some(v) = value.filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    let bad =
        || PeftError::Invalid(format!("layer_replication must be a list of [start, end] pairs, got {v}"));
    let ranges = v.as_array().ok_or_else(bad)?;
    ranges
        .iter()
        .map(|r| {
            let pair = r.as_array().filter(|p| p.len() == 2).ok_or_else(bad)?;
            let (a, b) = (pair[0].as_u64().ok_or_else(bad)?, pair[1].as_u64().ok_or_else(bad)?);
            if a >= b {
                return Err(bad());
            }
            Ok((a as usize, b as usize))
        })
        .collect::<Result<Vec<_>>>()
        .map(Some)
}

/// Parses PEFT's `trainable_token_indices` value (`null` for none).
///
/// # Errors
/// A malformed value, naming it.
pub fn parse_token_indices(value: Option<&serde_json::Value>) -> Result<Option<TokenIndices>> {
    value.filter(|v| !v.is_null()).map(TokenIndices::from_json).transpose()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn layer_replication_takes_increasing_pairs_only() {
        assert_eq!(
            parse_layer_replication(Some(&json!([[0, 2], [1, 3]]))).unwrap(),
            Some(vec![(0, 2), (1, 3)])
        );
        assert_eq!(parse_layer_replication(Some(&json!(null))).unwrap(), None);
        for bad in [json!([[2, 2]]), json!([[0]]), json!("0-2"), json!([[0, -1]])] {
            let e = parse_layer_replication(Some(&bad)).unwrap_err().to_string();
            assert!(e.contains("layer_replication") && e.contains(&bad.to_string()), "{e}");
        }
    }
}
