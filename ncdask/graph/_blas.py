"""One BLAS thread per task while ncdask graphs run on dask's threaded scheduler.

Otherwise each task's GEMM starts a BLAS thread per core (statistics 1.7× slower). A dask
callback limits graphs with ``ncdask-`` keys; ``ncdask.blas-per-task: False`` turns it off."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

import dask
from dask.callbacks import Callback

PREFIX = "ncdask-"


def _holds_ncdask_tasks(dsk: Mapping) -> bool:
    for key in dsk:
        name = key[0] if isinstance(key, tuple) else key
        if isinstance(name, str) and name.startswith(PREFIX):
            return True
    return False


def _threaded_with_many_workers() -> bool:
    import dask.threaded

    sched = dask.base.get_scheduler()
    # None: no scheduler configured, so arrays and delayed use the threaded one
    if sched is not None and sched is not dask.threaded.get:
        return False
    n = dask.config.get("num_workers", None)
    if n is None:
        pool = dask.config.get("pool", None)
        n = getattr(pool, "_max_workers", None) or dask.threaded.CPU_COUNT
    return int(n) > 1


class OneBlasThreadPerTask(Callback):
    """Limit BLAS to one thread from the start to the end of an ncdask compute."""

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._active = 0
        self._limiter: Any = None
        self._mine = threading.local()

    def _start(self, dsk: Mapping) -> None:
        self._mine.on = False
        if not (dask.config.get("ncdask.blas-per-task", True) and _holds_ncdask_tasks(dsk)
                and _threaded_with_many_workers()):
            return
        from threadpoolctl import threadpool_limits

        with self._lock:
            if self._active == 0:
                self._limiter = threadpool_limits(limits=1, user_api="blas")
            self._active += 1
        self._mine.on = True

    def _finish(self, dsk: Mapping, state: Any, errored: bool) -> None:
        if not getattr(self._mine, "on", False):
            return
        self._mine.on = False
        with self._lock:
            self._active -= 1
            if self._active == 0 and self._limiter is not None:
                self._limiter.restore_original_limits()
                self._limiter = None


_CALLBACK: OneBlasThreadPerTask | None = None


def install() -> None:
    """Register the callback once per process (idempotent)."""
    global _CALLBACK
    if _CALLBACK is None:
        _CALLBACK = OneBlasThreadPerTask()
        _CALLBACK.register()
