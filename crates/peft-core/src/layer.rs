//! Adaptable layers: a frozen base plus an ordered set of adapters.
//!
//! The pieces, and who implements them:
//!
//! * [`BaseLayer`] — the frozen layer a model is built from (a dense [`crate::nn::LinearBase`], GPT-2's
//!   `Conv1D`, later embeddings, convolutions and quantized linears from `peft-quant`). A base advertises
//!   capabilities ([`BaseLayer::as_linear`], …) instead of being an enum, so new base kinds plug in
//!   without changing this crate.
//! * [`TunerLayer`] — one adapter of one method on one layer (LoRA's `A`/`B` for adapter `default` on
//!   `lin0`). Method crates implement it. The three forward hooks cover every PEFT method: input
//!   transforms (IA³ on feed-forward layers, OFT), a replaced base computation (weight-transform
//!   methods, `modules_to_save` copies) and output updates (LoRA-style additive deltas, IA³ scaling,
//!   DoRA).
//! * [`AdaptedLayer`] — what a model stores in its fields: its PEFT module name, the base and the
//!   [`AdapterSlots`]. Attaching an adapter mutates the slots; the field itself never changes type.
//! * [`AdaptableLayer`] — the object-safe view of an [`AdaptedLayer`] that [`crate::Adaptable`] visitors
//!   hand to [`crate::PeftModel`].

use crate::error::{PeftError, Result};
use crate::hotswap::Hotswap;
use crate::mixed::{MixedBatch, RowAdapters};
use crate::row_values::RowValues;
pub use crate::slots::{AdapterSlots, ForwardHook};
use indexmap::IndexMap;
use std::any::Any;
use std::fmt;
use std::marker::PhantomData;
use tch::{Kind, Tensor};

/// The frozen layer under the adapters.
pub trait BaseLayer: fmt::Debug + Send + 'static {
    /// The PyTorch class name PEFT would see (`"Linear"`, `"Conv1D"`, `"Embedding"`, …); used in
    /// messages and in [`crate::status::LayerStatus::module_type`].
    fn kind(&self) -> &'static str;

    /// The base computation.
    fn forward(&self, x: &Tensor) -> Tensor;

    /// The base parameters with their PyTorch names (`weight`, `bias`), as shallow clones.
    fn named_parameters(&self) -> Vec<(&'static str, Tensor)>;

    /// The weight (and bias) deltas merge into, for bases that have one dense weight (linear,
    /// convolution, embedding). Quantized bases dequantize on read and re-quantize on write.
    fn as_weighted(&self) -> Option<&dyn WeightLike> {
        None
    }

    /// The mutable weight view (merging writes through it).
    fn as_weighted_mut(&mut self) -> Option<&mut dyn WeightLike> {
        None
    }

    /// The linear view of this base, if it is a linear layer (dense, transposed or quantized).
    fn as_linear(&self) -> Option<&dyn LinearLike> {
        None
    }

    /// The mutable linear view.
    fn as_linear_mut(&mut self) -> Option<&mut dyn LinearLike> {
        None
    }

    /// The convolution view (`nn.Conv1d` / `Conv2d` / `Conv3d`).
    fn as_conv(&self) -> Option<&dyn ConvLike> {
        None
    }

    /// The embedding view (`nn.Embedding`).
    fn as_embedding(&self) -> Option<&dyn EmbeddingLike> {
        None
    }

    /// A trainable copy of this layer with its parameters registered under `path` (PEFT's
    /// `ModulesToSaveWrapper` keeps such a copy per adapter).
    ///
    /// # Errors
    /// [`PeftError::Invalid`] for bases that cannot be copied (the default).
    fn copy_to(&self, path: &tch::nn::Path<'_>) -> Result<Box<dyn BaseLayer>> {
        let _ = path;
        Err(PeftError::Invalid(format!("a {} layer cannot be copied for modules_to_save", self.kind())))
    }

    /// The concrete type, for method crates that support only specific bases.
    fn as_any(&self) -> &dyn Any;

    /// The concrete type, mutably (e.g. to install quantized storage in a [`crate::nn::LinearBase`]).
    /// `None` for bases that do not offer it.
    fn as_any_mut(&mut self) -> Option<&mut dyn Any> {
        None
    }
}

