"""One writers' protocol: every change of a split takes the split's lock (local, memory) or
commits a shard tied to the split's generation (object stores), so an appender racing a
delete or an overwrite commits into a whole split or fails with a named error.

Real processes: an appender in a loop while another process deletes and overwrites the split,
importers creating one split at once, creators SIGKILLed half-way. Appended rows encode
(batch, row), so each is accounted for by content.
"""

import json
import os
import signal
import subprocess
import time
import uuid

import numpy as np
import pytest
import zarr
from killing import python
from test_s3 import s3  # noqa: F401 (the S3 server fixture)

import ncdask
from ncdask.store import SplitChangedError

K, D, ROWS, FILE_ROWS = 5, 4, 5, 23
ENV = {**os.environ, "PYTHONWARNINGS": "ignore"}

_CONST = f"K, D, ROWS, FILE_ROWS = {K}, {D}, {ROWS}, {FILE_ROWS}\n"
_APPENDER = _CONST + """
import json, sys, numpy as np, ncdask
url, n, opts = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3]) or None
s = ncdask.EmbeddingStore.open(url, "a", storage_options=opts)
for b in range(n):
    X = np.empty((ROWS, D), np.float32)
    X[:, 0], X[:, 1], X[:, 2], X[:, 3] = 1, b, np.arange(ROWS), 0
    try:
        print("ok", b, s.append("train", X, (b + np.arange(ROWS)) % K), flush=True)
    except ncdask.SplitChangedError:
        print("changed", b, -1, flush=True)
"""
_MUTATOR = _CONST + """
import json, sys, numpy as np, ncdask
url, n, xf, yf, acks = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
sys.path.insert(0, sys.argv[6])
from test_writers_protocol import audit
s = ncdask.EmbeddingStore.open(url, "a")
for i in range(n):
    for bad in audit(s, acks):
        print("bad before mutation", i, ":", bad, flush=True)
    try:
        if i % 2:
            s.import_files("train", xf, yf, mode="overwrite")
        else:
            s.delete_split("train")
    except KeyError:
        pass
    print("mutated", i, flush=True)
"""


def _acked(lines, word="ok"):
    """``{batch: committed count}`` of the appender's ``ok`` lines (or its ``changed`` ones)."""
    return {int(w[1]): int(w[-1]) for w in (ln.split() for ln in lines) if w and w[0] == word}


def audit(s, acks_path):
    """What is wrong with split ``train`` now, given the batches acknowledged so far (read
    first): every row whole (a file row or an appended one), the file at most once and only
    at the start, appended batches whole, once, in order, each where its acknowledged count
    puts it, none acknowledged after the last one present missing."""
    with open(acks_path) as f:
        lines = f.read().splitlines()[:-1]  # the last line may be half written
    acked, refused = _acked(lines), _acked(lines, "changed")
    if "train" not in s.splits():
        return []
    d = s.split("train")
    X, y = d.embeddings.values, d.labels.values
    bad = []
    if not np.isfinite(X).all() or (y < 0).any() or (y >= K).any():
        bad.append(f"{int((~np.isfinite(X)).any(1).sum())} NaN rows, "
                   f"{int(((y < 0) | (y >= K)).sum())} labels out of range")
        return bad
    head = int((X[:, 0] == 9).sum())
    if head not in (0, FILE_ROWS) or not (X[:head, 0] == 9).all():
        bad.append(f"{head} rows of the imported file, at {np.nonzero(X[:, 0] == 9)[0][:5]}")
    body = X[head:]
    if len(body) % ROWS or not (body[:, 0] == 1).all():
        return bad + [f"{len(body)} appended rows, not whole batches of {ROWS}"]
    batches = [int(b) for b in body[::ROWS, 1]]
    for j, b in enumerate(batches):
        rows, labels = body[j * ROWS:(j + 1) * ROWS], y[head + j * ROWS: head + (j + 1) * ROWS]
        if not ((rows[:, 1] == b).all() and (rows[:, 2] == np.arange(ROWS)).all()
                and (labels == (b + np.arange(ROWS)) % K).all()):
            bad.append(f"batch {b} at row {head + j * ROWS} is not whole")
        if b in acked and acked[b] != head + (j + 1) * ROWS:
            bad.append(f"batch {b} at row {head + j * ROWS}, acknowledged with "
                       f"{acked[b]} committed rows")
    if batches and batches != list(range(batches[0], batches[0] + len(batches))):
        bad.append(f"appended batches out of order, lost or repeated: {batches}")
    if set(batches) & set(refused):
        bad.append(f"batches {sorted(set(batches) & set(refused))} refused but present")
    late = sorted(b for b in acked if batches and b > batches[-1])
    if late:
        bad.append(f"batches {late} acknowledged but missing (last present {batches[-1]})")
    return bad


