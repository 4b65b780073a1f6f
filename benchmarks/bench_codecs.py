"""Choose the store's default codec: ratio and write/read speed on embedding-like data.

Three kinds of float32 data, 64 MiB each (D=512): Gaussian (e.g. transformer
hidden states), post-ReLU (half exact zeros), and average-pooled post-ReLU
(ResNet penultimate features: positive, rarely zero). Each codec writes the
data to a local Zarr store in whole chunks and reads it back; medians of 3.

    python benchmarks/bench_codecs.py
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
import time

import numpy as np
import zarr
from zarr.codecs import BloscCodec, ZstdCodec

D, ROWS = 512, 32768


def data(kind: str, rng: np.random.Generator) -> np.ndarray:
    g = rng.standard_normal((ROWS, D), dtype=np.float32)
    if kind == "gaussian":
        return g
    if kind == "relu":
        return np.maximum(g, 0)
    # average of 49 ReLU maps, as after a ResNet's global pooling
    acc = np.zeros((ROWS, D), np.float32)
    for _ in range(8):  # 8 are enough for the shape of the distribution
        acc += np.maximum(rng.standard_normal((ROWS, D), dtype=np.float32), 0)
    return acc / 8


CODECS = {
    "none": None,
    "zstd-1": [ZstdCodec(level=1)],
    "blosc-lz4-shuffle": [BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")],
    "blosc-zstd1-shuffle": [BloscCodec(cname="zstd", clevel=1, shuffle="shuffle")],
    "blosc-lz4-bitshuffle": [BloscCodec(cname="lz4", clevel=5, shuffle="bitshuffle")],
}


def main() -> None:
    rng = np.random.default_rng(0)
    print(f"{'data':10s} {'codec':22s} {'ratio':>6s} {'write MiB/s':>11s} {'read MiB/s':>10s}")
    for kind in ("gaussian", "relu", "pooled"):
        X = data(kind, rng)
        mib = X.nbytes / 2**20
        for name, comp in CODECS.items():
            w, r, ratio = [], [], 0.0
            for _ in range(3):
                d = tempfile.mkdtemp()
                try:
                    kw = {"compressors": comp} if comp else {"compressors": None}
                    a = zarr.create_array(d, shape=X.shape, chunks=(8192, D), dtype="f4", **kw)
                    t = time.perf_counter()
                    a[:] = X
                    w.append(mib / (time.perf_counter() - t))
                    t = time.perf_counter()
                    a[:]
                    r.append(mib / (time.perf_counter() - t))
                    ratio = X.nbytes / max(a.nbytes_stored(), 1)
                finally:
                    shutil.rmtree(d)
            print(f"{kind:10s} {name:22s} {ratio:6.2f} {statistics.median(w):11.0f} "
                  f"{statistics.median(r):10.0f}")


if __name__ == "__main__":
    main()
