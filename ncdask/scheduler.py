"""Where the Dask graphs run (the ``--scheduler`` value), and computing them with progress:
a bar on a terminal, elsewhere (a log, a pipe) a plain line at most every :data:`EVERY_S` s."""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import dask
from dask.callbacks import Callback
from dask.utils import parse_timedelta

from ncdask.errors import NoWorkersError, SchedulerError, option

LOCAL = ("threads", "processes", "sync")
#: Seconds between progress lines where stderr is no terminal.
EVERY_S = 10.0


def _line(done: int, total: int, t0: float) -> None:
    print(f"  {100 * done // max(total, 1)}% of {total} tasks done "
          f"({time.monotonic() - t0:.0f} s)", file=sys.stderr, flush=True)


class _Lines(Callback):
    """Progress of the local schedulers as plain lines, at most one every :data:`EVERY_S` s."""

    def __init__(self) -> None:
        super().__init__(posttask=self._tick)
        self.t0 = self.last = time.monotonic()

    def _tick(self, key: Any, result: Any, dsk: Any, state: dict, worker_id: Any) -> None:
        if time.monotonic() - self.last >= EVERY_S:
            self.last = time.monotonic()
            done = len(state["finished"])
            _line(done, done + sum(len(state[k]) for k in ("ready", "waiting", "running")),
                  self.t0)


def _distributed_progress(persisted: Any) -> None:
    """distributed's bar on a terminal, else plain lines (its bar redraws in place)."""
    from distributed import futures_of, progress, wait

    if sys.stderr.isatty():
        with contextlib.redirect_stdout(sys.stderr):  # its bar writes to stdout
            progress(persisted)
            print(file=sys.stderr)
        return
    futures, t0 = futures_of(persisted), time.monotonic()
    while True:
        try:
            wait(futures, timeout=EVERY_S)
            return
        except TimeoutError:
            _line(sum(f.done() for f in futures), len(futures), t0)


@dataclass
class Runner:
    """Where graphs run: the spec as given, the distributed client (or None), whether
    chunks should go to the GPU (``local-cuda``), and whether progress bars are hidden."""

    spec: str
    client: Any = None
    gpu: bool = False
    quiet: bool = False

    def compute(self, obj: Any, label: str | None = None) -> Any:
        """``obj.compute()`` with a progress bar on stderr, ``label`` printed before it."""
        if self.client is None:
            return self.call(obj.compute, label=label)
        if label and not self.quiet:
            print(label, file=sys.stderr, flush=True)
        persisted = self.client.persist(obj)
        if not self.quiet:
            _distributed_progress(persisted)
        return persisted.compute()

    def call(self, fn: Any, *args: Any, label: str | None = None, **kwargs: Any) -> Any:
        """Call ``fn``, which computes inside, with a local scheduler's progress around it."""
        if label and not self.quiet:
            print(label, file=sys.stderr, flush=True)
        if self.quiet or self.client is not None:
            return fn(*args, **kwargs)
        from dask.diagnostics import ProgressBar

        with ProgressBar(out=sys.stderr, minimum=0.5) if sys.stderr.isatty() else _Lines():
            return fn(*args, **kwargs)


