"""Run Python as if some packages were not installed, e.g. the optional extras:
``python tests/hide_modules.py torch,faiss -m pytest ...`` (after the list: ``-c CODE``,
``-m MODULE`` or a script, with their arguments). Importing a hidden package raises
``ModuleNotFoundError`` and ``importlib.util.find_spec`` returns None, as where it is not
installed (``sys.modules[name] = None`` would not do: libraries probe ``sys.modules``)."""

from __future__ import annotations

import runpy
import sys


class _Hidden:
    """A finder of ``sys.meta_path`` that finds nothing under the hidden top-level names."""

    def __init__(self, inner: object, hidden: frozenset[str]) -> None:
        self.inner, self.hidden = inner, hidden

    def find_spec(self, name, path=None, target=None):  # noqa: ANN001, ANN201
        if name.partition(".")[0] in self.hidden:
            return None
        find = getattr(self.inner, "find_spec", None)
        return None if find is None else find(name, path, target)

    def __getattr__(self, attr: str) -> object:
        return getattr(self.inner, attr)


def hide(names: frozenset[str]) -> None:
    """Make ``names`` (top-level packages) unimportable in this process."""
    loaded = sorted(n for n in sys.modules if n.partition(".")[0] in names)
    if loaded:
        raise RuntimeError(f"already imported: {loaded}")
    sys.meta_path[:] = [_Hidden(f, names) for f in sys.meta_path]


if __name__ == "__main__":
    hide(frozenset(sys.argv[1].split(",")))
    if sys.argv[2] == "-c":
        code, sys.argv = sys.argv[3], ["-c", *sys.argv[4:]]
        exec(compile(code, "<string>", "exec"), {"__name__": "__main__"})
    elif sys.argv[2] == "-m":
        sys.argv = [sys.argv[3], *sys.argv[4:]]
        runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
    else:
        sys.argv = sys.argv[2:]
        runpy.run_path(sys.argv[0], run_name="__main__")
