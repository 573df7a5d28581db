"""Fixtures for LoRA's `bias` option ("lora_only", "all") as PEFT 0.21.2 saves and loads it: two adapters on a
model with biases (Qwen2's q/k/v), and BERT sequence classifiers with modules_to_save heads.

Usage: python gen_bias.py OUT_DIR        generate
       python gen_bias.py check ROOT     PEFT loads what peft-rs saved (see check())

OUT_DIR/<case>/
  model/                     the transformers model (save_pretrained)
  inputs.safetensors         input_ids, attention_mask
  trained/<adapter>/         PEFT's save_pretrained() of the model both adapters trained on
  outputs.safetensors        trained/<adapter>: logits of the trained model with that adapter active;
                             <order>/<adapter>: after PEFT loads the trained files in that order into the
                             base (the model it loads into decides which saved biases apply);
                             <order>/base: the same with adapters disabled
  resaved/<order>/<adapter>/ PEFT's save_pretrained() of that reloaded model
  case.json                  task, adapters, orders, trainable: PEFT's get_nb_trainable_parameters() and
                             trainable names after from_pretrained(is_trainable=True) of each biased adapter
"""

import copy
import json
import os
import sys

import torch
from safetensors.torch import load_file, save_file

import transformers as tf
from peft import LoraConfig, PeftModel, get_peft_model
from peft.utils import get_peft_model_state_dict

QWEN = dict(
    vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0,
)
BERT = dict(vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            max_position_embeddings=64, num_labels=3)

# name -> (config class, kwargs, model class, task, [(adapter, LoraConfig kwargs)], orders to reload in)
CASES = {
    # "a" trains every adapted layer's bias, also k/v which only "b" targets.
    "qwen2_lora_only": (tf.Qwen2Config, QWEN, tf.Qwen2ForCausalLM, "CAUSAL_LM", [
        ("a", dict(target_modules=["q_proj"], bias="lora_only")),
        ("b", dict(target_modules=["k_proj", "v_proj"])),
    ], [["a", "b"], ["b", "a"]]),
    # "b" saves q (adapted by "a"), its own k, and v (adapted by nobody).
    "qwen2_all": (tf.Qwen2Config, QWEN, tf.Qwen2ForCausalLM, "CAUSAL_LM", [
        ("a", dict(target_modules=["q_proj"])),
        ("b", dict(target_modules=["k_proj"], bias="all")),
    ], [["a", "b"], ["b", "a"]]),
    "bert_lora_only": (tf.BertConfig, BERT, tf.BertForSequenceClassification, "SEQ_CLS", [
        ("default", dict(target_modules=["query", "value"], bias="lora_only", modules_to_save=["classifier"])),
    ], [["default"]]),
    # "all" with a head: classifier.original_module.bias and the copy's classifier.modules_to_save.bias.
    "bert_all": (tf.BertConfig, BERT, tf.BertForSequenceClassification, "SEQ_CLS", [
        ("default", dict(target_modules=["query"], bias="all", modules_to_save=["classifier"])),
        ("other", dict(target_modules=["value"])),
    ], [["default", "other"], ["other", "default"]]),
}

SEQ = 7


def tensors(d):
    return {k: v.detach().contiguous().clone() for k, v in d.items()}


