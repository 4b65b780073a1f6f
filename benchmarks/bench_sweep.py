"""An epoch sweep re-run after one more epoch lands, against a full sweep (issue 15).

Writes ``--epochs`` epochs (N rows, D, K each) into one store, runs
``sweep(store, out=...)`` over all of them, appends one more epoch and runs
it again: only the new epoch is measured. Prints the times and the ratio of
the re-run to a full sweep of all epochs (``sweep(..., compute=True)``).

    python benchmarks/bench_sweep.py --epochs 20
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

import ncdask


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--rows", type=int, default=50_000)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--classes", type=int, default=100)
    args = ap.parse_args()
    N, D, K = args.rows, args.dim, args.classes
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="ncdask-bench-sweep-") as tmp:
        root = Path(tmp)
        s = ncdask.EmbeddingStore.create(str(root / "s.zarr"), K, D)

        def add(e: int) -> None:
            y = rng.integers(0, K, N)
            X = (rng.normal(size=(K, D)) * (1 + e / 4))[y] + rng.normal(size=(N, D))
            s.append("train", X.astype(np.float32), y, epoch=e)
            s.set_classifier(rng.normal(size=(K, D)), epoch=e)

        for e in range(args.epochs):
            add(e)
        out = str(root / "res.zarr")
        kw = dict(over="epoch", metrics=["nc1", "nc2", "nc3"])
        t = time.perf_counter()
        ncdask.sweep(s, out=out, **kw)
        first = time.perf_counter() - t
        add(args.epochs)
        t = time.perf_counter()
        again = ncdask.sweep(s, out=out, **kw)
        rerun = time.perf_counter() - t
        t = time.perf_counter()
        ncdask.sweep(s, compute=True, **kw)
        full = time.perf_counter() - t
        print(f"{args.epochs} epochs + 1, N={N} D={D} K={K} each: first sweep(out=) "
              f"{first:.2f} s; re-run after epoch {args.epochs} landed {rerun:.2f} s "
              f"(measured {again.attrs['ncdask_sweep']['measured']}); full sweep of "
              f"{args.epochs + 1} epochs {full:.2f} s; re-run / full = {rerun / full:.3f}")


if __name__ == "__main__":
    main()
