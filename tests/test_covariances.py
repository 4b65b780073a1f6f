"""Per-class covariances, per-class NC1 and spectra against dense NumPy."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import xarray as xr
from dense_metrics import dense_metrics, dense_stats, raise_if_dask_computes, split
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import SEEDS

import ncdask
from ncdask.covariances import class_covariances, class_nc1, class_spectra
from ncdask.metrics import measure


def _dense_covs(X, y, classes):
    X = np.asarray(X, dtype=np.float64)
    out = []
    for k in classes:
        Xk = X[y == k]
        if len(Xk):
            C = Xk - Xk.mean(0)
            out.append(C.T @ C / len(Xk))
        else:
            out.append(np.full((X.shape[1], X.shape[1]), np.nan))
    return np.stack(out)


def _data(seed=0, K=7, D=5, N=150, empty=(3,)):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, K, size=N)
    for e in empty:
        y[y == e] = (e + 1) % K
    A = rng.normal(size=(K, D, D)) / np.sqrt(D)
    X = rng.normal(size=(K, D))[y] * 4 + np.einsum("nd,nde->ne", rng.normal(size=(N, D)), A[y])
    return X, y


@settings(max_examples=20, deadline=None)
@given(
    seed=SEEDS,
    rows=st.integers(1, 60),
    class_chunk=st.integers(1, 8),
    subset=st.booleans(),
)
def test_matches_dense_any_chunking(seed, rows, class_chunk, subset):
    X, y = _data(seed)
    K = 7
    rng = np.random.default_rng(seed)
    classes = rng.permutation(K)[:4] if subset else np.arange(K)
    ds = split(X, y, chunks=rows)
    ds.attrs["n_classes"] = K
    covs = class_covariances(ds, classes if subset else None, class_chunk=class_chunk)
    assert covs.dims == ("class", "feature", "feature_")
    assert covs["class"].values.tolist() == list(classes)
    assert covs.data.chunks[0][0] == min(class_chunk, len(classes))
    got = covs.values
    np.testing.assert_allclose(got, _dense_covs(X, y, classes), rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(
        covs["count"].values, np.bincount(y, minlength=K)[classes]
    )


def test_consistent_with_class_stats_and_lazy(mem_url):
    X, y = _data(1, K=6, D=4, N=200, empty=(2,))
    s = ncdask.EmbeddingStore.from_arrays(mem_url(), {"train": (X, y)}, n_classes=6,
                                          chunk_rows=23)
    with raise_if_dask_computes():
        covs = class_covariances(s, split="train", class_chunk=4)
        with pytest.warns(ncdask.EmptyClassWarning):
            stats = ncdask.class_stats(s, "train")
    assert isinstance(covs.data, da.Array)
    c = covs.values
    assert np.isnan(c[2]).all()  # the empty class
    n = stats.counts.values
    ok = n > 0
    np.testing.assert_allclose(
        np.einsum("k,kde->de", n[ok] / n.sum(), c[ok]), stats.within_cov.values, rtol=1e-10
    )
    np.testing.assert_allclose(
        np.trace(c[ok], axis1=1, axis2=2), stats.var_norms.values[ok], rtol=1e-10
    )
    assert covs.attrs["split"] == "train" and covs.attrs["n_classes"] == 6


def test_one_pass_graph_and_zarr_round_trip(tmp_path):
    X, y = _data(2, K=9, D=3, N=120, empty=())
    ds = split(X, y, chunks=30)  # 4 row blocks
    ds.attrs["n_classes"] = 9
    covs = class_covariances(ds, class_chunk=4)  # 3 class chunks
    graph = dict(covs.__dask_graph__())
    folds = [k for k in graph if isinstance(k, tuple) and k[0].startswith("ncdask-cov-")
             and k[0].endswith("-fold")]
    assert len(folds) == 4 * 3  # one fold task per (row block, class chunk)
    loads = [k for k in graph if isinstance(k, tuple) and k[0].startswith("array-")]
    assert len(loads) <= 4 + 4  # each row block of X and of y once
    # accumulators beyond max_memory: passes, each loading the embeddings afresh
    multi = class_covariances(ds, class_chunk=4, max_memory=2 * 4 * 3 * 3 * 8)  # 2 chunks/pass
    g2 = dict(multi.__dask_graph__())
    assert len([k for k in g2 if isinstance(k, tuple) and "array-" in k[0]]) > len(loads)
    np.testing.assert_allclose(multi.values, _dense_covs(X, y, range(9)), rtol=1e-12)
    url = str(tmp_path / "covs.zarr")
    covs.to_dataset(name="cov").to_zarr(url, mode="w", consolidated=False)
    back = xr.open_zarr(url, consolidated=False)["cov"]
    assert back.encoding["chunks"] == (4, 3, 3)
    np.testing.assert_allclose(back.values, _dense_covs(X, y, range(9)), rtol=1e-12)


def test_collapsed_float32_is_accurate():
    rng = np.random.default_rng(3)
    K, D, n = 4, 6, 400
    means = rng.normal(size=(K, D)) * 100.0
    y = np.repeat(np.arange(K), n)
    noise = rng.normal(size=(K * n, D)) * 1e-3
    X = (means[y] + noise).astype(np.float32)
    ds = split(X, y, chunks=77)
    ds.attrs["n_classes"] = K
    got = class_covariances(ds, class_chunk=3).values
    want = _dense_covs(X.astype(np.float64), y, range(K))
    np.testing.assert_allclose(got, want, rtol=1e-7, atol=1e-14)


def test_ignore_index_and_bad_classes(mem_url):
    X, y = _data(4, K=5, D=3, N=90, empty=())
    y_pad = y.copy()
    y_pad[::4] = -100
    s = ncdask.EmbeddingStore.from_arrays(mem_url(), {"train": (X, y_pad)}, n_classes=5,
                                          ignore_index=-100, chunk_rows=20)
    covs = class_covariances((s, "train"), [4, 0])
    assert covs.attrs["ignore_index"] == -100
    keep = y_pad != -100
    np.testing.assert_allclose(
        covs.values, _dense_covs(X.astype(np.float32)[keep], y[keep], [4, 0]), rtol=1e-9
    )
    with pytest.raises(ValueError, match="class 7 is outside"):
        class_covariances(s, [7], split="train")
    with pytest.raises(ValueError, match="must not repeat"):
        class_covariances(s, [1, 1], split="train")
    ds = split(X, y_pad, chunks=20)
    with pytest.raises(ValueError, match="n_classes"):
        class_covariances(ds)
    with pytest.raises(ValueError, match="label -100 is outside"):
        class_covariances(ds, n_classes=5).compute()


def test_class_nc1_matches_dense_and_averages_to_nc1_pinv():
    for K, D in ((6, 9), (9, 4)):  # K <= D (SVD side) and D < K (eigh side)
        X, y = _data(5, K=K, D=D, N=300, empty=(2,))
        ds = split(X, y, chunks=50)
        ds.attrs["n_classes"] = K
        stats = dense_stats(X, y, K, chunks=4)
        covs = class_covariances(ds, class_chunk=3)
        nc1 = class_nc1(covs, stats)
        present = np.unique(y)
        assert nc1["class"].values.tolist() == present.tolist()
        M = np.stack([X[y == k].mean(0) for k in present])
        Mc = M - M.mean(0)
        Sb = Mc.T @ Mc / len(present)
        P = np.linalg.pinv(Sb, rcond=D * np.finfo(float).eps)
        C = _dense_covs(X, y, present)
        want = np.einsum("kde,ed->k", C, P) / len(present)
        np.testing.assert_allclose(nc1.values, want, rtol=1e-8)
        n = np.bincount(y)[present]
        pinv = float(measure(stats, metrics="nc1_pinv").nc1_pinv)
        assert float((n / n.sum() * nc1.values).sum()) == pytest.approx(pinv, rel=1e-8)


def test_class_nc1_min_count_and_errors():
    X, y = _data(6, K=5, D=6, N=60, empty=())
    y[:55] = np.arange(55) % 4  # class 4 has few samples
    ds = split(X, y, chunks=25)
    ds.attrs["n_classes"] = 5
    stats = dense_stats(X, y, 5)
    covs = class_covariances(ds)
    n4 = int((y == 4).sum())
    nc1 = class_nc1(covs, stats, min_count=n4 + 1)
    assert nc1["class"].values.tolist() == [0, 1, 2, 3]
    keep = y != 4
    ref = class_nc1(class_covariances(ds, [0, 1, 2, 3]), dense_stats(X[keep], y[keep], 5))
    np.testing.assert_allclose(nc1.values, ref.values, rtol=1e-9)
    with pytest.raises(ValueError, match="at least 2"):
        class_nc1(covs, stats, min_count=10**6)
    with pytest.raises(TypeError, match="covariances must be"):
        class_nc1(stats.within_cov, stats)


def test_class_spectra():
    X, y = _data(7, K=5, D=4, N=100, empty=(1,))
    ds = split(X, y, chunks=33)
    ds.attrs["n_classes"] = 5
    covs = class_covariances(ds, class_chunk=2)
    sp = class_spectra(covs)
    assert isinstance(sp.eigenvalues.data, da.Array)
    C = _dense_covs(X, y, range(5))
    eig = sp.eigenvalues.values
    assert np.isnan(eig[1]).all() and np.isnan(float(sp.effective_rank[1]))
    for k in (0, 2, 3, 4):
        lam = np.linalg.eigvalsh(C[k])[::-1]
        np.testing.assert_allclose(eig[k], lam, rtol=1e-9, atol=1e-12)
        p = np.clip(lam, 0, None) / np.clip(lam, 0, None).sum()
        p = p[p > 0]
        assert float(sp.effective_rank[k]) == pytest.approx(np.exp(-(p * np.log(p)).sum()))
    assert sp["class"].values.tolist() == list(range(5))


def test_dense_reference_helpers_agree():
    # the dense NC1 used above is the same as the SPEC's tr(Σ_B⁺ Σ_W)/K
    X, y = _data(8, K=5, D=7, N=120, empty=())
    ref = dense_metrics(X, y, 5)
    C = _dense_covs(X, y, range(5))
    n = np.bincount(y)
    Sw = np.einsum("k,kde->de", n / n.sum(), C)
    M = np.stack([X[y == k].mean(0) for k in range(5)])
    Sb = (M - M.mean(0)).T @ (M - M.mean(0)) / 5
    P = np.linalg.pinv(Sb, rcond=7 * np.finfo(float).eps)
    assert np.trace(Sw @ P) / 5 == pytest.approx(ref["nc1_pinv"], rel=1e-10)
