import numpy as np
import pytest
import zarr

import ncdask
from ncdask._validate import NcdaskStoreError


def committed(store, split="train", **tags):
    return store.split(split, **tags).sizes["sample"]


def test_create_append_read_roundtrip(mem_url):
    rng = np.random.default_rng(1)
    X = rng.normal(size=(100, 5)).astype(np.float32)
    y = rng.integers(0, 3, 100)
    s = ncdask.EmbeddingStore.create(mem_url(), 3, 5, chunk_rows=16, class_names=["a", "b", "c"],
                                     attrs={"model": "resnet"})
    assert s.append("train", X[:40], y[:40]) == 40
    assert s.append("train", X[40:], y[40:]) == 100
    ds = s["train"]
    assert ds.embeddings.dims == ("sample", "feature")
    assert ds.embeddings.data.chunks[0][0] == 16
    np.testing.assert_array_equal(ds.embeddings.values, X)
    np.testing.assert_array_equal(ds.labels.values, y)
    assert ds.attrs["n_classes"] == 3 and ds.attrs["dim"] == 5
    assert ds.attrs["class_names"] == ["a", "b", "c"]
    assert ds.attrs["split"] == "train"
    assert ds.attrs["ncdask_version"] == ncdask.__version__
    np.testing.assert_array_equal(ds.attrs["class_counts"], np.bincount(y, minlength=3))
    s2 = ncdask.EmbeddingStore.open(s.url)
    assert s2.attrs == {"model": "resnet"} and s2.n_classes == 3 and s2.dim == 5
    assert s2.splits() == ["train"] and "train" in s2


def test_local_path_and_default_chunk_rows(tmp_path):
    s = ncdask.EmbeddingStore.create(str(tmp_path / "s.zarr"), 10, 512)
    assert s.chunk_rows == 32768  # 64 MiB of float32 rows
    s.append("test", np.zeros((3, 512)), np.array([1, 2, 3]))
    import xarray as xr

    # the arrays carry dimension names, so plain xarray can open a split too
    raw = xr.open_zarr(str(tmp_path / "s.zarr" / "test"), consolidated=False)
    assert raw.embeddings.dims == ("sample", "feature")


def test_create_refuses_existing_without_overwrite(mem_url):
    url = mem_url()
    ncdask.EmbeddingStore.create(url, 2, 2)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        ncdask.EmbeddingStore.create(url, 2, 2)
    s = ncdask.EmbeddingStore.create(url, 3, 2, overwrite=True)
    assert s.n_classes == 3


def test_writer_buffers_to_whole_chunks(mem_url):
    rng = np.random.default_rng(2)
    X = rng.normal(size=(250, 4)).astype(np.float32)
    y = rng.integers(0, 5, 250)
    s = ncdask.EmbeddingStore.create(mem_url(), 5, 4, chunk_rows=64)
    with s.writer("train") as w:
        seen = []
        for i in range(0, 250, 10):
            w.append(X[i : i + 10], y[i : i + 10])
            seen.append(committed(s))
        # only whole chunks are written while the writer is open
        assert all(n % 64 == 0 for n in seen) and max(seen) == 192
    assert committed(s) == 250
    np.testing.assert_array_equal(s["train"].embeddings.values, X)
    # a second writer continues from a partly filled chunk
    with s.writer("train") as w:
        w.append(X[:20], y[:20])
        assert committed(s) == 256  # the partial chunk is topped up first
    np.testing.assert_array_equal(s["train"].labels.values, np.concatenate([y, y[:20]]))


@pytest.mark.parametrize("kind", ["float64", "int", "list"])
def test_append_converts_inputs(mem_url, kind):
    s = ncdask.EmbeddingStore.create(mem_url(), 2, 3)
    X = np.arange(6).reshape(2, 3)
    X = {"float64": X.astype(np.float64), "int": X, "list": X.tolist()}[kind]
    s.append("train", X, [0, 1])
    assert s["train"].embeddings.dtype == np.float32
    np.testing.assert_array_equal(s["train"].embeddings.values, np.arange(6).reshape(2, 3))


def test_append_torch_tensor(mem_url):
    torch = pytest.importorskip("torch")
    s = ncdask.EmbeddingStore.create(mem_url(), 3, 4)
    X = torch.randn(7, 4)
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0])
    s.append("train", X, y)
    np.testing.assert_array_equal(s["train"].embeddings.values, X.numpy())


