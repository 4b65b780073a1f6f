"""``ncdask.<TAB>`` offers the public API only: no stray imports among the globals that
``dir()``, IPython and jedi complete from."""

from __future__ import annotations

import importlib
import pkgutil
import sys
import types
from pathlib import Path

import pytest

import ncdask

#: The public subpackages and modules users tab into, with a tidy ``dir()``.
TIDY = ["ncdask.compat", "ncdask.metrics", "ncdask.plot", "ncdask.scheduler"]
SUBMODULES = {m.name for m in pkgutil.iter_modules(ncdask.__path__)}


def test_every_public_global_of_ncdask_is_api_or_a_submodule():
    for name in [*ncdask.__all__, "covariance_ratio"]:  # imported on first use, as a user would
        getattr(ncdask, name)
    stray = [n for n, v in vars(ncdask).items() if not n.startswith("_")
             and n not in ncdask.__all__
             and not (isinstance(v, types.ModuleType) and n in SUBMODULES)]
    assert stray == []


def test_dir_is_the_public_api():
    public = set(ncdask.__all__) | {"compat", "graph", "kernels", "metrics", "plot",
                                    "scheduler", "stats", "store"}
    assert set(dir(ncdask)) == public
    for name in dir(ncdask):
        getattr(ncdask, name)


@pytest.mark.parametrize("name", TIDY)
def test_public_subpackages_dir_their_api(name):
    mod = importlib.import_module(name)
    shown = dir(mod)
    assert set(mod.__all__) <= set(shown)
    assert not {"annotations", "Any", "TYPE_CHECKING", "np", "xr", "sys", "importlib"} & set(
        shown)
    for n in shown:
        getattr(mod, n)


def test_jedi_completes_no_stray_name():
    jedi = pytest.importorskip("jedi")
    for name in TIDY:
        importlib.import_module(name)
    allowed = set(ncdask.__all__) | SUBMODULES
    # IPython completes from the live module (jedi.Interpreter) ...
    for name in ["ncdask", *TIDY]:
        done = jedi.Interpreter(f"{name}.", [{"ncdask": ncdask}]).complete()
        got = {c.name for c in done if not c.name.startswith("_")}
        assert got and got <= set(dir(sys.modules[name])), name
    # ... an editor from the source (jedi.Script): ncdask/__init__.py's globals
    root = str(Path(ncdask.__file__).parents[1])  # this checkout's ncdask, not another
    project = jedi.Project(root, sys_path=[root, *(p for p in sys.path if p)])
    done = jedi.Script("import ncdask\nncdask.", project=project).complete(2, 7)
    got = {c.name for c in done if not c.name.startswith("_")}
    assert {"measure", "EmbeddingStore"} <= got and got <= allowed, got - allowed
