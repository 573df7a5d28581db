//! Rust twins of `tests/oracle/models.py`: same module names, same registration order, same init.

use peft_core::nn::{self as pnn, Conv, ConvConfig, Embedding, EmbeddingConfig, Linear};
use peft_core::{Adaptable, AdaptableLayer, ForwardCtx, Result};
use std::path::Path;
use tch::nn::{ModuleT, VarStore};
use tch::{Kind, Tensor};

/// PEFT's test `MLP`: lin0 (10→20), relu, dropout 0.5, lin1 (20→2), log_softmax.
#[derive(Debug, Adaptable)]
pub struct Mlp {
    /// First layer.
    pub lin0: Linear,
    /// Second layer.
    pub lin1: Linear,
}

impl Mlp {
    /// Builds it under the var store root.
    pub fn new(vs: &VarStore) -> Result<Self> {
        let p = vs.root();
        Ok(Self {
            lin0: pnn::linear(&p / "lin0", 10, 20, Default::default())?,
            lin1: pnn::linear(&p / "lin1", 20, 2, Default::default())?,
        })
    }
}

impl Mlp {
    /// The forward pass with per-call options (mixed batches).
    pub fn forward_ctx(&self, x: &Tensor, ctx: &ForwardCtx<'_>) -> Tensor {
        let x = self.lin0.forward_ctx(&x.to_kind(Kind::Float), ctx).relu().dropout(0.5, ctx.train);
        self.lin1.forward_ctx(&x, ctx).log_softmax(-1, None::<Kind>)
    }
}

impl ModuleT for Mlp {
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        self.forward_ctx(x, &ForwardCtx::from_train(train))
    }
}

/// A block of [`DeepMlp`].
#[derive(Debug, Adaptable)]
pub struct Block {
    /// First layer.
    pub lin0: Linear,
    /// Second layer.
    pub lin1: Linear,
}

/// PEFT's test `DeepMLP` (4 blocks of size 10, then `out`).
#[derive(Debug, Adaptable)]
pub struct DeepMlp {
    /// The blocks, `layers.<i>`.
    pub layers: Vec<Block>,
    /// The head.
    pub out: Linear,
}

impl DeepMlp {
    /// Builds it under the var store root.
    pub fn new(vs: &VarStore) -> Result<Self> {
        let p = vs.root();
        let layers = (0..4)
            .map(|i| {
                let b = &p / "layers" / i;
                Ok(Block {
                    lin0: pnn::linear(&b / "lin0", 10, 10, Default::default())?,
                    lin1: pnn::linear(&b / "lin1", 10, 10, Default::default())?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { layers, out: pnn::linear(&p / "out", 10, 2, Default::default())? })
    }
}

impl DeepMlp {
    /// The forward pass with per-call options (mixed batches).
    pub fn forward_ctx(&self, x: &Tensor, ctx: &ForwardCtx<'_>) -> Tensor {
        let mut x = x.to_kind(Kind::Float);
        for b in &self.layers {
            let h = b.lin0.forward_ctx(&x, ctx).relu().dropout(0.5, ctx.train);
            x = b.lin1.forward_ctx(&h, ctx);
        }
        self.out.forward_ctx(&x, ctx).log_softmax(-1, None::<Kind>)
    }
}

impl ModuleT for DeepMlp {
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        self.forward_ctx(x, &ForwardCtx::from_train(train))
    }
}

/// A GPT-2 style model of transformers `Conv1D` layers (`fan_in_fan_out`).
#[derive(Debug, Adaptable)]
pub struct MlpConv1D {
    /// Conv1D(nf=20, nx=10).
    pub c_fc: Linear,
    /// Conv1D(nf=2, nx=20).
    pub c_proj: Linear,
}

impl MlpConv1D {
    /// Builds it under the var store root.
    pub fn new(vs: &VarStore) -> Result<Self> {
        let p = vs.root();
        Ok(Self {
            c_fc: pnn::transformers_conv1d(&p / "c_fc", 20, 10)?,
            c_proj: pnn::transformers_conv1d(&p / "c_proj", 2, 20)?,
        })
    }
}

impl MlpConv1D {
    /// The forward pass with per-call options (mixed batches).
    pub fn forward_ctx(&self, x: &Tensor, ctx: &ForwardCtx<'_>) -> Tensor {
        let h = self.c_fc.forward_ctx(&x.to_kind(Kind::Float), ctx).relu();
        self.c_proj.forward_ctx(&h, ctx).log_softmax(-1, None::<Kind>)
    }
}

impl ModuleT for MlpConv1D {
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        self.forward_ctx(x, &ForwardCtx::from_train(train))
    }
}

/// An embedding with a padding index in front of PEFT's MLP (input: token ids `(N, T)`).
#[derive(Debug, Adaptable)]
pub struct EmbMlp {
    /// Embedding(30, 10, padding_idx=0).
    pub emb: Embedding,
    /// Linear(10, 20).
    pub lin0: Linear,
    /// Linear(20, 2).
    pub lin1: Linear,
}

impl EmbMlp {
    /// Builds it under the var store root.
    pub fn new(vs: &VarStore) -> Result<Self> {
        let p = vs.root();
        Ok(Self {
            emb: pnn::embedding(&p / "emb", 30, 10, EmbeddingConfig { padding_idx: Some(0), init: true })?,
            lin0: pnn::linear(&p / "lin0", 10, 20, Default::default())?,
            lin1: pnn::linear(&p / "lin1", 20, 2, Default::default())?,
        })
    }
}

impl EmbMlp {
    /// The forward pass with per-call options (mixed batches).
    pub fn forward_ctx(&self, x: &Tensor, ctx: &ForwardCtx<'_>) -> Tensor {
        let h = self.lin0.forward_ctx(&self.emb.forward_ctx(x, ctx), ctx).relu();
        self.lin1.forward_ctx(&h, ctx).log_softmax(-1, None::<Kind>)
    }
}

impl ModuleT for EmbMlp {
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        self.forward_ctx(x, &ForwardCtx::from_train(train))
    }
}

