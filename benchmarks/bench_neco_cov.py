"""NECO scoring throughput and per-class covariances at K=1,000, D=256: time and peak RSS.

Builds a generated store (K=1000 classes, D=256, float32, ``--per-class``
samples per class, ``x = mu[y] + 0.5 * randn``, labels shuffled; written in
8192-row batches through ``store.writer``) in a temporary directory on local
disk and deletes it afterwards. Each measurement runs in a fresh subprocess,
so its peak RSS (``ru_maxrss``) is its own:

* ``neco_fit``: ``class_stats`` + ``neco_fit`` (the total covariance, its
  standardisation and eigendecomposition) computed from the store;
* ``neco_scores``: NECO scores of every sample of the split (one blocked pass;
  statistics computed beforehand, outside the timing), reported in samples/s;
* ``neco_scores+logit``: the same, times the largest logit of a K×D linear
  classifier, blocked over class tiles;
* ``covariances``: the K×D×D per-class covariances (500 MiB in float64)
  computed with the default ``max_memory`` (256 MiB of accumulators per pass: 2 passes here) and
  written to a Zarr store chunk by chunk;
* ``covariances_128MiB``: the same with ``max_memory=128 MiB``: four passes
  over the embeddings, each holding a quarter of the accumulators;
* ``class_spectra``: the effective rank of every per-class covariance,
  reduced chunk by chunk (the K×D×D array is never held).

The machine may be shared (the table says how many CPUs it has); times are
medians over ``--reps`` runs.

    python benchmarks/bench_neco_cov.py                  # about 1-3 minutes
    python benchmarks/bench_neco_cov.py --per-class 64 --reps 1

The table is printed and written to ``benchmarks/results/bench_neco_cov.txt``.
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

K, D = 1000, 256
BATCH = 8192
MEASUREMENTS = (
    "neco_fit", "neco_scores", "neco_scores+logit", "covariances", "covariances_128MiB", "spectra"
)
HERE = Path(__file__).resolve().parent

CHILD = r"""
import json, resource, sys, time
import dask
import numpy as np
import ncdask
from ncdask.covariances import class_covariances, class_spectra
from ncdask.neco import neco_fit, neco_scores

url, what, out = sys.argv[1], sys.argv[2], sys.argv[3]
store = ncdask.EmbeddingStore.open(url)
rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
N = store.n_rows("train")
res = {"what": what, "N": N}
if what == "neco_fit":
    t0 = time.perf_counter()
    fit = neco_fit(ncdask.class_stats(store, "train"), 128).compute()
    res["seconds"] = time.perf_counter() - t0
elif what.startswith("neco_scores"):
    fit = neco_fit(ncdask.class_stats(store, "train"), 128).persist()
    kw = {}
    if what.endswith("logit"):
        W = np.random.default_rng(1).normal(size=(store.n_classes, store.dim))
        kw = dict(weights=W)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    s = neco_scores(fit, (store, "train"), **kw).values
    res["seconds"] = time.perf_counter() - t0
    res["samples_per_s"] = N / res["seconds"]
    res["finite"] = bool(np.isfinite(s).all())
elif what.startswith("covariances"):
    kw = {"max_memory": 128 * 2**20} if what.endswith("128MiB") else {}
    t0 = time.perf_counter()
    covs = class_covariances(store, split="train", **kw)
    covs.to_dataset(name="cov").to_zarr(out, mode="w", consolidated=False)
    res["seconds"] = time.perf_counter() - t0
    res["chunk"] = covs.data.chunksize[0]
    res["out_mib"] = covs.nbytes / 2**20
elif what == "spectra":
    t0 = time.perf_counter()
    er = class_spectra(class_covariances(store, split="train")).effective_rank.values
    res["seconds"] = time.perf_counter() - t0
    res["median_erank"] = float(np.median(er))
