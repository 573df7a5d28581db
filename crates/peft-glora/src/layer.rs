//! `GloraLayer`: PEFT 0.21.2's `glora.GloraLinear` — GLoRA on plain `nn.Linear` layers.
//!
//! With the frozen weight `W` `(out, in)` and bias `b` `(out)`, each adapter has five terms, each a product
//! `Xd·Xu` (`"lora"`), a vector `X`, a scalar `X[0]` or a zero buffer (`"none"`):
//!
//! * `glora_A.<adapter>`, `glora_B.<adapter>`: `(out, in)` from `Xd` `(out, r)` · `Xu` `(r, in)`, a vector
//!   `(out, 1)`, a scalar, or `zeros` `(out, in)`;
//! * `glora_C.<adapter>`: `(in, 1)` from `Xd` `(in, r)` · `Xu` `(r, 1)`, a vector `(in, 1)`, or `zeros`;
//! * `glora_D.<adapter>`, `glora_E.<adapter>`: a vector `(out)`, a scalar, or `zeros` `(out)`. A layer
//!   without bias gets `zeros` for `C`, `D` and `E` whatever the config says.
//!
//! Forward (not merged), for the active adapters together as PEFT's loop: with `W' = W + W⊙A + B` and
//! `b' = b + b⊙D + E + (W·C)[:, 0]`, `y = base(x) + Σ linear(x, W', b') − n·base(x)`. In a mixed batch
//! each row gets `base(x) + (linear(x, W', b') − base(x))` of its own adapter.
//!
//! Merging is a layer-wide operation in PEFT: the adapters merged earlier are unmerged, then all are
//! merged from the original `W₀`, `b₀` (`W = W₀ + Σ (W₀⊙A + B)`, `b = b₀ + Σ (b₀⊙D + E + W₀·C)`);
//! unmerging recovers `W₀ = (W − ΣB) / (1 + ΣA)` and `b₀ = (b − ΣE − ΣW₀·C) / (1 + ΣD)` over all merged
//! adapters and merges the remaining ones again. Every GLoRA adapter of a layer shares one [`LayerState`]
//! for that (see [`GloraLayer::merge`]).

use crate::config::{GloraConfig, PathKind, PEFT_TYPE};
use peft_core::config::LayerInit;
use peft_core::layer::{all_finite, BaseLayer, ForwardCtx, MergeCtx, TunerLayer, WeightLike};
use peft_core::mixed::{MixedBatch, MixedCache};
use peft_core::{PeftError, Result};
use std::sync::{Arc, Mutex, MutexGuard};
use tch::{Device, Kind, Tensor};

/// One of the five terms of a GLoRA adapter.
#[derive(Debug)]
pub enum Term {
    /// `"lora"`: `Xd·Xu`.
    Lora {
        /// `Xd` `(rows, r)`.
        xd: Tensor,
        /// `Xu` `(r, cols)`.
        xu: Tensor,
    },
    /// `"vector"`: `X`.
    Vector(Tensor),
    /// `"constant"`: `X[0]` of a one-element `X`.
    Scalar(Tensor),
    /// `"none"`: the zero buffer `zeros`.
    Zeros(Tensor),
}

impl Term {
    /// The same tensors (shallow clones).
    fn share(&self) -> Term {
        match self {
            Term::Lora { xd, xu } => Term::Lora { xd: xd.shallow_clone(), xu: xu.shallow_clone() },
            Term::Vector(x) => Term::Vector(x.shallow_clone()),
            Term::Scalar(x) => Term::Scalar(x.shallow_clone()),
            Term::Zeros(x) => Term::Zeros(x.shallow_clone()),
        }
    }

    /// The term's value (PEFT's `GloraPath.forward()`), differentiable.
    pub fn value(&self) -> Tensor {
        match self {
            Term::Lora { xd, xu } => xd.matmul(xu),
            Term::Vector(x) | Term::Zeros(x) => x.shallow_clone(),
            Term::Scalar(x) => x.get(0),
        }
    }

