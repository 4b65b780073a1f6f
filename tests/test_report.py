"""docs/performance.md's table is what ``benchmarks/report.py`` writes from the results."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _report():
    path = ROOT / "benchmarks" / "report.py"
    spec = importlib.util.spec_from_file_location("bench_report", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_performance_table_matches_results():
    report = _report()
    page = (ROOT / "docs" / "performance.md").read_text()
    assert report.PAGE == ROOT / "docs" / "performance.md"
    assert report.BEGIN in page and report.END in page
    assert report.splice(page, report.table()) == page, (
        "docs/performance.md's table differs from benchmarks/results/: "
        "run `python benchmarks/report.py`")
