//! Trainable tokens: a few rows of an embedding matrix trained in full (PEFT's `TrainableTokensLayer`
//! behind `TrainableTokensWrapper`, used by LoRA's `trainable_token_indices` and by the
//! `TRAINABLE_TOKENS` method).
//!
//! The adapter stores the trained rows (`trainable_tokens_delta`, initialised from the embedding's current
//! rows) and the original rows; the forward pass uses the embedding matrix with those rows replaced, so a
//! resized, freshly initialised embedding cannot leak random values. With tied weights (an `lm_head`
//! sharing the input embedding), the head gets a *tied* adapter reading the same rows; it owns no tensors
//! and saves nothing, as in PEFT.
//!
//! Keys: in memory `base_model.model.<module>.token_adapter.trainable_tokens_delta.<adapter>` (inside
//! another method's adapter) or `base_model.model.<module>.trainable_tokens_delta.<adapter>` (the
//! `TRAINABLE_TOKENS` method, [`TrainableTokens::standalone`]), on disk without the adapter name.

use crate::error::{PeftError, Result};
use crate::layer::{all_finite, BaseLayer, ForwardCtx, MergeCtx, TunerLayer};
use tch::Tensor;

/// The `peft_type` trainable tokens report inside other methods' adapters.
pub use crate::registry::TRAINABLE_TOKENS;

/// `trainable_token_indices`: a list for the input embedding, or a list per module.
#[derive(Clone, Debug, PartialEq)]
pub enum TokenIndices {
    /// Rows of the model's input embedding.
    List(Vec<i64>),
    /// Rows per module name (matched as a suffix).
    PerModule(Vec<(String, Vec<i64>)>),
}

impl TokenIndices {
    /// Parses PEFT's JSON form (`[1, 2]` or `{"embed_tokens": [1, 2]}`).
    ///
    /// # Errors
    /// Anything else, naming the value.
    pub fn from_json(v: &serde_json::Value) -> Result<Self> {
        let list = |v: &serde_json::Value| -> Option<Vec<i64>> {
            v.as_array()?.iter().map(|x| x.as_i64()).collect()
        };
        if let Some(l) = list(v) {
            return Ok(TokenIndices::List(l));
        }
        if let Some(m) = v.as_object() {
            let mut out = Vec::new();
            for (k, vals) in m {
                let l = list(vals).ok_or_else(|| {
                    PeftError::Invalid(format!(
                        "trainable_token_indices[{k:?}] must be a list of integers, got {vals}"
                    ))
                })?;
                out.push((k.clone(), l));
            }
            return Ok(TokenIndices::PerModule(out));
        }
        Err(PeftError::Invalid(format!(
            "trainable_token_indices must be a list of token ids or a mapping module → list, got {v}"
        )))
    }
}

/// The trained rows of one embedding (or of a head tied to it) for one adapter.
#[derive(Debug)]
pub struct TrainableTokens {
    adapter: String,
    module: String,
    indices: Vec<i64>,
    /// `(len(indices), dim)`: the rows in use.
    pub delta: Tensor,
    /// The rows as they were when the adapter was created (restored on unmerge).
    original: Tensor,
    /// A head reading the input embedding's rows: owns no tensors.
    tied: bool,
    /// The `TRAINABLE_TOKENS` method itself (PEFT's `TrainableTokensLayer` in place of the layer: tensors
    /// named `trainable_tokens_delta.<adapter>`), not the `token_adapter` inside another method's wrapper.
    standalone: bool,
}

fn index_tensor(indices: &[i64], device: tch::Device) -> Result<Tensor> {
    Tensor::from_slice(indices).f_to_device(device).map_err(PeftError::torch("placing token indices"))
}

impl TrainableTokens {
    /// Creates the adapter on an embedding (or linear) base: the rows `indices` of its weight become a
    /// trainable tensor at `path/token_adapter/trainable_tokens_delta/<adapter>`.
    ///
    /// # Errors
    /// A base without a weight, or indices outside the vocabulary.
    pub fn new(
        base: &dyn BaseLayer,
        module: &str,
        adapter: &str,
        indices: &[i64],
        path: &tch::nn::Path<'_>,
    ) -> Result<Self> {
        Self::create(base, module, adapter, indices, &(path / "token_adapter"), false, true)
    }

