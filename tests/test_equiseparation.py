"""The law of equi-separation (He & Su 2023): D_l = tr(Σ_W Σ_B⁺) per layer, its decay ratio ρ
and R², layers in the model's order (capture records each set's depth)."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from dense import class_data

import ncdask

K, D, N = 4, 6, 80
#: Layer names in depth order; sorted by name they would be attn, block, conv, fc.
LAYERS = ("conv", "block", "attn", "fc")


def _layer_data(rng, scale):
    """Class data whose within-class deviations are scaled by ``scale``: Σ_W scales by
    ``scale**2``, the class means (and Σ_B) stay, exactly (each deviation comes with its
    negative)."""
    means = 3.0 * rng.normal(size=(K, D))
    _, y = class_data(rng, means, N // 2)
    e = rng.normal(size=(N // 2, D))
    return [(means[np.r_[y, y]] + s * np.r_[e, -e], np.r_[y, y]) for s in scale], means


def _dense_fuzziness(X, y):
    """tr(Σ_W Σ_B⁺) from the rows, as He & Su define it."""
    M = np.stack([X[y == k].mean(0) for k in range(K)])
    Mc = M - M.mean(0)
    R = X - M[y]
    return np.trace(R.T @ R / len(y) @ np.linalg.pinv(Mc.T @ Mc / K))


def _geometric_store(url, rho, epochs=(0,), depth=True):
    """One set per (layer, epoch) with D_l = c rho**l exactly (per epoch its own rho)."""
    rng = np.random.default_rng(0)
    s = ncdask.EmbeddingStore.create(url, n_classes=K, dim=D, dtype="float64")
    dense = {}
    for e, r in zip(epochs, np.atleast_1d(rho), strict=True):
        data, _ = _layer_data(rng, [r ** (i / 2) for i in range(len(LAYERS))])
        for i, (name, (X, y)) in enumerate(zip(LAYERS, data, strict=True)):
            if depth:
                s.create_set(layer=name, epoch=e, depth=10 * i + 1)
            s.append("train", X, y, layer=name, epoch=e)
            dense[name, e] = _dense_fuzziness(X, y)
    return s, dense


@pytest.mark.parametrize("rho", [0.5, 0.83, 1.7])
def test_recovers_a_geometric_decay_exactly(mem_url, rho):
    s, dense = _geometric_store(mem_url(), rho)
    res = ncdask.sweep(s, over="layer", metrics=["nc1_pinv"])
    fit = ncdask.equiseparation(res)
    assert fit["layer"].values.tolist() == list(LAYERS)  # by depth, not by name
    fit = fit.compute()
    np.testing.assert_allclose(fit.fuzziness, [dense[n, 0] for n in LAYERS], rtol=1e-12)
    np.testing.assert_allclose(fit.fuzziness / fit.fuzziness[0], rho ** np.arange(4),
                               rtol=1e-12)
    assert abs(float(fit.rho) - rho) < 1e-12 and abs(float(fit.r2) - 1) < 1e-12
    assert fit.depth.values.tolist() == [0, 1, 2, 3]
    assert "He & Su" in fit.attrs["reference"] and "tr(Sigma_W Sigma_B^+)" in fit.attrs["formula"]
    # analyze's layer sweep is the same
    via = ncdask.equiseparation(ncdask.analyze(s, sweep="layer", epoch=0, metrics=["nc1_pinv"],
                                               cache=False))
    np.testing.assert_allclose(via.rho, fit.rho, rtol=1e-12)


def test_one_fit_per_epoch_of_a_two_dim_sweep(mem_url):
    s, _ = _geometric_store(mem_url(), [0.5, 0.25], epochs=(3, 7))
    grid = ncdask.sweep(s, over=("layer", "epoch"), metrics=["nc1_pinv"], compute=True)
    assert grid["layer"].values.tolist() == list(LAYERS)
    fit = ncdask.equiseparation(grid)
    np.testing.assert_allclose(fit.rho.sel(epoch=[3, 7]), [0.5, 0.25], rtol=1e-12)
    np.testing.assert_allclose(fit.r2, 1, rtol=1e-12)


def test_sets_without_a_depth_keep_the_name_order(mem_url):
    s, _ = _geometric_store(mem_url(), 0.5, depth=False)  # as a store of an older ncdask
    assert s.depth(layer="conv", epoch=0) is None
    res = ncdask.sweep(s, over="layer", metrics=["nc1_pinv"])
    assert res["layer"].values.tolist() == sorted(LAYERS)


def test_names_what_to_measure():
    res = xr.Dataset({"nc1_quot": ("layer", [1.0, 0.5])}, attrs={"n_classes": 3})
    with pytest.raises(ValueError, match=r"needs nc1_pinv.*metrics=\['nc1_pinv'"):
        ncdask.equiseparation(res)
    with pytest.raises(ValueError, match="at least 2"):
        ncdask.equiseparation(xr.Dataset({"nc1_pinv": ("layer", [1.0])}, attrs={"n_classes": 3}))
    fit = ncdask.equiseparation(xr.Dataset({"nc1_pinv": ("layer", [1.0, 0.0, 0.5])},
                                           attrs={"n_classes": 3}))
    assert np.isnan(fit.rho) and np.isnan(fit.r2)  # log 0: no fit


def test_capture_keeps_the_depth_order(mem_url):
    torch = pytest.importorskip("torch")
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential()
    model.add_module("zeta", nn.Linear(5, 8))
    model.add_module("act", nn.ReLU())
    model.add_module("beta", nn.Linear(8, 8))
    model.add_module("alpha", nn.Linear(8, K))
    x, y = torch.randn(64, 5), torch.arange(64) % K
    s = ncdask.EmbeddingStore.create(mem_url(), n_classes=K, dim=8)
    # given out of order, and named so that the name order is neither
    layers = {"c_head": ("alpha", "input"), "b_in": ("zeta", "input"),
              "a_act": ("act", "output"), "d_mid": ("beta", "output")}
    ncdask.capture(model, [(x[:32], y[:32]), (x[32:], y[32:])], s, layers=layers)
    depths = [s.depth(layer=n) for n in ("b_in", "a_act", "d_mid", "c_head")]
    assert depths == sorted(depths) and len(set(depths)) == 4
    res = ncdask.sweep(s, over="layer", metrics=["nc1_pinv"], compute=True)
    assert res["layer"].values.tolist() == ["b_in", "a_act", "d_mid", "c_head"]
    # a second call adds a split to the same sets: their depths stay
    ncdask.capture(model, [(x, y)], s, "test", layers=layers)
    assert [s.depth(layer=n) for n in ("b_in", "a_act", "d_mid", "c_head")] == depths
    # a StatsSink keeps the depths too
    sink = ncdask.StatsSink(K)
    ncdask.capture(model, [(x, y)], sink, layers=layers)
    assert sink.sweep(over="layer", metrics=["nc1_pinv"]).layer.values.tolist() == [
        "b_in", "a_act", "d_mid", "c_head"]


def test_plot_equiseparation_draws(mem_url, tmp_path):
    pytest.importorskip("matplotlib")
    from ncdask.plot import plot_equiseparation

    s, _ = _geometric_store(mem_url(), [0.5, 0.25], epochs=(3, 7))
    res = ncdask.sweep(s, over="layer", epoch=3, metrics=["nc1_pinv"], compute=True)
    fig = plot_equiseparation(res)
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any("\u03c1 = 0.5," in t and "R\u00b2 = 1.000" in t for t in labels), labels
    assert [t.get_text() for t in ax.get_xticklabels()] == list(LAYERS)
    grid = ncdask.sweep(s, over=("layer", "epoch"), metrics=["nc1_pinv"], compute=True)
    fig = plot_equiseparation(ncdask.equiseparation(grid))
    assert len(fig.axes[0].get_lines()) == 4  # points and fit per epoch
    fig.savefig(tmp_path / "equisep.png")
    assert (tmp_path / "equisep.png").stat().st_size > 1000
