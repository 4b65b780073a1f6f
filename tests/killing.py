"""Real processes for tests: started in milliseconds, killed for real.

:func:`python` runs a script in a new process forked from a launcher that
imported ncdask and its dependencies once (multiprocessing's forkserver, no
thread running when it forks), so a test's writers start at once instead of
paying 1-2 s of imports each; each is still its own process, with its own
pid, pipes and exit status, and SIGKILL kills it as it would any writer.

:func:`kill_while_replacing`: the child prints ``done <i>`` after each whole
replace ``i``; the parent waits for ``after`` of them (so an old version
exists), sleeps ``delay`` and sends SIGKILL. What is stored must then be
version ``last`` or ``last + 1``, whole: never a mix, never nothing.
"""

from __future__ import annotations

import contextlib
import io
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from multiprocessing import forkserver
from multiprocessing.connection import Connection

import numpy as np
import xarray as xr

import ncdask
from ncdask.store.zarrio import open_dataset, write_dataset

#: What the launcher imports before it forks a child.
PRELOAD = ["numpy", "dask.array", "xarray", "zarr", "s3fs", "ncdask.store", "ncdask.stats",
           "ncdask.cli", "ncdask.hooks"]
_started = threading.Lock()


def _launcher():
    """The forkserver context, its server started with one BLAS thread (so that nothing
    but the main thread runs in it when it forks)."""
    ctx = multiprocessing.get_context("forkserver")
    with _started:
        ctx.set_forkserver_preload(PRELOAD)
        saved = os.environ.get("OPENBLAS_NUM_THREADS")
        os.environ["OPENBLAS_NUM_THREADS"] = "1"
        try:
            forkserver.ensure_running()
        finally:
            os.environ.pop("OPENBLAS_NUM_THREADS")
            if saved is not None:
                os.environ["OPENBLAS_NUM_THREADS"] = saved
    return ctx


def _run(script, argv, env, fds):
    """In the child: the given stdin/stdout/stderr, environment (dask config re-read from
    it, ``PYTHONPATH`` on ``sys.path``) and ``sys.argv``, then the script as ``__main__``."""
    import warnings

    import dask

    for target, conn in enumerate(fds):
        if conn.fileno() != target:
            os.dup2(conn.fileno(), target)
            conn.close()
    sys.stdin = io.TextIOWrapper(open(0, "rb", closefd=False))
    sys.stdout = io.TextIOWrapper(open(1, "wb", closefd=False))
    sys.stderr = io.TextIOWrapper(open(2, "wb", closefd=False), line_buffering=True)
    os.environ.clear()
    os.environ.update(env)
    dask.config.refresh()
    if "ignore" in env.get("PYTHONWARNINGS", ""):
        warnings.simplefilter("ignore")
    sys.path[:0] = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    sys.argv = ["-c", *argv]
    exec(compile(script, "<string>", "exec"), {"__name__": "__main__"})


