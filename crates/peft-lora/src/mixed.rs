//! Mixed-adapter batches for LoRA: every row's factors are gathered from a stack of all the adapters'
//! factors and applied with batched matrix products (linear, embedding) or one grouped convolution
//! (convolutions) — one pass for the whole batch, however many adapters it mixes.
//!
//! The stack holds `A` padded to the largest rank and `B·s` (scaling folded in), with a zero slot for
//! rows that use the base. While the adapters are frozen the stack is kept per layer and rebuilt only
//! when an adapter changes (load, hotswap, scale). DoRA adapters, and dropout in training mode, take the
//! layer's per-adapter path instead (as correct, not batched).

use crate::layer::{LoraKind, LoraLayer};
use peft_core::layer::{conv_nd_t, ForwardCtx, TunerLayer};
use peft_core::mixed::MixedCache;
use tch::Tensor;

/// The stacked factors of one group of adapters on one layer.
struct Stacked {
    /// Which adapters, in which state, this was built from.
    key: Vec<(String, u64, usize)>,
    /// `(K + 1, R, …)`: slot 0 is zero (the base).
    a: Tensor,
    /// `(K + 1, out, R / groups, …)`, scaled.
    b: Tensor,
    /// `(K + 1, out)`, scaled, when any adapter has a `lora_B` bias.
    bias: Option<Tensor>,
}

fn key_of(layers: &[&LoraLayer]) -> Vec<(String, u64, usize)> {
    layers.iter().map(|l| (l.adapter_name().to_string(), l.version, l.lora_a.data_ptr() as usize)).collect()
}

fn build(layers: &[&LoraLayer]) -> Stacked {
    let first = layers[0];
    let groups = match &first.kind {
        LoraKind::Conv { geometry } => geometry.groups,
        _ => 1,
    };
    let rank = layers.iter().map(|l| l.lora_a.size()[0]).max().unwrap_or(0);
    let (kind, device) = (first.lora_a.kind(), first.lora_a.device());
    let mut a_shape = first.lora_a.size();
    a_shape[0] = rank;
    let mut b_shape = first.lora_b.size();
    b_shape[1] = rank / groups;
    let out = b_shape[0];
    let zeros = |shape: &[i64]| Tensor::zeros(shape, (kind, device));
    let mut a_parts = vec![zeros(&a_shape)];
    let mut b_parts = vec![zeros(&b_shape)];
    let mut bias_parts = vec![zeros(&[out])];
    for l in layers {
        let a = zeros(&a_shape);
        let r = l.lora_a.size()[0];
        // Group-aware placement: B's group j reads rows [j·R/g, (j+1)·R/g) of A.
        let (block, used) = (rank / groups, r / groups);
        for j in 0..groups {
            a.narrow(0, j * block, used).copy_(&l.lora_a.narrow(0, j * used, used));
        }
        let b = zeros(&b_shape);
        b.narrow(1, 0, l.lora_b.size()[1]).copy_(&(&l.lora_b * l.scaling));
        a_parts.push(a);
        b_parts.push(b);
        bias_parts.push(match &l.lora_b_bias {
            Some(bb) => bb * l.scaling,
            None => zeros(&[out]),
        });
    }
    let any_bias = layers.iter().any(|l| l.lora_b_bias.is_some());
    Stacked {
        key: key_of(layers),
        a: Tensor::stack(&a_parts, 0),
        b: Tensor::stack(&b_parts, 0),
        bias: any_bias.then(|| Tensor::stack(&bias_parts, 0)),
    }
}

