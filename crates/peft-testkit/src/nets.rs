//! The test models. Each is built under `manual_seed(seed)` on the CPU, so two models of one seed have the
//! same base weights; `forward_t` runs the two-layer MLP `lin1(relu(lin0(x)))` with `x` of shape `(B, 10)`.

use peft_core::nn::{self as pnn, ConvConfig, EmbeddingConfig};
use peft_core::Adaptable;
use tch::nn::{ModuleT, VarStore};
use tch::{Device, Kind, Tensor};

/// Builds a model under `manual_seed(seed)` in a fresh CPU var store.
pub fn seeded<T>(seed: i64, build: impl FnOnce(&VarStore) -> T) -> (VarStore, T) {
    tch::manual_seed(seed);
    let vs = VarStore::new(Device::Cpu);
    let model = build(&vs);
    (vs, model)
}

/// Every layer kind a method may meet: an embedding (7 × 10, padding index 0), the MLP (10 → 20 → 2),
/// 2-D convolutions 4 → 6 (1×1; 3×3 padded; grouped in 2; dilated by 2; a 3×1 kernel), a 1-D (4 → 4,
/// kernel 3) and a 3-D (1×1×1) convolution, and a GPT-2 `Conv1D` (10 → 4).
#[derive(Debug, Adaptable)]
pub struct LayerZoo {
    /// `nn.Embedding(7, 10, padding_idx=0)`.
    pub emb: pnn::Embedding,
    /// `nn.Linear(10, 20)`.
    pub lin0: pnn::Linear,
    /// `nn.Linear(20, 2)`.
    pub lin1: pnn::Linear,
    /// `nn.Conv2d(4, 6, 1)`.
    pub conv1x1: pnn::Conv,
    /// `nn.Conv2d(4, 6, 3, padding=1)`.
    pub conv3x3: pnn::Conv,
    /// `nn.Conv2d(4, 6, 3, padding=1, groups=2)`.
    pub grouped: pnn::Conv,
    /// `nn.Conv2d(4, 6, 3, padding=2, dilation=2)`.
    pub dilated: pnn::Conv,
    /// `nn.Conv2d(4, 6, (3, 1))`.
    pub tall: pnn::Conv,
    /// `nn.Conv1d(4, 4, 3)`.
    pub conv1d: pnn::Conv,
    /// `nn.Conv3d(4, 4, 1)`.
    pub conv3d: pnn::Conv,
    /// GPT-2's `Conv1D(nf=4, nx=10)`: 10 → 4, weight stored `(in, out)`.
    pub gpt2: pnn::Linear,
}

impl LayerZoo {
    /// Builds the layers under `vs.root()`.
    pub fn new(vs: &VarStore) -> Self {
        let p = vs.root();
        let conv = |padding: i64, groups: i64, dilation: i64| ConvConfig {
            padding: vec![padding],
            groups,
            dilation: vec![dilation],
            ..ConvConfig::default()
        };
        let emb = EmbeddingConfig { padding_idx: Some(0), init: true };
        LayerZoo {
            emb: pnn::embedding(&p / "emb", 7, 10, emb).unwrap(),
            lin0: pnn::linear(&p / "lin0", 10, 20, Default::default()).unwrap(),
            lin1: pnn::linear(&p / "lin1", 20, 2, Default::default()).unwrap(),
            conv1x1: pnn::conv2d(&p / "conv1x1", 4, 6, &[1], ConvConfig::default()).unwrap(),
            conv3x3: pnn::conv2d(&p / "conv3x3", 4, 6, &[3], conv(1, 1, 1)).unwrap(),
            grouped: pnn::conv2d(&p / "grouped", 4, 6, &[3], conv(1, 2, 1)).unwrap(),
            dilated: pnn::conv2d(&p / "dilated", 4, 6, &[3], conv(2, 1, 2)).unwrap(),
            tall: pnn::conv2d(&p / "tall", 4, 6, &[3, 1], ConvConfig::default()).unwrap(),
            conv1d: pnn::conv1d(&p / "conv1d", 4, 4, 3, ConvConfig::default()).unwrap(),
            conv3d: pnn::conv3d(&p / "conv3d", 4, 4, &[1], ConvConfig::default()).unwrap(),
            gpt2: pnn::transformers_conv1d(&p / "gpt2", 4, 10).unwrap(),
        }
    }

    /// The model built under `manual_seed(seed)`.
    pub fn seeded(seed: i64) -> (VarStore, Self) {
        seeded(seed, Self::new)
    }
}

impl ModuleT for LayerZoo {
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        self.lin1.forward_t(&self.lin0.forward_t(x, train).relu(), train)
    }
}

