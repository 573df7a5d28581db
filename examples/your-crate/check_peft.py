"""Python PEFT loads what examples/your-crate saved and gives its outputs.

Usage: python check_peft.py OUT_DIR   (OUT_DIR as written by `cargo run -- OUT_DIR`)
"""

import os
import sys

import torch
from safetensors.torch import load_file

from peft import PeftModel


class Mlp(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin0 = torch.nn.Linear(10, 20)
        self.lin1 = torch.nn.Linear(20, 2)

    def forward(self, x):
        return self.lin1(torch.relu(self.lin0(x)))


def main(out):
    base = Mlp()
    base.load_state_dict(load_file(os.path.join(out, "base.safetensors")))
    io = load_file(os.path.join(out, "io.safetensors"))
    with torch.no_grad():
        y_base = base(io["x"].clone())
    # PEFT injects the adapter into `base` itself.
    model = PeftModel.from_pretrained(base, os.path.join(out, "adapter")).eval()
    with torch.no_grad():
        y = model(io["x"].clone())
    moved = (y - y_base).abs().max().item()
    diff = (y - io["y"]).abs().max().item()
    if diff > 1e-6 or moved < 1e-3:
        sys.exit(f"PEFT's output differs from peft-rs's by {diff:e} (the adapter moves the output by {moved:e})")
    print(f"PEFT loads the adapter: outputs equal to {diff:.1e}; the adapter moves them by {moved:.3f}")


if __name__ == "__main__":
    main(sys.argv[1])
