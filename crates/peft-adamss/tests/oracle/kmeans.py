"""KMeans parity fixture: scikit-learn's KMeans exactly as PEFT's `clustering_Z` calls it, on float32
matrices of orthonormal columns like AdaMSS's left singular vectors: `r < rows` (the usual case) and
`r == rows` (square orthogonal: every row equidistant from every other, ties everywhere).

Usage: python kmeans.py OUT_DIR
"""

import json
import os
import sys

import numpy as np
import sklearn
from safetensors.numpy import save_file
from sklearn.cluster import KMeans


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(0)
    cases, tensors = [], {}
    for i in range(80):
        square = i >= 60
        n = int(rng.integers(4, 70))
        d = n if square else int(rng.integers(1, max(2, n // 2)))
        a = rng.standard_normal((n, n + 1)).astype(np.float32)
        u = np.ascontiguousarray(np.linalg.svd(a)[0][:, :d].astype(np.float32))
        k = min(5, n)
        km = KMeans(n_clusters=k, init="random", n_init=1, max_iter=10, random_state=123456789)
        labels = km.fit_predict(u)
        tensors[f"x{i}"] = u
        tensors[f"labels{i}"] = labels.astype(np.int32)
        tensors[f"centers{i}"] = km.cluster_centers_.astype(np.float32)
        cases.append(dict(n=n, d=d, k=k, square=square))
    save_file(tensors, os.path.join(out, "kmeans.safetensors"))
    with open(os.path.join(out, "kmeans.json"), "w") as f:
        json.dump(dict(sklearn=sklearn.__version__, cases=cases), f)


if __name__ == "__main__":
    main()
