"""Fixture generator for peft-train: the same training steps run in PyTorch + PEFT.

Usage: python gen_train.py OUT_DIR

OUT_DIR/optim/<name>/     MLP + LoRA trained a few steps with torch AdamW (decay groups, linear warmup
                          schedule, grad-norm clipping, gradient accumulation), PEFT's LoRA+ and LoRA-FA.
OUT_DIR/trainer/          a tiny Llama (with a word-level tokenizer), a JSONL text dataset, and the adapter
                          after the loop transformers' Trainer runs (in file order, right padding, -100
                          labels, mean token loss, accumulation, clipping, AdamW, linear warmup).
"""

import json
import os
import sys

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

import transformers as tf
from peft import LoraConfig, get_peft_model
from peft.optimizers import create_lorafa_optimizer, create_loraplus_optimizer

import models
from gen_models import word_tokenizer

OPTIM_CASES = {
    "adamw": dict(lr=1e-2, weight_decay=0.01, warmup=1, clip=1.0, accum=2),
    "loraplus": dict(lr=1e-2, ratio=4.0, accum=1),
    "lorafa": dict(lr=1e-2, accum=1),
}
STEPS = 4


def tensors(d):
    return {k: v.detach().contiguous().clone() for k, v in d.items()}


def decay_groups(model, lr, weight_decay):
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return [
        {"params": [p for n, p in named if "bias" not in n], "weight_decay": weight_decay, "lr": lr},
        {"params": [p for n, p in named if "bias" in n], "weight_decay": 0.0, "lr": lr},
    ]


def linear_warmup(opt, warmup, total):
    def f(step):
        if step < warmup:
            return step / max(1, warmup)
        return max(0.0, (total - step) / max(1, total - warmup))

    return torch.optim.lr_scheduler.LambdaLR(opt, f)


def gen_optim(root, name, c):
    d = os.path.join(root, "optim", name)
    os.makedirs(d)
    base = models.build("MLP")
    save_file(tensors(base.state_dict()), os.path.join(d, "base.safetensors"))
    torch.manual_seed(7)
    model = get_peft_model(base, LoraConfig(target_modules=["lin0", "lin1"], r=4, lora_alpha=8, init_lora_weights=False))
    model.save_pretrained(os.path.join(d, "initial"))
    x = torch.randn(16, 10, generator=torch.Generator().manual_seed(11))
    y = torch.arange(16) % 2
    sched = None
    if name == "adamw":
        opt = torch.optim.AdamW(decay_groups(model, c["lr"], c["weight_decay"]), lr=c["lr"])
        sched = linear_warmup(opt, c["warmup"], STEPS)
    elif name == "loraplus":
        opt = create_loraplus_optimizer(model, torch.optim.AdamW, lr=c["lr"], loraplus_lr_ratio=c["ratio"])
    else:
        opt = create_lorafa_optimizer(model, r=4, lora_alpha=8, lr=c["lr"])
    # The base MLP has dropout: both sides seed the same stream right before training.
    torch.manual_seed(13)
    model.train()
    accum = c["accum"]
    micro = 16 // accum
    losses = []
    for _ in range(STEPS):
        for m in range(accum):
            out = model(x[m * micro:(m + 1) * micro])
            loss = F.nll_loss(out, y[m * micro:(m + 1) * micro])
            (loss / accum).backward()
            losses.append(loss.item())
        if c.get("clip"):
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], c["clip"])
        opt.step()
        if sched is not None:
            sched.step()
        opt.zero_grad()
    model.save_pretrained(os.path.join(d, "final"))
    save_file(tensors({"x": x, "y": y}), os.path.join(d, "data.safetensors"))
    with open(os.path.join(d, "case.json"), "w") as f:
        json.dump(dict(c, name=name, steps=STEPS, losses=losses), f, indent=2)


TRAINER = dict(lr=1e-2, weight_decay=0.01, warmup=1, clip=1.0, accum=2, batch=2, steps=4, seed=3)
TRAINER_LORA = dict(target_modules=["q_proj", "v_proj"], r=4, lora_alpha=8, lora_dropout=0.1)


def gen_trainer(root):
    d = os.path.join(root, "trainer")
    os.makedirs(d)
    torch.manual_seed(0)
    config = tf.LlamaConfig(
        vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )
    model = tf.LlamaForCausalLM(config)
    model.save_pretrained(os.path.join(d, "model"))
    word_tokenizer(os.path.join(d, "model", "tokenizer.json"))
    g = torch.Generator().manual_seed(5)
    lines = []
    for i in range(12):
        n = 3 + (i * 5) % 7
        lines.append(" ".join(f"t{int(t)}" for t in torch.randint(3, 128, (n,), generator=g)))
    with open(os.path.join(d, "train.jsonl"), "w") as f:
        for line in lines:
            f.write(json.dumps({"text": line}) + "\n")
    c = TRAINER
    # `peft train --seed S` seeds before creating the adapter and again before the loop.
    torch.manual_seed(c["seed"])
    peft_model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", **TRAINER_LORA))
    opt = torch.optim.AdamW(decay_groups(peft_model, c["lr"], c["weight_decay"]), lr=c["lr"])
    sched = linear_warmup(opt, c["warmup"], c["steps"])
    examples = [[int(w[1:]) for w in line.split()] for line in lines]
    torch.manual_seed(c["seed"])
    peft_model.train()
    losses = []
    micro_i = 0
    for _ in range(c["steps"]):
        for _ in range(c["accum"]):
            # Epochs repeat the file order (no shuffling); 12 examples make 6 micro-batches per epoch.
            k = micro_i % (len(examples) // c["batch"])
            batch = examples[k * c["batch"]:(k + 1) * c["batch"]]
            micro_i += 1
            t = max(len(e) for e in batch)
            ids = torch.zeros(len(batch), t, dtype=torch.long)
            mask = torch.zeros(len(batch), t, dtype=torch.long)
            labels = torch.full((len(batch), t), -100, dtype=torch.long)
            for i, e in enumerate(batch):
                ids[i, : len(e)] = torch.tensor(e)
                mask[i, : len(e)] = 1
                labels[i, : len(e)] = torch.tensor(e)
            loss = peft_model(input_ids=ids, attention_mask=mask, labels=labels).loss
            (loss / c["accum"]).backward()
            losses.append(loss.item())
        torch.nn.utils.clip_grad_norm_([p for p in peft_model.parameters() if p.requires_grad], c["clip"])
        opt.step()
        sched.step()
        opt.zero_grad()
    peft_model.save_pretrained(os.path.join(d, "final"))
    with open(os.path.join(d, "case.json"), "w") as f:
        json.dump(dict(c, lora=TRAINER_LORA, losses=losses), f, indent=2)


def main():
    root = sys.argv[1]
    os.makedirs(root, exist_ok=True)
    for name, c in OPTIM_CASES.items():
        gen_optim(root, name, c)
    gen_trainer(root)
    with open(os.path.join(root, "manifest.json"), "w") as f:
        json.dump(dict(optim=list(OPTIM_CASES), trainer=True), f, indent=2)


if __name__ == "__main__":
    main()
