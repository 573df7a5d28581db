//! Text generation for causal LMs and T5: greedy or sampled (temperature, top-k, top-p), with a KV
//! cache, stop tokens and left-padded batches — the same decisions as transformers' `generate`.

use crate::attention::KvCache;
use crate::error::{ModelError, Result};
use crate::{HfModel, Task};
use peft_core::ForwardCtx;
use std::path::Path;
use tch::{Kind, Tensor};

/// Decoding options (transformers' `GenerationConfig`).
#[derive(Clone, Debug, PartialEq)]
pub struct GenerationConfig {
    /// New tokens at most.
    pub max_new_tokens: i64,
    /// Sample instead of taking the argmax.
    pub do_sample: bool,
    /// Softmax temperature (sampling).
    pub temperature: f64,
    /// Keep the `k` most likely tokens (sampling; 0 = off).
    pub top_k: i64,
    /// Keep the smallest set of tokens with probability ≥ `p` (sampling; 1.0 = off).
    pub top_p: f64,
    /// Tokens that end a sequence.
    pub eos_token_ids: Vec<i64>,
    /// Filler for finished sequences (defaults to the first eos).
    pub pad_token_id: Option<i64>,
}

impl Default for GenerationConfig {
    fn default() -> Self {
        Self {
            max_new_tokens: 20,
            do_sample: false,
            temperature: 1.0,
            top_k: 50,
            top_p: 1.0,
            eos_token_ids: vec![],
            pad_token_id: None,
        }
    }
}

impl GenerationConfig {
    /// Defaults from `generation_config.json` (if present) and `config.json`.
    pub fn for_model(model: &HfModel) -> Self {
        let mut g = Self { eos_token_ids: model.config().eos_token_ids(), ..Self::default() };
        g.pad_token_id = crate::task::pad_token_id(model.config());
        if let Some(t5) = model.as_t5() {
            g.eos_token_ids = t5.args().eos_token_ids.clone();
        }
        g.apply_file(&model.dir().join("generation_config.json"));
        g
    }

    fn apply_file(&mut self, path: &Path) {
        let Ok(text) = peft_core::peft_config::files::read_text_bounded(
            path,
            peft_core::peft_config::files::MAX_JSON_BYTES,
        ) else {
            return;
        };
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else { return };
        let eos = crate::config::ids(v.get("eos_token_id"));
        if !eos.is_empty() {
            self.eos_token_ids = eos;
        }
        if let Some(p) = v.get("pad_token_id").and_then(serde_json::Value::as_i64) {
            self.pad_token_id = Some(p);
        }
        if let Some(s) = v.get("do_sample").and_then(serde_json::Value::as_bool) {
            self.do_sample = s;
        }
        if let Some(t) = v.get("temperature").and_then(serde_json::Value::as_f64) {
            self.temperature = t;
        }
        if let Some(k) = v.get("top_k").and_then(serde_json::Value::as_i64) {
            self.top_k = k;
        }
        if let Some(p) = v.get("top_p").and_then(serde_json::Value::as_f64) {
            self.top_p = p;
        }
    }

    /// Checks the options as transformers' `GenerationConfig.validate` does, plus what would fail midway:
    /// at least one new token, a finite positive temperature, `top_k ≥ 0`, `top_p` in `(0, 1]`.
    ///
    /// # Errors
    /// [`ModelError::Input`] naming the option and its value.
    pub fn validate(&self) -> Result<()> {
        let bad = |what: String| Err(ModelError::Input(what));
        if self.max_new_tokens < 1 {
            return bad(format!("max_new_tokens = {}: must be at least 1", self.max_new_tokens));
        }
        if self.do_sample {
            if !self.temperature.is_finite() || self.temperature <= 0.0 {
                return bad(format!("temperature = {}: must be a finite number > 0", self.temperature));
            }
            if self.top_k < 0 {
                return bad(format!("top_k = {}: must be ≥ 0 (0 turns it off)", self.top_k));
            }
            if !(self.top_p > 0.0 && self.top_p <= 1.0) {
                return bad(format!("top_p = {}: must be in (0, 1] (1 turns it off)", self.top_p));
            }
        }
        Ok(())
    }

    fn pad(&self) -> i64 {
        self.pad_token_id.or_else(|| self.eos_token_ids.first().copied()).unwrap_or(0)
    }
}