    fn named(&self, prefix: &str, out: &mut Vec<(String, Tensor)>) {
        match self {
            Term::Lora { xd, xu } => {
                out.push((format!("{prefix}.Xd"), xd.shallow_clone()));
                out.push((format!("{prefix}.Xu"), xu.shallow_clone()));
            }
            Term::Vector(x) | Term::Scalar(x) => out.push((format!("{prefix}.X"), x.shallow_clone())),
            Term::Zeros(z) => out.push((format!("{prefix}.zeros"), z.shallow_clone())),
        }
    }
}

/// The five terms of one adapter.
#[derive(Debug)]
pub struct Terms {
    /// `glora_A`: the weight's multiplicative term.
    pub a: Term,
    /// `glora_B`: the weight's additive term.
    pub b: Term,
    /// `glora_C`: the weight-to-bias term.
    pub c: Term,
    /// `glora_D`: the bias's multiplicative term.
    pub d: Term,
    /// `glora_E`: the bias's additive term.
    pub e: Term,
}

/// `term.value()` on the weight's device and in its dtype (PEFT's `.to(device=device, dtype=dtype)`).
fn on(term: &Term, like: &Tensor) -> Tensor {
    term.value().to_device(like.device()).to_kind(like.kind())
}

impl Terms {
    fn share(&self) -> Terms {
        Terms {
            a: self.a.share(),
            b: self.b.share(),
            c: self.c.share(),
            d: self.d.share(),
            e: self.e.share(),
        }
    }

    /// `W + W⊙A + B`.
    fn weight(&self, w: &Tensor) -> Tensor {
        w + w * on(&self.a, w) + on(&self.b, w)
    }

    /// `b + b⊙D + E + (W·C)[:, 0]`.
    fn bias(&self, w: &Tensor, b: &Tensor) -> Tensor {
        b + b * on(&self.d, w) + on(&self.e, w) + w.matmul(&on(&self.c, w)).squeeze_dim(-1)
    }

    /// `linear(x, W', b')`.
    fn adapted(&self, x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Tensor {
        let weight = self.weight(w);
        match b {
            Some(b) => x.linear(&weight, Some(&self.bias(w, b))),
            None => x.linear::<Tensor>(&weight, None),
        }
    }

    /// What merging adds to the weight: `W₀⊙A + B`.
    fn weight_delta(&self, w0: &Tensor) -> Tensor {
        w0 * on(&self.a, w0) + on(&self.b, w0)
    }

    /// What merging adds to the bias: `b₀⊙D + E + (W₀·C)[:, 0]`.
    fn bias_delta(&self, w0: &Tensor, b0: &Tensor) -> Tensor {
        b0 * on(&self.d, w0) + on(&self.e, w0) + w0.matmul(&on(&self.c, w0)).squeeze_dim(-1)
    }
}

/// The merge call that merged the layer's GLoRA adapters last.
#[derive(Debug)]
struct MergeCall {
    /// The call's [`MergeCtx::call_start_weight`], kept so that its storage (which stays allocated while it
    /// is held) identifies the call.
    start: Tensor,
    /// The original weight and bias the call merges from.
    w0: Tensor,
    b0: Option<Tensor>,
    /// The GLoRA adapters merged before the call.
    merged_before: Vec<String>,
}

/// After unmerging one adapter while others stay merged: the original weights recovered from all of
/// them, and the weights this left behind.
#[derive(Debug)]
struct Recovered {
    w0: Tensor,
    b0: Option<Tensor>,
    left_w: Tensor,
    left_b: Option<Tensor>,
}

/// What the GLoRA adapters of one layer share: PEFT's layer-level `merged_adapters` with each adapter's
/// terms, and the original weights of the merge in progress.
#[derive(Debug, Default)]
pub struct LayerState {
    /// `(adapter, layer id, terms)` of every GLoRA adapter on the layer.
    adapters: Vec<(String, u64, Terms)>,
    merged: Vec<String>,
    call: Option<MergeCall>,
    recovered: Option<Recovered>,
}

impl LayerState {
    /// The GLoRA adapters merged into the layer, in merge order.
    pub fn merged(&self) -> &[String] {
        &self.merged
    }