/// The dense weight of a base layer: what weight-merging methods read and write.
pub trait WeightLike {
    /// The weight in the base's storage layout: a shallow clone for dense layers (writes through it
    /// change the layer), a fresh dequantized tensor for quantized ones.
    fn weight(&self) -> Tensor;
    /// Overwrites the weight values (no gradient tracking). Dense layers copy in place, quantized ones
    /// re-quantize.
    ///
    /// # Errors
    /// A shape or dtype that cannot be written.
    fn set_weight(&mut self, value: &Tensor) -> Result<()>;
    /// The bias, if any (a shallow clone).
    fn bias(&self) -> Option<Tensor>;
    /// The dtype computations with this layer produce.
    fn compute_kind(&self) -> Kind;
    /// True when [`WeightLike::weight`] returns the stored tensor itself (in-place updates of it change
    /// the layer); false for quantized storage, whose weight is a fresh dequantized copy that must be
    /// written back with [`WeightLike::set_weight`].
    fn weight_is_storage(&self) -> bool {
        true
    }
}

/// What methods need from a linear base: shapes and the (dequantized) weight.
///
/// The weight is always exposed in the base's storage layout: `(out, in)`, or `(in, out)` when
/// [`LinearLike::fan_in_fan_out`] is true (GPT-2's `Conv1D`).
pub trait LinearLike: WeightLike {
    /// Input features.
    fn in_features(&self) -> i64;
    /// Output features.
    fn out_features(&self) -> i64;
    /// True when the weight is stored `(in, out)`.
    fn fan_in_fan_out(&self) -> bool;
}

/// The geometry of an N-d convolution, one entry per spatial dimension (`padding_mode` is always
/// `"zeros"`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConvGeometry {
    /// Kernel size.
    pub kernel_size: Vec<i64>,
    /// Stride.
    pub stride: Vec<i64>,
    /// Zero padding on both sides.
    pub padding: Vec<i64>,
    /// Dilation.
    pub dilation: Vec<i64>,
    /// Groups.
    pub groups: i64,
}

impl ConvGeometry {
    /// Number of spatial dimensions (1, 2 or 3).
    pub fn dims(&self) -> usize {
        self.kernel_size.len()
    }

    /// Applies an N-d convolution with this geometry's stride, padding, dilation and groups
    /// (`F.conv{1,2,3}d`). Like tch's modules, it panics (inside libtorch) on mismatched shapes.
    pub fn conv(&self, x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Tensor {
        conv_nd_t(x, weight, bias, &self.stride, &self.padding, &self.dilation, self.groups)
    }
}

/// [`conv_nd`] for forward passes: panics (inside libtorch, like tch's modules) on mismatched shapes.
pub fn conv_nd_t(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    stride: &[i64],
    padding: &[i64],
    dilation: &[i64],
    groups: i64,
) -> Tensor {
    match weight.dim() {
        3 => x.conv1d(weight, bias, stride, padding, dilation, groups),
        4 => x.conv2d(weight, bias, stride, padding, dilation, groups),
        _ => x.conv3d(weight, bias, stride, padding, dilation, groups),
    }
}

/// `F.conv{1,2,3}d(x, weight, bias, stride, padding, dilation, groups)`, picked by the weight's rank.
///
/// # Errors
/// A libtorch failure, or a weight that is not 3-, 4- or 5-dimensional.
pub fn conv_nd(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    stride: &[i64],
    padding: &[i64],
    dilation: &[i64],
    groups: i64,
) -> std::result::Result<Tensor, tch::TchError> {
    match weight.dim() {
        3 => x.f_conv1d(weight, bias, stride, padding, dilation, groups),
        4 => x.f_conv2d(weight, bias, stride, padding, dilation, groups),
        5 => x.f_conv3d(weight, bias, stride, padding, dilation, groups),
        d => Err(tch::TchError::Shape(format!("a convolution weight must have 3 to 5 dimensions, not {d}"))),
    }
}

/// What methods need from a convolution base (`nn.Conv1d` / `Conv2d` / `Conv3d`).
pub trait ConvLike: WeightLike {
    /// Input channels.
    fn in_channels(&self) -> i64;
    /// Output channels.
    fn out_channels(&self) -> i64;
    /// Kernel, stride, padding, dilation, groups.
    fn geometry(&self) -> &ConvGeometry;
}

/// What methods need from an embedding base (`nn.Embedding`).
pub trait EmbeddingLike: WeightLike {
    /// Vocabulary size.
    fn num_embeddings(&self) -> i64;
    /// Embedding width.
    fn embedding_dim(&self) -> i64;
    /// The padding index, if any (it only affects gradients).
    fn padding_idx(&self) -> Option<i64>;
    /// A factor the layer multiplies its output by (Gemma's scaled embeddings); adapters scale their
    /// contribution by it too.
    fn embed_scale(&self) -> Option<f64> {
        None
    }
}

/// Per-call options of a forward pass, passed explicitly (no global state), so several threads can run
/// differently configured forwards on shallow clones of one model.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct ForwardCtx<'a> {
    /// Training mode: dropout is active.
    pub train: bool,
    /// Per-row adapters (a mixed batch); `None`: the active adapters for every row.
    pub rows: Option<&'a RowAdapters>,
    /// Per-row values of this call (see [`crate::row_values`]), e.g. from
    /// [`crate::PeftModel::row_values`].
    pub row_values: Option<&'a RowValues>,
    /// Every adapter on the layer being run (set by the layer for its adapters): methods that combine
    /// other adapters of the layer (LoRA's Arrow router) read them here.
    pub siblings: Option<&'a IndexMap<String, Box<dyn TunerLayer>>>,
    /// The model-wide active adapters, in order (set by the layer; names absent from
    /// [`ForwardCtx::siblings`] are skipped). Methods whose active adapters act together rather than one
    /// after another (IA³ multiplies their vectors first) read it.
    pub active: Option<&'a [String]>,
    pub(crate) _borrow: PhantomData<&'a ()>,
}

