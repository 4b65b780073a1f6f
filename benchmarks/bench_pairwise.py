"""Benchmark: the fused pairwise metrics against the GEMM floor, and their peak memory.

For each K (one fresh subprocess per K, so that peak RSS is that K's alone):

* the machine's GEMM rate R is measured in that process (best of a single
  (2048×D)·(D×2048) product and of one such product per core run
  concurrently, float64);
* ``measure(stats, metrics=[nc1_cdnv, nc2g_dist, nc2g_log, nc2g_riesz,
  nc2_equiangle, nc2_max_angle])`` is computed ``--repeats`` times — one
  fused graph over the upper-triangle class tiles;
* the report gives the median wall time, its ratio to the GEMM floor
  ``2·K²·D / R`` (the cost of the one K×K Gram matrix the metrics need), and
  the peak RSS (``resource.getrusage``), also net of the process's RSS
  before computing (interpreter, libraries and the K×D inputs).

Usage::

    python benchmarks/bench_pairwise.py                      # K = 1e3, 1e4, 5e4, D = 128
    python benchmarks/bench_pairwise.py --ks 1000 10000 --repeats 5 --out results/pairwise.json
    python benchmarks/bench_pairwise.py --blas-threads 1     # one BLAS thread per dask worker
    python benchmarks/bench_pairwise.py --scheduler processes  # worker processes: no GIL

With ``--scheduler processes`` the peak RSS is the larger of the parent's and
the largest worker's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap

CHILD = textwrap.dedent(
    """
    import json, os, resource, statistics, sys, time
    from concurrent.futures import ThreadPoolExecutor

    import dask
    import dask.array as da
    import numpy as np
    import xarray as xr

    from ncdask.metrics import measure

    K, D, repeats = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    tile = int(sys.argv[4]) or None
    scheduler = sys.argv[5]
    ncores = os.cpu_count() or 1
    rng = np.random.default_rng(0)

    # ---- the machine's float64 GEMM rate, measured here
    n = 2048
    A = rng.normal(size=(n, D))
    B = rng.normal(size=(n, D))
    flops = 2.0 * n * n * D
    A @ B.T
    single = min(_t for _t in (
        (lambda t0: (A @ B.T, time.perf_counter() - t0)[1])(time.perf_counter())
        for _ in range(7)))
    pool = ThreadPoolExecutor(ncores)
    def conc():
        t0 = time.perf_counter()
        list(pool.map(lambda _: A @ B.T, range(ncores)))
        return time.perf_counter() - t0
    conc()
    concurrent = min(conc() for _ in range(5))
    rate = max(flops / single, ncores * flops / concurrent)
    del A, B

    # ---- class statistics of K classes (only what the pairwise metrics read)
    means = rng.normal(size=(K, D))
    stats = xr.Dataset(
        {
            "counts": ("class", np.full(K, 100, dtype=np.int64)),
            "means": (("class", "feature"), da.from_array(means, chunks=(8192, -1))),
            "global_mean": ("feature", means.mean(0)),
            "within_cov": (("feature", "feature_"), np.eye(D)),
            "var_norms": ("class", da.from_array(rng.random(K), chunks=8192)),
        },
        coords={"class": np.arange(K)},
    )
    metrics = ["nc1_cdnv", "nc2g_dist", "nc2g_log", "nc2g_riesz", "nc2_equiangle",
               "nc2_max_angle"]
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    pool = None
    if scheduler == "processes":
        import multiprocessing
        pool = multiprocessing.get_context("spawn").Pool(ncores)
        pool.starmap(exec, [("import ncdask.metrics", {})] * ncores)  # warm the workers
        cfg = dict(scheduler="processes", pool=pool)
    else:
        cfg = dict(scheduler="threads")
    times = []
    with dask.config.set(**cfg):
        for _ in range(repeats):
            res = measure(stats, metrics=metrics, tile_size=tile)
            t0 = time.perf_counter()
            vals = res.compute()
            times.append(time.perf_counter() - t0)
    if pool is not None:
        pool.close()
        pool.join()
    peak = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
               resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    med = statistics.median(times)
    floor = 2.0 * K * K * D / rate
    print(json.dumps({
        "K": K, "D": D, "tile_size": res.attrs["tile_size"], "repeats": repeats,
        "times_s": times, "median_s": med, "gemm_rate_gflops": rate / 1e9,
        "gemm_floor_s": floor, "ratio_to_floor": med / floor,
        "peak_rss_mib": peak / 1024, "rss_before_compute_mib": rss_before / 1024,
        "peak_rss_net_mib": (peak - rss_before) / 1024,
        "blas_threads": os.environ.get("OPENBLAS_NUM_THREADS", "default"),
        "scheduler": scheduler,
        "cores": ncores, "dask": dask.__version__, "numpy": np.__version__,
        "nc2g_dist_mean": float(vals.nc2g_dist_mean),
    }))
    """
)


def run_one(
    K: int, D: int, repeats: int, tile: int, blas_threads: int | None, scheduler: str = "threads"
) -> dict:
    """Run one K in a fresh interpreter and return its report."""
    env = dict(os.environ)
    if blas_threads:
        for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            env[var] = str(blas_threads)
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(K), str(D), str(repeats), str(tile), scheduler],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if out.returncode:
        raise RuntimeError(f"K={K} failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ks", type=int, nargs="+", default=[1000, 10000, 50000])
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--tile-size", type=int, default=0, help="0: ncdask's default")
    p.add_argument(
        "--blas-threads",
        type=int,
        default=None,
        help="BLAS threads per process (default: the library's own)",
    )
    p.add_argument(
        "--scheduler",
        choices=["threads", "processes"],
        default="threads",
        help="dask scheduler (processes: one worker process per core, no GIL)",
    )
    p.add_argument("--out", default=None, help="write the reports as JSON here")
    a = p.parse_args(argv)
    reports = []
    print(
        f"{'K':>7} {'tile':>6} {'median s':>9} {'floor s':>8} {'ratio':>6} "
        f"{'GEMM GF/s':>9} {'peak RSS MiB':>12} {'net MiB':>8}"
    )
    for K in a.ks:
        r = run_one(K, a.dim, a.repeats, a.tile_size, a.blas_threads, a.scheduler)
        reports.append(r)
        print(
            f"{r['K']:>7} {r['tile_size']:>6} {r['median_s']:>9.3f} {r['gemm_floor_s']:>8.3f} "
            f"{r['ratio_to_floor']:>6.2f} {r['gemm_rate_gflops']:>9.1f} "
            f"{r['peak_rss_mib']:>12.0f} {r['peak_rss_net_mib']:>8.0f}",
            flush=True,
        )
    if a.out:
        os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
        with open(a.out, "w") as f:
            json.dump(reports, f, indent=2)


if __name__ == "__main__":
    main()
