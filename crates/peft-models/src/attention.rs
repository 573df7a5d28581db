//! Attention: additive masks, grouped-query attention, the KV cache.
//!
//! Masks are additive `(B, 1, T, S)` tensors holding 0 where attention is allowed and the dtype's most
//! negative finite value where it is not (transformers' eager convention). A query that may see no key
//! at all (a left-padding position) then attends uniformly instead of producing NaN; its output is
//! meaningless either way and is never compared.

use tch::{Device, Kind, Tensor};

/// The most negative finite value of a float dtype (`torch.finfo(dtype).min`).
pub fn kind_min(kind: Kind) -> f64 {
    match kind {
        Kind::Half => -65504.0,
        Kind::BFloat16 => -3.389_531_389_251_535e38,
        Kind::Double => f64::MIN,
        _ => f32::MIN as f64,
    }
}

/// A `(B, 1, T, S)` additive mask for `T` new queries after `past` cached positions over `S = past + T`
/// keys: causal (query `i` sees keys `≤ past + i`), optionally within a sliding window, and hiding keys
/// whose `attention_mask` `(B, S)` entry is 0.
pub fn causal_mask(
    attention_mask: Option<&Tensor>,
    batch: i64,
    t: i64,
    past: i64,
    sliding_window: Option<i64>,
    kind: Kind,
    device: Device,
) -> Tensor {
    let s = past + t;
    let q = Tensor::arange_start(past, past + t, (Kind::Int64, device)).view([t, 1]);
    let k = Tensor::arange(s, (Kind::Int64, device)).view([1, s]);
    let mut allowed = k.le_tensor(&q);
    if let Some(w) = sliding_window {
        allowed = allowed.logical_and(&k.gt_tensor(&(&q - w)));
    }
    let mut allowed = allowed.view([1, 1, t, s]).expand([batch, 1, t, s], false);
    if let Some(am) = attention_mask {
        let keep = am.to_device(device).gt(0).view([batch, 1, 1, s]);
        allowed = allowed.logical_and(&keep);
    }
    additive(&allowed, kind)
}

/// [`causal_mask`], or `None` when plain causal attention (`is_causal`) computes the same thing: no
/// cached prefix, no padding (`attention_mask` absent or all ones) and no sliding window narrower than
/// the sequence. transformers skips the mask in the same cases (`_ignore_causal_mask_sdpa`), and the
/// fused kernels then skip the masked-out blocks instead of adding a mask to them.
pub fn causal_mask_or_none(
    attention_mask: Option<&Tensor>,
    batch: i64,
    t: i64,
    past: i64,
    sliding_window: Option<i64>,
    kind: Kind,
    device: Device,
) -> Option<Tensor> {
    let unpadded = attention_mask.is_none_or(|m| m.numel() == 0 || m.gt(0).all().int64_value(&[]) != 0);
    if past == 0 && unpadded && sliding_window.is_none_or(|w| w >= t) {
        return None;
    }
    Some(causal_mask(attention_mask, batch, t, past, sliding_window, kind, device))
}

/// A `(B, 1, 1, S)` additive padding mask from `attention_mask` `(B, S)` (bidirectional attention).
pub fn padding_mask(attention_mask: &Tensor, kind: Kind) -> Tensor {
    let (b, s) = (attention_mask.size()[0], attention_mask.size()[1]);
    additive(&attention_mask.gt(0).view([b, 1, 1, s]), kind)
}

/// 0 where `allowed`, the dtype minimum elsewhere.
pub fn additive(allowed: &Tensor, kind: Kind) -> Tensor {
    let zeros = Tensor::zeros([1], (kind, allowed.device()));
    let neg = Tensor::full([1], kind_min(kind), (kind, allowed.device()));
    zeros.where_self(allowed, &neg)
}

/// `softmax(q kᵀ · scale + mask) v` with grouped-query attention: `q` `(B, H, T, D)`, `k`/`v`
/// `(B, KV, S, D)` with `H` a multiple of `KV` (each key/value head serves `H / KV` query heads, as
/// transformers' `repeat_kv`).
pub fn attend(q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>, scale: f64) -> Tensor {
    attend_dropout(q, k, v, mask, scale, 0.0)
}

/// [`attend`] with dropout on the attention probabilities (training only: pass 0 in evaluation).
pub fn attend_dropout(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    scale: f64,
    dropout: f64,
) -> Tensor {
    let (h, kv) = (q.size()[1], k.size()[1]);
    let (k, v) = if h != kv {
        let rep = h / kv;
        (k.repeat_interleave_self_int(rep, 1, None), v.repeat_interleave_self_int(rep, 1, None))
    } else {
        (k.shallow_clone(), v.shallow_clone())
    };
    Tensor::scaled_dot_product_attention(q, &k, &v, mask, dropout, false, scale, false)
}

