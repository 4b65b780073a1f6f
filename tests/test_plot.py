"""Figures: NC curves, class-mean cosine heatmaps, per-class bars, rendered to PNG."""

from __future__ import annotations

import subprocess
import sys

import dask.array as da
import numpy as np
import pytest
import xarray as xr

pytest.importorskip("matplotlib")
from matplotlib.image import imread  # noqa: E402

import ncdask  # noqa: E402
from ncdask.plot import plot_gram, plot_metrics, plot_per_class  # noqa: E402


def _split(rng, means, n, noise):
    y = np.arange(n) % means.shape[0]
    X = means[y] + noise * rng.normal(size=(n, means.shape[1]))
    return xr.Dataset({"embeddings": (("sample", "feature"), X), "labels": ("sample", y)},
                      attrs={"n_classes": means.shape[0]})


@pytest.fixture(scope="module")
def sweep():
    """Metrics of a toy run whose noise shrinks over 'epochs' (so NC1 falls)."""
    rng = np.random.default_rng(0)
    K, D = 5, 8
    means = 3 * rng.normal(size=(K, D))
    stats, test = {}, {}
    for e, noise in zip((1, 2, 4, 8), (3.0, 1.0, 0.3, 0.1), strict=True):
        stats[e] = ncdask.class_stats(_split(rng, means, 200, noise))
        test[e] = _split(rng, means, 50, noise)
    res = ncdask.measure(stats, weights={e: means for e in stats}, test=test, dim="epoch")
    return res.compute()


def _png(path, min_bytes=2000):
    assert path.exists() and path.stat().st_size > min_bytes
    img = imread(str(path))
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100 and img.shape[2] in (3, 4)
    return img


def test_import_ncdask_does_not_import_matplotlib():
    code = "import sys, ncdask; assert 'matplotlib' not in sys.modules, 'matplotlib imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_plot_metrics_panels(sweep, tmp_path):
    fig = plot_metrics(sweep, path=tmp_path / "curves.png")
    _png(tmp_path / "curves.png")
    titles = [a.get_title() for a in fig.axes if a.get_visible()]
    assert titles[0] == "nc1_pinv" and "nc4_agree" in titles
    ax = fig.axes[titles.index("nc1_pinv")]
    assert ax.get_yscale() == "log"  # nc1 falls by more than a decade here
    np.testing.assert_allclose(ax.lines[0].get_ydata(), sweep.nc1_pinv.values)


def test_plot_metrics_on_one_axes_and_layers(sweep, tmp_path):
    from matplotlib.figure import Figure

    fig = Figure()
    ax = fig.add_subplot()
    out = plot_metrics(sweep, "epoch", ["nc1_cdnv", "nc1_quot"], ax=ax, path=tmp_path / "a.png")
    assert out is fig and len(ax.lines) == 2
    _png(tmp_path / "a.png")
    layers = sweep.rename(epoch="layer").assign_coords(layer=["conv1", "conv2", "fc1", "fc2"])
    fig = plot_metrics(layers, metrics=["nc1_pinv"], logy=False, path=tmp_path / "l.png")
    assert fig.axes[0].get_xlabel() == "layer" and fig.axes[0].get_yscale() == "linear"
    _png(tmp_path / "l.png")


def test_plot_metrics_errors(sweep):
    with pytest.raises(ValueError, match="no sweep dim"):
        plot_metrics(sweep.isel(epoch=0))
    with pytest.raises(ValueError, match="no variable 'nope'"):
        plot_metrics(sweep, metrics=["nope"])
    with pytest.raises(ValueError, match="dims"):
        plot_metrics(sweep, metrics=["mean_norms"])


def test_plot_gram_small_k(tmp_path):
    # a simplex ETF: the off-diagonal cosines are all -1/(K-1)
    K = 4
    means = np.eye(K) - 1 / K
    fig = plot_gram(means, path=tmp_path / "g.png")
    _png(tmp_path / "g.png")
    C = fig.axes[0].images[0].get_array()
    np.testing.assert_allclose(C[~np.eye(K, dtype=bool)], -1 / (K - 1))
    np.testing.assert_allclose(np.diag(C), 1)
    assert "K=4" in fig.axes[0].get_title()


def test_plot_gram_large_k_samples_a_block(tmp_path):
    rng = np.random.default_rng(1)
    K, D = 600, 16
    X = rng.normal(size=(K * 3, D))
    y = np.arange(K * 3) % K
    ds = xr.Dataset({"embeddings": (("sample", "feature"), da.from_array(X, chunks=(600, D))),
                     "labels": ("sample", da.from_array(y, chunks=600))},
                    attrs={"n_classes": K})
    stats = ncdask.class_stats(ds)
    fig = plot_gram(stats, max_classes=30, seed=3, path=tmp_path / "big.png")
    _png(tmp_path / "big.png")
    C = fig.axes[0].images[0].get_array()
    assert C.shape == (30, 30)
    assert "30 of 600 classes" in fig.axes[0].get_title()
    # the same block as computing the cosines of those classes by hand
    idx = np.sort(np.random.default_rng(3).choice(K, 30, replace=False))
    st = stats.compute()
    Mc = st.means.values[idx] - st.global_mean.values
    U = Mc / np.linalg.norm(Mc, axis=1, keepdims=True)
    np.testing.assert_allclose(C, U @ U.T, atol=1e-12)


def test_plot_gram_given_classes():
    means = np.random.default_rng(2).normal(size=(10, 5))
    fig = plot_gram(means, classes=[1, 3, 5])
    assert fig.axes[0].images[0].get_array().shape == (3, 3)
    with pytest.raises(ValueError, match="classes must lie"):
        plot_gram(means, classes=[10])


def test_plot_per_class(sweep, tmp_path):
    fig = plot_per_class(sweep, "mean_norms", path=tmp_path / "pc.png")
    _png(tmp_path / "pc.png")
    heights = [p.get_height() for p in fig.axes[0].patches]
    np.testing.assert_allclose(heights, sweep.mean_norms.isel(epoch=-1).values)
    assert "epoch=8" in fig.axes[0].get_title()
    fig = plot_per_class(sweep, "agree_per_class", at={"epoch": 1}, path=tmp_path / "ag.png")
    _png(tmp_path / "ag.png")
    assert "epoch=1" in fig.axes[0].get_title()
    for var in ("similarities", "similarities_cos", "distance_norms"):
        plot_per_class(sweep, var)
    with pytest.raises(ValueError, match="not a per-class"):
        plot_per_class(sweep, "nc1_pinv")
    with pytest.raises(ValueError, match="no variable"):
        plot_per_class(sweep, "nope")


def test_plot_per_class_many_classes_as_sorted_profile(tmp_path):
    K = 500
    v = np.random.default_rng(0).random(K)
    res = xr.Dataset({"mean_norms": ("class", v)}, coords={"class": np.arange(K)})
    fig = plot_per_class(res, path=tmp_path / "prof.png", max_bars=64)
    _png(tmp_path / "prof.png")
    line = fig.axes[0].lines[0]
    np.testing.assert_allclose(line.get_ydata(), np.sort(v)[::-1])
