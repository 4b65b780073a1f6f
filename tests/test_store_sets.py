"""Embedding sets of different widths in one store."""

import numpy as np
import pytest
import zarr

import ncdask
from ncdask.store import CHUNK_BYTES


def batch(n, d, seed=0, k=3):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)).astype(np.float32), np.arange(n) % k


def test_append_sets_of_their_own_widths(mem_url):
    s = ncdask.EmbeddingStore.create(mem_url(), 3, 4, chunk_rows=16)
    s.append("train", *batch(10, 4))
    X7, y7 = batch(20, 7, 1)
    assert s.append("train", X7, y7, layer="wide") == 20
    X2, y2 = batch(5, 2, 2)
    s.append("train", X2, y2, layer="narrow", epoch=3)
    s.append("test", X2, y2, layer="narrow", epoch=3)
    assert s.sets() == [{}, {"layer": "narrow", "epoch": 3}, {"layer": "wide"}]
    assert [s.dim_of(**t) for t in s.sets()] == [4, 2, 7]
    assert s.dim == 4 and s.dim_of() == 4
    ds = s.split("train", layer="wide")
    assert ds.embeddings.shape == (20, 7) and ds.attrs["dim"] == 7
    assert ds.feature.values.tolist() == list(range(7))
    np.testing.assert_array_equal(ds.embeddings.values, X7)
    assert s.split("test", layer="narrow", epoch=3).attrs["dim"] == 2
    # later appends must match the set's width; the error names the set and both widths
    with pytest.raises(ValueError, match=r"dim 4, the store expects dim 7 in set layer=wide"):
        s.append("train", *batch(3, 4), layer="wide")
    with pytest.raises(ValueError, match=r"dim 7, the store expects dim 2 in set "
                                         r"layer=narrow/epoch=3"):
        s.append("new_split", X7, y7, layer="narrow", epoch=3)
    assert s.splits(layer="narrow", epoch=3) == ["test", "train"]
    assert s.split("train", layer="wide").sizes["sample"] == 20
    # the default set keeps the store's dim
    with pytest.raises(ValueError, match="dim 7, the store expects dim 4$"):
        s.append("train", X7, y7)
    # statistics follow each set's width
    st = ncdask.class_stats(s.split("train", layer="wide")).compute()
    assert st.means.shape == (3, 7) and st.within_cov.shape == (7, 7)
    np.testing.assert_allclose(st.means.values[0], X7[y7 == 0].mean(0), rtol=1e-6)
    with pytest.raises(KeyError, match="no embedding set 'layer=nope'"):
        s.dim_of(layer="nope")
    # reopened, the widths are still there
    r = ncdask.EmbeddingStore.open(s.url)
    assert r.dim_of(layer="wide") == 7 and r.split("train", layer="wide").attrs["dim"] == 7
    assert "D=4" in repr(r)


def test_writer_takes_width_of_first_batch(mem_url):
    s = ncdask.EmbeddingStore.create(mem_url(), 3, 4, chunk_rows=8)
    X, y = batch(30, 9)
    with s.writer("train", layer="l9") as w:
        assert w.dim is None and s.splits(layer="l9") == []
        for i in range(0, 30, 4):
            w.append(X[i:i + 4], y[i:i + 4])
            assert s.split("train", layer="l9").sizes["sample"] % 8 == 0
        assert w.dim == 9
        with pytest.raises(ValueError, match="dim 4, the store expects dim 9 in set layer=l9"):
            w.append(*batch(2, 4))
    np.testing.assert_array_equal(s.split("train", layer="l9").embeddings.values, X)
    # a second writer knows the width; dim= must agree
    with pytest.raises(ValueError, match="has dim 9, got dim=5"):
        s.writer("test", layer="l9", dim=5)
    with s.writer("test", layer="l9", dim=9) as w:
        # the split appears with its first valid batch, not before
        assert w.dim == 9 and s.splits(layer="l9") == ["train"]
        with pytest.raises(ValueError, match="dim 4"):
            w.append(*batch(2, 4))
        assert s.splits(layer="l9") == ["train"]
        w.append(*batch(2, 9))
        assert s.splits(layer="l9") == ["test", "train"]
    # a writer that gets no batch leaves a new set unwritten
    with s.writer("train", layer="empty"):
        pass
    assert {"layer": "empty"} not in s.sets()
    with pytest.raises(KeyError):
        s.dim_of(layer="empty")
    # dim= fixes the batches' width; the split still appears only with a valid batch
    with s.writer("train", layer="pre", dim=5) as w:
        with pytest.raises(ValueError, match="dim 4"):
            w.append(*batch(2, 4))
    assert "train" not in s.splits(layer="pre")
    with s.writer("train", layer="pre", dim=5) as w:
        w.append(*batch(3, 5))
    assert s.dim_of(layer="pre") == 5 and s.split("train", layer="pre").embeddings.shape == (3, 5)


