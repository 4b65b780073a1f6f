"""The default ``measure`` (every metric, weights given) on random class statistics.

Times ``measure(stats, weights=W).compute()`` for K classes in D dims
(medians of ``--reps``, default 3) and prints how many variables it gave; run it at two commits
to see what a change to the metric table costs. Peak memory: run it under
``/usr/bin/time -v``.

    python benchmarks/bench_measure_default.py 1000 512
    python benchmarks/bench_measure_default.py 20000 2048 --metrics nc1_pinv nc3_dual_err
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import dask.array as da
import numpy as np
import xarray as xr

import ncdask


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("K", type=int)
    ap.add_argument("D", type=int)
    ap.add_argument("--metrics", nargs="+", default=None,
                    help="measure only these (default: every default metric)")
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    K, D = args.K, args.D
    rng = np.random.default_rng(0)
    means = rng.normal(size=(K, D))
    stats = xr.Dataset({
        "counts": ("class", np.full(K, 50)),
        "means": (("class", "feature"), da.from_array(means, chunks=(max(1, K // 4), -1))),
        "global_mean": ("feature", means.mean(0)),
        "within_cov": (("feature", "feature_"), 0.1 * np.eye(D)),
        "var_norms": ("class", np.full(K, 0.1 * D)),
        "n_samples": ((), 50 * K)}, coords={"class": np.arange(K)})
    stats.attrs["global_mean"] = "unweighted"
    W = means + 0.1 * rng.normal(size=(K, D))
    times = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ncdask.DegenerateInputWarning)  # nc1_svd when K > D
        for _ in range(args.reps):
            t0 = time.perf_counter()
            res = ncdask.measure(stats, weights=W, metrics=args.metrics).compute()
            times.append(time.perf_counter() - t0)
    print(f"K={K} D={D}: {len(res.data_vars)} variables, median {statistics.median(times):.2f} s")


if __name__ == "__main__":
    main()
