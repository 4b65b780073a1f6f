"""Streaming statistics against the forward pass they observe (issue 15).

For the demo's MLP (digits, hidden 64-64-64-64-128, K=8) and a wider MLP
(D=512 … 2048, K=1000), per batch: the forward pass, and the
:class:`ncdask.StatsAccumulator` updates of every hidden layer from that
batch. Prints medians over the batches and their ratio (update / forward).

    python benchmarks/bench_accumulate.py
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

import ncdask
from ncdask.demo import MLP


def run(sizes: tuple[int, ...], K: int, batch: int, n_batches: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    mlp = MLP((sizes[0], *sizes[1:], K), rng)
    accs = [ncdask.StatsAccumulator(K, d) for d in sizes[1:]]
    X = rng.normal(size=(batch * n_batches, sizes[0])).astype(np.float32)
    y = rng.integers(0, K, batch * n_batches)
    fwd, upd = [], []
    for i in range(n_batches):
        xb, yb = X[i * batch:(i + 1) * batch], y[i * batch:(i + 1) * batch]
        t0 = time.perf_counter()
        h, _ = mlp._forward(xb)
        t1 = time.perf_counter()
        for a, hk in zip(accs, h[1:], strict=True):
            a.update(hk, yb)
        t2 = time.perf_counter()
        fwd.append(t1 - t0)
        upd.append(t2 - t1)
    f, u = statistics.median(fwd[1:]), statistics.median(upd[1:])
    return {"sizes": sizes, "K": K, "batch": batch, "forward_ms": 1e3 * f,
            "update_ms": 1e3 * u, "ratio": u / f}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, default=30)
    args = ap.parse_args()
    cases = [((64, 64, 64, 64, 64, 128), 8, 256), ((64, 64, 64, 64, 64, 128), 8, 2048),
             ((3072, 2048, 2048, 512), 1000, 256), ((3072, 2048, 2048, 512), 1000, 1024)]
    for sizes, K, batch in cases:
        r = run(sizes, K, batch, args.batches)
        print(f"hidden {r['sizes'][1:]} K={r['K']} batch {r['batch']}: forward "
              f"{r['forward_ms']:.3f} ms, updates {r['update_ms']:.3f} ms "
              f"(ratio {r['ratio']:.2f})", flush=True)


if __name__ == "__main__":
    main()
