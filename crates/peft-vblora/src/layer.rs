//! `VbloraLayer`: PEFT 0.21.2's `vblora.Linear` — VB-LoRA on `nn.Linear` (dense or quantized) and GPT-2's
//! `Conv1D`.
//!
//! With `L = vector_length` and the bank `V` `(num_vectors, L)`:
//!
//! * `vblora_logits_A.<adapter>` `(r, in/L, num_vectors)` and `vblora_logits_B.<adapter>`
//!   `(out/L, r, num_vectors)`; every row of logits picks its `topk` largest entries `z` at indices `j` and
//!   composes `softmax(z) · V[j]` `(L,)`: `A` is `(r, in/L, L)` → `(r, in)`, `B` is `(out/L, r, L)` → its
//!   transpose `(out/L, L, r)` → `(out, r)`;
//! * forward, not merged: `y = base(x) + (drop(x) · Aᵀ) · Bᵀ`, each active adapter in turn;
//! * `ΔW = B·A` `(out, in)` (transposed for `Conv1D`), added on merge.
//!
//! The bank is the adapter's (`vblora_vector_bank.<adapter>`), shared by all its layers and trained with
//! them; the first layer holds it in the var store and saves it under the model-level key
//! `base_model.vblora_vector_bank`.

use crate::config::{VbloraConfig, PEFT_TYPE};
use peft_core::config::LayerInit;
use peft_core::layer::{merge_delta, unmerge_delta, BaseLayer, ForwardCtx, MergeCtx, TunerLayer};
use peft_core::{PeftError, Result};
use tch::{Device, Kind, Tensor};

/// One VB-LoRA adapter on one linear layer.
#[derive(Debug)]
pub struct VbloraLayer {
    adapter: String,
    module: String,
    r: i64,
    topk: i64,
    in_features: i64,
    out_features: i64,
    fan_in_fan_out: bool,
    dropout: f64,
    logits_a: Tensor,
    logits_b: Tensor,
    bank: Tensor,
    /// This layer registered the bank and saves it.
    owns_bank: bool,
}

const UNSUPPORTED: &str = "Currently, only the following modules are supported: `torch.nn.Linear`, \
                           `transformers.pytorch_utils.Conv1D`.";

impl VbloraLayer {
    /// Creates the adapter as PEFT's `_create_and_replace` + `update_layer`: the bank drawn again
    /// (`U(−bound, bound)`; every layer's draw replaces the shared bank, as in PEFT), then the logits of `A`
    /// and `B` (`N(0, init_logits_std²)`), moved to the base layer's device and dtype.
    ///
    /// # Errors
    /// [`PeftError::UnsupportedLayer`] for anything but linear layers and `Conv1D`; sizes `vector_length`
    /// does not divide.
    pub fn create(config: &mut VbloraConfig, ctx: &mut LayerInit<'_, '_>) -> Result<Self> {
        let Some(lin) = ctx.base.as_linear() else {
            return Err(ctx.unsupported(PEFT_TYPE, UNSUPPORTED));
        };
        let (in_features, out_features, fifo) = (lin.in_features(), lin.out_features(), lin.fan_in_fan_out());
        ctx.match_fan_in_fan_out(&mut config.fan_in_fan_out, fifo);
        let l = config.vector_length;
        for (what, n) in [("in_features", in_features), ("out_features", out_features)] {
            if n % l != 0 {
                return Err(PeftError::Invalid(format!(
                    "`{}`: `{what}` {n} must be divisible by `vector_length` {l}",
                    ctx.module_name
                )));
            }
        }
        let opts = (Kind::Float, Device::Cpu);
        let torch = || PeftError::torch("initialising VB-LoRA");
        let mut bank = Tensor::f_zeros([config.num_vectors, l], opts).map_err(|e| torch()(e))?;
        let bound = config.init_vector_bank_bound;
        peft_core::init::uniform_(&mut bank, -bound, bound)?;
        let r = config.r;
        let mut logits_a =
            Tensor::f_zeros([r, in_features / l, config.num_vectors], opts).map_err(|e| torch()(e))?;
        let mut logits_b =
            Tensor::f_zeros([out_features / l, r, config.num_vectors], opts).map_err(|e| torch()(e))?;
        peft_core::init::normal_(&mut logits_a, 0.0, config.init_logits_std)?;
        peft_core::init::normal_(&mut logits_b, 0.0, config.init_logits_std)?;
        let adapter = ctx.adapter_name.to_string();
        let bank = ctx.place(bank)?;
        let shared = config.bank.0.clone().ok_or_else(|| {
            PeftError::Invalid("VB-LoRA's vector bank was not created before its layers".into())
        })?;
        let mut slot = shared.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let (bank, owns_bank) = match slot.as_ref() {
            Some(existing) => {
                // PEFT replaces the bank in the dict every layer reads: all layers see this draw.
                let mut existing = existing.shallow_clone();
                tch::no_grad(|| existing.set_data(&bank));
                (existing, false)
            }
            None => {
                let registered = (&ctx.path / "vblora_vector_bank").add(&adapter, bank, true);
                *slot = Some(registered.shallow_clone());
                (registered, true)
            }
        };
        drop(slot);
        Ok(Self {
            logits_a: (&ctx.path / "vblora_logits_A").add(&adapter, ctx.place(logits_a)?, true),
            logits_b: (&ctx.path / "vblora_logits_B").add(&adapter, ctx.place(logits_b)?, true),
            adapter,
            module: ctx.module_name.to_string(),
            r,
            topk: config.topk,
            in_features,
            out_features,
            fan_in_fan_out: fifo,
            dropout: config.vblora_dropout,
            bank,
            owns_bank,
        })
    }

