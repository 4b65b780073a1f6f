"""The store on a real object store: an S3-protocol server (moto) on the loopback.

Object stores have no rename and no lock: writers there append to shards of
their own (``ncdask.writers`` = "auto" picks them for any non-local URL), so
concurrent processes keep every row.
"""

import json
import os
import subprocess
import time
import uuid

import numpy as np
import pytest
from killing import python, run
from moto.server import ThreadedMotoServer

import ncdask

K, D = 5, 4


@pytest.fixture(scope="module")
def s3():
    """``(options, bucket)``: storage options for a fresh bucket on a local moto server."""
    import s3fs

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    opts = {"key": "testing", "secret": "testing",
            "client_kwargs": {"endpoint_url": f"http://{host}:{port}", "region_name": "eu-west-1"}}
    bucket = f"ncdask-{uuid.uuid4().hex[:8]}"
    fs = s3fs.S3FileSystem(**opts)
    fs.mkdir(bucket)
    yield opts, bucket
    server.stop()


def _url(s3, name):
    return f"s3://{s3[1]}/{name}-{uuid.uuid4().hex[:6]}.zarr"


def test_roundtrip_and_stats_on_s3(s3):
    opts = s3[0]
    url = _url(s3, "rt")
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(90, D)).astype(np.float32), np.arange(90) % K
    s = ncdask.EmbeddingStore.create(url, K, D, chunk_rows=16, storage_options=opts)
    s.append("train", X[:10], y[:10])
    with s.writer("train") as w:
        for i in range(10, 90, 7):
            w.append(X[i:i + 7], y[i:i + 7])
    s = ncdask.EmbeddingStore.open(url, storage_options=opts)
    d = s.split("train")
    np.testing.assert_array_equal(d.embeddings.values, X)
    np.testing.assert_array_equal(d.labels.values, y)
    st = ncdask.class_stats(s, "train").compute()
    np.testing.assert_array_equal(st.counts.values, np.bincount(y, minlength=K))
    np.testing.assert_allclose(st.means.values, np.stack([X[y == k].mean(0) for k in range(K)]),
                               rtol=1e-6)


_RANK = """
import json, os, sys, time, numpy as np, ncdask
url, rank, go, opts = sys.argv[1], int(sys.argv[2]), sys.argv[3], json.loads(sys.argv[4])
s = ncdask.EmbeddingStore.open(url, "a", storage_options=opts)
print("ready", flush=True)
t0 = time.time()
while not os.path.exists(go):
    if time.time() - t0 > 120:
        sys.exit("never told to go")
    time.sleep(0.001)
for b in range(int(sys.argv[5])):
    X = np.empty((3, 4), np.float32)
    X[:, 0], X[:, 1], X[:, 2:] = rank, b, np.arange(3)[:, None]
    s.append("shared", X, (rank + b + np.arange(3)) % 5)
"""


@pytest.mark.slow
@pytest.mark.parametrize("trial", [0])
def test_four_processes_appending_to_one_new_split_on_s3(s3, tmp_path, trial):
    opts, ranks, batches = s3[0], 4, 10
    url = _url(s3, f"conc{trial}")
    ncdask.EmbeddingStore.create(url, K, D, chunk_rows=8, storage_options=opts)
    go = tmp_path / "go"
    procs = [python(_RANK, url, str(r), str(go), json.dumps(opts), str(batches),
                    env={**os.environ, "PYTHONWARNINGS": "ignore"}, stdout=subprocess.PIPE)
             for r in range(ranks)]
    try:
        assert [p.stdout.readline().strip() for p in procs] == ["ready"] * ranks
        go.write_text("go")
        assert [p.wait(timeout=600) for p in procs] == [0] * ranks
    finally:
        for p in procs:
            p.kill()
            p.communicate()
    s = ncdask.EmbeddingStore.open(url, storage_options=opts)
    d = s.split("shared")
    X, y = d.embeddings.values, d.labels.values
    assert X.shape == (ranks * batches * 3, D)
    got = sorted((int(X[i, 0]), int(X[i, 1])) for i in range(0, X.shape[0], 3))
    assert got == [(r, b) for r in range(ranks) for b in range(batches)]  # each exactly once
    for i in range(0, X.shape[0], 3):
        r, b = int(X[i, 0]), int(X[i, 1])
        np.testing.assert_array_equal(X[i:i + 3, 2], np.arange(3))
        np.testing.assert_array_equal(y[i:i + 3], (r + b + np.arange(3)) % K)
    np.testing.assert_array_equal(d.attrs["class_counts"], np.bincount(y, minlength=K))
    assert s.n_rows("shared") == X.shape[0]


