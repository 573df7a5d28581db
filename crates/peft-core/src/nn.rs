//! Adaptable layer constructors that feel like `tch::nn`: a free function taking the `nn::Path` the
//! weights live under, a config struct with `Default`, public tensors.
//!
//! The path is also the PEFT module name, so a model built with HF segment names
//! (`model.layers.0.self_attn.q_proj`) lines up with `target_modules` and with saved keys without any
//! renaming table. Weights are initialised exactly like the PyTorch modules they mirror, so a model
//! built under `tch::manual_seed(s)` equals the PyTorch one built under `torch.manual_seed(s)`.

use crate::error::{PeftError, Result};
use crate::init;
use crate::layer::{AdaptedLayer, BaseLayer, ConvGeometry, ConvLike, EmbeddingLike, LinearLike, WeightLike};
use std::any::Any;
use std::fmt;
use tch::{nn::Path, Kind, Tensor};

/// Quantized weight storage a [`LinearBase`] computes with instead of a dense weight. peft-quant's
/// bitsandbytes-compatible 4-bit and 8-bit layers implement it; [`LinearBase::set_quantized`] installs
/// one and frees the dense weight.
pub trait QuantizedLinear: fmt::Debug + Send + 'static {
    /// The bitsandbytes class this storage mirrors (`"Linear4bit"`, `"Linear8bitLt"`).
    fn class_name(&self) -> &'static str;
    /// Input features.
    fn in_features(&self) -> i64;
    /// Output features.
    fn out_features(&self) -> i64;
    /// `x @ W.T + bias`, computed as the quantized layer does.
    fn forward(&self, x: &Tensor, bias: Option<&Tensor>) -> Tensor;
    /// A fresh dense `(out, in)` copy of the weight.
    fn dequantize(&self) -> Tensor;
    /// The same kind of storage holding `weight` (merging re-quantizes, which is lossy).
    ///
    /// # Errors
    /// A weight the storage cannot hold.
    fn requantize(&self, weight: &Tensor) -> Result<Box<dyn QuantizedLinear>>;
    /// A storage computing with the same tensors (`layer_replication` shares base weights).
    fn share(&self) -> Box<dyn QuantizedLinear>;
    /// The dtype computations produce.
    fn compute_kind(&self) -> Kind;
    /// The state-dict entries bitsandbytes saves for the weight under `prefix` (`weight` and its quant
    /// state; not the bias).
    ///
    /// # Errors
    /// A state that cannot be serialized.
    fn state_dict(&self, prefix: &str) -> Result<Vec<(String, Tensor)>>;
    /// Bytes held by the quantized weight and its statistics.
    fn storage_bytes(&self) -> i64;
    /// The concrete type.
    fn as_any(&self) -> &dyn Any;
}

/// A linear base: `nn.Linear` (`weight` is `(out, in)`), transformers' `Conv1D` (GPT-2; `weight` is
/// `(in, out)`, flagged by `fan_in_fan_out`), or a quantized linear (`quantized` is set, `weight` is an
/// empty placeholder whose storage was released).
#[derive(Debug)]
pub struct LinearBase {
    /// The weight, `(out, in)` or `(in, out)` when `fan_in_fan_out`.
    pub weight: Tensor,
    /// The bias, `(out,)`.
    pub bias: Option<Tensor>,
    /// True for transformers' `Conv1D` layout.
    pub fan_in_fan_out: bool,
    /// Quantized storage replacing the dense weight (see [`LinearBase::set_quantized`]).
    pub quantized: Option<Box<dyn QuantizedLinear>>,
}

impl LinearBase {
    /// A dense base.
    pub fn dense(weight: Tensor, bias: Option<Tensor>, fan_in_fan_out: bool) -> Self {
        Self { weight, bias, fan_in_fan_out, quantized: None }
    }

