"""The CDNV distance exponent and the Riesz exponent, with the log-domain Riesz kernel."""

from __future__ import annotations

import numpy as np
import pytest
from dense_metrics import EPS, dense_metrics, dense_stats, small_case
from scipy.special import logsumexp

from ncdask.metrics import RieszRangeWarning, measure
from ncdask.metrics import reference_api as R

# --------------------------------------------------------------------------- dist_exp


@pytest.mark.parametrize("p", [1.0, 2.0, 0.5])
def test_dist_exp_everywhere(p):
    X, y, *_ = small_case(11, K=7, D=5)
    K = 7
    ref = dense_metrics(X, y, K, dist_exp=p)
    stats = dense_stats(X, y, K)
    M, v = stats.means.values, stats.var_norms.values
    assert R.variability_cdnv(v, M, dist_exp=p, tile_size=3) == pytest.approx(
        ref["nc1_cdnv"], rel=1e-10
    )
    assert float(measure(stats, metrics="nc1_cdnv", dist_exp=p).nc1_cdnv) == pytest.approx(
        ref["nc1_cdnv"], rel=1e-10
    )
    grid = R.class_dist_norm_vars(v, M, dist_exp=p, tile_size=3).values
    d2 = ((M[:, None] - M[None]) ** 2).sum(-1)
    off = ~np.eye(K, dtype=bool)
    with np.errstate(divide="ignore"):
        want = (v[:, None] + v[None]) / 2 / d2**p
    np.testing.assert_allclose(grid[off], want[off], rtol=1e-10)


# --------------------------------------------------------------------------- Riesz


def _unit(M):
    Mc = M - M.mean(0)
    return Mc / (np.linalg.norm(Mc, axis=1, keepdims=True) + EPS)


@pytest.mark.parametrize("s", [1.5, -0.5, 7.0])
def test_riesz_user_exponent_in_kernel_stats_and_grid(s):
    rng = np.random.default_rng(12)
    M = rng.normal(size=(6, 5))
    u = _unit(M)
    iu = np.triu_indices(6, 1)
    dist = np.linalg.norm(u[:, None] - u[None], axis=-1)
    vals = np.sign(s) * dist[iu] ** (-s)
    mean, var = R.kernel_stats(M, M.mean(0), kernel=R.riesz_kernel, riesz_s=s, tile_size=4)
    assert mean == pytest.approx(vals.mean(), rel=1e-10)
    assert var == pytest.approx(vals.var(), rel=1e-9)
    grid = R.riesz_kernel(u, tile_size=4, s=s).values
    lgrid = R.riesz_kernel(u, tile_size=4, s=s, log=True).values
    off = ~np.eye(6, dtype=bool)
    d = dist[off]
    np.testing.assert_allclose(grid[off], np.sign(s) * d ** (-s), rtol=1e-10)
    np.testing.assert_allclose(lgrid[off], -s * np.log(d), rtol=1e-10)


def test_riesz_warns_where_float64_under_or_overflows():
    assert issubclass(RieszRangeWarning, RuntimeWarning)
    rng = np.random.default_rng(13)
    K, D = 5, 3000
    u = _unit(rng.normal(size=(K, D)))
    # the grid: S = D - 2 = 2998 at distances near sqrt(2) gives about e^-1039
    grid = R.riesz_kernel(u, tile_size=2)  # building it is silent
    with pytest.warns(RieszRangeWarning, match="values with S=2998 underflows"):
        vals = grid.values
    assert np.all(vals[~np.eye(K, dtype=bool)] == 0.0)
    logs = R.riesz_kernel(u, tile_size=2, log=True).values  # no warning
    assert np.all(np.isfinite(logs[~np.eye(K, dtype=bool)]))
    # measure: the log-domain variables stay finite
    stats = dense_stats(u, np.arange(K), K)
    res = measure(stats, metrics=["nc2g_riesz"])
    with pytest.warns(RieszRangeWarning, match="mean over pairs underflows"):
        res = res.compute()
    assert float(res.nc2g_riesz_mean) == 0.0
    assert np.isfinite(float(res.nc2g_riesz_log_mean))
    # a negative exponent overflows the other way (distances near sqrt(2): about e^728)
    res = measure(stats, metrics=["nc2g_riesz"], riesz_s=-2100.0)
    with pytest.warns(RieszRangeWarning, match="mean over pairs overflows to inf"):
        res = res.compute()
    assert float(res.nc2g_riesz_mean) == -np.inf  # sign(S) = -1
    u2 = _unit(u)  # measure centres the means again
    logd = np.log(np.linalg.norm(u2[:, None] - u2[None], axis=-1)[np.triu_indices(K, 1)])
    want = logsumexp(2100.0 * logd) - np.log(logd.size)
    assert float(res.nc2g_riesz_log_mean) == pytest.approx(want, rel=1e-9)
    # a moderate exponent is silent
    measure(stats, metrics=["nc2g_riesz"], riesz_s=50.0).compute()
