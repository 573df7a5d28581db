"""AdaLoRA rows of the method parity matrix (see gen_methods.py for what each table means), plus the
AdaLoRA-only fixtures that the generic sections cannot express (run as a script: see `main`).

Why the generic tables are restricted here:
* `ranknum` is a frozen *parameter* that PEFT never saves. gen_methods.py perturbs every adapter
  parameter, `ranknum` included, so outputs recorded after a perturbation cannot be reproduced from the
  saved files. The output cases therefore keep PEFT's init (`perturb=0.0`) with `init_lora_weights=False`
  (every tensor drawn from N(0, 1), so the adapter is far from the identity).
* The generic train section perturbs `ranknum` too, and knows neither the orthogonal regularisation nor
  the rank allocator: AdaLoRA's training cases are the dedicated ones below (TRAIN_CASES stays empty).
* PEFT allows one trainable AdaLoRA adapter: extra adapters set `inference_mode=True`.

Dedicated fixtures (`python method_adalora.py OUT_DIR`, read by tests/tests/adalora_parity.rs):
  train/<name>/   PEFT trains with `update_and_allocate` and the orthogonal regularisation (through
                  AdaLoraModel.forward) from a saved initial adapter; records losses, budgets, the rank
                  pattern and every lora_E after each step, the importance scores before the final
                  allocation, the live (untruncated) tensors and the saved (truncated) adapter.
  reload/<name>/  an adapter saved with a rank_pattern (one of the trained ones, and one with a layer
                  reduced to rank 0), the outputs PEFT computes after loading it.
"""

import copy
import json
import os
import sys
import types

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

# Output parity cases.
_RANDOM = dict(init_lora_weights=False, total_step=10)

CASES = [
    dict(
        name="adalora_mlp",
        method="ADALORA",
        model="MLP",
        perturb=0.0,
        adapters={"default": dict(target_modules=["lin0", "lin1"], init_r=4, target_r=2, **_RANDOM)},
    ),
    dict(
        name="adalora_mlp_alpha_dropout",
        method="ADALORA",
        model="MLP",
        perturb=0.0,
        adapters={"default": dict(target_modules=r"lin\d", init_r=3, lora_alpha=3.5, lora_dropout=0.2, **_RANDOM)},
    ),
    dict(
        name="adalora_alpha_zero",
        method="ADALORA",
        model="MLP",
        perturb=0.0,
        # lora_alpha <= 0: the scaling is the rank itself.
        adapters={"default": dict(target_modules=["lin0"], init_r=5, lora_alpha=0, **_RANDOM)},
    ),
    dict(
        name="adalora_conv1d",
        method="ADALORA",
        model="MLPConv1D",
        perturb=0.0,
        adapters={"default": dict(target_modules=["c_fc", "c_proj"], init_r=4, **_RANDOM)},
    ),
    dict(
        name="adalora_convnet",
        method="ADALORA",
        model="ConvNet",
        perturb=0.0,
        adapters={"default": dict(target_modules=["conv2d", "conv1x1", "lin"], init_r=3, **_RANDOM)},
    ),
    dict(
        name="adalora_two_active",
        method="ADALORA",
        model="MLP",
        perturb=0.0,
        adapters={
            "alpha": dict(target_modules=["lin0", "lin1"], init_r=4, **_RANDOM),
            "beta": dict(target_modules=["lin0"], init_r=2, lora_alpha=4, inference_mode=True, **_RANDOM),
        },
        active=["alpha", "beta"],
    ),
    dict(
        name="adalora_second_active",
        method="ADALORA",
        model="MLP",
        perturb=0.0,
        adapters={
            "alpha": dict(target_modules=["lin0"], init_r=4, **_RANDOM),
            "beta": dict(target_modules=["lin0", "lin1"], init_r=3, inference_mode=True, **_RANDOM),
        },
        active=["beta"],
    ),
    dict(
        name="adalora_deep_exclude",
        method="ADALORA",
        model="DeepMLP",
        perturb=0.0,
        adapters={
            "default": dict(
                target_modules=["lin0", "lin1", "out"], exclude_modules=["layers.0.lin0"], init_r=2, **_RANDOM
            )
        },
    ),
    dict(
        name="adalora_layers_to_transform",
        method="ADALORA",
        model="DeepMLP",
        perturb=0.0,
        adapters={
            "default": dict(
                target_modules=["lin0", "lin1"], layers_to_transform=[1, 3], layers_pattern="layers", init_r=3,
                **_RANDOM,
            )
        },
    ),
    dict(
        name="adalora_modules_to_save",
        method="ADALORA",
        model="MLP",
        perturb=0.0,
        adapters={"default": dict(target_modules=["lin0"], modules_to_save=["lin1"], init_r=4, **_RANDOM)},
    ),
    dict(
        name="adalora_bias_all",
        method="ADALORA",
        model="MLP",
        perturb=0.0,
        adapters={"default": dict(target_modules=["lin0"], bias="all", init_r=4, **_RANDOM)},
    ),
]

