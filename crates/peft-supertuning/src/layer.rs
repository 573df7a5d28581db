//! `SupertuningLayer`: PEFT 0.21.2's `supertuning.Linear` — Super-Tuning on plain `nn.Linear` layers.
//!
//! With the frozen weight `W` `(out, in)`, bias `b` and `n = ⌊out · in · (1 − sparsity)⌋`, each adapter has
//!
//! * `supertuning_indices.<adapter>` `(n)` int32: flat row-major positions in `W`, the `n` entries of
//!   largest (`select_top`) or smallest `|W|` as `topk` orders them (a buffer, saved unless
//!   `save_precomputed_indices` is false);
//! * `supertuning_values.<adapter>` `(n)` f32: the trained entries, scatter-added onto `W` at those
//!   positions;
//! * with `r` set (Supra): `supertuning_lora_A.<adapter>.weight` `(r, in)` and
//!   `supertuning_lora_B.<adapter>.weight` `(out, r)`, scaled by `lora_alpha / r`.
//!
//! Forward (not merged), for the active adapters together as PEFT's loop:
//! `y = linear(x, W + Σ scatter(indices, values), b) + Σ (alpha / r) · B·A·dropout(x)`. Merging adds the
//! same support and `(alpha / r) · B·A` to `W`; unmerging subtracts them again (LoRA pair first).

use crate::config::{SupertuningConfig, PEFT_TYPE};
use peft_core::config::LayerInit;
use peft_core::layer::{all_finite, replace_weight, BaseLayer, ForwardCtx, MergeCtx, TunerLayer, WeightLike};
use peft_core::{init, PeftError, Result};
use tch::{Device, Kind, Tensor};

/// The Supra LoRA pair of one adapter.
#[derive(Debug)]
pub struct Supra {
    /// `supertuning_lora_A` `(r, in)`.
    pub a: Tensor,
    /// `supertuning_lora_B` `(out, r)`.
    pub b: Tensor,
    /// The rank.
    pub r: i64,
    /// `lora_alpha` (the scale is `alpha / r`).
    pub alpha: f64,
    /// Dropout on the pair's input (training only).
    pub dropout: f64,
}

impl Supra {
    /// `alpha / r`, in double precision as PEFT divides its Python numbers.
    pub fn scaling(&self) -> f64 {
        self.alpha / self.r as f64
    }

    /// PEFT's `_lora_delta`: `((alpha / r) · B·A)` in `kind`, `(out, in)`.
    pub fn delta(&self, kind: Kind) -> Tensor {
        (self.b.matmul(&self.a) * self.scaling()).to_kind(kind)
    }

    /// What the pair adds to an output in `kind`: `((alpha / r) · B·A·dropout(x))`, with the input cast to
    /// the pair's dtype first (the pair stays f32 when the base is half precision).
    fn output(&self, x: &Tensor, kind: Kind, train: bool) -> Tensor {
        let x = if self.dropout > 0.0 { x.dropout(self.dropout, train) } else { x.shallow_clone() };
        let h = x.to_kind(self.a.kind()).linear::<Tensor>(&self.a, None).linear::<Tensor>(&self.b, None);
        (h * self.scaling()).to_kind(kind)
    }
}

/// One Super-Tuning adapter on one layer.
#[derive(Debug)]
pub struct SupertuningLayer {
    adapter: String,
    module: String,
    in_features: i64,
    out_features: i64,
    values: Tensor,
    indices: Tensor,
    supra: Option<Supra>,
    save_indices: bool,
}

/// PEFT's support selection: the flat positions of the `n` entries of `weight` of largest (`largest`) or
/// smallest magnitude, in `topk`'s order (descending, resp. ascending magnitude; ties as libtorch's
/// `topk` breaks them on the weight's device), as int32 on that device.
///
/// # Errors
/// A libtorch failure (e.g. `n` above the number of entries).
pub fn magnitude_support(weight: &Tensor, n: i64, largest: bool) -> Result<Tensor> {
    tch::no_grad(|| {
        let scores = weight.f_detach()?.f_abs()?.f_flatten(0, -1)?;
        let (_, indices) = scores.f_topk(n, -1, largest, true)?;
        indices.f_to_kind(Kind::Int)
    })
    .map_err(PeftError::torch("selecting the Super-Tuning support"))
}