    /// `(logits_A, logits_B, bank)`.
    pub fn tensors(&self) -> (&Tensor, &Tensor, &Tensor) {
        (&self.logits_a, &self.logits_b, &self.bank)
    }

    /// `softmax(top-k logits) · V[top-k indices]`, summed over the k: `(…, L)`.
    fn compose(&self, logits: &Tensor) -> Tensor {
        let (values, indices) = logits.topk(self.topk, -1, true, true);
        let weights = values.softmax(-1, None::<Kind>);
        // `bank[indices]`: the same advanced-indexing op as PEFT's (its backward accumulates alike).
        (weights.unsqueeze(-1) * self.bank.index(&[Some(&indices)])).sum_dim_intlist(
            [-2i64].as_slice(),
            false,
            None::<Kind>,
        )
    }

    /// The composed LoRA factors `A` `(r, in)` and `B` `(out, r)`.
    pub fn factors(&self) -> (Tensor, Tensor) {
        let a = self.compose(&self.logits_a).reshape([self.r, -1]);
        let b = self.compose(&self.logits_b).transpose(1, 2).reshape([-1, self.r]);
        (a, b)
    }

    /// PEFT's `get_delta_weight`: `B·A` `(out, in)`, transposed for `Conv1D`.
    pub fn delta_weight(&self) -> Tensor {
        let (a, b) = self.factors();
        let delta = b.matmul(&a);
        if self.fan_in_fan_out {
            delta.tr()
        } else {
            delta
        }
    }
}

impl TunerLayer for VbloraLayer {
    fn peft_type(&self) -> &'static str {
        PEFT_TYPE
    }

    fn named_tensors(&self) -> Vec<(String, Tensor)> {
        let a = &self.adapter;
        let mut v = vec![
            (format!("vblora_logits_A.{a}"), self.logits_a.shallow_clone()),
            (format!("vblora_logits_B.{a}"), self.logits_b.shallow_clone()),
        ];
        if self.owns_bank {
            v.push((format!("vblora_vector_bank.{a}"), self.bank.shallow_clone()));
        }
        v
    }

    /// The bank is saved once, at the model level: `base_model.vblora_vector_bank`.
    fn checkpoint_key(&self, key: &str, adapter: &str) -> String {
        if key.ends_with(&format!(".vblora_vector_bank.{adapter}")) {
            return "base_model.vblora_vector_bank".to_string();
        }
        peft_core::peft_config::keys::remove_adapter_name(key, adapter)
    }

    fn transform_output(&self, _base: &dyn BaseLayer, x: &Tensor, y: Tensor, ctx: &ForwardCtx<'_>) -> Tensor {
        let (a, b) = self.factors();
        let x = x.to_kind(self.bank.kind());
        let x = if ctx.train && self.dropout > 0.0 { x.dropout(self.dropout, true) } else { x };
        y + x.linear::<Tensor>(&a, None).linear::<Tensor>(&b, None)
    }

    fn merge(&mut self, base: &mut dyn BaseLayer, ctx: &MergeCtx<'_>) -> Result<()> {
        let delta = tch::no_grad(|| self.delta_weight());
        merge_delta(base, &delta, ctx.safe, &self.adapter, &self.module)
    }

    fn unmerge(&mut self, base: &mut dyn BaseLayer) -> Result<()> {
        let delta = tch::no_grad(|| self.delta_weight());
        unmerge_delta(base, &delta, &self.module)
    }

    fn describe(&self) -> String {
        format!(
            "vblora.Linear(in_features={}, out_features={}, r={}, topk={})",
            self.in_features, self.out_features, self.r, self.topk
        )
    }
}
