"""ncdask on one GPU against its CPU path and the card's own floors, in one call.

Everything is measured in the same process on the same machine, so the GPU
and CPU figures and the card's floors are comparable:

``card``
    name (``cupy.cuda.runtime.getDeviceProperties``), memory, the measured
    dgemm/sgemm rate (median of ``cupy.matmul`` on 8192² operands) and the
    measured memory bandwidth (median device-to-device copy of 2 GiB,
    counting read + write).
``stats_device``
    ``class_stats(...).compute()`` over N=10^7, D=1024, K=1000 float32
    embeddings (``x = mu[y] + 0.5 randn``) generated on the device as a
    CuPy-backed dask array and persisted there first (41 GB), float64
    accumulation, default threaded scheduler. Floors: the dgemm time of the
    scatter GEMM (``2 N D²`` flops) and the time to read the input once.
    The CPU path runs the same code on NumPy blocks of a smaller N and is
    extrapolated linearly in N (said so in the output).
``stats_store``
    The same pass over a Zarr store on local disk (``EmbeddingStore``,
    N=10^6 by default, 4 GB, Blosc-compressed, written just before, so reads
    come from the page cache): ``store.split("train", backend="cupy")`` on the
    GPU against ``store.split("train")`` on the CPU, both full size; their
    results are compared.
``pairwise``
    ``measure`` of every pairwise metric (CDNV, equiangularity, max-angle,
    the GNC2 kernels and the classifier's max-angle) at K=10^5, D=256 with
    means on the device; the CPU path at K=10^4 is extrapolated by K².
    Floor: the GEMMs (``2·K²/2·D`` flops for means and for weights).
``class_sums``
    One chunk (2^17×1024 float64, K=1000): the kernel's cuSPARSE one-hot
    product against ``cupyx.scatter_add`` and a dense one-hot GEMM.

    python benchmarks/bench_gpu.py                # on the GPU machine, ~2-4 min
    python benchmarks/bench_gpu.py --small        # tiny sizes; NumPy stands in without CuPy
    python benchmarks/bench_gpu.py --dry-run      # the plan and an environment check only

Without CuPy or a CUDA device the full run and ``--dry-run`` exit with
status 2 and say why; ``--small`` then runs every step with NumPy standing in
for CuPy, which checks the script itself (its "GPU" figures are then CPU
figures and are labelled so).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # the working tree's ncdask, also without an install

FULL = dict(
    n_dev=10_000_000,
    n_cpu=200_000,
    dim=1024,
    classes=1000,
    rows=1 << 17,
    n_store=1_000_000,
    store_rows=1 << 16,
    pair_k=100_000,
    pair_k_cpu=10_000,
    pair_dim=256,
    pair_tile=8192,
    sums_rows=1 << 17,
    gemm_n=8192,
    copy_bytes=2 << 30,
    reps=2,
)
SMALL = dict(
    n_dev=40_000,
    n_cpu=10_000,
    dim=64,
    classes=50,
    rows=8192,
    n_store=20_000,
    store_rows=4096,
    pair_k=1500,
    pair_k_cpu=500,
    pair_dim=32,
    pair_tile=512,
    sums_rows=8192,
    gemm_n=512,
    copy_bytes=16 << 20,
    reps=1,
)


class NoGPU(RuntimeError):
    """CuPy or a CUDA device is missing."""


# --------------------------------------------------------------------------- device


class Device:
    """The array module under test and how to wait for it (NumPy stands in for ``--small``)."""

    def __init__(self, *, allow_stand_in: bool) -> None:
        try:
            import cupy

            n = cupy.cuda.runtime.getDeviceCount()
            if n < 1:
                raise NoGPU("CuPy finds no CUDA device")
        except ImportError as e:
            if not allow_stand_in:
                raise NoGPU(f"CuPy is not installed ({e})") from e
            cupy = None
        except NoGPU:
            if not allow_stand_in:
                raise
            cupy = None
        except Exception as e:  # CUDARuntimeError: no driver / no device
            if not allow_stand_in:
                raise NoGPU(f"CuPy cannot reach a CUDA device: {e}") from e
            cupy = None
        self.xp = cupy if cupy is not None else np
        self.real = cupy is not None
        if self.real:
            props = cupy.cuda.runtime.getDeviceProperties(0)
            name = props["name"]
            self.name = name.decode() if isinstance(name, bytes) else str(name)
            self.memory_gib = props["totalGlobalMem"] / 2**30
        else:
            self.name = f"NumPy stand-in on the CPU ({platform.processor() or platform.machine()})"
            self.memory_gib = float("nan")

    def sync(self) -> None:
        if self.real:
            self.xp.cuda.Device().synchronize()

    def to_host(self, a: Any) -> np.ndarray:
        return a.get() if self.real and hasattr(a, "get") else np.asarray(a)

    def free_memory(self) -> None:
        if self.real:
            self.xp.get_default_memory_pool().free_all_blocks()


def _timed(fn, dev: Device, reps: int = 1) -> tuple[float, Any]:
    """Median wall time of ``fn()`` over ``reps`` runs (device synchronised), and its result."""
    times, out = [], None
    for _ in range(max(1, reps)):
        dev.sync()
        t0 = time.perf_counter()
        out = fn()
        dev.sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def card_rates(dev: Device, cfg: dict) -> dict:
    """Measured GEMM rates (float64, float32) and copy bandwidth of the device under test."""
    xp, n = dev.xp, cfg["gemm_n"]
    out = {}
    for dt in ("float64", "float32"):
        a = xp.ones((n, n), dtype=dt)
        b = xp.ones((n, n), dtype=dt)
        xp.matmul(a, b)  # warm-up (cuBLAS handle, workspace)
        t, _ = _timed(lambda a=a, b=b: xp.matmul(a, b), dev, reps=5)
        out[f"gemm_{dt}_tflops"] = 2.0 * n**3 / t / 1e12
    m = cfg["copy_bytes"] // 8
    src = xp.ones(m, dtype=np.float64)
    dst = xp.empty_like(src)
    dst[...] = src
    t, _ = _timed(lambda: dst.__setitem__(Ellipsis, src), dev, reps=5)
    out["copy_bandwidth_gbs"] = 2.0 * m * 8 / t / 1e9  # read + write
    return out


# --------------------------------------------------------------------------- data


def _normal(rs: Any, shape: tuple[int, ...]) -> Any:
    try:
        return rs.standard_normal(shape, dtype=np.float32)
    except TypeError:  # NumPy's legacy RandomState has no dtype argument
        return rs.standard_normal(shape).astype(np.float32)


def embeddings(xp: Any, n: int, dim: int, k: int, rows: int, seed: int = 0):
    """Lazy ``(X, y)``: dask arrays of ``xp`` blocks, ``x = mu[y] + 0.5 randn``, made per block."""
    import dask.array as da

    means = 3.0 * _normal(xp.random.RandomState(seed), (k, dim))

    def labels_block(block_info=None):
        info = block_info[None]
        rs = xp.random.RandomState(seed + 1 + info["chunk-location"][0])
        return rs.randint(0, k, size=info["chunk-shape"][0]).astype(np.int64)

    def x_block(block_info=None):
        info = block_info[None]
        rs = xp.random.RandomState(seed + 1 + info["chunk-location"][0])
        n_b = info["chunk-shape"][0]
        y = rs.randint(0, k, size=n_b).astype(np.int64)
        x = _normal(rs, (n_b, dim))
        x *= 0.5
        x += means[y]
        return x

    chunks = (tuple(min(rows, n - s) for s in range(0, n, rows)),)
    y = da.map_blocks(
        labels_block, chunks=chunks, dtype=np.int64, meta=xp.empty((0,), dtype=np.int64)
    )
    X = da.map_blocks(
        x_block,
        chunks=chunks + ((dim,),),
        dtype=np.float32,
        meta=xp.empty((0, 0), dtype=np.float32),
    )
    return X, y


def _split_dataset(X, y, k: int):
    import xarray as xr

    return xr.Dataset(
        {"embeddings": (("sample", "feature"), X), "labels": (("sample",), y)},
        attrs={"n_classes": k},
    )


# --------------------------------------------------------------------------- measurements


def stats_pass(xp: Any, dev: Device, n: int, cfg: dict, reps: int) -> dict:
    """One-pass class statistics over ``n`` generated rows held in ``xp`` memory."""
    import dask

    import ncdask

    X, y = embeddings(xp, n, cfg["dim"], cfg["classes"], cfg["rows"])
    t0 = time.perf_counter()
    X, y = dask.persist(X, y)
    dev.sync()
    gen = time.perf_counter() - t0
    ds = _split_dataset(X, y, cfg["classes"])
    # warm-up on one block: cuBLAS/cuSPARSE handles and CuPy's kernel compilation
    head = _split_dataset(X[: cfg["rows"]], y[: cfg["rows"]], cfg["classes"])
    ncdask.class_stats(head).compute()
    t, st = _timed(lambda: ncdask.class_stats(ds).compute(), dev, reps)
    out = {
        "n": n,
        "seconds": t,
        "generate_seconds": gen,
        "blocks": len(X.chunks[0]),
        "trace_within_cov": float(np.trace(dev.to_host(st["within_cov"].data))),
    }
    return out


def write_store(path: Path, dev: Device, cfg: dict):
    """An EmbeddingStore on local disk with ``n_store`` generated rows (made on the device)."""
    import ncdask

    n, dim, k, rows = cfg["n_store"], cfg["dim"], cfg["classes"], cfg["store_rows"]
    s = ncdask.EmbeddingStore.create(
        str(path), n_classes=k, dim=dim, chunk_rows=rows, dtype="float32", overwrite=True
    )
    X, y = embeddings(dev.xp, n, dim, k, rows, seed=7)
    t0 = time.perf_counter()
    with s.writer("train") as w:
        for xb, yb in zip(X.to_delayed().ravel(), y.to_delayed().ravel(), strict=True):
            w.append(dev.to_host(xb.compute()), dev.to_host(yb.compute()))
    return s, time.perf_counter() - t0


def store_pass(s: Any, backend: Any, dev: Device, reps: int) -> tuple[float, Any]:
    import ncdask

    def run():
        return ncdask.class_stats(s.split("train", backend=backend)).compute()

    return _timed(run, dev, reps)


def pairwise_stats(xp: Any, k: int, dim: int, tile: int, seed: int = 3):
    """Class statistics of ``k`` random classes with means (and weights) in ``xp`` memory."""
    import dask.array as da
    import xarray as xr

    rs = xp.random.RandomState(seed)
    means = rs.standard_normal((k, dim))
    W = means + 0.1 * rs.standard_normal((k, dim))
    v = rs.random_sample(k) + 0.5

    def arr(a, chunks):
        return da.from_array(a, chunks=chunks, asarray=False)

    stats = xr.Dataset(
        {
            "counts": ("class", np.full(k, 100, dtype=np.int64)),
            "means": (("class", "feature"), arr(means, (tile, -1))),
            "global_mean": ("feature", arr(means.mean(axis=0), -1)),
            "within_cov": (("feature", "feature_"), arr(xp.eye(dim), -1)),
            "var_norms": ("class", arr(v, tile)),
        },
        coords={"class": np.arange(k)},
    )
    return stats, W


PAIR_METRICS = ["nc1_cdnv", "nc2_equiangle", "nc2_max_angle", "nc2g", "nc2w_max_angle"]


def pairwise_pass(xp: Any, dev: Device, k: int, cfg: dict, reps: int) -> dict:
    from ncdask.metrics import measure

    dim, tile = cfg["pair_dim"], min(cfg["pair_tile"], k)
    stats, W = pairwise_stats(xp, k, dim, tile)

    def run():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Riesz range warnings at S = D-2
            return measure(stats, weights=W, metrics=PAIR_METRICS, tile_size=tile).compute()

    small, _ = pairwise_stats(xp, min(k, 2 * tile), dim, tile)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        measure(
            small, weights=W[: small.sizes["class"]], metrics=PAIR_METRICS, tile_size=tile
        ).compute()  # warm-up
    t, res = _timed(run, dev, reps)
    out = {
        "k": k,
        "dim": dim,
        "tile_size": tile,
        "pairs": k * (k - 1) // 2,
        "seconds": t,
        "nc2g_dist_mean": float(dev.to_host(res["nc2g_dist_mean"].data)),
    }
    return out


def class_sums_variants(dev: Device, cfg: dict) -> dict:
    """One chunk's per-class sums three ways (device only)."""
    from ncdask.kernels.stats import class_sums

    xp, n, dim, k = dev.xp, cfg["sums_rows"], cfg["dim"], cfg["classes"]
    rs = xp.random.RandomState(11)
    X = rs.standard_normal((n, dim))
    y = rs.randint(0, k, size=n).astype(np.int64)
    variants = {"kernel (sparse one-hot)": lambda: class_sums(X, y, k)}
    if dev.real:
        import cupyx

        def scatter():
            out = xp.zeros((k, dim), dtype=X.dtype)
            cupyx.scatter_add(out, y, X)
            return out

        variants["cupyx.scatter_add"] = scatter
    variants["dense one-hot GEMM"] = lambda: (
        (y[None, :] == xp.arange(k)[:, None]).astype(X.dtype) @ X
    )
    ref = dev.to_host(variants["kernel (sparse one-hot)"]())
    out = {}
    for name, fn in variants.items():
        fn()
        t, r = _timed(fn, dev, reps=3)
        out[name] = {"seconds": t, "max_abs_diff": float(np.abs(dev.to_host(r) - ref).max())}
    return out


