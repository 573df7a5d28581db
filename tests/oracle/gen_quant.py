"""Fixture generator for peft-quant: bitsandbytes (pinned in requirements.txt) quantizes, PEFT adapts.

Usage: python gen_quant.py OUT_DIR

OUT_DIR/codes.safetensors            nf4 / fp4 code books and the 8-bit dynamic map
OUT_DIR/blockwise/<case>.safetensors input, 8-bit codes and absmax of quantize_blockwise (CPU kernel)
OUT_DIR/4bit/<case>.safetensors      input, bitsandbytes' packed weight and packed quant state
                                     (as_dict(packed=True), the keys transformers saves), dequantized
OUT_DIR/int8/<case>.safetensors      weight, CB, SCB, input, Linear8bitLt outputs (inference, threshold
                                     0 and 6, and training mode)
OUT_DIR/qlora/<case>/                a two-layer MLP with bitsandbytes Linear4bit bases (state dict as
                                     bitsandbytes saves it), a PEFT LoRA adapter on it, input and outputs
"""

import json
import os
import sys
import warnings

import torch
from safetensors.torch import save_file

warnings.filterwarnings("ignore")
import bitsandbytes as bnb  # noqa: E402
import bitsandbytes.functional as F  # noqa: E402
from peft import LoraConfig, PeftModel, get_peft_model  # noqa: E402

BLOCKWISE = [
    dict(name="randn_1000", shape=[1000], scale=1.0, blocksize=256),
    dict(name="absmax_like_3000", shape=[3000], scale=0.05, blocksize=256, positive=True),
    dict(name="blocks_4096", shape=[64, 64], scale=3.0, blocksize=4096),
]

FOUR_BIT = [
    dict(name="nf4_dq_f32", shape=[128, 256], quant_type="nf4", dq=True, dtype="float32"),
    dict(name="nf4_f32", shape=[128, 256], quant_type="nf4", dq=False, dtype="float32"),
    dict(name="fp4_dq_f32", shape=[96, 192], quant_type="fp4", dq=True, dtype="float32"),
    dict(name="fp4_f32", shape=[96, 192], quant_type="fp4", dq=False, dtype="float32"),
    dict(name="nf4_dq_bf16", shape=[256, 128], quant_type="nf4", dq=True, dtype="bfloat16"),
    dict(name="nf4_dq_f16_block128", shape=[64, 384], quant_type="nf4", dq=True, dtype="float16", blocksize=128),
    dict(name="nf4_odd_numel", shape=[33, 21], quant_type="nf4", dq=True, dtype="float32"),
    dict(name="fp4_partial_block", shape=[10, 20], quant_type="fp4", dq=False, dtype="float32"),
    dict(name="nf4_dq_block32_many_blocks", shape=[512, 512], quant_type="nf4", dq=True, dtype="float32", blocksize=32),
]

INT8 = [
    dict(name="w96x128", out=96, inp=128, batch=[3, 5]),
    dict(name="w64x256_bias", out=64, inp=256, batch=[7], bias=True),
]

QLORA = [
    dict(name="nf4_dq", quant_type="nf4", dq=True, r=8),
    dict(name="fp4", quant_type="fp4", dq=False, r=4),
]


def weights(shape, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=g)
    # Rows of different scales and a few outliers: blocks with very different maxima.
    w = w * torch.linspace(0.01, 2.0, shape[0]).view(-1, *([1] * (len(shape) - 1)))
    w.view(-1)[:: 97] *= 8.0
    return w.to(getattr(torch, dtype))


def gen_codes(out):
    save_file(
        {
            "nf4": F.get_4bit_type("nf4", device="cpu"),
            "fp4": F.get_4bit_type("fp4", device="cpu"),
            "dynamic": F.create_dynamic_map(),
        },
        os.path.join(out, "codes.safetensors"),
    )


def gen_blockwise(out):
    d = os.path.join(out, "blockwise")
    os.makedirs(d)
    for i, c in enumerate(BLOCKWISE):
        x = weights(c["shape"], "float32", 100 + i) * c["scale"]
        if c.get("positive"):
            x = x.abs() - x.abs().mean()
        q, state = F.quantize_blockwise(x, blocksize=c["blocksize"])
        deq = F.dequantize_blockwise(q, state)
        save_file(
            {"input": x, "q": q, "absmax": state.absmax, "dequantized": deq, "blocksize": torch.tensor(c["blocksize"])},
            os.path.join(d, c["name"] + ".safetensors"),
        )


