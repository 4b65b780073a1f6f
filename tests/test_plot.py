"""Figures: NC curves, class-mean cosine heatmaps, per-class bars, rendered to PNG."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import xarray as xr
from dense import class_data, split

pytest.importorskip("matplotlib")
from matplotlib.image import imread  # noqa: E402

import ncdask  # noqa: E402
from ncdask.plot import plot_gram, plot_metrics, plot_per_class  # noqa: E402

pytestmark = pytest.mark.xdist_group("plot")  # one worker computes the module's sweep once


def _split(rng, means, n, noise):
    return split(*class_data(rng, means, n, noise=noise), means.shape[0], chunks=None)


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
    # the collapse direction is in each title: lower NC1, higher NC4 agreement
    assert titles[0] == "nc1_pinv  \u2193 collapse" and "nc4_agree  \u2191 collapse" in titles
    ax = fig.axes[0]
    assert ax.get_yscale() == "log"  # nc1 falls by more than a decade here
    np.testing.assert_allclose(ax.lines[0].get_ydata(), sweep.nc1_pinv.values)
    # y labels are the variables' long names (wrapped)
    assert ax.get_ylabel().replace("\n", " ") == sweep.nc1_pinv.attrs["long_name"]
    # no accuracy variables here: no accuracy panel
    assert "accuracy" not in titles


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
    ds = split(X, y, K, chunks=600)
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


# ---------------------------------------------------- issue 11: plots that tell the truth


def _curve(x, **variables):
    """A sweep Dataset over ``epoch`` = x with the given variables (no attrs)."""
    return xr.Dataset({k: ("epoch", np.asarray(v, dtype=float)) for k, v in variables.items()},
                      coords={"epoch": np.asarray(x)})


def _visible(fig):
    return [a for a in fig.axes if a.get_visible()]


def test_collapse_direction_table():
    from ncdask.plot import collapse_direction

    down = ["nc1_pinv", "nc1_cdnv", "nc1_ood_class", "nc2_etf_err", "nc2_equinorm",
            "nc2w_etf_err", "nc3_dual_err", "nc3_papyan", "nc3_bias", "nc3u_uni_dual",
            "nc5_ood_dev", "nc2g_dist_var", "nc2g_log_var", "nc2g_riesz_var",
            "nc2g_riesz_log_var"]
    assert all(collapse_direction(m) == -1 for m in down)
    assert collapse_direction("nc4_agree") == +1
    for m in ("nc2g_dist_mean", "nc2g_log_mean", "train_acc", "mean_norms", "whatever"):
        assert collapse_direction(m) is None


def test_plot_metrics_ylabel_falls_back_to_the_name_and_no_cue_without_direction():
    res = _curve([1, 2, 3], nc2g_log_mean=[1.0, 1.1, 1.2], nc1_pinv=[3.0, 2.0, 1.0])
    res["nc1_pinv"].attrs["long_name"] = "NC1 within-class variability (pseudo-inverse)"
    fig = plot_metrics(res, metrics=["nc2g_log_mean", "nc1_pinv"])
    a, b = _visible(fig)
    assert a.get_ylabel() == "nc2g_log_mean" and a.get_title() == "nc2g_log_mean"
    assert b.get_ylabel() == "NC1 within-class variability\n(pseudo-inverse)"
    assert "collapse" in b.get_title()


def test_log_x_for_log_spaced_epochs_linear_for_even_ones():
    from ncdask._demo.demo import default_checkpoints
    from ncdask.plot import log_spaced

    geo = default_checkpoints(300)
    even = list(range(0, 301, 30))
    assert log_spaced(geo) and not log_spaced(even)
    assert not log_spaced(range(1, 11)) and not log_spaced([1, 2, 4])  # under a decade
    assert not log_spaced([5, 3, 1, 40]) and not log_spaced(["a", "b", "c"])
    v = np.linspace(1, 0.5, len(geo))
    assert all(a.get_xscale() == "log" for a in _visible(plot_metrics(_curve(geo, nc1_pinv=v))))
    fig = plot_metrics(_curve(even, nc1_pinv=np.linspace(1, 0.5, len(even))))
    assert all(a.get_xscale() == "linear" for a in _visible(fig))
    # logx=False overrides
    fig = plot_metrics(_curve(geo, nc1_pinv=v), logx=False)
    assert _visible(fig)[0].get_xscale() == "linear"


def _height_fraction(ax):
    """The share of the panel's height that the curve covers (in axis coordinates)."""
    y = ax.lines[0].get_ydata()
    lo, hi = ax.get_ylim()
    if ax.get_yscale() == "log":
        return np.log(y.max() / y.min()) / np.log(hi / lo)
    return (y.max() - y.min()) / (hi - lo)