/// Every convolution kind: Conv2d (3×3, 1×1 without bias, grouped), Conv3d, strided Conv1d; input
/// `(N, 2, 6, 6)`.
#[derive(Debug, Adaptable)]
pub struct ConvNet {
    /// Conv2d(2, 8, 3, padding=1).
    pub conv2d: Conv,
    /// Conv2d(8, 8, 1, bias=False).
    pub conv1x1: Conv,
    /// Conv2d(8, 8, 3, padding=1, groups=2).
    pub grouped: Conv,
    /// Conv3d(8, 4, (3, 3, 1), padding=(1, 1, 0)).
    pub conv3d: Conv,
    /// Conv1d(4, 4, 3, stride=2, padding=1).
    pub conv1d: Conv,
    /// Linear(72, 2).
    pub lin: Linear,
}

impl ConvNet {
    /// Builds it under the var store root.
    pub fn new(vs: &VarStore) -> Result<Self> {
        let p = vs.root();
        let pad1 = ConvConfig { padding: vec![1], ..Default::default() };
        Ok(Self {
            conv2d: pnn::conv2d(&p / "conv2d", 2, 8, &[3], pad1.clone())?,
            conv1x1: pnn::conv2d(
                &p / "conv1x1",
                8,
                8,
                &[1],
                ConvConfig { bias: false, ..Default::default() },
            )?,
            grouped: pnn::conv2d(&p / "grouped", 8, 8, &[3], ConvConfig { groups: 2, ..pad1.clone() })?,
            conv3d: pnn::conv3d(
                &p / "conv3d",
                8,
                4,
                &[3, 3, 1],
                ConvConfig { padding: vec![1, 1, 0], ..Default::default() },
            )?,
            conv1d: pnn::conv1d(&p / "conv1d", 4, 4, 3, ConvConfig { stride: vec![2], ..pad1 })?,
            lin: pnn::linear(&p / "lin", 72, 2, Default::default())?,
        })
    }
}

impl ConvNet {
    /// The forward pass with per-call options (mixed batches).
    pub fn forward_ctx(&self, x: &Tensor, ctx: &ForwardCtx<'_>) -> Tensor {
        let h = self.conv2d.forward_ctx(&x.to_kind(Kind::Float), ctx).relu();
        let h = self.conv1x1.forward_ctx(&h, ctx).relu();
        let h = self.grouped.forward_ctx(&h, ctx);
        let h = self.conv3d.forward_ctx(&h.unsqueeze(-1), ctx).relu().squeeze_dim(-1);
        let h = self.conv1d.forward_ctx(&h.flatten(2, -1), ctx);
        self.lin.forward_ctx(&h.flatten(1, -1), ctx).log_softmax(-1, None::<Kind>)
    }
}

impl ModuleT for ConvNet {
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        self.forward_ctx(x, &ForwardCtx::from_train(train))
    }
}

