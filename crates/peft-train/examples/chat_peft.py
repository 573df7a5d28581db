"""Python PEFT's side of `cargo xtask demo --chat`: load the adapter peft-rs trained onto transformers'
model of the GGUF file and write its logits and its greedy continuation of a prompt.

Usage: python chat_peft.py MODEL.gguf ADAPTER_DIR INPUT.safetensors OUTPUT.safetensors

INPUT holds `input_ids` and `attention_mask` (a padded batch), `prompt_ids` (1, T), and `max_new_tokens`
and `eos_token_id` (one-element tensors); OUTPUT gets `logits` and `generated` (the new tokens).
"""

import os
import sys

import torch
from safetensors.torch import load_file, save_file

from peft import PeftModel
from transformers import AutoModelForCausalLM


def main():
    gguf_path, adapter_dir, inp, out = sys.argv[1:5]
    d, name = os.path.split(gguf_path)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=name, dtype=torch.float32)
    model = PeftModel.from_pretrained(model, adapter_dir).eval()
    # Fresh (aligned) copies: MKL's GEMM rounds differently for unaligned buffers.
    t = {k: v.clone() for k, v in load_file(inp).items()}
    with torch.no_grad():
        logits = model(input_ids=t["input_ids"], attention_mask=t["attention_mask"]).logits
        prompt = t["prompt_ids"]
        generated = model.generate(
            input_ids=prompt,
            attention_mask=torch.ones_like(prompt),
            max_new_tokens=int(t["max_new_tokens"].item()),
            do_sample=False,
            eos_token_id=int(t["eos_token_id"].item()),
            pad_token_id=int(t["eos_token_id"].item()),
        )[:, prompt.shape[1]:]
    save_file({"logits": logits.contiguous(), "generated": generated.contiguous()}, out)


if __name__ == "__main__":
    main()
