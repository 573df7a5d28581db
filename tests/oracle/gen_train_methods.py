"""Fixture generator for methods that need more than a plain loop, trained by peft-train's Trainer (and
`peft train --config`): the loop PEFT documents for AdaLoRA, and OSF (whose gradient hooks project every
backward), run on the tiny Llama of gen_train.py.

Usage: python gen_train_methods.py OUT_DIR

OUT_DIR/adalora/  model/ (tiny Llama + word tokenizer), train.jsonl, adapter_config.json (the AdaLoRA
                  config handed to `peft train --config`), final/ (the adapter after the loop) and
                  case.json (arguments, losses, the final rank_pattern).
OUT_DIR/osf/      the same for an OSF adapter (no allocation step; PEFT's hooks project the gradients).
OUT_DIR/adamss/   the same for an AdaMSS adapter with ASA (update_and_allocate after each optimizer step, as
                  PEFT's AdamssAsaCallback does under transformers' Trainer).

The loop is the Trainer's (file order, right padding, -100 labels, mean token loss, clipping, AdamW with
decay groups, linear warmup) with PEFT's AdaLoRA additions: `AdaLoraModel.forward` adds the orthogonal
regularisation to the loss, and `update_and_allocate(global_step)` runs after `optimizer.step()` and
before `zero_grad()`.
"""

import json
import os
import sys

import torch
import transformers as tf
from peft import AdaLoraConfig, AdamssConfig, OSFConfig, get_peft_model

from gen_models import word_tokenizer
from gen_train import decay_groups, linear_warmup

CASE = dict(lr=1e-2, weight_decay=0.01, warmup=1, clip=1.0, accum=1, batch=2, steps=6, seed=3)
ADALORA = dict(
    target_modules=["q_proj", "v_proj"],
    init_r=4,
    target_r=2,
    tinit=1,
    tfinal=1,
    deltaT=1,
    total_step=6,
    lora_alpha=8,
    lora_dropout=0.0,
    orth_reg_weight=0.5,
)
OSF = dict(target_modules=["q_proj", "v_proj", "down_proj"], effective_rank=0.5)
# ASA masks at steps 2 and 4 (its warmup window 1..4), keeping part of the 4 subspaces of each layer.
ADAMSS = dict(
    target_modules=["q_proj", "v_proj"], r=8, num_subspaces=4, subspace_rank=2, init_weights=None, use_asa=True,
    asa_target_subspaces=3, init_warmup=1, final_warmup=4, mask_interval=2,
)


def run(d, peft_config, adalora):
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
    peft_config.save_pretrained(d)
    c = CASE
    torch.manual_seed(c["seed"])
    peft_model = get_peft_model(model, peft_config)
    opt = torch.optim.AdamW(decay_groups(peft_model, c["lr"], c["weight_decay"]), lr=c["lr"])
    sched = linear_warmup(opt, c["warmup"], c["steps"])
    examples = [[int(w[1:]) for w in line.split()] for line in lines]
    torch.manual_seed(c["seed"])
    peft_model.train()
    losses = []
    patterns = []
    micro_i = 0
    for global_step in range(c["steps"]):
        for _ in range(c["accum"]):
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
        if adalora or getattr(peft_config, "use_asa", False):
            # PEFT's documented place for both: after the optimizer step, before zero_grad.
            peft_model.base_model.update_and_allocate(global_step)
        opt.zero_grad()
        rp = getattr(peft_model.peft_config["default"], "rank_pattern", None) if adalora else None
        patterns.append({k: [bool(b) for b in v] for k, v in rp.items()} if rp else None)
    peft_model.save_pretrained(os.path.join(d, "final"))
    with open(os.path.join(d, "case.json"), "w") as f:
        json.dump(dict(c, losses=losses, rank_patterns=patterns), f, indent=2)


def main():
    root = sys.argv[1]
    run(os.path.join(root, "adalora"), AdaLoraConfig(task_type="CAUSAL_LM", **ADALORA), True)
    run(os.path.join(root, "osf"), OSFConfig(task_type="CAUSAL_LM", **OSF), False)
    run(os.path.join(root, "adamss"), AdamssConfig(task_type="CAUSAL_LM", **ADAMSS), False)
    with open(os.path.join(root, "manifest.json"), "w") as f:
        json.dump(dict(adalora=True, osf=True, adamss=True), f)


if __name__ == "__main__":
    main()