# Same-seed initialisation: base model and adapter created under torch.manual_seed(0).
INIT_CASES = [
    dict(
        name="adalora_default",
        method="ADALORA",
        model="MLP",
        config=dict(target_modules=["lin0", "lin1"], total_step=10),
    ),
    dict(
        name="adalora_random_convnet",
        method="ADALORA",
        model="ConvNet",
        config=dict(target_modules=["conv2d", "conv1x1", "lin"], init_r=5, init_lora_weights=False, total_step=10),
    ),
    dict(
        name="adalora_conv1d_all_linear",
        method="ADALORA",
        model="MLPConv1D",
        config=dict(target_modules="all-linear", init_r=3, total_step=10),
    ),
    dict(
        name="adalora_deep",
        method="ADALORA",
        model="DeepMLP",
        config=dict(target_modules=["lin1", "out"], init_r=6, lora_alpha=16, total_step=10),
    ),
]

# The generic train section cannot express AdaLoRA's training (see the module docstring).
TRAIN_CASES = []

# adapter_config.json files written by PEFT.
CONFIG_CASES = [
    dict(name="adalora_defaults", method="ADALORA", kwargs=dict(total_step=100)),
    dict(
        name="adalora_full",
        method="ADALORA",
        kwargs=dict(
            target_modules=["q", "v", "wo"],
            exclude_modules=r".*\.0\..*",
            init_r=16,
            target_r=4,
            tinit=50,
            tfinal=100,
            deltaT=5,
            beta1=0.9,
            beta2=0.95,
            orth_reg_weight=0.1,
            total_step=1000,
            lora_alpha=32,
            lora_dropout=0.05,
            fan_in_fan_out=True,
            bias="lora_only",
            modules_to_save=["head"],
            init_lora_weights=False,
            task_type="SEQ_2_SEQ_LM",
            base_model_name_or_path="org/t5",
        ),
    ),
    dict(
        name="adalora_rank_pattern",
        method="ADALORA",
        kwargs=dict(
            target_modules=["q_proj"],
            init_r=3,
            target_r=1,
            total_step=20,
            rank_pattern={"model.layers.0.q_proj.lora_E": [True, False, True], "model.layers.1.q_proj.lora_E": [False, False, False]},
            layers_to_transform=[0, 1],
            layers_pattern="layers",
        ),
    ),
]


# ------------------------------------------------------------------------------------------------------
# Dedicated fixtures: training with the rank allocator, reloading adapters saved with a rank_pattern.

