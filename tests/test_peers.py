"""Peer metrics as standalone functions: equal to the dense reference and to measure."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import xarray as xr
from dense_metrics import dense_metrics, dense_stats, small_case

from ncdask.metrics import measure, peers

# --------------------------------------------------------------------------- standalone functions


def test_peer_functions_match_dense_and_measure():
    X, y, W, b, *_ = small_case(1)
    K = W.shape[0]
    ref = dense_metrics(X, y, K, W=W, b=b)
    stats = dense_stats(X, y, K)
    res = measure(stats, weights=W, bias=b, tile_size=4).compute()
    M = np.stack([X[y == k].mean(0) for k in range(K)])
    mG = M.mean(0)
    mu_w = X.mean(0)
    got = {
        "nc2w_etf_err": peers.classifier_etf_error(W),
        "nc2w_equinorm": peers.classifier_equinorm(W),
        "nc2w_max_angle": peers.classifier_max_angle(W, tile_size=2),
        "nc3_papyan": peers.self_duality_distance(W, M, mG),
        "nc3_bias": peers.bias_collapse(W, b, mu_w),
    }
    for key, val in got.items():
        assert isinstance(val, float), key
        assert val == pytest.approx(ref[key], rel=1e-9, abs=1e-8 if "etf" in key else 0), key
        assert val == pytest.approx(float(res[key]), rel=1e-9, abs=1e-8 if "etf" in key else 0)


def test_peer_functions_accept_dask_xarray_and_torch():
    X, y, W, b, *_ = small_case(2)
    want = peers.classifier_max_angle(W)
    assert peers.classifier_max_angle(da.from_array(W, chunks=(2, -1))) == pytest.approx(want)
    assert peers.classifier_max_angle(xr.DataArray(W, dims=("class", "feature"))) == (
        pytest.approx(want)
    )
    torch = pytest.importorskip("torch")
    assert peers.classifier_equinorm(torch.from_numpy(W)) == pytest.approx(
        peers.classifier_equinorm(W)
    )


def test_peer_functions_on_ideal_geometry_and_bad_input():
    K = 5
    etf = np.eye(K) - 1.0 / K
    assert peers.classifier_etf_error(etf) == pytest.approx(0.0, abs=1e-7)
    assert peers.classifier_max_angle(etf) == pytest.approx(0.0, abs=1e-12)
    assert peers.classifier_equinorm(etf) == pytest.approx(0.0, abs=1e-12)
    assert peers.self_duality_distance(2 * etf, etf) == pytest.approx(0.0, abs=1e-12)
    assert peers.bias_collapse(etf) == 0.0
    with pytest.raises(ValueError, match="at least 2 rows"):
        peers.classifier_equinorm(np.ones((1, 3)))
    with pytest.raises(ValueError, match="m_G has shape"):
        peers.bias_collapse(etf, None, np.ones(2))
    with pytest.raises(ValueError, match="b has shape"):
        peers.bias_collapse(etf, np.ones(2))
    with pytest.raises(ValueError, match="M has shape"):
        peers.self_duality_distance(etf, np.ones((4, 5)))
