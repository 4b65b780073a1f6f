"""Linguistic Collapse's scale end to end, through the ``ncdask`` command line.

A synthetic store shaped like LC's data (GPT-style hidden states on TinyStories): Zipf
token frequencies (exponent 1.1) over K=50,257 classes, D=1,024 float16 hidden states
with class structure, N=10,000,000 training and 1,000,000 test rows, a float32 classifier
W (K×D) and a bias. The data is generated chunk by chunk into ``.npy`` files (never whole
in memory) and then used as a user would, each step a ``ncdask`` subprocess (the console
script's code):

1. ``ncdask import`` the train files with the classifier, then the test files;
2. ``ncdask stats`` (class statistics, kept in the store's cache);
3. ``ncdask analyze`` with every default metric, ``--by-frequency 10`` and the test split;
4. one more epoch of rows appended (``ncdask import --append``) and ``ncdask analyze`` rerun:
   the statistics cache reads only the appended rows (each cache entry records its rows read).

Each step's wall time, peak RSS (``/usr/bin/time``), disk written (growth of the store) and its
floor: I/O (bytes read / the plain read rate of the store's own chunk files, bytes written /
the plain write rate) or GEMM (flops / the dgemm or sgemm rate), whichever is larger, all
measured in the same run. The ``.npy`` files are deleted once imported, the store at the end
unless ``--keep``. ``--scale 0.01`` shrinks K, N and D (seconds; tests/test_bench_lc.py).

Usage::

    python benchmarks/bench_lc.py --scale 1 --out benchmarks/results/bench_lc.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

import ncdask

HERE = Path(__file__).resolve().parent
FULL = {"K": 50_257, "D": 1_024, "N": 10_000_000, "N_test": 1_000_000}
ZIPF = 1.1
CHUNK = 65_536  # rows generated at a time
ENTRY = "import sys; from ncdask.cli import main; sys.exit(main())"  # the console script's


def shape(scale: float, test_rows: int | None, append_rows: int | None) -> dict:
    """K, D, N, test and appended rows at ``scale`` (D shrinks as √scale, at least 32)."""
    K = max(16, round(FULL["K"] * scale))
    D = min(FULL["D"], max(32, round(FULL["D"] * scale ** 0.5)))
    N = max(4 * K, round(FULL["N"] * scale))
    Nt = round(FULL["N_test"] * scale) if test_rows is None else test_rows
    Na = N // 10 if append_rows is None else append_rows
    return {"K": K, "D": D, "N": N, "N_test": Nt, "N_append": Na, "zipf": ZIPF}


class Data:
    """Class means, a noise bank and the Zipf label law: rows ``M[y] + noise``."""

    def __init__(self, K: int, D: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.K, self.D = K, D
        self.M = rng.standard_normal((K, D), dtype=np.float32)
        bank = rng.standard_normal((CHUNK, D), dtype=np.float32)
        self.bank = np.concatenate([bank, bank])  # a rolled slice is fresh enough noise
        p = 1.0 / np.arange(1, K + 1) ** ZIPF
        self.cdf = np.cumsum(p / p.sum())
        self.perm = rng.permutation(K)  # frequent classes are not the first indices
        self.seed = seed

    def block(self, i: int, n: int, Xout: np.ndarray, yout: np.ndarray) -> None:
        rng = np.random.default_rng([self.seed, i])
        r = np.minimum(np.searchsorted(self.cdf, rng.random(n)), self.K - 1)
        yout[...] = y = self.perm[r]
        X = np.take(self.M, y, axis=0)
        off = int(rng.integers(CHUNK))
        X += self.bank[off:off + n]
        np.copyto(Xout, X, casting="unsafe")

    def write(self, folder: Path, name: str, n: int, first: int) -> tuple[Path, Path]:
        """``name_X.npy`` (float16) and ``name_y.npy`` (int32) of ``n`` rows, chunk by chunk."""
        Xp, yp = folder / f"{name}_X.npy", folder / f"{name}_y.npy"
        out = (np.lib.format.open_memmap(Xp, "w+", np.float16, (n, self.D)),
               np.lib.format.open_memmap(yp, "w+", np.int32, (n,)))

        def one(i: int) -> None:
            a, b = i * CHUNK, min(n, (i + 1) * CHUNK)
            self.block(first + i, b - a, out[0][a:b], out[1][a:b])

        with ThreadPoolExecutor(2) as ex:
            list(ex.map(one, range(-(-n // CHUNK))))
        for m in out:
            m.flush()
        return Xp, yp


def rates(folder: Path, store: Path, D: int) -> dict:
    """Plain read rate of the store's chunk files, write rate (fsync'd), dgemm/sgemm rates."""
    files = sorted(p for p in store.rglob("*") if p.is_file() and "embeddings" in p.parts)
    t, got = time.perf_counter(), 0
    for p in files:
        with open(p, "rb", buffering=0) as f:
            while chunk := f.read(1 << 24):
                got += len(chunk)
        if got > 4 << 30:
            break
    read = got / (time.perf_counter() - t)
    buf = np.random.default_rng(0).integers(0, 255, 1 << 26, dtype=np.uint8).tobytes()
    path = folder / "write-rate"
    t = time.perf_counter()
    with open(path, "wb") as f:
        for _ in range(8):
            f.write(buf)
        f.flush()
        os.fsync(f.fileno())
    write = 8 * len(buf) / (time.perf_counter() - t)
    path.unlink()
    return {"read_Bps": read, "read_bytes": got, "write_Bps": write, **gemm_rates(D)}


def gemm_rates(D: int, reps: int = 5) -> dict:
    """Best of ``reps`` sgemm and dgemm rates (2048×2048 by 2048×D, every BLAS thread)."""
    out, n = {}, 2048
    for dt, key in ((np.float32, "sgemm_flops"), (np.float64, "dgemm_flops")):
        a = np.random.default_rng(1).standard_normal((n, n)).astype(dt)
        b = np.random.default_rng(2).standard_normal((n, D)).astype(dt)
        best = float("inf")
        for _ in range(reps):
            t = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - t)
        out[key] = 2.0 * n * n * D / best
    return out


def best_rates(res: dict, D: int) -> None:
    """Measure the GEMM rates again, keep the best of them and ``res``'s, and recompute every
    step's floor with them: a rate caught at a bad moment would lower every floor."""
    again = gemm_rates(D)
    res.setdefault("gemm_rates_measured", [{k: res["rates"][k] for k in again}]).append(again)
    for k, v in again.items():
        res["rates"][k] = max(res["rates"][k], v)
    for st in res["steps"]:
        floor(st, read=st["bytes_read"], written=st.get("bytes_written", 0), flops=st["flops"],
              r=res["rates"])


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def run(name: str, argv: list[str], store: Path, log: Path) -> dict:
    """One ``ncdask`` subprocess under ``/usr/bin/time``: wall time, peak RSS (``time``'s
    own child, so that the RSS this large process had at the fork is not counted)."""
    before = du(store)
    root = str(Path(ncdask.__file__).resolve().parent.parent)  # the ncdask imported here
    env = {**os.environ, "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    rss = log / f"{name}.rss"
    with open(log / f"{name}.out", "w") as out, open(log / f"{name}.err", "w") as err:
        t = time.perf_counter()
        code = subprocess.call(["/usr/bin/time", "-f", "%M %U %S", "-o", str(rss),
                                sys.executable, "-c", ENTRY, *argv], stdout=out, stderr=err,
                               env=env)
        wall = time.perf_counter() - t
    if code:
        tail = (log / f"{name}.err").read_text()[-3000:]
        raise SystemExit(f"step {name} failed (exit {code}):\n{tail}")
    kib, user, sys_s = rss.read_text().split()[-3:]
    step = {"step": name, "argv": ["ncdask", *argv], "wall_s": wall,
            "peak_rss_bytes": int(kib) * 1024, "disk_written_bytes": du(store) - before,
            "cpu_s": float(user) + float(sys_s)}
    print(f"{name}: {wall:.1f} s, peak RSS {int(kib) / 2**20:.2f} GiB", flush=True)
    return step


def cache_keys(store: Path) -> list[tuple[float, int, int | None]]:
    """``(written, rows covered, rows read)`` of every statistics-cache entry, oldest first:
    the rows its key covers and the rows its pass read (recorded by the cache)."""
    out = []
    for meta in store.rglob(".ncdask-stats/*/zarr.json"):
        attrs = json.loads(meta.read_text()).get("attributes", {}).get("ncdask_cache")
        if attrs:
            rows = sum(k for ps in attrs["key"]["parts"].values() for _, k in ps)
            out.append((float(attrs["written"]), int(rows), attrs.get("rows_read")))
    return sorted(out)


def floor(step: dict, *, read: float = 0, written: float = 0, flops: dict | None = None,
          r: dict) -> None:
    """The step's floor: max(I/O, GEMM) with its parts, and the ratio to it."""
    io = read / r["read_Bps"] + written / r["write_Bps"]
    gemm = sum(f / r[k] for k, f in (flops or {}).items())
    step.update(bytes_read=int(read), bytes_written=int(written),
                flops={k: float(f) for k, f in (flops or {}).items()},
                floor_io_s=io, floor_gemm_s=gemm, floor_s=max(io, gemm),
                ratio=step["wall_s"] / max(io, gemm))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", type=float, default=1.0, help="K and N times this, D times √")
    ap.add_argument("--test-rows", type=int, help="test rows (default: 1,000,000 × scale)")
    ap.add_argument("--append-rows", type=int, help="rows of the appended epoch (default N/10)")
    ap.add_argument("--nc4-gemms", type=int, default=2,
                    help="GEMMs of N_test×K×D the NC4 pass does (classifier, NCC; the margins "
                         "share the classifier's)")
    ap.add_argument("--dir", help="temporary folder's parent (default: the system's)")
    ap.add_argument("--keep", action="store_true", help="keep the store and logs")
    ap.add_argument("--out", default=str(HERE / "results" / "bench_lc.json"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--refloor", metavar="RESULTS",
                    help="only measure the GEMM rates again and recompute the floors of RESULTS "
                         "with the best rates")
    a = ap.parse_args(argv)
    if a.refloor:
        res = json.loads(Path(a.refloor).read_text())
        best_rates(res, res["shape"]["D"])
        Path(a.refloor).write_text(json.dumps(res, indent=1) + "\n")
        return 0
    s = shape(a.scale, a.test_rows, a.append_rows)
    K, D, N, Nt, Na = s["K"], s["D"], s["N"], s["N_test"], s["N_append"]
    t0 = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="bench-lc-", dir=a.dir))
    store, log = tmp / "lc.zarr", tmp / "logs"
    log.mkdir()
    print(f"K={K} D={D} N={N} N_test={Nt} N_append={Na} in {tmp}", flush=True)
    try:
        res = _steps(a, s, tmp, store, log)
    finally:
        if not a.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    best_rates(res, D)
    res["steps_total_s"] = sum(st["wall_s"] for st in res["steps"])
    res.update(command=" ".join(["python", "benchmarks/bench_lc.py", *(argv or sys.argv[1:])]),
               shape=s, total_s=time.perf_counter() - t0, cpus=os.cpu_count(),
               ram_bytes=os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=1) + "\n")
    print(f"total {res['total_s']:.0f} s (steps {res['steps_total_s']:.0f} s); results in "
          f"{a.out}", flush=True)
    return 0


