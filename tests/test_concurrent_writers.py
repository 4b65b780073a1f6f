"""Many writers at once: OS processes creating one new set and appending to one split.

Each process starts at the same instant (they report "ready" after their
imports and spin on a "go" file), first-writes a split of its own in a new
set and then appends 10 batches to one shared split that none of them has
created yet, so the set, the shared split and its arrays are all created
concurrently. Every row encodes who wrote it, so each is accounted for by
content, and a failure names the (rank, batch) rows lost or repeated, or the
rank that failed or timed out with its stderr.
"""

import os
import subprocess
import time

import numpy as np
import pytest
import zarr
from killing import python

import ncdask

K, D, RANKS, BATCHES, ROWS = 7, 5, 4, 10, 3

_CONST = f"K, D, RANKS, BATCHES, ROWS = {K}, {D}, {RANKS}, {BATCHES}, {ROWS}\n"
_RANK = _CONST + """
import os, sys, time, numpy as np, ncdask
url, rank, go, epoch = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
s = ncdask.EmbeddingStore.open(url, "a")
print("ready", flush=True)
t0 = time.time()
while not os.path.exists(go):
    if time.time() - t0 > 120:
        sys.exit("never told to go")
    time.sleep(0.001)
def batch(b):
    X = np.empty((ROWS, D), np.float32)
    X[:, 0], X[:, 1], X[:, 2] = rank, b, np.arange(ROWS)
    X[:, 3:] = epoch
    return X, (rank * 1000 + b * 10 + np.arange(ROWS)) % K
s.append(f"r{rank}", *batch(-1), layer="fc", epoch=epoch)  # its own split of a new set
for b in range(BATCHES):
    s.append("shared", *batch(b), layer="fc", epoch=epoch)
"""


def _run_ranks(url, go, epoch, writers, timeout=300.0):
    """Start the ranks, tell them to go once all are ready; fail naming each rank that
    failed or timed out, with its stderr."""
    env = {**os.environ, "DASK_NCDASK__WRITERS": writers}
    procs = [python(_RANK, url, str(r), str(go), str(epoch), env=env, stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE)
             for r in range(RANKS)]
    t0, bad = time.time(), []
    try:
        ready = [p.stdout.readline().strip() for p in procs]  # imports done
        go.write_text("go")
        for r, p in enumerate(procs):
            try:
                _, err = p.communicate(timeout=max(1.0, timeout - (time.time() - t0)))
                if p.returncode:
                    bad.append(f"rank {r} (ready: {ready[r]!r}) exited {p.returncode}:\n{err}")
            except subprocess.TimeoutExpired:
                p.kill()
                err = p.communicate()[1]
                bad.append(f"rank {r} timed out after {time.time() - t0:.0f} s:\n{err}")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    assert not bad, f"epoch {epoch}, writers={writers}:\n" + "\n".join(bad)


def _expected(rank, b):
    return (rank * 1000 + b * 10 + np.arange(ROWS)) % K


@pytest.mark.slow
@pytest.mark.parametrize("writers", ["lock", "shards"])
def test_ranks_creating_one_set_and_appending_to_one_split_keep_every_row(tmp_path, writers):
    """Lock: one set of arrays, writers take turns; shards: a shard per writer."""
    url = str(tmp_path / "s.zarr")
    ncdask.EmbeddingStore.create(url, K, D, chunk_rows=8)
    epochs = (3, 4)
    for e in epochs:  # repeated: each trial races on a new set
        _run_ranks(url, tmp_path / f"go{e}", e, writers)
    s = ncdask.EmbeddingStore.open(url)
    assert s.sets() == [{"layer": "fc", "epoch": e} for e in epochs]
    for e in epochs:
        assert s.splits(layer="fc", epoch=e) == sorted(
            ["shared"] + [f"r{r}" for r in range(RANKS)])
        for r in range(RANKS):  # each rank's own split: its one batch
            d = s.split(f"r{r}", layer="fc", epoch=e)
            X, y = d.embeddings.values, d.labels.values
            assert X.shape == (ROWS, D) and (X[:, 0] == r).all() and (X[:, 1] == -1).all()
            np.testing.assert_array_equal(y, _expected(r, -1))
        d = s.split("shared", layer="fc", epoch=e)
        X, y = d.embeddings.values, d.labels.values
        assert X.shape[1] == D and (X[:, 3:] == e).all()
        # every (rank, batch) exactly once, rows in order, labels with their rows
        seen, repeated = {}, []
        for i in range(0, X.shape[0], ROWS):
            r, b = int(X[i, 0]), int(X[i, 1])
            if (r, b) in seen:
                repeated.append((r, b))
            seen[(r, b)] = i
            np.testing.assert_array_equal(X[i:i + ROWS, 2], np.arange(ROWS))
            np.testing.assert_array_equal(y[i:i + ROWS], _expected(r, b))
        lost = sorted({(r, b) for r in range(RANKS) for b in range(BATCHES)} - set(seen))
        assert not lost and not repeated, (
            f"epoch {e}, writers={writers}: (rank, batch) lost {lost}, repeated {repeated}")
        for r in range(RANKS):  # a rank's batches in the order it appended them
            order = [seen[(r, b)] for b in range(BATCHES)]
            assert order == sorted(order)
        if writers == "shards":  # the ranks' rows in their own shards, none in the main arrays
            g = zarr.open_group(url, mode="r")[f"layer=fc/epoch={e}/shared"]
            assert len(list(g["shards"].groups())) == RANKS
            assert g.attrs["ncdask_split"]["n_committed"] == 0
        np.testing.assert_array_equal(d.attrs["class_counts"], np.bincount(y, minlength=K))


