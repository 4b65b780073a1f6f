"""An exact simplex ETF and its self-dual classifier measure zero to ≤1e-12 at every tile size."""

import numpy as np
import pytest

import ncdask
from ncdask.stats.core import labelled_stats

ZERO = ["nc2_etf_err", "nc2w_etf_err", "nc3_dual_err"]


def _simplex_stats(K, D, seed=0):
    """Class statistics whose means are the vertices of a rotated simplex ETF in R^D (D ≥ K−1)
    with an isotropic Σ_W, and the self-dual W (the normalised means)."""
    rng = np.random.default_rng(seed)
    j, k = np.arange(1, K)[:, None], np.arange(K)  # Helmert rows: an orthonormal basis of 1⊥
    H = np.where(k < j, 1.0, np.where(k == j, -j, 0.0)) / np.sqrt(j * (j + 1))
    Q = np.linalg.qr(rng.normal(size=(D, K - 1)))[0]
    M = np.sqrt(K / (K - 1)) * H.T @ Q.T  # M Mᵀ = K/(K−1)(I − 11ᵀ/K)
    arrays = dict(means=M, global_mean=M.mean(0), within_cov=0.01 * np.eye(D),
                  var_norms=np.full(K, 0.01 * D))
    stats = labelled_stats(arrays, np.full(K, 2), global_mean="unweighted", attrs={})
    return stats, M / np.linalg.norm(M, axis=1, keepdims=True)


@pytest.mark.parametrize("K, D", [(2, 4), (3, 5), (10, 12), (1000, 1002),
                                  (2, 1), (3, 2), (10, 9), (200, 199)])
def test_an_exact_simplex_measures_zero_at_every_tile_size(K, D):
    """D ≥ K forms the K×K Gram; D = K−1 only D×D ones. Both give rounding, not √ε
    (``√(2 − 2 cos)`` gave 1.5e-8 wherever the cosine rounded below 1: a few rotations)."""
    for seed in range(4 if K < 1000 else 1):
        stats, W = _simplex_stats(K, D, seed)
        for T in sorted({1, 3, K}):
            res = ncdask.measure(stats, weights=W, tile_size=T, metrics=ZERO).compute()
            for name in ZERO:
                assert abs(float(res[name])) <= 1e-12, (name, seed, T, float(res[name]))


def test_the_difference_forms_equal_the_dense_definition_on_any_rows():
    """The K×K (K ≤ D) and D×D (K = D + 1) difference forms on rows far from a simplex,
    W uncentred, against ``‖G/‖G‖ − T‖`` formed densely."""
    from ncdask.metrics.reference_api import structure_error

    rng = np.random.default_rng(1)
    for K, D in ((6, 8), (9, 8), (30, 29)):
        A, B = rng.normal(size=(K, D)), rng.normal(size=(K, D)) + 0.5
        T = (np.eye(K) - 1.0 / K) / np.sqrt(K - 1)
        for X, Y in ((A, A), (A, B), (B, B)):
            G = Y @ X.T
            want = np.linalg.norm(G / np.linalg.norm(G) - T)
            assert structure_error(X, Y) == pytest.approx(want, rel=1e-12, abs=1e-14)