ADALORA_TRAIN = [
    # 10 steps: 0..2 warm-up (no masking), 3..6 budgeting with a mask every step, 7 the final
    # allocation, 8..9 the final pattern re-applied.
    dict(
        name="adalora_train_sgd",
        model="MLP",
        optimizer="sgd",
        lr=0.5,
        steps=10,
        config=dict(target_modules=["lin0", "lin1"], init_r=4, target_r=2, tinit=2, tfinal=3, total_step=10),
    ),
    # deltaT=2 (masks on even steps), adapter dropout, AdamW, several layers.
    dict(
        name="adalora_train_adamw_deep",
        model="DeepMLP",
        optimizer="adamw",
        lr=0.01,
        steps=9,
        config=dict(
            target_modules=["lin0", "lin1", "out"], init_r=3, target_r=1, tinit=1, tfinal=2, deltaT=2, total_step=8,
            lora_dropout=0.1, beta1=0.8, beta2=0.9, orth_reg_weight=0.3,
        ),
    ),
    dict(
        name="adalora_train_conv",
        model="ConvNet",
        optimizer="sgd",
        lr=0.1,
        steps=7,
        config=dict(target_modules=["conv2d", "lin"], init_r=4, target_r=2, tinit=1, tfinal=2, total_step=6),
    ),
    dict(
        name="adalora_train_conv1d",
        model="MLPConv1D",
        optimizer="adamw",
        lr=0.02,
        steps=6,
        config=dict(target_modules=["c_fc", "c_proj"], init_r=4, target_r=3, tinit=0, tfinal=1, total_step=5),
    ),
]

TRAIN_SEED = 1234


def _with_loss(base):
    """Makes the base model return an object with `.loss` (the NLL of its log-probabilities), so that
    AdaLoraModel.forward adds the orthogonal regularisation as it does for transformers models."""
    orig = base.forward

    def forward(x, y):
        out = orig(x)
        loss = F.nll_loss(out.reshape(-1, out.shape[-1]), y.reshape(-1))
        return types.SimpleNamespace(loss=loss, logits=out)

    base.forward = forward
    return base


def _saved(model, names):
    """Whether parameter `n` is part of the saved adapter (not the base, not ranknum)."""
    return {n: p for n, p in model.named_parameters() if ".lora_" in n and n.removeprefix("base_model.model.") not in names}


def gen_train(root, case):
    import models
    from gen_lora import tensors
    from peft import AdaLoraConfig, get_peft_model

    d = os.path.join(root, "train", case["name"])
    os.makedirs(d)
    base = models.build(case["model"])
    base_keys = set(base.state_dict())
    save_file(tensors(base.state_dict()), os.path.join(d, "base.safetensors"))
    torch.manual_seed(7)
    model = get_peft_model(_with_loss(base), AdaLoraConfig(**case["config"]))
    # Away from the identity (lora_E starts at 0), without touching `ranknum` (not saved).
    torch.manual_seed(8)
    with torch.no_grad():
        for n, p in _saved(model, base_keys).items():
            p.add_(0.2 * torch.randn_like(p))
    model.save_pretrained(os.path.join(d, "initial"))
    x = models.example_input(case["model"])
    n = x.shape[0]
    y = torch.arange(n) % 2
    params = [p for p in model.parameters() if p.requires_grad]
    if case["optimizer"] == "sgd":
        opt = torch.optim.SGD(params, lr=case["lr"])
    else:
        opt = torch.optim.AdamW(params, lr=case["lr"])
    tuner = model.base_model
    cfg = model.peft_config["default"]
    end = cfg.total_step - cfg.tfinal
    torch.manual_seed(TRAIN_SEED)
    model.train()
    losses, budgets, patterns, per_step, scores = [], [], [], {}, {}
    for step in range(case["steps"]):
        opt.zero_grad()
        out = tuner(x, y)  # AdaLoraModel.forward: the task loss plus the orthogonal regularisation
        out.loss.backward()
        opt.step()
        if step == end - 1:
            # The importance scores entering the final allocation.
            alloc = tuner.rankallocator
            for k in alloc.exp_avg_ipt:
                scores[f"ipt.{k}"] = alloc.exp_avg_ipt[k]
                scores[f"unc.{k}"] = alloc.exp_avg_unc[k]
        tuner.update_and_allocate(step)
        losses.append(out.loss.item())
        budgets.append(tuner.rankallocator.budget_schedule(step)[0] if step <= end else None)
        rp = cfg.rank_pattern
        patterns.append(None if rp is None else {k: list(map(bool, v)) for k, v in rp.items()})
        for k, p in model.named_parameters():
            if ".lora_E." in k:
                per_step[f"{step}/{k}"] = p.detach().clone()
    save_file(tensors(per_step), os.path.join(d, "lora_E_per_step.safetensors"))
    save_file(tensors(scores), os.path.join(d, "scores.safetensors"))
    live = {k: p for k, p in model.named_parameters() if ".lora_" in k}
    save_file(tensors(live), os.path.join(d, "final_live.safetensors"))
    model.save_pretrained(os.path.join(d, "final"))
    save_file(tensors({"x": x, "y": y}), os.path.join(d, "data.safetensors"))
    with open(os.path.join(d, "case.json"), "w") as f:
        json.dump(dict(case, losses=losses, budgets=budgets, patterns=patterns, seed=TRAIN_SEED, end=end), f, indent=2)
    return case["name"]