/// Any of the test models, by the name the oracle uses.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // test models, built a few at a time
pub enum TestModel {
    /// `MLP`.
    Mlp(Mlp),
    /// `DeepMLP`.
    Deep(DeepMlp),
    /// `MLPConv1D`.
    Conv1D(MlpConv1D),
    /// `EmbMLP`.
    Emb(EmbMlp),
    /// `ConvNet`.
    Conv(Box<ConvNet>),
}

impl TestModel {
    /// Builds the model named `name` in `vs`.
    pub fn build(name: &str, vs: &VarStore) -> Result<Self> {
        Ok(match name {
            "MLP" => TestModel::Mlp(Mlp::new(vs)?),
            "DeepMLP" => TestModel::Deep(DeepMlp::new(vs)?),
            "MLPConv1D" => TestModel::Conv1D(MlpConv1D::new(vs)?),
            "EmbMLP" => TestModel::Emb(EmbMlp::new(vs)?),
            "ConvNet" => TestModel::Conv(Box::new(ConvNet::new(vs)?)),
            other => panic!("unknown test model {other}"),
        })
    }
}

impl Adaptable for TestModel {
    fn visit_layers(&self, f: &mut dyn FnMut(&dyn AdaptableLayer)) {
        match self {
            TestModel::Mlp(m) => m.visit_layers(f),
            TestModel::Deep(m) => m.visit_layers(f),
            TestModel::Conv1D(m) => m.visit_layers(f),
            TestModel::Emb(m) => m.visit_layers(f),
            TestModel::Conv(m) => m.visit_layers(f),
        }
    }
    fn visit_layers_mut(&mut self, f: &mut dyn FnMut(&mut dyn AdaptableLayer) -> Result<()>) -> Result<()> {
        match self {
            TestModel::Mlp(m) => m.visit_layers_mut(f),
            TestModel::Deep(m) => m.visit_layers_mut(f),
            TestModel::Conv1D(m) => m.visit_layers_mut(f),
            TestModel::Emb(m) => m.visit_layers_mut(f),
            TestModel::Conv(m) => m.visit_layers_mut(f),
        }
    }
    fn auto_mapping(&self) -> Option<serde_json::Value> {
        // What PEFT writes for these models: their class in tests/oracle/models.py.
        let class = match self {
            TestModel::Mlp(_) => "MLP",
            TestModel::Deep(_) => "DeepMLP",
            TestModel::Conv1D(_) => "MLPConv1D",
            TestModel::Emb(_) => "EmbMLP",
            TestModel::Conv(_) => "ConvNet",
        };
        Some(serde_json::json!({"base_model_class": class, "parent_library": "models"}))
    }
}

impl TestModel {
    /// The forward pass with per-call options (mixed batches).
    pub fn forward_ctx(&self, x: &Tensor, ctx: &ForwardCtx<'_>) -> Tensor {
        match self {
            TestModel::Mlp(m) => m.forward_ctx(x, ctx),
            TestModel::Deep(m) => m.forward_ctx(x, ctx),
            TestModel::Conv1D(m) => m.forward_ctx(x, ctx),
            TestModel::Emb(m) => m.forward_ctx(x, ctx),
            TestModel::Conv(m) => m.forward_ctx(x, ctx),
        }
    }
}

impl ModuleT for TestModel {
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        self.forward_ctx(x, &ForwardCtx::from_train(train))
    }
}

/// Copies a safetensors state dict into a var store: the key sets must be equal.
pub fn load_var_store(vs: &VarStore, path: &Path) {
    let file = peft_core::io::read_safetensors(path).unwrap();
    let vars = vs.variables();
    let mut file_keys: Vec<&str> = file.iter().map(|t| t.key.as_str()).collect();
    file_keys.sort_unstable();
    let mut var_keys: Vec<&str> = vars.keys().map(String::as_str).collect();
    var_keys.sort_unstable();
    assert_eq!(file_keys, var_keys, "{}: state dict keys", path.display());
    for t in file {
        let mut dst = vars[&t.key].shallow_clone();
        tch::no_grad(|| dst.copy_(&t.tensor));
    }
}

/// Reads one tensor from a safetensors file.
pub fn read_tensor(path: &Path, key: &str) -> Tensor {
    peft_core::io::read_safetensors(path)
        .unwrap()
        .into_iter()
        .find(|t| t.key == key)
        .unwrap_or_else(|| panic!("{}: no tensor {key}", path.display()))
        .tensor
}

/// Reads all tensors of a safetensors file into a map.
pub fn read_all(path: &Path) -> std::collections::BTreeMap<String, Tensor> {
    peft_core::io::read_safetensors(path).unwrap().into_iter().map(|t| (t.key, t.tensor)).collect()
}
