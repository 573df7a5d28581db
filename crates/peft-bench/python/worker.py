"""The PEFT side of `cargo xtask bench`: a worker answering one JSON request per line on stdin.

Requests (the peft-rs worker, src/main.rs, implements the same protocol):
  {"op": "setup", "workload": {...}}  -> {"ok": true}
  {"op": "run", "iters": n}           -> {"times_ms": [...]}   (each iteration timed on its own)
  {"op": "teardown"}                  -> {"ok": true}
  {"op": "memory"}                    -> {"peak_rss": bytes}
  {"op": "quit"}
Usage: python worker.py THREADS
"""

import gc
import json
import sys
import time

import os
import warnings

os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
warnings.filterwarnings("ignore")

import torch  # noqa: E402
import transformers as tf  # noqa: E402
from peft import LoraConfig, PeftModel, get_peft_model  # noqa: E402
from peft.utils.hotswap import hotswap_adapter  # noqa: E402

tf.logging.set_verbosity_error()
tf.utils.logging.disable_progress_bar()


def peak_rss():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16, None: torch.float32}


def device_of(w):
    return "cuda" if w.get("device") == "cuda" else "cpu"


def load_base(w):
    """The base model in w["dtype"] on w["device"]; with w["quantize"] ("nf4", "fp4"), transformers'
    4-bit loading (double quantization, computing in the base dtype), as QLoRA users load it."""
    dtype = DTYPES[w.get("dtype")]
    device = device_of(w)
    if w.get("quantize"):
        bnb_config = tf.BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=w["quantize"],
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype,
        )
        return tf.LlamaForCausalLM.from_pretrained(
            w["model"], dtype=dtype, quantization_config=bnb_config, device_map={"": device}
        ).eval()
    if w["model"].endswith(".gguf"):
        # transformers dequantizes a GGUF checkpoint to `dtype` (peft-rs loads the same file).
        d, name = os.path.split(w["model"])
        return tf.AutoModelForCausalLM.from_pretrained(d, gguf_file=name, dtype=dtype).to(device).eval()
    return tf.LlamaForCausalLM.from_pretrained(w["model"], dtype=dtype).to(device).eval()


def random_ids(w, batch, seq):
    torch.manual_seed(1234)
    return torch.randint(0, 1024, (batch, seq)).to(device_of(w))


def sync():
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def elapsed(t):
    sync()
    return time.perf_counter() - t