    /// A base computing with quantized storage from the start (a model built by hand; HF models get theirs
    /// from the loader). `weight` is an empty placeholder.
    pub fn from_quantized(q: Box<dyn QuantizedLinear>, bias: Option<Tensor>) -> Self {
        let kind = q.compute_kind();
        Self {
            weight: Tensor::empty([0], (kind, tch::Device::Cpu)),
            bias,
            fan_in_fan_out: false,
            quantized: Some(q),
        }
    }

    /// Computes with `q` from now on and releases the dense weight's storage (also in the var store
    /// that registered it, which shares the tensor).
    ///
    /// # Errors
    /// A `Conv1D` base (bitsandbytes layers are `(out, in)`), or shapes that differ from the weight's.
    pub fn set_quantized(&mut self, q: Box<dyn QuantizedLinear>) -> Result<()> {
        if self.fan_in_fan_out {
            return Err(PeftError::Invalid(
                "a Conv1D (fan_in_fan_out) layer cannot hold a quantized weight".into(),
            ));
        }
        if self.quantized.is_none() && self.weight.numel() > 0 {
            let size = self.weight.size();
            if size != [q.out_features(), q.in_features()] {
                return Err(PeftError::Invalid(format!(
                    "a quantized ({}, {}) weight does not fit a linear layer of shape {size:?}",
                    q.out_features(),
                    q.in_features()
                )));
            }
            let empty = Tensor::f_empty([0], (self.weight.kind(), self.weight.device()))
                .map_err(PeftError::torch("releasing a dense weight"))?;
            tch::no_grad(|| self.weight.set_data(&empty));
            let _ = self.weight.set_requires_grad(false);
        }
        self.quantized = Some(q);
        Ok(())
    }
}

impl BaseLayer for LinearBase {
    fn kind(&self) -> &'static str {
        if let Some(q) = &self.quantized {
            q.class_name()
        } else if self.fan_in_fan_out {
            "Conv1D"
        } else {
            "Linear"
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        if let Some(q) = &self.quantized {
            return q.forward(x, self.bias.as_ref());
        }
        if self.fan_in_fan_out {
            // transformers' Conv1D: addmm(bias, x.view(-1, in), weight).view(..., out)
            let mut out_shape = x.size();
            let in_features = out_shape.pop().unwrap_or(0);
            out_shape.push(self.weight.size()[1]);
            let flat = x.view([-1, in_features]);
            let y = match &self.bias {
                Some(b) => b.addmm(&flat, &self.weight),
                None => flat.matmul(&self.weight),
            };
            y.view(out_shape.as_slice())
        } else {
            x.linear(&self.weight, self.bias.as_ref())
        }
    }

    fn named_parameters(&self) -> Vec<(&'static str, Tensor)> {
        weight_and_bias(&self.weight, self.bias.as_ref())
    }

    fn as_weighted(&self) -> Option<&dyn WeightLike> {
        Some(self)
    }

    fn as_weighted_mut(&mut self) -> Option<&mut dyn WeightLike> {
        Some(self)
    }

    fn as_linear(&self) -> Option<&dyn LinearLike> {
        Some(self)
    }

    fn as_linear_mut(&mut self) -> Option<&mut dyn LinearLike> {
        Some(self)
    }

    fn copy_to(&self, path: &Path<'_>) -> Result<Box<dyn BaseLayer>> {
        if let Some(q) = &self.quantized {
            return Err(PeftError::Invalid(format!(
                "a quantized {} layer cannot be copied for modules_to_save (its weight is frozen)",
                q.class_name()
            )));
        }
        let what = "copying a linear layer";
        let weight = copy_var(path, "weight", &self.weight, what)?;
        let bias = self.bias.as_ref().map(|b| copy_var(path, "bias", b, what)).transpose()?;
        Ok(Box::new(LinearBase::dense(weight, bias, self.fan_in_fan_out)))
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn as_any_mut(&mut self) -> Option<&mut dyn Any> {
        Some(self)
    }
}

impl LinearLike for LinearBase {
    fn in_features(&self) -> i64 {
        if let Some(q) = &self.quantized {
            return q.in_features();
        }
        let s = self.weight.size();
        if self.fan_in_fan_out {
            s[0]
        } else {
            s[1]
        }
    }