/// `Tensor::empty(shape)` Kaiming-uniform with `a = √5`: what `nn.Linear(bias=False)` draws when built.
fn linear_weight(shape: [i64; 2], device: Device) -> Result<Tensor> {
    let mut t = Tensor::f_empty(shape, (Kind::Float, device))
        .map_err(PeftError::torch("allocating a LoRA factor"))?;
    init::kaiming_uniform_(&mut t, 5f64.sqrt())?;
    Ok(t)
}

impl SupertuningLayer {
    /// Creates the adapter as PEFT's `update_layer` does: the support from the base weight's magnitudes,
    /// then (on the base weight's device, as PEFT allocates them) `values` = zeros (`init_weights`) or
    /// `randn(n)`, then for Supra the two `nn.Linear` factors — each Kaiming-uniform when built, `A` drawn
    /// again, `B` zeroed (`init_weights`) or drawn again — all moved to the base's dtype and upcast as PEFT
    /// does.
    ///
    /// # Errors
    /// [`PeftError::UnsupportedLayer`] for anything but a dense `nn.Linear`; a sparsity that leaves no
    /// entry to train.
    pub fn create(config: &mut SupertuningConfig, ctx: &mut LayerInit<'_, '_>) -> Result<Self> {
        let hint = "Currently, only `torch.nn.Linear` is supported.";
        let Some(lin) = ctx.base.as_linear() else { return Err(ctx.unsupported(PEFT_TYPE, hint)) };
        if lin.fan_in_fan_out() {
            return Err(ctx.unsupported(PEFT_TYPE, hint));
        }
        if !lin.weight_is_storage() {
            return Err(ctx.unsupported(
                PEFT_TYPE,
                "a quantized linear layer: the support is ranked and patched on the stored weight itself, so \
                 only a dense `torch.nn.Linear` can take it",
            ));
        }
        let (in_features, out_features) = (lin.in_features(), lin.out_features());
        let weight = lin.weight();
        let numel = in_features * out_features;
        let n = config.num_trainable(numel);
        if n < 1 {
            return Err(PeftError::Invalid(format!(
                "`{}`: sparsity={} leaves no trainable entries for a weight with {numel} elements — no parameter \
                 would be adapted. Lower the sparsity so at least one entry is trainable.",
                ctx.module_name, config.sparsity.0
            )));
        }
        let device = weight.device();
        let indices = magnitude_support(&weight, n, config.select_top)?;
        let values = if config.init_weights {
            Tensor::f_zeros([n], (Kind::Float, device))
        } else {
            Tensor::f_randn([n], (Kind::Float, device))
        }
        .map_err(PeftError::torch("initialising supertuning_values"))?;
        let supra = match config.r {
            Some(r) => {
                let mut a = linear_weight([r, in_features], device)?;
                let mut b = linear_weight([out_features, r], device)?;
                init::kaiming_uniform_(&mut a, 5f64.sqrt())?;
                if config.init_weights {
                    init::zeros_(&mut b)?;
                } else {
                    init::kaiming_uniform_(&mut b, 5f64.sqrt())?;
                }
                Some((a, b, r))
            }
            None => None,
        };
        let adapter = ctx.adapter_name.to_string();
        let values = (&ctx.path / "supertuning_values").add(&adapter, ctx.place(values)?, true);
        let indices = (&ctx.path / "supertuning_indices").add(&adapter, indices, false);
        let supra = match supra {
            Some((a, b, r)) => Some(Supra {
                a: (&ctx.path / "supertuning_lora_A" / &adapter).add("weight", ctx.place(a)?, true),
                b: (&ctx.path / "supertuning_lora_B" / &adapter).add("weight", ctx.place(b)?, true),
                r,
                alpha: config.alpha().unwrap_or(2.0 * r as f64),
                dropout: config.lora_dropout.value(),
            }),
            None => None,
        };
        Ok(Self {
            adapter,
            module: ctx.module_name.to_string(),
            in_features,
            out_features,
            values,
            indices,
            supra,
            save_indices: config.save_precomputed_indices,
        })
    }

