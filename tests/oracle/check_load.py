"""Reverse direction: PEFT loads what peft-rs saved.

Usage: python check_load.py ROOT

ROOT/<case>/ holds, written by the Rust test:
  case.json            {"model": ..., "adapters": [...], "active": [...]}
  base.safetensors     the base model weights
  input.safetensors    {"x": ...}
  adapter/             peft-rs's save_pretrained output (default adapter at the top, others in subfolders)
and ROOT/configs/<name>/adapter_config.json holds configs written by peft-rs.

For each case this writes ROOT/<case>/peft_outputs.safetensors with the outputs PEFT computes in every
state (unmerged, merged, unmerged_after_merge, disabled, merge_and_unload) and ROOT/<case>/peft_configs.json
with PEFT's view (`to_dict()`) of the adapter configs it loaded; ROOT/peft_configs.json gets PEFT's view of
every config in ROOT/configs. The Rust test compares them with its own.
"""

import importlib
import json
import os
import sys

from safetensors.torch import load_file, save_file

from peft import PeftConfig, PeftModel

import models
from gen_lora import outputs_of, tensors


def jsonable(d):
    return {k: (sorted(v) if isinstance(v, set) else v) for k, v in d.items()}


def prepare_method(adapter_dir):
    """Imports the method's row file (`method_<peft_type>.py`) when there is one: some complete PEFT at import
    time (WaveFT's filter table), and loading must see PEFT as the fixtures that made the rows saw it."""
    with open(os.path.join(adapter_dir, "adapter_config.json")) as f:
        stem = "method_" + json.load(f)["peft_type"].lower()
    if os.path.exists(os.path.join(os.path.dirname(os.path.abspath(__file__)), stem + ".py")):
        importlib.import_module(stem)


def check_case(d):
    with open(os.path.join(d, "case.json")) as f:
        case = json.load(f)
    base = models.MODELS[case["model"]]()
    base.load_state_dict(load_file(os.path.join(d, "base.safetensors")))
    # Copy into a fresh (64-byte aligned) tensor: safetensors may hand out views of its buffer, and MKL's
    # GEMM rounds differently for unaligned inputs, which would make PEFT differ from itself by ulps.
    x = load_file(os.path.join(d, "input.safetensors"))["x"].clone()
    adir = os.path.join(d, "adapter")
    names = case["adapters"]
    # The adapter named "default" is saved at the top, the others in subfolders.
    first = adir if names[0] == "default" else os.path.join(adir, names[0])
    prepare_method(first)
    model = PeftModel.from_pretrained(base, first, adapter_name=names[0])
    for n in names[1:]:
        model.load_adapter(os.path.join(adir, n), adapter_name=n)
    configs = {n: jsonable(model.peft_config[n].to_dict()) for n in names}
    out = outputs_of(model, x, case["active"], case.get("merge", True))
    save_file(tensors(out), os.path.join(d, "peft_outputs.safetensors"))
    with open(os.path.join(d, "peft_configs.json"), "w") as f:
        json.dump(configs, f, indent=2, default=str)


def main():
    root = sys.argv[1]
    for name in sorted(os.listdir(root)):
        d = os.path.join(root, name)
        if os.path.isfile(os.path.join(d, "case.json")):
            check_case(d)
    cdir = os.path.join(root, "configs")
    if os.path.isdir(cdir):
        loaded = {n: jsonable(PeftConfig.from_pretrained(os.path.join(cdir, n)).to_dict()) for n in sorted(os.listdir(cdir))}
        with open(os.path.join(root, "peft_configs.json"), "w") as f:
            json.dump(loaded, f, indent=2, default=str)


if __name__ == "__main__":
    main()