def make_inputs(name):
    g = torch.Generator().manual_seed(len(name))
    ids = torch.randint(3, 128, (2, SEQ), generator=g)
    mask = torch.ones(2, SEQ, dtype=torch.long)
    ids[1, -2:] = 0
    mask[1, -2:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def logits(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits


def adapter_dir(root, name):
    return root if name == "default" else os.path.join(root, name)


def reload(model_cls, model_dir, adapters_root, order, is_trainable=False):
    base = model_cls.from_pretrained(model_dir)
    base.eval()
    peft = PeftModel.from_pretrained(base, adapter_dir(adapters_root, order[0]), adapter_name=order[0],
                                     is_trainable=is_trainable)
    for n in order[1:]:
        peft.load_adapter(adapter_dir(adapters_root, n), adapter_name=n)
    peft.eval()
    return peft


def outputs_of(peft, order, inputs, prefix):
    out = {}
    for n in order:
        peft.set_adapter(n)
        out[f"{prefix}/{n}"] = logits(peft, inputs)
    with peft.disable_adapter():
        out[f"{prefix}/base"] = logits(peft, inputs)
    return out


def gen_case(root, name, spec):
    config_cls, kwargs, model_cls, task, adapters, orders = spec
    d = os.path.join(root, name)
    os.makedirs(d)
    torch.manual_seed(0)
    model = model_cls(config_cls(**kwargs))
    model.eval()
    model.save_pretrained(os.path.join(d, "model"))
    inputs = make_inputs(name)
    torch.manual_seed(1)
    (first, kw), rest = adapters[0], adapters[1:]
    peft = get_peft_model(copy.deepcopy(model), LoraConfig(task_type=task, init_lora_weights=False, r=4, **kw),
                          adapter_name=first)
    for n, kw in rest:
        peft.add_adapter(n, LoraConfig(task_type=task, init_lora_weights=False, r=4, **kw))
    # Move everything PEFT saves away from its init: the adapter tensors, modules_to_save copies and every base
    # bias a biased adapter's file holds.
    saved = set()
    for n, _ in adapters:
        saved |= set(get_peft_model_state_dict(peft, adapter_name=n))
    with torch.no_grad():
        for n, p in peft.named_parameters():
            if ".lora_" in n or ".modules_to_save." in n or (n.endswith(".bias") and n in saved):
                p.add_(0.1 * torch.randn_like(p))
    peft.eval()
    outputs = {}
    for n, _ in adapters:
        peft.set_adapter(n)
        outputs[f"trained/{n}"] = logits(peft, inputs)
    peft.save_pretrained(os.path.join(d, "trained"))
    for order in orders:
        tag = "_".join(order)
        re = reload(model_cls, os.path.join(d, "model"), os.path.join(d, "trained"), order)
        outputs.update(outputs_of(re, order, inputs, tag))
        re.save_pretrained(os.path.join(d, "resaved", tag))
    trainable = {}
    for n, kw in adapters:
        if kw.get("bias", "none") == "none":
            continue
        t = reload(model_cls, os.path.join(d, "model"), os.path.join(d, "trained"), [n], is_trainable=True)
        count, total = t.get_nb_trainable_parameters()
        names = sorted(k for k, p in t.named_parameters() if p.requires_grad)
        trainable[n] = dict(count=count, total=total, names=names)
    save_file(tensors(inputs), os.path.join(d, "inputs.safetensors"))
    save_file(tensors(outputs), os.path.join(d, "outputs.safetensors"))
    meta = dict(name=name, task=task, adapters=[n for n, _ in adapters], orders=orders, trainable=trainable)
    with open(os.path.join(d, "case.json"), "w") as f:
        json.dump(meta, f, indent=2)
    return name


def check(root):
    """ROOT/<case>_<order>/ holds check.json {"case", "model_dir", "order"} and adapters/ (peft-rs's save of the
    model it loaded the trained files into in that order); writes peft_outputs.safetensors there."""
    model_classes = {name: spec[2] for name, spec in CASES.items()}
    for entry in sorted(os.listdir(root)):
        d = os.path.join(root, entry)
        if not os.path.isfile(os.path.join(d, "check.json")):
            continue
        with open(os.path.join(d, "check.json")) as f:
            job = json.load(f)
        inputs = load_file(os.path.join(job["model_dir"], "..", "inputs.safetensors"))
        peft = reload(model_classes[job["case"]], job["model_dir"], os.path.join(d, "adapters"), job["order"])
        save_file(tensors(outputs_of(peft, job["order"], inputs, "peft")), os.path.join(d, "peft_outputs.safetensors"))


def main():
    if sys.argv[1] == "check":
        check(sys.argv[2])
        return
    root = sys.argv[1]
    os.makedirs(root, exist_ok=True)
    manifest = dict(cases=[gen_case(root, n, s) for n, s in CASES.items()])
    with open(os.path.join(root, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=2)


if __name__ == "__main__":
    main()
