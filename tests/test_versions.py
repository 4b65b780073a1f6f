"""The Python versions declared are the ones tested before a release (noxfile.py), and the
doctests pass without the optional extras (those that need one skip)."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: The optional extras' top-level modules, hidden from the doctests below.
EXTRAS = "torch,faiss,matplotlib,sklearn,numba,cupy,dask_cuda"


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split("."))


def test_declared_pythons_are_the_tested_ones():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    prefix = "Programming Language :: Python :: 3."
    listed = sorted(_version(c.rpartition(" ")[2]) for c in project["classifiers"]
                    if c.startswith(prefix))
    assert project["requires-python"] == ">=" + ".".join(map(str, listed[0]))
    assert listed == [(3, m) for m in range(listed[0][1], listed[-1][1] + 1)]  # no gap
    assert listed[0] >= (3, 11)  # zarr>=3.1.3 installs on nothing older
    nox = ast.parse((ROOT / "noxfile.py").read_text())  # nox itself need not be installed
    pythons = next(ast.literal_eval(n.value) for n in nox.body if isinstance(n, ast.Assign)
                   and ast.unparse(n.targets[0]) == "PYTHONS")
    assert [_version(p) for p in pythons] == [listed[0], listed[-1]]
    assert sys.version_info[:2] >= listed[0]
    conda = (ROOT / "environment.yml").read_text()
    assert f"python>={'.'.join(map(str, listed[0]))}" in conda


@pytest.mark.slow
def test_doctests_pass_or_skip_without_the_optional_extras():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    run = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "hide_modules.py"), EXTRAS, "-m", "pytest",
         "-q", "-n", "0", "-p", "no:cacheprovider", "-rs", "--doctest-modules", "ncdask"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-3000:]
    assert "needs torch (an optional extra)" in out  # ncdask.hooks.capture's example
    assert " passed" in out and "failed" not in out and "error" not in out.lower()
