"""Minority collapse by frequency: ``cos_mean_by_frequency`` against pairs enumerated densely."""

import warnings

import numpy as np
import pytest
from dense_metrics import class_data, dense_metrics, dense_stats

import ncdask


def _long_tail(seed=0, K=11, D=7):
    """Counts from 40 down to 1 and one empty class (K // 2)."""
    rng = np.random.default_rng(seed)
    counts = np.maximum(1, (40 / (1 + np.arange(K))).astype(int))
    counts[K // 2] = 0
    X, y = class_data(rng, rng.normal(size=(K, D)) * 3, np.repeat(np.arange(K), counts))
    return X, y, K


@pytest.mark.parametrize("n_bins", [1, 3, 6, 10])
@pytest.mark.parametrize("weighted", [False, True])
def test_cos_mean_matches_every_pair_enumerated(n_bins, weighted):
    """Tiles {1, 3, K} × two chunkings, with an empty class; 10 bins of 10 classes leave
    bins of one class: NaN, and no warning about it."""
    X, y, K = _long_tail()
    ref = dense_metrics(X, y, K, weighted=weighted, by_frequency=n_bins)
    for tile in (1, 3, K):
        for chunks in (2, K):
            stats = dense_stats(X, y, K, weighted=weighted, chunks=chunks)
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                res = ncdask.measure(stats, metrics="cos_mean_by_frequency", tile_size=tile,
                                     by_frequency=n_bins)
                got = res.cos_mean_by_frequency.compute().values
            np.testing.assert_allclose(got, ref["cos_mean_by_frequency"], rtol=1e-10,
                                       atol=1e-14, err_msg=f"tile {tile}, chunks {chunks}")
    assert res.cos_mean_by_frequency.dims == ("frequency_bin",)
    assert np.isnan(got).sum() == {6: 2, 10: 10}.get(n_bins, 0)  # bins of one class


def test_one_bin_is_the_interference_mean():
    X, y, K = _long_tail(seed=1)
    stats = dense_stats(X, y, K, chunks=4)
    res = ncdask.measure(stats, metrics=["interference_mean"], by_frequency=1).compute()
    np.testing.assert_allclose(res.cos_mean_by_frequency.values, [res.interference_mean],
                               rtol=1e-12)


def test_tail_classes_squeezed_together_read_as_minority_collapse():
    """Head classes on a simplex, the rare ones all near one direction: the tail bin's mean
    cosine goes to 1, the head bin's stays near -1/(C-1)."""
    rng = np.random.default_rng(2)
    K, D = 8, 16
    means = np.zeros((K, D))
    means[:4, :4] = 10 * (np.eye(4) - 0.25)
    means[4:, 5] = 10  # the four rare classes share one mean direction ...
    means[4:, 6:10] = 0.1 * np.eye(4)  # ... nearly
    counts = np.array([50] * 4 + [3] * 4)
    X, y = class_data(rng, means, np.repeat(np.arange(K), counts), noise=0.01)
    res = ncdask.measure(dense_stats(X, y, K, weighted=True), by_frequency=2,
                         metrics="cos_mean_by_frequency").compute()
    head, tail = res.cos_mean_by_frequency.values
    assert tail > 0.9 and head < 0.1