/// The LyCORIS tests' model: the MLP (10 → 20 → 2), a padded 3×3 `Conv2d` 2 → 4, a 1×1 `Conv2d` 4 → 4, a
/// strided padded `Conv1d` 2 → 4 (kernel 3, stride 2), a GPT-2 `Conv1D` 10 → 4, an embedding 5 × 10 and a
/// 1×1×1 `Conv3d` 2 → 2.
#[derive(Debug, Adaptable)]
pub struct ConvMix {
    /// `nn.Linear(10, 20)`.
    pub lin0: pnn::Linear,
    /// `nn.Linear(20, 2)`.
    pub lin1: pnn::Linear,
    /// `nn.Conv2d(2, 4, 3, padding=1)`.
    pub conv2d: pnn::Conv,
    /// `nn.Conv2d(4, 4, 1)`.
    pub conv1x1: pnn::Conv,
    /// `nn.Conv1d(2, 4, 3, stride=2, padding=1)`.
    pub conv1d: pnn::Conv,
    /// GPT-2's `Conv1D(nf=4, nx=10)`: 10 → 4.
    pub gpt: pnn::Linear,
    /// `nn.Embedding(5, 10)`.
    pub emb: pnn::Embedding,
    /// `nn.Conv3d(2, 2, 1)`.
    pub conv3d: pnn::Conv,
}

impl ConvMix {
    /// Builds the layers under `vs.root()`.
    pub fn new(vs: &VarStore) -> Self {
        let p = vs.root();
        let padded = ConvConfig { padding: vec![1], ..ConvConfig::default() };
        ConvMix {
            lin0: pnn::linear(&p / "lin0", 10, 20, Default::default()).unwrap(),
            lin1: pnn::linear(&p / "lin1", 20, 2, Default::default()).unwrap(),
            conv2d: pnn::conv2d(&p / "conv2d", 2, 4, &[3], padded.clone()).unwrap(),
            conv1x1: pnn::conv2d(&p / "conv1x1", 4, 4, &[1], ConvConfig::default()).unwrap(),
            conv1d: pnn::conv1d(&p / "conv1d", 2, 4, 3, ConvConfig { stride: vec![2], ..padded }).unwrap(),
            gpt: pnn::transformers_conv1d(&p / "gpt", 4, 10).unwrap(),
            emb: pnn::embedding(&p / "emb", 5, 10, Default::default()).unwrap(),
            conv3d: pnn::conv3d(&p / "conv3d", 2, 2, &[1], ConvConfig::default()).unwrap(),
        }
    }

    /// The model built under `manual_seed(seed)`.
    pub fn seeded(seed: i64) -> (VarStore, Self) {
        seeded(seed, Self::new)
    }

    /// The outputs of every adapted layer kind on fixed inputs (`manual_seed(5)`): the MLP, the 3×3 and
    /// 1×1 `Conv2d`, the strided `Conv1d`.
    pub fn outputs(&self) -> Vec<Tensor> {
        tch::manual_seed(5);
        let opts = (Kind::Float, Device::Cpu);
        let x = Tensor::randn([4, 10], opts);
        let img = Tensor::randn([2, 2, 5, 5], opts);
        let img4 = Tensor::randn([2, 4, 5, 5], opts);
        let seq = Tensor::randn([2, 2, 9], opts);
        tch::no_grad(|| {
            vec![
                self.forward_t(&x, false),
                self.conv2d.forward_t(&img, false),
                self.conv1x1.forward_t(&img4, false),
                self.conv1d.forward_t(&seq, false),
            ]
        })
    }
}

impl ModuleT for ConvMix {
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        self.lin1.forward_t(&self.lin0.forward_t(x, train).relu(), train)
    }
}

/// One linear layer `proj` (64 → 16) stored in bitsandbytes' 4-bit NF4 format (no bias, unless built
/// with one).
#[derive(Debug, Adaptable)]
pub struct Quantized {
    /// The 4-bit layer.
    pub proj: pnn::Linear,
}

impl Quantized {
    /// Quantizes `N(0, 0.01)` weights drawn under `manual_seed(seed)`, with an optional bias.
    pub fn seeded(seed: i64, bias: Option<&Tensor>) -> (VarStore, Self) {
        tch::manual_seed(seed);
        let w = Tensor::randn([16, 64], (Kind::Float, Device::Cpu)) * 0.1;
        let q = peft_quant::Linear4bit::quantize(&w, peft_quant::Quant4Options::default()).unwrap();
        let base = pnn::LinearBase::from_quantized(Box::new(q), bias.map(Tensor::copy));
        (VarStore::new(Device::Cpu), Quantized { proj: peft_core::AdaptedLayer::new("proj", base) })
    }

    /// The dequantized weight `(16, 64)`.
    pub fn dequantized(&self) -> Tensor {
        self.proj.base().quantized.as_ref().expect("a quantized base").dequantize()
    }
}