class Child:
    """A started :func:`python` child, used as a :class:`subprocess.Popen`: ``pid``,
    ``stdin``/``stdout``/``stderr`` (text pipes where asked), ``returncode`` (``-9`` after
    SIGKILL), ``poll``, ``wait``, ``communicate``, ``send_signal``, ``kill``."""

    def __init__(self, proc, pipes):
        self._proc, self.pid, self.returncode, self._readers = proc, proc.pid, None, None
        self.args = ["python", "-c", "..."]
        self.stdin, self.stdout, self.stderr = pipes

    def poll(self):
        if self.returncode is None and not self._proc.is_alive():
            self.returncode = self._proc.exitcode
        return self.returncode

    def wait(self, timeout=None):
        self._proc.join(timeout)
        if self.poll() is None:
            raise subprocess.TimeoutExpired(self.args, timeout)
        return self.returncode

    def send_signal(self, sig):
        if self.poll() is None:
            os.kill(self.pid, sig)

    def kill(self):
        self.send_signal(signal.SIGKILL)

    def communicate(self, input=None, timeout=None):
        """Send ``input``, close stdin, read stdout and stderr to their ends, wait; after a
        :class:`subprocess.TimeoutExpired` a later call goes on reading."""
        if self._readers is None:
            self._readers = {}
            for name in ("stdout", "stderr"):
                if (f := getattr(self, name)) is not None:
                    got = []
                    t = threading.Thread(target=lambda f=f, got=got: got.append(f.read()),
                                         daemon=True)
                    t.start()
                    self._readers[name] = (t, got)
            if self.stdin is not None:
                try:
                    self.stdin.write(input or "")
                    self.stdin.close()
                except BrokenPipeError:
                    pass
        end = None if timeout is None else time.monotonic() + timeout
        for t, _ in self._readers.values():
            t.join(None if end is None else max(0.0, end - time.monotonic()))
            if t.is_alive():
                raise subprocess.TimeoutExpired(self.args, timeout)
        self.wait(None if end is None else max(0.0, end - time.monotonic()))
        out = [self._readers[n][1][0] if n in self._readers else None
               for n in ("stdout", "stderr")]
        for f in (self.stdout, self.stderr):
            if f is not None:
                f.close()
        return out[0], out[1]


def python(script: str, *args: str, env: dict | None = None, stdin=None, stdout=None,
           stderr=None) -> Child:
    """Start ``python -c script *args`` as a child forked from the launcher.

    ``stdin``, ``stdout``, ``stderr``: ``subprocess.PIPE`` (a text pipe on the
    :class:`Child`), ``subprocess.DEVNULL``, an open file, or None (this process's own).
    ``env`` (default ``os.environ``) is the child's whole environment.
    """
    ends, pipes = [], []
    for fd, how in enumerate((stdin, stdout, stderr)):
        if how == subprocess.PIPE:
            r, w = os.pipe()
            ends.append(r if fd == 0 else w)
            pipes.append(os.fdopen(w, "w") if fd == 0 else os.fdopen(r))
            continue
        pipes.append(None)
        if how == subprocess.DEVNULL:
            ends.append(os.open(os.devnull, os.O_RDWR))
        else:
            ends.append(os.dup(fd if how is None else how.fileno()))
    fds = [Connection(e) for e in ends]
    proc = _launcher().Process(target=_run, args=(script, list(args), dict(env or os.environ),
                                                  fds), daemon=True)
    try:
        proc.start()
    finally:
        for c in fds:  # the child has its copies now
            c.close()
    return Child(proc, pipes)


@contextlib.contextmanager
def warm_processes():
    """Dask's "processes" scheduler with its worker processes forked from the launcher
    (sharing nothing with this process, as with "spawn", without the imports)."""
    import dask

    _launcher()
    with dask.config.set({"multiprocessing.context": "forkserver"}):
        yield