/// Picks the next token `(B,)` from last-position logits `(B, V)`.
///
/// # Errors
/// Sampling from logits that are NaN (a broken adapter or base) or leave no token possible.
pub fn next_token(logits: &Tensor, cfg: &GenerationConfig) -> Result<Tensor> {
    if !cfg.do_sample {
        return Ok(logits.argmax(-1, false));
    }
    if logits.isnan().any().int64_value(&[]) != 0 {
        return Err(ModelError::Input(
            "the model's logits contain NaN: cannot sample (are the weights or the adapter broken?)".into(),
        ));
    }
    let mut scores = logits.to_kind(Kind::Float);
    if cfg.temperature != 1.0 && cfg.temperature > 0.0 {
        scores = scores / cfg.temperature;
    }
    let vocab = scores.size()[1];
    if cfg.top_k > 0 && cfg.top_k < vocab {
        // transformers' TopKLogitsWarper: drop everything below the k-th largest score.
        let kth = scores.topk(cfg.top_k, -1, true, true).0.select(1, cfg.top_k - 1).unsqueeze(-1);
        scores = scores.masked_fill(&scores.lt_tensor(&kth), f64::NEG_INFINITY);
    }
    if cfg.top_p < 1.0 {
        // transformers' TopPLogitsWarper: sort ascending, drop the low tail whose mass is ≤ 1 - p,
        // always keep the most likely token.
        let (sorted, idx) = scores.sort(-1, false);
        let cum = sorted.softmax(-1, Kind::Float).cumsum(-1, Kind::Float);
        let remove_sorted = cum.le(1.0 - cfg.top_p);
        let last = remove_sorted.size()[1] - 1;
        let remove_sorted =
            remove_sorted.index_fill(1, &Tensor::from_slice(&[last]).to_device(scores.device()), 0);
        let remove = remove_sorted.scatter(1, &idx, &remove_sorted);
        scores = scores.masked_fill(&remove, f64::NEG_INFINITY);
    }
    // A row whose every score is -inf (or +inf) has no distribution; libtorch's multinomial would refuse it.
    let probs = scores.softmax(-1, Kind::Float);
    if probs.isfinite().logical_not().any().int64_value(&[]) != 0 {
        return Err(ModelError::Input(
            "the model's logits leave no token to sample (all -inf or +inf)".into(),
        ));
    }
    probs
        .f_multinomial(1, false)
        .map(|t| t.squeeze_dim(1))
        .map_err(ModelError::torch("sampling the next token"))
}

/// Generates continuations of `input_ids` `(B, T)` (left-padded when `attention_mask` marks padding).
/// Returns `(B, T + new)` for causal LMs (prompt included) and `(B, 1 + new)` decoder ids for T5.
///
/// # Errors
/// A model that cannot generate (classification, feature extraction) or malformed inputs.
pub fn generate(
    model: &HfModel,
    input_ids: &Tensor,
    attention_mask: Option<&Tensor>,
    cfg: &GenerationConfig,
) -> Result<Tensor> {
    generate_ctx(model, input_ids, attention_mask, cfg, &ForwardCtx::eval())
}

/// [`generate`] with per-call options: a mixed batch (one adapter per row) or per-row values computed
/// from the prompt (`PeftModel::row_values`: activated-LoRA offsets, valid for every step since every
/// generated token lies after the invocation).
///
/// # Errors
/// As [`generate`].
pub fn generate_ctx(
    model: &HfModel,
    input_ids: &Tensor,
    attention_mask: Option<&Tensor>,
    cfg: &GenerationConfig,
    ctx: &ForwardCtx<'_>,
) -> Result<Tensor> {
    cfg.validate()?;
    let inputs = crate::ModelInputs::with_mask(input_ids, attention_mask);
    inputs.checked_ids()?;
    // A decoder with a position table must hold the prompt and every new token but the last (which is
    // chosen, never fed): refused before any work rather than when the table runs out midway.
    if let (Task::CausalLm, Some(max)) = (model.task(), model.input_limits().max_positions) {
        let prompt = input_ids.size().last().copied().unwrap_or(0);
        if prompt + cfg.max_new_tokens - 1 > max {
            return Err(ModelError::Input(format!(
                "a prompt of {prompt} tokens plus max_new_tokens {} needs {} positions, but the model has {max} \
                 position embeddings",
                cfg.max_new_tokens,
                prompt + cfg.max_new_tokens - 1
            )));
        }
    }
    let mut ctx = *ctx;
    ctx.train = false;
    tch::no_grad(|| match model.task() {
        Task::CausalLm => generate_causal(model, input_ids, attention_mask, cfg, &ctx),
        Task::Seq2SeqLm => generate_seq2seq(model, input_ids, attention_mask, cfg, &ctx),
        other => Err(ModelError::Input(format!("cannot generate with a {other} model"))),
    })
}