def gen_four_bit(out):
    d = os.path.join(out, "4bit")
    os.makedirs(d)
    for i, c in enumerate(FOUR_BIT):
        blocksize = c.get("blocksize", 64)
        w = weights(c["shape"], c["dtype"], 200 + i)
        packed, state = F.quantize_4bit(w, blocksize=blocksize, compress_statistics=c["dq"], quant_type=c["quant_type"])
        deq = F.dequantize_4bit(packed, state)
        tensors = {"input": w, "weight": packed, "dequantized": deq}
        for k, v in state.as_dict(packed=True).items():
            tensors["weight." + k] = v
        save_file(tensors, os.path.join(d, c["name"] + ".safetensors"))


def gen_int8(out):
    d = os.path.join(out, "int8")
    os.makedirs(d)
    for i, c in enumerate(INT8):
        torch.manual_seed(300 + i)
        dense = torch.nn.Linear(c["inp"], c["out"], bias=c.get("bias", False))
        with torch.no_grad():
            dense.weight.copy_(weights([c["out"], c["inp"]], "float32", 300 + i) * 0.1)
        x = torch.randn(*c["batch"], c["inp"])
        x[..., 5] *= 20.0  # an outlier feature for the threshold path
        tensors = {"dense_weight": dense.weight.detach().clone(), "input": x}
        if dense.bias is not None:
            tensors["dense_bias"] = dense.bias.detach().clone()
        for threshold, tag in [(0.0, "t0"), (6.0, "t6")]:
            layer = bnb.nn.Linear8bitLt(c["inp"], c["out"], bias=dense.bias is not None, has_fp16_weights=False, threshold=threshold)
            layer.load_state_dict(dense.state_dict())
            layer = layer.to("cpu")
            layer.eval()
            with torch.no_grad():
                tensors[f"eval_{tag}"] = layer(x)
            layer.train()
            tensors[f"train_{tag}"] = layer(x).detach()
            sd = layer.state_dict()
            tensors["CB"] = sd["weight"]
            tensors["SCB"] = sd["SCB"]
        save_file(tensors, os.path.join(d, c["name"] + ".safetensors"))


class QMLP(torch.nn.Module):
    """lin0 (64 -> 128), relu, lin1 (128 -> 64): in_features multiples of the block size."""

    def __init__(self):
        super().__init__()
        self.lin0 = torch.nn.Linear(64, 128)
        self.lin1 = torch.nn.Linear(128, 64)

    def forward(self, x):
        return self.lin1(torch.relu(self.lin0(x)))


def reference_kernels(m):
    """On CPUs with AVX512-BF16, bitsandbytes' Linear4bit switches in inference to a repacked weight and a
    bf16 kernel (errors ~1e-3). Pin its reference path (dequantize, then an fp32 matmul), which is the
    computation peft-rs performs, so that the comparison is exact up to matmul rounding."""
    for mod in m.modules():
        if isinstance(mod, bnb.nn.Linear4bit):
            mod.support_avx512bf16_for_cpu = False
    # What transformers sets on a model loaded in 4 bits; PEFT then wraps the layers with its bitsandbytes
    # LoRA layers (lora.bnb.Linear4bit), which merge by re-quantizing.
    m.is_loaded_in_4bit = True
    return m


def quantize_model(dense_sd, quant_type, dq):
    """QMLP with bitsandbytes Linear4bit layers quantized (on CPU) from the dense weights."""
    m = QMLP()
    for name in ["lin0", "lin1"]:
        lin = getattr(m, name)
        q = bnb.nn.Linear4bit(lin.in_features, lin.out_features, bias=True, compute_dtype=torch.float32,
                              compress_statistics=dq, quant_type=quant_type)
        q.weight = bnb.nn.Params4bit(dense_sd[name + ".weight"].clone(), requires_grad=False,
                                     compress_statistics=dq, quant_type=quant_type, blocksize=64)
        q.bias = torch.nn.Parameter(dense_sd[name + ".bias"].clone(), requires_grad=False)
        setattr(m, name, q.to("cpu"))
    return reference_kernels(m)


def load_quantized(sd_4bit):
    """QMLP with Linear4bit layers restored from a saved 4-bit state dict (the pre-quantized path)."""
    m = QMLP()
    for name in ["lin0", "lin1"]:
        lin = getattr(m, name)
        stats = {k[len(name) + 1 + len("weight."):]: v for k, v in sd_4bit.items() if k.startswith(name + ".weight.")}
        qt = "nf4" if any(k.endswith("bitsandbytes__nf4") for k in stats) else "fp4"
        q = bnb.nn.Linear4bit(lin.in_features, lin.out_features, bias=True, compute_dtype=torch.float32, quant_type=qt)
        q.weight = bnb.nn.Params4bit.from_prequantized(sd_4bit[name + ".weight"], stats, requires_grad=False, device="cpu")
        q.bias = torch.nn.Parameter(sd_4bit[name + ".bias"].clone(), requires_grad=False)
        setattr(m, name, q)
    return reference_kernels(m)


