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


MODELS = {"MLP": MLP, "DeepMLP": DeepMLP, "MLPConv1D": MLPConv1D}


def build(name, seed=0):
    """Builds a model the way PEFT's tests do: seed first, then construct."""
    torch.manual_seed(seed)
    return MODELS[name]()