    /// The trained entries, `(n)`.
    pub fn values(&self) -> &Tensor {
        &self.values
    }

    /// Their flat positions in the `(out, in)` weight, `(n)` int32.
    pub fn indices(&self) -> &Tensor {
        &self.indices
    }

    /// The Supra LoRA pair, when `r` is set.
    pub fn supra(&self) -> Option<&Supra> {
        self.supra.as_ref()
    }

    /// Whether the positions are saved with the adapter (`save_precomputed_indices`).
    pub fn saves_indices(&self) -> bool {
        self.save_indices
    }

    /// The positions as the int64 index `scatter_add` takes.
    fn index(&self) -> Tensor {
        self.indices.to_kind(Kind::Int64)
    }

    /// `flat` (a flattened weight) with this adapter's entries added at their positions, in `flat`'s dtype.
    fn scatter_onto(&self, flat: &Tensor) -> Tensor {
        flat.scatter_add(0, &self.index(), &self.values.to_kind(flat.kind()))
    }

    /// PEFT's `get_delta_weight`: the support scattered onto zeros, plus the Supra pair's `(alpha / r) · B·A`,
    /// `(out, in)` in `like`'s dtype.
    pub fn delta_weight(&self, like: &Tensor) -> Tensor {
        tch::no_grad(|| {
            let sparse = self.scatter_onto(&like.zeros_like().reshape([-1])).reshape_as(like);
            match &self.supra {
                Some(s) => sparse + s.delta(like.kind()),
                None => sparse,
            }
        })
    }

    /// The weight with this adapter merged, as PEFT's merge computes it: support first, then the pair.
    fn merged_weight(&self, w: &Tensor) -> Tensor {
        let merged = self.scatter_onto(&w.reshape([-1])).reshape_as(w);
        match &self.supra {
            Some(s) => merged + s.delta(w.kind()),
            None => merged,
        }
    }

    fn dense<'a>(&self, base: &'a mut dyn BaseLayer, what: &str) -> Result<&'a mut dyn WeightLike> {
        let kind = base.kind();
        base.as_weighted_mut().ok_or_else(|| {
            PeftError::Invalid(format!("`{}`: a {kind} layer has no weight to {what}", self.module))
        })
    }
}

/// Whether in-place updates of `w` reach the layer (dense, contiguous storage, so that its flat view is
/// the storage itself).
fn writes_through(w: &dyn WeightLike, t: &Tensor) -> bool {
    w.weight_is_storage() && t.is_contiguous()
}