def test_y_range_rule_small_changes_look_small():
    x = [1, 2, 3, 4]
    res = _curve(x, nc2_etf_err=[0.5, 0.499, 0.4985, 0.498],  # a 0.4 % change
                 nc1_pinv=[0.9, 0.6, 0.4, 0.3],  # a 3x fall
                 nc1_cdnv=[10.0, 1.0, 0.1, 0.01])  # four decades
    fig = plot_metrics(res, metrics=["nc2_etf_err", "nc1_pinv", "nc1_cdnv"])
    etf, nc1, cdnv = _visible(fig)
    # linear panels include 0, so the 0.4 % change is under 1 % of the panel
    assert etf.get_yscale() == "linear" and etf.get_ylim()[0] <= 0 <= etf.get_ylim()[1]
    assert _height_fraction(etf) < 0.01
    assert nc1.get_yscale() == "linear" and _height_fraction(nc1) > 0.6
    assert cdnv.get_yscale() == "log" and _height_fraction(cdnv) > 0.85
    # a forced log axis spans at least a decade, so the 0.4 % change stays flat there too
    fig = plot_metrics(res, metrics=["nc2_etf_err"], logy=True)
    (ax,) = _visible(fig)
    lo, hi = ax.get_ylim()
    assert ax.get_yscale() == "log" and hi / lo >= 10 and _height_fraction(ax) < 0.01
    # the rule is stated in the figure
    assert "include 0" in fig.get_suptitle() and "decade" in fig.get_suptitle()
    # negative values: the linear range still includes 0
    fig = plot_metrics(_curve(x, nc2g_riesz_log_mean=[-50, -50.1, -50.2, -50.3]),
                       metrics=["nc2g_riesz_log_mean"])
    ax = _visible(fig)[0]
    assert ax.get_ylim()[0] < -50.3 and ax.get_ylim()[1] >= 0 and _height_fraction(ax) < 0.01


def test_y_limits_function():
    from ncdask.plot import y_limits

    lo, hi = y_limits(np.array([2.0, 3.0]), log=False)
    assert lo <= 0 and hi >= 3.0
    lo, hi = y_limits(np.array([-1.0, 2.0, np.nan]), log=False)
    assert lo < -1.0 and hi > 2.0
    lo, hi = y_limits(np.array([1.0, 1.01]), log=True, min_decades=2)
    assert np.log10(hi / lo) >= 2 and lo < 1.0 and hi > 1.01
    lo, hi = y_limits(np.array([1e-4, 1.0]), log=True)
    assert lo < 1e-4 and hi > 1.0 and np.log10(hi / lo) < 4.5


def test_accuracy_panel_and_terminal_phase_marker(tmp_path):
    x = [1, 2, 4, 8, 16, 32]
    res = _curve(x, nc1_pinv=[1.0, 0.5, 0.2, 0.1, 0.05, 0.01],
                 train_acc=[0.5, 0.8, 0.95, 1.0, 1.0, 1.0],
                 test_acc=[0.5, 0.75, 0.9, 0.93, 0.94, 0.94])
    fig = plot_metrics(res, path=tmp_path / "acc.png")
    _png(tmp_path / "acc.png")
    nc1, acc = _visible(fig)
    assert acc.get_title() == "accuracy" and len(acc.lines) >= 2
    np.testing.assert_allclose(acc.lines[0].get_ydata(), res.train_acc.values)
    np.testing.assert_allclose(acc.lines[1].get_ydata(), res.test_acc.values)
    assert acc.get_ylim() == (0.0, 1.05)
    # a dotted vertical line where train accuracy first reaches 1 (epoch 8), on both panels
    for a in (nc1, acc):
        marks = [ln for ln in a.lines if ln.get_linestyle() == ":"]
        assert len(marks) == 1 and list(marks[0].get_xdata()) == [8, 8]
    assert "terminal phase" in fig.get_suptitle() and "epoch 8" in fig.get_suptitle()
    # without reaching 100 %: no marker; accuracy=() drops the panel
    fig = plot_metrics(res.assign(train_acc=res.train_acc * 0.9))
    assert not [ln for a in _visible(fig) for ln in a.lines if ln.get_linestyle() == ":"]
    assert len(_visible(plot_metrics(res, accuracy=()))) == 1


def test_plot_metrics_one_axes_states_the_rule(sweep):
    from matplotlib.figure import Figure

    ax = Figure().add_subplot()
    plot_metrics(sweep, "epoch", ["nc2_etf_err", "nc4_agree"], ax=ax)
    assert ax.get_ylabel() == "value (linear, from 0)" and ax.get_ylim()[0] <= 0
    assert ax.get_xscale() == "linear"  # epochs 1, 2, 4, 8 span under a decade
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["nc2_etf_err (\u2193 collapse)", "nc4_agree (\u2191 collapse)"]


