"""Write the performance table of ``docs/performance.md`` from ``benchmarks/results/``.

Every figure in the table is read from a results file here (medians, never best runs),
so that the documentation says nothing the results do not hold. The table sits between
the markers ``<!-- perf-table -->`` and ``<!-- /perf-table -->`` in docs/performance.md.

Usage::

    python benchmarks/report.py           # rewrite the table in docs/performance.md
    python benchmarks/report.py --check   # exit 1 if docs/performance.md's table differs
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
PAGE = HERE.parent / "docs" / "performance.md"
BEGIN, END = "<!-- perf-table -->", "<!-- /perf-table -->"
HEADER = ("| what | command | results file | figure (medians) |\n"
          "|---|---|---|---|")


def _stats_txt(path: Path) -> dict:
    """``bench_stats.py`` output: its table rows (medians over reps) and the per-rep lines."""
    text = path.read_text()
    rows = {}
    for m in re.finditer(r"^\s+(\d+Gi)\s+(\d+)\s+(\d+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+"
                         r"([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+(\d+)MiB", text, re.M):
        size, n, reps, stats_s, io, gemm, _io, _gemm, _max, over_sum, rss = m.groups()
        rows[size] = dict(N=int(n), reps=int(reps), stats=float(stats_s), io=float(io),
                          gemm=float(gemm), over_sum=float(over_sum), rss=int(rss))
    cpu = [float(c) for c in re.findall(r"\(cpu ([\d.]+) s\)", text)]
    return dict(rows=rows, cpu=statistics.median(cpu) if cpu else None)


def _stats_fig(name: str, size: str = "1Gi") -> str:
    r = _stats_txt(RESULTS / name)["rows"][size]
    return (f"{r['stats']:.2f} s (median of {r['reps']}), {r['over_sum']:.2f}× the sum of the "
            f"floors (I/O {r['io']:.2f} s, GEMM 2·N·D² at dgemm {r['gemm']:.2f} s); "
            f"peak RSS {r['rss']} MiB")


def _blas_fig() -> str:
    on, off = (_stats_txt(RESULTS / f"bench_stats_blas1_{k}.txt") for k in ("default", "off"))
    a, b = on["rows"]["1Gi"], off["rows"]["1Gi"]
    return (f"1 GiB: {a['stats']:.2f} s ({a['over_sum']:.2f}× the sum of the floors, "
            f"{on['cpu']:.1f} CPU-s) against {b['stats']:.2f} s switched off "
            f"({b['over_sum']:.2f}×, {off['cpu']:.1f} CPU-s), medians of {a['reps']}")


def _jsonl(name: str, case: str) -> list[dict]:
    lines = (RESULTS / name).read_text().splitlines()
    return [r for r in map(json.loads, filter(None, lines)) if r.get("case") == case]


def _med(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def _n_runs(n: int) -> str:
    return "one run" if n == 1 else f"median of {n} runs"


def _vocab_fig(case: str) -> str:
    runs = _jsonl("bench_vocab.jsonl", case)
    each = ", ".join(f"{r['stats_s']:.1f} s at {r['stats_over_floors']:.2f}×" for r in runs)
    return (f"statistics {_med(runs, 'stats_s'):.1f} s, {_med(runs, 'stats_over_floors'):.2f}× "
            f"the sum of the floors (I/O {_med(runs, 'io_s'):.1f} s, GEMM 2·N·D² at dgemm "
            f"{_med(runs, 'gemm_s'):.1f} s), peak RSS {_med(runs, 'stats_peak_mib') / 1024:.1f} "
            f"GiB; the three metrics (nc1_pinv, nc2_etf_err, nc3_dual_err) "
            f"{_med(runs, 'measure_s'):.1f} s, peak RSS "
            f"{_med(runs, 'measure_peak_mib') / 1024:.2f} GiB; {_n_runs(len(runs))} ({each}), "
            "each against the floors of its own run")


def _vocab_pair_fig() -> str:
    runs = _jsonl("bench_vocab.jsonl", "pairwise")
    return (f"{_med(runs, 'seconds'):.0f} s, {_med(runs, 'over_floor'):.2f}× the GEMM floor of "
            f"the two Gram upper triangles, 2·K²·D ({_med(runs, 'gemm_floor_s'):.0f} s at "
            f"{_med(runs, 'dgemm_gflops'):.0f} GFLOP/s), peak RSS "
            f"{_med(runs, 'peak_mib') / 1024:.1f} GiB; {_n_runs(len(runs))}")


def _weights_fig() -> str:
    parts = []
    for case in ("stats", "half"):
        r = [r for r in _jsonl("bench_vocab_weights.jsonl", case) if "commit" in r][-1]
        peak = {m["weights"]: m["peak_mib"] / 1024 for m in r["measure"]}
        w64 = r["K"] * r["D"] * 8 / 2**30
        parts.append(
            f"K={r['K']:,}, D={r['D']:,}: {peak['lazy']:.2f} GiB with W lazy, "
            f"{peak['numpy']:.2f} GiB with a float64 NumPy W ({w64:.2f} GiB), "
            f"{peak['float16']:.2f} GiB with a float16 NumPy W (commit {r['commit']})")
    return "peak RSS of the measure step, one run each: " + "; ".join(parts)


def _pairwise_fig() -> str:
    parts = []
    for r in json.loads((RESULTS / "bench_pairwise.json").read_text()):
        parts.append(
            f"K={r['K']:,} (tile {r['tile_size']}): {r['median_s']:.1f} s ({_n_runs(r['repeats'])}"
            f", graph build included), {r['ratio_to_floor']:.2f}× the GEMM floor "
            f"({r['gemm_floor_s']:.1f} s, 2·K²·D at {r['gemm_rate_gflops']:.0f} GFLOP/s) plus the "
            f"elementwise floor ({r['elementwise_floor_s']:.1f} s), {r['ratio_to_gemm']:.2f}× the "
            f"GEMM floor alone, {r['ratio_cpu_to_floor']:.2f}× in CPU seconds "
            f"({r['cpu_s']:.0f} against {r['cpu_floor_s']:.0f}); peak RSS "
            f"{r['peak_rss_mib']:.0f} MiB; load average {r['load_avg_1min']:.1f} on "
            f"{r['cores']} cores")
    return "; ".join(parts)


def _neco_fig() -> str:
    text = (RESULTS / "bench_neco_cov.txt").read_text()
    row = {m[1]: m[2].split() for m in re.finditer(r"^(\S+)\s+([\d.].*)$", text, re.M)}
    return (f"NECO scoring {float(row['neco_scores'][1]):.3g} samples/s "
            f"({float(row['neco_scores+logit'][1]):.3g} with the max logit of a K×D classifier); "
            f"`class_covariances` → Zarr {float(row['covariances'][0]):.2f} s, peak RSS "
            f"{row['covariances'][1]}; medians of 3")


def _lc_fig(name: str = "bench_lc.json") -> str:
    r = json.loads((RESULTS / name).read_text())
    steps = "; ".join(
        f"{s['step']} {s['wall_s']:.0f} s ({s['ratio']:.2f}× its floor {s['floor_s']:.0f} s, "
        f"{s['peak_rss_bytes'] / 2**30:.1f} GiB)" for s in r["steps"])
    return (f"steps {r['steps_total_s'] / 60:.1f} min of {r['total_s'] / 60:.1f} min in all "
            f"(N_test={r['shape']['N_test']:,}): {steps}; the rerun's statistics read "
            f"{r['rerun_stats_rows_read']:,} of {r['rerun_rows_total']:,} rows; dgemm "
            f"{r['rates']['dgemm_flops'] / 1e9:.0f}, sgemm {r['rates']['sgemm_flops'] / 1e9:.0f}"
            " GFLOP/s; one run")


#: (what, command, results file, figure) of each row, in the table's order.
ROWS = [
    ("class statistics, D=512, K=1000, 1 GiB store (N=524,288)",
     "python benchmarks/bench_stats.py",
     "bench_stats.txt", lambda: _stats_fig("bench_stats.txt")),
    ("same, 8 GiB store (N=4,194,304)", "same", "bench_stats.txt",
     lambda: _stats_fig("bench_stats.txt", "8Gi")),
    ("same with one BLAS thread per task", "... --stats-env OPENBLAS_NUM_THREADS=1",
     "bench_stats_openblas1.txt", lambda: _stats_fig("bench_stats_openblas1.txt")),
    ("one BLAS thread per task by default (ncdask's dask callback), against it switched off",
     "python benchmarks/bench_stats.py --sizes 1 --reps 3`, then `... --stats-env "
     "DASK_NCDASK__BLAS_PER_TASK=False",
     "bench_stats_blas1_default.txt, bench_stats_blas1_off.txt",
     _blas_fig),
    ("class statistics at default settings, K=1000, D=512, 1 GiB, class-chunked pass",
     "python benchmarks/bench_stats.py --sizes 1 --reps 3", "bench_stats_1gib_shifted.txt",
     lambda: _stats_fig("bench_stats_1gib_shifted.txt")),
    ("same, 8 GiB", "... --sizes 8 --reps 3", "bench_stats_8gib_shifted_3reps.txt",
     lambda: _stats_fig("bench_stats_8gib_shifted_3reps.txt", "8Gi")),
    ("same, float16 store, 1 GiB (N=1,048,576)", "... --dtype float16", "bench_stats_float16.txt",
     lambda: _stats_fig("bench_stats_float16.txt")),
    ("vocabulary-scale statistics: K=100,000, D=2,048, N=200,000, float32 (Zipf labels)",
     "python benchmarks/bench_vocab.py --cases stats", "bench_vocab.jsonl",
     lambda: _vocab_fig("stats")),
    ("Llama-3 vocabulary: K=128,256, D=4,096, N=500,000, float16 store",
     "python benchmarks/bench_vocab.py --cases half", "bench_vocab.jsonl",
     lambda: _vocab_fig("half")),
    ("the same three metrics with the classifier held lazily or in memory",
     "python benchmarks/bench_vocab.py --cases stats half --weights lazy numpy float16",
     "bench_vocab_weights.jsonl", _weights_fig),
    ("every pairwise metric at K=128,256, D=512 from statistics in Zarr (means and a lazy W)",
     "python benchmarks/bench_vocab.py --cases pairwise", "bench_vocab.jsonl", _vocab_pair_fig),
    ("every pairwise metric on the means and W (CDNV, three GNC2 kernels, equiangle, "
     "max-angle on means and W), D=512", "python benchmarks/bench_pairwise.py",
     "bench_pairwise.json", _pairwise_fig),
    ("NECO and per-class covariances, K=1000, D=256, N=256,000",
     "python benchmarks/bench_neco_cov.py", "bench_neco_cov.txt", _neco_fig),
    ("Linguistic Collapse's scale through the CLI: K=50,257 (Zipf 1.1), D=1,024 float16, "
     "N=10M + 1M appended, import, stats, analyze --by-frequency 10, rerun",
     "python benchmarks/bench_lc.py", "bench_lc.json", _lc_fig),
    ("same with 10,000 test rows", "... --test-rows 10000 --out "
     "benchmarks/results/bench_lc_test10k.json", "bench_lc_test10k.json",
     lambda: _lc_fig("bench_lc_test10k.json")),
]


def table() -> str:
    """The performance table, markdown, from the results files."""
    lines = [HEADER]
    for what, cmd, files, fig in ROWS:
        ref = ", ".join(f"`results/{f.strip()}`" for f in files.split(","))
        code = cmd if cmd == "same" else f"`{cmd}`"
        lines.append(f"| {what} | {code} | {ref} | {fig()} |")
    return "\n".join(lines)


def splice(page: str, body: str) -> str:
    """``page`` with the text between the markers replaced by ``body``."""
    i, j = page.index(BEGIN) + len(BEGIN), page.index(END)
    return page[:i] + "\n" + body + "\n" + page[j:]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="only compare; exit 1 on a difference")
    a = p.parse_args(argv)
    old = PAGE.read_text()
    new = splice(old, table())
    if a.check:
        if new != old:
            print("docs/performance.md's table differs from benchmarks/results/",
                  file=sys.stderr)
            return 1
        return 0
    PAGE.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