    fn terms(&self, name: &str) -> Option<&Terms> {
        self.adapters.iter().find(|(n, _, _)| n == name).map(|(_, _, t)| t)
    }

    /// PEFT's `W₀ = (W − ΣB) / (1 + ΣA)`, `b₀ = (b − ΣE − ΣW₀·C) / (1 + ΣD)` over the merged adapters.
    fn recover(&self, w: &Tensor, b: Option<&Tensor>) -> (Tensor, Option<Tensor>) {
        let merged: Vec<&Terms> = self.merged.iter().filter_map(|n| self.terms(n)).collect();
        let mut sum_a = w.zeros_like();
        let mut sum_b = w.zeros_like();
        for t in &merged {
            sum_a += on(&t.a, w);
            sum_b += on(&t.b, w);
        }
        let w0 = (w - sum_b) / (sum_a + 1.0);
        let b0 = b.map(|b| {
            let (mut sum_d, mut sum_e, mut sum_wc) = (b.zeros_like(), b.zeros_like(), b.zeros_like());
            for t in &merged {
                sum_d += on(&t.d, w);
                sum_e += on(&t.e, w);
                sum_wc += w0.matmul(&on(&t.c, w)).squeeze_dim(-1);
            }
            (b - sum_e - sum_wc) / (sum_d + 1.0)
        });
        (w0, b0)
    }