impl<'a> ForwardCtx<'a> {
    /// Evaluation: no dropout.
    pub fn eval() -> Self {
        ForwardCtx {
            train: false,
            rows: None,
            row_values: None,
            siblings: None,
            active: None,
            _borrow: PhantomData,
        }
    }

    /// Training: dropout active.
    pub fn train() -> Self {
        ForwardCtx {
            train: true,
            rows: None,
            row_values: None,
            siblings: None,
            active: None,
            _borrow: PhantomData,
        }
    }

    /// The same options with per-row values (see [`crate::row_values`]).
    pub fn with_row_values(self, values: &'a RowValues) -> ForwardCtx<'a> {
        ForwardCtx { row_values: Some(values), ..self }
    }

    /// The same options with one adapter per batch row (see [`crate::mixed`]).
    pub fn with_rows(self, rows: &'a RowAdapters) -> ForwardCtx<'a> {
        ForwardCtx { rows: Some(rows), ..self }
    }

    /// The active adapters present on the layer being run, in activation order (empty outside a layer's
    /// forward pass).
    pub fn active_siblings(&self) -> Vec<(&'a str, &'a dyn TunerLayer)> {
        match (self.active, self.siblings) {
            (Some(active), Some(siblings)) => active
                .iter()
                .filter_map(|n| siblings.get_key_value(n).map(|(k, t)| (k.as_str(), t.as_ref())))
                .collect(),
            _ => Vec::new(),
        }
    }

    /// For methods whose active adapters act together (IA³ multiplies their vectors, BEFT sums its
    /// offsets, HRA and OFT chain their rotations, …): the active adapters of the layer that are of `me`'s
    /// type, in activation order, when `me` is the first of them — it then acts for the whole group and
    /// the others pass (`None`). Outside a layer's forward pass the group is `[me]`.
    pub fn active_group<T: TunerLayer + 'static>(&self, me: &'a T) -> Option<Vec<&'a T>> {
        let group: Vec<&'a T> =
            self.active_siblings().into_iter().filter_map(|(_, t)| t.as_any().downcast_ref::<T>()).collect();
        match group.first() {
            None => Some(vec![me]),
            Some(first) => std::ptr::eq(*first, me).then_some(group),
        }
    }

    /// `train` or `eval` from a flag (tch's `ModuleT` convention).
    pub fn from_train(train: bool) -> Self {
        if train {
            Self::train()
        } else {
            Self::eval()
        }
    }
}

