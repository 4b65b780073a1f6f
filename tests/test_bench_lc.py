"""benchmarks/bench_lc.py at --scale 0.01: every step runs through the command line, and the
analysis rerun after an appended epoch reads only the appended rows."""

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
STEPS = ["import_train", "import_test", "stats", "analyze", "import_append", "analyze_rerun"]
FIELDS = {"step", "argv", "wall_s", "peak_rss_bytes", "disk_written_bytes", "cpu_s",
          "bytes_read", "flops", "floor_io_s", "floor_gemm_s", "floor_s", "ratio"}


def _bench():
    spec = importlib.util.spec_from_file_location("bench_lc", ROOT / "benchmarks" / "bench_lc.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
def test_bench_lc_small_scale_runs_every_step(tmp_path):
    out = tmp_path / "bench_lc.json"
    assert _bench().main(["--scale", "0.01", "--out", str(out), "--dir", str(tmp_path)]) == 0
    r = json.loads(out.read_text())
    assert [s["step"] for s in r["steps"]] == STEPS
    for s in r["steps"]:
        assert FIELDS <= set(s), s["step"]
        assert s["wall_s"] > 0 and s["peak_rss_bytes"] > 0 and s["floor_s"] > 0
    shape = r["shape"]
    assert r["stats_rows_read"] == shape["N"]  # the first pass reads every row
    assert r["rerun_stats_rows_read"] == shape["N_append"]  # the rerun only the appended rows
    assert r["rerun_rows_total"] == shape["N"] + shape["N_append"]
    assert {"rates", "total_s", "steps_total_s", "generate_s", "store_bytes", "command",
            "classes_seen", "cache_entries_after"} <= set(r)
    assert {"sgemm_flops", "dgemm_flops", "read_Bps", "write_Bps"} <= set(r["rates"])
    assert r["metrics"]["nc1_pinv"] is not None and "nc4_agree_by_frequency" in r["metrics"]
    assert [p.name for p in tmp_path.iterdir()] == ["bench_lc.json"]  # the store is deleted