@pytest.mark.slow
@pytest.mark.parametrize("what", ["classifier", "output", "copying"])
def test_sigkill_during_replaces_on_s3_keeps_one_whole_version(s3, what, killed_lease):
    """No rename on S3: the classifier switches by a pointer PUT, outputs by a copy that
    marks the target incomplete until its root metadata lands (read from the staged copy
    meanwhile); "copying" kills in the copy phase itself (the target then has no root
    metadata). Each kill leaves the old version or the new, whole; once the killed
    writers' leases expire, the next writers leave nothing else behind."""
    import s3fs
    import xarray as xr
    from killing import classifier_survives_kills, output_survives_kills

    from ncdask.store.zarrio import write_dataset

    url = _url(s3, what)
    if what == "classifier":
        classifier_survives_kills(url, s3[0], [0.0, 1.0])
    else:
        output_survives_kills(url, s3[0], [0.0, 1.0] if what == "output" else [0.0, 0.2],
                              marker="copying" if what == "copying" else None)
    time.sleep(killed_lease + 0.1)
    fs = s3fs.S3FileSystem(**s3[0])
    path = url[len("s3://"):]
    if what == "classifier":
        s = ncdask.EmbeddingStore.open(url, "a", storage_options=s3[0])
        s.core.tidy()
        fs.invalidate_cache()
        assert sorted(p.rsplit("/", 1)[-1] for p in fs.ls(path) if "/." in p) == sorted(
            [".ncdask", s.core.group.attrs["ncdask_classifier"]])
    else:
        write_dataset(xr.Dataset({"z": ("x", np.zeros(3))}), url, kind="results",
                      overwrite=True, storage_options=s3[0])
        fs.invalidate_cache()
        assert [p for p in fs.ls(s3[1]) if p.startswith(path)] == [path]


_IMPORT = """
import sys, json, ncdask
url, opts = sys.argv[1], json.loads(sys.argv[2])
s = ncdask.EmbeddingStore.open(url, "a", storage_options=opts)
print("start", flush=True)
s.import_files("train", sys.argv[3], sys.argv[4])
print("done", flush=True)
"""


def _npy(tmp_path, name, n, first):
    X = np.zeros((n, D), np.float32)
    X[:, 0] = first + np.arange(n)  # each row says which it is
    y = (first + np.arange(n)) % K
    xa, ya = str(tmp_path / f"{name}_X.npy"), str(tmp_path / f"{name}_y.npy")
    np.save(xa, X)
    np.save(ya, y)
    return xa, ya