/// One adapter of one method on one layer.
///
/// In-memory tensor names follow PEFT (`lora_A.<adapter>.weight`), relative to the layer; the layer's
/// module path and `base_model.model.` are prepended by [`crate::PeftModel`]. The checkpoint key is
/// derived from the in-memory key by [`TunerLayer::checkpoint_key`], so save and load are the same
/// mapping in two directions.
pub trait TunerLayer: TunerAny + fmt::Debug + Send + 'static {
    /// The method, e.g. `"LORA"`.
    fn peft_type(&self) -> &'static str;

    /// The adapter's tensors: `(in-memory name relative to the layer, tensor)`, as shallow clones, in
    /// PEFT's state-dict order. Loading copies values into these tensors in place.
    fn named_tensors(&self) -> Vec<(String, Tensor)>;

    /// Whether the tensor `name` (as in [`TunerLayer::named_tensors`]) trains when the adapter does.
    /// Methods with frozen factors (MiCA's B) return `false` for them.
    fn is_trainable_tensor(&self, name: &str) -> bool {
        let _ = name;
        true
    }

    /// Whether the tensor `name` (as in [`TunerLayer::named_tensors`]) is a buffer: saved with the
    /// adapter but not a parameter (VeLoRA's projection, MonteCLoRA's sampler state). Buffers never
    /// train and do not count in parameter totals or the `requires_grad` status.
    fn is_buffer(&self, name: &str) -> bool {
        let _ = name;
        false
    }

    /// Maps a full in-memory key (`base_model.model.lin0.lora_A.default.weight`) to the key in the file
    /// (`base_model.model.lin0.lora_A.weight`). Methods with legacy key forms override it.
    fn checkpoint_key(&self, key: &str, adapter: &str) -> String {
        peft_config::keys::remove_adapter_name(key, adapter)
    }

    /// Transforms the input before the base runs (IA³ on feed-forward layers, OFT). `None` = unchanged.
    fn transform_input(&self, _base: &dyn BaseLayer, _x: &Tensor, _ctx: &ForwardCtx<'_>) -> Option<Tensor> {
        None
    }

    /// Replaces the base computation (`modules_to_save` copies, weight-transform methods). `None` = run
    /// the base. The first active adapter that returns `Some` wins.
    fn replace_base(&self, _base: &dyn BaseLayer, _x: &Tensor, _ctx: &ForwardCtx<'_>) -> Option<Tensor> {
        None
    }

    /// Updates the output: `x` is the layer input, `y` the output so far (base plus earlier adapters).
    /// The default leaves it unchanged (tuners that only replace the base computation).
    fn transform_output(
        &self,
        _base: &dyn BaseLayer,
        _x: &Tensor,
        y: Tensor,
        _ctx: &ForwardCtx<'_>,
    ) -> Tensor {
        y
    }

    /// Merges this adapter into the base weights. With `ctx.safe`, the result is computed on a copy and
    /// refused (nothing written) if it is not finite.
    ///
    /// # Errors
    /// [`PeftError::NonFiniteMerge`], or a method-specific reason the merge is impossible.
    fn merge(&mut self, base: &mut dyn BaseLayer, ctx: &MergeCtx<'_>) -> Result<()>;

    /// True for methods whose merge depends on the base weight as the forward pass sees it (DoRA's
    /// weight norm): when other adapters are merged already, [`AdapterSlots::merge`] then hands the
    /// weight without them in [`MergeCtx::unmerged_base_weight`].
    fn merge_needs_unmerged_base(&self) -> bool {
        false
    }

    /// True for methods whose merge computes its delta from the weight as the merge call found it, even
    /// when other adapters of the same call were merged before it (DEFT): [`AdapterSlots::merge`] then
    /// hands that weight in [`MergeCtx::call_start_weight`].
    fn merge_needs_call_start_weight(&self) -> bool {
        false
    }

    /// Removes this adapter's contribution from the base weights (the inverse of [`TunerLayer::merge`]).
    ///
    /// # Errors
    /// A method-specific reason the unmerge is impossible.
    fn unmerge(&mut self, base: &mut dyn BaseLayer) -> Result<()>;

    /// True for tuners that compute the layer instead of the base (`modules_to_save` copies): in mixed
    /// batches their rows get [`TunerLayer::replace_base`] instead of the base output.
    fn replaces_base(&self) -> bool {
        false
    }

    /// The layer's ability to compute a mixed batch for all rows at once ([`MixedBatch`]); `None` (the
    /// default): the layer runs each adapter's [`TunerLayer::transform_output`] on its rows.
    fn as_mixed_batch(&self) -> Option<&dyn MixedBatch> {
        None
    }

    /// The tensors that make up the adapter's state dict (saving, loading, checkpoints). The default is
    /// [`TunerLayer::named_tensors`]; methods whose tensors are padded for hotswapping return views of the
    /// part in use, so files keep the adapter's own shapes, and methods with non-persistent buffers (PyTorch's
    /// `persistent=False`) leave them out: they are neither saved nor expected in a file.
    fn state_tensors(&self) -> Vec<(String, Tensor)> {
        self.named_tensors()
    }

    /// The layer's ability to take another adapter's weights in place ([`Hotswap`]); `None` (the
    /// default): it cannot be hotswapped.
    fn as_hotswap(&self) -> Option<&dyn Hotswap> {
        None
    }

    /// [`TunerLayer::as_hotswap`], mutably.
    fn as_hotswap_mut(&mut self) -> Option<&mut dyn Hotswap> {
        None
    }

    /// Called after the adapter's tensors were overwritten in place (loading, hotswapping): drop anything
    /// derived from them.
    fn weights_changed(&mut self) {}

    /// Devices PEFT's layer status reports beyond this adapter's own tensors: state the layer shares with
    /// other adapters (VeRA's and PVeRA's projections live in one `BufferDict` with a key per adapter, so
    /// every layer lists every adapter's device). `(adapter, device)` pairs; empty by default.
    fn status_shared_devices(&self) -> Vec<(String, tch::Device)> {
        Vec::new()
    }

    /// Parameters PEFT's layer status counts on this layer for adapters through state that every layer of
    /// the model shares (TinyLoRA's model-level `tinylora_v`, which each of its layers references, so each
    /// layer reports every adapter's vectors): `(adapter, tensor)` pairs. Each adapter named is listed as
    /// available on the layer, and its tensors join its `requires_grad` and devices. Empty by default.
    fn status_shared_parameters(&self) -> Vec<(String, Tensor)> {
        Vec::new()
    }

    /// Where PEFT's status reports this adapter, relative to the layer: `Some("token_adapter")` for
    /// adapters that live in a sub-module of PEFT's wrapper (trainable tokens).
    fn status_submodule(&self) -> Option<&'static str> {
        None
    }

    /// Refuses a set of active adapters this layer cannot run together (`active`: the active adapters
    /// on the layer, in activation order, this one among them). PEFT raises such errors in the forward
    /// pass; [`crate::PeftModel::set_adapters`] calls this first and changes nothing on an error.
    ///
    /// # Errors
    /// The method's reason, naming the adapters.
    fn check_active(&self, active: &[(&str, &dyn TunerLayer)]) -> Result<()> {
        let _ = active;
        Ok(())
    }

    /// For a layer of the model's input embedding whose adapter the heads tied to it share (trainable
    /// tokens): the adapter a tied head `module` gets (same tensors, saves nothing). `None`: not shared.
    fn tied_copy(&self, module: &str) -> Option<Box<dyn TunerLayer>> {
        let _ = module;
        None
    }

    /// A PEFT-style description (`lora.Linear(in_features=10, out_features=20, r=8)`).
    fn describe(&self) -> String;
}