/// Causal self-attention of `q` over `k`/`v` with `mask`, or with `is_causal` when `mask` is `None`
/// (see [`causal_mask_or_none`]).
pub fn attend_causal(q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>, scale: f64) -> Tensor {
    if mask.is_some() {
        return attend(q, k, v, mask, scale);
    }
    let (h, kv) = (q.size()[1], k.size()[1]);
    let (k, v) = if h != kv {
        let rep = h / kv;
        (k.repeat_interleave_self_int(rep, 1, None), v.repeat_interleave_self_int(rep, 1, None))
    } else {
        (k.shallow_clone(), v.shallow_clone())
    };
    Tensor::scaled_dot_product_attention::<&Tensor>(q, &k, &v, None, 0.0, true, scale, false)
}

/// transformers' eager attention with logit soft-capping (Gemma 2): scores `q kᵀ · scale` become
/// `cap · tanh(scores / cap)` before `mask` is added, the softmax runs in fp32 and is cast back to `q`'s
/// dtype, then multiplies `v`. Grouped-query as [`attend`]. Fused kernels cannot soft-cap, so the mask
/// is always explicit.
pub fn attend_softcapped(q: &Tensor, k: &Tensor, v: &Tensor, mask: &Tensor, scale: f64, cap: f64) -> Tensor {
    let (h, kv) = (q.size()[1], k.size()[1]);
    let (k, v) = if h != kv {
        let rep = h / kv;
        (k.repeat_interleave_self_int(rep, 1, None), v.repeat_interleave_self_int(rep, 1, None))
    } else {
        (k.shallow_clone(), v.shallow_clone())
    };
    let scores = q.matmul(&k.transpose(2, 3)) * scale;
    let scores = (scores / cap).tanh() * cap + mask;
    scores.softmax(-1, Kind::Float).to_kind(q.kind()).matmul(&v)
}

/// Dropout that is active only in training.
pub fn dropout(x: &Tensor, p: f64, ctx: &peft_core::ForwardCtx<'_>) -> Tensor {
    if ctx.train && p > 0.0 {
        x.dropout(p, true)
    } else {
        x.shallow_clone()
    }
}

/// Cached keys and values of one attention layer, `(B, KV, S, D)` each.
#[derive(Debug, Default)]
pub struct LayerCache {
    kv: Option<(Tensor, Tensor)>,
}

impl LayerCache {
    /// Cached length.
    pub fn len(&self) -> i64 {
        self.kv.as_ref().map_or(0, |(k, _)| k.size()[2])
    }

    /// True when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.kv.is_none()
    }

    /// Appends new keys/values and returns the full ones.
    pub fn update(&mut self, k: Tensor, v: Tensor) -> (Tensor, Tensor) {
        let (k, v) = match self.kv.take() {
            Some((pk, pv)) => (Tensor::cat(&[&pk, &k], 2), Tensor::cat(&[&pv, &v], 2)),
            None => (k, v),
        };
        self.kv = Some((k.shallow_clone(), v.shallow_clone()));
        (k, v)
    }

    /// [`LayerCache::update`] when a cache is in use; the keys/values as they are otherwise.
    pub fn update_opt(cache: Option<&mut Self>, k: Tensor, v: Tensor) -> (Tensor, Tensor) {
        match cache {
            Some(c) => c.update(k, v),
            None => (k, v),
        }
    }

    /// The cached keys/values, if any.
    pub fn get(&self) -> Option<&(Tensor, Tensor)> {
        self.kv.as_ref()
    }

    /// Keeps only the given batch rows (beam or batch pruning).
    pub fn select_rows(&mut self, rows: &Tensor) {
        if let Some((k, v)) = self.kv.take() {
            self.kv = Some((k.index_select(0, rows), v.index_select(0, rows)));
        }
    }
}

/// The KV cache of a decoder: one [`LayerCache`] per layer.
#[derive(Debug, Default)]
pub struct KvCache {
    /// Per layer.
    pub layers: Vec<LayerCache>,
}

impl KvCache {
    /// An empty cache for `n` layers.
    pub fn new(n: usize) -> Self {
        Self { layers: (0..n).map(|_| LayerCache::default()).collect() }
    }

    /// A cache holding given keys and values, one `(k, v)` pair per layer, each `(B, KV heads, P, D)`:
    /// prefix tuning's learned past (transformers' `DynamicCache` built from `past_key_values`).
    pub fn prefilled(per_layer: Vec<(Tensor, Tensor)>) -> Self {
        Self { layers: per_layer.into_iter().map(|kv| LayerCache { kv: Some(kv) }).collect() }
    }

    /// Cached sequence length.
    pub fn len(&self) -> i64 {
        self.layers.first().map_or(0, LayerCache::len)
    }

    /// True when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Splits `(B, T, H·D)` into heads `(B, H, T, D)`.
pub fn split_heads(x: &Tensor, heads: i64, head_dim: i64) -> Tensor {
    let (b, t) = (x.size()[0], x.size()[1]);
    x.view([b, t, heads, head_dim]).transpose(1, 2)
}

/// Merges `(B, H, T, D)` heads back into `(B, T, H·D)`.
pub fn merge_heads(x: &Tensor) -> Tensor {
    let s = x.size();
    x.transpose(1, 2).contiguous().view([s[0], s[2], s[1] * s[3]])
}
