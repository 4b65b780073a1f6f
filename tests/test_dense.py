"""The shared statistics checker judges each statistic on its own scale."""

import numpy as np
import pytest
from dense import assert_stats_equal, class_data, dense_stat_arrays


def test_the_checker_rejects_small_errors_in_small_statistics():
    """Collapsed data: Σ_W is ~1e-12 of XᵀX/N, yet Σ_W × 1.02 fails, as do means moved
    by 1e-6 of their norm; rounding-sized changes pass."""
    rng = np.random.default_rng(0)
    K, D, n = 5, 8, 500
    X, y = class_data(rng, 1e3 * rng.normal(size=(K, D)), n, noise=1e-3)
    want = dense_stat_arrays(X, y, K)
    Sw, M = want["within_cov"], want["means"]
    assert 0.02 * np.linalg.norm(Sw) < 1e-12 * np.linalg.norm(X.T @ X / n)  # a shared scale
    moved = M.copy()
    moved[0, 0] += 1e-6 * np.linalg.norm(M)
    for name, bad in (("within_cov", Sw * 1.02), ("means", moved)):
        with pytest.raises(AssertionError, match=name):
            assert_stats_equal({**want, name: bad}, want, rtol=1e-7)
    assert_stats_equal({**want, "within_cov": Sw * (1 + 1e-14), "means": M * (1 - 1e-14)}, want)
    with pytest.raises(AssertionError):
        assert_stats_equal({**want, "counts": want["counts"] + 1}, want, rtol=1)