@pytest.mark.slow
def test_appender_racing_deletes_and_overwrites_keeps_every_acknowledged_row(tmp_path):
    """An appender process in a loop, another process deleting and overwriting the split
    (audited before each): every acknowledged row present once unless deleted later, none
    damaged, `check` clean. Without the lock protocol rows read as NaN and fill labels."""
    url = str(tmp_path / "s.zarr")
    ncdask.EmbeddingStore.create(url, K, D, chunk_rows=8)
    xf, yf = tmp_path / "X.npy", tmp_path / "y.npy"
    Xf = np.zeros((FILE_ROWS, D), np.float32)
    Xf[:, 0] = 9
    np.save(xf, Xf)
    np.save(yf, np.arange(FILE_ROWS) % K)
    acks = tmp_path / "acks"
    with open(acks, "w") as out:
        app = python(_APPENDER, url, "200", "{}", stdout=out, stderr=subprocess.PIPE, env=ENV)
        mut = python(_MUTATOR, url, "30", str(xf), str(yf), str(acks), os.path.dirname(__file__),
                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV)
        m_out, m_err = mut.communicate(timeout=240)
        a_err = app.communicate(timeout=240)[1]
    assert app.returncode == 0, f"the appender failed:\n{a_err[-3000:]}"
    assert mut.returncode == 0, f"the mutator failed:\n{m_err[-3000:]}"
    found = [ln for ln in m_out.splitlines() if ln.startswith("bad")]
    s = ncdask.EmbeddingStore.open(url)
    found += [f"bad at the end: {b}" for b in audit(s, acks)]
    r = ncdask.check_store(url)
    assert not found and r.ok, "\n".join(found + r.problems[:20])
    assert "ok 199" in acks.read_text()  # every append committed (the lock: never refused)


_IMPORTER = """
import os, sys, time, ncdask
url, xf, yf, go = sys.argv[1:5]
s = ncdask.EmbeddingStore.open(url, "a")
print("ready", flush=True)
for split, layer in (("train", "fc"), ("val", "fc"), ("test", None)):
    while not os.path.exists(go + split):
        time.sleep(0.001)
    print(split, s.import_files(split, xf, yf, layer=layer), flush=True)
"""


@pytest.mark.slow
def test_importers_creating_one_new_split_at_once_all_succeed(tmp_path):
    """4 imports of 4 files into one new split at the same instant (in a new set, in it
    again, in the default set): each succeeds and each file is in the split once, whole."""
    url, n, rows = str(tmp_path / "s.zarr"), 4, 50
    ncdask.EmbeddingStore.create(url, K, D, chunk_rows=8)
    files = []
    for r in range(n):
        X = np.zeros((rows + r, D), np.float32)
        X[:, 0], X[:, 1] = r, np.arange(rows + r)
        files.append((tmp_path / f"X{r}.npy", tmp_path / f"y{r}.npy"))
        np.save(files[-1][0], X)
        np.save(files[-1][1], (r + np.arange(rows + r)) % K)
    go = str(tmp_path / "go-")
    procs = [python(_IMPORTER, url, str(xf), str(yf), go, stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE, env=ENV)
             for xf, yf in files]
    try:
        assert [p.stdout.readline() for p in procs] == ["ready\n"] * n
        for split, layer in (("train", "fc"), ("val", "fc"), ("test", None)):
            open(go + split, "w").close()
            if not all([p.stdout.readline() for p in procs]):
                errs = [f"importer {r}: {p.communicate(timeout=60)[1][-800:]}"
                        for r, p in enumerate(procs) if p.poll() is not None and p.returncode]
                pytest.fail(f"importing {split!r} at once failed:\n" + "\n".join(errs))
            X = ncdask.EmbeddingStore.open(url).split(split, layer=layer).embeddings.values
            assert X.shape[0] == sum(rows + r for r in range(n))
            starts = np.nonzero(X[:, 1] == 0)[0]
            assert sorted(X[starts, 0].astype(int).tolist()) == list(range(n))
            for i in starts:  # each file whole, in one piece
                r = int(X[i, 0])
                np.testing.assert_array_equal(X[i:i + rows + r, 1], np.arange(rows + r))
        assert [p.wait(timeout=60) for p in procs] == [0] * n
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.communicate()
    assert ncdask.check_store(url).ok


