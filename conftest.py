"""Doctests of the package (``--doctest-modules ncdask``) whose examples import an optional
extra skip cleanly where it is not installed, as the tests do with ``pytest.importorskip``."""

from __future__ import annotations

import importlib.util
import re

import pytest

#: Top-level modules of the optional extras (pyproject.toml) that examples may import.
OPTIONAL = frozenset({"torch", "faiss", "matplotlib", "sklearn", "numba", "cupy", "dask_cuda",
                      "s3fs"})
_IMPORT = re.compile(r"^\s*(?:from\s+(\w+)|import\s+([\w.,\s]+))", re.M)


def imported(source: str) -> set[str]:
    """The top-level modules that ``import`` / ``from`` lines of ``source`` name."""
    names = set()
    for frm, imp in _IMPORT.findall(source):
        names.update([frm] if frm else (n.split()[0].split(".")[0] for n in imp.split(",")
                                        if n.strip()))
    return names


def pytest_runtest_setup(item: pytest.Item) -> None:
    test = getattr(item, "dtest", None)  # a doctest
    if test is None:
        return
    needs = imported("\n".join(ex.source for ex in test.examples)) & OPTIONAL
    missing = sorted(m for m in needs if importlib.util.find_spec(m) is None)
    if missing:
        pytest.skip(f"the example needs {', '.join(missing)} (an optional extra)")