    /// `W₀ + Σ (W₀⊙A + B)` and `b₀ + Σ (b₀⊙D + E + W₀·C)` over `names`, accumulated in order as PEFT's
    /// `merge`.
    fn merged_from(&self, names: &[String], w0: &Tensor, b0: Option<&Tensor>) -> (Tensor, Option<Tensor>) {
        let mut w = w0.copy();
        let mut b = b0.map(Tensor::copy);
        for t in names.iter().filter_map(|n| self.terms(n)) {
            w += t.weight_delta(w0);
            if let (Some(b), Some(b0)) = (b.as_mut(), b0) {
                *b += t.bias_delta(w0, b0);
            }
        }
        (w, b)
    }
}

/// One GLoRA adapter on one linear layer.
#[derive(Debug)]
pub struct GloraLayer {
    adapter: String,
    module: String,
    in_features: i64,
    out_features: i64,
    r: i64,
    /// Tells this layer's entry in the shared state from a later adapter of the same name.
    id: u64,
    terms: Terms,
    state: Arc<Mutex<LayerState>>,
}

fn torch_err(what: &'static str) -> impl FnOnce(tch::TchError) -> PeftError {
    PeftError::torch(what)
}

fn empty(shape: &[i64]) -> Result<Tensor> {
    Tensor::f_zeros(shape, (Kind::Float, Device::Cpu)).map_err(torch_err("initialising GLoRA"))
}

fn kaiming(shape: &[i64]) -> Result<Tensor> {
    let mut t = empty(shape)?;
    peft_core::init::kaiming_uniform_(&mut t, 5f64.sqrt())?;
    Ok(t)
}

/// Draws a term as PEFT's path classes do. `rows × cols` is the `"lora"` product's shape; `vector` the
/// shape of the vector (`(n, 1)` columns draw Kaiming-uniform with fan-in 1, `(n)` vectors as a `(1, n)`
/// view); `zeros` the buffer's shape.
fn draw(
    kind: PathKind,
    rows: i64,
    cols: i64,
    r: i64,
    vector: &[i64],
    zeros: &[i64],
    init: bool,
) -> Result<RawTerm> {
    Ok(match kind {
        PathKind::Lora => {
            // GloraLoraPath: Xu Kaiming-uniform, then Xd zero (or Kaiming-uniform).
            let xu = kaiming(&[r, cols])?;
            let xd = if init { empty(&[rows, r])? } else { kaiming(&[rows, r])? };
            RawTerm::Lora(xd, xu)
        }
        PathKind::Vector => {
            let x = if init {
                empty(vector)?
            } else if vector.len() == 1 {
                kaiming(&[1, vector[0]])?.view([vector[0]])
            } else {
                kaiming(vector)?
            };
            RawTerm::Vector(x)
        }
        PathKind::Constant => {
            let mut x = empty(&[1])?;
            if !init {
                peft_core::init::normal_(&mut x, 0.0, 0.02)?;
            }
            RawTerm::Scalar(x)
        }
        PathKind::None => RawTerm::Zeros(empty(zeros)?),
    })
}

/// A term before it is placed and registered.
enum RawTerm {
    Lora(Tensor, Tensor),
    Vector(Tensor),
    Scalar(Tensor),
    Zeros(Tensor),
}

impl RawTerm {
    fn register(self, ctx: &LayerInit<'_, '_>, dict: &str) -> Result<Term> {
        let path = &ctx.path / dict / ctx.adapter_name;
        Ok(match self {
            RawTerm::Lora(xd, xu) => Term::Lora {
                xd: path.add("Xd", ctx.place(xd)?, true),
                xu: path.add("Xu", ctx.place(xu)?, true),
            },
            RawTerm::Vector(x) => Term::Vector(path.add("X", ctx.place(x)?, true)),
            RawTerm::Scalar(x) => Term::Scalar(path.add("X", ctx.place(x)?, true)),
            RawTerm::Zeros(z) => Term::Zeros(path.add("zeros", ctx.place(z)?, false)),
        })
    }
}

impl GloraLayer {
    /// Creates the adapter as PEFT's `update_layer`: `A`, `B`, `C`, `D`, `E` in that order, each drawn as
    /// its path class does (`"lora"`: `Xu` Kaiming-uniform, `Xd` zero or Kaiming-uniform; `"vector"`: zero
    /// or Kaiming-uniform; `"constant"`: zero or `N(0, 0.02²)`); moved to the base layer's device and dtype.
    /// The adapter joins the layer's other GLoRA adapters' shared [`LayerState`].
    ///
    /// # Errors
    /// [`PeftError::UnsupportedLayer`] for anything but a plain dense `nn.Linear` (PEFT refuses GPT-2's
    /// `Conv1D`, quantized linears, embeddings and convolutions); a negative `r` with a `"lora"` term.
    pub fn create(config: &mut GloraConfig, ctx: &mut LayerInit<'_, '_>) -> Result<Self> {
        let hint =
            "Target module is not a plain torch.nn.Linear (after unwrapping); GLoRA does not support this \
                    layer type.";
        let Some(lin) = ctx.base.as_linear().filter(|l| !l.fan_in_fan_out() && l.weight_is_storage()) else {
            return Err(ctx.unsupported(PEFT_TYPE, hint));
        };
        let (in_features, out_features, has_bias) =
            (lin.in_features(), lin.out_features(), lin.bias().is_some());
        let (ab, c, de) = config.paths();
        let r = config.r;
        if r < 0 && (ab == PathKind::Lora || (has_bias && c == PathKind::Lora)) {
            return Err(PeftError::Invalid(format!(
                "`{}`: Trying to create tensor with negative dimension {r}: [{out_features}, {r}]",
                ctx.module_name
            )));
        }
        let init = config.init_weights;
        let (o, i) = (out_features, in_features);
        let a = draw(ab, o, i, r, &[o, 1], &[o, i], init)?;
        let b = draw(ab, o, i, r, &[o, 1], &[o, i], init)?;
        let none = PathKind::None;
        // PEFT gives C, D and E zero buffers on layers without bias; `constant` is not a C option.
        let c_kind = if has_bias && c != PathKind::Constant { c } else { none };
        let c = draw(c_kind, i, 1, r, &[i, 1], &[i, 1], init)?;
        let de_kind = if has_bias && de != PathKind::Lora { de } else { none };
        let d = draw(de_kind, o, 1, r, &[o], &[o], init)?;
        let e = draw(de_kind, o, 1, r, &[o], &[o], init)?;
        let terms = Terms {
            a: a.register(ctx, "glora_A")?,
            b: b.register(ctx, "glora_B")?,
            c: c.register(ctx, "glora_C")?,
            d: d.register(ctx, "glora_D")?,
            e: e.register(ctx, "glora_E")?,
        };
        let state = ctx
            .siblings
            .values()
            .find_map(|s| s.as_any().downcast_ref::<GloraLayer>())
            .map(|s| s.state.clone())
            .unwrap_or_default();
        let adapter = ctx.adapter_name.to_string();
        let id = NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        {
            let mut st = lock(&state);
            st.adapters.retain(|(n, _, _)| n != &adapter);
            st.adapters.push((adapter.clone(), id, terms.share()));
        }
        Ok(Self {
            adapter,
            module: ctx.module_name.to_string(),
            in_features,
            out_features,
            r,
            id,
            terms,
            state,
        })
    }

