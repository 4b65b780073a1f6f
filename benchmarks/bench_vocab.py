"""Vocabulary scale (issue 12): class statistics and metrics at K = 1e5, out of core in K×D.

Cases (each generates its store in a temporary folder and deletes it):

``stats``  K=100,000, D=2,048, N=200,000, float32 store (1.5 GiB):
    ``save_stats(class_stats(store))`` then ``measure(load_stats(...),
    weights=<the stored classifier, lazily>, metrics=[nc1_pinv, nc2_etf_err,
    nc3_dual_err])``. ``--weights`` picks how the classifier is held (``lazy``:
    dask over the store; ``numpy``: ``store.classifier()``, float64 in memory;
    ``float16``: read into a float16 NumPy array), one measure step each.
    Reported: time and peak RSS of each step, and the
    statistics' time over the sum of the I/O floor (``from_zarr(...).sum()``)
    and the GEMM floor (``2·N·D²`` at this machine's dgemm rate), all
    measured in the same run.
``half``   K=128,256, D=4,096, N=500,000, float16 store (3.8 GiB): the same steps.
``minority``  K=128,256, D=512, Zipf counts of N=1e6 labels, statistics saved to Zarr:
    ``cos_mean_by_frequency`` over 10 bins, then ``measure(coarsen(stats, class % 17))``
    (NC1, NC2 of 17 coarse classes); time and peak RSS of each.
``pairwise``  K=128,256, D=512: every pairwise metric (CDNV, the three
    GNC2 kernels, equinorm/equiangle/max-angle on the means and on W) from
    statistics saved to Zarr and reopened lazily; time over ``2·K²·D`` at the
    dgemm rate, peak RSS.

Labels follow a Zipf law (exponent 1.1) over the classes, as tokens do: a
few classes hold most rows and most classes are rare or absent. Class means
are a rank-64 code of the class id, so the store is generated without a K×D
array of means; the stored classifier is that code's K×D matrix.

Every step runs in a fresh subprocess; peak RSS is that process's
``ru_maxrss``. Usage::

    python benchmarks/bench_vocab.py                 # all four cases
    python benchmarks/bench_vocab.py --cases stats --scale 0.1   # a quick, smaller run
    python benchmarks/bench_vocab.py --cases stats --weights lazy numpy float16
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CASES = {
    "stats": dict(K=100_000, D=2048, N=200_000, dtype="float32"),
    "half": dict(K=128_256, D=4096, N=500_000, dtype="float16"),
}
PAIR = dict(K=128_256, D=512)
RANK = 64
BATCH = 8192


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _labels(rng: np.random.Generator, n: int, K: int) -> np.ndarray:
    """Zipf(1.1) ranks, folded into [0, K) and shuffled over the class ids."""
    ranks = (rng.zipf(1.1, size=n) - 1) % K
    return np.random.default_rng(1).permutation(K)[ranks]


def work_build(path: str, K: int, D: int, N: int, dtype: str) -> dict:
    import ncdask

    rng = np.random.default_rng(0)
    A = rng.standard_normal((RANK, D), dtype=np.float32) / np.sqrt(RANK)
    s = ncdask.EmbeddingStore.create(path, n_classes=K, dim=D, dtype=dtype, overwrite=True)
    t = time.perf_counter()
    with s.writer("train") as w:
        for s0 in range(0, N, BATCH):
            b = min(BATCH, N - s0)
            y = _labels(rng, b, K)
            # class mean: a rank-64 code of the class id (no K×D table of means)
            code = np.sin(np.outer(y + 1, np.arange(1, RANK + 1)) * 0.618).astype(np.float32)
            X = 4 * code @ A
            X += rng.standard_normal((b, D), dtype=np.float32)
            w.append(X, y)
    W = np.sin(np.outer(np.arange(1, K + 1), np.arange(1, RANK + 1)) * 0.618) @ A
    s.set_classifier(W.astype(np.float64))
    return {"seconds": time.perf_counter() - t, "chunk_rows": s.chunk_rows,
            "gib": sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file()) / 2**30}


def work_io(path: str) -> dict:
    import dask.array as da

    x = da.from_zarr(str(Path(path) / "train" / "embeddings"))
    t = time.perf_counter()
    float(x.sum(dtype=np.float64).compute())
    return {"seconds": time.perf_counter() - t, "peak_mib": _peak_mib()}


def work_gemm(D: int) -> dict:
    rng = np.random.default_rng(0)
    Xc = rng.standard_normal((4096, D))
    Xc.T @ Xc
    ts = []
    for _ in range(5):
        t = time.perf_counter()
        Xc.T @ Xc
        ts.append(time.perf_counter() - t)
    return {"dgemm": 2 * 4096 * D * D / statistics.median(ts)}


def work_stats(path: str, out: str) -> dict:
    import warnings

    import ncdask

    s = ncdask.EmbeddingStore.open(path)
    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # empty classes: most of a Zipf vocabulary
        st = ncdask.class_stats(s, "train")
        ncdask.save_stats(st, out)
    return {"seconds": time.perf_counter() - t, "peak_mib": _peak_mib(),
            "n_empty": len(st.attrs["empty_classes"])}


def work_measure(path: str, out: str, weights: str = "lazy") -> dict:
    import dask.array as da

    import ncdask

    s = ncdask.EmbeddingStore.open(path)
    W, b = s.classifier(lazy=weights != "numpy")
    if weights == "float16":  # in place, chunk by chunk: no float64 copy before measure
        W16 = np.empty(W.shape, np.float16)
        da.store(W.astype(np.float16), W16, lock=False, scheduler="sync")
        W = W16
    w_gib = W.nbytes / 2**30
    t = time.perf_counter()
    st = ncdask.load_stats(out)
    res = ncdask.measure(st, weights=W, metrics=["nc1_pinv", "nc2_etf_err", "nc3_dual_err"])
    res = res.compute()
    return {"seconds": time.perf_counter() - t, "peak_mib": _peak_mib(), "weights": weights,
            "w_gib": w_gib, **{k: float(res[k]) for k in res.data_vars}}


PAIRWISE = ["nc1_cdnv", "nc2g_dist", "nc2g_log", "nc2g_riesz", "nc2_equinorm",
            "nc2_equiangle", "nc2_max_angle", "nc2w_equinorm", "nc2w_max_angle"]


def work_pair_build(out: str, K: int, D: int) -> dict:
    """Statistics of a K-class problem written tile by tile (no K×D array in memory)."""
    import dask.array as da
    import xarray as xr

    import ncdask

    T = 4096
    rng = da.random.default_rng(0)
    M = rng.standard_normal((K, D), chunks=(T, D))
    W = rng.standard_normal((K, D), chunks=(T, D))
    st = xr.Dataset(
        {"counts": ("class", np.full(K, 10, dtype=np.int64)),
         "means": (("class", "feature"), M),
         "global_mean": ("feature", M.mean(axis=0)),
         "within_cov": (("feature", "feature_"), 0.1 * np.eye(D)),
         "var_norms": ("class", da.full(K, 0.1 * D, chunks=T)),
         "n_samples": ((), np.int64(10 * K))},
        coords={"class": np.arange(K), "feature": np.arange(D), "feature_": np.arange(D)},
        attrs={"n_classes": K, "dim": D, "global_mean": "unweighted", "empty_classes": []},
    )
    ncdask.save_stats(st, out)
    xr.Dataset({"W": (("class", "feature"), W)}).to_zarr(out + "-W", mode="w-",
                                                           consolidated=False)
    return {"peak_mib": _peak_mib()}


def work_pair(out: str) -> dict:
    import dask.array as da

    import ncdask

    st = ncdask.load_stats(out)
    W = da.from_zarr(out + "-W/W")
    t = time.perf_counter()
    res = ncdask.measure(st, weights=W, metrics=PAIRWISE).compute()
    return {"seconds": time.perf_counter() - t, "peak_mib": _peak_mib(),
            **{k: float(res[k]) for k in res.data_vars if res[k].ndim == 0}}


MINORITY = dict(K=128_256, D=512, N=1_000_000, bins=10, groups=17)


def work_minority_build(out: str, K: int, D: int, N: int) -> dict:
    """Statistics with Zipf class counts from N labels (no samples: the metrics read only
    the statistics), written tile by tile: random means plus a shared direction weighted
    30/√n_k (rare classes pulled together: minority collapse), NaN for empty classes."""
    import dask.array as da
    import xarray as xr

    import ncdask

    counts = np.bincount(_labels(np.random.default_rng(0), N, K), minlength=K)
    M = da.random.default_rng(0).standard_normal((K, D), chunks=(4096, D))
    pull = da.from_array(30 / np.sqrt(np.maximum(counts, 1)), chunks=4096)
    M = M + pull[:, None] * np.eye(1, D)
    M = da.where(da.from_array(counts > 0, chunks=4096)[:, None], M, np.nan)
    st = xr.Dataset(
        {"counts": ("class", counts), "means": (("class", "feature"), M),
         "global_mean": ("feature", da.nanmean(M, axis=0)),
         "within_cov": (("feature", "feature_"), 0.1 * np.eye(D)),
         "var_norms": ("class", da.where(da.from_array(counts > 0, chunks=4096), 0.1 * D,
                                         np.nan)),
         "n_samples": ((), np.int64(N))},
        coords={"class": np.arange(K), "feature": np.arange(D), "feature_": np.arange(D)},
        attrs={"n_classes": K, "dim": D, "global_mean": "unweighted",
               "empty_classes": np.nonzero(counts == 0)[0].tolist()},
    )
    ncdask.save_stats(st, out)
    return {"n_empty": int((counts == 0).sum())}


def work_minority(out: str, bins: int) -> dict:
    """``cos_mean_by_frequency`` (its graph alone) from the saved statistics."""
    import ncdask

    st = ncdask.load_stats(out)
    t = time.perf_counter()
    res = ncdask.measure(st, by_frequency=bins, metrics="cos_mean_by_frequency")
    cos = res.cos_mean_by_frequency.compute()
    return {"seconds": time.perf_counter() - t, "peak_mib": _peak_mib(),
            "cos_mean_by_frequency": cos.values.tolist(),
            "bin_max_count": res.bin_max_count.values.tolist()}


def work_coarsen(out: str, groups: int) -> dict:
    """``measure(coarsen(stats, class % groups))``: NC1 and NC2 of the coarse classes."""
    import ncdask

    st = ncdask.load_stats(out)
    t = time.perf_counter()
    coarse = ncdask.coarsen(st, np.arange(st.sizes["class"]) % groups)
    res = ncdask.measure(coarse, metrics=["nc1_pinv", "nc2_etf_err"]).compute()
    return {"seconds": time.perf_counter() - t, "peak_mib": _peak_mib(),
            **{k: float(res[k]) for k in res.data_vars}}


def run_minority(scale: float, tmp: Path) -> dict:
    c = dict(MINORITY)
    c["K"], c["N"] = int(c["K"] * scale), int(c["N"] * scale)
    out = str(tmp / "minority-stats.zarr")
    try:
        build = sub("minority_build", out, str(c["K"]), str(c["D"]), str(c["N"]))
        cos = sub("minority", out, str(c["bins"]))
        coarse = sub("coarsen", out, str(c["groups"]))
    finally:
        shutil.rmtree(out, ignore_errors=True)
    return {"case": "minority", **c, "n_empty": build["n_empty"],
            "cos_mean_s": cos["seconds"], "cos_mean_peak_mib": cos["peak_mib"],
            "cos_mean_by_frequency": cos["cos_mean_by_frequency"],
            "bin_max_count": cos["bin_max_count"], "coarsen_measure_s": coarse["seconds"],
            "coarsen_peak_mib": coarse["peak_mib"],
            "coarse_metrics": {k: v for k, v in coarse.items() if k.startswith("nc")}}


def commit() -> str:
    """The commit of the ncdask checkout measured (``+`` when ``ncdask/`` has changes)."""
    import ncdask

    git = ["git", "-C", str(Path(ncdask.__file__).parent)]
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True).stdout.strip()
    dirty = subprocess.run([*git, "status", "--porcelain", "."], capture_output=True,
                           text=True).stdout.strip()
    return head + ("+" if dirty else "")


def sub(*args: str) -> dict:
    r = subprocess.run([sys.executable, __file__, "--work", *args], capture_output=True,
                       text=True)
    if r.returncode:
        sys.stderr.write(r.stderr)
        raise SystemExit(f"step {args[0]} failed")
    return json.loads(r.stdout.strip().splitlines()[-1])


def run_case(name: str, scale: float, tmp: Path, weights: list[str]) -> dict:
    c = dict(CASES[name])
    c["K"], c["N"] = int(c["K"] * scale), int(c["N"] * scale)
    path, out = str(tmp / f"{name}.zarr"), str(tmp / f"{name}-stats.zarr")
    try:
        build = sub("build", path, str(c["K"]), str(c["D"]), str(c["N"]), c["dtype"])
        io = [sub("io", path) for _ in range(3)]
        gemm = sub("gemm", str(c["D"]))
        stats_ = sub("stats", path, out)
        meas = [sub("measure", path, out, w) for w in weights]
    finally:
        shutil.rmtree(path, ignore_errors=True)
        shutil.rmtree(out, ignore_errors=True)
    t_io = statistics.median(x["seconds"] for x in io)
    t_gemm = 2 * c["N"] * c["D"] ** 2 / gemm["dgemm"]
    return {"case": name, **c, "store_gib": build["gib"], "io_s": t_io, "gemm_s": t_gemm,
            "dgemm_gflops": gemm["dgemm"] / 1e9, "stats_s": stats_["seconds"],
            "stats_peak_mib": stats_["peak_mib"], "n_empty": stats_["n_empty"],
            "stats_over_floors": stats_["seconds"] / (t_io + t_gemm),
            "measure_s": meas[0]["seconds"], "measure_peak_mib": meas[0]["peak_mib"],
            "measure": [{k: v for k, v in m.items() if k in ("weights", "w_gib", "seconds",
                                                            "peak_mib") or k.startswith("nc")}
                        for m in meas],
            "metrics": {k: v for k, v in meas[0].items() if k.startswith("nc")}}


def run_pairwise(scale: float, tmp: Path) -> dict:
    K, D = int(PAIR["K"] * scale), PAIR["D"]
    out = str(tmp / "pair-stats.zarr")
    try:
        sub("pair_build", out, str(K), str(D))
        gemm = sub("gemm", str(D))
        res = sub("pair", out)
    finally:
        shutil.rmtree(out, ignore_errors=True)
        shutil.rmtree(out + "-W", ignore_errors=True)
    floor = 2 * K * K * D / gemm["dgemm"]
    return {"case": "pairwise", "K": K, "D": D, "seconds": res["seconds"],
            "gemm_floor_s": floor, "over_floor": res["seconds"] / floor,
            "peak_mib": res["peak_mib"], "dgemm_gflops": gemm["dgemm"] / 1e9}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--work":
        step, *a = sys.argv[2:]
        fn = {"build": lambda: work_build(a[0], int(a[1]), int(a[2]), int(a[3]), a[4]),
              "io": lambda: work_io(a[0]), "gemm": lambda: work_gemm(int(a[0])),
              "stats": lambda: work_stats(a[0], a[1]), "measure": lambda: work_measure(*a),
              "pair_build": lambda: work_pair_build(a[0], int(a[1]), int(a[2])),
              "pair": lambda: work_pair(a[0]),
              "minority_build": lambda: work_minority_build(a[0], *map(int, a[1:])),
              "minority": lambda: work_minority(a[0], int(a[1])),
              "coarsen": lambda: work_coarsen(a[0], int(a[1]))}[step]
        print(json.dumps(fn()))
        return
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", nargs="+", default=["stats", "half", "pairwise", "minority"],
                   choices=["stats", "half", "pairwise", "minority"])
    p.add_argument("--weights", nargs="+", default=["lazy"], choices=["lazy", "numpy", "float16"],
                   help="how measure gets the classifier: dask, float64 NumPy, float16 NumPy")
    p.add_argument("--scale", type=float, default=1.0, help="multiply K and N (quick runs)")
    p.add_argument("--tmp", default=None, help="folder for the generated stores")
    p.add_argument("--out", default=None, help="append the reports (JSON lines) here")
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="ncdask-vocab-", dir=args.tmp))
    try:
        for case in args.cases:
            rep = (run_pairwise(args.scale, tmp) if case == "pairwise" else
                   run_minority(args.scale, tmp) if case == "minority" else
                   run_case(case, args.scale, tmp, args.weights))
            rep["commit"] = commit()
            print(json.dumps(rep), flush=True)
            if args.out:
                with open(args.out, "a") as f:
                    f.write(json.dumps(rep) + "\n")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    main()
