"""The demo: an MLP on sklearn's digits, embeddings per epoch in one store, NC over training."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")
from matplotlib.image import imread  # noqa: E402

import ncdask  # noqa: E402
from ncdask.cli import main  # noqa: E402
from ncdask.demo import default_checkpoints, run_demo, train_to_store  # noqa: E402


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    return out, run_demo(out, epochs=20, quiet=True)


def test_collapse_over_training(demo):
    out, res = demo
    first, last = res.isel(epoch=0), res.isel(epoch=-1)
    # NC1 falls severalfold from the first checkpoint to the last
    assert float(last.nc1_pinv) < 0.5 * float(first.nc1_pinv)
    assert float(last.nc1_cdnv) < 0.5 * float(first.nc1_cdnv)
    # the classifier and the nearest class centre come to agree, accuracy rises
    assert float(last.nc4_agree) > 0.95 > float(first.nc4_agree)
    assert float(last.train_acc) > float(first.train_acc)
    assert list(res.epoch.values) == default_checkpoints(20)
    assert "nc5_ood_dev" in res and res.attrs["left_out"] == {}


def test_outputs_reopen(demo):
    out, res = demo
    back = xr.open_zarr(out / "results.zarr", consolidated=False).compute()
    assert back.sizes["epoch"] == res.sizes["epoch"]
    xr.testing.assert_allclose(back[["nc1_pinv", "nc1_cdnv", "nc4_agree"]],
                               res[["nc1_pinv", "nc1_cdnv", "nc4_agree"]])
    for name in ("nc_curves.png", "gram.png"):
        img = imread(str(out / name))
        assert img.ndim == 3 and min(img.shape[:2]) > 200
    store = ncdask.EmbeddingStore.open(str(out / "embeddings.zarr"))
    assert store.n_classes == 8 and store.dim == 64
    assert store.sets() == [{"epoch": e} for e in default_checkpoints(20)]
    assert store.splits(epoch=20) == ["ood", "test", "train"]
    W, b = store.classifier(epoch=20)
    assert W.shape == (8, 64) and b.shape == (8,)
    # the OOD split holds the held-out digits 8 and 9, relabelled as groups 0 and 1
    ood = store.split("ood", epoch=20)
    assert set(np.unique(ood.labels.values)) == {0, 1}


def test_results_match_a_direct_measurement(demo):
    out, res = demo
    store = ncdask.EmbeddingStore.open(str(out / "embeddings.zarr"))
    W, b = store.classifier(epoch=1)
    direct = ncdask.measure(
        ncdask.class_stats(store.split("train", epoch=1)), weights=W, bias=b,
        test=store.split("test", epoch=1), ood=store.split("ood", epoch=1),
        metrics=["nc1_pinv", "nc3_dual_err", "nc4_agree", "nc5_ood_dev"],
    ).compute()
    for k in direct.data_vars:
        np.testing.assert_allclose(float(res[k].sel(epoch=1)), float(direct[k]), rtol=1e-12)


def test_deterministic(tmp_path):
    a, acc_a = train_to_store(tmp_path / "a.zarr", epochs=2, checkpoints=[2])
    b, acc_b = train_to_store(tmp_path / "b.zarr", epochs=2, checkpoints=[2])
    assert acc_a == acc_b
    np.testing.assert_array_equal(a.split("train", epoch=2).embeddings.values,
                                  b.split("train", epoch=2).embeddings.values)


def test_bad_checkpoints(tmp_path):
    with pytest.raises(ValueError, match="checkpoints"):
        train_to_store(tmp_path / "c.zarr", epochs=3, checkpoints=[5])
    with pytest.raises(ValueError, match="epochs"):
        default_checkpoints(0)


def test_cli_demo_prints_a_table(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "d"), "--epochs", "3"]) == 0
    cap = capsys.readouterr()
    assert "nc1_pinv" in cap.out and "test_acc" in cap.out
    assert "training an MLP" in cap.err
    assert (tmp_path / "d" / "results.zarr").is_dir()
    assert (tmp_path / "d" / "nc_curves.png").stat().st_size > 2000
    assert main(["demo", "--out", str(tmp_path / "e"), "--epochs", "2", "--quiet"]) == 0
    cap = capsys.readouterr()
    assert cap.out == "" and cap.err == ""
