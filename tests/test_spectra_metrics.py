"""vci, alpha_req and rankme from the class statistics against the samples themselves.

The dense reference (``dense_metrics.dense_spectra``) works on the raw (X, y): the total
covariance around the sample mean, ``np.linalg.pinv``, a ``polyfit`` and the SVD of X."""

import numpy as np
import pytest
from dense_metrics import dense_spectra, raise_if_dask_computes, split

import ncdask

SPECTRA = ["vci", "alpha_req", "rankme"]


def _data(K, D, n, seed=0, spread=2.0):
    """Unbalanced classes (counts 1 + Poisson), anisotropic noise, offset away from 0."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(K), 2 + rng.poisson(n, size=K))
    rng.shuffle(y)
    M = spread * rng.normal(size=(K, D)) + 3.0
    X = M[y] + rng.normal(size=(y.size, D)) * np.linspace(1.0, 0.05, D)
    return X, y


def _measure(X, y, K, *, tile, chunks, global_mean="unweighted", names=SPECTRA):
    stats = ncdask.class_stats(split(X, y, K, chunks=chunks), global_mean=global_mean,
                               tile_size=tile)
    with raise_if_dask_computes():  # built lazily
        res = ncdask.measure(stats, metrics=names, tile_size=tile)
    res = res.compute()
    return {n: float(res[n]) for n in names}


@pytest.mark.parametrize("K,D", [(7, 12), (20, 5)])  # K-1 < D (rank K-1), K > D (rank D)
def test_spectra_match_the_samples_at_every_tile_and_chunking(K, D):
    X, y = _data(K, D, 9)
    ref = dense_spectra(X, y)
    for tile in (1, 3, K):
        for chunks in (13, 50):
            got = _measure(X, y, K, tile=tile, chunks=chunks)
            for name in SPECTRA:
                np.testing.assert_allclose(got[name], ref[name], rtol=1e-10,
                                           err_msg=f"{name}, tile {tile}, chunks {chunks}")


def test_the_sample_mean_whatever_the_statistics_centre_on():
    """x̄ is the frequency-weighted sample mean whichever global mean the statistics hold."""
    X, y = _data(6, 8, 5, seed=1)
    a = _measure(X, y, 6, tile=2, chunks=17, global_mean="unweighted")
    b = _measure(X, y, 6, tile=2, chunks=17, global_mean="weighted")
    for name in SPECTRA:
        np.testing.assert_allclose(a[name], b[name], rtol=1e-12)


def test_total_covariance_is_within_plus_frequency_weighted_between():
    """Σ_T = Σ_W + Σ_B^f with the statistics' Σ_W (1/N) and the sample mean."""
    X, y = _data(9, 6, 7, seed=2)
    st = ncdask.class_stats(split(X, y, 9, chunks=31)).compute()
    f = st["counts"].values / st["counts"].values.sum()
    xbar = f @ st["means"].values
    dev = st["means"].values - xbar
    St = st["within_cov"].values + (dev * f[:, None]).T @ dev
    np.testing.assert_allclose(xbar, X.mean(0), rtol=1e-13)
    np.testing.assert_allclose(St, np.cov(X.T, bias=True), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("K,D", [(5, 8), (12, 4)])
def test_vci_is_zero_at_exact_collapse(K, D):
    """Every sample at its class mean: Σ_T = Σ_B^f, tr(Σ_T⁺ Σ_B^f) = min(D, K-1)."""
    rng = np.random.default_rng(3)
    y = np.repeat(np.arange(K), rng.integers(2, 6, size=K))
    X = (4 * rng.normal(size=(K, D)))[y]
    ref = dense_spectra(X, y)
    for tile in (1, 3, K):
        got = _measure(X, y, K, tile=tile, chunks=7)
        assert abs(got["vci"]) < 1e-12
        for name in ("alpha_req", "rankme"):  # the spectrum of a collapsed set, still exact
            np.testing.assert_allclose(got[name], ref[name], rtol=1e-10)
    X2 = X + 0.3 * rng.normal(size=X.shape)  # and above 0 with within-class noise
    assert 0 < _measure(X2, y, K, tile=3, chunks=7)["vci"] <= 1


def _with_spectrum(rng, N, D, lam, offset=0.0):
    """N samples whose covariance around their mean has exactly the eigenvalues ``lam``."""
    Z = rng.normal(size=(N, D))
    Q = np.linalg.qr(Z - Z.mean(0))[0]  # orthonormal, centred columns
    R = np.linalg.qr(rng.normal(size=(D, D)))[0]
    return np.sqrt(N) * (Q * np.sqrt(lam)) @ R.T + offset


@pytest.mark.parametrize("alpha", [0.0, 0.7, 1.5, 3.0])
def test_alpha_req_recovers_a_power_law(alpha):
    rng = np.random.default_rng(4)
    N, D, K = 400, 16, 5
    X = _with_spectrum(rng, N, D, np.arange(1, D + 1) ** -alpha, offset=rng.normal(size=D))
    y = rng.integers(0, K, size=N)
    got = _measure(X, y, K, tile=2, chunks=64, names=["alpha_req"])["alpha_req"]
    np.testing.assert_allclose(got, alpha, rtol=1e-10, atol=1e-10)


def _rankme_of(s):
    p = s / s.sum() + 1e-7
    return np.exp(-(p * np.log(p)).sum())


def test_rankme_of_a_constructed_second_moment():
    """X = U diag(s) Vᵀ (raw, uncentred): RankMe of s exactly; isotropic s gives D."""
    rng = np.random.default_rng(5)
    N, D, K = 60, 10, 4
    U = np.linalg.qr(rng.normal(size=(N, D)))[0]
    V = np.linalg.qr(rng.normal(size=(D, D)))[0]
    y = rng.integers(0, K, size=N)
    for s in (np.full(D, 2.0), np.geomspace(5.0, 0.01, D)):
        X = (U * s) @ V.T
        got = _measure(X, y, K, tile=3, chunks=11, names=["rankme"])["rankme"]
        np.testing.assert_allclose(got, _rankme_of(s), rtol=1e-10)
    np.testing.assert_allclose(_rankme_of(np.full(D, 2.0)), D, rtol=1e-5)  # only the 1e-7


def test_rankme_counts_min_n_d_singular_values():
    """Fewer samples than dims: min(N, D) singular values, the rest not counted as 1e-7 each
    (and vci = 0: N - 1 < D samples always span their class means)."""
    rng = np.random.default_rng(6)
    X, y = rng.normal(size=(7, 12)) + 1.0, np.array([0, 0, 1, 1, 2, 2, 2])
    ref = dense_spectra(X, y)
    got = _measure(X, y, 3, tile=1, chunks=3)
    for name in SPECTRA:
        np.testing.assert_allclose(got[name], ref[name], rtol=1e-10, atol=1e-12)
    assert 1 < got["rankme"] <= 7 * (1 + 1e-5)


def test_spectra_of_the_samples_the_statistics_pool():
    """Rows labelled ``ignore_index`` and classes under class_stats' ``min_count`` are out of
    Σ_W, of N and of x̄ alike: the reference on the rows left."""
    rng = np.random.default_rng(7)
    K, D = 6, 8
    y = rng.integers(0, K, 300)
    X = rng.normal(size=(300, D)) + y[:, None] * rng.normal(size=D)
    y_ign = np.where(y == 2, -100, y)
    with pytest.warns(ncdask.EmptyClassWarning):
        st = ncdask.class_stats(split(X, y_ign, K, chunks=40), ignore_index=-100)
    cases = [(st, y != 2)]
    st = ncdask.class_stats(split(X, y, K, chunks=40), min_count=52)
    cases.append((st, ~np.isin(y, st.attrs["filtered_classes"])))
    for st, rows in cases:
        res = ncdask.measure(st, metrics=["spectra"], tile_size=4).compute()
        ref = dense_spectra(X[rows], y[rows])
        for name in SPECTRA:
            np.testing.assert_allclose(float(res[name]), ref[name], rtol=1e-10)