def _ticklabels(ax, axis):
    ticks = ax.get_xticklabels() if axis == "x" else ax.get_yticklabels()
    return [t.get_text() for t in ticks]


def test_plot_gram_labels_title_and_spread(tmp_path):
    rng = np.random.default_rng(4)
    K, D = 6, 10
    means = rng.normal(size=(K, D))
    ds = _split(rng, means, 300, 0.5).assign_attrs(epoch=12)
    stats = ncdask.class_stats(ds)
    fig = plot_gram(stats, class_names=list("abcdef"), path=tmp_path / "g.png")
    _png(tmp_path / "g.png")
    ax = fig.axes[0]
    assert ax.get_xlabel() == "class" and ax.get_ylabel() == "class"
    assert _ticklabels(ax, "x") == list("abcdef") == _ticklabels(ax, "y")
    title = ax.get_title()
    assert "epoch=12" in title and "K=6" in title and "mean off" not in title
    # the headline: the std (divisor P-1) of the off-diagonal cosines, by NumPy ...
    st = stats.compute()
    Mc = st.means.values - st.global_mean.values
    U = Mc / np.linalg.norm(Mc, axis=1, keepdims=True)
    C = U @ U.T
    want = np.std(C[np.triu_indices(K, 1)], ddof=1)
    got = float(title.split("off-diagonal cosines ")[1].split()[0])
    assert got == pytest.approx(want, abs=5e-4)
    # ... which is Papyan's equiangularity as measured
    eq = float(ncdask.measure(stats, metrics=["nc2_equiangle"]).nc2_equiangle)
    assert eq == pytest.approx(want, rel=1e-9)
    # default tick labels are the class ids
    assert _ticklabels(plot_gram(stats).axes[0], "y") == [str(k) for k in range(K)]


def test_cosine_spread_falls_to_zero_at_an_etf():
    from ncdask.plot import cosine_spread

    K = 5
    etf = np.eye(K) - 1 / K
    U = etf / np.linalg.norm(etf, axis=1, keepdims=True)
    assert cosine_spread(U @ U.T) == pytest.approx(0, abs=1e-12)
    C = np.array([[1, 0.2, -0.5], [0.2, 1, -0.1], [-0.5, -0.1, 1]])
    assert cosine_spread(C) == pytest.approx(np.std([0.2, -0.5, -0.1], ddof=1))
    assert np.isnan(cosine_spread(np.eye(2)))


def test_plot_gram_first_vs_last_side_by_side(tmp_path):
    rng = np.random.default_rng(5)
    K, D = 5, 8
    means = rng.normal(size=(K, D))
    first = ncdask.class_stats(_split(rng, means, 200, 3.0))
    etf = 4 * (np.eye(K, D) - np.eye(K, D).mean(axis=0))
    last = ncdask.class_stats(_split(rng, etf, 200, 0.01))
    fig = plot_gram({1: first, 40: last}, dim="epoch", path=tmp_path / "two.png")
    _png(tmp_path / "two.png")
    panels = [a for a in fig.axes if a.images]
    assert len(panels) == 2
    assert "epoch=1" in panels[0].get_title() and "epoch=40" in panels[1].get_title()
    # one colour scale: the same limits, one colour bar for both
    assert {im.get_clim() for a in panels for im in a.images} == {(-1, 1)}
    assert len(fig.axes) == 3
    # the headline spread falls to about 0 at the (near-)ETF
    spreads = [float(a.get_title().split("off-diagonal cosines ")[1].split()[0]) for a in panels]
    assert spreads[1] < 0.01 < spreads[0]
    # both panels show the same classes, labelled on both axes
    for a in panels:
        assert _ticklabels(a, "x") == _ticklabels(a, "y") == [str(k) for k in range(K)]
    with pytest.raises(ValueError, match="one set"):
        from matplotlib.figure import Figure

        plot_gram({1: first, 2: last}, ax=Figure().add_subplot())
    with pytest.raises(ValueError, match="number of classes"):
        plot_gram({1: means, 2: means[:3]})


def test_plot_gram_many_classes_keeps_class_tick_labels():
    K = 60
    means = np.random.default_rng(6).normal(size=(K, 8))
    ax = plot_gram(means, max_classes=K).axes[0]
    labels = _ticklabels(ax, "x")
    assert 1 < len(labels) <= 25 and labels[0] == "0" and all(s.isdigit() for s in labels)
    # the tick labels name the classes at their positions
    pos = ax.get_xticks()
    assert [int(s) for s in labels] == [int(p) for p in pos]