/// Downcasting for every [`TunerLayer`], so method crates write none: call `as_any` / `as_any_mut` on a
/// `dyn TunerLayer`.
///
/// The blanket impl covers implementors of `TunerLayer` only (not every `Any`), so a `Box<dyn
/// TunerLayer>` cannot be downcast as the box by mistake.
pub trait TunerAny {
    /// The concrete type.
    fn tuner_any(&self) -> &dyn Any;
    /// The concrete type, mutably.
    fn tuner_any_mut(&mut self) -> &mut dyn Any;
}

impl<T: TunerLayer> TunerAny for T {
    fn tuner_any(&self) -> &dyn Any {
        self
    }
    fn tuner_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

impl dyn TunerLayer {
    /// The concrete type (hotswap, weighted combinations and tests downcast through it).
    pub fn as_any(&self) -> &dyn Any {
        self.tuner_any()
    }

    /// The concrete type, mutably.
    pub fn as_any_mut(&mut self) -> &mut dyn Any {
        self.tuner_any_mut()
    }
}

/// What [`TunerLayer::merge`] gets besides the base.
#[derive(Clone, Copy, Debug)]
pub struct MergeCtx<'a> {
    /// Compute on a copy and refuse a non-finite result (nothing is written then).
    pub safe: bool,
    /// For tuners that ask for it ([`TunerLayer::merge_needs_unmerged_base`]) while other adapters are
    /// merged: the base weight with those taken out. `None`: the base weight is unmerged as it is.
    pub unmerged_base_weight: Option<&'a Tensor>,
    /// For tuners that ask for it ([`TunerLayer::merge_needs_call_start_weight`]): the base weight as the
    /// merge call found it, before any adapter of this call was merged (PEFT methods that compute every
    /// delta of a call first, then add them). `None` when no adapter of the call asked for it.
    pub call_start_weight: Option<&'a Tensor>,
}

