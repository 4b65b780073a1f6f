"""ncdask.sweep: every embedding set measured, equal to measuring each set alone."""

import uuid

import numpy as np
import pytest
import xarray as xr
from dense import class_data

import ncdask
from ncdask import sweep

K, D = 4, 6
METRICS = ["nc1_quot", "nc1_pinv", "nc2_etf_err", "nc3_dual_err", "nc3_bias", "nc4_agree",
           "nc5_ood_dev", "mean_norms", "agree_per_class"]


pytestmark = pytest.mark.xdist_group("sweep")  # one worker writes the module's store once


@pytest.fixture(scope="module")
def store():
    """Sets layer in {a, b} x epoch in {0, 3, 7}; classifiers for layer a only (read only:
    the module's tests share it)."""
    rng = np.random.default_rng(0)
    s = ncdask.EmbeddingStore.create(f"memory://ncdask-tests/sweep-{uuid.uuid4().hex}", K, D,
                                     chunk_rows=40)
    for layer in ("b", "a"):
        for epoch in (7, 0, 3):
            scale = 1 + epoch + (layer == "b")
            for split, n in (("train", 150), ("test", 60)):
                X, y = class_data(rng, scale * np.eye(K, D), n, dtype=np.float32)
                s.append(split, X, y, layer=layer, epoch=epoch)
            s.append("ood", rng.normal(size=(30, D)) + 2, np.zeros(30, int), layer=layer,
                     epoch=epoch)
            if layer == "a":
                W = np.eye(K, D) + 0.1 * rng.normal(size=(K, D))
                s.set_classifier(W, rng.normal(size=K), layer=layer, epoch=epoch)
    return s


def alone(s, **tags):
    W = b = None
    try:
        W, b = s.classifier(**tags)
    except KeyError:
        pass
    return ncdask.measure(
        ncdask.class_stats(s.split("train", **tags)), weights=W, bias=b,
        test=s.split("test", **tags) if W is not None else None,
        ood=s.split("ood", **tags), metrics=METRICS,
    ).compute()


def test_epoch_sweep_equals_each_set(store):
    res = sweep(store, over="epoch", layer="a", test="test", ood="ood", metrics=METRICS)
    assert res.nc1_quot.dims == ("epoch",)
    res = res.compute()
    assert res.epoch.values.tolist() == [0, 3, 7]
    assert res.attrs["split"] == "train" and res.attrs["layer"] == "a"
    for e in (0, 3, 7):
        xr.testing.assert_allclose(res.sel(epoch=e, drop=True), alone(store, layer="a", epoch=e),
                                   rtol=1e-12)
    assert (np.diff(res.nc1_quot.values) < 0).all()


def test_layer_sweep_without_classifier_in_some_sets(store):
    res = sweep(store, over="layer", epoch=3, test="test", ood="ood", metrics=METRICS,
                compute=True)
    assert res.layer.values.tolist() == ["a", "b"]
    b_alone = alone(store, layer="b", epoch=3)
    assert "nc3_dual_err" not in b_alone
    for v in b_alone.data_vars:
        np.testing.assert_allclose(res[v].sel(layer="b"), b_alone[v], rtol=1e-12)
    assert np.isnan(res.nc3_dual_err.sel(layer="b")) and np.isnan(res.nc4_agree.sel(layer="b"))
    assert np.isfinite(res.nc4_agree.sel(layer="a"))
    nocl = sweep(store, over="layer", epoch=3, use_classifier=False, metrics=["nc3_dual_err"],
                 compute=True)
    assert "nc3_dual_err" not in nocl