BAD = [
    (np.zeros((4, 3)), np.zeros(4, int), ValueError, "dim 3, the store expects dim 4"),
    (np.zeros(4), np.zeros(4, int), ValueError, "must be 2-D"),
    (np.zeros((4, 4)), np.zeros((4, 1), int), ValueError, "labels must be 1-D"),
    (np.zeros((4, 4)), np.zeros(3, int), ValueError, "4 rows but labels have 3"),
    (np.zeros((2, 4)), np.array([0, 5]), ValueError, r"label 5 is outside \[0, 5\)"),
    (np.zeros((2, 4)), np.array([-1, 0]), ValueError, "label -1 is outside"),
    (np.zeros((2, 4)), np.array([0.5, 1.0]), TypeError, "labels must be integers"),
    (np.zeros((2, 4)), np.array(["a", "b"]), TypeError, "labels must be integers"),
    (np.array([[0, 0, np.nan, 0], [0] * 4]), np.array([0, 1]), ValueError, "NaN or inf"),
    (np.array([[0, 0, np.inf, 0], [0] * 4]), np.array([0, 1]), ValueError, "allow_nonfinite"),
    (np.full((1, 4), 1e300), np.array([0]), ValueError, "after casting to float32"),
]


@pytest.mark.parametrize("X,y,exc,msg", BAD)
@pytest.mark.parametrize("via", ["append", "writer"])
def test_bad_input_is_rejected_and_store_untouched(mem_url, X, y, exc, msg, via):
    s = ncdask.EmbeddingStore.create(mem_url(), 5, 4, chunk_rows=8)
    s.append("train", np.ones((3, 4)), np.array([0, 1, 2]))
    with pytest.raises(exc, match=msg):
        if via == "append":
            s.append("train", X, y)
        else:
            with s.writer("train") as w:
                w.append(X, y)
    assert committed(s) == 3
    np.testing.assert_array_equal(s["train"].embeddings.values, np.ones((3, 4)))
    # nothing else was created either
    with pytest.raises(exc):
        s.append("other", X, y)
    assert s.splits() == ["train"]


def test_allow_nonfinite(mem_url):
    s = ncdask.EmbeddingStore.create(mem_url(), 2, 2)
    s.append("train", np.array([[np.nan, 1.0]]), [0], allow_nonfinite=True)
    assert np.isnan(s["train"].embeddings.values[0, 0])


def test_unknown_split_and_bad_names(small_store):
    s, _, _ = small_store
    with pytest.raises(KeyError, match="unknown split 'test'.*splits there: \\['train'\\]"):
        s["test"]
    with pytest.raises(ValueError, match="split name"):
        s.append("a/b", np.zeros((1, 6)), [0])
    with pytest.raises(ValueError, match="split name"):
        s.append("", np.zeros((1, 6)), [0])


def test_not_an_ncdask_store(mem_url):
    url = mem_url()
    zarr.open_group(url, mode="w").attrs["something"] = 1
    with pytest.raises(NcdaskStoreError, match="not an ncdask store"):
        ncdask.EmbeddingStore.open(url)
    with pytest.raises(FileNotFoundError, match="no ncdask store"):
        ncdask.EmbeddingStore.open(mem_url("missing"))


def test_read_only(small_store):
    s, X, y = small_store
    r = ncdask.EmbeddingStore.open(s.url)
    with pytest.raises(PermissionError, match="read-only"):
        r.append("train", X[:2], y[:2])
    with pytest.raises(PermissionError, match="read-only"):
        r.writer("train")
    with pytest.raises(PermissionError, match="read-only"):
        r.set_classifier(np.zeros((4, 6)))
    with pytest.raises(ValueError, match="mode must be"):
        ncdask.EmbeddingStore.open(s.url, mode="w")
    a = ncdask.EmbeddingStore.open(s.url, mode="a")
    assert a.append("train", X[:2], y[:2]) == 302


def test_create_validation(mem_url):
    with pytest.raises(ValueError, match="n_classes must be >= 1"):
        ncdask.EmbeddingStore.create(mem_url(), 0, 3)
    with pytest.raises(ValueError, match="dim must be >= 1"):
        ncdask.EmbeddingStore.create(mem_url(), 2, 0)
    with pytest.raises(ValueError, match="3 class names given for n_classes=2"):
        ncdask.EmbeddingStore.create(mem_url(), 2, 3, class_names=["a", "b", "c"])
    with pytest.raises(TypeError, match="float dtype"):
        ncdask.EmbeddingStore.create(mem_url(), 2, 3, dtype="int32")


