"""Re-analysing a store with a warm statistics cache, against a cold run (issue 15).

Builds a store of ``--gib`` GiB (K=1000, D=512, float32), then times
``class_stats(store, "train", cache=True)``: cold (the full pass, and the
cache written), warm (nothing new), and after appending 1 % more rows (the
new rows read and merged). Prints medians of ``--reps`` and the ratios to
the cold run.

    python benchmarks/bench_cache.py --gib 1
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gib", type=float, default=1.0)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    K, D = 1000, 512
    N = int(args.gib * 2**30 / (4 * D))
    with tempfile.TemporaryDirectory(prefix="ncdask-bench-cache-") as tmp:
        root = Path(tmp)
        url = str(root / "s.zarr")
        s = ncdask.EmbeddingStore.create(url, K, D)
        rng = np.random.default_rng(0)
        with s.writer("train") as w:
            for i in range(0, N, s.chunk_rows):
                n = min(s.chunk_rows, N - i)
                w.append(rng.normal(size=(n, D)).astype(np.float32), rng.integers(0, K, n))
        cold, warm, grown = [], [], []
        for _ in range(args.reps):
            for p in (root / "s.zarr" / "train").glob(".ncdask-stats"):
                shutil.rmtree(p)
            t = time.perf_counter()
            ncdask.class_stats(ncdask.EmbeddingStore.open(url), "train", cache=True)
            cold.append(time.perf_counter() - t)
            t = time.perf_counter()
            ncdask.class_stats(ncdask.EmbeddingStore.open(url), "train", cache=True).compute()
            warm.append(time.perf_counter() - t)
            n = N // 100
            s.append("train", rng.normal(size=(n, D)).astype(np.float32), rng.integers(0, K, n))
            t = time.perf_counter()
            ncdask.class_stats(ncdask.EmbeddingStore.open(url), "train", cache=True).compute()
            grown.append(time.perf_counter() - t)
        c, w_, g = (statistics.median(v) for v in (cold, warm, grown))
        print(f"{args.gib} GiB, K={K} D={D}, N={N}: cold {c:.2f} s, warm {w_:.3f} s "
              f"({w_ / c:.3f} of cold), after +1 % rows {g:.2f} s ({g / c:.3f} of cold); "
              f"medians of {args.reps}")


if __name__ == "__main__":
    main()
