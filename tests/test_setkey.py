"""The set key: one embedding set's ``layer`` / ``epoch`` tags, checked once."""

import dataclasses

import numpy as np
import pytest

import ncdask
from ncdask.store.setkey import DEFAULT, SET_TAGS, SetKey


def test_default_set():
    k = SetKey()
    assert k == DEFAULT and k.is_default
    assert k.path == "" and k.where is None and k.tags == {}
    assert SetKey.from_tags({}) == k


@pytest.mark.parametrize("layer, epoch, path", [
    ("fc", None, "layer=fc"),
    (None, 3, "epoch=3"),
    ("fc_in", 12, "layer=fc_in/epoch=12"),
    ("a.b-c", 0, "layer=a.b-c/epoch=0"),
])
def test_path_and_tags_round_trip(layer, epoch, path):
    k = SetKey(layer, epoch)
    assert k.path == path and k.where == path and not k.is_default
    assert SetKey.from_tags(k.tags) == k
    assert SetKey(**k.tags) == k
    assert k.tags == {t: v for t, v in (("layer", layer), ("epoch", epoch)) if v is not None}


@pytest.mark.parametrize("layer", ["", "a/b", "a=b", ".hidden", 3, "a b"])
def test_bad_layer_names_are_refused(layer):
    with pytest.raises(ValueError, match="layer name must be"):
        SetKey(layer)


@pytest.mark.parametrize("epoch", [True, False, 1.0, "3", np.float32(2)])
def test_epochs_must_be_integers(epoch):
    with pytest.raises(TypeError, match="epoch must be an integer"):
        SetKey(epoch=epoch)


def test_numpy_epochs_become_ints():
    k = SetKey("fc", np.int64(4))
    assert type(k.epoch) is int and k == SetKey("fc", 4)
    assert hash(k) == hash(SetKey("fc", 4))


def test_frozen_and_hashable():
    k = SetKey("fc", 1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        k.epoch = 2
    d = {k: "a", SetKey(): "b"}
    assert d[SetKey("fc", 1)] == "a" and d[DEFAULT] == "b"
    assert len({SetKey("fc", 1), SetKey("fc", 1), SetKey("fc")}) == 2


def test_unknown_tags_are_refused():
    with pytest.raises(TypeError, match="unknown set tag"):
        SetKey.from_tags({"layer": "fc", "step": 3})
    assert SET_TAGS == ("layer", "epoch")


def test_order():
    keys = [SetKey("b", 2), SetKey("a"), SetKey(epoch=5), SetKey("a", 10), SetKey(),
            SetKey("a", 2), SetKey(epoch=1)]
    assert sorted(keys) == [SetKey(), SetKey(epoch=1), SetKey(epoch=5), SetKey("a"),
                            SetKey("a", 2), SetKey("a", 10), SetKey("b", 2)]
    assert SetKey("a", 2) <= SetKey("a", 2) and SetKey("a", 2) > SetKey("a")
    with pytest.raises(TypeError):
        SetKey() < ("a", 1)  # noqa: B015


def test_store_paths_are_the_keys_paths(tmp_path):
    s = ncdask.EmbeddingStore.create(str(tmp_path / "s.zarr"), n_classes=2, dim=3)
    X, y = np.ones((4, 3)), np.array([0, 1, 0, 1])
    for tags in ({}, {"layer": "fc"}, {"epoch": 2}, {"layer": "fc", "epoch": 7}):
        s.append("train", X, y, **tags)
        k = SetKey.from_tags(tags)
        assert s.core.set_group(k).path == k.path
        assert s.split("train", **tags).attrs.get("layer") == k.layer
    assert [SetKey.from_tags(t) for t in s.sets()] == sorted(
        [SetKey(), SetKey("fc"), SetKey(epoch=2), SetKey("fc", 7)])


def test_pickles():
    import pickle

    for k in (SetKey(), SetKey("fc", 3)):
        assert pickle.loads(pickle.dumps(k)) == k


def test_numpy_epoch_through_the_public_api(tmp_path):
    s = ncdask.EmbeddingStore.create(str(tmp_path / "s.zarr"), n_classes=2, dim=3)
    with s.writer("train", layer="fc", epoch=np.int64(2)) as w:
        w.append(np.ones((4, 3)), np.array([0, 1, 0, 1]))
    ds = s.split("train", layer="fc", epoch=np.int32(2))
    assert ds.attrs["epoch"] == 2 and type(ds.attrs["epoch"]) is int
    assert s.sets() == [{"layer": "fc", "epoch": 2}]
    assert s.n_rows("train", layer="fc", epoch=2) == 4
    with pytest.raises(TypeError, match="epoch must be an integer"):
        s.append("train", np.ones((1, 3)), np.array([0]), layer="fc", epoch=2.0)
    with pytest.raises(ValueError, match="layer name must be"):
        s.writer("train", layer="a/b")


def test_the_store_modules_keep_their_import_paths():
    from ncdask import store

    for name in ("EmbeddingStore", "StoreWriter", "resolve_split", "array_backend", "on_backend",
                 "DuplicateImportError", "DamagedStoreError", "NcdaskStoreError", "CHUNK_BYTES"):
        assert hasattr(store, name), name
    assert ncdask.StoreWriter is store.StoreWriter
    for method in ("append", "writer", "set_classifier", "classifier", "import_files", "split",
                   "splits", "sets", "dim_of", "create_set", "delete_split", "n_rows", "sources"):
        assert callable(getattr(store.EmbeddingStore, method)), method