    /// The `TRAINABLE_TOKENS` method's layer (PEFT's `TrainableTokensLayer.update_layer`): the rows
    /// `indices` of the base weight at `path/trainable_tokens_delta/<adapter>`, starting as the rows
    /// themselves (`init_weights`) or as `torch.randn` draws of the weight's dtype and device, then cast to
    /// `delta_kind` (PEFT's `autocast_adapter_dtype` keeps fp16/bf16 adapters in fp32).
    ///
    /// # Errors
    /// As [`TrainableTokens::new`].
    pub fn standalone(
        base: &dyn BaseLayer,
        module: &str,
        adapter: &str,
        indices: &[i64],
        path: &tch::nn::Path<'_>,
        init_weights: bool,
        delta_kind: tch::Kind,
    ) -> Result<Self> {
        let mut tokens = Self::create(base, module, adapter, indices, path, true, init_weights)?;
        if tokens.delta.kind() != delta_kind {
            let cast = tch::no_grad(|| tokens.delta.f_to_kind(delta_kind))
                .map_err(PeftError::torch("casting token rows"))?;
            tch::no_grad(|| tokens.delta.set_data(&cast));
        }
        Ok(tokens)
    }

    fn create(
        base: &dyn BaseLayer,
        module: &str,
        adapter: &str,
        indices: &[i64],
        path: &tch::nn::Path<'_>,
        standalone: bool,
        init_weights: bool,
    ) -> Result<Self> {
        let weight = base
            .as_weighted()
            .ok_or_else(|| {
                PeftError::Invalid(format!("trainable tokens on `{module}`, a {} layer", base.kind()))
            })?
            .weight();
        let vocab = weight.size()[0];
        if let Some(bad) = indices.iter().find(|&&i| i < 0 || i >= vocab) {
            return Err(PeftError::Invalid(format!(
                "trainable token index {bad} is outside the {vocab} rows of `{module}`"
            )));
        }
        let idx = index_tensor(indices, weight.device())?;
        let original = tch::no_grad(|| weight.f_index_select(0, &idx))
            .map_err(PeftError::torch("reading token rows"))?;
        let delta = if init_weights {
            original.f_detach_copy()
        } else {
            let n = i64::try_from(indices.len()).unwrap_or(i64::MAX);
            Tensor::f_randn([n, weight.size()[1]], (weight.kind(), weight.device()))
        }
        .map_err(PeftError::torch("creating token rows"))?;
        let delta = (path / "trainable_tokens_delta").add(adapter, delta, true);
        Ok(Self {
            adapter: adapter.into(),
            module: module.into(),
            indices: indices.to_vec(),
            delta,
            original,
            tied: false,
            standalone,
        })
    }

    /// A head tied to `source` (same rows, same tensor).
    pub fn tied_to(source: &TrainableTokens, module: &str) -> Self {
        Self {
            adapter: source.adapter.clone(),
            module: module.into(),
            indices: source.indices.clone(),
            delta: source.delta.shallow_clone(),
            original: source.original.shallow_clone(),
            tied: true,
            standalone: source.standalone,
        }
    }

    /// The trained token ids.
    pub fn indices(&self) -> &[i64] {
        &self.indices
    }

    /// True for a head tied to the input embedding's adapter.
    pub fn is_tied(&self) -> bool {
        self.tied
    }

    /// The base weight with the trained rows in place (PEFT's `get_merged_weights`).
    fn merged_weight(&self, weight: &Tensor) -> std::result::Result<Tensor, tch::TchError> {
        let idx = Tensor::from_slice(&self.indices).f_to_device(weight.device())?;
        weight.f_index_copy(0, &idx, &self.delta.f_to_kind(weight.kind())?)
    }
}

