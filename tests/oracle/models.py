"""Small test models, defined identically here and in tests/src/models.rs.

They follow PEFT's own test models (tests/test_custom_models.py: MLP, DeepMLP, a GPT-2 style Conv1D
model) so that module names, module order and parameter shapes line up one to one with the Rust side.
Module registration order matters: it is the order in which PyTorch draws random numbers for the
initial weights and the order in which PEFT creates adapter layers.
"""

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D


class MLP(nn.Module):
    def __init__(self, bias=True):
        super().__init__()
        self.lin0 = nn.Linear(10, 20, bias=bias)
        self.relu = nn.ReLU()
        self.drop = nn.Dropout(0.5)
        self.lin1 = nn.Linear(20, 2, bias=bias)
        self.sm = nn.LogSoftmax(dim=-1)

    def forward(self, x):
        x = self.lin0(x.float())
        x = self.relu(x)
        x = self.drop(x)
        x = self.lin1(x)
        return self.sm(x)


class Block(nn.Module):
    def __init__(self, size=10):
        super().__init__()
        self.lin0 = nn.Linear(size, size)
        self.relu = nn.ReLU()
        self.drop = nn.Dropout(0.5)
        self.lin1 = nn.Linear(size, size)

    def forward(self, x):
        return self.lin1(self.drop(self.relu(self.lin0(x))))


class DeepMLP(nn.Module):
    def __init__(self, num_layers=4, size=10):
        super().__init__()
        self.layers = nn.ModuleList([Block(size) for _ in range(num_layers)])
        self.out = nn.Linear(size, 2)
        self.sm = nn.LogSoftmax(dim=-1)

    def forward(self, x):
        x = x.float()
        for layer in self.layers:
            x = layer(x)
        return self.sm(self.out(x))


class MLPConv1D(nn.Module):
    """GPT-2 style: transformers' Conv1D stores its weight (in, out), so LoRA needs fan_in_fan_out."""

    def __init__(self):
        super().__init__()
        self.c_fc = Conv1D(20, 10)
        self.relu = nn.ReLU()
        self.c_proj = Conv1D(2, 20)
        self.sm = nn.LogSoftmax(dim=-1)

    def forward(self, x):
        return self.sm(self.c_proj(self.relu(self.c_fc(x.float()))))


class EmbMLP(nn.Module):
    """An embedding (with a padding index) in front of PEFT's MLP: LoRA on nn.Embedding. Input: token ids."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(30, 10, padding_idx=0)
        self.lin0 = nn.Linear(10, 20)
        self.relu = nn.ReLU()
        self.lin1 = nn.Linear(20, 2)
        self.sm = nn.LogSoftmax(dim=-1)

    def forward(self, x):
        return self.sm(self.lin1(self.relu(self.lin0(self.emb(x)))))


class ConvNet(nn.Module):
    """Every convolution kind LoRA adapts: Conv2d (3x3, 1x1 without bias, grouped), Conv3d, Conv1d with a
    stride. Input: (N, 2, 6, 6)."""

    def __init__(self):
        super().__init__()
        self.conv2d = nn.Conv2d(2, 8, 3, padding=1)
        self.relu = nn.ReLU()
        self.conv1x1 = nn.Conv2d(8, 8, 1, bias=False)
        self.grouped = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.conv3d = nn.Conv3d(8, 4, (3, 3, 1), padding=(1, 1, 0))
        self.conv1d = nn.Conv1d(4, 4, 3, stride=2, padding=1)
        self.lin = nn.Linear(72, 2)
        self.sm = nn.LogSoftmax(dim=-1)

    def forward(self, x):
        h = self.relu(self.conv2d(x.float()))
        h = self.relu(self.conv1x1(h))
        h = self.grouped(h)
        h = self.relu(self.conv3d(h.unsqueeze(-1))).squeeze(-1)
        h = self.conv1d(h.flatten(2))
        return self.sm(self.lin(h.flatten(1)))


MODELS = {"MLP": MLP, "DeepMLP": DeepMLP, "MLPConv1D": MLPConv1D, "EmbMLP": EmbMLP, "ConvNet": ConvNet}


def example_input(name, seed=42):
    """The input the parity cases feed model `name` (drawn under `seed`)."""
    torch.manual_seed(seed)
    if name == "EmbMLP":
        x = torch.randint(0, 30, (9, 5))
        x[0, :2] = 0  # the padding index appears
        return x
    if name == "ConvNet":
        return torch.randn(9, 2, 6, 6)
    return torch.randn(9, 10) * 2


def build(name, seed=0):
    """Builds a model the way PEFT's tests do: seed first, then construct."""
    torch.manual_seed(seed)
    return MODELS[name]()