@pytest.mark.slow
def test_imports_on_s3_go_to_shards_and_are_never_duplicated(s3, tmp_path):
    """Importers on an object store write their own shard and commit it in one PUT:
    concurrent imports keep every row, a killed one commits nothing, a re-run adds
    each row once, a repeated source is refused, and a split is deleted without a copy."""
    import signal
    import time

    from ncdask import DuplicateImportError

    opts = s3[0]
    url = _url(s3, "imp")
    s = ncdask.EmbeddingStore.create(url, K, D, chunk_rows=512, storage_options=opts)
    sizes = (3000, 3000, 20_000)
    files = [_npy(tmp_path, f"f{i}", n, 100_000 * i) for i, n in enumerate(sizes)]
    procs = [python(_IMPORT, url, json.dumps(opts), *f, stdout=subprocess.PIPE,
                    env={**os.environ, "PYTHONWARNINGS": "ignore"})
             for f in files[:2]]
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    for p in procs:
        p.stdout.close()
    # a third import, killed as soon as it starts writing: nothing of it is committed
    p = python(_IMPORT, url, json.dumps(opts), *files[2], stdout=subprocess.PIPE,
               env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert p.stdout.readline().strip() == "start"
    time.sleep(0.5)
    p.send_signal(signal.SIGKILL)
    p.wait()
    p.stdout.close()
    s = ncdask.EmbeddingStore.open(url, "a", storage_options=opts)
    n = s.n_rows("train")
    assert n in (6000, 26_000)
    if n == 6000:
        assert s.import_files("train", *files[2]) == 26_000
    with pytest.raises(DuplicateImportError):
        s.import_files("train", *files[0])
    with pytest.raises(ValueError, match="delete the split first"):
        s.import_files("train", *files[0], mode="overwrite")
    d = s.split("train")
    ids = np.sort(d.embeddings.values[:, 0].astype(np.int64))
    want = np.sort(np.concatenate([100_000 * i + np.arange(n) for i, n in enumerate(sizes)]))
    np.testing.assert_array_equal(ids, want)  # every row once
    np.testing.assert_array_equal(d.labels.values, d.embeddings.values[:, 0].astype(int) % K)
    assert len(s.sources("train")) == 3
    np.testing.assert_array_equal(d.attrs["class_counts"], np.bincount(d.labels.values,
                                                                       minlength=K))
    assert s.delete_split("train") == 26_000
    assert s.splits() == []
    s.append("train", np.ones((2, D), np.float32), np.array([0, 1]))
    assert s.n_rows("train") == 2


def test_from_arrays_refuses_a_replace_it_cannot_make_atomic_on_s3(s3):
    opts = s3[0]
    url = _url(s3, "fa")
    X, y = np.ones((6, D), np.float32), np.arange(6) % K
    ncdask.EmbeddingStore.from_arrays(url, {"train": (X, y)}, n_classes=K,
                                      storage_options=opts)
    with pytest.raises(ValueError, match="no rename"):
        ncdask.EmbeddingStore.from_arrays(url, {"train": (2 * X, y)}, n_classes=K,
                                          overwrite=True, storage_options=opts)
    s = ncdask.EmbeddingStore.open(url, storage_options=opts)
    np.testing.assert_array_equal(s.split("train").embeddings.values, X)  # untouched


_APPEND = """
import sys, json, numpy as np, ncdask
s = ncdask.EmbeddingStore.open(sys.argv[1], "a", storage_options=json.loads(sys.argv[2]))
first, n, split = int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
X = np.zeros((n, 4), np.float32)
X[:, 0] = first + np.arange(n)
s.append(split, X, (first + np.arange(n)) % 5, layer=sys.argv[6] or None)
"""


@pytest.mark.slow
def test_a_handle_sees_rows_other_processes_append_on_s3(s3):
    """A handle that has listed a split's shards sees the shards and rows that other
    processes commit later, and their new splits and sets: fsspec's cached listings never
    hide committed parts."""
    opts = s3[0]
    url = _url(s3, "fresh")
    a = ncdask.EmbeddingStore.create(url, K, D, chunk_rows=8, storage_options=opts)

    def other_process(first, rows, split="train", layer=""):
        run(_APPEND, url, json.dumps(opts), str(first), str(rows), split, layer, check=True,
            env={**os.environ, "PYTHONWARNINGS": "ignore"})

    n = 0
    for first, rows in ((0, 21), (100, 30)):  # main's handle saw 21 of 51
        other_process(first, rows)
        n += rows
        ids = np.sort(a.split("train").embeddings.values[:, 0])
        assert a.n_rows("train") == n == ids.size, f"the handle sees {ids.size} of {n} rows"
        assert int(ncdask.class_stats(a, "train").n_samples) == n
        assert int(ncdask.class_stats(a, "train", cache=True).n_samples) == n
    np.testing.assert_array_equal(ids, np.concatenate([np.arange(21), 100 + np.arange(30)]))
    assert a.splits() == ["train"] and a.sets() == [{}]
    other_process(0, 3, "val")
    other_process(0, 3, "val", layer="fc")
    assert a.splits() == ["train", "val"] and a.sets() == [{}, {"layer": "fc"}]
