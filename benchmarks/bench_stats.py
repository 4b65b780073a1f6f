"""The one-pass class statistics against their floors: time and peak memory.

Builds generated stores of about 1 GiB and 8 GiB (D=512, K=1000, float32;
class means plus noise, ``x = mu[y] + 0.5 * randn``, labels uniform; written
in 8192-row batches through ``store.writer`` so the generator never holds a
store in memory) in a temporary directory on local disk, and deletes them
afterwards. For each size, every measurement runs in a fresh subprocess, so
its peak RSS (``ru_maxrss``) is its own:

* ``stats``: wall time of ``ncdask.class_stats(store, "train").compute()``
  (default threaded scheduler, float64 accumulation);
* ``io``: wall time of ``dask.array.from_zarr(<store>/train/embeddings).sum()
  .compute()``, the I/O (read + decompress) floor;
* ``gemm``: ``2·N·D²`` flops at this machine's dgemm rate, measured in the
  same run as the median of ``Xc.T @ Xc`` with ``Xc`` of shape (32768, 512)
  float64 (one chunk of the kernel); the sgemm rate is shown alongside.

The stores are written just before they are read and fit in RAM, so reads
come from the page cache: the I/O floor is the warm-cache floor (decompress
and copy), the strictest one. ``--cold`` evicts the store's files from the
page cache (``posix_fadvise(DONTNEED)``) before every measurement instead.

The machine may be shared: each measurement waits for idle CPUs, records the
share of the CPUs other processes used meanwhile, and is redone once if that
exceeds 10% (flagged in the table if it still does).

    python benchmarks/bench_stats.py                 # both sizes, 5-10 minutes
    python benchmarks/bench_stats.py --sizes 1 --reps 3
    python benchmarks/bench_stats.py --stats-env OPENBLAS_NUM_THREADS=1 \
        --out benchmarks/results/bench_stats_openblas1.txt

The table is printed and written to ``benchmarks/results/bench_stats.txt``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

D, K = 512, 1000
CHUNK_ROWS = 32768  # the store's default at D=512 float32 (64 MiB)
BATCH = 8192
GEMM_ROWS = 32768
HERE = Path(__file__).resolve().parent


def _maxrss_mib() -> float:
    import resource

    # Linux reports kilobytes
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class _Load:
    """CPU seconds used by this process and by everything else on the machine.

    The benchmark machine may be shared; a measurement during which other
    processes used a noticeable share of the CPUs is flagged and redone.
    """

    def __init__(self) -> None:
        self.t0, self.own0, self.busy0 = time.perf_counter(), self._own(), self._busy()

    @staticmethod
    def _own() -> float:
        t = os.times()
        return t.user + t.system

    @staticmethod
    def _busy() -> float:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return (sum(v) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")  # less idle, iowait

    def done(self) -> dict:
        wall = time.perf_counter() - self.t0
        own = self._own() - self.own0
        other = max(0.0, self._busy() - self.busy0 - own)
        return {"seconds": wall, "cpu_own": own,
                "other_load": other / (wall * (os.cpu_count() or 1))}


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


# ----------------------------------------------------------------- workers
def work_build(path: str, rows: int, seed: int, dtype: str = "float32") -> dict:
    import ncdask

    rng = np.random.default_rng(seed)
    mu = rng.standard_normal((K, D), dtype=np.float32)
    s = ncdask.EmbeddingStore.create(path, n_classes=K, dim=D, dtype=dtype, overwrite=True)
    t = time.perf_counter()
    with s.writer("train") as w:
        done = 0
        while done < rows:
            b = min(BATCH, rows - done)
            y = rng.integers(0, K, b)
            X = mu[y]
            X += 0.5 * rng.standard_normal((b, D), dtype=np.float32)
            w.append(X, y)
            done += b
    return {"seconds": time.perf_counter() - t, "chunk_rows": s.chunk_rows}


def work_stats(path: str) -> dict:
    import ncdask

    s = ncdask.EmbeddingStore.open(path)
    rss0 = _rss_mib()
    load = _Load()
    st = ncdask.class_stats(s, "train").compute()
    res = load.done()
    tr = float(np.trace(st.within_cov.values))
    return {**res, "maxrss_mib": _maxrss_mib(), "rss_before_mib": rss0,
            "n": int(st.n_samples), "trace_within_cov": tr}


def work_io(path: str) -> dict:
    import dask.array as da

    x = da.from_zarr(str(Path(path) / "train" / "embeddings"))
    rss0 = _rss_mib()
    load = _Load()
    total = float(x.sum().compute())
    res = load.done()
    return {**res, "maxrss_mib": _maxrss_mib(), "rss_before_mib": rss0,
            "n": int(x.shape[0]), "sum": total}


def work_gemm(reps: int) -> dict:
    rng = np.random.default_rng(0)
    load = _Load()
    out = {}
    for name, dt in (("dgemm", np.float64), ("sgemm", np.float32)):
        Xc = rng.standard_normal((GEMM_ROWS, D)).astype(dt)
        Xc.T @ Xc  # warm up the BLAS threads
        ts = []
        for _ in range(reps):
            t = time.perf_counter()
            Xc.T @ Xc
            ts.append(time.perf_counter() - t)
        out[name] = 2 * GEMM_ROWS * D * D / statistics.median(ts)  # flop/s
    out["other_load"] = load.done()["other_load"]
    return out


# ------------------------------------------------------------ orchestration
def evict(path: Path) -> None:
    """Drop the store's files from the page cache (no privileges needed)."""
    for p in path.rglob("*"):
        if p.is_file():
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


