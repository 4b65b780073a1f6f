"""Append throughput: 256-row batches through ``store.writer`` vs one ``append`` call.

The issue's bar: buffered 256-row appends reach at least half the throughput
of writing the same data in one call. Also shown: unbuffered 256-row
``append`` calls (each rewrites the partly filled last chunk). Local disk,
D=512 float32, 256 MiB per run; medians of 3.

    python benchmarks/bench_store.py [--mib 256]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

import ncdask

D, K = 512, 1000


def run(mode: str, X: np.ndarray, y: np.ndarray, root: Path) -> float:
    url = str(root / f"{mode}.zarr")
    s = ncdask.EmbeddingStore.create(url, K, D, overwrite=True)
    t = time.perf_counter()
    if mode == "one call":
        s.append("train", X, y)
    elif mode == "writer, 256-row batches":
        with s.writer("train") as w:
            for i in range(0, len(X), 256):
                w.append(X[i : i + 256], y[i : i + 256])
    else:
        for i in range(0, len(X), 256):
            s.append("train", X[i : i + 256], y[i : i + 256])
    dt = time.perf_counter() - t
    assert s["train"].sizes["sample"] == len(X)
    shutil.rmtree(url)
    return X.nbytes / 2**20 / dt


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=256)
    ap.add_argument("--unbuffered-mib", type=int, default=16)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    n = args.mib * 2**20 // (4 * D)
    X = rng.standard_normal((n, D), dtype=np.float32)
    X += rng.standard_normal((1, D), dtype=np.float32)
    y = rng.integers(0, K, n)
    root = Path(tempfile.mkdtemp(dir="."))
    try:
        rates = {}
        for mode in ("one call", "writer, 256-row batches"):
            rates[mode] = statistics.median(run(mode, X, y, root) for _ in range(3))
        m = args.unbuffered_mib * 2**20 // (4 * D)
        rates["append(), 256-row batches"] = run("append", X[:m], y[:m], root)
    finally:
        shutil.rmtree(root)
    for mode, r in rates.items():
        print(f"{mode:28s} {r:8.1f} MiB/s")
    ratio = rates["writer, 256-row batches"] / rates["one call"]
    print(f"writer / one call = {ratio:.2f} (bar: >= 0.5)")


if __name__ == "__main__":
    main()
