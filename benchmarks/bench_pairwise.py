"""Benchmark: every pairwise metric on the means and W against its GEMM and elementwise floors.

For each K (one fresh subprocess per K, so that peak RSS is that K's alone):

* ``measure(stats, weights=W, metrics=PAIRWISE)`` (CDNV, the three GNC2
  kernels, equiangle and max-angle on the means, max-angle on W: one fused
  graph over the upper-triangle class tiles) runs ``--repeats`` times, each
  timed from building the graph to the result;
* the GEMM floor is the work the kernel must do, the upper triangle of two
  Gram matrices (means and W), ``2 · K²·D`` flops, at the machine's best
  float64 rate measured in the same process: the best of a few products of
  the tile's shape (T×D)·(D×T), one per core at once (one BLAS thread each,
  as the graph runs them) and one with every BLAS thread;
* the elementwise floor is the time NumPy takes, one thread per core, for the
  transcendental work over the K²/2 pairs: ``log``, ``exp`` (the Riesz
  power), ``sqrt`` and one division, each one ufunc call over strips of the
  kernel's size (:data:`ncdask.kernels.pairwise.STRIP_PAIRS`);
* numba's compile of the pairwise pass (once per machine, then cached on
  disk) runs before the timed region; ``pairwise_jit`` in the report says
  whether the tiles took the compiled pass (``pip install ncdask[fast]``;
  ``--jit off`` measures NumPy's passes instead);
* both floors are measured again just before each run (the load of a shared
  machine drifts), in wall and in CPU seconds;
* the report gives the median wall time, the median over runs of its ratio
  to the sum of both floors and to the GEMM floor alone, the same ratio in
  CPU seconds (the process's against the floors' threads: steadier where
  other processes share the cores), the median graph build time, and the
  peak RSS (``resource.getrusage``).

Usage::

    python benchmarks/bench_pairwise.py --ks 32768 131072 --dim 512 --repeats 3 \\
        --out benchmarks/results/bench_pairwise.json
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
    import json, os, resource, statistics, sys, threading, time

    import dask
    import dask.array as da
    import numpy as np
    import xarray as xr
    from threadpoolctl import threadpool_limits

    from ncdask.kernels import pairwise as P
    from ncdask.kernels import pairwise_jit
    from ncdask.kernels.pairwise import STRIP_PAIRS
    from ncdask.metrics import measure

    K, D, repeats, tile = (int(a) for a in sys.argv[1:5])
    jit_mode = {"auto": "auto", "on": True, "off": False}[sys.argv[5]]
    dask.config.set({"ncdask.pairwise_jit": jit_mode})
    ncores = os.cpu_count() or 1
    rng = np.random.default_rng(0)
    PAIRWISE = ["nc1_cdnv", "nc2_equiangle", "nc2_max_angle", "nc2g_dist_mean", "nc2g_dist_var",
                "nc2g_log_mean", "nc2g_log_var", "nc2g_riesz_mean", "nc2g_riesz_var",
                "nc2g_riesz_log_mean", "nc2g_riesz_log_var", "nc2w_max_angle"]
    means, W = rng.normal(size=(K, D)), rng.normal(size=(K, D))
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
    Wd = da.from_array(W, chunks=(8192, -1))
    def build():
        return measure(stats, weights=Wd, metrics=PAIRWISE, tile_size=tile or None)
    T = build().attrs["tile_size"]

    def concurrently(fn, n):
        # wall seconds of fn run in n threads at once, and their CPU seconds
        cpu = []
        def timed():
            c0 = time.thread_time()
            fn()
            cpu.append(time.thread_time() - c0)
        ts = [threading.Thread(target=timed) for _ in range(n)]
        t0 = time.perf_counter()
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        return time.perf_counter() - t0, sum(cpu)

    A, B = rng.normal(size=(T, D)), rng.normal(size=(T, D))
    x = rng.random(STRIP_PAIRS) + 0.5
    reps = 50
    def strips():
        y = np.empty_like(x)
        for _ in range(reps):
            np.log(x, out=y)
            np.exp(y, out=y)
            np.sqrt(x, out=y)
            np.divide(x, y, out=y)

    def floors():
        # GEMM and elementwise floors in wall and CPU seconds: two Gram upper triangles
        # (K^2 D flops each) at the best rate of a few products of the tile's shape, and
        # log/exp/sqrt/divide over K^2/2 pairs, one NumPy call per strip
        flops = 2.0 * T * T * D
        with threadpool_limits(1):
            per_core = min(concurrently(lambda: A @ B.T, ncores) for _ in range(3))
        whole = min(concurrently(lambda: A @ B.T, 1)[0] for _ in range(3))
        rate = max(ncores * flops / per_core[0], flops / whole)
        el = min(concurrently(strips, ncores) for _ in range(3))
        scale_el = (K * K / 2) / (ncores * reps * STRIP_PAIRS)
        work = 2 * K * K * D
        return dict(rate=rate, gemm=work / rate, elem=el[0] * scale_el,
                    gemm_cpu=work / (ncores * flops) * per_core[1], elem_cpu=el[1] * scale_el)

    with threadpool_limits(1):
        concurrently(lambda: A @ B.T, ncores)
    concurrently(strips, ncores)
    # numba compiles the pairwise pass once per machine (cached on disk): not timed
    with dask.config.set({"ncdask.pairwise_jit": True}):
        g4 = np.arange(4)
        P.pair_moments(A[:4], A[:4], g4, g4, x[:4], x[:4], B[:4], B[:4],
                       stats=P.PAIR_STATS, riesz_s=1.0)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    runs = []
    with dask.config.set(scheduler="threads"):
        for _ in range(repeats):
            f = floors()  # just before each run: the machine's load drifts
            u0 = resource.getrusage(resource.RUSAGE_SELF)
            t0 = time.perf_counter()
            res = build()
            build_s = time.perf_counter() - t0
            vals = res.compute()
            wall = time.perf_counter() - t0
            u1 = resource.getrusage(resource.RUSAGE_SELF)
            cpu = u1.ru_utime - u0.ru_utime + u1.ru_stime - u0.ru_stime
            runs.append(dict(f, wall=wall, build=build_s, cpu=cpu,
                             ratio=wall / (f["gemm"] + f["elem"]),
                             ratio_cpu=cpu / (f["gemm_cpu"] + f["elem_cpu"])))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    def med_(key):
        return statistics.median(r[key] for r in runs)
    times = [r["wall"] for r in runs]
    med = statistics.median(times)
    print(json.dumps({
        "K": K, "D": D, "tile_size": T, "metrics": PAIRWISE, "repeats": repeats,
        "times_s": times, "median_s": med, "build_median_s": med_("build"),
        "gemm_rate_gflops": med_("rate") / 1e9, "gemm_floor_s": med_("gemm"),
        "elementwise_floor_s": med_("elem"), "ratio_to_floor": med_("ratio"),
        "ratio_to_gemm": statistics.median(r["wall"] / r["gemm"] for r in runs),
        "cpu_s": med_("cpu"), "cpu_floor_s": med_("gemm_cpu") + med_("elem_cpu"),
        "ratio_cpu_to_floor": med_("ratio_cpu"), "runs": runs,
        "peak_rss_mib": peak / 1024, "rss_before_compute_mib": rss_before / 1024,
        "cores": ncores, "load_avg_1min": os.getloadavg()[0],
        "dask": dask.__version__, "numpy": np.__version__,
        "pairwise_jit": pairwise_jit.enabled(T * T, A), "jit_mode": sys.argv[5],
        "nc2g_dist_mean": float(vals.nc2g_dist_mean),
    }))
    """
)