/// The batched LoRA contribution; `None` when the group needs the per-adapter path.
pub(crate) fn output(
    first: &LoraLayer,
    x: &Tensor,
    y: &Tensor,
    group: &[&dyn TunerLayer],
    index: &Tensor,
    cache: &MixedCache,
    ctx: &ForwardCtx<'_>,
) -> Option<Tensor> {
    let layers: Vec<&LoraLayer> =
        group.iter().map(|t| t.as_any().downcast_ref::<LoraLayer>()).collect::<Option<_>>()?;
    if layers.iter().any(|l| l.variant.needs_own_path(ctx.train) || l.kind != first.kind)
        || (ctx.train && layers.iter().any(|l| l.dropout > 0.0))
    {
        return None;
    }
    let frozen = layers.iter().all(|l| !l.lora_a.requires_grad() && !l.lora_b.requires_grad());
    let fresh;
    let mut guard = cache.0.lock().unwrap_or_else(|p| p.into_inner());
    let stacked: &Stacked = if frozen {
        let key = key_of(&layers);
        let hit = guard.as_ref().and_then(|b| b.downcast_ref::<Stacked>()).is_some_and(|s| s.key == key);
        if !hit {
            *guard = Some(Box::new(tch::no_grad(|| build(&layers))));
        }
        guard.as_ref()?.downcast_ref::<Stacked>()?
    } else {
        fresh = build(&layers);
        &fresh
    };
    let slot = index + 1;
    let a = stacked.a.index_select(0, &slot);
    let b = stacked.b.index_select(0, &slot);
    let shape = x.size();
    let rows = shape[0];
    let delta = match &first.kind {
        LoraKind::Linear { .. } => {
            let xin = if x.kind() != a.kind() { x.to_kind(a.kind()) } else { x.shallow_clone() };
            let features = *shape.last()?;
            let x3 = xin.reshape([rows, -1, features]);
            let o = x3.bmm(&a.transpose(1, 2)).bmm(&b.transpose(1, 2));
            let o = match &stacked.bias {
                Some(bias) => o + bias.index_select(0, &slot).unsqueeze(1),
                None => o,
            };
            let mut out_shape = shape.clone();
            if let Some(last) = out_shape.last_mut() {
                *last = o.size()[2];
            }
            o.reshape(out_shape.as_slice())
        }
        LoraKind::Embedding { padding_idx: _, embed_scale } => {
            let vocab = first.lora_a.size()[1];
            let table = stacked.a.transpose(1, 2).reshape([-1, stacked.a.size()[1]]);
            let ids = x.reshape([rows, -1]) + (&slot * vocab).unsqueeze(1);
            let after_a = Tensor::embedding(&table, &ids, -1, false, false);
            let mut o = after_a.bmm(&b.transpose(1, 2));
            if let Some(s) = embed_scale {
                o = &o * Tensor::from(*s).to_kind(o.kind());
            }
            let mut out_shape = shape.clone();
            out_shape.push(o.size()[2]);
            o.reshape(out_shape.as_slice())
        }
        LoraKind::Conv { geometry } => {
            let xin = if x.kind() != a.kind() { x.to_kind(a.kind()) } else { x.shallow_clone() };
            let dims = geometry.dims();
            let ones = vec![1i64; dims];
            let zeros = vec![0i64; dims];
            let mut flat = vec![1, -1];
            flat.extend(&shape[2..]);
            let x1 = xin.reshape(flat.as_slice());
            let mut a_shape = a.size();
            let r = a_shape[1];
            a_shape.splice(0..2, [rows * r]);
            let h = conv_nd_t(
                &x1,
                &a.reshape(a_shape.as_slice()),
                None,
                &geometry.stride,
                &geometry.padding,
                &ones,
                rows,
            );
            let mut b_shape = b.size();
            let out = b_shape[1];
            b_shape.splice(0..2, [rows * out]);
            let o = conv_nd_t(
                &h,
                &b.reshape(b_shape.as_slice()),
                None,
                &ones,
                &zeros,
                &ones,
                rows * geometry.groups,
            );
            let mut o_shape = vec![rows, out];
            o_shape.extend(&o.size()[2..]);
            let o = o.reshape(o_shape.as_slice());
            match &stacked.bias {
                Some(bias) => {
                    let mut bshape = vec![rows, out];
                    bshape.extend(std::iter::repeat_n(1, dims));
                    o + bias.index_select(0, &slot).reshape(bshape.as_slice())
                }
                None => o,
            }
        }
    };
    Some(y + delta.to_kind(y.kind()))
}