_CREATOR = """
import sys, time, numpy as np, ncdask
from ncdask.store import core
put = core.put_once
def announced(parent, name, build):
    out = put(parent, name, build)
    if name == "embeddings":  # a split's creation, half done
        print("embeddings", flush=True)
        time.sleep(30)
    return out
core.put_once = announced
s = ncdask.EmbeddingStore.open(sys.argv[1], "a")
s.append(sys.argv[2], np.ones((3, 4), np.float32), np.arange(3), layer=sys.argv[3] or None)
"""


@pytest.mark.parametrize("layer", ["", "new"])
def test_sigkill_while_a_split_is_created_leaves_other_splits_readable(tmp_path, layer):
    """SIGKILL of a process creating a split (in a new set with ``layer``) after its first
    array: readers do not see the half-made split, every other split reads and `check` notes
    it; the next append completes it."""
    url = str(tmp_path / "s.zarr")
    s = ncdask.EmbeddingStore.from_arrays(url, {"train": (np.ones((6, D)), np.arange(6) % K)})
    p = python(_CREATOR, url, "half", layer, stdout=subprocess.PIPE, env=ENV)
    try:
        assert p.stdout.readline().strip() == "embeddings"
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
        p.stdout.close()
    key = {"layer": layer or None}
    s = ncdask.EmbeddingStore.open(url, "a")
    assert s.splits() == ["train"] and s.splits(**key) in (["train"], [])
    for tags in s.sets():  # every listed split reads, statistics too
        for split in s.splits(**tags):
            assert np.isfinite(s.split(split, **tags).embeddings.values).all()
            ncdask.class_stats(s.split(split, **tags)).compute()
    r = ncdask.check_store(url)
    assert r.ok and any("half: arrays of a split without its" in n for n in r.notes), r.notes
    assert s.append("half", np.full((2, D), 2.0), np.arange(2), **key) == 2  # completed
    np.testing.assert_array_equal(s.split("half", **key).embeddings.values, 2.0)
    r = ncdask.check_store(url)
    assert r.ok and not any("interrupted" in n for n in r.notes), r.notes


def test_a_record_without_arrays_from_an_older_ncdask_is_invisible_then_completed(tmp_path):
    """Older ncdask wrote a split's record before its arrays: a kill between left a record
    that broke every read of the store. It is now skipped, noted, and completed on append."""
    url = str(tmp_path / "s.zarr")
    s = ncdask.EmbeddingStore.from_arrays(url, {"train": (np.ones((6, D)), np.arange(6) % K)})
    rec = {"split": "half", "layer": None, "epoch": None, "n_committed": 0, "n_batches": 0,
           "class_counts": [0] * K, "labelled": True, "finite": True}  # as older ncdask wrote
    zarr.open_group(url, mode="r+").create_group("half", attributes={"ncdask_split": rec})
    assert s.splits() == ["train"]
    with pytest.raises(KeyError, match="unknown split 'half'"):
        s.split("half")
    r = ncdask.check_store(url)
    assert r.ok and any("half: a split whose creation" in n for n in r.notes), r.notes
    assert s.append("half", np.ones((2, D)), np.arange(2)) == 2
    assert s.splits() == ["half", "train"] and ncdask.check_store(url).ok


@pytest.mark.parametrize("how", ["delete", "overwrite"])
def test_a_writer_whose_split_was_deleted_or_replaced_raises(tmp_path, how):
    """A buffered writer never writes into the split that took its split's place."""
    url = str(tmp_path / "s.zarr")
    np.save(tmp_path / "X.npy", np.full((4, D), 7.0, np.float32))
    np.save(tmp_path / "y.npy", np.arange(4) % K)
    a = ncdask.EmbeddingStore.create(url, K, D, chunk_rows=4)
    b = ncdask.EmbeddingStore.open(url, "a")
    with a.writer("train") as w:
        w.append(np.ones((4, D)), np.arange(4) % K)  # committed: a whole chunk
        w.append(np.ones((1, D)), np.array([1]))  # buffered
        if how == "delete":
            b.delete_split("train")
            b.append("train", np.full((2, D), 3.0), np.arange(2))
        else:
            b.import_files("train", str(tmp_path / "X.npy"), str(tmp_path / "y.npy"),
                           mode="overwrite")
        with pytest.raises(SplitChangedError, match="'train'.*(deleted|replaced)"):
            w.flush()
        w.closed = True
    X = ncdask.EmbeddingStore.open(url).split("train").embeddings.values
    assert (X == (3.0 if how == "delete" else 7.0)).all()


