//! RandLoRA's shared random bases: PEFT's draw (`_init_randlora_A_randlora_B` and its sparse variant) and
//! the per-layer copies PEFT's files carry.
//!
//! Shapes, with `M` / `m` the largest / smallest side over the largest targeted layer and `n = ⌈m / r⌉`
//! bases: `randlora_A` `(r, 1, m)` (one basis shared by the `n` scalings), `randlora_B` `(M, n, r)`.

use crate::config::RandloraConfig;
use peft_core::config::NamedTensors;
use peft_core::rng::Generator;
use peft_core::{PeftError, Result};
use tch::{Kind, Tensor};

/// The checkpoint keys of the bases at the model level.
const MODEL_KEYS: [&str; 2] = ["base_model.randlora_A", "base_model.randlora_B"];

/// PEFT's number of bases for smallest side `min_dim`: `⌈min_dim / r⌉`, so that the update can be full rank.
pub fn num_bases(min_dim: i64, r: i64) -> i64 {
    (min_dim + r - 1) / r
}

/// Draws `(randlora_A, randlora_B)` for layers of at most `out_max` outputs and `in_max` inputs, from a CPU
/// generator seeded with `projection_prng_key`, in PEFT's order: A, then B.
///
/// Dense (the default): `kaiming_uniform_(a=√5)` drawn in bf16 (PEFT's `_kaiming_init` picks bf16 whenever
/// the machine has it, which PyTorch reports for every CPU), B as `n` draws of `(M, 1, r)` concatenated,
/// each divided by its own std (still bf16; the first layer casts them to its dtype).
/// `sparse` / `very_sparse`: `torch.rand` (f32), `-1` below `1 / (2s)`, `1` above `1 - 1 / (2s)`, `0`
/// between (`s = 3`, or `√m` for `very_sparse`), divided by the std.
///
/// # Errors
/// libtorch's error.
pub fn draw(config: &RandloraConfig, out_max: i64, in_max: i64) -> Result<(Tensor, Tensor)> {
    let (max_dim, min_dim) = (out_max.max(in_max), out_max.min(in_max));
    let r = config.r;
    let n = num_bases(min_dim, r);
    let mut g = Generator::new(config.projection_prng_key as u64)?;
    let sparsity = if config.very_sparse {
        Some((min_dim as f64).sqrt())
    } else if config.sparse {
        Some(3.0)
    } else {
        None
    };
    let (a, b) = match sparsity {
        None => {
            let a = peft_projections::kaiming_uniform(&[r, 1, min_dim], 5f64.sqrt(), Kind::BFloat16, &mut g)?;
            let pieces = (0..n)
                .map(|_| {
                    peft_projections::kaiming_uniform(&[max_dim, 1, r], 5f64.sqrt(), Kind::BFloat16, &mut g)
                })
                .collect::<Result<Vec<_>>>()?;
            let b = Tensor::f_cat(&pieces, 1).map_err(PeftError::torch("concatenating RandLoRA's bases"))?;
            (a, b)
        }
        Some(s) => {
            let a = g.rand(&[r, 1, min_dim])?;
            let b = g.rand(&[max_dim, n, r])?;
            (ternary(&a, s)?, ternary(&b, s)?)
        }
    };
    let normalise = |t: Tensor| t.f_std(true).and_then(|s| t.f_div(&s));
    let a = normalise(a).map_err(PeftError::torch("normalising randlora_A"))?;
    let b = normalise(b).map_err(PeftError::torch("normalising randlora_B"))?;
    Ok((a, b))
}

/// `-1` where `u < 1 / (2s)`, `1` where `u > 1 - 1 / (2s)`, `0` elsewhere (PEFT's masked writes into zeros;
/// the thresholds are f64 like Python's, compared in `u`'s f32 as ATen does).
fn ternary(u: &Tensor, s: f64) -> Result<Tensor> {
    let low = 1.0 / (2.0 * s);
    let high = 1.0 - 1.0 / (2.0 * s);
    let f = || -> std::result::Result<Tensor, tch::TchError> {
        let out = u.f_zeros_like()?;
        let out = out.f_masked_fill(&u.f_lt(low)?, -1.0)?;
        out.f_masked_fill(&u.f_gt(high)?, 1.0)
    };
    f().map_err(PeftError::torch("making RandLoRA's sparse bases"))
}

/// The module of a layer's `randlora_lambda` checkpoint key (`base_model.model.lin0.randlora_lambda`).
fn layer_module(key: &str) -> Option<&str> {
    key.strip_suffix(".randlora_lambda")
}

/// Checks the per-layer copies of the bases in a file against the model-level ones and drops the copies
/// under layers the adapter does not have: PEFT's shared `BufferDict` puts every adapter's entry on every
/// RandLoRA layer, so its file for an adapter carries copies under the other adapters' layers too. The
/// layers share one tensor, which PEFT's load overwrites with each copy in turn; a copy that differs from
/// the model-level tensor (a file edited by hand) is refused rather than silently taking one of them.
///
/// # Errors
/// A copy that differs from `base_model.randlora_A` / `randlora_B`, naming the key.
pub fn check_layer_copies(tensors: NamedTensors, path: &std::path::Path) -> Result<NamedTensors> {
    let shared: Vec<Option<Tensor>> = MODEL_KEYS
        .iter()
        .map(|k| tensors.iter().find(|(key, _)| key == k).map(|(_, t)| t.shallow_clone()))
        .collect();
    let modules: Vec<String> =
        tensors.iter().filter_map(|(k, _)| layer_module(k).map(str::to_string)).collect();
    let mut kept = Vec::with_capacity(tensors.len());
    for (key, t) in tensors {
        let copy = if MODEL_KEYS.contains(&key.as_str()) {
            None
        } else {
            [".randlora_A", ".randlora_B"]
                .iter()
                .enumerate()
                .find_map(|(i, suffix)| key.strip_suffix(suffix).map(|m| (i, m.to_string())))
        };
        let Some((i, module)) = copy else {
            kept.push((key, t));
            continue;
        };
        if let Some(s) = &shared[i] {
            if !(s.size() == t.size() && s.kind() == t.kind() && s.equal(&t)) {
                return Err(PeftError::Invalid(format!(
                    "{}: `{key}` is a per-layer copy of RandLoRA's shared bases but does not equal `{}`",
                    path.display(),
                    MODEL_KEYS[i]
                )));
            }
        }
        if modules.contains(&module) {
            kept.push((key, t));
        }
    }
    Ok(kept)
}