impl MergeCtx<'_> {
    /// A plain merge (`safe` or not) without an unmerged-weight override.
    pub fn new(safe: bool) -> Self {
        MergeCtx { safe, unmerged_base_weight: None, call_start_weight: None }
    }
}

/// An adaptable layer as a model stores it: PEFT module name, frozen base, adapters.
///
/// Build them with the constructors in [`crate::nn`] (`linear`, `conv1d`, …), which take the
/// `nn::Path` the base weights live under; that path is the PEFT module name.
#[derive(Debug)]
pub struct AdaptedLayer<B: BaseLayer> {
    name: String,
    base: B,
    slots: AdapterSlots,
}

impl<B: BaseLayer> AdaptedLayer<B> {
    /// Wraps a base under a module name (normally the `nn::Path` the base was built under).
    pub fn new(name: impl Into<String>, base: B) -> Self {
        Self { name: name.into(), base, slots: AdapterSlots::default() }
    }

    /// The PEFT module name, e.g. `model.layers.0.self_attn.q_proj`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The base layer.
    pub fn base(&self) -> &B {
        &self.base
    }

    /// The adapters and their state.
    pub fn slots(&self) -> &AdapterSlots {
        &self.slots
    }

    /// Forward with explicit per-call options.
    pub fn forward_ctx(&self, x: &Tensor, ctx: &ForwardCtx<'_>) -> Tensor {
        let y = self.slots.forward(&self.base, x, ctx);
        if let Some(hook) = &self.slots.hook.0 {
            hook(&self.name, x, &y);
        }
        y
    }

    /// Forward in evaluation mode (no dropout).
    pub fn forward(&self, x: &Tensor) -> Tensor {
        self.forward_ctx(x, &ForwardCtx::eval())
    }
}

impl<B: BaseLayer> tch::nn::ModuleT for AdaptedLayer<B> {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        self.forward_ctx(xs, &ForwardCtx::from_train(train))
    }
}

/// The object-safe view of an adaptable layer that model visitors yield.
pub trait AdaptableLayer {
    /// The PEFT module name.
    fn name(&self) -> &str;
    /// The base layer.
    fn base(&self) -> &dyn BaseLayer;
    /// The adapters and their state.
    fn slots(&self) -> &AdapterSlots;
    /// The base and the slots, both mutable (merging needs both at once).
    fn parts_mut(&mut self) -> (&mut dyn BaseLayer, &mut AdapterSlots);
}

impl<B: BaseLayer> AdaptableLayer for AdaptedLayer<B> {
    fn name(&self) -> &str {
        &self.name
    }
    fn base(&self) -> &dyn BaseLayer {
        &self.base
    }
    fn slots(&self) -> &AdapterSlots {
        &self.slots
    }
    fn parts_mut(&mut self) -> (&mut dyn BaseLayer, &mut AdapterSlots) {
        (&mut self.base, &mut self.slots)
    }
}

/// Checks that every value of `t` is finite.
///
/// # Errors
/// A libtorch failure.
pub fn all_finite(t: &Tensor) -> Result<bool> {
    let ok = t.f_isfinite().and_then(|f| f.f_all()).map_err(PeftError::torch("checking for NaN/inf"))?;
    ok.f_int64_value(&[]).map(|v| v != 0).map_err(PeftError::torch("checking for NaN/inf"))
}

