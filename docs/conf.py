"""Sphinx configuration of the ncdask documentation.

``sphinx-build -W --keep-going -b html docs docs/_build/html`` builds the site
(``tests/test_docs.py`` runs it). Three kinds of pages are written here at build time,
into ``docs/_generated/`` (not kept in git), so that they cannot drift from the code:
one page per metric from :data:`ncdask.metrics.declarations.METRICS`, the ``ncdask
--help`` texts from the CLI's parser, and the API lists from ``__all__``."""

from __future__ import annotations

import contextlib
import io
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
os.environ["COLUMNS"] = "88"  # argparse wraps the --help texts to this width

import ncdask  # noqa: E402
import ncdask.compat  # noqa: E402
from ncdask.cli import build_parser  # noqa: E402
from ncdask.metrics.declarations import GROUPS, METRICS  # noqa: E402

project = "ncdask"
copyright = "the ncdask authors"
release = version = ncdask.__version__
extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "numpydoc",
]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
root_doc = "index"
exclude_patterns = ["_build", "design", "**/.ipynb_checkpoints"]
myst_enable_extensions = ["colon_fence", "dollarmath"]
myst_heading_anchors = 3
autosummary_generate = ["_generated/api.md"]  # written by generate() below
autodoc_default_options = {"members": True, "inherited-members": False}
autodoc_typehints = "none"  # numpydoc's Parameters sections say the types
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False
html_theme = "alabaster"
html_title = f"ncdask {release}"
html_static_path: list[str] = []

GENERATED = HERE / "_generated"
DIRECTION = {-1: "lower is more collapse (↓)", +1: "higher is more collapse (↑)",
             None: "none: the value is descriptive, not monotone in collapse"}


def _write(path: Path, text: str) -> None:
    """Write ``text`` unless the file already holds it (Sphinx then rebuilds nothing)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        path.write_text(text, encoding="utf-8")


def _code(text: str) -> str:
    return "``" + text + "``" if "`" in text else f"`{text}`"


def metric_page(name: str) -> str:
    """The page of one metric, every line from its declaration."""
    m = METRICS[name]
    groups = [g for g, names in GROUPS.items() if name in names]
    needs = ", ".join(f"`{n}=`" for n in m.needs) or "the class statistics only"
    shape = {(): "one value", ("class",): "one value per class (dim `class`)",
             ("frequency_bin",): "one value per class-count bin (dim `frequency_bin`)",
             ("margin_bin",): "counts per margin bin (dim `margin_bin`, edges `margin_lo`, "
                              "`margin_hi`)"}[m.dims]
    lines = [
        f"# `{name}`", "", f"{m.long_name}.", "",
        f"- **Formula:** {_code(m.formula)}",
        f"- **Reference:** {m.reference}",
        f"- **Range:** {_code(m.value_range)}",
        f"- **Collapse direction:** {DIRECTION[m.direction]}",
        f"- **Cost:** {m.cost}",
        f"- **Output:** {shape}",
        f"- **Needs:** {needs}; defined for at least {m.min_classes} non-empty "
        f"class{'es' if m.min_classes > 1 else ''}",
        f"- **Groups:** {', '.join(f'`{g}`' for g in groups) or 'none'}",
        "", "```python",
        f'res = ncdask.measure(stats, metrics="{name}")   # + the inputs it needs',
        f'res["{name}"].attrs                           # long_name, formula, reference',
        "```", "", "```bash", f"ncdask analyze emb.zarr --metrics {name}", "```", "",
    ]
    return "\n".join(lines)


def cli_page() -> str:
    """Every ``ncdask ... --help`` text, as the installed command prints it."""
    parser = build_parser(full_help=True)
    commands = next(a.choices for a in parser._actions  # noqa: SLF001 - the subcommands
                    if isinstance(getattr(a, "choices", None), dict))
    out = ["# Command line", "", "Every text below is `ncdask ... --help`, generated when "
           "these pages were built.", ""]
    for argv in [[], *[[c] for c in commands]]:
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf), contextlib.suppress(SystemExit):
            build_parser(full_help=True).parse_args([*argv, "--help"])
        out += [f"## `ncdask {' '.join(argv + ['--help'])}`", "", "```text",
                buf.getvalue().rstrip(), "```", ""]
    return "\n".join(out)


def api_page() -> str:
    """The API reference: ``ncdask.__all__``, ``ncdask.compat.__all__`` and the plots."""
    import inspect

    import ncdask.plot

    top = [n for n in ncdask.__all__ if n != "__version__"]
    if hasattr(ncdask, "analyze") and "analyze" not in top:
        top.insert(0, "analyze")
    plot = [n for n, v in vars(ncdask.plot).items() if not n.startswith("_")
            and inspect.isfunction(v) and v.__module__ == "ncdask.plot"]
    sections = [("ncdask", "The top-level API (`ncdask.__all__`).", top),
                ("ncdask.compat", "The reference package's names and the peers' metrics "
                 "(see [migration](../migration.md)).", list(ncdask.compat.__all__)),
                ("ncdask.plot", "Figures (matplotlib, imported on first call).", plot)]
    out = ["# API reference", ""]
    for module, what, names in sections:
        body = "\n".join(f"   {n}" for n in names)
        out += [f"## `{module}`", "", what, "", "```{eval-rst}",
                f".. currentmodule:: {module}", "", ".. autosummary::", "   :toctree: api/",
                "", body, "```", ""]
    return "\n".join(out)


def generate(app: object = None) -> None:
    metrics = GENERATED / "metrics"
    for name in METRICS:
        _write(metrics / f"{name}.md", metric_page(name))
    for old in metrics.glob("*.md"):  # a metric removed from the declarations
        if old.stem not in METRICS:
            old.unlink()
    _write(GENERATED / "metric_pages.inc", "```{toctree}\n:maxdepth: 1\n\n"
           + "\n".join(f"_generated/metrics/{n}" for n in METRICS) + "\n```\n")
    _write(GENERATED / "cli.md", cli_page())
    _write(GENERATED / "api.md", api_page())


def setup(app: object) -> None:
    app.connect("builder-inited", generate, priority=100)  # before autosummary