def test_a_shard_of_a_deleted_split_is_never_read_in_its_successor(tmp_path):
    """Shards carry their split's generation: a shard committed late into a split deleted
    and made again (an object store's race) is not read, and its writer starts a new one."""
    import shutil

    import dask

    url = str(tmp_path / "s.zarr")
    with dask.config.set({"ncdask.writers": "shards"}):
        a = ncdask.EmbeddingStore.create(url, K, D, chunk_rows=4)
        b = ncdask.EmbeddingStore.open(url, "a")
        a.append("train", np.full((3, D), 1.0), np.arange(3))
        late = tmp_path / "late"
        shutil.copytree(tmp_path / "s.zarr" / "train" / "shards", late)
        b.delete_split("train")
        b.append("train", np.full((2, D), 2.0), np.arange(2))
        for p in (q for q in late.iterdir() if q.is_dir()):  # the old shard, committed late
            shutil.copytree(p, tmp_path / "s.zarr" / "train" / "shards" / p.name)
        assert a.append("train", np.full((1, D), 3.0), np.array([3])) == 3
    X = ncdask.EmbeddingStore.open(url).split("train").embeddings.values
    np.testing.assert_array_equal(X[:, 0], [2.0, 2.0, 3.0])
    assert ncdask.check_store(url).ok


def test_a_read_of_a_split_deleted_meanwhile_names_the_delete(tmp_path):
    """A lazy read whose split is deleted before it computes is told so, not that the store
    is damaged."""
    url = str(tmp_path / "s.zarr")
    s = ncdask.EmbeddingStore.from_arrays(url, {"train": (np.ones((20, D)), np.arange(20) % K)},
                                          chunk_rows=4)
    d = s.split("train")
    s.delete_split("train")
    with pytest.raises(SplitChangedError, match="'train'.*deleted or replaced while it was read"):
        d.embeddings.compute()
    assert ncdask.check_store(url).ok


def test_a_read_of_a_split_replaced_by_a_shorter_one_names_the_replace(tmp_path):
    """Labels of a lazy read whose split an import overwrote with fewer rows: the rows past the
    new end read as the fill, in chunks that exist; that is a replace, not damage."""
    url = str(tmp_path / "s.zarr")
    s = ncdask.EmbeddingStore.from_arrays(url, {"train": (np.ones((22, D)), np.arange(22) % K)},
                                          chunk_rows=8)
    d = s.split("train")
    np.save(tmp_path / "X.npy", np.ones((3, D), np.float32))
    np.save(tmp_path / "y.npy", np.arange(3) % K)
    s.import_files("train", str(tmp_path / "X.npy"), str(tmp_path / "y.npy"), mode="overwrite")
    with pytest.raises(SplitChangedError, match="'train'.*deleted or replaced while it was read"):
        d.labels[:8].compute()  # chunk 0 exists in the new split: 3 labels, then the fill
    assert ncdask.check_store(url).ok


def test_a_split_deleted_while_it_is_opened_names_the_delete(tmp_path, monkeypatch):
    """A delete landing between a read's snapshot of the records and its check of the arrays
    (seen on S3, where nothing locks) is SplitChangedError, not damage."""
    import ncdask.store.reads as reads

    url = str(tmp_path / "s.zarr")
    s = ncdask.EmbeddingStore.from_arrays(url, {"train": (np.ones((8, D)), np.arange(8) % K)},
                                          chunk_rows=4)
    other, check = ncdask.EmbeddingStore.open(url, "a"), reads.check_record

    def racing(p, *args):
        other.delete_split("train")
        return check(p, *args)

    monkeypatch.setattr(reads, "check_record", racing)
    with pytest.raises(SplitChangedError, match="'train'.*deleted or replaced while it was op"):
        s.split("train")


