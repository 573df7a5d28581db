"""ASA parity fixture: PEFT 0.21.2's AdaMSS with use_asa trained by AdamW for a few steps, calling
`model.base_model.update_and_allocate(step)` after each optimizer step (what `AdamssAsaCallback` does in
the HF Trainer). Saves the base weights, the initial and final adapters, the losses and, after each step,
which subspace tensors still train.

Usage: python asa.py OUT_DIR
"""

import json
import os
import sys

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from peft import AdamssConfig, get_peft_model


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin0 = nn.Linear(10, 20)
        self.lin1 = nn.Linear(20, 6)

    def forward(self, x):
        return torch.log_softmax(self.lin1(torch.relu(self.lin0(x))), dim=-1)


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(0)
    net = Net()
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, os.path.join(out, "base.safetensors"))
    config = AdamssConfig(
        target_modules=["lin0", "lin1"],
        r=6,
        num_subspaces=3,
        use_asa=True,
        asa_target_subspaces=2,
        init_warmup=1,
        final_warmup=7,
        mask_interval=2,
    )
    torch.manual_seed(1)
    model = get_peft_model(net, config)
    torch.manual_seed(2)
    with torch.no_grad():
        for _, p in model.named_parameters():
            if p.requires_grad:
                p.add_(0.2 * torch.randn_like(p))
    model.save_pretrained(os.path.join(out, "initial"))
    torch.manual_seed(3)
    x = torch.randn(16, 10)
    y = torch.arange(16) % 6
    save_file({"x": x, "y": y}, os.path.join(out, "data.safetensors"))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.01)
    losses, trainable = [], []
    for step in range(10):
        opt.zero_grad()
        loss = F.nll_loss(model(x), y)
        loss.backward()
        opt.step()
        model.base_model.update_and_allocate(step)
        losses.append(loss.item())
        trainable.append(sorted(n for n, p in model.named_parameters() if "adamss_" in n and p.requires_grad))
    model.save_pretrained(os.path.join(out, "final"))
    with open(os.path.join(out, "asa.json"), "w") as f:
        json.dump(dict(losses=losses, trainable=trainable, lr=0.01), f, indent=1)


if __name__ == "__main__":
    main()