class Workload:
    def __init__(self, w):
        self.w = w
        kind = w["kind"]
        self.kind = kind
        if kind == "train":
            base = load_base(w)
            self.model = get_peft_model(base, LoraConfig(**w["lora"]))
            self.model.train()
            params = [p for p in self.model.parameters() if p.requires_grad]
            self.opt = torch.optim.AdamW(params, lr=w["lr"], weight_decay=0.01)
            self.ids = random_ids(w, w["batch"], w["seq"])
        elif kind == "forward":
            base = load_base(w)
            adapters = w["adapters"]
            self.model = None
            for name, path in adapters:
                if self.model is None:
                    self.model = PeftModel.from_pretrained(base, path, adapter_name=name)
                else:
                    self.model.load_adapter(path, adapter_name=name)
            self.model.eval()
            active = w["active"]
            if len(active) == 1:
                self.model.set_adapter(active[0])
            else:
                self.model.base_model.set_adapter(active)
            if w.get("merged"):
                self.model.merge_adapter()
            # PEFT at its best: its DoRA cache (off by default) is on for the inference workloads.
            from peft.helpers import DoraCaching

            DoraCaching()(enabled=True)
            self.ids = random_ids(w, w["batch"], w["seq"])
        elif kind == "mixed":
            base = load_base(w)
            self.model = None
            for name, path in w["adapters"]:
                if self.model is None:
                    self.model = PeftModel.from_pretrained(base, path, adapter_name=name)
                else:
                    self.model.load_adapter(path, adapter_name=name)
            self.model.eval()
            self.rows = w["rows"]
            self.ids = random_ids(w, len(self.rows), w["seq"])
        elif kind == "decode":
            base = load_base(w)
            self.model = None
            for name, path in w["adapters"]:
                if self.model is None:
                    self.model = PeftModel.from_pretrained(base, path, adapter_name=name)
                else:
                    self.model.load_adapter(path, adapter_name=name)
            self.model.eval()
            self.rows = w.get("rows")
            if self.rows is None and w.get("merged"):
                self.model.merge_adapter()
            self.ids = random_ids(w, len(self.rows) if self.rows else 1, w["prompt"])
        elif kind in ("load", "merge_unload"):
            self.base = load_base(w)
            self.model = None
        elif kind == "hotswap":
            base = load_base(w)
            self.dirs = w["adapters"]
            self.model = PeftModel.from_pretrained(base, self.dirs[0]).eval()
            self.flip = 1
        else:
            raise ValueError(f"unknown workload kind {kind}")

    def run_once(self):
        kind = self.kind
        if kind == "train":
            t = time.perf_counter()
            out = self.model(input_ids=self.ids, labels=self.ids)
            out.loss.backward()
            self.opt.step()
            self.opt.zero_grad()
            return elapsed(t)
        if kind == "forward":
            t = time.perf_counter()
            with torch.no_grad():
                if self.w.get("disabled"):
                    with self.model.disable_adapter():
                        self.model(input_ids=self.ids)
                else:
                    self.model(input_ids=self.ids)
            return elapsed(t)
        if kind == "mixed":
            t = time.perf_counter()
            with torch.no_grad():
                self.model(input_ids=self.ids, adapter_names=self.rows)
            return elapsed(t)
        if kind == "decode":
            n = self.w["new_tokens"]
            extra = {"adapter_names": self.rows} if self.rows else {}
            t = time.perf_counter()
            with torch.no_grad():
                # Greedy, exactly n new tokens (min_new_tokens masks any eos), as peft-rs with no stop token.
                out = self.model.generate(
                    input_ids=self.ids, attention_mask=torch.ones_like(self.ids), max_new_tokens=n,
                    min_new_tokens=n, do_sample=False, pad_token_id=0, **extra,
                )
            took = elapsed(t)
            assert out.shape[1] == self.ids.shape[1] + n, out.shape
            return took
        if kind == "load":
            t = time.perf_counter()
            model = PeftModel.from_pretrained(self.base, self.w["adapter"])
            took = elapsed(t)
            self.base = model.unload()
            return took
        if kind == "merge_unload":
            model = PeftModel.from_pretrained(self.base, self.w["adapter"])
            t = time.perf_counter()
            self.base = model.merge_and_unload()
            return elapsed(t)
        if kind == "hotswap":
            path = self.dirs[self.flip]
            self.flip = 1 - self.flip
            t = time.perf_counter()
            hotswap_adapter(self.model, path, adapter_name="default", torch_device=device_of(self.w))
            return elapsed(t)
        raise ValueError(kind)


# The kernels both implementations must run for the same model: matrix products and fused attention.
ESSENTIAL = ("aten::mm", "aten::addmm", "aten::bmm", "aten::_scaled_dot_product_flash_attention_for_cpu",
             "aten::_scaled_dot_product_flash_attention_for_cpu_backward")


def kernel_time(workload, iters):
    """Per iteration: the time PEFT spends inside the essential kernels (profiler self time)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(iters):
            workload.run_once()
    events = prof.key_averages()
    essential = sum(e.self_cpu_time_total for e in events if e.key in ESSENTIAL) / iters / 1000.0
    return {"essential_ms": essential}


def main():
    torch.set_num_threads(int(sys.argv[1]))
    workload = None
    for line in sys.stdin:
        req = json.loads(line)
        op = req["op"]
        try:
            if op == "setup":
                workload = None
                gc.collect()
                workload = Workload(req["workload"])
                resp = {"ok": True}
            elif op == "run":
                resp = {"times_ms": [1000.0 * workload.run_once() for _ in range(req["iters"])]}
            elif op == "teardown":
                workload = None
                gc.collect()
                resp = {"ok": True}
            elif op == "kernel_time":
                resp = kernel_time(workload, req["iters"])
            elif op == "memory":
                resp = {"peak_rss": peak_rss()}
            elif op == "gpu_memory":
                resp = {"peak_allocated": torch.cuda.max_memory_allocated(0)}
            elif op == "reset_gpu_peak":
                torch.cuda.reset_peak_memory_stats(0)
                resp = {"ok": True}
            elif op == "quit":
                break
            else:
                resp = {"error": f"unknown op {op}"}
        except Exception as e:  # reported to the driver, which stops
            resp = {"error": f"{type(e).__name__}: {e}"}
        sys.stdout.write(json.dumps(resp) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
