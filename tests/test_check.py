"""``ncdask check`` / ``check_store`` find every kind of damage and name where it is (issue 14)."""

import pathlib

import numpy as np
import pytest
import zarr

import ncdask
from ncdask.cli import main


def _store(tmp_path):
    rng = np.random.default_rng(0)
    url = str(tmp_path / "s.zarr")
    s = ncdask.EmbeddingStore.from_arrays(
        url, {"train": (rng.normal(size=(300, 4)), np.arange(300) % 3)},
        rng.normal(size=(3, 4)), chunk_rows=64)
    s.append("ood", rng.normal(size=(20, 4)), layer="fc", epoch=1)  # unlabelled, tagged
    return url, s


def _files(url, *parts):
    return sorted(q for q in pathlib.Path(url, *parts, "c").rglob("*") if q.is_file())


def test_a_whole_store_checks_clean(tmp_path, capsys):
    url, _ = _store(tmp_path)
    r = ncdask.check_store(url)
    assert r.ok and r.problems == []
    # 5 + 5 chunks of train, 1 of ood, 1 of W
    assert (r.sets, r.splits, r.rows, r.chunks) == (2, 2, 320, 12)
    assert main(["check", url, "--quiet"]) == 0
    assert "ok: 2 set(s)" in capsys.readouterr().out


def test_every_kind_of_damage_is_named(tmp_path, capsys):
    url, s = _store(tmp_path)
    _files(url, "train", "embeddings")[1].unlink()  # a lost chunk
    lab = _files(url, "train", "labels")[2]
    b = bytearray(lab.read_bytes())
    b[len(b) // 2] ^= 0xFF  # garbled bytes
    lab.write_bytes(bytes(b))
    cg = zarr.open_group(url, mode="r+")[zarr.open_group(url).attrs["ncdask_classifier"]]
    cg["W"][0, 0] = np.nan  # a classifier that cannot be used
    r = ncdask.check_store(url)
    text = "\n".join(r.problems)
    assert "train/embeddings, chunk 1 (rows 64-127): missing" in text
    assert "train/labels, chunk 2 (rows 128-191): unreadable" in text and "checksum" in text
    assert "/W, chunk 0: NaN or inf" in text
    assert len(r.problems) == 3
    assert main(["check", url]) == 1
    out = capsys.readouterr().out
    assert out.count("problem: ") == 3 and "3 problem(s)" in out


def test_labels_and_records_that_disagree(tmp_path):
    url, _ = _store(tmp_path)
    g = zarr.open_group(url, mode="r+")["train"]
    g["labels"][5] = 7  # out of [0, 3)
    r = ncdask.check_store(url)
    assert any("labels outside [0, 3) (e.g. 7)" in p for p in r.problems)
    g["labels"][5] = (5 + 1) % 3  # in range, but the counts move
    r = ncdask.check_store(url)
    assert any("the record says" in p for p in r.problems)
    rec = dict(g.attrs["ncdask_split"])
    rec["n_committed"] = 10**6
    g.attrs["ncdask_split"] = rec
    r = ncdask.check_store(url)
    assert any("commit record of 'train'" in p for p in r.problems)


def test_nan_written_on_purpose_is_not_damage(tmp_path):
    url, s = _store(tmp_path)
    X = np.ones((10, 4))
    X[3, 1] = np.nan
    s.append("odd", X, np.arange(10) % 3, allow_nonfinite=True)
    assert ncdask.check_store(url).ok
    g = zarr.open_group(url, mode="r+")["train"]
    g["embeddings"][70, 2] = np.inf  # in a split that promises finite rows
    r = ncdask.check_store(url)
    assert [p for p in r.problems if "train/embeddings, chunk 1" in p and "NaN/inf" in p]


def test_leftovers_of_killed_writers_are_notes(tmp_path):
    url, s = _store(tmp_path)
    with s.core.lease() as lease:  # a staged split its writer left (its lease then expired)
        left = lease.stage(s.core.fs_path(None, ".import-train-0123456789ab")[1])
        zarr.open_group(left, mode="w")
    r = ncdask.check_store(url)
    assert r.ok and len(r.notes) == 1 and ".import-train-0123456789ab" in r.notes[0]


def test_read_errors_name_store_array_and_rows(tmp_path):
    url, s = _store(tmp_path)
    emb = _files(url, "train", "embeddings")[2]
    emb.write_bytes(emb.read_bytes()[:20])  # truncated
    with pytest.raises(ncdask.DamagedStoreError, match=r"train/embeddings, rows 128-191"):
        ncdask.class_stats(ncdask.EmbeddingStore.open(url), "train").compute()


@pytest.mark.parametrize("node", ["", "train", "train/embeddings"])
def test_truncated_metadata_names_its_file(tmp_path, capsys, node):
    url, _ = _store(tmp_path)
    meta = pathlib.Path(url, node, "zarr.json")
    meta.write_text(meta.read_text()[:50])
    want = f"{meta}: the store is damaged"
    with pytest.raises(ncdask.DamagedStoreError, match="unreadable metadata"):
        ncdask.class_stats(ncdask.EmbeddingStore.open(url), "train")
    for cmd in (["check", url], ["stats", url]):
        assert main(cmd) == 2
        assert want in capsys.readouterr().err


def test_a_deleted_array_metadata_is_named(tmp_path, capsys):
    url, _ = _store(tmp_path)
    pathlib.Path(url, "train", "labels", "zarr.json").unlink()
    assert main(["stats", url]) == 2
    assert "no labels array (its train/labels/zarr.json is missing)" in capsys.readouterr().err
    r = ncdask.check_store(url)
    assert not r.ok and "no labels array" in r.problems[0]
