//! Checking a forward pass's inputs against what the model can look up, before libtorch sees them:
//! libtorch's `embedding` aborts the process on an id out of range (tch panics), so every id, position
//! and segment is checked here and refused with an error naming the tensor, the value and the limit.

use crate::error::{ModelError, Result};
use crate::task::ModelInputs;
use tch::{Kind, Tensor};

/// What a model's embeddings can take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InputLimits {
    /// Token ids must be below this (`vocab_size`).
    pub vocab_size: i64,
    /// Absolute position embeddings (GPT-2's `n_positions`, BERT's `max_position_embeddings`): positions
    /// must be below this. `None`: rotary or relative positions, no table to overflow.
    pub max_positions: Option<i64>,
    /// BERT's `type_vocab_size`: segment ids must be below this. `None`: the model has no segments.
    pub type_vocab_size: Option<i64>,
}

/// The smallest and largest value of a non-empty integer tensor.
fn min_max(name: &str, t: &Tensor) -> Result<(i64, i64)> {
    let read = |r: std::result::Result<Tensor, tch::TchError>| -> Result<i64> {
        r.and_then(|v| v.f_int64_value(&[])).map_err(ModelError::torch(format!("reading `{name}`")))
    };
    Ok((read(t.f_min())?, read(t.f_max())?))
}

/// Checks a `(B, T)` int64 id tensor: its shape against `like` (when given), non-empty, and its values
/// in `0..limit`.
fn check_ids(name: &str, t: &Tensor, limit: i64, what: &str, like: Option<(&str, &[i64])>) -> Result<()> {
    if t.dim() != 2 {
        return Err(ModelError::Input(format!("`{name}` must be (batch, seq), got shape {:?}", t.size())));
    }
    if t.kind() != Kind::Int64 {
        return Err(ModelError::Input(format!("`{name}` must be int64, got {:?}", t.kind())));
    }
    if let Some((other, shape)) = like {
        if t.size() != shape {
            return Err(ModelError::Input(format!("`{name}` has shape {:?}, `{other}` {shape:?}", t.size())));
        }
    }
    if t.numel() == 0 {
        return Err(ModelError::Input(format!(
            "`{name}` is empty (shape {:?}): there is nothing to run",
            t.size()
        )));
    }
    let (lo, hi) = min_max(name, t)?;
    if lo < 0 || hi >= limit {
        let bad = if lo < 0 { lo } else { hi };
        return Err(ModelError::Input(format!("`{name}` holds {bad}, outside 0..{limit} ({what})")));
    }
    Ok(())
}

impl ModelInputs<'_> {
    /// Checks every input against `limits` with `past` cached positions before the new ones: ids,
    /// mask and segment shapes, id and segment ranges, positions within an absolute position table,
    /// decoder ids of the same batch. Empty sequences are refused everywhere.
    ///
    /// # Errors
    /// [`ModelError::Input`] naming the tensor and the offending value or shape.
    pub fn check(&self, limits: &InputLimits, past: i64) -> Result<&Tensor> {
        let ids = self.checked_ids()?;
        let shape = ids.size();
        check_ids("input_ids", ids, limits.vocab_size, "the vocabulary size", None)?;
        if let (Some(max), None) = (limits.max_positions, self.position_ids) {
            let end = past + shape[1];
            if end > max {
                return Err(ModelError::Input(format!(
                    "{} positions{} but the model has {max} position embeddings",
                    shape[1],
                    if past > 0 { format!(" after {past} cached ones") } else { String::new() }
                )));
            }
        }
        if let Some(p) = self.position_ids {
            if p.size() != shape {
                return Err(ModelError::Input(format!(
                    "`position_ids` has shape {:?}, `input_ids` {shape:?}",
                    p.size()
                )));
            }
            if let Some(max) = limits.max_positions {
                check_ids("position_ids", p, max, "the position embeddings", None)?;
            } else if !matches!(p.kind(), Kind::Int64) {
                return Err(ModelError::Input(format!("`position_ids` must be int64, got {:?}", p.kind())));
            }
        }
        // Models without segment embeddings ignore `token_type_ids`, as before.
        if let (Some(t), Some(n)) = (self.token_type_ids, limits.type_vocab_size) {
            check_ids("token_type_ids", t, n, "type_vocab_size", Some(("input_ids", &shape)))?;
        }
        if let Some(d) = self.decoder_input_ids {
            check_ids("decoder_input_ids", d, limits.vocab_size, "the vocabulary size", None)?;
            if d.size()[0] != shape[0] {
                return Err(ModelError::Input(format!(
                    "`decoder_input_ids` has batch {}, `input_ids` {}",
                    d.size()[0],
                    shape[0]
                )));
            }
            if let Some(m) = self.decoder_attention_mask {
                if m.size() != d.size() {
                    return Err(ModelError::Input(format!(
                        "`decoder_attention_mask` has shape {:?}, `decoder_input_ids` {:?}",
                        m.size(),
                        d.size()
                    )));
                }
            }
        }
        Ok(ids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: InputLimits =
        InputLimits { vocab_size: 10, max_positions: Some(4), type_vocab_size: Some(2) };

    fn ids(v: &[i64], t: i64) -> Tensor {
        Tensor::from_slice(v).reshape([-1, t])
    }

    #[test]
    fn ids_outside_the_vocabulary_are_refused_by_value() {
        for bad in [10, 1_000_000_000, -1, i64::MIN] {
            let x = ids(&[1, bad], 2);
            let err = ModelInputs::ids(&x).check(&LIMITS, 0).unwrap_err().to_string();
            assert!(err.contains("input_ids") && err.contains(&bad.to_string()), "{err}");
        }
        assert!(ModelInputs::ids(&ids(&[0, 9], 2)).check(&LIMITS, 0).is_ok());
    }

    #[test]
    fn positions_past_the_table_and_empty_inputs_are_refused() {
        let x = ids(&[1, 2, 3, 4, 5], 5);
        assert!(ModelInputs::ids(&x).check(&LIMITS, 0).unwrap_err().to_string().contains("4 position"));
        let x = ids(&[1, 2], 2);
        assert!(ModelInputs::ids(&x).check(&LIMITS, 3).unwrap_err().to_string().contains("cached"));
        let empty = Tensor::zeros([2, 0], (Kind::Int64, tch::Device::Cpu));
        assert!(ModelInputs::ids(&empty).check(&LIMITS, 0).unwrap_err().to_string().contains("empty"));
    }

    #[test]
    fn segments_and_decoder_ids_are_checked() {
        let x = ids(&[1, 2, 3, 4], 2);
        let tt = ids(&[0, 1, 2, 0], 2);
        let inputs = ModelInputs { token_type_ids: Some(&tt), ..ModelInputs::ids(&x) };
        assert!(inputs.check(&LIMITS, 0).unwrap_err().to_string().contains("type_vocab_size"));
        let tt = ids(&[0, 1], 2);
        let inputs = ModelInputs { token_type_ids: Some(&tt), ..ModelInputs::ids(&x) };
        assert!(inputs.check(&LIMITS, 0).unwrap_err().to_string().contains("shape"));
        let dec = ids(&[1, 2, 3], 3);
        let inputs = ModelInputs { decoder_input_ids: Some(&dec), ..ModelInputs::ids(&x) };
        assert!(inputs.check(&LIMITS, 0).unwrap_err().to_string().contains("batch"));
    }
}