def test_classifier_roundtrip(small_store):
    s, _, _ = small_store
    W = np.arange(24.0).reshape(4, 6)
    b = np.array([1.0, 2, 3, 4])
    s.set_classifier(W, b)
    W2, b2 = ncdask.EmbeddingStore.open(s.url).classifier()
    np.testing.assert_array_equal(W2, W)
    np.testing.assert_array_equal(b2, b)
    s.set_classifier(W)
    assert s.classifier()[1] is None
    with pytest.raises(ValueError, match=r"W has shape \(3, 6\)"):
        s.set_classifier(W[:3])
    with pytest.raises(ValueError, match="b has shape"):
        s.set_classifier(W, b[:2])
    with pytest.raises(KeyError, match="no classifier"):
        s.classifier(epoch=3)


def test_embedding_sets(mem_url):
    s = ncdask.EmbeddingStore.create(mem_url(), 3, 2)
    s.append("train", np.zeros((2, 2)), [0, 1])
    for epoch in (1, 2):
        for layer in ("fc_in", "block3"):
            s.append("train", np.full((epoch, 2), epoch), [2] * epoch, layer=layer, epoch=epoch)
            s.set_classifier(np.full((3, 2), epoch), layer=layer, epoch=epoch)
    s.append("test", np.ones((1, 2)), [0], epoch=2)
    assert s.sets() == [
        {}, {"epoch": 2},
        {"layer": "block3", "epoch": 1}, {"layer": "block3", "epoch": 2},
        {"layer": "fc_in", "epoch": 1}, {"layer": "fc_in", "epoch": 2},
    ]
    ds = s.split("train", layer="fc_in", epoch=2)
    assert ds.attrs["layer"] == "fc_in" and ds.attrs["epoch"] == 2
    np.testing.assert_array_equal(ds.embeddings.values, np.full((2, 2), 2))
    assert s.splits(epoch=2) == ["test"]
    np.testing.assert_array_equal(s.classifier(layer="block3", epoch=1)[0], np.ones((3, 2)))
    with pytest.raises(TypeError, match="epoch must be an integer"):
        s.append("train", np.zeros((1, 2)), [0], epoch="x")
    with pytest.raises(ValueError, match="layer name"):
        s.append("train", np.zeros((1, 2)), [0], layer="a=b")


def test_from_arrays(mem_url):
    rng = np.random.default_rng(3)
    tr = (rng.normal(size=(50, 3)), rng.integers(0, 4, 50))
    te = (rng.normal(size=(20, 3)), rng.integers(0, 4, 20))
    W = rng.normal(size=(6, 3))
    s = ncdask.EmbeddingStore.from_arrays(mem_url(), {"train": tr, "test": te}, W=W, chunk_rows=8)
    assert s.n_classes == 6 and s.splits() == ["test", "train"]
    np.testing.assert_allclose(s["test"].embeddings.values, te[0].astype(np.float32))
    np.testing.assert_array_equal(s.classifier()[0], W)
    s2 = ncdask.EmbeddingStore.from_arrays(mem_url(), {"train": tr})
    assert s2.n_classes == tr[1].max() + 1


@pytest.mark.parametrize("fmt", ["npy", "npz", "npz_compressed", "npz_names"])
def test_import_saved_files(tmp_path, mem_url, fmt):
    rng = np.random.default_rng(4)
    X = rng.normal(size=(103, 5)).astype(np.float32)
    y = rng.integers(0, 3, 103)
    if fmt == "npy":
        np.save(tmp_path / "X.npy", X)
        np.save(tmp_path / "y.npy", y)
        args = (str(tmp_path / "X.npy"), str(tmp_path / "y.npy"))
    else:
        save = np.savez_compressed if fmt == "npz_compressed" else np.savez
        keys = {"embeddings": X, "labels": y} if fmt == "npz_names" else {"X": X, "Y": y}
        save(tmp_path / "d.npz", **keys)
        args = (str(tmp_path / "d.npz"),)
    s = ncdask.EmbeddingStore.create(mem_url(), 3, 5, chunk_rows=10)
    assert s.import_files("train", *args) == 103
    np.testing.assert_array_equal(s["train"].embeddings.values, X)
    np.testing.assert_array_equal(s["train"].labels.values, y)