    /// The adapter's five terms.
    pub fn terms(&self) -> &Terms {
        &self.terms
    }

    /// The rank of its `"lora"` terms.
    pub fn r(&self) -> i64 {
        self.r
    }

    /// The GLoRA adapters merged into this layer, in merge order (PEFT's `merged_adapters`), as the shared
    /// state recorded them. After a safe merge refused on another layer, which restores this one from a
    /// copy, it catches up at the next merge.
    pub fn merged_adapters(&self) -> Vec<String> {
        lock(&self.state).merged.clone()
    }

    fn weighted<'b>(&self, base: &'b dyn BaseLayer) -> Result<&'b dyn WeightLike> {
        base.as_weighted()
            .ok_or_else(|| PeftError::Invalid(format!("`{}`: the base layer has no weight", self.module)))
    }

    /// Writes the merged (or recovered) weight and bias into the base, refusing non-finite values with
    /// `safe` before writing anything.
    fn write(&self, base: &mut dyn BaseLayer, w: &Tensor, b: Option<&Tensor>, safe: bool) -> Result<()> {
        if safe && (!all_finite(w)? || b.map(all_finite).transpose()? == Some(false)) {
            return Err(PeftError::NonFiniteMerge {
                adapter: self.adapter.clone(),
                module: self.module.clone(),
            });
        }
        let module = self.module.clone();
        let weighted = base
            .as_weighted_mut()
            .ok_or_else(|| PeftError::Invalid(format!("`{module}`: the base layer has no weight")))?;
        weighted.set_weight(w)?;
        if let (Some(mut bias), Some(b)) = (weighted.bias(), b) {
            tch::no_grad(|| bias.f_copy_(b)).map_err(torch_err("writing GLoRA's merged bias"))?;
        }
        Ok(())
    }
}

impl Drop for GloraLayer {
    /// A deleted adapter leaves the shared state (unless merged: recovering the original weights needs it).
    fn drop(&mut self) {
        let mut st = lock(&self.state);
        if !st.merged.contains(&self.adapter) {
            let id = self.id;
            st.adapters.retain(|(_, i, _)| *i != id);
        }
    }
}

static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn lock(state: &Mutex<LayerState>) -> MutexGuard<'_, LayerState> {
    state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn detach_copy(t: &Tensor) -> Result<Tensor> {
    t.f_detach_copy().map_err(torch_err("copying GLoRA's base weights"))
}

