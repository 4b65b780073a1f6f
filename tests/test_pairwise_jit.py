"""The compiled pairwise pass (numba) against the NumPy passes and the dense reference."""

import dask
import numpy as np
import pytest
from dense_metrics import dense_metrics, dense_stats, golden

import ncdask
from ncdask.kernels import pairwise as P
from ncdask.kernels import pairwise_jit as J

pytest.importorskip("numba")
# one worker compiles the pass (numba caches it on disk for the next runs)
pytestmark = pytest.mark.xdist_group("pairwise_jit")

PAIRWISE = ["nc1_cdnv", "nc2_equiangle", "nc2_max_angle", "nc2g_dist_mean", "nc2g_dist_var",
            "nc2g_log_mean", "nc2g_log_var", "nc2g_riesz_mean", "nc2g_riesz_var",
            "nc2g_riesz_log_mean", "nc2g_riesz_log_var", "nc2w_max_angle"]


def _final(jit, Mi, Mj, gi, gj, v, W, riesz_s, dist_exp, K):
    vi, vj = v[gi], v[gj]
    with dask.config.set({"ncdask.pairwise_jit": jit}):
        m = P.pair_moments(Mi, Mj, gi, gj, vi, vj, W[gi], W[gj], stats=P.PAIR_STATS,
                           riesz_s=riesz_s, dist_exp=dist_exp, inv_km1=1 / (K - 1))
    return P.finalize_moments(m)


def _cases(rng):
    K, D = 60, 7
    yield "random", rng.normal(size=(K, D)), rng.random(K)
    M = rng.normal(size=(K, D))
    M[5], M[7] = M[40], M[8]  # zero distances, within a tile and across tiles
    M[3] = M[4] + 1e-9  # a pair the GEMM form cannot resolve
    v = rng.random(K)
    v[[7, 8]] = 0.0  # 0/0: a NaN CDNV
    yield "duplicates", M, v
    E = np.eye(K) - 1.0 / K  # a near-exact simplex: every variance tiny
    yield "simplex", E + 1e-7 * rng.normal(size=E.shape), np.full(K, 0.5)


@pytest.mark.parametrize("riesz_s,dist_exp", [(3.0, 1.0), (-1.0, 2.0), (0.0, 0.5), (58.0, 1.0)])
def test_the_compiled_pass_equals_the_numpy_passes(riesz_s, dist_exp):
    rng = np.random.default_rng(0)
    for name, M, v in _cases(rng):
        K = M.shape[0]
        W = rng.normal(size=M.shape)
        g = np.arange(K)
        for a, b in ((slice(0, 25), slice(25, K)), (slice(0, 25), slice(0, 25)),
                     (slice(10, 50), slice(20, K)), (slice(0, K), slice(0, K))):
            want = _final(False, M[a], M[b], g[a], g[b], v, W, riesz_s, dist_exp, K)
            got = _final(True, M[a], M[b], g[a], g[b], v, W, riesz_s, dist_exp, K)
            np.testing.assert_array_equal(got[:, 0], want[:, 0], err_msg=f"{name} {a} {b}")
            np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-300, equal_nan=True,
                                       err_msg=f"{name} {a} {b}")


def test_variances_keep_their_digits_near_collapse():
    """Shifted sums: a variance 1e-14 of the squared mean is still right to 1e-6."""
    rng = np.random.default_rng(1)
    K = 40
    E = np.eye(K) - 1.0 / K
    M = E + 1e-7 * rng.normal(size=E.shape)
    g = np.arange(K)
    got = _final(True, M, M, g, g, np.ones(K), M, 3.0, 1.0, K)
    U = M / np.linalg.norm(M, axis=1, keepdims=True)
    iu = np.triu_indices(K, 1)
    dist = np.linalg.norm(U[:, None] - U[None], axis=-1)[iu]
    assert dist.var() < 1e-12 * dist.mean() ** 2
    np.testing.assert_allclose(got[P.PAIR_STATS.index("dist"), 2], dist.var(), rtol=1e-6)


@pytest.mark.parametrize("case", ["manyclass", "wide"])
def test_measure_with_the_compiled_pass_matches_the_dense_reference(case):
    data, b = golden(case)
    K = data["W"].shape[0]
    y = data["Y"].astype(np.int64)
    ref = dense_metrics(data["X"], y, K, W=data["W"])
    stats = dense_stats(data["X"], y, K, chunks=3)
    for tile in (1, 7, K):
        with dask.config.set({"ncdask.pairwise_jit": True}):
            res = ncdask.measure(stats, metrics=PAIRWISE, weights=data["W"],
                                 tile_size=tile).compute()
        for name in PAIRWISE:
            np.testing.assert_allclose(float(res[name]), ref[name], rtol=1e-8, atol=1e-11,
                                       err_msg=f"{name}, tile {tile}")


def test_auto_takes_the_compiled_pass_only_for_large_float64_host_tiles():
    x = np.zeros((2, 2))
    assert not J.enabled(J.MIN_PAIRS - 1, x)
    assert J.enabled(J.MIN_PAIRS, x)
    assert not J.enabled(J.MIN_PAIRS, x.astype(np.float32))
    with dask.config.set({"ncdask.pairwise_jit": True}):
        assert J.enabled(1, x, None)
    with dask.config.set({"ncdask.pairwise_jit": False}):
        assert not J.enabled(J.MIN_PAIRS, x)
