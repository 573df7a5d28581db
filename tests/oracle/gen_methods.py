"""Fixture generator for the methods other than LoRA: the pinned PEFT (0.21.2) creates, perturbs, saves,
evaluates and trains adapters of each method on the test models (models.py).

Usage: python gen_methods.py OUT_DIR METHOD_FILE_STEM   (e.g. method_ia3)

Sections (each listed in OUT_DIR/manifest.json):
  cases/<name>/    PEFT creates adapters, perturbs every adapter tensor (so that no adapter is the
                   identity), saves them and records the model's outputs unmerged, disabled, merged, after
                   unmerge and after merge_and_unload, and get_layer_status / get_model_status
                   -> Rust loads & compares; Rust creates, perturbs and saves -> PEFT loads (check_load.py)
  init/<name>/     base model + adapter created right after torch.manual_seed(0)        -> same seed in Rust
  train/<name>/    a few optimizer steps from a saved initial adapter                     -> Rust repeats them
  configs/<name>/  adapter_config.json files written by PEFT                               -> parse/write parity

The rows live in one file per method, `method_<name>.py` next to this script, with the tables CASES,
INIT_CASES, TRAIN_CASES and CONFIG_CASES; each row names its `method` (PEFT's peft_type), and the config
class is PEFT's own for that type. Output parity cases: `adapters` maps adapter name -> config kwargs;
`perturb` is the scale of the N(0, 1) noise added to every adapter tensor (0: keep PEFT's init; default
0.3); `merge`: whether the method merges; `atol`: the tolerance of the comparison (default 0:
bit-identical). The Rust tests (tests/tests/methods_parity.rs) generate each method file's fixtures
separately (cached by a hash of the shared oracle files and that method file) and iterate over them.
"""

import importlib
import json
import os
import sys

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from peft import get_peft_model
from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

import models
from gen_lora import outputs_of, status_of, tensors


def make_config(method, kwargs):
    return PEFT_TYPE_TO_CONFIG_MAPPING[method](**kwargs)


TRAIN_SEED = 1234


def tables(stem):
    """The rows of one method file (`method_<name>.py`: CASES, INIT_CASES, TRAIN_CASES, CONFIG_CASES)."""
    return importlib.import_module(stem)


def adapter_tensor(name, base_keys):
    """Whether PEFT parameter `name` belongs to an adapter (not to the base model or its original copy)."""
    if "base_layer" in name or ".original_module." in name:
        return False
    return name.removeprefix("base_model.model.") not in base_keys


def perturb(model, base_keys, scale):
    with torch.no_grad():
        for n, p in model.named_parameters():
            if adapter_tensor(n, base_keys):
                p.add_(scale * torch.randn_like(p))


def gen_case(root, case):
    d = os.path.join(root, "cases", case["name"])
    os.makedirs(d)
    base = models.build(case["model"])
    base.eval()
    base_keys = set(base.state_dict())
    x = models.example_input(case["model"])
    with torch.no_grad():
        base_out = base(x)
    save_file(tensors(base.state_dict()), os.path.join(d, "base.safetensors"))
    names = list(case["adapters"])
    method = case["method"]
    torch.manual_seed(1)
    model = get_peft_model(base, make_config(method, case["adapters"][names[0]]), adapter_name=names[0])
    for n in names[1:]:
        model.add_adapter(n, make_config(method, case["adapters"][n]))
    scale = case.get("perturb", 0.3)
    if scale:
        torch.manual_seed(2)
        perturb(model, base_keys, scale)
    active = case.get("active", [names[0]])
    merge = case.get("merge", True)
    status = status_of(model, active)
    out = outputs_of(model, x, active, merge)
    out["base"] = base_out
    model.save_pretrained(os.path.join(d, "adapter"))
    save_file(tensors({"x": x}), os.path.join(d, "input.safetensors"))
    save_file(tensors(out), os.path.join(d, "outputs.safetensors"))
    meta = dict(
        name=case["name"],
        method=method,
        model=case["model"],
        adapters=names,
        active=active,
        merge=merge,
        perturb=scale,
        atol=case.get("atol", 0.0),
        status=status,
        configs=case["adapters"],
    )
    with open(os.path.join(d, "case.json"), "w") as f:
        json.dump(meta, f, indent=2)
    return case["name"]


def gen_init(root, case):
    d = os.path.join(root, "init", case["name"])
    os.makedirs(d)
    model = models.build(case["model"], seed=0)
    save_file(tensors(model.state_dict()), os.path.join(d, "base.safetensors"))
    peft_model = get_peft_model(model, make_config(case["method"], case["config"]))
    peft_model.save_pretrained(os.path.join(d, "adapter"))
    trainable = sorted(n for n, p in peft_model.named_parameters() if p.requires_grad)
    with open(os.path.join(d, "trainable.json"), "w") as f:
        json.dump(trainable, f)
    with open(os.path.join(d, "case.json"), "w") as f:
        json.dump(case, f, indent=2)
    return case["name"]


def gen_train(root, case):
    d = os.path.join(root, "train", case["name"])
    os.makedirs(d)
    base = models.build(case["model"])
    base_keys = set(base.state_dict())
    save_file(tensors(base.state_dict()), os.path.join(d, "base.safetensors"))
    torch.manual_seed(7)
    model = get_peft_model(base, make_config(case["method"], case["config"]))
    # Start away from the identity, so every tensor gets a gradient from the first step.
    torch.manual_seed(8)
    perturb(model, base_keys, 0.2)
    model.save_pretrained(os.path.join(d, "initial"))
    x = models.example_input(case["model"])
    n = x.shape[0]
    y = torch.arange(n) % 2
    if case["model"] == "EmbMLP":
        y = (torch.arange(n * x.shape[1]) % 2).view(n, -1)
    params = [p for p in model.parameters() if p.requires_grad]
    if case["optimizer"] == "sgd":
        opt = torch.optim.SGD(params, lr=case["lr"])
    else:
        opt = torch.optim.AdamW(params, lr=case["lr"])
    torch.manual_seed(TRAIN_SEED)
    model.train()
    losses = []
    for _ in range(case["steps"]):
        opt.zero_grad()
        out = model(x)
        loss = F.nll_loss(out.reshape(-1, out.shape[-1]), y.reshape(-1))
        loss.backward()
        opt.step()
        losses.append(loss.item())
    model.save_pretrained(os.path.join(d, "final"))
    save_file(tensors({"x": x, "y": y}), os.path.join(d, "data.safetensors"))
    with open(os.path.join(d, "case.json"), "w") as f:
        json.dump(dict(case, losses=losses, seed=TRAIN_SEED), f, indent=2)
    return case["name"]


def gen_config(root, case):
    d = os.path.join(root, "configs", case["name"])
    make_config(case["method"], case["kwargs"]).save_pretrained(d)
    with open(os.path.join(d, "case.json"), "w") as f:
        json.dump(case, f, indent=2)
    return case["name"]


def main():
    root, stem = sys.argv[1], sys.argv[2]
    os.makedirs(root, exist_ok=True)
    t = tables(stem)
    manifest = dict(
        cases=[gen_case(root, c) for c in getattr(t, "CASES", [])],
        init=[gen_init(root, c) for c in getattr(t, "INIT_CASES", [])],
        train=[gen_train(root, c) for c in getattr(t, "TRAIN_CASES", [])],
        configs=[gen_config(root, c) for c in getattr(t, "CONFIG_CASES", [])],
    )
    with open(os.path.join(root, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=2)


if __name__ == "__main__":
    main()
