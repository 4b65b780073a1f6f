"""Chunks bound to their place (each chunk's digest in the commit record, checked by
``ncdask check``) and every split read alike (a lost chunk of any split is an error)."""

import pathlib

import dask
import numpy as np
import pytest
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st

import ncdask
from ncdask.cli import main
from ncdask.metrics.api import measure

K, D, ROWS = 3, 4, 64


def _store(tmp_path, **splits):
    rng = np.random.default_rng(0)
    url = str(tmp_path / "s.zarr")
    data = {"train": (rng.normal(size=(300, D)) + 4 * np.eye(K, D)[np.arange(300) % K],
                      np.arange(300) % K)}
    for name, n in splits.items():
        data[name] = (rng.normal(size=(n, D)) + 4 * np.eye(K, D)[np.arange(n) % K],
                      np.arange(n) % K)
    s = ncdask.EmbeddingStore.from_arrays(url, data, rng.normal(size=(K, D)), chunk_rows=ROWS)
    return url, s


def _chunk(url, split, array, i):
    return pathlib.Path(url, split, array, "c", str(i), *(["0"] if array == "embeddings" else []))


def _swap(a, b):
    x, y = a.read_bytes(), b.read_bytes()
    a.write_bytes(y)
    b.write_bytes(x)


def _digests(url, split="train", attr="ncdask_split"):
    return zarr.open_group(url)[split].attrs[attr]["digests"]


@pytest.mark.parametrize("array", ["embeddings", "labels"])
def test_check_names_two_swapped_chunks(tmp_path, capsys, array):
    url, _ = _store(tmp_path)
    _swap(_chunk(url, "train", array, 1), _chunk(url, "train", array, 3))
    r = ncdask.check_store(url)
    text = "\n".join(r.problems)
    for i in (1, 3):
        assert (f"train/{array}, chunk {i} (rows {i * ROWS}-{(i + 1) * ROWS - 1}): does not "
                "match its digest") in text
    assert main(["check", url]) == 1
    assert "does not match its digest" in capsys.readouterr().out


def test_check_names_a_chunk_moved_or_altered(tmp_path):
    url, _ = _store(tmp_path)
    src = _chunk(url, "train", "embeddings", 2)
    _chunk(url, "train", "embeddings", 4).write_bytes(src.read_bytes())  # the partial last
    zarr.open_group(url, mode="r+")["train"]["embeddings"][10, 0] = 1.5  # checksum rewritten
    text = "\n".join(ncdask.check_store(url).problems)
    assert "train/embeddings, chunk 4 (rows 256-299): does not match its digest" in text
    assert "train/embeddings, chunk 0 (rows 0-63): does not match its digest" in text


@pytest.mark.parametrize("array", ["embeddings", "labels"])
def test_a_lost_test_chunk_is_an_error_naming_split_and_rows(tmp_path, capsys, array):
    url, s = _store(tmp_path, test=200)
    W, b = s.classifier()
    stats = ncdask.class_stats(s, "train")
    before = float(measure(stats, weights=W, bias=b, test=s.split("test"),
                           metrics=["nc4_agree"]).nc4_agree)
    _chunk(url, "test", array, 1).unlink()
    want = rf"split 'test', test/{array} rows 64-127 \(chunk 1\): the chunk is missing"
    with pytest.raises(ncdask.DamagedStoreError, match=want):
        measure(stats, weights=W, bias=b, test=s.split("test"), metrics=["nc4_agree"]).compute()
    assert np.isfinite(before)
    assert main(["analyze", url, "--metrics", "nc4_agree", "--no-cache"]) == 2
    assert "split 'test'" in capsys.readouterr().err


def test_a_lost_ood_chunk_is_an_error(tmp_path, capsys):
    url, s = _store(tmp_path)
    s.append("ood", np.random.default_rng(1).normal(size=(150, D)))  # unlabelled
    _chunk(url, "ood", "embeddings", 2).unlink()  # the partial last chunk
    with pytest.raises(ncdask.DamagedStoreError, match=r"split 'ood', ood/embeddings rows "
                       r"128-149 \(chunk 2\): the chunk is missing"):
        measure(ncdask.class_stats(s, "train"), ood=s.split("ood"),
                metrics=["nc5_ood_dev"]).compute()
    assert main(["analyze", url, "--metrics", "nc5", "--no-cache"]) == 2
    assert "split 'ood'" in capsys.readouterr().err


@pytest.mark.parametrize("lazy", [True, False])
def test_a_lost_classifier_chunk_is_an_error(tmp_path, lazy):
    url, s = _store(tmp_path)
    sg = zarr.open_group(url)
    path = pathlib.Path(url, sg.attrs["ncdask_classifier"], "W", "c", "0", "0")
    path.unlink()
    with pytest.raises(ncdask.DamagedStoreError, match=r"/W rows 0-2 \(chunk 0\): the chunk "
                       "is missing"):
        W, b = s.classifier(lazy=lazy)
        measure(ncdask.class_stats(s, "train"), weights=W, bias=b,
                metrics=["nc3_dual_err"]).compute()


