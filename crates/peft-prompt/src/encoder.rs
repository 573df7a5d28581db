//! The prompt encoders: what turns the virtual tokens `0..n` into the prompt (prompt tuning, P-tuning) or
//! the flattened key/value prefix (prefix tuning), built and initialised as PEFT builds them.
//!
//! In PEFT's own module layout (`prompt_encoder.<adapter>.embedding.weight`, `mlp_head.0.weight`, …) under
//! the adapter var store; the file only ever holds the encoder's output (`prompt_embeddings`).

use peft_core::init;
use peft_core::{PeftError, Result};
use tch::nn::Path;
use tch::{Device, Kind, Tensor};

/// A linear layer's `(weight, bias)`.
type Linear = (Tensor, Tensor);

/// A prompt encoder.
#[derive(Debug)]
pub enum PromptEncoder {
    /// The prompt is the parameter (prompt tuning, prefix tuning without projection, and every method
    /// loaded for inference): `embedding.weight` `(n, d)`.
    Embedding {
        /// `(n, d)`.
        weight: Tensor,
    },
    /// P-tuning's MLP: `Linear(d, h) → ReLU → Linear(h, h) → ReLU → Linear(h, d)` over the embedding.
    Mlp {
        /// `(n, d)`.
        embedding: Tensor,
        /// The three linear layers.
        layers: [Linear; 3],
    },
    /// P-tuning's LSTM: a bidirectional LSTM, then `Linear(2h, 2h) → ReLU → Linear(2h, d)`.
    Lstm {
        /// `(n, d)`.
        embedding: Tensor,
        /// The LSTM's weights in PyTorch's order (per layer, per direction: `w_ih`, `w_hh`, `b_ih`, `b_hh`).
        lstm: Vec<Tensor>,
        /// LSTM layers.
        num_layers: i64,
        /// LSTM hidden size.
        hidden: i64,
        /// Dropout between LSTM layers (training only).
        dropout: f64,
        /// The two linear layers.
        head: [Linear; 2],
    },
    /// Prefix tuning with `prefix_projection`: `Linear(d, h) → Tanh → Linear(h, 2·L·d)` over the embedding.
    PrefixProjection {
        /// `(n, d)`.
        embedding: Tensor,
        /// The two linear layers.
        transform: [Linear; 2],
    },
}

fn torch(what: &'static str) -> impl Fn(tch::TchError) -> PeftError {
    move |e| PeftError::torch(what)(e)
}

/// `nn.Embedding(n, d)`: `N(0, 1)`.
pub(crate) fn embedding(n: i64, d: i64) -> Result<Tensor> {
    let mut w = Tensor::f_empty([n, d], (Kind::Float, Device::Cpu)).map_err(torch("allocating a prompt"))?;
    init::normal_(&mut w, 0.0, 1.0)?;
    Ok(w)
}

/// `nn.Linear(i, o)`: Kaiming-uniform weight, then the bias.
fn linear(i: i64, o: i64) -> Result<Linear> {
    let opts = (Kind::Float, Device::Cpu);
    let mut w = Tensor::f_empty([o, i], opts).map_err(torch("allocating a prompt encoder layer"))?;
    init::kaiming_uniform_(&mut w, 5f64.sqrt())?;
    let mut b = Tensor::f_empty([o], opts).map_err(torch("allocating a prompt encoder layer"))?;
    init::bias_uniform_(&mut b, i)?;
    Ok((w, b))
}

fn register(path: &Path<'_>, name: &str, t: Tensor) -> Tensor {
    path.add(name, t, true)
}

fn register_linear(path: &Path<'_>, (w, b): Linear) -> Linear {
    (register(path, "weight", w), register(path, "bias", b))
}

fn apply(x: &Tensor, (w, b): &Linear) -> Tensor {
    x.linear(w, Some(b))
}

impl PromptEncoder {
    /// The prompt itself as the parameter, initialised `N(0, 1)` unless `weight` is given.
    pub(crate) fn embedding_only(path: &Path<'_>, weight: Tensor) -> Self {
        PromptEncoder::Embedding { weight: register(&(path / "embedding"), "weight", weight) }
    }