def test_iter_saved_arrays_streams_blocks(tmp_path):
    from ncdask.store.files import iter_saved_arrays

    X = np.arange(40, dtype=np.float64).reshape(20, 2)
    np.savez_compressed(tmp_path / "d.npz", X=X, Y=np.arange(20) % 3)
    blocks = list(iter_saved_arrays(tmp_path / "d.npz", rows=6))
    assert [b[0].shape[0] for b in blocks] == [6, 6, 6, 2]
    np.testing.assert_array_equal(np.concatenate([b[0] for b in blocks]), X)
    np.savez(tmp_path / "bad.npz", A=X)
    with pytest.raises(KeyError, match="no embeddings array"):
        list(iter_saved_arrays(tmp_path / "bad.npz"))
    np.savez(tmp_path / "mis.npz", X=X, Y=np.arange(3))
    with pytest.raises(ValueError, match="do not pair up"):
        list(iter_saved_arrays(tmp_path / "mis.npz"))
    with pytest.raises(ValueError, match="needs a labels file"):
        list(iter_saved_arrays(tmp_path / "X.npy"))


def test_set_classifier_replaces_whole_or_not_at_all(tmp_path):
    """Non-finite weights are refused before anything is written; a replacement is
    written aside and renamed into place, leaving nothing hidden behind."""
    rng = np.random.default_rng(0)
    s = ncdask.EmbeddingStore.create(str(tmp_path / "s.zarr"), 4, 3)
    W0, b0 = rng.normal(size=(4, 3)), rng.normal(size=4)
    s.set_classifier(W0, b0)
    bad = W0.copy()
    bad[1, 2] = np.nan
    with pytest.raises(ValueError, match="NaN or inf"):
        s.set_classifier(bad)
    with pytest.raises(ValueError, match="NaN or inf"):
        s.set_classifier(W0, np.full(4, np.inf))
    W, b = ncdask.EmbeddingStore.open(str(tmp_path / "s.zarr")).classifier()
    np.testing.assert_array_equal(W, W0)
    np.testing.assert_array_equal(b, b0)
    W1 = rng.normal(size=(4, 3))
    s.set_classifier(W1)  # no bias: the old bias goes with the old classifier
    W, b = s.classifier()
    np.testing.assert_array_equal(W, W1)
    assert b is None
    Wl, _ = s.classifier(lazy=True)
    np.testing.assert_array_equal(Wl.compute(), W1)
    # one version is left: the current one, which the set's pointer names
    hidden = [p.name for p in (tmp_path / "s.zarr").iterdir()
              if p.name.startswith(".") and p.name != ".ncdask"]  # .ncdask: the leases
    assert hidden == [zarr.open_group(str(tmp_path / "s.zarr")).attrs["ncdask_classifier"]]


@pytest.mark.parametrize("where", ["local", "memory"])
def test_from_arrays_overwrite_replaces_only_when_complete(tmp_path, mem_url, where):
    url = str(tmp_path / "s.zarr") if where == "local" else mem_url()
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(30, 4)), np.arange(30) % 3
    W = rng.normal(size=(3, 4))
    ncdask.EmbeddingStore.from_arrays(url, {"train": (X, y)}, W)
    bad_labels = {"train": (X, np.full(30, 5))}
    nan_rows = {"train": (np.where(np.arange(30)[:, None] == 29, np.nan, X), y)}
    for splits, W_new, msg in ((bad_labels, None, "label"), (nan_rows, None, "finite|NaN"),
                               ({"train": (2 * X, y)}, np.full((3, 4), np.inf), "NaN or inf")):
        with pytest.raises(ValueError, match=msg):
            ncdask.EmbeddingStore.from_arrays(url, splits, W_new, n_classes=3, overwrite=True)
        s = ncdask.EmbeddingStore.open(url)  # the old store, whole
        np.testing.assert_array_equal(s["train"].embeddings.values, X.astype(np.float32))
        np.testing.assert_array_equal(s.classifier()[0], W)
    if where == "local":
        assert sorted(p.name for p in tmp_path.iterdir()) == ["s.zarr"]
    s = ncdask.EmbeddingStore.from_arrays(url, {"test": (2 * X, y)}, n_classes=3,
                                          overwrite=True)
    assert s.splits() == ["test"] and s.mode == "a"
    # a failed first write leaves nothing behind either
    fresh = str(tmp_path / "new.zarr")
    with pytest.raises(ValueError, match="label"):
        ncdask.EmbeddingStore.from_arrays(fresh, bad_labels, n_classes=3)
    assert not (tmp_path / "new.zarr").exists()


def test_from_arrays_without_any_label_asks_for_n_classes():
    X = np.zeros((0, 4))
    with pytest.raises(ValueError, match="pass n_classes="):
        ncdask.EmbeddingStore.from_arrays("memory://no-labels", {"train": (X, np.zeros(0, int))},
                                          overwrite=True)
