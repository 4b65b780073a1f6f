"""Exceptions that the command line catches before anything heavy is imported, and the
wording of errors for the front end that was called."""

from __future__ import annotations

from collections.abc import Iterable
from contextvars import ContextVar
from difflib import get_close_matches


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
