"""Re-extracts the chat templates of this directory from the PyPI packages they ship in and checks them.

Usage: python extract.py [--write] [SDIST]

SDIST is llama-cpp-python 0.3.36's source archive (downloaded from PyPI when not given). Its vendored
llama.cpp ships real tokenizers (`models/ggml-vocab-*.gguf`, each with the model's
`tokenizer.chat_template` in its GGUF metadata) and real models' templates (`models/templates/*.jinja`,
saved from their `tokenizer_config.json`). Without --write the script only compares: it exits non-zero
naming every file here that differs from its source. The SmolLM2 and torchrl templates come from other
packages; README.md says where.
"""

import io
import json
import os
import struct
import sys
import tarfile
import urllib.parse
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
PACKAGE, VERSION = "llama-cpp-python", "0.3.36"
ROOT = f"llama_cpp_python-{VERSION}/vendor/llama.cpp/models/"

# file here -> (member of the archive, "gguf" for a tokenizer's metadata or "text" for a template file)
SOURCES = {
    "gguf-vocab-command-r.jinja": ("ggml-vocab-command-r.gguf", "gguf"),
    "gguf-vocab-gemma-4.jinja": ("ggml-vocab-gemma-4.gguf", "gguf"),
    "gguf-vocab-phi-3.jinja": ("ggml-vocab-phi-3.gguf", "gguf"),
    "gguf-vocab-qwen2.jinja": ("ggml-vocab-qwen2.gguf", "gguf"),
    "llama-3.1-8b-instruct.jinja": ("templates/meta-llama-Llama-3.1-8B-Instruct.jinja", "text"),
    "llama-3.2-3b-instruct.jinja": ("templates/meta-llama-Llama-3.2-3B-Instruct.jinja", "text"),
    "mistral-nemo-instruct-2407.jinja": ("templates/mistralai-Mistral-Nemo-Instruct-2407.jinja", "text"),
    "gemma-2-2b-it.jinja": ("templates/google-gemma-2-2b-it.jinja", "text"),
    "qwen2.5-7b-instruct.jinja": ("templates/Qwen-Qwen2.5-7B-Instruct.jinja", "text"),
    "phi-3.5-mini-instruct.jinja": ("templates/microsoft-Phi-3.5-mini-instruct.jinja", "text"),
}

# GGUF metadata value types: fixed sizes, 8 = string, 9 = array.
_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}


def gguf_chat_template(data):
    """`tokenizer.chat_template` from the metadata of a GGUF file (format versions 2 and 3)."""
    f = io.BytesIO(data)
    if f.read(4) != b"GGUF":
        raise ValueError("not a GGUF file")
    f.read(4)  # version
    _, n_kv = struct.unpack("<QQ", f.read(16))

    def string():
        (n,) = struct.unpack("<Q", f.read(8))
        return f.read(n).decode("utf-8")

    def skip(kind):
        if kind == 8:
            string()
        elif kind == 9:
            (inner,) = struct.unpack("<I", f.read(4))
            (n,) = struct.unpack("<Q", f.read(8))
            for _ in range(n):
                skip(inner)
        else:
            f.seek(_SIZES[kind], 1)

    for _ in range(n_kv):
        key = string()
        (kind,) = struct.unpack("<I", f.read(4))
        if key == "tokenizer.chat_template" and kind == 8:
            return string()
        skip(kind)
    raise ValueError("no tokenizer.chat_template")


def download():
    index = f"https://pypi.org/pypi/{PACKAGE}/json"
    with urllib.request.urlopen(index) as r:
        meta = json.load(r)
    if meta["info"]["version"] != VERSION:
        meta = json.load(urllib.request.urlopen(f"https://pypi.org/pypi/{PACKAGE}/{VERSION}/json"))
    (sdist,) = [u for u in meta["urls"] if u["packagetype"] == "sdist"]
    with urllib.request.urlopen(urllib.parse.urljoin(index, sdist["url"])) as r:
        return r.read()


def main(args):
    write = "--write" in args
    paths = [a for a in args if a != "--write"]
    archive = open(paths[0], "rb").read() if paths else download()
    bad = []
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        for name, (member, kind) in SOURCES.items():
            data = tar.extractfile(ROOT + member).read()
            text = gguf_chat_template(data) if kind == "gguf" else data.decode("utf-8")
            path = os.path.join(HERE, name)
            if write:
                with open(path, "w", encoding="utf-8", newline="") as f:
                    f.write(text)
            elif not os.path.exists(path) or open(path, encoding="utf-8", newline="").read() != text:
                bad.append(name)
    if bad:
        sys.exit(f"differ from {PACKAGE} {VERSION}: {', '.join(bad)}")
    print(f"{len(SOURCES)} templates {'written' if write else 'match'} {PACKAGE} {VERSION}")


if __name__ == "__main__":
    main(sys.argv[1:])