def _steps(a: argparse.Namespace, s: dict, tmp: Path, store: Path, log: Path) -> dict:
    K, D, N, Nt, Na = s["K"], s["D"], s["N"], s["N_test"], s["N_append"]
    data = Data(K, D, a.seed)
    t = time.perf_counter()
    Xp, yp = data.write(tmp, "train", N, 0)
    Tp, typ = data.write(tmp, "test", Nt, 1 << 40)
    rng = np.random.default_rng(a.seed + 1)
    W = data.M + 0.5 * rng.standard_normal((K, D), dtype=np.float32)
    np.save(tmp / "W.npy", W)
    np.save(tmp / "b.npy", 0.01 * rng.standard_normal(K).astype(np.float32))
    counts = np.bincount(np.load(yp, mmap_mode="r"), minlength=K)
    gen = {"generate_s": time.perf_counter() - t, "classes_seen": int((counts > 0).sum()),
           "classes_under_10_rows": int((counts < 10).sum())}
    steps = []
    in_bytes = Xp.stat().st_size + yp.stat().st_size
    steps.append(run("import_train", ["import", str(Xp), str(yp), "--store", str(store),
                                      "--split", "train", "--classifier", str(tmp / "W.npy"),
                                      "--bias", str(tmp / "b.npy"), "--n-classes", str(K)],
                     store, log))
    r = rates(tmp, store, D)
    floor(steps[-1], read=in_bytes, written=steps[-1]["disk_written_bytes"], r=r)
    Xp.unlink(), yp.unlink()
    steps.append(run("import_test", ["import", str(Tp), str(typ), "--store", str(store),
                                     "--split", "test"], store, log))
    floor(steps[-1], read=Tp.stat().st_size + typ.stat().st_size,
          written=steps[-1]["disk_written_bytes"], r=r)
    Tp.unlink(), typ.unlink()
    emb = du(store / "train") or du(store)  # stored bytes of the rows read
    row_bytes = emb / N
    steps.append(run("stats", ["stats", str(store), "--split", "train"], store, log))
    floor(steps[-1], read=N * row_bytes, flops={"dgemm_flops": scatter_flops(N, D)}, r=r)
    analyze = ["analyze", str(store), "--by-frequency", "10", "--test", "test", "--json"]
    steps.append(run("analyze", [*analyze, str(tmp / "m1.json")], store, log))
    _analyze_floor(steps[-1], N, Nt, K, D, row_bytes, a.nc4_gemms, r)
    before = cache_keys(store)
    Ap, ayp = data.write(tmp, "append", Na, 1 << 41)
    steps.append(run("import_append", ["import", str(Ap), str(ayp), "--store", str(store),
                                       "--split", "train", "--append"], store, log))
    floor(steps[-1], read=Ap.stat().st_size + ayp.stat().st_size,
          written=steps[-1]["disk_written_bytes"], r=r)
    Ap.unlink(), ayp.unlink()
    steps.append(run("analyze_rerun", [*analyze, str(tmp / "m2.json")], store, log))
    _analyze_floor(steps[-1], N + Na, Nt, K, D, row_bytes, a.nc4_gemms, r, new=Na)
    after = cache_keys(store)
    new = [k for k in after if k not in before]
    rows_read = new[-1][2] if new else 0  # the newest entry's pass
    metrics = json.loads((tmp / "m2.json").read_text())
    return {"rates": r, **gen, "steps": steps, "cache_entries_before": before,
            "cache_entries_after": after, "stats_rows_read": before[-1][2] if before else None,
            "rerun_stats_rows_read": rows_read,
            "rerun_rows_total": N + Na, "metrics": metrics, "store_bytes": du(store)}


def scatter_flops(N: int, D: int) -> float:
    """Flops of the statistics' scatter: the column blocks of its lower triangle, as
    :func:`ncdask.kernels.tiled_stats.scatter_add` multiplies them."""
    from ncdask.kernels.tiled_stats import SCATTER_BLOCK as b

    return 2.0 * N * sum((D - j) * min(b, D - j) for j in range(0, D, b))


def _analyze_floor(step: dict, N: int, Nt: int, K: int, D: int, row_bytes: float,
                   gemms: int, r: dict, new: int = 0) -> None:
    """Statistics of the ``new`` rows (the rest from the cache), the by-frequency nc1_pinv
    shares' pass over train (N·D·min(D, K−1)) and pairwise K²·D in float64; NC4's ``gemms`` ×
    N_test·K·D in float32 (its close calls are rechecked in float64: not counted)."""
    rank = min(D, K - 1)
    flops = {"dgemm_flops": scatter_flops(new, D) + 2.0 * (N * D * rank + K * K * D),
             "sgemm_flops": 2.0 * gemms * Nt * K * D}
    floor(step, read=(N + new + Nt) * row_bytes, flops=flops, r=r)


if __name__ == "__main__":
    sys.exit(main())
