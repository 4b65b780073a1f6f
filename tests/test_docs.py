"""The documentation: the Sphinx site builds with warnings as errors, one page per metric,
and the README stays what a newcomer reads first."""

import html
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ncdask.metrics.declarations import METRICS

ROOT = Path(__file__).resolve().parent.parent
SETUP = ('```bash\npython3 -m pip install -e ".[demo]" && ncdask demo\n'
         'python3 -m pip install -e ".[test,faiss]" torch==2.13.0 && python3 -m pytest -q\n```\n')


def _text(page: Path) -> str:
    """The text of an HTML page, without its tags."""
    return html.unescape(re.sub(r"<[^>]+>", "", page.read_text(encoding="utf-8")))


@pytest.mark.slow
@pytest.mark.xdist_group("docs")
def test_docs_build_without_warnings(tmp_path):
    pytest.importorskip("sphinx")
    pytest.importorskip("numpydoc")
    pytest.importorskip("myst_parser")
    src = tmp_path / "docs"  # a copy: the pages generated at build time stay out of the tree
    shutil.copytree(ROOT / "docs", src, ignore=shutil.ignore_patterns("_build", "_generated"))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    out = tmp_path / "html"
    run = subprocess.run([sys.executable, "-m", "sphinx", "-W", "--keep-going", "-j", "1",
                          "-q", "-b", "html", str(src), str(out)],
                         capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-4000:]
    for name, m in METRICS.items():  # one page per declared metric, from its declaration
        page = _text(out / "_generated" / "metrics" / f"{name}.html")
        for field in ("Formula", "Reference", "Range", "Collapse direction", "Cost"):
            assert f"{field}:" in page, (name, field)
        assert m.cost in page and m.reference.split(" (")[0] in page
    import ncdask
    import ncdask.compat

    api = out / "_generated" / "api"
    for name in [n for n in ncdask.__all__ if n != "__version__"]:
        assert (api / f"ncdask.{name}.html").exists(), name
    for name in ncdask.compat.__all__:
        assert (api / f"ncdask.compat.{name}.html").exists(), name
    cli = _text(out / "_generated" / "cli.html")
    for command in ("demo", "import", "stats", "analyze", "rm", "check"):
        assert f"ncdask {command} --help" in cli and f"usage: ncdask {command}" in cli


def test_every_metric_declares_its_range_direction_and_cost():
    for name, m in METRICS.items():
        assert m.cost and m.value_range, name
        assert m.direction in (-1, 1, None), name
    assert METRICS["nc1_pinv"].direction == -1 and METRICS["nc4_agree"].direction == 1


def test_readme_is_short_opens_with_the_setup_and_links_resolve():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 200
    assert text.startswith("# ncdask\n\n" + SETUP)
    links = re.findall(r"\]\((docs/[^)#]*)", text)
    assert {"docs/quickstart.md", "docs/metrics.md", "docs/store.md", "docs/scaling.md",
            "docs/migration.md", "docs/performance.md"} <= set(links)
    for link in links:
        assert (ROOT / link).exists(), link