def test_classifier_and_create_set(mem_url):
    s = ncdask.EmbeddingStore.create(mem_url(), 3, 4)
    # a classifier written first gives a new set its width
    s.set_classifier(np.ones((3, 6)), np.zeros(3), layer="h", epoch=1)
    assert s.dim_of(layer="h", epoch=1) == 6
    with pytest.raises(ValueError, match="dim 4, the store expects dim 6"):
        s.append("train", *batch(2, 4), layer="h", epoch=1)
    s.append("train", *batch(2, 6), layer="h", epoch=1)
    with pytest.raises(ValueError, match=r"W has shape \(3, 4\), expected .* = \(3, 6\) "
                                         r"for set layer=h/epoch=1"):
        s.set_classifier(np.ones((3, 4)), layer="h", epoch=1)
    with pytest.raises(ValueError, match=r"W has shape \(2, 6\)"):
        s.set_classifier(np.ones((2, 6)), layer="new")
    with pytest.raises(ValueError, match="b has shape"):
        s.set_classifier(np.ones((3, 6)), np.zeros(2), layer="new")
    with pytest.raises(KeyError):
        s.dim_of(layer="new")  # nothing was recorded by the refused calls
    # explicit creation
    assert s.create_set(layer="c", dim=12) == 12
    assert s.create_set(layer="c") == 12 and s.create_set(layer="c", dim=12) == 12
    with pytest.raises(ValueError, match="has dim 12 .*got dim 5"):
        s.create_set(layer="c", dim=5)
    assert s.create_set(epoch=9) == 4  # default: the store's dim
    with pytest.raises(ValueError, match="needs layer= or epoch="):
        s.create_set(dim=3)
    with pytest.raises(ValueError, match="dim must be >= 1"):
        s.create_set(layer="z", dim=0)
    # sets() lists sets holding a split; created sets have a width all the same
    assert s.sets() == [{"layer": "h", "epoch": 1}] and s.dim_of(epoch=9) == 4
    s.append("train", *batch(3, 12), layer="c")
    assert s.split("train", layer="c").attrs["dim"] == 12
    r = ncdask.EmbeddingStore.open(s.url)
    with pytest.raises(PermissionError, match="read-only"):
        r.create_set(layer="d", dim=2)


