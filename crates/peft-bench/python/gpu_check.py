"""The bitsandbytes / PEFT side of `cargo xtask gpu-check` (the Rust side: src/bin/peft-gpu-check.rs).

  python gpu_check.py parity IN.safetensors META.json OUT.safetensors DEVICE
      For every case in META.json, the packed 4-bit weight and statistics peft-rs quantized are handed to
      bitsandbytes' own functions (dequantize_4bit, matmul_4bit with and without a gradient); their
      outputs are written to OUT for peft-rs to compare with its own.
  python gpu_check.py time SPEC.json OUT.json DEVICE
      Times bitsandbytes' 4-bit matmul and PEFT's LoRA layer on a bitsandbytes Linear4bit for the shapes in
      SPEC.json (median milliseconds, synchronised), as peft-rs times its own.
"""

import json
import statistics
import sys
import time
import warnings

warnings.filterwarnings("ignore")

import torch  # noqa: E402
import bitsandbytes as bnb  # noqa: E402
from bitsandbytes.functional import QuantState, dequantize_4bit  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}


def state_of(t, name, meta, dev):
    nested = meta["nested"]
    state2 = None
    offset = None
    if nested:
        state2 = QuantState(
            absmax=t[f"{name}.nested_absmax"].to(dev),
            code=t[f"{name}.nested_code"].to(dev),
            blocksize=256,
            dtype=torch.float32,
        )
        offset = torch.tensor(meta["offset"], dtype=torch.float32, device=dev)
    return QuantState(
        absmax=t[f"{name}.absmax"].to(dev),
        shape=torch.Size(meta["shape"]),
        code=t[f"{name}.code"].to(dev),
        blocksize=meta["blocksize"],
        quant_type=meta["quant_type"],
        dtype=DTYPES[meta["dtype"]],
        offset=offset,
        state2=state2,
    )


def parity(inp, meta_path, out, dev):
    t = load_file(inp)
    with open(meta_path) as f:
        cases = json.load(f)
    res = {}
    for c in cases:
        name = c["name"]
        kind = DTYPES[c["dtype"]]
        state = state_of(t, name, c, dev)
        packed = t[f"{name}.packed"].to(dev)
        res[f"{name}.dq"] = dequantize_4bit(packed, state).cpu()
        bias = t[f"{name}.bias"].to(dev)
        with torch.no_grad():
            res[f"{name}.y_small"] = bnb.matmul_4bit(t[f"{name}.x_small"].to(dev), packed.t(), state, bias=bias).cpu()
        x = t[f"{name}.x_train"].to(dev).requires_grad_(True)
        y = bnb.matmul_4bit(x, packed.t(), state, bias=bias)
        (y.float() * t[f"{name}.g"].to(dev)).sum().backward()
        res[f"{name}.y_train"] = y.detach().cpu()
        res[f"{name}.dx"] = x.grad.cpu()
    save_file({k: v.contiguous() for k, v in res.items()}, out)


def sync(dev):
    if dev.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, dev, warmup, iters):
    for _ in range(warmup):
        fn()
    sync(dev)
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        sync(dev)
        times.append(1000.0 * (time.perf_counter() - t))
    return statistics.median(times)


def time_all(spec_path, out, dev):
    from peft import LoraConfig
    from peft.tuners.lora.bnb import Linear4bit as LoraLinear4bit

    with open(spec_path) as f:
        spec = json.load(f)
    kind = DTYPES[spec["dtype"]]
    results = []
    for shape in spec["shapes"]:
        n, k = shape["out"], shape["in"]
        torch.manual_seed(0)
        dense = torch.nn.Linear(k, n, bias=False, dtype=kind, device="cpu")
        layer = bnb.nn.Linear4bit(k, n, bias=False, compute_dtype=kind, compress_statistics=True, quant_type="nf4")
        layer.weight = bnb.nn.Params4bit(dense.weight.data.clone(), requires_grad=False, quant_type="nf4", compress_statistics=True)
        layer = layer.to(dev)
        config = LoraConfig(r=spec["r"], lora_alpha=2 * spec["r"], init_lora_weights=False)
        lora = LoraLinear4bit(layer, "default", config, r=spec["r"], lora_alpha=2 * spec["r"]).to(dev)
        dense_dev = dense.to(dev).requires_grad_(False)
        row = {"name": shape["name"]}
        for mode in spec["modes"]:
            m = mode["rows"]
            x = torch.randn(m, k, dtype=kind, device=dev)
            grad = mode["grad"]
            iters = mode["iters"]

            def run(module):
                def f():
                    xi = x.detach().requires_grad_(grad)
                    if grad:
                        module(xi).float().sum().backward()
                    else:
                        with torch.no_grad():
                            module(xi)

                return f

            row[f"{mode['name']}.q4"] = timed(run(layer), dev, 3, iters)
            row[f"{mode['name']}.lora"] = timed(run(lora), dev, 3, iters)
            row[f"{mode['name']}.dense"] = timed(run(dense_dev), dev, 3, iters)
        results.append(row)
    with open(out, "w") as f:
        json.dump(results, f)


def main():
    op = sys.argv[1]
    if op == "parity":
        parity(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5])
    elif op == "time":
        time_all(sys.argv[2], sys.argv[3], sys.argv[4])
    else:
        raise SystemExit(f"unknown op {op}")


if __name__ == "__main__":
    main()
