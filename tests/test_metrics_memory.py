"""Pairwise metrics never hold the K×K grid: peak memory at K = 16,000 in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    """
    import json, resource, time
    import dask.array as da
    import numpy as np
    import xarray as xr
    from ncdask.metrics import measure

    K, D = 16_000, 64
    rng = np.random.default_rng(0)
    means = rng.normal(size=(K, D))
    stats = xr.Dataset(
        {
            "counts": ("class", np.full(K, 10, dtype=np.int64)),
            "means": (("class", "feature"), da.from_array(means, chunks=(4096, -1))),
            "global_mean": ("feature", means.mean(0)),
            "within_cov": (("feature", "feature_"), np.eye(D)),
            "var_norms": ("class", da.from_array(rng.random(K), chunks=4096)),
        },
        coords={"class": np.arange(K)},
    )
    def status(key):
        with open("/proc/self/status") as f:
            return next(int(ln.split()[1]) for ln in f if ln.startswith(key + ":"))

    # ru_maxrss counts the pages of the process we were forked from (a pytest that
    # has grown to 1 GiB late in the suite): on Linux, reset the peak and read VmHWM
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        peak = lambda: status("VmHWM")
        before = status("VmRSS")
    except OSError:
        peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        before = peak()
    t0 = time.perf_counter()
    res = measure(stats, metrics=["nc1_cdnv", "nc2g_dist", "nc2g_log", "nc2g_riesz"]).compute()
    print(json.dumps({
        "seconds": time.perf_counter() - t0,
        "rss_before_kib": before,
        "peak_rss_kib": peak(),
        "tile_size": res.attrs["tile_size"],
        "values": {k: float(v) for k, v in res.data_vars.items()},
    }))
    """
)


@pytest.mark.slow
@pytest.mark.xdist_group("pairwise_jit")  # its tiles take the compiled pass: compile it once
def test_pairwise_metrics_peak_rss_at_16000_classes():
    env = dict(os.environ)
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    rep = json.loads(out.stdout.strip().splitlines()[-1])
    peak_gib = rep["peak_rss_kib"] / 2**20
    # the float32 K×K grid alone would be 0.95 GiB (float64: 1.9 GiB); measured
    # peak 0.28 GiB, of which 0.13 GiB is the interpreter and libraries (K=30,000,
    # as this test once ran, peaks at 0.30 GiB and takes 3.5x as long)
    assert peak_gib < 0.6, rep
    vals = rep["values"]
    assert all(v == v and abs(v) < float("inf") for v in vals.values()), vals
    # 64-dim random directions: pairwise distances near sqrt(2)
    assert abs(vals["nc2g_dist_mean"] - 2**0.5) < 0.05


# --------------------------------------------------------------------------- in-memory weights

W_ONLY = ["nc2w_etf_err", "nc2w_equinorm", "nc2w_max_angle", "nc3_dual_err", "nc3u_uni_dual",
          "nc3_papyan", "nc3_bias", "nc0_w_sum", "erank_w", "similarities", "similarities_cos",
          "distance_norms"]


def _rows_stats(K, D, seed=0, chunks=64):
    """Statistics of K classes in class chunks (class 1 empty), their means and W."""
    import dask.array as da
    import numpy as np
    import xarray as xr

    rng = np.random.default_rng(seed)
    means = rng.normal(size=(K, D))
    counts = np.full(K, 10, dtype=np.int64)
    counts[1] = 0
    stats = xr.Dataset(
        {"counts": ("class", counts),
         "means": (("class", "feature"), da.from_array(means, chunks=(chunks, -1))),
         "global_mean": ("feature", means[counts > 0].mean(0)),
         "within_cov": (("feature", "feature_"), np.eye(D)),
         "var_norms": ("class", da.from_array(rng.random(K), chunks=chunks)),
         "n_samples": ((), np.int64(counts.sum()))},
        coords={"class": np.arange(K)}, attrs={"empty_classes": [1]})
    W = means + 0.3 * rng.normal(size=(K, D))
    return stats, W, rng.normal(size=K)


@pytest.mark.parametrize("tile_size", [1, 7, 20])  # one class, uneven (7, 7, 6), all K
@pytest.mark.parametrize("dtype", ["float64", "float32", "float16"])
def test_in_memory_weights_measure_as_lazy_ones(tile_size, dtype):
    """NumPy, torch and dask weights of any dtype: the same figures at every tile size."""
    import dask.array as da
    import numpy as np

    from ncdask.metrics import measure

    # K=20 in class chunks of 9 and W chunks of 11: neither lines up with a tile
    stats, W, b = _rows_stats(20, 6, chunks=9)
    W = W.astype(dtype)
    kw = dict(tile_size=tile_size, metrics=W_ONLY)
    lazy = measure(stats, weights=da.from_array(W, chunks=(11, -1)),
                   bias=da.from_array(b, chunks=5), **kw).compute()
    inputs = [W]
    if dtype != "float16":
        torch = pytest.importorskip("torch")
        inputs.append(torch.from_numpy(W))
    for w in inputs:
        got = measure(stats, weights=w, bias=b, **kw).compute()
        assert sorted(got.data_vars) == sorted(lazy.data_vars) == sorted(W_ONLY)
        for k in W_ONLY:
            np.testing.assert_allclose(got[k].values, lazy[k].values, rtol=1e-13, atol=1e-15,
                                       err_msg=f"{k} {type(w).__name__}")


def _traced_peak(fn):
    import gc
    import tracemalloc

    gc.collect()
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        fn()
        return tracemalloc.get_traced_memory()[1] - start
    finally:
        tracemalloc.stop()


def test_in_memory_weights_peak_as_lazy_ones_and_graph_holds_w_once():
    """An in-memory float32 W costs no more than a lazy one (never a whole float64 copy,
    which alone would be twice W's bytes), and its graph holds W's bytes once."""
    import pickle

    import dask
    import dask.array as da
    import numpy as np

    from ncdask.metrics import measure

    K, D, T = 3000, 128, 200
    stats, W, _ = _rows_stats(K, D, chunks=T)
    W = W.astype(np.float32)
    names = ["nc2w_etf_err", "nc3_dual_err", "nc0_w_sum", "similarities"]

    def run(w):
        with dask.config.set(scheduler="synchronous"):
            measure(stats, weights=w, tile_size=T, metrics=names).compute()

    run(W)  # first runs allocate once for good (imports, caches)
    lazy_w = da.from_array(W, chunks=(T, -1))  # (dask copies W here, outside the peak)
    lazy = _traced_peak(lambda: run(lazy_w))
    eager = _traced_peak(lambda: run(W))
    assert eager <= lazy + W.nbytes // 4, (eager, lazy, W.nbytes)

    res = measure(stats, weights=W, tile_size=T, metrics=names)
    graph = dict(res.__dask_graph__())
    stats_bytes = sum(v.nbytes for v in stats.data_vars.values())
    size = len(pickle.dumps(graph, protocol=5))  # what a distributed scheduler would ship
    assert W.nbytes < size < stats_bytes + W.nbytes + 2**20, (size, stats_bytes, W.nbytes)



def test_class_tile_fold_reads_in_step_with_the_folds(monkeypatch):
    """Left free, dask reads the tiles of M and gathers those of an in-memory W ahead of the
    folds (every tile of one chain first: 0.9 GiB of them at K=100k, D=2048); throttled,
    every block a fold of batch b takes is made after the folds of batch b - READ_LAG, and
    the figures are those of the free fold."""
    import dask
    from dask.core import get_dependencies

    from ncdask.graph import _reduce
    from ncdask.metrics import measure

    K, D, T = 400, 8, 20
    stats, W, _ = _rows_stats(K, D, chunks=T)
    kw = dict(weights=W, tile_size=T, metrics=["nc2w_etf_err", "nc3_dual_err"])
    free = measure(stats, **kw).compute()
    monkeypatch.setattr(_reduce, "THROTTLE_BYTES", 0, raising=False)
    res = measure(stats, **kw)
    dsk = dict(res.__dask_graph__())
    folds = {k[1]: k for k in dsk if isinstance(k, tuple) and str(k[0]).endswith("-fold")}
    C = _reduce.n_chains(len(folds))

    def ancestors(key):
        seen, stack = set(), [key]
        while stack:
            for d in get_dependencies(dsk, stack.pop()):
                if d not in seen:
                    seen.add(d)
                    stack.append(d)
        return seen

    lag = _reduce.READ_LAG
    for i in range(lag * C, len(folds)):
        first_waited = (i // C - lag) * C
        for blk in set(get_dependencies(dsk, folds[i])) - {folds.get(i - C)}:
            assert folds[first_waited] in ancestors(blk), (i, blk)
    with dask.config.set(scheduler="threads"):
        got = res.compute()
    for k in kw["metrics"]:
        assert float(got[k]) == float(free[k]), k