def run(script: str, *args: str, env: dict | None = None, check: bool = False,
        timeout: float | None = None) -> subprocess.CompletedProcess:
    """:func:`python` to its end, as :func:`subprocess.run` with ``capture_output=True,
    text=True``."""
    p = python(script, *args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = p.communicate(timeout=timeout)
    finally:
        p.kill()
    r = subprocess.CompletedProcess(p.args, p.returncode, out, err)
    if check:
        r.check_returncode()
    return r


def kill_while_replacing(script: str, args: list[str], *, delay: float, after: int = 1,
                         marker: str | None = None, timeout: float = 120.0) -> int:
    """Run ``script`` with ``args``, SIGKILL it ``delay`` s after its ``after``-th replace.

    With ``marker``, the kill comes ``delay`` s after the child next prints
    that line (a phase of the replace it announces). Returns the last
    replace the child reported whole.
    """
    p = python(script, *args, stdout=subprocess.PIPE,
               env={**os.environ, "PYTHONWARNINGS": "ignore"})
    last, t0 = 0, time.time()
    try:
        seen = marker is None
        while last < after or not seen:
            line = p.stdout.readline()
            if not line:
                raise AssertionError(f"the writer died on its own (rc {p.wait()})")
            if line.startswith("done"):
                last = int(line.split()[1])
            elif last >= after and line.strip() == marker:
                seen = True
            if time.time() - t0 > timeout:
                raise AssertionError("the writer made no progress")
        time.sleep(delay)
        p.send_signal(signal.SIGKILL)
        p.wait()
        for line in p.stdout.read().split("\n"):  # replaces finished before the kill
            if line.startswith("done"):
                last = int(line.split()[1])
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        p.stdout.close()
    return last


_CLASSIFIER = """
import sys, json, numpy as np, ncdask
url, opts = sys.argv[1], json.loads(sys.argv[2]) or None
s = ncdask.EmbeddingStore.open(url, "a", storage_options=opts)
i = 1
while True:
    i += 1
    s.set_classifier(np.full((200, 512), float(i)), np.full(200, float(i)))
    print("done", i, flush=True)
"""

_OUTPUT = """
import sys, json, numpy as np, xarray as xr
import ncdask.store.zarrio as z
from ncdask.store.zarrio import write_dataset
url, opts = sys.argv[1], json.loads(sys.argv[2]) or None
copy = z._copy_into_place
def announced(*a, **k):  # the copy phase of a replace on a store without rename
    print("copying", flush=True)
    return copy(*a, **k)
z._copy_into_place = announced
i = 1
while True:
    i += 1
    ds = xr.Dataset({n: ("x", np.full(400, float(i))) for n in ("a", "b", "c")},
                    attrs={"version": i}).chunk({"x": 100})
    write_dataset(ds, url, kind="results", overwrite=True, storage_options=opts)
    print("done", i, flush=True)
"""


def classifier_survives_kills(url: str, opts: dict | None, delays: list[float]) -> None:
    """Replace a stored classifier in a killed loop; each kill leaves one whole version."""
    import json

    s = ncdask.EmbeddingStore.create(url, 200, 512, storage_options=opts)
    s.set_classifier(np.full((200, 512), 1.0), np.full(200, 1.0))
    for delay in delays:
        last = kill_while_replacing(_CLASSIFIER, [url, json.dumps(opts or {})], delay=delay)
        W, b = ncdask.EmbeddingStore.open(url, storage_options=opts).classifier()
        v = W[0, 0]
        assert v in (last, last + 1), (v, last)
        np.testing.assert_array_equal(W, v)  # one version, whole
        np.testing.assert_array_equal(b, v)
    s = ncdask.EmbeddingStore.open(url, "a", storage_options=opts)
    s.set_classifier(np.full((200, 512), -1.0))
    W, b = s.classifier()
    assert (W == -1).all() and b is None


def output_survives_kills(url: str, opts: dict | None, delays: list[float],
                          marker: str | None = None) -> None:
    """Replace an ncdask output in a killed loop; each kill leaves one whole version."""
    import json

    write_dataset(xr.Dataset({n: ("x", np.ones(400)) for n in "abc"}), url, kind="results",
                  storage_options=opts)
    for delay in delays:
        last = kill_while_replacing(_OUTPUT, [url, json.dumps(opts or {})], delay=delay,
                                    marker=marker)
        ds = open_dataset(url, storage_options=opts).compute()
        assert list(ds.data_vars) == ["a", "b", "c"]
        v = ds.attrs["version"]
        assert v in (last, last + 1), (v, last)
        for n in "abc":
            np.testing.assert_array_equal(ds[n].values, float(v))  # never a mix
    write_dataset(xr.Dataset({"z": ("x", np.zeros(3))}), url, kind="results", overwrite=True,
                  storage_options=opts)
    assert list(open_dataset(url, storage_options=opts).data_vars) == ["z"]