impl TunerLayer for GloraLayer {
    fn peft_type(&self) -> &'static str {
        PEFT_TYPE
    }

    fn named_tensors(&self) -> Vec<(String, Tensor)> {
        let a = &self.adapter;
        let mut v = Vec::new();
        let t = &self.terms;
        for (dict, term) in
            [("glora_A", &t.a), ("glora_B", &t.b), ("glora_C", &t.c), ("glora_D", &t.d), ("glora_E", &t.e)]
        {
            term.named(&format!("{dict}.{a}"), &mut v);
        }
        v
    }

    fn is_buffer(&self, name: &str) -> bool {
        name.ends_with(".zeros")
    }

    fn is_trainable_tensor(&self, name: &str) -> bool {
        !self.is_buffer(name)
    }

    /// PEFT's loop over the active adapters: the first active GLoRA adapter of the layer computes
    /// `base + Σ linear(x, W', b') − n·base` for all of them.
    fn transform_output(&self, base: &dyn BaseLayer, x: &Tensor, y: Tensor, ctx: &ForwardCtx<'_>) -> Tensor {
        let Some(group) = ctx.active_group(self) else {
            return y;
        };
        let Some(w) = base.as_weighted() else { return y };
        let (weight, bias) = (w.weight(), w.bias());
        let kind = y.kind();
        let mut result = y.shallow_clone();
        // Out of place: `result` starts as the base output, which the subtraction and autograd still need.
        #[allow(clippy::assign_op_pattern)]
        for layer in &group {
            result = result + layer.terms.adapted(x, &weight, bias.as_ref());
        }
        let n = group.len() as i64;
        (result - &y * n).to_kind(kind)
    }

    fn as_mixed_batch(&self) -> Option<&dyn MixedBatch> {
        Some(self)
    }

    fn merge_needs_call_start_weight(&self) -> bool {
        true
    }

    /// PEFT's layer-wide merge, one adapter at a time as the layer's slots call it. Within one merge call
    /// (recognised by its call-start weight) each adapter adds its deltas computed from the weights the call
    /// merges from; the first adapter of a call with GLoRA adapters merged already recovers `W₀`, `b₀` from
    /// them and merges them all again from there, as PEFT's `merge` does after its `unmerge`.
    fn merge(&mut self, base: &mut dyn BaseLayer, ctx: &MergeCtx<'_>) -> Result<()> {
        let w = self.weighted(base)?;
        let (cur_w, cur_b) = (w.weight().detach(), w.bias().map(|b| b.detach()));
        let state = self.state.clone();
        let mut st = lock(&state);
        if st.merged.contains(&self.adapter) {
            // The slots hold it unmerged while the state says merged: a refused safe merge elsewhere in the
            // model restored this layer from a copy of its weights as the call found them.
            match st.call.take() {
                Some(c) if c.start.equal(&cur_w) => st.merged = c.merged_before,
                _ => {
                    return Err(PeftError::Invalid(format!(
                        "`{}`: GLoRA adapter `{}` is merged already",
                        self.module, self.adapter
                    )))
                }
            }
        }
        st.recovered = None;
        let same_call = !st.merged.is_empty()
            && matches!((&st.call, ctx.call_start_weight), (Some(c), Some(s)) if c.start.data_ptr() == s.data_ptr());
        let (new_w, new_b, call) = tch::no_grad(|| -> Result<_> {
            if same_call {
                let c = st
                    .call
                    .as_ref()
                    .ok_or_else(|| PeftError::Invalid("GLoRA: no merge in progress".into()))?;
                let new_w = &cur_w + self.terms.weight_delta(&c.w0);
                let new_b = match (&cur_b, &c.b0) {
                    (Some(b), Some(b0)) => Some(b + self.terms.bias_delta(&c.w0, b0)),
                    _ => None,
                };
                Ok((new_w, new_b, None))
            } else {
                let start = match ctx.call_start_weight {
                    Some(s) => s.shallow_clone(),
                    None => detach_copy(&cur_w)?,
                };
                let (w0, b0) = if st.merged.is_empty() {
                    (start.shallow_clone(), cur_b.as_ref().map(detach_copy).transpose()?)
                } else {
                    st.recover(&cur_w, cur_b.as_ref())
                };
                let mut names = st.merged.clone();
                names.push(self.adapter.clone());
                let (new_w, new_b) = st.merged_from(&names, &w0, b0.as_ref());
                let merged_before = st.merged.clone();
                Ok((new_w, new_b, Some(MergeCall { start, w0, b0, merged_before })))
            }
        })?;
        self.write(base, &new_w, new_b.as_ref(), ctx.safe)?;
        if let Some(call) = call {
            st.call = Some(call);
        }
        st.merged.push(self.adapter.clone());
        Ok(())
    }

    /// PEFT's `unmerge([adapter])`: `W₀`, `b₀` recovered from every merged GLoRA adapter, the others merged
    /// again. When the slots unmerge all of them (last merged first), the `W₀`, `b₀` recovered by the first
    /// of these calls is restored at the end — PEFT's `unmerge()` of all at once.
    fn unmerge(&mut self, base: &mut dyn BaseLayer) -> Result<()> {
        let w = self.weighted(base)?;
        let (cur_w, cur_b) = (w.weight().detach(), w.bias().map(|b| b.detach()));
        let state = self.state.clone();
        let mut st = lock(&state);
        st.call = None;
        if !st.merged.contains(&self.adapter) {
            return Ok(());
        }
        let unchanged = |r: &Recovered| {
            r.left_w.equal(&cur_w)
                && match (&r.left_b, &cur_b) {
                    (Some(l), Some(c)) => l.equal(c),
                    (None, None) => true,
                    _ => false,
                }
        };
        let (w0, b0) = match st.recovered.take() {
            Some(r) if unchanged(&r) => (r.w0, r.b0),
            _ => tch::no_grad(|| st.recover(&cur_w, cur_b.as_ref())),
        };
        st.merged.retain(|n| n != &self.adapter);
        if st.merged.is_empty() {
            return self.write(base, &w0, b0.as_ref(), false);
        }
        let remaining = st.merged.clone();
        let (new_w, new_b) = tch::no_grad(|| st.merged_from(&remaining, &w0, b0.as_ref()));
        self.write(base, &new_w, new_b.as_ref(), false)?;
        st.recovered = Some(Recovered { w0, b0, left_w: new_w, left_b: new_b });
        Ok(())
    }

    fn describe(&self) -> String {
        format!(
            "glora.GloraLinear(in_features={}, out_features={}, r={})",
            self.in_features, self.out_features, self.r
        )
    }
}

impl MixedBatch for GloraLayer {
    /// PEFT's `_mixed_batch_forward`: each adapter's rows get `base + (linear(x, W', b') − base)`.
    fn mixed_batch_output(
        &self,
        base: &dyn BaseLayer,
        x: &Tensor,
        y: &Tensor,
        group: &[&dyn TunerLayer],
        index: &Tensor,
        _cache: &MixedCache,
        _ctx: &ForwardCtx<'_>,
    ) -> Option<Tensor> {
        let w = base.as_weighted()?;
        let (weight, bias) = (w.weight(), w.bias());
        let mut result = y.shallow_clone();
        for (pos, tuner) in group.iter().enumerate() {
            let Some(layer) = tuner.as_any().downcast_ref::<GloraLayer>() else { continue };
            let rows = index.eq(pos as i64).nonzero().squeeze_dim(1);
            if rows.size()[0] == 0 {
                continue;
            }
            let adapted = layer.terms.adapted(&x.index_select(0, &rows), &weight, bias.as_ref());
            let base_rows = y.index_select(0, &rows);
            let rows_out = &base_rows + (adapted - &base_rows);
            result = result.index_copy(0, &rows, &rows_out.to_kind(result.kind()));
        }
        Some(result)
    }
}
