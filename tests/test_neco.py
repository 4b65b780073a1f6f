"""NECO from class statistics against a dense scikit-learn StandardScaler + PCA pipeline."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import xarray as xr
from dense_metrics import class_data, dense_stats, raise_if_dask_computes, split

import ncdask
from ncdask.neco import neco_fit, neco_scores, ood_report, total_covariance

sklearn = pytest.importorskip("sklearn")
from sklearn.decomposition import PCA  # noqa: E402
from sklearn.metrics import roc_auc_score, roc_curve  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402


def _data(seed=0, K=6, D=10, N=600, scales=True):
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(K, D)) * 4
    X, y = class_data(rng, means, rng.integers(0, K, N))
    if scales:  # features on different scales: standardisation matters
        X = X * np.linspace(0.5, 3.0, D) + np.linspace(-2, 2, D)
    Xt, yt = class_data(rng, means, rng.integers(0, K, 120))
    Xo = rng.normal(size=(90, D)) * 3
    if scales:
        Xt = Xt * np.linspace(0.5, 3.0, D) + np.linspace(-2, 2, D)
        Xo = Xo * np.linspace(0.5, 3.0, D) + np.linspace(-2, 2, D)
    W = means + 0.2 * rng.normal(size=(K, D))
    b = rng.normal(size=K)
    return X, y, Xt, yt, Xo, W, b


def _dense_neco(X, Xs, d, *, standardize=True, max_logit=None):
    if standardize:
        ss = StandardScaler().fit(X)
        Z, Zs = ss.transform(X), ss.transform(Xs)
    else:
        mu = X.mean(0)
        Z, Zs = X - mu, Xs - mu
    pca = PCA(X.shape[1]).fit(Z)
    proj = pca.transform(Zs)[:, :d]
    s = np.linalg.norm(proj, axis=1) / np.linalg.norm(Zs, axis=1)
    return s if max_logit is None else s * max_logit


def test_total_covariance_is_the_sample_covariance(mem_url):
    X, y, *_ = _data(1)
    stats = dense_stats(X, y, 6, chunks=4)
    np.testing.assert_allclose(total_covariance(stats).values, np.cov(X.T, bias=True),
                               rtol=1e-10)
    s = ncdask.EmbeddingStore.from_arrays(mem_url(), {"train": (X, y)}, n_classes=6)
    st = ncdask.class_stats(s, "train", global_mean="weighted")
    np.testing.assert_allclose(total_covariance(st).values,
                               np.cov(X.astype(np.float32).T, bias=True), rtol=1e-9)


@pytest.mark.parametrize("standardize", [True, False])
@pytest.mark.parametrize("d", [1, 5, 10])
def test_scores_match_sklearn(standardize, d):
    X, y, Xt, yt, Xo, W, b = _data(2)
    stats = dense_stats(X, y, 6, chunks=2)
    for Xs in (Xt, Xo):
        got = neco_scores(stats, split(Xs, chunks=37), n_components=d, standardize=standardize)
        assert got.dims == ("sample",) and isinstance(got.data, da.Array)
        want = _dense_neco(X, Xs, d, standardize=standardize)
        np.testing.assert_allclose(got.values, want, rtol=1e-8)


def test_fit_matches_sklearn_pca():
    X, y, *_ = _data(3)
    stats = dense_stats(X, y, 6)
    fit = neco_fit(stats)  # d = K - 1
    assert fit.attrs["n_components"] == 5
    ss = StandardScaler().fit(X)
    pca = PCA(X.shape[1]).fit(ss.transform(X))
    np.testing.assert_allclose(fit["mean"].values, ss.mean_, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(fit["scale"].values, ss.scale_, rtol=1e-10)
    V, Vs = fit["components"].values, pca.components_[:5]
    np.testing.assert_allclose(V.T @ V, Vs.T @ Vs, atol=1e-8)  # same subspace, any sign
    n = len(X)
    np.testing.assert_allclose(
        fit["explained_variance"].values * n / (n - 1), pca.explained_variance_[:5], rtol=1e-8
    )
    with pytest.raises(ValueError, match="n_components must lie"):
        neco_fit(stats, 11)
    # a fit can be reused
    Xo = np.random.default_rng(0).normal(size=(20, 10))
    np.testing.assert_allclose(neco_scores(fit, split(Xo)).values,
                               neco_scores(stats, split(Xo)).values)


def test_max_logit_from_logits_or_classifier():
    X, y, Xt, yt, Xo, W, b = _data(4)
    stats = dense_stats(X, y, 6)
    logits = Xo @ W.T + b
    want = _dense_neco(X, Xo, 5, max_logit=logits.max(1))
    got1 = neco_scores(stats, split(Xo, chunks=40), logits=da.from_array(logits, chunks=(25, 3)))
    got2 = neco_scores(stats, split(Xo, chunks=40), logits=logits.max(1))
    got3 = neco_scores(stats, split(Xo, chunks=40), weights=W, bias=b, tile_size=4)
    for g in (got1, got2, got3):
        np.testing.assert_allclose(g.values, want, rtol=1e-8)
    assert "largest logit" in got3.attrs["formula"]
    with pytest.raises(ValueError, match="logits have shape"):
        neco_scores(stats, split(Xo), logits=logits[:5])
    with pytest.raises(ValueError, match="embeddings have shape"):
        neco_scores(stats, split(Xo[:, :4]))


def test_lazy_ignore_index_and_store_input(mem_url):
    X, y, Xt, yt, Xo, W, b = _data(5, scales=False)
    yt = yt.copy()
    yt[::5] = -100
    s = ncdask.EmbeddingStore.from_arrays(
        mem_url(), {"train": (X, y), "test": (Xt, yt)}, n_classes=6, ignore_index=-100,
        chunk_rows=32,
    )
    with raise_if_dask_computes():
        st = ncdask.class_stats(s, "train")
        sc = neco_scores(st, (s, "test"), n_components=3)
    v = sc.values
    assert np.isnan(v[::5]).all() and not np.isnan(np.delete(v, np.s_[::5])).any()
    want = _dense_neco(X.astype(np.float32).astype(np.float64),
                       Xt.astype(np.float32).astype(np.float64), 3)
    keep = yt != -100
    np.testing.assert_allclose(v[keep], want[keep], rtol=1e-7)


def test_neco_separates_collapsed_id_from_ood():
    X, y, Xt, yt, Xo, W, b = _data(6, D=16, scales=False)
    stats = dense_stats(X, y, 6)
    rep = ood_report(neco_scores(stats, split(Xt)), neco_scores(stats, split(Xo)))
    assert float(rep.auroc) > 0.95 and float(rep.fpr_at_tpr) < 0.2


@pytest.mark.parametrize("ties", [False, True])
def test_ood_report_matches_sklearn(ties):
    rng = np.random.default_rng(7)
    a, b = rng.normal(1.0, 1.0, size=203), rng.normal(size=157)
    if ties:
        a, b = np.round(a, 1), np.round(b, 1)
    rep = ood_report(xr.DataArray(da.from_array(a, chunks=50)), b)
    lab = np.r_[np.ones(a.size), np.zeros(b.size)]
    sc = np.r_[a, b]
    assert float(rep.auroc) == pytest.approx(roc_auc_score(lab, sc), rel=1e-12)
    fpr, tpr, thr = roc_curve(lab, sc)
    i = np.argmax(tpr >= 0.95)
    assert float(rep.fpr_at_tpr) == pytest.approx(fpr[i], abs=1e-12)
    assert float(rep.threshold) == thr[i]
    assert int(rep.n_id) == 203 and rep.attrs["positive"].startswith("in-distribution")
    # NaN (ignored samples) are dropped
    rep2 = ood_report(np.r_[a, np.nan], b)
    assert float(rep2.auroc) == float(rep.auroc)
    with pytest.raises(ValueError, match="need ID and OOD"):
        ood_report(a, [np.nan])
    with pytest.raises(ValueError, match="tpr must lie"):
        ood_report(a, b, tpr=0)


@pytest.mark.parametrize("alpha", [0.0, 0.01])
@pytest.mark.parametrize("tile", [1, 3, 7])
def test_nci_scores_match_dense(alpha, tile):
    """NCI: ((x − μ_G)·w_ĉ)/‖x − μ_G‖ + α‖x‖₁, ĉ the classifier's argmax (ties: first class)."""
    rng = np.random.default_rng(4)
    K, D = 7, 5
    means = 3 * rng.normal(size=(K, D))
    X, y = class_data(rng, means, rng.integers(0, K, 300))
    W, b = means + 0.3 * rng.normal(size=(K, D)), rng.normal(size=K)
    stats = dense_stats(X, y, K)
    Xs = rng.normal(size=(120, D)) * 2
    mG = stats.global_mean.values
    c = (Xs @ W.T + b).argmax(1)
    want = ((Xs - mG) * W[c]).sum(1) / np.linalg.norm(Xs - mG, axis=1) \
        + alpha * np.abs(Xs).sum(1)
    with raise_if_dask_computes():
        s = ncdask.nci_scores(stats, split(Xs, chunks=25), W, b, alpha=alpha, tile_size=tile)
    assert s.dims == ("sample",) and s.attrs["alpha"] == alpha
    np.testing.assert_allclose(s.values, want, rtol=1e-12)
    lab = np.zeros(120, dtype=np.int64)
    lab[::4] = -100
    masked = ncdask.nci_scores(stats, split(Xs, lab, chunks=25), W, b, alpha=alpha,
                               ignore_index=-100).values
    assert np.isnan(masked[::4]).all() and np.allclose(masked[1::4], want[1::4], rtol=1e-12)
    with pytest.raises(ValueError, match="expected"):
        ncdask.nci_scores(stats, split(Xs[:, :-1]), W)


def test_nci_separates_collapsed_id_from_ood():
    rng = np.random.default_rng(2)
    K, D = 6, 16
    means = 6 * np.linalg.qr(rng.normal(size=(D, K)))[0].T
    X, y = class_data(rng, means, rng.integers(0, K, 600), noise=0.3)
    stats = dense_stats(X, y, K)
    W = stats.means.values - stats.global_mean.values
    idc = ncdask.nci_scores(stats, split(X), W)
    ood = ncdask.nci_scores(stats, split(rng.normal(size=(200, D)) * 3), W)
    assert float(ood_report(idc, ood).auroc) > 0.99