def _reload_case(root, name, model_name, adapter_dir, base_state):
    """PEFT loads `adapter_dir` (saved with a rank_pattern) onto the base and records its outputs."""
    import shutil

    import models
    from gen_lora import outputs_of, tensors
    from peft import PeftModel

    d = os.path.join(root, "reload", name)
    os.makedirs(d)
    shutil.copytree(adapter_dir, os.path.join(d, "adapter"))
    save_file(tensors(base_state), os.path.join(d, "base.safetensors"))
    base = models.MODELS[model_name]()
    base.load_state_dict(base_state)
    x = models.example_input(model_name)
    save_file(tensors({"x": x}), os.path.join(d, "input.safetensors"))
    model = PeftModel.from_pretrained(base, os.path.join(d, "adapter"))
    ranks = {k: list(v.shape) for k, v in model.named_parameters() if ".lora_" in k}
    ranknums = {k: float(v) for k, v in model.named_parameters() if ".ranknum." in k}
    out = outputs_of(model, x, ["default"], True)
    save_file(tensors(out), os.path.join(d, "outputs.safetensors"))
    with open(os.path.join(d, "case.json"), "w") as f:
        json.dump(dict(name=name, model=model_name, adapters=["default"], active=["default"], merge=True,
                       shapes=ranks, ranknums=ranknums), f, indent=2)
    return name


def gen_reloads(root):
    import models
    from peft import AdaLoraConfig, get_peft_model
    from safetensors.torch import load_file

    names = []
    # The adapters PEFT trained above, saved with their final rank pattern.
    for case in ADALORA_TRAIN:
        d = os.path.join(root, "train", case["name"])
        names.append(_reload_case(root, f"{case['name']}_reload", case["model"], os.path.join(d, "final"),
                                  load_file(os.path.join(d, "base.safetensors"))))
    # A rank pattern set by hand: lin0 keeps nothing (rank 0), lin1 three of four.
    base = models.build("MLP")
    state = copy.deepcopy(base.state_dict())
    torch.manual_seed(3)
    model = get_peft_model(base, AdaLoraConfig(target_modules=["lin0", "lin1"], init_r=4, init_lora_weights=False, total_step=10))
    model.peft_config["default"].rank_pattern = {
        "lin0.lora_E.default": [False, False, False, False],
        "lin1.lora_E.default": [True, False, True, True],
    }
    tmp = os.path.join(root, "tmp_rank_zero")
    model.save_pretrained(tmp)
    names.append(_reload_case(root, "adalora_rank_zero_reload", "MLP", tmp, state))
    return names


def main():
    root = sys.argv[1]
    os.makedirs(root, exist_ok=True)
    manifest = dict(train=[gen_train(root, c) for c in ADALORA_TRAIN])
    manifest["reload"] = gen_reloads(root)
    with open(os.path.join(root, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=2)


if __name__ == "__main__":
    main()