def test_nan_rows_written_on_purpose_are_data_and_stored(tmp_path):
    url, s = _store(tmp_path)
    X = np.full((150, D), np.nan)
    X[130:] = 1.0  # chunks 0 and 1 all NaN, the fill value: stored all the same
    s.append("odd", X, np.arange(150) % K, allow_nonfinite=True)
    assert np.isnan(s.split("odd").embeddings.values[:130]).all()
    assert ncdask.check_store(url).ok
    _chunk(url, "odd", "embeddings", 1).unlink()
    assert "odd/embeddings, chunk 1 (rows 64-127): missing" in ncdask.check_store(url).problems[0]
    with pytest.raises(ncdask.DamagedStoreError, match="split 'odd', odd/embeddings rows 64-127"):
        s.split("odd").embeddings.values.sum()


def _record_digests(url, split, shards):
    g = zarr.open_group(url)[split]
    if not shards:
        return g.attrs["ncdask_split"]["digests"]
    (_, sub), = g["shards"].groups()
    return sub.attrs["ncdask_shard"]["digests"]


@settings(max_examples=8, deadline=None)
@given(cuts=st.lists(st.integers(1, 199), max_size=6, unique=True),
       shards=st.booleans())
def test_digests_do_not_depend_on_the_batches(tmp_path_factory, cuts, shards):
    tmp = tmp_path_factory.mktemp("d")
    rng = np.random.default_rng(2)
    X, y = rng.normal(size=(200, D)).astype(np.float32), np.arange(200) % K
    np.save(tmp / "X.npy", X)
    np.save(tmp / "y.npy", y)
    edges = [0, *sorted(cuts), 200]
    got = []
    with dask.config.set({"ncdask.writers": "shards" if shards else "lock"}):
        for how in ("batches", "writer", "import", "whole"):
            url = str(tmp / f"{how}.zarr")
            s = ncdask.EmbeddingStore.create(url, n_classes=K, dim=D, chunk_rows=ROWS)
            if how == "batches":
                for a, b in zip(edges, edges[1:], strict=False):
                    s.append("train", X[a:b], y[a:b])
            elif how == "writer":
                with s.writer("train") as w:
                    for a, b in zip(edges, edges[1:], strict=False):
                        w.append(X[a:b], y[a:b])
            elif how == "import":
                s.import_files("train", str(tmp / "X.npy"), str(tmp / "y.npy"))
            else:
                s.append("train", X, y)
            got.append(_record_digests(url, "train", shards))
            assert ncdask.check_store(url).ok
    assert all(d == got[0] for d in got) and got[0]["rows"] == 200
    assert len(got[0]["embeddings"]) == len(got[0]["labels"]) == 4


def test_one_row_at_a_time(tmp_path):
    X, y = np.arange(70 * D, dtype=np.float32).reshape(70, D), np.arange(70) % K
    one = ncdask.EmbeddingStore.create(str(tmp_path / "a.zarr"), n_classes=K, dim=D,
                                       chunk_rows=ROWS)
    for i in range(70):
        one.append("train", X[i:i + 1], y[i:i + 1])
    whole = ncdask.EmbeddingStore.from_arrays(str(tmp_path / "b.zarr"), {"train": (X, y)},
                                              n_classes=K, chunk_rows=ROWS)
    assert _digests(one.url) == _digests(whole.url)


def test_a_record_without_digests_still_reads_and_checks(tmp_path):
    url, s = _store(tmp_path)
    g = zarr.open_group(url, mode="r+")["train"]
    rec = dict(g.attrs["ncdask_split"])
    del rec["digests"]  # as the previous ncdask wrote it
    g.attrs["ncdask_split"] = rec
    r = ncdask.check_store(url)
    assert r.ok and r.notes == ["train: rows 0-299 have no chunk digests (written by an older "
                                "ncdask): their chunks' places are not verified"]
    s.append("train", np.ones((10, D)), np.arange(10) % K)  # appends keep it without
    assert "digests" not in zarr.open_group(url)["train"].attrs["ncdask_split"]
    assert ncdask.check_store(url).ok
    stats = ncdask.class_stats(ncdask.EmbeddingStore.open(url), "train").compute()
    assert stats.counts.values.tolist() == [104, 103, 103]


def test_rows_an_older_ncdask_appended_are_noted(tmp_path):
    url, s = _store(tmp_path)
    before = _digests(url)
    s.append("train", np.ones((10, D)), np.arange(10) % K)
    g = zarr.open_group(url, mode="r+")["train"]
    g.attrs["ncdask_split"] = {**g.attrs["ncdask_split"], "digests": before}  # as it leaves
    assert _digests(url)["rows"] == 300
    r = ncdask.check_store(url)
    assert r.ok and r.notes == ["train: rows 300-309 have no chunk digests (written by an "
                                "older ncdask): their chunks' places are not verified"]
