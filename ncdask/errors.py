"""Exceptions that the command line catches before anything heavy is imported."""

from __future__ import annotations


class SchedulerError(RuntimeError):
    """The requested scheduler cannot be used (bad spec, unreachable, missing package)."""


class NoWorkersError(SchedulerError):
    """A distributed run waited ``ncdask.no_workers_timeout`` seconds with no worker."""
