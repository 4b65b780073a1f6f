"""Staging is known by the leases ncdask writes, never by folder names or process ids.

User splits and layers whose names look like staging survive every cleanup; two
writers with one hostname and overlapping pids (containers) never delete each
other's work; a killed writer's staging goes only once its lease has expired, and
a split it had renamed aside comes back when its place is empty.
"""

import os
import pathlib
import signal
import subprocess
import time

import numpy as np
import pytest
import xarray as xr
from killing import python

import ncdask
from ncdask.store.zarrio import open_dataset, write_dataset

K, D = 3, 4
NAMES = ["val.replaced-labels", "test.deleted-classes", "ood.import-2023", "x.ncdask-tmp-1"]


def _rows(n, first=0):
    X = np.zeros((n, D))
    X[:, 0] = first + np.arange(n)
    return X, (first + np.arange(n)) % K


def _npy(tmp_path, name, n, first=0):
    X, y = _rows(n, first)
    xa, ya = str(tmp_path / f"{name}_X.npy"), str(tmp_path / f"{name}_y.npy")
    np.save(xa, X)
    np.save(ya, y)
    return xa, ya


def _age(root, days=9.0):
    """Set every mtime under ``root`` (and its own) ``days`` back."""
    t = time.time() - days * 86400
    for p in [pathlib.Path(root), *pathlib.Path(root).rglob("*")]:
        os.utime(p, (t, t))


def test_user_names_that_look_like_staging_survive_every_cleanup(tmp_path):
    url = str(tmp_path / "s.zarr")
    s = ncdask.EmbeddingStore.from_arrays(url, {n: _rows(10 + i) for i, n in enumerate(NAMES)},
                                          n_classes=K)
    s.append("train", *_rows(7), layer="fc.deleted-v1")
    s.append("train", *_rows(5), layer="x.ncdask-tmp-1")
    mine = tmp_path / "out.zarr.ncdask-tmp-1"  # a user's folder beside an output
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    _age(tmp_path)
    s = ncdask.EmbeddingStore.open(url, "a")
    s.set_classifier(np.ones((K, D)))
    s.set_classifier(np.ones((K, D)), layer="fc.deleted-v1")
    s.import_files("new", *_npy(tmp_path, "a", 6))
    s.import_files("val.replaced-labels", *_npy(tmp_path, "b", 4, 100), mode="overwrite")
    s.core.tidy(s.core.group)
    write_dataset(xr.Dataset({"a": ("x", np.ones(3))}), str(tmp_path / "out.zarr"),
                  kind="results")
    r = ncdask.check_store(url)
    assert r.ok and r.notes == [], (r.problems, r.notes)
    s = ncdask.EmbeddingStore.open(url)
    assert s.splits() == sorted([*NAMES, "new"])
    assert [s.n_rows(n) for n in NAMES] == [4, 11, 12, 13]
    assert s.n_rows("train", layer="fc.deleted-v1") == 7
    assert s.n_rows("train", layer="x.ncdask-tmp-1") == 5
    assert (mine / "notes.txt").read_text() == "keep"


_PAUSED = """
import os, socket, sys
import numpy as np, ncdask
import ncdask.store.classifier as clf, ncdask.store.imports as imp
socket.gethostname = lambda: "box"  # a container: same hostname, its own pid namespace
os.getpid = lambda: 999999
url, op, split, nth = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
mod, name = (clf, "fresh") if op == "classifier" else (imp, "rename")
real, calls = getattr(mod, name), [0]
def paused(*a, **k):
    calls[0] += 1
    if calls[0] == nth:  # staging written; wait for the parent
        print("paused", flush=True)
        sys.stdin.readline()
    return real(*a, **k)
setattr(mod, name, paused)
s = ncdask.EmbeddingStore.open(url, "a")
if op == "classifier":
    s.set_classifier(np.full((3, 4), 7.0))
else:
    s.import_files(split, sys.argv[5], sys.argv[6], mode=op)
print("done", flush=True)
"""


