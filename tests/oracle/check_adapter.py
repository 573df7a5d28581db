"""PEFT loads an adapter directory onto a transformers model and writes its logits.

Usage: python check_adapter.py MODEL_DIR ADAPTER_DIR INPUT.safetensors OUTPUT.safetensors TASK [NUM_LABELS]

TASK is causal-lm or sequence-classification. INPUT holds input_ids (and attention_mask); OUTPUT gets
`logits`. Used to check that adapters trained by peft-rs load in Python PEFT with the same numbers.
"""

import sys

import torch
from safetensors.torch import load_file, save_file

import transformers as tf
from peft import PeftModel


def main():
    model_dir, adapter_dir, inp, out, task = sys.argv[1:6]
    if task == "causal-lm":
        model = tf.AutoModelForCausalLM.from_pretrained(model_dir)
    else:
        model = tf.AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=int(sys.argv[6]))
    model = PeftModel.from_pretrained(model, adapter_dir)
    model.eval()
    # Fresh (aligned) copies: MKL's GEMM rounds differently for unaligned buffers.
    inputs = {k: v.clone() for k, v in load_file(inp).items() if k in ("input_ids", "attention_mask", "token_type_ids")}
    with torch.no_grad():
        logits = model(**inputs).logits
    save_file({"logits": logits.contiguous()}, out)


if __name__ == "__main__":
    main()