def test_cached_statistics_of_a_split_deleted_meanwhile_name_the_delete(tmp_path, monkeypatch):
    """The cache's incremental read of new rows, racing a delete, is told so (not KeyError)."""
    import ncdask.stats.cache as cache

    url = str(tmp_path / "s.zarr")
    s = ncdask.EmbeddingStore.from_arrays(url, {"train": (np.ones((8, D)), np.arange(8) % K)},
                                          chunk_rows=4)
    ncdask.class_stats(s, "train", cache=True)
    s.append("train", np.ones((4, D)), np.arange(4) % K)
    other, parts_of = ncdask.EmbeddingStore.open(url, "a"), cache.committed_parts

    def racing(*args):
        parts = parts_of(*args)
        other.delete_split("train")
        return parts

    monkeypatch.setattr(cache, "committed_parts", racing)
    with pytest.raises(SplitChangedError, match="'train'.*deleted or replaced"):
        ncdask.class_stats(s, "train", cache=True)


def test_a_writer_opened_while_its_split_is_deleted_attaches_whole_or_not_at_all(
        tmp_path, monkeypatch):
    """A delete landing between the writer's lookup of its split and its look at the arrays
    waits for the writer's shared lock; the writer then finds its split changed."""
    import threading

    from ncdask.store.core import Core

    url = str(tmp_path / "s.zarr")
    s = ncdask.EmbeddingStore.from_arrays(url, {"train": (np.ones((8, D)), np.arange(8) % K)},
                                          chunk_rows=4)
    other = ncdask.EmbeddingStore.open(url, "a")
    find, started = Core.find_split, threading.Event()

    def racing(core, split, key):
        g = find(core, split, key)
        if started.is_set():  # the delete's own lookup (it runs while this is patched)
            return g
        threading.Thread(target=lambda: (started.set(), other.delete_split("train"))).start()
        started.wait()
        time.sleep(0.3)  # the delete runs now unless the lock holds it back
        return g

    monkeypatch.setattr(Core, "find_split", racing)
    w = s.writer("train")
    monkeypatch.setattr(Core, "find_split", find)
    time.sleep(0.3)  # the delete, released, completes
    with pytest.raises(SplitChangedError, match="'train'"):
        w.append(np.ones((4, D)), np.arange(4) % K)  # a whole chunk: written at once
        w.flush()


def test_lock_files_stay_out_of_listings(tmp_path):
    """The lock files live in ``.ncdask`` (a Zarr group, never a set or split)."""
    url = str(tmp_path / "s.zarr")
    s = ncdask.EmbeddingStore.create(url, K, D)
    s.append("train", np.ones((2, D)), np.arange(2), layer="fc")
    s.delete_split("train", layer="fc")
    s.append("train", np.ones((2, D)), np.arange(2))
    assert list((tmp_path / "s.zarr" / ".ncdask" / "locks").iterdir())
    assert s.sets() == [{}] and s.splits() == ["train"]
    assert ncdask.check_store(url).ok and not ncdask.check_store(url).notes


@pytest.mark.slow
def test_append_racing_deletes_on_an_object_store_commits_whole_or_raises(s3, tmp_path):  # noqa: F811
    """S3 (no lock): an appender's shard commit racing `delete_split` either stays in the
    split (the same generation) or raises SplitChangedError and is not kept."""
    opts, url = s3[0], f"s3://{s3[1]}/race-{uuid.uuid4().hex[:6]}.zarr"
    ncdask.EmbeddingStore.create(url, K, D, chunk_rows=8, storage_options=opts)
    s = ncdask.EmbeddingStore.open(url, "a", storage_options=opts)
    app = python(_APPENDER, url, "24", json.dumps(opts), stdout=subprocess.PIPE,
                 stderr=subprocess.PIPE, env=ENV)
    deletes = 0
    try:
        first = app.stdout.readline()  # started
        while app.poll() is None:
            try:
                s.delete_split("train")
                deletes += 1
            except KeyError:
                pass
            time.sleep(0.3)
        out, err = app.communicate(timeout=60)
    finally:
        if app.poll() is None:
            app.kill()
    assert app.returncode == 0, err[-3000:]
    acks = tmp_path / "acks"
    acks.write_text(first + out + "end\n")
    assert deletes > 3
    bad = audit(ncdask.EmbeddingStore.open(url, storage_options=opts), acks)
    r = ncdask.check_store(url, storage_options=opts)
    assert not bad and r.ok, "\n".join(bad + r.problems)
