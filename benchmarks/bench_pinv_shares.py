"""What ``train=`` (``nc1_pinv_by_frequency``) adds to ``measure(..., by_frequency=n)``.

Random long-tailed data (N samples of K classes in D dims, float32, in
memory as a dask array of row chunks); the class statistics are computed
once and held. Times ``measure(stats, metrics="nc1_pinv", by_frequency=n)``
(which adds the breakdown's metrics) with and without ``train=``, medians of 3.

    python benchmarks/bench_pinv_shares.py 200000 256 1000 --bins 10
"""

from __future__ import annotations

import argparse
import statistics
import time

import dask
import dask.array as da
import numpy as np
import xarray as xr

import ncdask


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("N", type=int)
    ap.add_argument("D", type=int)
    ap.add_argument("K", type=int)
    ap.add_argument("--bins", type=int, default=10)
    ap.add_argument("--rows", type=int, default=16384, help="rows per chunk")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    N, D, K = args.N, args.D, args.K
    rng = np.random.default_rng(0)
    p = 1.0 / np.arange(1, K + 1)  # Zipf-like class frequencies
    y = rng.choice(K, size=N, p=p / p.sum())
    y[:K] = np.arange(K)  # every class present
    means = 3 * rng.normal(size=(K, D)).astype(np.float32)
    X = means[y] + rng.normal(size=(N, D)).astype(np.float32)
    ds = xr.Dataset({"embeddings": (("sample", "feature"),
                                    da.from_array(X, chunks=(args.rows, -1))),
                     "labels": (("sample",), da.from_array(y, chunks=(args.rows,)))},
                    attrs={"n_classes": K})
    t = time.perf_counter()
    stats = ncdask.class_stats(ds)
    stats = stats.copy(data={k: v.compute() for k, v in stats.data_vars.items()})
    t_stats = time.perf_counter() - t
    stats["means"] = stats["means"].chunk({"class": max(1, K // 4)})

    def run(train):
        t = time.perf_counter()
        res = ncdask.measure(stats, metrics="nc1_pinv", by_frequency=args.bins,
                             train=train).compute()
        return time.perf_counter() - t, res

    print(f"N={N} D={D} K={K} bins={args.bins} rows/chunk={args.rows} "
          f"threads={dask.system.CPU_COUNT}; class_stats pass (once): {t_stats:.2f} s")
    for label, train in (("without train", None), ("with train", ds)):
        times, res = [], None
        for _ in range(args.repeat):
            dt, res = run(train)
            times.append(dt)
        shown = ", ".join(f"{t:.2f}" for t in times)
        print(f"{label:>14}: median {statistics.median(times):.2f} s ({shown}); "
              f"vars {sorted(res.data_vars)}")
        if train is not None:
            tot = float(res.nc1_pinv_by_frequency.sum())
            print(f"{'':>14}  shares sum / nc1_pinv - 1 = {tot / float(res.nc1_pinv) - 1:.2e}")


if __name__ == "__main__":
    main()