# --------------------------------------------------------------------------- report


def _fmt(x: float, unit: str = "s") -> str:
    return f"{x:.3g} {unit}"


def run(cfg: dict, dev: Device, workdir: Path, *, small: bool) -> dict:
    import dask
    import zarr

    import ncdask

    reps = cfg["reps"]
    gpu = "GPU" if dev.real else "stand-in"
    report: dict[str, Any] = {
        "card": {"name": dev.name, "memory_gib": dev.memory_gib, "real_gpu": dev.real},
        "host": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "numpy": np.__version__,
            "dask": dask.__version__,
            "zarr": zarr.__version__,
            "ncdask": ncdask.__version__,
        },
        "mode": "small" if small else "full",
        "sizes": cfg,
    }
    if dev.real:
        report["host"]["cupy"] = dev.xp.__version__
    print(f"device under test: {dev.name}", flush=True)
    rates = card_rates(dev, cfg)
    report["card"].update(rates)
    dgemm, bw = rates["gemm_float64_tflops"] * 1e12, rates["copy_bandwidth_gbs"] * 1e9
    print(
        f"  dgemm {rates['gemm_float64_tflops']:.3g} TFLOP/s, sgemm "
        f"{rates['gemm_float32_tflops']:.3g} TFLOP/s, "
        f"copy {rates['copy_bandwidth_gbs']:.4g} GB/s",
        flush=True,
    )
    dev.free_memory()

    # ---- stats pass, data in device memory
    n, dim, k = cfg["n_dev"], cfg["dim"], cfg["classes"]
    print(f"stats pass, N={n:.3g} D={dim} K={k} in {gpu} memory ...", flush=True)
    g = stats_pass(dev.xp, dev, n, cfg, reps)
    dev.free_memory()
    c = stats_pass(np, dev, cfg["n_cpu"], cfg, reps)
    c_ext = c["seconds"] * n / cfg["n_cpu"]
    flops = 2.0 * n * dim * dim
    g.update(gemm_floor_s=flops / dgemm, read_floor_s=n * dim * 4 / bw)
    g.update(
        gemm_fraction=g["gemm_floor_s"] / g["seconds"],
        bandwidth_fraction=g["read_floor_s"] / g["seconds"],
    )
    report["stats_device"] = {
        "gpu": g,
        "cpu": c,
        "cpu_extrapolated_s": c_ext,
        "cpu_note": f"CPU path measured at N={cfg['n_cpu']} and extrapolated linearly to N={n}",
        "speedup_vs_cpu": c_ext / g["seconds"],
    }
    print(
        f"  {gpu}: {_fmt(g['seconds'])} ({g['gemm_fraction']:.1%} of dgemm rate, "
        f"{g['bandwidth_fraction']:.1%} of copy bandwidth for one read); CPU "
        f"{_fmt(c['seconds'])} at N={cfg['n_cpu']:.3g} -> {_fmt(c_ext)} extrapolated; "
        f"x{c_ext / g['seconds']:.3g}",
        flush=True,
    )

    # ---- stats pass over a store on local disk
    print(f"stats pass over a Zarr store on local disk, N={cfg['n_store']:.3g} ...", flush=True)
    store, t_write = write_store(workdir / "bench-gpu.zarr", dev, cfg)
    backend = dev.xp if dev.real else None
    tg, sg = store_pass(store, backend, dev, reps)
    tc, sc = store_pass(store, None, dev, 1)
    diff = float(
        np.abs(dev.to_host(sg["within_cov"].data) - sc["within_cov"].values).max()
        / np.abs(sc["within_cov"].values).max()
    )
    size = cfg["n_store"] * dim * 4
    report["stats_store"] = {
        "n": cfg["n_store"],
        "bytes": size,
        "write_seconds": t_write,
        "gpu_seconds": tg,
        "cpu_seconds": tc,
        "speedup_vs_cpu": tc / tg,
        "gpu_input_gbs": size / tg / 1e9,
        "gemm_fraction": 2.0 * cfg["n_store"] * dim * dim / dgemm / tg,
        "within_cov_max_rel_diff_gpu_vs_cpu": diff,
        "note": "store written just before: reads come from the page cache",
    }
    print(
        f"  {gpu}: {_fmt(tg)} ({size / tg / 1e9:.3g} GB/s of float32 input), CPU {_fmt(tc)}, "
        f"x{tc / tg:.3g}; max rel diff of within_cov {diff:.2g}",
        flush=True,
    )
    del store, sg, sc
    shutil.rmtree(workdir / "bench-gpu.zarr", ignore_errors=True)
    dev.free_memory()

    # ---- pairwise metrics
    kp = cfg["pair_k"]
    print(f"pairwise metrics, K={kp:.3g} D={cfg['pair_dim']} ...", flush=True)
    pg = pairwise_pass(dev.xp, dev, kp, cfg, reps)
    dev.free_memory()
    pc = pairwise_pass(np, dev, cfg["pair_k_cpu"], cfg, 1)
    pc_ext = pc["seconds"] * (kp * (kp - 1)) / (pc["k"] * (pc["k"] - 1))
    pflops = 2 * (kp * kp / 2) * cfg["pair_dim"] * 2  # means and weights GEMMs, upper triangle
    pg.update(gemm_floor_s=pflops / dgemm, pairs_per_s=pg["pairs"] / pg["seconds"])
    pg["gemm_fraction"] = pg["gemm_floor_s"] / pg["seconds"]
    # model: one float64 write + read per pair for each of the 8 statistics
    pg["bandwidth_model_fraction"] = pg["pairs"] * 8 * 16 / bw / pg["seconds"]
    report["pairwise"] = {
        "gpu": pg,
        "cpu": pc,
        "cpu_extrapolated_s": pc_ext,
        "cpu_note": f"CPU path measured at K={pc['k']} and extrapolated by K(K-1) to K={kp}",
        "speedup_vs_cpu": pc_ext / pg["seconds"],
    }
    print(
        f"  {gpu}: {_fmt(pg['seconds'])} ({pg['pairs_per_s']:.3g} pairs/s, "
        f"{pg['gemm_fraction']:.1%} of dgemm rate, {pg['bandwidth_model_fraction']:.1%} of copy "
        f"bandwidth by the 1 r+w/pair/statistic model); CPU {_fmt(pc['seconds'])} at "
        f"K={pc['k']:.3g} -> {_fmt(pc_ext)} extrapolated; x{pc_ext / pg['seconds']:.3g}",
        flush=True,
    )

    # ---- class sums variants
    report["class_sums"] = class_sums_variants(dev, cfg)
    dev.free_memory()
    print(
        "class sums of one chunk: "
        + ", ".join(f"{name} {_fmt(v['seconds'])}" for name, v in report["class_sums"].items()),
        flush=True,
    )
    return report