    fn out_features(&self) -> i64 {
        if let Some(q) = &self.quantized {
            return q.out_features();
        }
        let s = self.weight.size();
        if self.fan_in_fan_out {
            s[1]
        } else {
            s[0]
        }
    }

    fn fan_in_fan_out(&self) -> bool {
        self.fan_in_fan_out
    }
}

impl WeightLike for LinearBase {
    fn weight(&self) -> Tensor {
        match &self.quantized {
            Some(q) => q.dequantize(),
            None => self.weight.shallow_clone(),
        }
    }

    fn set_weight(&mut self, value: &Tensor) -> Result<()> {
        match &self.quantized {
            Some(q) => {
                log::warn!(
                    "writing into a {} base re-quantizes the weight: the merged model is rounded again and \
                     differs slightly from the unmerged one",
                    q.class_name()
                );
                self.quantized = Some(q.requantize(value)?);
                Ok(())
            }
            None => write_in_place(&mut self.weight, value, "writing a linear weight"),
        }
    }

    fn bias(&self) -> Option<Tensor> {
        self.bias.as_ref().map(Tensor::shallow_clone)
    }

    fn compute_kind(&self) -> Kind {
        match &self.quantized {
            Some(q) => q.compute_kind(),
            None => self.weight.kind(),
        }
    }

    fn weight_is_storage(&self) -> bool {
        self.quantized.is_none()
    }
}

/// `weight` (and `bias`) as shallow clones, with their PyTorch names.
fn weight_and_bias(weight: &Tensor, bias: Option<&Tensor>) -> Vec<(&'static str, Tensor)> {
    let mut v = vec![("weight", weight.shallow_clone())];
    if let Some(b) = bias {
        v.push(("bias", b.shallow_clone()));
    }
    v
}

/// Copies `value` into `dst` without gradient tracking (a no-op when `value` is `dst` itself, e.g. a
/// shallow clone written through).
fn write_in_place(dst: &mut Tensor, value: &Tensor, what: &'static str) -> Result<()> {
    if value.data_ptr() == dst.data_ptr() && value.size() == dst.size() {
        return Ok(());
    }
    tch::no_grad(|| dst.f_copy_(value)).map(drop).map_err(PeftError::torch(what))
}

/// A detached copy of `t` registered as a trainable variable `name` under `path`.
fn copy_var(path: &Path<'_>, name: &str, t: &Tensor, what: &'static str) -> Result<Tensor> {
    let copy = t.f_detach_copy().map_err(PeftError::torch(what))?;
    Ok(path.add(name, copy, true))
}

/// Bases that can be duplicated with shared weights (PEFT's `clone_module(share_weights=True)`, used by
/// `layer_replication`).
pub trait ShareWeights {
    /// A base computing with the same tensors.
    fn share(&self) -> Self;
}

impl ShareWeights for LinearBase {
    fn share(&self) -> Self {
        LinearBase {
            weight: self.weight.shallow_clone(),
            bias: self.bias.as_ref().map(Tensor::shallow_clone),
            fan_in_fan_out: self.fan_in_fan_out,
            quantized: self.quantized.as_ref().map(|q| q.share()),
        }
    }
}

impl ShareWeights for ConvBase {
    fn share(&self) -> Self {
        ConvBase {
            weight: self.weight.shallow_clone(),
            bias: self.bias.as_ref().map(Tensor::shallow_clone),
            geometry: self.geometry.clone(),
        }
    }
}

impl ShareWeights for EmbeddingBase {
    fn share(&self) -> Self {
        EmbeddingBase {
            weight: self.weight.shallow_clone(),
            padding_idx: self.padding_idx,
            embed_scale: self.embed_scale,
        }
    }
}

impl<B: BaseLayer + ShareWeights> AdaptedLayer<B> {
    /// A copy named `name` that shares this layer's base weights and has no adapters (a replicated layer
    /// gets its own adapters).
    pub fn replicate(&self, name: impl Into<String>) -> Self {
        AdaptedLayer::new(name, self.base().share())
    }