def test_grid_and_order(store, mem_url):
    grid = sweep(store, over=("layer", "epoch"), metrics=["nc1_quot", "nc2_etf_err"],
                 compute=True)
    assert grid.nc1_quot.dims == ("layer", "epoch") and grid.nc1_quot.shape == (2, 3)
    one = alone(store, layer="b", epoch=7)
    np.testing.assert_allclose(grid.nc1_quot.sel(layer="b", epoch=7), one.nc1_quot, rtol=1e-12)
    ordered = sweep(store, over="epoch", layer="b", order=[7, 0], metrics=["nc1_quot"])
    assert ordered.epoch.values.tolist() == [7, 0]
    with pytest.raises(ValueError, match="order names"):
        sweep(store, over="epoch", layer="b", order=[1])
    # a URL works, and stats_kwargs reach class_stats
    w = sweep(store.url, over="epoch", layer="a", metrics=["nc1_quot"],
              stats_kwargs={"global_mean": "weighted"}, compute=True)
    assert w.attrs["global_mean"] == "weighted"


def test_refusals(store):
    with pytest.raises(ValueError, match="differ in 'layer'"):
        sweep(store, over="epoch")
    with pytest.raises(ValueError, match="fixes the tag"):
        sweep(store, over="epoch", epoch=3)
    with pytest.raises(ValueError, match="over must"):
        sweep(store, over="batch")
    with pytest.raises(ValueError, match="no embedding set"):
        sweep(store, over="epoch", layer="a", split="nope")
    with pytest.raises(TypeError, match="own stored classifier"):
        sweep(store, over="epoch", layer="a", bias=np.zeros(K))
    with pytest.raises(ValueError, match="more than one of the stores"):
        sweep([store, store], over="epoch", layer="a")


def test_layer_sweep_over_sets_of_different_widths(mem_url):
    """Each set is measured with its own width and classifier; the results stack."""
    rng = np.random.default_rng(5)
    s = ncdask.EmbeddingStore.create(mem_url(), K, D, chunk_rows=32)
    widths = {"conv": 11, "fc_in": D, "proj": 3}
    for epoch in (0, 4):
        for layer, width in widths.items():
            for split, n in (("train", 120), ("test", 50)):
                y = np.arange(n) % K
                X = (2 + epoch) * np.eye(K, width)[y] + rng.normal(size=(n, width))
                s.append(split, X, y, layer=layer, epoch=epoch)
            s.append("ood", rng.normal(size=(20, width)) + 1, np.zeros(20, int), layer=layer,
                     epoch=epoch)
            s.set_classifier(np.eye(K, width) + 0.1 * rng.normal(size=(K, width)),
                             rng.normal(size=K), layer=layer, epoch=epoch)
    assert [s.dim_of(**t) for t in s.sets()] == [11, 11, D, D, 3, 3]
    res = sweep(s, over="layer", epoch=4, test="test", ood="ood", metrics=METRICS,
                compute=True)
    assert res.layer.values.tolist() == ["conv", "fc_in", "proj"]
    assert "feature" not in res.dims
    for layer in widths:
        xr.testing.assert_allclose(res.sel(layer=layer, drop=True),
                                   alone(s, layer=layer, epoch=4), rtol=1e-12)
    grid = sweep(s, over=("layer", "epoch"), metrics=["nc1_quot", "nc3_dual_err"],
                 compute=True)
    assert grid.nc1_quot.shape == (3, 2) and np.isfinite(grid.nc3_dual_err).all()


def test_by_frequency_reads_each_sets_train_split_again(store):
    """With by_frequency= each set's own split is its train= (for nc1_pinv's shares)."""
    res = sweep(store, over="epoch", layer="a", by_frequency=2, compute=True,
                metrics=["nc1_pinv", "nc1_pinv_by_frequency"])
    for e in (0, 3, 7):
        one = ncdask.measure(ncdask.class_stats(store.split("train", layer="a", epoch=e)),
                             by_frequency=2, train=store.split("train", layer="a", epoch=e),
                             metrics=["nc1_pinv", "nc1_pinv_by_frequency"]).compute()
        np.testing.assert_allclose(res.nc1_pinv_by_frequency.sel(epoch=e).values,
                                   one.nc1_pinv_by_frequency.values, rtol=1e-12)
        assert float(res.nc1_pinv_by_frequency.sel(epoch=e).sum()) == pytest.approx(
            float(one.nc1_pinv))
    with pytest.raises(TypeError, match="sweep takes no"):
        sweep(store, over="epoch", layer="a", train=store.split("train", layer="a", epoch=0))
