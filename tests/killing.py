"""Killing a writer for real: a child process that replaces something in a loop, SIGKILLed.

The child prints ``done <i>`` after each whole replace ``i``; the parent
waits for ``after`` of them (so an old version exists), sleeps ``delay`` and
sends SIGKILL. What is stored must then be version ``last`` or ``last + 1``,
whole: never a mix, never nothing.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import xarray as xr

import ncdask
from ncdask.store.zarrio import open_dataset, write_dataset


def kill_while_replacing(script: str, args: list[str], *, delay: float, after: int = 1,
                         marker: str | None = None, timeout: float = 120.0) -> int:
    """Run ``script`` with ``args``, SIGKILL it ``delay`` s after its ``after``-th replace.

    With ``marker``, the kill comes ``delay`` s after the child next prints
    that line (a phase of the replace it announces). Returns the last
    replace the child reported whole.
    """
    p = subprocess.Popen([sys.executable, "-c", script, *args], stdout=subprocess.PIPE,
                         text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
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
    ds = xr.Dataset({n: ("x", np.full(1200, float(i))) for n in ("a", "b", "c")},
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

    write_dataset(xr.Dataset({n: ("x", np.ones(1200)) for n in "abc"}), url, kind="results",
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