def _paused(url, op, split="", nth=1, files=()):
    """A writer process (hostname "box", pid 999999) stopped while its staging exists."""
    p = python(_PAUSED, url, op, split, str(nth), *files, stdin=subprocess.PIPE,
               stdout=subprocess.PIPE, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    line = p.stdout.readline()
    if line.strip() != "paused":
        p.kill()
        raise AssertionError(f"the writer did not reach its pause: {line!r} (rc {p.wait()})")
    return p


def _resume(p):
    out, _ = p.communicate("go\n", timeout=60)
    return p.returncode, out


@pytest.mark.parametrize("child", ["import", "classifier"])
def test_writers_with_one_hostname_keep_each_others_staging(tmp_path, monkeypatch, child,
                                                             short_lease):
    """The child stops with its staging written; this process (same hostname, the child's
    pid not running here), once the child's lease would have expired without its heartbeat,
    sets a classifier and imports; then the child finishes."""
    url = str(tmp_path / "s.zarr")
    ncdask.EmbeddingStore.from_arrays(url, {"train": _rows(20)}, n_classes=K)
    monkeypatch.setattr("socket.gethostname", lambda: "box")
    if child == "import":  # stopped before renaming its staged split into place
        p = _paused(url, "add", "theirs", 1, _npy(tmp_path, "c", 9, 50))
    else:  # stopped before switching to its new version
        p = _paused(url, "classifier")
    try:
        time.sleep(short_lease + 0.1)
        s = ncdask.EmbeddingStore.open(url, "a")
        if child == "import":
            s.set_classifier(np.ones((K, D)))
        s.import_files("ours", *_npy(tmp_path, "d", 5, 20))
    finally:
        rc, out = _resume(p)
    assert rc == 0 and "done" in out, f"the other writer failed (rc {rc}): {out}"
    s = ncdask.EmbeddingStore.open(url)
    assert s.n_rows("ours") == 5
    if child == "import":
        assert s.n_rows("theirs") == 9
        np.testing.assert_array_equal(s.split("theirs").embeddings.values[:, 0],
                                      50 + np.arange(9))
    else:
        np.testing.assert_array_equal(s.classifier()[0], 7.0)
    assert ncdask.check_store(url).ok


def _hidden(url, start):
    return sorted(p.name for p in pathlib.Path(url).iterdir() if p.name.startswith(start))


def test_a_killed_importers_staging_goes_only_when_its_lease_expires(tmp_path, short_lease):
    url = str(tmp_path / "s.zarr")
    ncdask.EmbeddingStore.from_arrays(url, {"train": _rows(20)}, n_classes=K)
    p = _paused(url, "add", "new", 1, _npy(tmp_path, "a", 9))
    p.kill()
    p.communicate()
    staged = _hidden(url, ".import-")
    assert len(staged) == 1
    s = ncdask.EmbeddingStore.open(url, "a")
    s.core.tidy(s.core.group)
    s.set_classifier(np.ones((K, D)))
    assert _hidden(url, ".import-") == staged  # the lease may still be renewed
    time.sleep(short_lease + 0.1)
    s.set_classifier(np.ones((K, D)))
    assert _hidden(url, ".import-") == []
    assert s.splits() == ["train"] and ncdask.check_store(url).ok


def test_a_killed_replaces_aside_is_restored_where_its_place_is_empty(tmp_path, short_lease):
    url = str(tmp_path / "s.zarr")
    ncdask.EmbeddingStore.from_arrays(url, {"train": _rows(20), "val": _rows(4)}, n_classes=K)
    # stopped after renaming train aside, before renaming the new train into place
    p = _paused(url, "overwrite", "train", 2, _npy(tmp_path, "a", 9, 100))
    p.kill()
    p.communicate()
    s = ncdask.EmbeddingStore.open(url, "a")
    assert s.splits() == ["val"] and len(_hidden(url, ".train.")) == 1
    r = ncdask.check_store(url)
    assert r.ok and r.notes == []  # a live lease: nothing is left over yet
    time.sleep(short_lease + 0.1)
    assert len(ncdask.check_store(url).notes) == 2  # the aside and the staged import
    s.core.tidy(s.core.group)
    assert s.splits() == ["train", "val"] and _hidden(url, ".train.") == []
    assert _hidden(url, ".import-") == []
    np.testing.assert_array_equal(s.split("train").embeddings.values[:, 0], np.arange(20))
    r = ncdask.check_store(url)
    assert r.ok and r.notes == []


def test_a_killed_output_replace_is_finished_after_its_lease_expires(tmp_path, short_lease):
    """Killed between its two renames: the old output is aside, the new one complete; once
    the lease expires the reader moves the new one in and deletes the old."""
    url = str(tmp_path / "o.zarr")
    write_dataset(xr.Dataset({"a": ("x", np.ones(5))}), url, kind="results")
    p = python(_OUTPUT_PAUSED, url, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
               env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert p.stdout.readline().strip() == "paused"
    p.send_signal(signal.SIGKILL)
    p.communicate()
    assert not os.path.exists(url)
    np.testing.assert_array_equal(open_dataset(url).a.values, 2.0)  # the complete copy
    assert not os.path.exists(url)  # its writer may be alive: read, not moved
    time.sleep(short_lease + 0.1)
    np.testing.assert_array_equal(open_dataset(url).a.values, 2.0)
    assert sorted(q.name for q in tmp_path.iterdir()) == ["o.zarr"]


_OUTPUT_PAUSED = """
import sys, numpy as np, xarray as xr
import ncdask.store.zarrio as z
real, calls = z.rename, [0]
def paused(*a, **k):
    calls[0] += 1
    if calls[0] == 2:
        print("paused", flush=True)
        sys.stdin.readline()
    return real(*a, **k)
z.rename = paused
z.write_dataset(xr.Dataset({"a": ("x", np.full(5, 2.0))}), sys.argv[1], kind="results",
                overwrite=True)
"""