def test_default_chunk_rows_follow_each_sets_width(tmp_path, mem_url):
    s = ncdask.EmbeddingStore.create(str(tmp_path / "s.zarr"), 3, 512)
    assert s.chunk_rows == 32768
    s.append("train", *batch(4, 2048), layer="wide")
    s.append("train", *batch(4, 16), layer="narrow")
    arr = zarr.open_group(str(tmp_path / "s.zarr"), mode="r")
    assert arr["layer=wide/train/embeddings"].chunks == (CHUNK_BYTES // (2048 * 4), 2048)
    assert arr["layer=narrow/train/embeddings"].chunks == (CHUNK_BYTES // (16 * 4), 16)
    assert arr["layer=wide/train/labels"].chunks == (CHUNK_BYTES // (2048 * 4),)
    # chunk_rows given at creation holds for every set
    e = ncdask.EmbeddingStore.create(mem_url(), 3, 4, chunk_rows=10)
    e.append("train", *batch(25, 300), layer="x")
    assert e.split("train", layer="x").embeddings.data.chunks[0] == (10, 10, 5)
    assert e.create_set(layer="y", dim=5, chunk_rows=7) == 5
    e.append("train", *batch(9, 5), layer="y")
    assert e.split("train", layer="y").embeddings.data.chunks[0] == (7, 2)


def test_import_files_into_a_new_set(tmp_path, mem_url):
    X, y = batch(50, 9, 3)
    np.save(tmp_path / "X.npy", X)
    np.save(tmp_path / "y.npy", y)
    np.savez(tmp_path / "d.npz", X=X[:, :5], Y=y)
    s = ncdask.EmbeddingStore.create(mem_url(), 3, 4, chunk_rows=8)
    assert s.import_files("train", str(tmp_path / "X.npy"), str(tmp_path / "y.npy"),
                          layer="a") == 50
    assert s.import_files("train", str(tmp_path / "d.npz"), epoch=2) == 50
    assert (s.dim_of(layer="a"), s.dim_of(epoch=2)) == (9, 5)
    np.testing.assert_array_equal(s.split("train", layer="a").embeddings.values, X)
    with pytest.raises(ValueError, match="dim 5, the store expects dim 9 in set layer=a"):
        s.import_files("test", str(tmp_path / "d.npz"), layer="a")
    assert s.splits(layer="a") == ["train"]  # the failed import left no empty split


def test_format_marks_stores_with_other_widths(mem_url):
    s = ncdask.EmbeddingStore.create(mem_url(), 3, 4)
    s.append("train", *batch(2, 4), layer="same")
    assert zarr.open_group(s.url, mode="r").attrs["ncdask"]["format"] == 1
    s.append("train", *batch(2, 6), layer="other")
    assert zarr.open_group(s.url, mode="r").attrs["ncdask"]["format"] == 2
    assert ncdask.EmbeddingStore.open(s.url).dim_of(layer="other") == 6
    g = zarr.open_group(s.url, mode="r+")
    g.attrs["ncdask"] = dict(g.attrs["ncdask"], format=3)
    with pytest.raises(ncdask.store.NcdaskStoreError, match="format 3"):
        ncdask.EmbeddingStore.open(s.url)


def test_stores_written_before_sets_had_widths(mem_url):
    """No ``ncdask_layout`` and no ``chunk_rows_auto``: existing sets have the store's dim."""
    s = ncdask.EmbeddingStore.create(mem_url(), 3, 4, chunk_rows=16)
    s.append("train", *batch(5, 4), layer="old", epoch=1)
    s.set_classifier(np.ones((3, 4)), epoch=2)
    g = zarr.open_group(s.url, mode="r+")
    for path in ("layer=old/epoch=1", "epoch=2"):
        g[path].attrs.put({k: v for k, v in g[path].attrs.items() if k != "ncdask_layout"})
    meta = dict(g.attrs["ncdask"])
    del meta["chunk_rows_auto"]
    g.attrs["ncdask"] = meta
    old = ncdask.EmbeddingStore.open(s.url, mode="a")
    assert old.dim_of(layer="old", epoch=1) == 4 and old.dim_of(epoch=2) == 4
    with pytest.raises(ValueError, match="expects dim 4 in set layer=old/epoch=1"):
        old.append("train", *batch(2, 6), layer="old", epoch=1)
    old.append("train", *batch(2, 4), layer="old", epoch=1)
    assert old.split("train", layer="old", epoch=1).sizes["sample"] == 7
    # an explicit chunk_rows stays in force for new sets
    old.append("train", *batch(40, 6), layer="new")
    assert old.split("train", layer="new").embeddings.data.chunks[0] == (16, 16, 8)


def test_interrupted_append_to_a_wide_set(tmp_path, monkeypatch, fail_label_writes):
    """Crash safety holds per set: a failed append leaves the committed rows only."""
    url = str(tmp_path / "s.zarr")
    s = ncdask.EmbeddingStore.create(url, 3, 4, chunk_rows=16)
    X0, y0 = batch(20, 12, 0)
    s.append("train", X0, y0, layer="wide")
    fail_label_writes()
    X1, y1 = batch(20, 12, 1)
    with pytest.raises(OSError, match="simulated"):
        s.append("train", X1, y1, layer="wide")
    monkeypatch.undo()
    s = ncdask.EmbeddingStore.open(url, mode="a")
    ds = s.split("train", layer="wide")
    assert ds.sizes["sample"] == 20
    np.testing.assert_array_equal(ds.embeddings.values, X0)
    s.append("train", X1, y1, layer="wide")
    ds = s.split("train", layer="wide")
    np.testing.assert_array_equal(ds.embeddings.values, np.concatenate([X0, X1]))
    np.testing.assert_array_equal(ds.attrs["class_counts"],
                                  np.bincount(np.concatenate([y0, y1]), minlength=3))