    /// [`AdaptedLayer::replicate`] with the index after `list.` in the name replaced (`model.layers.2.q`
    /// → `model.layers.5.q`).
    pub fn replicate_at(&self, list: &str, from: usize, to: usize) -> Self {
        self.replicate(reindex(self.name(), list, from, to))
    }
}

/// Replaces the list index `from` after the segment `list` in a module name by `to`.
pub fn reindex(name: &str, list: &str, from: usize, to: usize) -> String {
    let old = format!("{list}.{from}");
    let new = format!("{list}.{to}");
    if let Some(rest) = name.strip_prefix(&old) {
        return format!("{new}{rest}");
    }
    name.replacen(&format!(".{old}."), &format!(".{new}."), 1)
}

/// An adaptable `nn.Linear` (or `Conv1D`, see [`transformers_conv1d`]).
pub type Linear = AdaptedLayer<LinearBase>;

/// Options of [`linear`].
#[derive(Clone, Copy, Debug)]
pub struct LinearConfig {
    /// Whether the layer has a bias.
    pub bias: bool,
    /// Initialise like PyTorch (drawing random numbers). `false` allocates uninitialised memory without
    /// touching the RNG, for layers whose weights a checkpoint will overwrite (the pages are committed
    /// only when the checkpoint is copied in, so a loader that quantizes layer by layer never holds the
    /// whole dense model).
    pub init: bool,
}

impl Default for LinearConfig {
    fn default() -> Self {
        Self { bias: true, init: true }
    }
}

/// The PEFT module name of a path: its components joined by `.`.
pub fn path_name(p: &Path<'_>) -> String {
    p.components().collect::<Vec<_>>().join(".")
}

/// An adaptable `nn.Linear(in_features, out_features)` with weights under `p` (`p/weight`, `p/bias`),
/// initialised like PyTorch's (`kaiming_uniform_(a=√5)` weight, `U(±1/√in)` bias), in the path's kind
/// and on its device.
///
/// # Errors
/// A libtorch failure.
pub fn linear(p: Path<'_>, in_features: i64, out_features: i64, cfg: LinearConfig) -> Result<Linear> {
    if !cfg.init {
        let options = (p.kind(), p.device());
        let b = if cfg.bias { Some(alloc(&p, "bias", &[out_features], options, false)?) } else { None };
        let w = alloc(&p, "weight", &[out_features, in_features], options, false)?;
        return Ok(AdaptedLayer::new(path_name(&p), register(&p, w, b, false)?));
    }
    let mut w = cpu_empty(&p, "weight", &[out_features, in_features])?;
    init::kaiming_uniform_(&mut w, 5f64.sqrt())?;
    let mut b = None;
    if cfg.bias {
        let mut bias = cpu_empty(&p, "bias", &[out_features])?;
        init::bias_uniform_(&mut bias, in_features)?;
        b = Some(bias);
    }
    Ok(AdaptedLayer::new(path_name(&p), register(&p, w, b, false)?))
}

/// An adaptable transformers `Conv1D(nf, nx)` (GPT-2's linear with a transposed `(nx, nf)` weight),
/// initialised like transformers' (`normal_(std=0.02)` weight, zero bias).
///
/// # Errors
/// A libtorch failure.
pub fn transformers_conv1d(p: Path<'_>, nf: i64, nx: i64) -> Result<Linear> {
    let mut w = cpu_empty(&p, "weight", &[nx, nf])?;
    let bias = cpu_zeros(&p, "bias", &[nf])?;
    init::normal_(&mut w, 0.0, 0.02)?;
    Ok(AdaptedLayer::new(path_name(&p), register(&p, w, Some(bias), true)?))
}

/// Registers CPU-initialised tensors in the path's var store (moved to its device and kind).
fn register(p: &Path<'_>, w: Tensor, b: Option<Tensor>, fan_in_fan_out: bool) -> Result<LinearBase> {
    let (weight, bias) = register_params(p, w, b)?;
    Ok(LinearBase::dense(weight, bias, fan_in_fan_out))
}

/// Registers `weight` (and `bias`) under `p`, moved to the path's device and kind.
fn register_params(p: &Path<'_>, w: Tensor, b: Option<Tensor>) -> Result<(Tensor, Option<Tensor>)> {
    if p.get("weight").is_some() {
        // tch would silently rename the variable to `weight__N`; a second layer under one path is a bug.
        return Err(PeftError::DuplicateModuleName { name: path_name(p) });
    }
    let dev = p.device();
    let kind = p.kind();
    let to = |t: Tensor| t.f_to_device(dev).and_then(|t| t.f_to_kind(kind));
    let w = to(w).map_err(PeftError::torch("moving a weight to its device"))?;
    let weight = p.add("weight", w, true);
    let bias = match b {
        Some(b) => Some(p.add("bias", to(b).map_err(PeftError::torch("moving a bias to its device"))?, true)),
        None => None,
    };
    Ok((weight, bias))
}

/// `bytes` as a readable size (`512 B`, `1.5 GiB`).
pub fn readable_size(bytes: u128) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < units.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", units[unit])
    }
}