def gen_qlora(out):
    for i, c in enumerate(QLORA):
        d = os.path.join(out, "qlora", c["name"])
        os.makedirs(d)
        torch.manual_seed(400 + i)
        dense = QMLP()
        dense_sd = {k: v.detach().clone() for k, v in dense.state_dict().items()}
        save_file(dense_sd, os.path.join(d, "dense.safetensors"))
        model = quantize_model(dense_sd, c["quant_type"], c["dq"])
        save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, os.path.join(d, "base_4bit.safetensors"))
        config = LoraConfig(r=c["r"], lora_alpha=2 * c["r"], target_modules=["lin0", "lin1"], init_lora_weights=False)
        peft_model = get_peft_model(model, config)
        peft_model.eval()
        x = torch.randn(6, 64)
        with torch.no_grad():
            y = peft_model(x)
            with peft_model.disable_adapter():
                y_base = peft_model(x)
        peft_model.save_pretrained(os.path.join(d, "adapter"))
        # Merging into a 4-bit base: dequantize, add the delta, quantize again (lossy).
        merged = reference_kernels(peft_model.merge_and_unload())
        with torch.no_grad():
            y_merged = merged(x)
        save_file({k: v.detach().contiguous() for k, v in merged.state_dict().items()},
                  os.path.join(d, "merged_4bit.safetensors"))
        save_file({"x": x, "y": y, "y_base": y_base, "y_merged": y_merged}, os.path.join(d, "io.safetensors"))
        with open(os.path.join(d, "case.json"), "w") as f:
            json.dump(c, f)


LOFTQ = [
    dict(name="nf4_iter1", bits=4, iters=1, r=8),
    dict(name="nf4_iter3", bits=4, iters=3, r=4),
    dict(name="int8_iter2", bits=8, iters=2, r=8),
]


def loftq_on_cpu():
    """PEFT 0.21.2's loftq_init computes on "cuda" (or "xpu") unconditionally. Route those moves to the CPU so
    that PEFT's own code runs here; the arithmetic is unchanged."""
    orig_to = torch.Tensor.to
    orig_p4 = bnb.nn.Params4bit.to

    def cpu(args, kwargs):
        args = tuple("cpu" if isinstance(a, str) and a.startswith(("cuda", "xpu")) else a for a in args)
        if isinstance(kwargs.get("device"), str) and kwargs["device"].startswith(("cuda", "xpu")):
            kwargs["device"] = "cpu"
        return args, kwargs

    def tensor_to(self, *args, **kwargs):
        args, kwargs = cpu(args, kwargs)
        return orig_to(self, *args, **kwargs)

    def p4_to(self, *args, **kwargs):
        args, kwargs = cpu(args, kwargs)
        return orig_p4(self, *args, **kwargs)

    torch.Tensor.to = tensor_to
    bnb.nn.Params4bit.to = p4_to


def gen_loftq(out):
    from peft import LoftQConfig

    loftq_on_cpu()
    for i, c in enumerate(LOFTQ):
        d = os.path.join(out, "loftq", c["name"])
        os.makedirs(d)
        torch.manual_seed(700 + i)
        model = QMLP()
        save_file({k: v.detach().clone() for k, v in model.state_dict().items()}, os.path.join(d, "dense.safetensors"))
        config = LoraConfig(r=c["r"], lora_alpha=2 * c["r"], target_modules=["lin0", "lin1"], init_lora_weights="loftq",
                            loftq_config=LoftQConfig(loftq_bits=c["bits"], loftq_iter=c["iters"]))
        peft_model = get_peft_model(model, config)
        peft_model.eval()
        base = {k.replace("base_model.model.", "").replace(".base_layer", ""): v.detach().clone()
                for k, v in peft_model.named_parameters() if "lora_" not in k}
        save_file(base, os.path.join(d, "base_after.safetensors"))
        x = torch.randn(5, 64)
        with torch.no_grad():
            y = peft_model(x)
        peft_model.save_pretrained(os.path.join(d, "adapter"))
        save_file({"x": x, "y": y}, os.path.join(d, "io.safetensors"))
        with open(os.path.join(d, "case.json"), "w") as f:
            json.dump(c, f)


LLAMA = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, vocab_size=200, max_position_embeddings=128, tie_word_embeddings=False)