fn finished_update(done: &Tensor, next: &Tensor, cfg: &GenerationConfig) -> (Tensor, Tensor) {
    // Finished rows keep emitting the pad token.
    let pad = next.full_like(cfg.pad());
    let next = pad.where_self(done, next);
    let mut now_done = done.shallow_clone();
    for &e in &cfg.eos_token_ids {
        now_done = now_done.logical_or(&next.eq(e));
    }
    (next, now_done)
}

/// The decoding loop shared by decoder-only and encoder-decoder models: `step(None)` gives the logits of
/// the last position for the prompt, `step(Some(ids))` those after feeding the `(B, 1)` chosen tokens.
/// Appends to `out` until every row finished or `max_new_tokens` were chosen.
fn decode_loop(
    mut out: Tensor,
    cfg: &GenerationConfig,
    mut step: impl FnMut(Option<&Tensor>) -> Result<Tensor>,
) -> Result<Tensor> {
    let b = out.size()[0];
    let mut done = Tensor::zeros([b], (Kind::Bool, out.device()));
    let mut last = step(None)?;
    for i in 0..cfg.max_new_tokens {
        let (next, now_done) = finished_update(&done, &next_token(&last, cfg)?, cfg);
        let next = next.unsqueeze(1);
        out = Tensor::cat(&[&out, &next], 1);
        done = now_done;
        if i + 1 == cfg.max_new_tokens || done.all().int64_value(&[]) != 0 {
            break;
        }
        last = step(Some(&next))?;
    }
    Ok(out)
}

fn generate_causal(
    model: &HfModel,
    input_ids: &Tensor,
    attention_mask: Option<&Tensor>,
    cfg: &GenerationConfig,
    ctx: &ForwardCtx<'_>,
) -> Result<Tensor> {
    let b = input_ids.size()[0];
    let dev = input_ids.device();
    let mut mask = match attention_mask {
        Some(m) => m.to_kind(Kind::Int64),
        None => input_ids.ones_like(),
    };
    // transformers' prepare_inputs_for_generation: positions count real tokens only.
    let positions = (mask.cumsum(-1, Kind::Int64) - 1).masked_fill(&mask.eq(0), 1);
    let mut next_pos = positions.select(1, -1).unsqueeze(1);
    let mut cache: KvCache = model.new_cache();
    decode_loop(input_ids.shallow_clone(), cfg, |next| {
        let logits = match next {
            None => model.step(input_ids, Some(&mask), Some(&positions), &mut cache, ctx)?,
            Some(ids) => {
                mask = Tensor::cat(&[&mask, &Tensor::ones([b, 1], (Kind::Int64, dev))], 1);
                next_pos = &next_pos + 1;
                model.step(ids, Some(&mask), Some(&next_pos), &mut cache, ctx)?
            }
        };
        Ok(logits.select(1, -1))
    })
}

fn generate_seq2seq(
    model: &HfModel,
    input_ids: &Tensor,
    attention_mask: Option<&Tensor>,
    cfg: &GenerationConfig,
    ctx: &ForwardCtx<'_>,
) -> Result<Tensor> {
    let t5 = model.as_t5().ok_or_else(|| ModelError::Input("seq2seq generation needs T5".into()))?;
    let b = input_ids.size()[0];
    let dev = input_ids.device();
    let encoded = t5.encode(input_ids, attention_mask, ctx);
    let start = Tensor::full([b, 1], t5.args().decoder_start_token_id, (Kind::Int64, dev));
    let mut cache = t5.new_cache();
    decode_loop(start.shallow_clone(), cfg, |next| {
        let ids = next.unwrap_or(&start);
        let logits = t5.decode(ids, None, &encoded, attention_mask, Some(&mut cache), ctx);
        Ok(logits.select(1, -1))
    })
}
