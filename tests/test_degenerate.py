"""Degenerate data gives NaN, never a number that reads as collapse (issue 14)."""

import warnings

import numpy as np
import pytest

import ncdask


def _nc1(X, y, K, **append):
    s = ncdask.EmbeddingStore.create("memory://degenerate", K, X.shape[1], overwrite=True)
    s.append("train", X, y, **append)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = ncdask.measure(ncdask.class_stats(s, "train"), metrics=["nc1"]).compute()
    return {k: float(r[k]) for k in r.data_vars if r[k].ndim == 0}


@pytest.mark.parametrize("K,D", [(3, 8), (7, 8), (7, 4)], ids=["K<D", "K<D-7", "K>D"])
@pytest.mark.parametrize("value", [0.1, 1.7])
def test_identical_rows_are_not_perfect_collapse(K, D, value):
    y = np.arange(63) % K
    got = _nc1(np.full((63, D), value), y, K)
    assert "nc1_pinv" in got and all(np.isnan(v) for v in got.values()), got


def test_spread_rounded_away_by_float32_storage_is_nan():
    rng = np.random.default_rng(0)
    y = np.arange(60) % 3
    got = _nc1(1e6 + 1e-3 * rng.normal(size=(60, 8)), y, 3)  # float32: every row 1e6
    assert all(np.isnan(v) for v in got.values()), got


def test_nan_embeddings_give_nan_not_linalg_errors():
    rng = np.random.default_rng(1)
    X, y = rng.normal(size=(60, 8)), np.arange(60) % 3
    X[5, 1] = np.nan
    got = _nc1(X, y, 3, allow_nonfinite=True)
    assert all(np.isnan(v) for v in got.values()), got


def test_a_collapsed_but_separated_set_is_still_zero():
    """Σ_W = 0 with distinct class means is perfect collapse: 0, not NaN."""
    K = 4
    y = np.arange(40) % K
    got = _nc1(np.eye(K, 6)[y] * 3.0, y, K)
    assert got["nc1_pinv"] == 0.0 and got["nc1_quot"] == 0.0