_CREATOR = _CONST + """
import os, sys, time, numpy as np, ncdask
url, rank, sync, trials = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
s = ncdask.EmbeddingStore.open(url, "a")
for e in range(trials):
    open(os.path.join(sync, f"{e}-{rank}"), "w").close()
    t0 = time.time()
    while sum(os.path.exists(os.path.join(sync, f"{e}-{r}")) for r in range(RANKS)) < RANKS:
        if time.time() - t0 > 60:
            sys.exit("another rank never arrived")
        time.sleep(0.0005)
    X = np.full((2, D), rank * 100 + e, np.float32)
    s.append(f"r{rank}", X, np.array([rank, e]) % K, layer="fc", epoch=e)
"""


@pytest.mark.slow
def test_ranks_first_writing_new_sets_at_the_same_instant(tmp_path):
    """The race of issue 13 (5 of 150 trials died, sets lost their tags), 4 ranks × 30 sets."""
    url, sync, trials = str(tmp_path / "s.zarr"), tmp_path / "sync", 30
    sync.mkdir()
    ncdask.EmbeddingStore.create(url, K, D, chunk_rows=8)
    procs = [python(_CREATOR, url, str(r), str(sync), str(trials)) for r in range(RANKS)]
    assert [p.wait(timeout=300) for p in procs] == [0] * RANKS
    s = ncdask.EmbeddingStore.open(url)
    assert s.sets() == [{"layer": "fc", "epoch": e} for e in range(trials)]
    for e in range(trials):
        assert s.dim_of(layer="fc", epoch=e) == D
        assert s.splits(layer="fc", epoch=e) == [f"r{r}" for r in range(RANKS)]
        for r in range(RANKS):
            d = s.split(f"r{r}", layer="fc", epoch=e)
            assert (d.embeddings.values == r * 100 + e).all()
            np.testing.assert_array_equal(d.labels.values, np.array([r, e]) % K)


@pytest.mark.parametrize("writers", ["lock", "shards"])
def test_a_writer_open_while_append_commits_keeps_both(tmp_path, writers):
    """The issue's reproduction: a buffered writer is open while another handle's
    append commits; closing the writer used to overwrite the appended rows (1 of 4 kept)."""
    import dask

    url = str(tmp_path / "s.zarr")
    ncdask.EmbeddingStore.create(url, K, D, chunk_rows=64)
    with dask.config.set({"ncdask.writers": writers}):
        a = ncdask.EmbeddingStore.open(url, "a")
        b = ncdask.EmbeddingStore.open(url, "a")
        a.append("train", np.full((1, D), 1.0), np.array([1]))
        with a.writer("train") as w:
            w.append(np.full((2, D), 2.0), np.array([2, 2]))  # buffered
            b.append("train", np.full((1, D), 3.0), np.array([3]))  # commits meanwhile
        d = ncdask.EmbeddingStore.open(url).split("train")
    assert sorted(d.embeddings.values[:, 0].tolist()) == [1.0, 2.0, 2.0, 3.0]
    np.testing.assert_array_equal(d.labels.values, d.embeddings.values[:, 0].astype(int))