MAX_OTHER = 0.10  # redo a measurement if other processes used > 10% of the CPUs
RETRIES = 1


def wait_idle(limit_s: float = 120.0) -> None:
    """Wait (up to ``limit_s``) until the machine's CPUs are at most 10% busy for 1 s."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < limit_s:
        b0, w0 = _Load._busy(), time.perf_counter()
        time.sleep(1.0)
        if (_Load._busy() - b0) / ((time.perf_counter() - w0) * (os.cpu_count() or 1)) <= 0.10:
            return
        time.sleep(2.0)


def sub(*args: str, cold: Path | None = None, env: dict | None = None) -> dict:
    for attempt in range(RETRIES + 1):
        wait_idle()
        if cold is not None:
            evict(cold)
        out = subprocess.run(
            [sys.executable, __file__, "--worker", *args], check=True, capture_output=True,
            text=True, env={**os.environ, **(env or {})},
        )
        res = json.loads(out.stdout.strip().splitlines()[-1])
        res["retries"] = attempt
        if res.get("other_load", 0.0) <= MAX_OTHER:
            break
        print(f"    ({args[0]}: other processes used {res['other_load']:.0%} of the CPUs; "
              f"{'redoing' if attempt < RETRIES else 'keeping it, flagged'})", flush=True)
    return res


def du_gib(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**30


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1,8", help="store sizes in GiB (comma separated)")
    ap.add_argument("--reps", type=int, nargs="+", default=[3, 2],
                    help="repetitions per size (last value repeats)")
    ap.add_argument("--dir", default=None, help="parent of the temporary directory")
    ap.add_argument("--cold", action="store_true", help="evict the store from the page cache "
                    "before each measurement")
    ap.add_argument("--stats-env", action="append", default=[], metavar="KEY=VALUE",
                    help="environment variable for the stats subprocess only, e.g. "
                    "OPENBLAS_NUM_THREADS=1 (the floors are measured without it)")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float16"],
                    help="the store's dtype (float16: half the bytes, so half the I/O floor)")
    ap.add_argument("--out", default=str(HERE / "results" / "bench_stats.txt"))
    ap.add_argument("--worker", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    a = ap.parse_args()

    if a.worker:
        mode, *rest = a.worker
        if mode == "build":
            res = work_build(rest[0], int(rest[1]), int(rest[2]), *rest[3:4])
        elif mode == "stats":
            res = work_stats(rest[0])
        elif mode == "io":
            res = work_io(rest[0])
        elif mode == "gemm":
            res = work_gemm(int(rest[0]))
        else:
            raise SystemExit(f"unknown worker mode {mode!r}")
        print(json.dumps(res))
        return

    sizes = [float(s) for s in a.sizes.split(",")]
    stats_env = dict(kv.split("=", 1) for kv in a.stats_env)
    reps = a.reps + [a.reps[-1]] * (len(sizes) - len(a.reps))
    t_start = time.perf_counter()
    log: list[str] = []
    rows_out = []
    tmp = Path(tempfile.mkdtemp(prefix="ncdask-bench-stats-", dir=a.dir))
    try:
        for gib, nrep in zip(sizes, reps, strict=False):
            item = np.dtype(a.dtype).itemsize
            chunk = CHUNK_ROWS * 4 // item  # 64 MiB chunks, the store's default
            n = int(round(gib * 2**30 / (D * item) / chunk)) * chunk
            path = tmp / f"store-{gib:g}gib.zarr"
            b = sub("build", str(path), str(n), "0", a.dtype)
            msg = (f"{gib:g} GiB {a.dtype}: built N={n} ({n * D * item / 2**30:.2f} GiB raw, "
                   f"{du_gib(path):.2f} GiB on disk) in {b['seconds']:.0f} s")
            log.append(msg)
            print(msg, flush=True)
            io, st, gm = [], [], []
            for r in range(nrep):  # interleaved, so drift hits all three alike
                cold = path if a.cold else None
                gm.append(sub("gemm", "9"))
                io.append(sub("io", str(path), cold=cold))
                st.append(sub("stats", str(path), cold=cold, env=stats_env))
                msg = (f"  rep {r + 1}: dgemm {gm[-1]['dgemm'] / 1e9:.0f} GFLOP/s, "
                       f"sgemm {gm[-1]['sgemm'] / 1e9:.0f} GFLOP/s, io {io[-1]['seconds']:.2f} s, "
                       f"stats {st[-1]['seconds']:.2f} s (cpu {st[-1]['cpu_own']:.1f} s), "
                       f"stats peak RSS {st[-1]['maxrss_mib']:.0f} MiB; other load "
                       + "/".join(f"{x[-1]['other_load']:.0%}" for x in (gm, io, st)))
                log.append(msg)
                print(msg, flush=True)
            assert all(x["n"] == n for x in io + st)
            t_io = statistics.median(x["seconds"] for x in io)
            t_st = statistics.median(x["seconds"] for x in st)
            dgemm = statistics.median(x["dgemm"] for x in gm)
            sgemm = statistics.median(x["sgemm"] for x in gm)
            t_gemm = 2 * n * D * D / dgemm
            rows_out.append({
                "gib": gib, "n": n, "reps": nrep, "stats": t_st, "io": t_io, "gemm": t_gemm,
                "dgemm": dgemm / 1e9, "sgemm": sgemm / 1e9,
                "rss": max(x["maxrss_mib"] for x in st),
                "rss0": max(x["rss_before_mib"] for x in st),
                "io_rss": max(x["maxrss_mib"] for x in io),
                "flag": any(x["other_load"] > MAX_OTHER for x in gm + io + st),
            })
            shutil.rmtree(path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    head = (f"{'store':>7} {'N':>9} {'reps':>4} {'stats s':>8} {'io s':>7} {'gemm s':>7} "
            f"{'/io':>5} {'/gemm':>6} {'/max':>5} {'/sum':>5} {'stats RSS':>10} {'(import)':>9} "
            f"{'io RSS':>7} {'dgemm':>6} {'sgemm':>6}")
    lines = [head, "-" * len(head)]
    for r in rows_out:
        lines.append(
            f"{r['gib']:>5g}Gi {r['n']:>9} {r['reps']:>4} {r['stats']:>8.2f} {r['io']:>7.2f} "
            f"{r['gemm']:>7.2f} {r['stats'] / r['io']:>5.2f} {r['stats'] / r['gemm']:>6.2f} "
            f"{r['stats'] / max(r['io'], r['gemm']):>5.2f} "
            f"{r['stats'] / (r['io'] + r['gemm']):>5.2f} {r['rss']:>7.0f}MiB "
            f"{r['rss0']:>6.0f}MiB {r['io_rss']:>4.0f}MiB"
        )
    import dask
    import zarr

    import ncdask

    env = (f"# ncdask {ncdask.__version__}, dask {dask.__version__}, zarr {zarr.__version__}, "
           f"numpy {np.__version__}; {os.cpu_count()} CPUs, {platform.machine()}; "
           f"threaded scheduler; page cache {'evicted' if a.cold else 'warm'}; "
           f"stats env {stats_env or 'unchanged'}; "
           f"total {time.perf_counter() - t_start:.0f} s")
    notes = [
        "# times are medians over `reps` runs, each in a fresh subprocess;",
        "# io = from_zarr(...).sum().compute(); gemm = 2*N*D^2 / dgemm rate;",
        "# /max = stats time over the larger floor, /sum over io + gemm (each floor",
        "# alone saturates every core, so on a small machine their sum is the",
        "# bound a pass that must both read and multiply can reach);",
        "# stats RSS = ru_maxrss of the",
        "# stats subprocess, (import) = its RSS before compute(); dgemm/sgemm in",
        f"# GFLOP/s, Xc.T @ Xc with Xc {GEMM_ROWS}x{D}, median of 9 per rep, measured",
        "# in a fresh subprocess just before each rep's io and stats runs.",
        "# 'other load' = share of the CPUs used by other processes during a",
        f"# measurement; above {MAX_OTHER:.0%} it is redone (up to {RETRIES} times).",
    ]
    text = "\n".join([env, *notes, *("# " + x for x in log), "", *lines]) + "\n"
    print()
    print(text)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(text)


if __name__ == "__main__":
    main()
