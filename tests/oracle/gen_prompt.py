"""Fixture generator for prompt learning (peft-prompt): PEFT adds prompt tuning, P-tuning and prefix tuning
adapters to tiny random transformers causal LMs and records what they compute.

Usage: python gen_prompt.py OUT_DIR
       python gen_prompt.py check ROOT        (PEFT loads the adapters peft-rs saved, see below)

OUT_DIR/bases/<base>/       save_pretrained() of the transformers model (config.json + model.safetensors)
OUT_DIR/cases/<name>/
  case.json                 base, method, config kwargs, training recipe
  inputs.safetensors        input_ids, attention_mask (row 1 right-padded), labels (-100 on padding)
  outputs.safetensors       init: the prompt right after creation under torch.manual_seed(1)
                            logits, loss: after perturbing the encoder (eval mode)
                            reloaded_logits: PEFT's own reload of the saved adapter
                            train_losses, trained: a few SGD steps from the fresh adapter, the prompt after
  adapter/                  PEFT's save_pretrained() after the perturbation

check: ROOT/<name>/ holds case.json (with "base_dir"), inputs.safetensors and adapter/ written by the Rust
test; this writes ROOT/<name>/peft_logits.safetensors with the logits PEFT computes with that adapter.
"""

import copy
import json
import os
import sys

import torch
from safetensors.torch import load_file, save_file

import transformers as tf
from peft import PeftModel, get_peft_model
from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

from gen_models import LLAMA, VOCAB, tensors

BASES = {
    "llama": (tf.LlamaConfig, LLAMA, tf.LlamaForCausalLM),
    "gpt2": (
        tf.GPT2Config,
        dict(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64, pad_token_id=0, bos_token_id=1,
             eos_token_id=2),
        tf.GPT2LMHeadModel,
    ),
}

CASES = [
    dict(name="prompt_llama_random", base="llama", method="PROMPT_TUNING", kwargs=dict(num_virtual_tokens=4)),
    dict(
        name="prompt_gpt2_sample_vocab",
        base="gpt2",
        method="PROMPT_TUNING",
        kwargs=dict(num_virtual_tokens=3, prompt_tuning_init="SAMPLE_VOCAB"),
    ),
    dict(
        name="ptuning_llama_mlp",
        base="llama",
        method="P_TUNING",
        kwargs=dict(num_virtual_tokens=5, encoder_hidden_size=16),
    ),
    dict(
        name="ptuning_gpt2_lstm",
        base="gpt2",
        method="P_TUNING",
        kwargs=dict(num_virtual_tokens=3, encoder_reparameterization_type="LSTM", encoder_hidden_size=8),
    ),
    # Llama has 2 key/value heads for 4 query heads: the prefix holds the key/value heads (token_dim 16).
    dict(name="prefix_llama", base="llama", method="PREFIX_TUNING", kwargs=dict(num_virtual_tokens=4)),
    dict(
        name="prefix_gpt2_projection",
        base="gpt2",
        method="PREFIX_TUNING",
        kwargs=dict(num_virtual_tokens=3, prefix_projection=True, encoder_hidden_size=12),
    ),
    dict(
        name="prefix_llama_zero_projection",
        base="llama",
        method="PREFIX_TUNING",
        kwargs=dict(num_virtual_tokens=2, prefix_projection=True, init_weights="zero"),
    ),
]

TRAIN = dict(lr=0.1, steps=3)


def make_inputs():
    g = torch.Generator().manual_seed(7)
    ids = torch.randint(3, VOCAB, (2, 6), generator=g)
    mask = torch.ones(2, 6, dtype=torch.long)
    ids[1, -2:] = 0
    mask[1, -2:] = 0
    labels = ids.masked_fill(mask == 0, -100)
    return dict(input_ids=ids, attention_mask=mask, labels=labels)


def logits_and_loss(model, inputs):
    with torch.no_grad():
        out = model(**inputs)
    return out.logits, out.loss


def build_base(name):
    config_cls, kwargs, model_cls = BASES[name]
    torch.manual_seed(0)
    model = model_cls(config_cls(**kwargs))
    model.eval()
    return model


def gen_case(root, case, bases):
    d = os.path.join(root, "cases", case["name"])
    os.makedirs(d)
    base = bases[case["base"]]
    inputs = make_inputs()
    config = lambda: PEFT_TYPE_TO_CONFIG_MAPPING[case["method"]](task_type="CAUSAL_LM", **case["kwargs"])
    outputs = {}

    torch.manual_seed(1)
    model = get_peft_model(copy.deepcopy(base), config())
    model.eval()
    outputs["init"] = model.get_prompt_embedding_to_save("default")
    with torch.no_grad():
        torch.manual_seed(2)
        for p in model.prompt_encoder.parameters():
            p.add_(0.3 * torch.randn_like(p))
    outputs["logits"], outputs["loss"] = logits_and_loss(model, inputs)
    model.save_pretrained(os.path.join(d, "adapter"))
    reloaded = PeftModel.from_pretrained(copy.deepcopy(base), os.path.join(d, "adapter"))
    reloaded.eval()
    outputs["reloaded_logits"], _ = logits_and_loss(reloaded, inputs)

    # Training: SGD on the fresh adapter (the base in eval mode: no dropout draws).
    torch.manual_seed(1)
    model = get_peft_model(copy.deepcopy(base), config())
    model.eval()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=TRAIN["lr"])
    losses = []
    for _ in range(TRAIN["steps"]):
        opt.zero_grad()
        loss = model(**inputs).loss
        loss.backward()
        opt.step()
        losses.append(loss.item())
    outputs["train_losses"] = torch.tensor(losses, dtype=torch.float64)
    outputs["trained"] = model.get_prompt_embedding_to_save("default")

    save_file(tensors(inputs), os.path.join(d, "inputs.safetensors"))
    save_file(tensors(outputs), os.path.join(d, "outputs.safetensors"))
    with open(os.path.join(d, "case.json"), "w") as f:
        json.dump(dict(case, train=TRAIN), f, indent=2)
    return case["name"]


def generate(root):
    bases = {}
    for name in BASES:
        bases[name] = build_base(name)
        bases[name].save_pretrained(os.path.join(root, "bases", name))
    names = [gen_case(root, c, bases) for c in CASES]
    with open(os.path.join(root, "manifest.json"), "w") as f:
        json.dump(dict(cases=names), f, indent=2)


def check(root):
    for name in sorted(os.listdir(root)):
        d = os.path.join(root, name)
        if not os.path.isfile(os.path.join(d, "case.json")):
            continue
        with open(os.path.join(d, "case.json")) as f:
            case = json.load(f)
        config_cls, kwargs, model_cls = BASES[case["base"]]
        base = model_cls.from_pretrained(case["base_dir"])
        base.eval()
        model = PeftModel.from_pretrained(base, os.path.join(d, "adapter"))
        model.eval()
        inputs = load_file(os.path.join(d, "inputs.safetensors"))
        logits, loss = logits_and_loss(model, inputs)
        save_file({"logits": logits.contiguous(), "loss": loss.reshape(1)}, os.path.join(d, "peft_logits.safetensors"))


if __name__ == "__main__":
    if sys.argv[1] == "check":
        check(sys.argv[2])
    else:
        generate(sys.argv[1])