def bnb_config():
    import transformers as tf

    return tf.BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                 bnb_4bit_compute_dtype=torch.float32)


def load_llama_4bit(path):
    import transformers as tf

    m = tf.LlamaForCausalLM.from_pretrained(path, quantization_config=None if "4bit" in path else bnb_config(),
                                            device_map="cpu")
    return reference_kernels(m)


def gen_llama(out):
    """A Llama saved dense and saved 4-bit by transformers, with a PEFT LoRA adapter on the 4-bit model."""
    import transformers as tf

    d = os.path.join(out, "llama")
    os.makedirs(d)
    torch.manual_seed(600)
    dense = tf.LlamaForCausalLM(tf.LlamaConfig(**LLAMA))
    dense.save_pretrained(os.path.join(d, "dense"))
    q = load_llama_4bit(os.path.join(d, "dense"))
    q.save_pretrained(os.path.join(d, "4bit"))
    config = LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", init_lora_weights=False)
    peft_model = get_peft_model(q, config)
    peft_model.eval()
    ids = torch.randint(0, LLAMA["vocab_size"], (2, 12))
    with torch.no_grad():
        logits = peft_model(input_ids=ids).logits
        with peft_model.disable_adapter():
            base_logits = peft_model(input_ids=ids).logits
    peft_model.save_pretrained(os.path.join(d, "adapter"))
    save_file({"input_ids": ids, "logits": logits, "base_logits": base_logits}, os.path.join(d, "io.safetensors"))
    trainable, total = peft_model.get_nb_trainable_parameters()
    with open(os.path.join(d, "params.json"), "w") as f:
        json.dump({"trainable": trainable, "total": total}, f)


def check_llama(root):
    """Reverse direction: a QLoRA adapter peft-rs trained (ROOT/adapter) on the 4-bit Llama, loaded by PEFT
    on transformers' own 4-bit model (quantized from ROOT/dense)."""
    from safetensors.torch import load_file

    model = load_llama_4bit(os.path.join(root, "dense"))
    peft_model = PeftModel.from_pretrained(model, os.path.join(root, "adapter"))
    peft_model.eval()
    ids = load_file(os.path.join(root, "io.safetensors"))["input_ids"]
    with torch.no_grad():
        logits = peft_model(input_ids=ids).logits
    save_file({"logits": logits}, os.path.join(root, "peft_logits.safetensors"))


def check_rs(root):
    """Reverse direction: bitsandbytes + PEFT load what peft-rs saved under ROOT/qlora_rs/<case>/."""
    base = os.path.join(root, "qlora_rs")
    for name in sorted(os.listdir(base)):
        d = os.path.join(base, name)
        from safetensors.torch import load_file

        sd = load_file(os.path.join(d, "base_4bit.safetensors"))
        model = load_quantized(sd)
        peft_model = PeftModel.from_pretrained(model, os.path.join(d, "adapter"))
        peft_model.eval()
        io = load_file(os.path.join(d, "io.safetensors"))
        with torch.no_grad():
            y = peft_model(io["x"])
        # The dense weights quantized by bitsandbytes itself must equal what peft-rs wrote.
        dense = load_file(os.path.join(d, "dense.safetensors"))
        case = json.load(open(os.path.join(d, "case.json")))
        ref = quantize_model(dense, case["quant_type"], case["dq"]).state_dict()
        same = {k: bool(torch.equal(ref[k].contiguous(), sd[k])) for k in ref}
        save_file({"y": y}, os.path.join(d, "peft_outputs.safetensors"))
        with open(os.path.join(d, "bnb_equal.json"), "w") as f:
            json.dump({"keys_equal": same, "keys_rs": sorted(sd), "keys_bnb": sorted(ref)}, f)


def main():
    if sys.argv[1] == "--check-rs":
        check_rs(sys.argv[2])
        return
    if sys.argv[1] == "--check-llama":
        check_llama(sys.argv[2])
        return
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    gen_codes(out)
    gen_blockwise(out)
    gen_four_bit(out)
    gen_int8(out)
    gen_qlora(out)
    gen_llama(out)
    gen_loftq(out)
    with open(os.path.join(out, "manifest.json"), "w") as f:
        json.dump({"blockwise": [c["name"] for c in BLOCKWISE], "4bit": [c["name"] for c in FOUR_BIT],
                   "int8": [c["name"] for c in INT8], "qlora": [c["name"] for c in QLORA],
                   "loftq": [c["name"] for c in LOFTQ]}, f, indent=1)


if __name__ == "__main__":
    main()