def dry_run(cfg: dict) -> int:
    print("plan:", json.dumps(cfg))
    gb = cfg["n_dev"] * cfg["dim"] * 4 / 1e9
    print(f"device memory for the stats data: {gb:.3g} GB float32 (+ per-task float64 copies)")
    for mod in ("dask", "distributed", "zarr", "xarray", "ncdask"):
        try:
            m = __import__(mod)
            print(f"  {mod} {getattr(m, '__version__', '?')}")
        except ImportError as e:
            print(f"  {mod} MISSING ({e})")
    dev = Device(allow_stand_in=False)  # raises NoGPU
    print(f"device: {dev.name}, {dev.memory_gib:.3g} GiB")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--small",
        action="store_true",
        help="tiny sizes; NumPy stands in for CuPy when there is no GPU",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print the plan and check the environment; fail without a GPU",
    )
    p.add_argument("--out", type=Path, default=None, help="write the JSON report here")
    p.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="local-disk directory for the temporary store (default: a temp dir)",
    )
    for key, val in FULL.items():
        p.add_argument(
            f"--{key.replace('_', '-')}",
            type=int,
            default=None,
            help=f"default {val} (small: {SMALL[key]})",
        )
    a = p.parse_args(argv)
    cfg = dict(SMALL if a.small else FULL)
    for key in FULL:
        v = getattr(a, key)
        if v is not None:
            cfg[key] = v
    try:
        if a.dry_run:
            return dry_run(cfg)
        dev = Device(allow_stand_in=a.small)
    except NoGPU as e:
        print(
            f"bench_gpu: no GPU to benchmark: {e}. Run it on the GPU machine "
            "(benchmarks/run_gpu.sh), or with --small to check the script on the CPU.",
            file=sys.stderr,
        )
        return 2
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=a.workdir) as tmp:
        report = run(cfg, dev, Path(tmp), small=a.small)
    report["total_seconds"] = time.perf_counter() - t0
    text = json.dumps(report, indent=2, default=float)
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
