"""Streaming statistics against the forward pass they observe (issue 15).

For the demo's MLP (digits, hidden 64-64-64-64-128, K=8) and a wider MLP
(D=512 … 2048, K=1000): a pass over ``--batches`` batches, once running the
forward pass alone and once feeding every hidden layer of each batch to a
:class:`ncdask.StatsAccumulator` as well. The update time is the whole
pass's difference, so it includes the buffer's folds and the final fold
(``flush``). ``--rounds`` passes each, alternating; prints the medians, their
ratio (update / forward), and the floor of the exact update: the time of the
float64 scatter products ``PᵀP`` of the same rows alone (the per-row D×D
update has a linear layer's flops, in float64).

    python benchmarks/bench_accumulate.py
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

import ncdask
from ncdask._demo.demo import MLP


def _forward64(mlp, X):
    """The hidden layers in float64, as :func:`ncdask._demo.demo.penultimate` computes them."""
    h = [np.asarray(X, dtype=np.float64)]
    for W, b in zip(mlp.coefs64[:-1], mlp.intercepts64[:-1], strict=True):
        h.append(np.maximum(h[-1] @ W + b, 0))
    return h


def _pass(mlp, X, y, batch, accs, forward):
    t0 = time.perf_counter()
    for i in range(0, X.shape[0], batch):
        xb, yb = X[i:i + batch], y[i:i + batch]
        h = forward(mlp, xb)
        for a, hk in zip(accs, h[-len(accs):] if accs else [], strict=True):
            a.update(hk, yb)
    for a in accs:
        a.flush()
    return time.perf_counter() - t0


def run(sizes: tuple[int, ...], K: int, batch: int, n_batches: int, rounds: int,
        dtype: str = "float64", forward64: bool = False, last_only: bool = False,
        seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    mlp = MLP((sizes[0], *sizes[1:], K), rng)
    mlp.coefs64 = [w.astype(np.float64) for w in mlp.coefs_]
    mlp.intercepts64 = [b.astype(np.float64) for b in mlp.intercepts_]
    forward = _forward64 if forward64 else (lambda m, x: m._forward(x)[0])
    X = rng.normal(size=(batch * n_batches, sizes[0])).astype(np.float32)
    y = rng.integers(0, K, batch * n_batches)
    dims = sizes[-1:] if last_only else sizes[1:]
    fwd, tot = [], []
    for _ in range(rounds + 1):  # the first round warms up
        fwd.append(_pass(mlp, X, y, batch, [], forward))
        tot.append(_pass(mlp, X, y, batch,
                         [ncdask.StatsAccumulator(K, d, dtype=dtype) for d in dims], forward))
    f, t = statistics.median(fwd[1:]), statistics.median(tot[1:])
    h = forward(mlp, X[:ncdask.accumulate.MAX_BUFFER_ROWS])
    floor = []
    for _ in range(3):
        t0 = time.perf_counter()
        for hk in h[-len(dims):]:
            P = np.asarray(hk, dtype=dtype)
            P.T @ P
        floor.append((time.perf_counter() - t0) * X.shape[0] / h[0].shape[0])
    per = 1e3 / n_batches
    return {"sizes": sizes, "K": K, "batch": batch, "dtype": dtype, "layers": dims,
            "forward": "float64" if forward64 else "float32", "forward_ms": f * per,
            "update_ms": (t - f) * per, "ratio": (t - f) / f,
            "scatter_floor_ms": statistics.median(floor) * per}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    demo = (64, 64, 64, 64, 64, 128)
    cases = [  # (hidden sizes, K, batch, batches, forward in float64, penultimate layer only)
        (demo, 8, 256, 256, True, True),  # as `ncdask demo` computes its embeddings
        (demo, 8, 256, 256, True, False),
        (demo, 8, 256, 256, False, False),  # the float32 forward of its training steps
        (demo, 8, 2048, 64, False, False),
        ((3072, 2048, 2048, 512), 1000, 256, 32, False, False),
        ((3072, 2048, 2048, 512), 1000, 1024, 8, False, False)]
    for sizes, K, batch, n, f64, last in cases:
        for dtype in ("float64", "float32"):
            r = run(sizes, K, batch, n, args.rounds, dtype, f64, last)
            print(f"hidden {r['sizes'][1:]} K={r['K']} batch {r['batch']}, {r['forward']} "
                  f"forward, accumulating layers {r['layers']} in {dtype}: per batch forward "
                  f"{r['forward_ms']:.3f} ms, updates {r['update_ms']:.3f} ms (ratio "
                  f"{r['ratio']:.2f}; the {dtype} scatter products alone "
                  f"{r['scatter_floor_ms']:.3f} ms)", flush=True)

if __name__ == "__main__":
    main()