def run_one(K: int, D: int, repeats: int, tile: int, jit: str = "auto") -> dict:
    """Run one K in a fresh interpreter and return its report."""
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(K), str(D), str(repeats), str(tile), jit],
        capture_output=True, text=True, check=False,
    )
    if out.returncode:
        raise RuntimeError(f"K={K} failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ks", type=int, nargs="+", default=[32768, 131072])
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--tile-size", type=int, default=0, help="0: ncdask's default")
    p.add_argument("--jit", choices=["auto", "on", "off"], default="auto",
                   help="ncdask.pairwise_jit: off measures NumPy's passes")
    p.add_argument("--out", default=None, help="write the reports as JSON here")
    a = p.parse_args(argv)
    reports = []
    print(f"{'K':>7} {'tile':>6} {'median s':>9} {'build s':>7} {'GEMM s':>7} {'elem s':>7} "
          f"{'/floors':>7} {'/GEMM':>6} {'CPU/fl':>6} {'GF/s':>6} {'peak MiB':>8}")
    for K in a.ks:
        r = run_one(K, a.dim, a.repeats, a.tile_size, a.jit)
        reports.append(r)
        print(f"{r['K']:>7} {r['tile_size']:>6} {r['median_s']:>9.2f} {r['build_median_s']:>7.2f} "
              f"{r['gemm_floor_s']:>7.2f} {r['elementwise_floor_s']:>7.2f} "
              f"{r['ratio_to_floor']:>7.2f} {r['ratio_to_gemm']:>6.2f} "
              f"{r['ratio_cpu_to_floor']:>6.2f} "
              f"{r['gemm_rate_gflops']:>6.0f} {r['peak_rss_mib']:>8.0f}", flush=True)
        if a.out:  # after each K, so that a long run keeps what it measured
            os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
            with open(a.out, "w") as f:
                json.dump(reports, f, indent=2)


if __name__ == "__main__":
    main()
