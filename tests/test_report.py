"""The README's performance table is what ``benchmarks/report.py`` writes from the results."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _report():
    path = ROOT / "benchmarks" / "report.py"
    spec = importlib.util.spec_from_file_location("bench_report", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_readme_table_matches_results():
    report = _report()
    readme = (ROOT / "README.md").read_text()
    assert report.BEGIN in readme and report.END in readme
    assert report.splice(readme, report.table()) == readme, (
        "README.md's performance table differs from benchmarks/results/: "
        "run `python benchmarks/report.py`")
