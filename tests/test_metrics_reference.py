"""The reference-named functions (metrics.reference_api): parity, input kinds, lazy grids."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import xarray as xr
from dense_metrics import EPS, dense_metrics, golden

from ncdask.metrics import DegenerateInputWarning
from ncdask.metrics import reference_api as R


def _inputs(name):
    d, g = golden(name)
    X, Y, W = d["X"], d["Y"], d["W"]
    K, D = W.shape
    M = np.stack([X[Y == k].mean(0) for k in range(K)])
    mG = M.mean(0)
    v = np.array([((X[Y == k] - M[k]) ** 2).sum(1).mean() for k in range(K)])
    Sw = sum((X[Y == k] - M[k]).T @ (X[Y == k] - M[k]) for k in range(K)) / len(X)
    return d, g, M, mG, v, Sw


KINDS = {
    "numpy": lambda a: a,
    "dask": lambda a: da.from_array(a, chunks=3) if np.ndim(a) else a,
    "xarray": lambda a: xr.DataArray(a) if np.ndim(a) else a,
}


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("name", ["collapsed", "manyclass", "wide"])
def test_reference_functions_match_golden(name, kind):
    d, g, M, mG, v, Sw = _inputs(name)
    f = KINDS[kind]
    m = g["metrics"]
    K, D = M.shape
    assert R.covariance_ratio(f(Sw), f(M), f(mG)) == pytest.approx(m["nc1_pinv"], rel=1e-6)
    assert R.covariance_ratio(f(Sw), f(M), f(mG), metric="quotient") == pytest.approx(
        m["nc1_quot"], rel=1e-6
    )
    if "nc1_svd" in m:
        assert R.covariance_ratio(f(Sw), f(M), f(mG), metric="svd") == pytest.approx(
            m["nc1_svd"], rel=1e-6
        )
    else:
        with pytest.warns(DegenerateInputWarning):
            assert np.isnan(R.covariance_ratio(f(Sw), f(M), f(mG), metric="svd"))
    for T in (None, 3):  # K mod 3 == 1 for the 40-class case
        assert R.variability_cdnv(f(v), f(M), tile_size=T) == pytest.approx(
            m["nc1_cdnv"], rel=1e-6
        )
    for kern, key in ((R.dist_kernel, "dist"), (R.log_kernel, "log"), (R.riesz_kernel, "riesz")):
        mean, var = R.kernel_stats(f(M), f(mG), kernel=kern, tile_size=2)
        assert mean == pytest.approx(m[f"nc2g_{key}_mean"], rel=1e-5)
        assert var == pytest.approx(m[f"nc2g_{key}_var"], rel=1e-5)
    assert R.simplex_etf_error(f(M), f(mG)) == pytest.approx(m["nc2_etf_err"], rel=1e-6)
    assert R.self_duality_error(f(d["W"]), f(M), f(mG)) == pytest.approx(
        m["nc3_dual_err"], rel=1e-6
    )
    for fn, key in (
        (lambda: R.similarities(f(d["W"]), f(M), f(mG)), "similarities"),
        (lambda: R.distance_norms(f(d["W"]), f(M), f(mG)), "distance_norms"),
        (lambda: R.mean_norms(f(M), f(mG)), "mean_norms"),
    ):
        out = fn()
        expected_type = {"numpy": np.ndarray, "dask": da.Array, "xarray": xr.DataArray}[kind]
        assert isinstance(out, expected_type), (key, type(out))
        np.testing.assert_allclose(np.asarray(out), g["stats"][key], rtol=1e-9, atol=1e-12)
    sims = np.asarray(R.similarities(f(d["W"]), f(M), f(mG)))
    assert np.var(sims, ddof=1) == pytest.approx(m["nc3u_uni_dual"], rel=1e-6)
    Xo, Yo = d["X_ood"], d["Y_ood"]
    m_ood = np.mean([Xo[Yo == lab].mean(0) for lab in np.unique(Yo)], axis=0)
    assert R.orthogonality_deviation(f(M), f(m_ood)) == pytest.approx(m["nc5_ood_dev"], rel=1e-6)
    Xt, Yt = d["X_test"], d["Y_test"]
    lin = (Xt @ d["W"].T).argmax(1)
    ncc = ((Xt[:, None] - M[None]) ** 2).sum(-1).argmin(1)
    Ns = np.bincount(Yt, minlength=K)
    hits = np.bincount(Yt, weights=lin == ncc, minlength=K)
    assert R.clf_ncc_agreement(f(Ns), f(hits)) == pytest.approx(m["nc4_agree"], rel=1e-12)
    assert R.clf_ncc_agreement(f(Ns), misses=f(Ns - hits)) == pytest.approx(m["nc4_agree"])
    np.testing.assert_allclose(
        R.clf_ncc_agreement(Ns, hits, weighted=False), np.mean(hits / Ns), rtol=1e-12
    )
    assert R.clf_ncc_agreement(Ns) is None


def test_mean_norms_post_funcs_and_cosine_similarities():
    d, g, M, mG, v, Sw = _inputs("wide")
    sq = R.mean_norms(M, mG, post_funcs=[np.square])
    np.testing.assert_allclose(sq, np.linalg.norm(M - mG, axis=1) ** 2, rtol=1e-12)
    ref = dense_metrics(d["X"], d["Y"], 10, W=d["W"])
    np.testing.assert_allclose(
        R.similarities(d["W"], M, mG, cos=True), ref["similarities_cos"], rtol=1e-12
    )
    np.testing.assert_allclose(
        R.distance_norms(d["W"], M, mG, norm=False),
        np.linalg.norm(d["W"] - (M - mG), axis=1),
        rtol=1e-12,
    )


def test_grids_are_lazy_dask_dataarrays_and_match_dense(tmp_path):
    d, g, M, mG, v, Sw = _inputs("manyclass")
    K, D = M.shape
    Mc = M - mG
    u = Mc / (np.linalg.norm(Mc, axis=1, keepdims=True) + EPS)
    dist = np.linalg.norm(u[:, None] - u[None], axis=-1)
    raw = np.linalg.norm(M[:, None] - M[None], axis=-1)
    with np.errstate(divide="ignore"):
        expected = {
            "kernel_grid": (R.kernel_grid(M, mG, tile_size=7), dist),
            "kernel_grid_log": (
                R.kernel_grid(M, mG, kernel=R.log_kernel, tile_size=7),
                -np.log(dist),
            ),
            "dist": (R.dist_kernel(M, tile_size=7), raw),
            "log2": (R.log_kernel(M, exponent=2, tile_size=7), 2 * np.log(raw)),
            "riesz": (R.riesz_kernel(u, tile_size=7), dist ** -(D - 2)),
            "cdnv": (
                R.class_dist_norm_vars(v, M, tile_size=7),
                (v[:, None] + v[None]) / 2 / raw**2,
            ),
            "interference": (R.interference_grid(M, mG, tile_size=7), Mc @ Mc.T),
        }
    for key, (grid, want) in expected.items():
        assert isinstance(grid, xr.DataArray) and isinstance(grid.data, da.Array), key
        assert grid.dims == ("class", "class_") and grid.shape == (K, K)
        assert grid.data.chunks[0][0] == 7
        got = grid.values
        off = ~np.eye(K, dtype=bool)
        np.testing.assert_allclose(got[off], want[off], rtol=1e-9, atol=1e-12, err_msg=key)
    diag = np.diag(expected["cdnv"][0].values)
    assert np.all(np.isinf(diag)) and np.all(np.diag(expected["dist"][0].values) == 0)
    # a grid streams to Zarr chunk by chunk
    url = str(tmp_path / "grid.zarr")
    expected["kernel_grid"][0].rename("dist").to_dataset().to_zarr(
        url, mode="w", consolidated=False
    )
    back = xr.open_zarr(url, consolidated=False)["dist"]
    np.testing.assert_allclose(back.values, expected["kernel_grid"][0].values)


def test_kernel_stats_with_custom_kernel_and_riesz_sign():
    d, g, M, mG, v, Sw = _inputs("wide")
    Mc = M - mG
    u = Mc / (np.linalg.norm(Mc, axis=1, keepdims=True) + EPS)

    def inner_kernel(data, tile_size=None):
        return R.interference_grid(data, tile_size=tile_size)

    mean, var = R.kernel_stats(M, mG, kernel=inner_kernel, tile_size=4)
    vals = (u @ u.T)[np.triu_indices(len(M), 1)]
    assert mean == pytest.approx(vals.mean(), rel=1e-10)
    assert var == pytest.approx(vals.var(), rel=1e-10)
    # D = 1: S = -1, the Riesz kernel is -||u_i - u_j||
    M1 = np.array([[0.0], [1.0], [3.0]])
    mean1, _ = R.kernel_stats(M1, M1.mean(0), kernel=R.riesz_kernel)
    u1 = np.sign(M1 - M1.mean(0))[:, 0]
    vals1 = -np.abs(u1[:, None] - u1[None])[np.triu_indices(3, 1)]
    assert mean1 == pytest.approx(vals1.mean())


def test_bad_arguments():
    with pytest.raises(ValueError, match="metric"):
        R.covariance_ratio(np.eye(2), np.eye(2), metric="nope")
    with pytest.raises(ValueError, match="m_G"):
        R.simplex_etf_error(np.eye(3), np.ones(2))
    with pytest.raises(ValueError, match="tile_size"):
        R.variability_cdnv(np.ones(3), np.eye(3), tile_size=-1)


def test_torch_inputs_switch_by_import():
    torch = pytest.importorskip("torch")
    d, g, M, mG, v, Sw = _inputs("collapsed")
    m = g["metrics"]
    t = torch.from_numpy
    assert R.covariance_ratio(t(Sw), t(M), t(mG)) == pytest.approx(m["nc1_pinv"], rel=1e-6)
    assert R.variability_cdnv(t(v), t(M)) == pytest.approx(m["nc1_cdnv"], rel=1e-6)
    mean, var = R.kernel_stats(t(M), t(mG), kernel=R.log_kernel)
    assert var == pytest.approx(m["nc2g_log_var"], rel=1e-5)
    assert R.self_duality_error(t(d["W"]), t(M), t(mG)) == pytest.approx(
        m["nc3_dual_err"], rel=1e-6
    )
    sims = R.similarities(t(d["W"]), t(M), t(mG))
    assert isinstance(sims, torch.Tensor) and sims.dtype == torch.float64
    np.testing.assert_allclose(sims.numpy(), g["stats"]["similarities"], rtol=1e-9)
    # the reference README's UNC3 line, unchanged: torch's .var() is unbiased
    assert sims.var().item() == pytest.approx(m["nc3u_uni_dual"], rel=1e-6)
    for key, out in (
        ("distance_norms", R.distance_norms(t(d["W"]), t(M), t(mG))),
        ("mean_norms", R.mean_norms(t(M), t(mG))),
    ):
        assert isinstance(out, torch.Tensor), key
        np.testing.assert_allclose(out.numpy(), g["stats"][key], rtol=1e-9, atol=1e-12)