def ignore_sigint() -> None:
    """In a worker process: leave Ctrl-C to the process that started it (no traceback each)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _is_address(spec: str) -> bool:
    return "://" in spec or (":" in spec and spec.rsplit(":", 1)[1].isdigit())


@contextlib.contextmanager
def use_scheduler(spec: str | None = None, *, quiet: bool = False,
                  connect_timeout: float = 10.0,
                  no_workers_timeout: float | str | None = None) -> Iterator[Runner]:
    """Run the Dask computations of the ``with`` block on the chosen scheduler.

    Parameters
    ----------
    spec : str, optional
        ``"threads"`` (default), ``"processes"`` (not for ``memory://`` stores),
        ``"sync"``, a distributed scheduler address (``tcp://host:port``), or
        ``"local-cuda"`` (a :class:`dask_cuda.LocalCUDACluster`; ``ncdask[gpu]``).
    quiet : bool
        Hide the progress bars of :meth:`Runner.compute`.
    connect_timeout : float
        Seconds to wait for a distributed scheduler.
    no_workers_timeout : float or str, optional
        How long distributed work may wait with no worker connected (seconds or
        ``"2 minutes"``); default: dask config ``ncdask.no_workers_timeout``, else 60.

    Yields
    ------
    Runner

    Raises
    ------
    SchedulerError
        Unknown spec, unreachable address, or ``local-cuda`` without a GPU.
    NoWorkersError
        Work waited ``no_workers_timeout`` with every worker gone (or none started).

    Examples
    --------
    >>> import dask.array as da
    >>> with use_scheduler("threads", quiet=True) as run:
    ...     int(run.compute(da.ones(10, chunks=5).sum()))
    10
    """
    spec = (spec or "threads").strip()
    if spec in LOCAL:
        conf = {"scheduler": "synchronous" if spec == "sync" else spec}
        if spec == "processes" and dask.config.get("multiprocessing.initializer", None) is None:
            conf["multiprocessing.initializer"] = ignore_sigint
        with dask.config.set(conf):
            yield Runner(spec, quiet=quiet)
        return
    if no_workers_timeout is None:
        no_workers_timeout = dask.config.get("ncdask.no_workers_timeout", 60)
    wait = parse_timedelta(no_workers_timeout)
    if spec == "local-cuda":
        with _local_cuda() as client, _no_workers_guard(client, wait):
            yield Runner(spec, client=client, gpu=True, quiet=quiet)
        return
    if not _is_address(spec):
        raise SchedulerError(f"unknown scheduler {spec!r}; use threads, processes, sync, "
                             "local-cuda or a distributed scheduler address such as "
                             "tcp://host:8786")
    client = _connect(spec, connect_timeout)
    with client, client.as_current(), dask.config.set(scheduler="dask.distributed"), \
            _no_workers_guard(client, wait):
        yield Runner(spec, client=client, quiet=quiet)


@contextlib.contextmanager
def _no_workers_guard(client: Any, wait: float) -> Iterator[None]:
    """Close ``client`` once pending work has had no worker for ``wait`` s, raising
    NoWorkersError (distributed's own timeout is out of reach for an address)."""
    from distributed.scheduler import NoWorkerError

    stop, fired = threading.Event(), threading.Event()

    def watch() -> None:
        since = None
        while not stop.wait(1.0):
            try:  # nthreads: every connected worker, paused ones included
                idle = bool(client.futures) and not client.nthreads()
            except Exception:  # noqa: BLE001 - the client closed as the block ended
                return
            since = (since or time.monotonic()) if idle else None
            if since is not None and time.monotonic() - since > wait and not stop.is_set():
                fired.set()
                client.close()  # ends every wait on this client: gather, progress
                return

    address = client.scheduler.address
    threading.Thread(target=watch, name="ncdask-no-workers", daemon=True).start()
    try:
        yield
    except Exception as e:
        if fired.is_set() or isinstance(e, NoWorkerError):
            raise NoWorkersError(
                f"no Dask worker was connected to the scheduler at {address} for {wait:g} s "
                "while work waited (all gone or none started); start workers, or wait longer: "
                f"{option('no_workers_timeout=', '--no-workers-timeout')} or dask config "
                "ncdask.no_workers_timeout") from e
        raise
    finally:
        stop.set()


def _connect(spec: str, timeout: float) -> Any:
    """A distributed Client for ``spec``, or SchedulerError within about ``timeout`` s (a
    daemon thread: ``Client(timeout=)`` does not bound a hanging handshake)."""
    from distributed import Client

    box: dict[str, Any] = {}

    def make() -> None:
        try:
            # not the default scheduler: one abandoned here must not capture later computes
            box["client"] = Client(spec, timeout=timeout, set_as_default=False)
        except BaseException as e:  # noqa: BLE001 - handed to the caller below
            box["error"] = e

    th = threading.Thread(target=make, name="ncdask-connect", daemon=True)
    th.start()
    th.join(timeout + 2.0)
    if th.is_alive():
        raise SchedulerError(
            f"no Dask scheduler answered at {spec!r} within {timeout:g} s: is that a Dask "
            "scheduler's port (a dashboard or HTTP port accepts the connection but never "
            "answers)?")
    err = box.get("error")
    if err is not None:
        if isinstance(err, (OSError, TimeoutError, ValueError)):
            raise SchedulerError(
                f"cannot connect to the Dask scheduler at {spec!r}: {err}") from err
        raise err
    return box["client"]


@contextlib.contextmanager
def _local_cuda() -> Iterator[Any]:
    try:
        from dask_cuda import LocalCUDACluster
    except ImportError as e:
        raise SchedulerError(
            option("scheduler='local-cuda'", "--scheduler local-cuda")
            + " needs dask-cuda and CuPy: pip install 'ncdask[gpu]'"
        ) from e
    from distributed import Client

    try:
        cluster = LocalCUDACluster()
    except Exception as e:  # no device, no driver, CUDA_VISIBLE_DEVICES empty, ...
        raise SchedulerError(f"cannot start a LocalCUDACluster (is there a GPU?): {e}") from e
    with cluster, Client(cluster) as client:
        yield client


def to_gpu(split: Any) -> Any:
    """A split (:meth:`ncdask.EmbeddingStore.split`), lazy, whose embedding chunks are moved
    to the GPU as CuPy arrays one by one."""
    import cupy

    emb = split["embeddings"]
    data = emb.data.map_blocks(cupy.asarray, dtype=emb.dtype,
                               meta=cupy.empty((0, 0), dtype=emb.dtype))
    out = split.copy()
    out["embeddings"] = emb.copy(data=data)
    return out


def to_host(ds: Any) -> Any:
    """A computed Dataset with every CuPy-backed variable copied to NumPy."""
    from ncdask.kernels._xp import to_numpy

    out = ds.copy()
    for name, var in ds.variables.items():
        if type(var.data).__module__.split(".")[0] == "cupy":
            out[name] = var.copy(data=to_numpy(var.data))
    return out


__all__ = ["use_scheduler", "Runner", "LOCAL", "to_gpu", "to_host", "SchedulerError",
           "NoWorkersError"]


def __dir__() -> list[str]:  # the public names only, for dir() and tab completion
    return list(__all__)