res["rss_before_mib"] = rss0 / 1024
res["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps(res))
"""


def build(url: str, per_class: int, seed: int = 0) -> int:
    import ncdask

    rng = np.random.default_rng(seed)
    means = rng.normal(size=(K, D)).astype(np.float32)
    y_all = rng.permutation(np.repeat(np.arange(K), per_class))
    store = ncdask.EmbeddingStore.create(url, n_classes=K, dim=D, overwrite=True)
    with store.writer("train") as w:
        for i in range(0, y_all.size, BATCH):
            y = y_all[i : i + BATCH]
            X = means[y] + 0.5 * rng.standard_normal((y.size, D), dtype=np.float32)
            w.append(X, y)
    return int(y_all.size)


def run(url: str, what: str, out: str) -> dict:
    p = subprocess.run(
        [sys.executable, "-c", CHILD, url, what, out],
        capture_output=True, text=True, check=False, env=dict(os.environ),
    )
    if p.returncode:
        raise RuntimeError(f"{what} failed:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-class", type=int, default=256)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", default=str(HERE / "results" / "bench_neco_cov.txt"))
    ap.add_argument("--only", nargs="+", choices=MEASUREMENTS, default=list(MEASUREMENTS))
    args = ap.parse_args()

    import dask

    import ncdask

    tmp = tempfile.mkdtemp(prefix="ncdask-bench-neco-")
    t_all = time.perf_counter()
    try:
        url = os.path.join(tmp, "store.zarr")
        t0 = time.perf_counter()
        N = build(url, args.per_class)
        built = time.perf_counter() - t0
        rows = []
        for what in args.only:
            reps = [run(url, what, os.path.join(tmp, f"covs-{i}.zarr"))
                    for i in range(args.reps)]
            for i in range(args.reps):
                shutil.rmtree(os.path.join(tmp, f"covs-{i}.zarr"), ignore_errors=True)
            rows.append((what, reps))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    lines = [
        f"# ncdask {ncdask.__version__}, dask {dask.__version__}, numpy {np.__version__}; "
        f"{os.cpu_count()} CPUs (shared), {platform.machine()}; threaded scheduler; "
        f"total {time.perf_counter() - t_all:.0f} s",
        f"# store: K={K}, D={D}, float32, N={N} ({N * D * 4 / 2**20:.0f} MiB raw), "
        f"built in {built:.1f} s; medians over {args.reps} runs, each in a fresh subprocess",
        "# neco_fit = class_stats + neco_fit(d=128) from the store; neco_scores = every "
        "sample of the split scored (stats precomputed); +logit = times the max logit of "
        "a KxD classifier; covariances = class_covariances -> to_zarr (KxDxD float64), "
        "_128MiB with max_memory=128 MiB (4 passes); "
        "spectra = effective rank of every Sigma_k, reduced chunk by chunk",
        "",
        f"{'measurement':<20} {'seconds':>9} {'samples/s':>12} {'peak RSS':>10} {'(import)':>9}"
        "  notes",
        "-" * 80,
    ]
    for what, reps in rows:
        sec = statistics.median(r["seconds"] for r in reps)
        rss = statistics.median(r["peak_rss_mib"] for r in reps)
        rss0 = statistics.median(r["rss_before_mib"] for r in reps)
        sps = (
            f"{statistics.median(r['samples_per_s'] for r in reps):12.3g}"
            if "samples_per_s" in reps[0] else f"{'':>12}"
        )
        note = ""
        if what.startswith("covariances"):
            note = f"output {reps[0]['out_mib']:.0f} MiB in chunks of {reps[0]['chunk']} classes"
        elif what == "spectra":
            note = f"median effective rank {reps[0]['median_erank']:.1f}"
        elif "finite" in reps[0]:
            note = "all scores finite" if all(r["finite"] for r in reps) else "NON-FINITE"
        lines.append(f"{what:<20} {sec:9.2f} {sps} {rss:8.0f}MiB {rss0:7.0f}MiB  {note}")
        for i, r in enumerate(reps):
            lines.append(f"#   rep {i + 1}: {r['seconds']:.2f} s, peak RSS "
                         f"{r['peak_rss_mib']:.0f} MiB")
    text = "\n".join(lines) + "\n"
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