/// A tensor for parameter `param` of the layer at `p` (uninitialised, or zeroed): a failed allocation —
/// a model config asking for more memory than there is — is an error naming the parameter, its shape
/// and its size, not libtorch's multi-line message.
///
/// # Errors
/// [`PeftError::Allocation`].
pub fn alloc(
    p: &Path<'_>,
    param: &str,
    shape: &[i64],
    options: (Kind, tch::Device),
    zeroed: bool,
) -> Result<Tensor> {
    let t = if zeroed { Tensor::f_zeros(shape, options) } else { Tensor::f_empty(shape, options) };
    t.map_err(|e| {
        let elements = shape.iter().try_fold(1u128, |acc, &d| acc.checked_mul(u128::try_from(d).ok()?));
        let size = elements
            .and_then(|n| n.checked_mul(options.0.elt_size_in_bytes() as u128))
            .map_or_else(|| "a size that does not fit".to_string(), readable_size);
        let message = e.to_string();
        let reason = message
            .split("Exception raised from")
            .next()
            .unwrap_or_default()
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .unwrap_or("libtorch refused")
            .to_string();
        PeftError::Allocation {
            tensor: format!("{}.{param}", path_name(p)),
            shape: shape.to_vec(),
            size: format!("{:?} ({size})", options.0),
            reason,
        }
    })
}

fn cpu_empty(p: &Path<'_>, param: &str, shape: &[i64]) -> Result<Tensor> {
    alloc(p, param, shape, (Kind::Float, tch::Device::Cpu), false)
}

fn cpu_zeros(p: &Path<'_>, param: &str, shape: &[i64]) -> Result<Tensor> {
    alloc(p, param, shape, (Kind::Float, tch::Device::Cpu), true)
}

/// A dense N-d convolution base: `nn.Conv1d` / `nn.Conv2d` / `nn.Conv3d` with `padding_mode="zeros"`.
#[derive(Debug)]
pub struct ConvBase {
    /// `(out, in / groups, *kernel)`.
    pub weight: Tensor,
    /// `(out,)`.
    pub bias: Option<Tensor>,
    /// Kernel, stride, padding, dilation, groups.
    pub geometry: ConvGeometry,
}

impl BaseLayer for ConvBase {
    fn kind(&self) -> &'static str {
        match self.geometry.dims() {
            1 => "Conv1d",
            2 => "Conv2d",
            _ => "Conv3d",
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        self.geometry.conv(x, &self.weight, self.bias.as_ref())
    }

