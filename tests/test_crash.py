"""Crash safety: a writer killed mid-append leaves only whole committed batches."""

import os
import signal
import subprocess
import textwrap
import time

import dask
import numpy as np
import pytest
from killing import python

import ncdask

D, ROWS = 8, 300

WRITER = textwrap.dedent(
    """
    import sys
    import numpy as np
    import ncdask
    from helpers_batches import batch
    s = ncdask.EmbeddingStore.open(sys.argv[1], mode="a")
    start = int(sys.argv[2])
    for i in range(start, start + 100000):
        X, y = batch(i)
        s.append("train", X, y)
        print(i, flush=True)
    """
)


def batch(i):
    rng = np.random.default_rng(i)
    return rng.normal(size=(ROWS, D)).astype(np.float32), rng.integers(0, 3, ROWS)


def check_prefix(store_url, at_least):
    s = ncdask.EmbeddingStore.open(store_url)
    ds = s["train"]
    n = ds.sizes["sample"]
    assert n % ROWS == 0, f"a partial batch is visible: {n} rows"
    m = n // ROWS
    assert m >= at_least
    X = ds.embeddings.values
    y = ds.labels.values
    for i in range(m):
        Xi, yi = batch(i)
        np.testing.assert_array_equal(X[i * ROWS : (i + 1) * ROWS], Xi)
        np.testing.assert_array_equal(y[i * ROWS : (i + 1) * ROWS], yi)
    np.testing.assert_array_equal(ds.attrs["class_counts"], np.bincount(y, minlength=3))
    return m


@pytest.mark.parametrize("writers", ["lock", "shards"])
def test_sigkill_mid_append_keeps_committed_batches(tmp_path, writers):
    """Killed three times; in shards mode each run's writer leaves its own shard."""
    url = str(tmp_path / "crash.zarr")
    ncdask.EmbeddingStore.create(url, 3, D, chunk_rows=128)  # batches straddle chunks
    (tmp_path / "helpers_batches.py").write_text(
        "import numpy as np\n"
        f"ROWS, D = {ROWS}, {D}\n"
        "def batch(i):\n"
        "    rng = np.random.default_rng(i)\n"
        "    return rng.normal(size=(ROWS, D)).astype(np.float32), rng.integers(0, 3, ROWS)\n"
    )
    pythonpath = str(tmp_path) + os.pathsep + os.environ.get("PYTHONPATH", "")
    env = dict(os.environ, PYTHONPATH=pythonpath, DASK_NCDASK__WRITERS=writers)
    m = 0
    rng = np.random.default_rng(0)
    for _round in range(3):
        proc = python(WRITER, url, str(m), stdout=subprocess.PIPE, env=env)
        seen = -1
        try:
            while seen < m + 4:  # let a few batches commit, then kill it mid-stream
                line = proc.stdout.readline()
                assert line, "writer exited early"
                seen = int(line)
            time.sleep(rng.uniform(0, 0.02))
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            proc.wait()
            proc.stdout.close()
        assert proc.returncode == -signal.SIGKILL
        # every batch the writer reported is there; nothing partial is visible
        m = check_prefix(url, at_least=seen + 1)
    # appending goes on after the crashes
    s = ncdask.EmbeddingStore.open(url, mode="a")
    X, y = batch(m)
    with dask.config.set({"ncdask.writers": writers}):
        s.append("train", X, y)
    assert check_prefix(url, at_least=m + 1) == m + 1


def test_interrupted_append_is_invisible_and_overwritten(tmp_path, monkeypatch,
                                                         fail_label_writes):
    """Deterministic version: the labels write fails after the embeddings were written."""
    url = str(tmp_path / "s.zarr")
    s = ncdask.EmbeddingStore.create(url, 3, D, chunk_rows=128)
    X0, y0 = batch(0)
    s.append("train", X0, y0)
    fail_label_writes()
    X1, y1 = batch(1)
    with pytest.raises(OSError, match="simulated"):
        s.append("train", X1, y1)
    monkeypatch.undo()
    assert check_prefix(url, at_least=1) == 1  # the half-written batch is not visible
    s = ncdask.EmbeddingStore.open(url, mode="a")
    s.append("train", X1, y1)
    assert check_prefix(url, at_least=2) == 2