/// Merges an additive update `delta` (in the base weight's layout and dtype) into the base weight, as PEFT's
/// additive methods do (`weight.data += delta`): in place for dense weights; through
/// [`WeightLike::set_weight`] for quantized storage (re-quantizing). With `safe`, the sum is computed on a
/// copy and refused if it is not finite, leaving the weight as it was.
///
/// # Errors
/// A base without a weight, [`PeftError::NonFiniteMerge`], a libtorch failure.
pub fn merge_delta(
    base: &mut dyn BaseLayer,
    delta: &Tensor,
    safe: bool,
    adapter: &str,
    module: &str,
) -> Result<()> {
    let kind = base.kind();
    let w = base.as_weighted_mut().ok_or_else(|| {
        PeftError::Invalid(format!("`{module}`: a {kind} layer has no weight to merge into"))
    })?;
    let weight = w.weight();
    let merged = if safe || !w.weight_is_storage() {
        tch::no_grad(|| weight.f_add(delta))
    } else {
        let mut inplace = weight.shallow_clone();
        tch::no_grad(|| inplace.f_add_(delta)).map(|_| inplace)
    }
    .map_err(PeftError::torch("merging an adapter into the base weight"))?;
    if safe && !all_finite(&merged)? {
        return Err(PeftError::NonFiniteMerge { adapter: adapter.to_string(), module: module.to_string() });
    }
    w.set_weight(&merged)
}

/// PEFT's loop over the active adapters of the additive methods that add each adapter's term out of
/// place and cast the sum back to the base output's dtype once (`result = result + term`, then
/// `result.to(torch_result_dtype)`): with a half-precision base and f32 adapters the order of these casts
/// shows in the last bits, so methods that act for their whole [`ForwardCtx::active_group`] use this.
/// `term` returns `None` for an adapter that adds nothing.
pub fn add_group_terms<T>(y: Tensor, group: &[&T], mut term: impl FnMut(&T) -> Option<Tensor>) -> Tensor {
    let kind = y.kind();
    let mut result = y;
    for layer in group {
        if let Some(t) = term(layer) {
            // Out of place: a half-precision `result` promotes to the term's dtype (`+=` would not).
            #[allow(clippy::assign_op_pattern)]
            {
                result = result + t;
            }
        }
    }
    result.to_kind(kind)
}

/// Replaces the base weight with `value` as PEFT's `weight.data = value` does for methods that rewrite the
/// weight rather than add to it (HRA, OFT): a dense weight takes `value`'s storage and layout; quantized
/// storage re-quantizes through [`WeightLike::set_weight`].
///
/// # Errors
/// A failure of `set_weight` (re-quantization).
pub fn replace_weight(w: &mut dyn WeightLike, value: &Tensor) -> Result<()> {
    if w.weight_is_storage() {
        let mut t = w.weight();
        tch::no_grad(|| t.set_data(value));
        Ok(())
    } else {
        w.set_weight(value)
    }
}

/// The inverse of [`merge_delta`] (`weight.data -= delta`).
///
/// # Errors
/// A base without a weight, a libtorch failure.
pub fn unmerge_delta(base: &mut dyn BaseLayer, delta: &Tensor, module: &str) -> Result<()> {
    let kind = base.kind();
    let w = base.as_weighted_mut().ok_or_else(|| {
        PeftError::Invalid(format!("`{module}`: a {kind} layer has no weight to unmerge from"))
    })?;
    let weight = w.weight();
    let torch = PeftError::torch("unmerging an adapter from the base weight");
    let restored = if w.weight_is_storage() {
        let mut inplace = weight.shallow_clone();
        let _ = tch::no_grad(|| inplace.f_sub_(delta)).map_err(torch)?;
        inplace
    } else {
        tch::no_grad(|| weight.f_sub(delta)).map_err(torch)?
    };
    w.set_weight(&restored)
}

/// Whether autograd records operations on this thread (`torch.is_grad_enabled()`): false inside
/// `tch::no_grad`. Variants that act only while a graph is built (VeLoRA) ask this.
pub fn grad_enabled() -> bool {
    // An op on a leaf that requires grad yields a result that requires grad exactly when grad mode is on.
    let leaf = Tensor::zeros([1], (tch::Kind::Float, tch::Device::Cpu)).set_requires_grad(true);
    (&leaf * 1.0).requires_grad()
}