    fn named_parameters(&self) -> Vec<(&'static str, Tensor)> {
        weight_and_bias(&self.weight, self.bias.as_ref())
    }

    fn as_weighted(&self) -> Option<&dyn WeightLike> {
        Some(self)
    }

    fn as_weighted_mut(&mut self) -> Option<&mut dyn WeightLike> {
        Some(self)
    }

    fn as_conv(&self) -> Option<&dyn ConvLike> {
        Some(self)
    }

    fn copy_to(&self, path: &Path<'_>) -> Result<Box<dyn BaseLayer>> {
        let what = "copying a convolution";
        let weight = copy_var(path, "weight", &self.weight, what)?;
        let bias = self.bias.as_ref().map(|b| copy_var(path, "bias", b, what)).transpose()?;
        Ok(Box::new(ConvBase { weight, bias, geometry: self.geometry.clone() }))
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

impl WeightLike for ConvBase {
    fn weight(&self) -> Tensor {
        self.weight.shallow_clone()
    }

    fn set_weight(&mut self, value: &Tensor) -> Result<()> {
        write_in_place(&mut self.weight, value, "writing a convolution weight")
    }

    fn bias(&self) -> Option<Tensor> {
        self.bias.as_ref().map(Tensor::shallow_clone)
    }

    fn compute_kind(&self) -> Kind {
        self.weight.kind()
    }
}

impl ConvLike for ConvBase {
    fn in_channels(&self) -> i64 {
        self.weight.size().get(1).copied().unwrap_or(0) * self.geometry.groups
    }

    fn out_channels(&self) -> i64 {
        self.weight.size().first().copied().unwrap_or(0)
    }

    fn geometry(&self) -> &ConvGeometry {
        &self.geometry
    }
}

/// An adaptable `nn.Conv1d` / `Conv2d` / `Conv3d`.
pub type Conv = AdaptedLayer<ConvBase>;

/// Options of [`conv1d`], [`conv2d`] and [`conv3d`], like PyTorch's constructor arguments. A single-entry
/// `stride` / `padding` / `dilation` applies to every spatial dimension.
#[derive(Clone, Debug)]
pub struct ConvConfig {
    /// Stride.
    pub stride: Vec<i64>,
    /// Zero padding.
    pub padding: Vec<i64>,
    /// Dilation.
    pub dilation: Vec<i64>,
    /// Groups (`in` and `out` must be divisible by it).
    pub groups: i64,
    /// Whether the layer has a bias.
    pub bias: bool,
    /// Initialise like PyTorch (drawing random numbers); `false` allocates zeros.
    pub init: bool,
}

impl Default for ConvConfig {
    fn default() -> Self {
        Self { stride: vec![1], padding: vec![0], dilation: vec![1], groups: 1, bias: true, init: true }
    }
}

fn per_dim(v: &[i64], dims: usize, what: &str) -> Result<Vec<i64>> {
    match v.len() {
        1 => Ok(vec![v[0]; dims]),
        n if n == dims => Ok(v.to_vec()),
        n => Err(PeftError::Invalid(format!("{what} has {n} entries for a {dims}-d convolution"))),
    }
}

/// An adaptable N-d convolution (`dims` = 1, 2 or 3) with weights under `p`, initialised like
/// PyTorch's `_ConvNd.reset_parameters` (`kaiming_uniform_(a=√5)` weight, `U(±1/√fan_in)` bias).
///
/// # Errors
/// Channels not divisible by `groups`, option lengths that do not fit `dims`, or a libtorch failure.
pub fn conv(
    p: Path<'_>,
    dims: usize,
    in_channels: i64,
    out_channels: i64,
    kernel_size: &[i64],
    cfg: ConvConfig,
) -> Result<Conv> {
    if !(1..=3).contains(&dims) {
        return Err(PeftError::Invalid(format!("convolutions have 1 to 3 spatial dimensions, not {dims}")));
    }
    if cfg.groups < 1 || in_channels % cfg.groups != 0 || out_channels % cfg.groups != 0 {
        return Err(PeftError::Invalid(format!(
            "`{}`: in_channels {in_channels} and out_channels {out_channels} must be divisible by groups {}",
            path_name(&p),
            cfg.groups
        )));
    }
    let geometry = ConvGeometry {
        kernel_size: per_dim(kernel_size, dims, "kernel_size")?,
        stride: per_dim(&cfg.stride, dims, "stride")?,
        padding: per_dim(&cfg.padding, dims, "padding")?,
        dilation: per_dim(&cfg.dilation, dims, "dilation")?,
        groups: cfg.groups,
    };
    let mut shape = vec![out_channels, in_channels / cfg.groups];
    shape.extend(&geometry.kernel_size);
    let (w, b) = if cfg.init {
        let mut w = cpu_empty(&p, "weight", &shape)?;
        init::kaiming_uniform_(&mut w, 5f64.sqrt())?;
        let b = if cfg.bias {
            let mut b = cpu_empty(&p, "bias", &[out_channels])?;
            init::bias_uniform_(&mut b, init::fan_in(&w))?;
            Some(b)
        } else {
            None
        };
        (w, b)
    } else {
        let b = if cfg.bias { Some(cpu_zeros(&p, "bias", &[out_channels])?) } else { None };
        (cpu_zeros(&p, "weight", &shape)?, b)
    };
    let (weight, bias) = register_params(&p, w, b)?;
    Ok(AdaptedLayer::new(path_name(&p), ConvBase { weight, bias, geometry }))
}

/// An adaptable `nn.Conv1d(in, out, kernel_size, …)`; see [`conv`].
///
/// # Errors
/// As [`conv`].
pub fn conv1d(
    p: Path<'_>,
    in_channels: i64,
    out_channels: i64,
    kernel_size: i64,
    cfg: ConvConfig,
) -> Result<Conv> {
    conv(p, 1, in_channels, out_channels, &[kernel_size], cfg)
}

/// An adaptable `nn.Conv2d(in, out, kernel_size, …)` (one entry of `kernel_size` per dimension, or one
/// for both); see [`conv`].
///
/// # Errors
/// As [`conv`].
pub fn conv2d(
    p: Path<'_>,
    in_channels: i64,
    out_channels: i64,
    kernel_size: &[i64],
    cfg: ConvConfig,
) -> Result<Conv> {
    conv(p, 2, in_channels, out_channels, kernel_size, cfg)
}

/// An adaptable `nn.Conv3d(in, out, kernel_size, …)`; see [`conv`].
///
/// # Errors
/// As [`conv`].
pub fn conv3d(
    p: Path<'_>,
    in_channels: i64,
    out_channels: i64,
    kernel_size: &[i64],
    cfg: ConvConfig,
) -> Result<Conv> {
    conv(p, 3, in_channels, out_channels, kernel_size, cfg)
}

/// An embedding base: `nn.Embedding` (`max_norm` unsupported), optionally with an output scale
/// (Gemma's `ScaledWordEmbedding`).
#[derive(Debug)]
pub struct EmbeddingBase {
    /// `(num_embeddings, embedding_dim)`.
    pub weight: Tensor,
    /// Rows whose gradient is zeroed (and which PyTorch initialises to zero).
    pub padding_idx: Option<i64>,
    /// Output scale, if any.
    pub embed_scale: Option<f64>,
}

impl BaseLayer for EmbeddingBase {
    fn kind(&self) -> &'static str {
        "Embedding"
    }

    fn forward(&self, ids: &Tensor) -> Tensor {
        let y = Tensor::embedding(&self.weight, ids, self.padding_idx.unwrap_or(-1), false, false);
        match self.embed_scale {
            Some(s) => y * Tensor::from(s).to_kind(self.weight.kind()),
            None => y,
        }
    }

    fn named_parameters(&self) -> Vec<(&'static str, Tensor)> {
        vec![("weight", self.weight.shallow_clone())]
    }

    fn as_weighted(&self) -> Option<&dyn WeightLike> {
        Some(self)
    }

    fn as_weighted_mut(&mut self) -> Option<&mut dyn WeightLike> {
        Some(self)
    }

    fn as_embedding(&self) -> Option<&dyn EmbeddingLike> {
        Some(self)
    }

    fn copy_to(&self, path: &Path<'_>) -> Result<Box<dyn BaseLayer>> {
        let weight = copy_var(path, "weight", &self.weight, "copying an embedding")?;
        Ok(Box::new(EmbeddingBase { weight, padding_idx: self.padding_idx, embed_scale: self.embed_scale }))
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

impl WeightLike for EmbeddingBase {
    fn weight(&self) -> Tensor {
        self.weight.shallow_clone()
    }

    fn set_weight(&mut self, value: &Tensor) -> Result<()> {
        write_in_place(&mut self.weight, value, "writing an embedding weight")
    }

    fn bias(&self) -> Option<Tensor> {
        None
    }

    fn compute_kind(&self) -> Kind {
        self.weight.kind()
    }
}

impl EmbeddingLike for EmbeddingBase {
    fn num_embeddings(&self) -> i64 {
        self.weight.size().first().copied().unwrap_or(0)
    }

    fn embedding_dim(&self) -> i64 {
        self.weight.size().get(1).copied().unwrap_or(0)
    }

    fn padding_idx(&self) -> Option<i64> {
        self.padding_idx
    }

    fn embed_scale(&self) -> Option<f64> {
        self.embed_scale
    }
}

/// An adaptable `nn.Embedding`.
pub type Embedding = AdaptedLayer<EmbeddingBase>;

/// Options of [`embedding`].
#[derive(Clone, Copy, Debug)]
pub struct EmbeddingConfig {
    /// `padding_idx` (negative values count from the end, as in PyTorch).
    pub padding_idx: Option<i64>,
    /// Initialise like PyTorch (`normal_(0, 1)`, padding row zeroed); `false` allocates zeros.
    pub init: bool,
}

impl Default for EmbeddingConfig {
    fn default() -> Self {
        Self { padding_idx: None, init: true }
    }
}

/// An adaptable `nn.Embedding(num_embeddings, embedding_dim)` with its weight under `p/weight`.
///
/// # Errors
/// A `padding_idx` outside the vocabulary, or a libtorch failure.
pub fn embedding(
    p: Path<'_>,
    num_embeddings: i64,
    embedding_dim: i64,
    cfg: EmbeddingConfig,
) -> Result<Embedding> {
    let padding_idx = match cfg.padding_idx {
        Some(i) if i >= num_embeddings || i < -num_embeddings => {
            return Err(PeftError::Invalid(format!(
                "`{}`: padding_idx {i} must be within num_embeddings {num_embeddings}",
                path_name(&p)
            )))
        }
        Some(i) if i < 0 => Some(num_embeddings + i),
        other => other,
    };
    let what = "allocating an embedding";
    let w = if cfg.init {
        let mut w = cpu_empty(&p, "weight", &[num_embeddings, embedding_dim])?;
        init::normal_(&mut w, 0.0, 1.0)?;
        if let Some(i) = padding_idx {
            tch::no_grad(|| w.get(i).f_fill_(0.0)).map(drop).map_err(PeftError::torch(what))?;
        }
        w
    } else {
        cpu_zeros(&p, "weight", &[num_embeddings, embedding_dim])?
    };
    let (weight, _) = register_params(&p, w, None)?;
    Ok(AdaptedLayer::new(path_name(&p), EmbeddingBase { weight, padding_idx, embed_scale: None }))
}
