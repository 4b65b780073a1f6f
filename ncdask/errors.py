"""Exceptions that the command line catches before anything heavy is imported, and the
wording of errors for the front end that was called."""

from __future__ import annotations

import os
import sys
import threading
import warnings
from collections.abc import Iterable
from contextvars import ContextVar
from difflib import get_close_matches
from typing import Any


class SchedulerError(RuntimeError):
    """The requested scheduler cannot be used (bad spec, unreachable, missing package)."""


class NoWorkersError(SchedulerError):
    """A distributed run waited ``ncdask.no_workers_timeout`` seconds with no worker."""


#: The front end that was called: "python" (the default) or "cli" (``ncdask.cli.main``
#: sets it), so that an error names an option the way the caller writes it.
FRONT_END: ContextVar[str] = ContextVar("ncdask_front_end", default="python")


def option(python: str, cli: str) -> str:
    """Word an option for the caller: ``option("overwrite=True", "--overwrite")`` is
    ``"overwrite=True"`` from Python and ``"--overwrite"`` from the ``ncdask`` command."""
    return cli if FRONT_END.get() == "cli" else python


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """``" (did you mean 'nc1'?)"`` for the closest of ``choices`` to ``name`` (case
    ignored), or ``""`` when none is close: a suffix for "unknown name" errors."""
    choices = list(choices)
    folded = {c.lower(): c for c in choices}
    close = get_close_matches(str(name).lower(), folded, n=1, cutoff=0.6)
    return f" (did you mean {folded[close[0]]!r}?)" if close else ""


#: Packages whose frames are never the caller's line (ncdask, what runs its graphs).
_LIBRARIES = ("ncdask", "dask", "distributed", "xarray", "toolz", "tlz", "concurrent",
              "threading", "queue")


def _prefix(module: Any) -> str | None:
    """Where a module's code is: a package's folder, else its file."""
    path = getattr(module, "__file__", None) or ""
    return os.path.dirname(path) + os.sep if path.endswith("__init__.py") else path or None


def _caller(frame: Any, prefixes: tuple[str, ...]) -> tuple[Any, bool]:
    """The innermost frame outside ``prefixes`` (None: none is), and whether it waits for
    dask (a dask frame was passed on the way)."""
    waits = False
    while frame is not None and frame.f_code.co_filename.startswith(prefixes):
        waits = waits or frame.f_globals.get("__name__", "").startswith("dask.")
        frame = frame.f_back
    return frame, waits


class DegenerateInputWarning(UserWarning):
    """A requested metric is undefined for this input (left out), or classes have one sample."""


def warn(message: str, category: type[Warning]) -> None:
    """``warnings.warn`` attributed to the caller's line: the innermost frame outside ncdask
    and the libraries that run its graphs, so that a warning raised inside ``ncdask.sweep``
    or ``measure(...).compute()`` names the user's line. In a dask worker thread, which holds
    no such frame, the main thread's line if it waits for dask; else the ncdask line.
    (3.12's ``skip_file_prefixes`` finds the first, but 3.11 lacks it.)"""
    prefixes = tuple(p for m in _LIBRARIES if (p := _prefix(sys.modules.get(m))))
    frame, _ = _caller(sys._getframe(1), prefixes)
    if frame is None and threading.current_thread() is not threading.main_thread():
        main = sys._current_frames().get(threading.main_thread().ident)
        frame, waits = _caller(main, prefixes)
        frame = frame if waits else None
    if frame is None:
        warnings.warn(message, category, stacklevel=2)
        return
    g = frame.f_globals
    warnings.warn_explicit(message, category, frame.f_code.co_filename, frame.f_lineno,
                           module=g.get("__name__"),
                           registry=g.setdefault("__warningregistry__", {}))
