"""Fixture generator for the methods other than LoRA: the pinned PEFT (0.21.2) creates, perturbs, saves,
evaluates and trains adapters of each method on the test models (models.py).

Usage: python gen_methods.py OUT_DIR

Sections (each listed in OUT_DIR/manifest.json):
  cases/<name>/    PEFT creates adapters, perturbs every adapter tensor (so that no adapter is the
                   identity), saves them and records the model's outputs unmerged, disabled, merged, after
                   unmerge and after merge_and_unload, and get_layer_status / get_model_status
                   -> Rust loads & compares; Rust creates, perturbs and saves -> PEFT loads (check_load.py)
  init/<name>/     base model + adapter created right after torch.manual_seed(0)        -> same seed in Rust
  train/<name>/    a few optimizer steps from a saved initial adapter                     -> Rust repeats them
  configs/<name>/  adapter_config.json files written by PEFT                               -> parse/write parity

Each row names its `method` (PEFT's peft_type); the config class is PEFT's own for that type. Add a row to a
table to extend the matrix; the Rust tests (tests/tests/methods_parity.rs) iterate over the manifest.
"""

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


# Output parity cases. `adapters` maps adapter name -> config kwargs; `perturb` is the scale of the
# N(0, 1) noise added to every adapter tensor (0: keep PEFT's init); `merge`: whether the method merges;
# `atol`: the tolerance of the comparison (default 0: bit-identical).
CASES = []

# (IA)³: output scaling, input scaling on feed-forward layers, Conv1D, convolutions (grouped, 3-D), several
# active adapters (their vectors multiply), exclusions, modules_to_save, a random init.
CASES += [
    dict(
        name="ia3_mlp",
        method="IA3",
        model="MLP",
        adapters={"default": dict(target_modules=["lin0", "lin1"], feedforward_modules=["lin1"])},
    ),
    dict(
        name="ia3_mlp_regex",
        method="IA3",
        model="MLP",
        adapters={"default": dict(target_modules=r"lin\d", feedforward_modules=r"lin0")},
    ),
    dict(
        name="ia3_conv1d",
        method="IA3",
        model="MLPConv1D",
        adapters={"default": dict(target_modules=["c_fc", "c_proj"], feedforward_modules=["c_proj"])},
    ),
    dict(
        name="ia3_convnet",
        method="IA3",
        model="ConvNet",
        adapters={
            "default": dict(
                target_modules=["conv2d", "conv1x1", "grouped", "conv3d", "lin"],
                feedforward_modules=["grouped", "conv3d"],
            )
        },
    ),
    dict(
        name="ia3_two_active",
        method="IA3",
        model="MLP",
        adapters={
            "alpha": dict(target_modules=["lin0", "lin1"], feedforward_modules=["lin1"]),
            "beta": dict(target_modules=["lin0"], feedforward_modules=[]),
        },
        active=["alpha", "beta"],
    ),
    dict(
        name="ia3_second_active",
        method="IA3",
        model="MLP",
        adapters={
            "alpha": dict(target_modules=["lin0"], feedforward_modules=["lin0"]),
            "beta": dict(target_modules=["lin0", "lin1"], feedforward_modules=["lin1"]),
        },
        active=["beta"],
    ),
    dict(
        name="ia3_deep_exclude",
        method="IA3",
        model="DeepMLP",
        adapters={
            "default": dict(
                target_modules=["lin0", "lin1", "out"], exclude_modules=["layers.0.lin0"], feedforward_modules=["lin1"]
            )
        },
    ),
    dict(
        name="ia3_modules_to_save",
        method="IA3",
        model="MLP",
        adapters={"default": dict(target_modules=["lin0"], feedforward_modules=[], modules_to_save=["lin1"])},
    ),
    dict(
        name="ia3_random_init",
        method="IA3",
        model="MLP",
        perturb=0.0,
        adapters={"default": dict(target_modules=["lin0", "lin1"], feedforward_modules=["lin0"], init_ia3_weights=False)},
    ),
]

# Same-seed initialisation: base model and adapter created under torch.manual_seed(0).
INIT_CASES = [
    dict(name="ia3_default", method="IA3", model="MLP", config=dict(target_modules=["lin0", "lin1"], feedforward_modules=["lin1"])),
    dict(
        name="ia3_random",
        method="IA3",
        model="ConvNet",
        config=dict(target_modules=["conv2d", "grouped", "conv3d", "lin"], feedforward_modules=["grouped"], init_ia3_weights=False),
    ),
    dict(name="ia3_all_linear", method="IA3", model="DeepMLP", config=dict(target_modules="all-linear", feedforward_modules=["lin1"])),
]

# Training: the same optimizer steps in PEFT and in Rust (dropout of the test models active).
TRAIN_CASES = [
    dict(name="ia3_sgd", method="IA3", model="MLP", optimizer="sgd", lr=0.5, steps=5,
         config=dict(target_modules=["lin0", "lin1"], feedforward_modules=["lin1"])),
    dict(name="ia3_conv_adamw", method="IA3", model="ConvNet", optimizer="adamw", lr=0.01, steps=4,
         config=dict(target_modules=["conv2d", "grouped", "lin"], feedforward_modules=["grouped"])),
]
TRAIN_SEED = 1234

# adapter_config.json files written by PEFT.
CONFIG_CASES = [
    dict(name="ia3_defaults", method="IA3", kwargs=dict()),
    dict(
        name="ia3_full",
        method="IA3",
        kwargs=dict(
            target_modules=["k", "v", "wo"],
            feedforward_modules=["wo"],
            exclude_modules=r".*\.0\..*",
            fan_in_fan_out=True,
            modules_to_save=["head"],
            init_ia3_weights=False,
            task_type="SEQ_2_SEQ_LM",
            base_model_name_or_path="org/t5",
        ),
    ),
]


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
    root = sys.argv[1]
    os.makedirs(root, exist_ok=True)
    manifest = dict(
        cases=[gen_case(root, c) for c in CASES],
        init=[gen_init(root, c) for c in INIT_CASES],
        train=[gen_train(root, c) for c in TRAIN_CASES],
        configs=[gen_config(root, c) for c in CONFIG_CASES],
    )
    with open(os.path.join(root, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=2)


if __name__ == "__main__":
    main()