impl TunerLayer for SupertuningLayer {
    fn peft_type(&self) -> &'static str {
        PEFT_TYPE
    }

    /// PEFT's state-dict order: `supertuning_values`, `supertuning_indices`, then the LoRA factors.
    fn named_tensors(&self) -> Vec<(String, Tensor)> {
        let a = &self.adapter;
        let mut out = vec![
            (format!("supertuning_values.{a}"), self.values.shallow_clone()),
            (format!("supertuning_indices.{a}"), self.indices.shallow_clone()),
        ];
        if let Some(s) = &self.supra {
            out.push((format!("supertuning_lora_A.{a}.weight"), s.a.shallow_clone()));
            out.push((format!("supertuning_lora_B.{a}.weight"), s.b.shallow_clone()));
        }
        out
    }

    fn is_buffer(&self, name: &str) -> bool {
        name.starts_with("supertuning_indices.")
    }

    fn is_trainable_tensor(&self, name: &str) -> bool {
        !self.is_buffer(name)
    }

    /// Without `save_precomputed_indices` the positions are a non-persistent buffer: neither saved nor
    /// expected in a file (loading keeps the ones recomputed from the base weight).
    fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = self.named_tensors();
        if !self.save_indices {
            out.retain(|(name, _)| !self.is_buffer(name));
        }
        out
    }

    /// `linear(x, W + Σ support, b)`, then each Supra pair's output added in activation order, as PEFT's
    /// forward does for the whole group of active adapters.
    fn replace_base(&self, base: &dyn BaseLayer, x: &Tensor, ctx: &ForwardCtx<'_>) -> Option<Tensor> {
        let w = base.as_weighted().filter(|w| w.weight_is_storage())?;
        let group = ctx.active_group(self)?;
        let weight = w.weight();
        let mut flat = weight.reshape([-1]);
        for a in &group {
            flat = a.scatter_onto(&flat);
        }
        let mut result = x.linear(&flat.reshape_as(&weight), w.bias().as_ref());
        for s in group.iter().filter_map(|a| a.supra.as_ref()) {
            let kind = result.kind();
            // Out of place, as PEFT adds: the linear output stays untouched for autograd.
            #[allow(clippy::assign_op_pattern)]
            {
                result = result + s.output(x, kind, ctx.train);
            }
        }
        Some(result)
    }

    /// PEFT's merge: in place `W.view(-1).scatter_add_(support)` then `W += (alpha / r) · B·A`; a safe
    /// merge computes the same on a copy and refuses a non-finite result.
    fn merge(&mut self, base: &mut dyn BaseLayer, ctx: &MergeCtx<'_>) -> Result<()> {
        let w = self.dense(base, "merge into")?;
        let weight = w.weight();
        let torch = PeftError::torch("merging a Super-Tuning adapter into the base weight");
        if ctx.safe || !writes_through(w, &weight) {
            let merged = tch::no_grad(|| self.merged_weight(&weight));
            if ctx.safe && !all_finite(&merged)? {
                return Err(PeftError::NonFiniteMerge {
                    adapter: self.adapter.clone(),
                    module: self.module.clone(),
                });
            }
            return replace_weight(w, &merged);
        }
        tch::no_grad(|| -> std::result::Result<(), tch::TchError> {
            let values = self.values.to_kind(weight.kind());
            let mut flat = weight.f_reshape([-1])?;
            let _ = flat.f_scatter_add_(0, &self.index(), &values)?;
            if let Some(s) = &self.supra {
                let mut whole = weight.shallow_clone();
                let _ = whole.f_add_(&s.delta(weight.kind()))?;
            }
            Ok(())
        })
        .map_err(torch)
    }

    /// PEFT's unmerge: `W -= (alpha / r) · B·A`, then `W.view(-1).scatter_add_(−values)`.
    fn unmerge(&mut self, base: &mut dyn BaseLayer) -> Result<()> {
        let w = self.dense(base, "unmerge from")?;
        let weight = w.weight();
        let torch = PeftError::torch("unmerging a Super-Tuning adapter from the base weight");
        let inplace = writes_through(w, &weight);
        let target = if inplace { weight.shallow_clone() } else { weight.copy() };
        tch::no_grad(|| -> std::result::Result<(), tch::TchError> {
            if let Some(s) = &self.supra {
                let mut whole = target.shallow_clone();
                let _ = whole.f_sub_(&s.delta(target.kind()))?;
            }
            let values = self.values.to_kind(target.kind()).f_neg()?;
            let mut flat = target.f_reshape([-1])?;
            let _ = flat.f_scatter_add_(0, &self.index(), &values)?;
            Ok(())
        })
        .map_err(torch)?;
        if inplace {
            Ok(())
        } else {
            w.set_weight(&target)
        }
    }

    /// PEFT's class is `Linear` (its layer status reports that name).
    fn describe(&self) -> String {
        let r = self.supra.as_ref().map_or_else(|| "None".to_string(), |s| s.r.to_string());
        format!(
            "Linear(in_features={}, out_features={}, trainable_entries={}, r={r})",
            self.in_features,
            self.out_features,
            self.values.size()[0]
        )
    }
}