    /// P-tuning's MLP encoder over `n` virtual tokens of dimension `d`, hidden size `h`.
    pub(crate) fn mlp(path: &Path<'_>, n: i64, d: i64, h: i64) -> Result<Self> {
        let embedding = embedding(n, d)?;
        let raw = [linear(d, h)?, linear(h, h)?, linear(h, d)?];
        let head = path / "mlp_head";
        let [l0, l2, l4] = raw;
        Ok(PromptEncoder::Mlp {
            embedding: register(&(path / "embedding"), "weight", embedding),
            layers: [
                register_linear(&(&head / "0"), l0),
                register_linear(&(&head / "2"), l2),
                register_linear(&(&head / "4"), l4),
            ],
        })
    }

    /// P-tuning's LSTM encoder (`nn.LSTM(d, h, num_layers, dropout, bidirectional=True, batch_first=True)`
    /// initialised `U(±1/√h)` in parameter order, then the head).
    pub(crate) fn lstm(
        path: &Path<'_>,
        n: i64,
        d: i64,
        h: i64,
        num_layers: i64,
        dropout: f64,
    ) -> Result<Self> {
        let embedding = embedding(n, d)?;
        let bound = 1.0 / (h as f64).sqrt();
        let lstm_path = path / "lstm_head";
        let mut lstm = Vec::new();
        for layer in 0..num_layers {
            let input = if layer == 0 { d } else { 2 * h };
            for suffix in ["", "_reverse"] {
                for (name, shape) in [
                    ("weight_ih", vec![4 * h, input]),
                    ("weight_hh", vec![4 * h, h]),
                    ("bias_ih", vec![4 * h]),
                    ("bias_hh", vec![4 * h]),
                ] {
                    let mut t = Tensor::f_empty(shape.as_slice(), (Kind::Float, Device::Cpu))
                        .map_err(torch("allocating the prompt LSTM"))?;
                    init::uniform_(&mut t, -bound, bound)?;
                    lstm.push(register(&lstm_path, &format!("{name}_l{layer}{suffix}"), t));
                }
            }
        }
        let head = path / "mlp_head";
        let (l0, l2) = (linear(2 * h, 2 * h)?, linear(2 * h, d)?);
        Ok(PromptEncoder::Lstm {
            embedding: register(&(path / "embedding"), "weight", embedding),
            lstm,
            num_layers,
            hidden: h,
            dropout,
            head: [register_linear(&(&head / "0"), l0), register_linear(&(&head / "2"), l2)],
        })
    }

    /// Prefix tuning's projection: `n` virtual tokens of dimension `d`, hidden size `h`, output `out`
    /// (`2·L·d`); `zero` starts the last layer at zero.
    pub(crate) fn prefix_projection(
        path: &Path<'_>,
        n: i64,
        d: i64,
        h: i64,
        out: i64,
        zero: bool,
    ) -> Result<Self> {
        let embedding = embedding(n, d)?;
        let (l0, mut l2) = (linear(d, h)?, linear(h, out)?);
        if zero {
            init::zeros_(&mut l2.0)?;
            init::zeros_(&mut l2.1)?;
        }
        let transform = path / "transform";
        Ok(PromptEncoder::PrefixProjection {
            embedding: register(&(path / "embedding"), "weight", embedding),
            transform: [register_linear(&(&transform / "0"), l0), register_linear(&(&transform / "2"), l2)],
        })
    }

    /// The encoder's output for the virtual tokens `tokens` `(1, n)`: `(1, n, out)`.
    pub fn forward(&self, tokens: &Tensor, train: bool) -> Tensor {
        let lookup = |w: &Tensor| Tensor::embedding(w, tokens, -1, false, false);
        match self {
            PromptEncoder::Embedding { weight } => lookup(weight),
            PromptEncoder::Mlp { embedding, layers } => {
                let x = apply(&lookup(embedding), &layers[0]).relu();
                let x = apply(&x, &layers[1]).relu();
                apply(&x, &layers[2])
            }
            PromptEncoder::Lstm { embedding, lstm, num_layers, hidden, dropout, head } => {
                let x = lookup(embedding);
                let b = x.size()[0];
                let zeros = Tensor::zeros([2 * num_layers, b, *hidden], (x.kind(), x.device()));
                let (out, _, _) = x.lstm(
                    &[&zeros, &zeros],
                    &lstm.iter().collect::<Vec<_>>(),
                    true,
                    *num_layers,
                    *dropout,
                    train,
                    true,
                    true,
                );
                apply(&apply(&out, &head[0]).relu(), &head[1])
            }
            PromptEncoder::PrefixProjection { embedding, transform } => {
                apply(&apply(&lookup(embedding), &transform[0]).tanh(), &transform[1])
            }
        }
    }
}
