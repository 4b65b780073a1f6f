"""Errors name what the user gave: the labels file or split in label errors, the metric
closest to a misspelt one (metric names in any case)."""

from __future__ import annotations

import os

import numpy as np
import pytest

import ncdask
from ncdask.cli import main


@pytest.fixture
def files(tmp_path):
    X = np.random.default_rng(0).normal(size=(20, 3)).astype(np.float32)
    y = np.arange(20) % 4
    np.save(tmp_path / "X.npy", X)
    np.save(tmp_path / "y.npy", y)
    np.save(tmp_path / "y_bad.npy", np.where(y == 3, 1000, y))
    np.save(tmp_path / "y_short.npy", y[:15])
    np.save(tmp_path / "y_float.npy", y + 0.5)
    np.savez(tmp_path / "bad.npz", X=X, Y=np.where(y == 3, 1000, y))
    return tmp_path


@pytest.mark.parametrize(("labels", "msg"), [
    ("y_bad.npy", "y_bad.npy: label 1000 is outside"),
    ("y_short.npy", "y_short.npy: labels (15,) do not pair up"),
    ("y_float.npy", "y_float.npy: labels must be integers"),
])
def test_label_errors_name_the_labels_file(files, capsys, labels, msg):
    url = str(files / "s.zarr")
    argv = ["import", str(files / "X.npy"), str(files / labels), "--store", url,
            "--split", "train", "--n-classes", "4"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert msg in err and "X.npy:" not in err, err
    assert not os.path.exists(url)
    s = ncdask.EmbeddingStore.create(str(files / "p.zarr"), 4, 3)
    with pytest.raises((ValueError, TypeError), match=msg.replace("(", r"\(").replace(")", r"\)")):
        s.import_files("train", str(files / "X.npy"), str(files / labels))


def test_label_errors_name_the_npz_file_and_the_split(files, mem_url):
    s = ncdask.EmbeddingStore.create(mem_url(), 4, 3)
    with pytest.raises(ValueError, match=r"bad\.npz: label 1000 is outside"):
        s.import_files("train", str(files / "bad.npz"))
    X = np.zeros((2, 3))
    with pytest.raises(ValueError, match=r"^split 'test': label 1000 is outside"):
        s.append("test", X, np.array([0, 1000]))
    with pytest.raises(ValueError, match=r"^split 'test' \(layer=l1\): label 1000 is outside"):
        s.append("test", X, np.array([0, 1000]), layer="l1")
    with pytest.raises(ValueError, match=r"^split 'ood': embeddings have 2 rows but labels"):
        s.writer("ood").append(X, np.array([0]))
