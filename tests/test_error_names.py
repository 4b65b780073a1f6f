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


@pytest.fixture
def store(mem_url):
    rng = np.random.default_rng(1)
    s = ncdask.EmbeddingStore.create(mem_url(), 3, 4, chunk_rows=32)
    for epoch in (0, 1):
        s.append("train", rng.normal(size=(60, 4)) + np.arange(60)[:, None] % 3,
                 np.arange(60) % 3, epoch=epoch)
    return s


def test_metric_names_are_case_insensitive(store):
    stats = ncdask.class_stats(store, "train", epoch=0)
    got = ncdask.measure(stats, metrics=["NC1", "Nc1_Cdnv", "nc2_ETF_err"])
    want = ncdask.measure(stats, metrics=["nc1", "nc1_cdnv", "nc2_etf_err"])
    assert list(got.data_vars) == list(want.data_vars) and "nc1_quot" in got
    res = ncdask.sweep(store, over="epoch", metrics="NC1_QUOT")
    assert list(res.data_vars) == ["nc1_quot"] and res.sizes["epoch"] == 2


def test_a_misspelt_metric_gets_the_closest_name_not_the_list(store, capsys):
    from ncdask.errors import FRONT_END

    stats = ncdask.class_stats(store, "train", epoch=0)
    with pytest.raises(ValueError, match=r"unknown metric 'nc1_cdvn' \(did you mean "
                       r"'nc1_cdnv'\?\); .* ncdask\.metrics\.METRICS") as e:
        ncdask.measure(stats, metrics=["NC1", "nc1_cdvn"])
    assert "nc2_etf_err" not in str(e.value) and "--help" not in str(e.value)
    with pytest.raises(ValueError, match=r"'Nc2_Etf' \(did you mean 'nc2_etf_err'\?\)"):
        ncdask.sweep(store, over="epoch", metrics=["Nc2_Etf"])
    token = FRONT_END.set("cli")  # as the command line's main() sets it
    try:
        with pytest.raises(ValueError, match=r"listed in `ncdask analyze --help`$") as e:
            ncdask.measure(stats, metrics="bananas")
        assert "did you mean" not in str(e.value) and "METRICS" not in str(e.value)
    finally:
        FRONT_END.reset(token)


def test_metric_names_on_the_command_line(tmp_path, capsys):
    url = str(tmp_path / "s.zarr")
    rng = np.random.default_rng(2)
    ncdask.EmbeddingStore.from_arrays(url, {"train": (rng.normal(size=(30, 4)),
                                                      np.arange(30) % 3)}, n_classes=3)
    assert main(["analyze", url, "--metrics", "NC1_QUOT", "Erank", "--json", "-", "-q"]) == 0
    out = capsys.readouterr().out
    assert '"nc1_quot"' in out and '"erank_within"' in out
    assert main(["analyze", url, "--metrics", "nc1_cdvn", "-q"]) == 2
    err = capsys.readouterr().err
    assert "unknown metric 'nc1_cdvn' (did you mean 'nc1_cdnv'?)" in err
    assert "nc2_etf_err" not in err and "Traceback" not in err