impl TunerLayer for TrainableTokens {
    fn peft_type(&self) -> &'static str {
        TRAINABLE_TOKENS
    }

    fn named_tensors(&self) -> Vec<(String, Tensor)> {
        // Inside another method's adapter a tied head saves nothing; the method's own tied layer shares
        // the embedding's parameter dict, so PEFT saves (and loads) the same rows under the head's key too.
        if self.tied && !self.standalone {
            return Vec::new();
        }
        let prefix = if self.standalone { "" } else { "token_adapter." };
        vec![(format!("{prefix}trainable_tokens_delta.{}", self.adapter), self.delta.shallow_clone())]
    }

    fn replaces_base(&self) -> bool {
        true
    }

    fn replace_base(&self, base: &dyn BaseLayer, x: &Tensor, ctx: &ForwardCtx<'_>) -> Option<Tensor> {
        // The method itself runs every active adapter's rows at once (PEFT's `get_merged_weights`); the
        // first of them computes the layer.
        let group = if self.standalone { ctx.active_group(self)? } else { vec![self] };
        let mut merged = base.as_weighted()?.weight();
        for tokens in group {
            merged = tokens.merged_weight(&merged).ok()?;
        }
        if let Some(emb) = base.as_embedding() {
            let y = Tensor::embedding(&merged, x, emb.padding_idx().unwrap_or(-1), false, false);
            return Some(match emb.embed_scale() {
                Some(s) => &y * Tensor::from(s).to_kind(y.kind()),
                None => y,
            });
        }
        // A head tied to the embedding: F.linear(x, W), without the head's bias, as PEFT.
        Some(x.linear::<&Tensor>(&merged, None))
    }

    fn merge(&mut self, base: &mut dyn BaseLayer, ctx: &MergeCtx<'_>) -> Result<()> {
        if self.tied {
            // The weight is shared with the input embedding, whose adapter writes it.
            return Ok(());
        }
        let target = base.as_weighted_mut().ok_or_else(|| {
            PeftError::Invalid(format!("trainable tokens on `{}` without a weight", self.module))
        })?;
        let merged = tch::no_grad(|| self.merged_weight(&target.weight()))
            .map_err(PeftError::torch("merging tokens"))?;
        if ctx.safe && !all_finite(&merged)? {
            return Err(PeftError::NonFiniteMerge {
                adapter: self.adapter.clone(),
                module: self.module.clone(),
            });
        }
        target.set_weight(&merged)
    }

    fn unmerge(&mut self, base: &mut dyn BaseLayer) -> Result<()> {
        if self.tied {
            return Ok(());
        }
        let target = base.as_weighted_mut().ok_or_else(|| {
            PeftError::Invalid(format!("trainable tokens on `{}` without a weight", self.module))
        })?;
        let w = target.weight();
        let f = || -> std::result::Result<Tensor, tch::TchError> {
            let idx = Tensor::from_slice(&self.indices).f_to_device(w.device())?;
            w.f_index_copy(0, &idx, &self.original.f_to_kind(w.kind())?)
        };
        let restored = tch::no_grad(f).map_err(PeftError::torch("unmerging tokens"))?;
        target.set_weight(&restored)
    }

    fn status_submodule(&self) -> Option<&'static str> {
        (!self.standalone).then_some("token_adapter")
    }

    /// PEFT's `_check_overlapping_tokens`: active adapters of the method must train disjoint rows.
    fn check_active(&self, active: &[(&str, &dyn TunerLayer)]) -> Result<()> {
        let mut seen = std::collections::BTreeSet::new();
        for (name, tuner) in active {
            let Some(tokens) = tuner.as_any().downcast_ref::<TrainableTokens>() else { continue };
            if tokens.indices.iter().any(|i| !seen.insert(*i)) {
                return Err(PeftError::Invalid(format!(
                    "`{}`: Token indices of adapter {name} are already defined and would result in undefined \
                     merging behavior. Only disjunct token indices are currently supported.",
                    self.module
                )));
            }
        }
        Ok(())
    }

    fn tied_copy(&self, module: &str) -> Option<Box<dyn TunerLayer>> {
        (self.standalone && !self.tied).then(|| Box::new(Self::tied_to(self, module)) as Box<dyn TunerLayer>)
    }

    fn describe(&self) -> String {
        format!("TrainableTokensLayer(tokens={}, tied={})", self.indices.len(), self.tied)
    }
}
