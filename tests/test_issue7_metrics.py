"""Issue 7: the peers' metrics, ignore_index, min_count, dist_exp, the log-domain Riesz kernel."""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import pytest
import xarray as xr
from dense_metrics import EPS, dense_metrics, dense_stats, split
from scipy.special import logsumexp

import ncdask
from ncdask import peers
from ncdask import reference_api as R
from ncdask.metrics import DegenerateInputWarning, RieszRangeWarning, measure


def _case(seed=0, K=6, D=9, n_per=6, spread=3.0):
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(K, D)) * spread
    y = np.repeat(np.arange(K), n_per)
    X = means[y] + rng.normal(size=(y.size, D))
    W = means + 0.3 * rng.normal(size=(K, D))
    b = rng.normal(size=K)
    yt = rng.integers(0, K, size=50)
    Xt = means[yt] + 1.5 * rng.normal(size=(50, D))
    Xo = rng.normal(size=(40, D)) + 0.5
    yo = rng.integers(0, 3, size=40)
    return X, y, W, b, Xt, yt, Xo, yo


# --------------------------------------------------------------------------- standalone functions


def test_peer_functions_match_dense_and_measure():
    X, y, W, b, *_ = _case(1)
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
    X, y, W, b, *_ = _case(2)
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


# --------------------------------------------------------------------------- nc1_ood_class


def _no_compute(*args, **kwargs):
    raise AssertionError("computed while building the graph")


def _dense_ood_class(X, y, Xo, K, weighted=False):
    Xa = np.concatenate([X, Xo])
    ya = np.concatenate([y, np.full(len(Xo), K)])
    return dense_metrics(Xa, ya, K + 1, weighted=weighted)["nc1_pinv"]


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("D", [4, 12])  # K+1 > D and K+1 <= D: both sides of the pinv
def test_nc1_ood_class_matches_dense(weighted, D):
    X, y, W, b, Xt, yt, Xo, yo = _case(3, K=6, D=D)
    K = 6
    want = _dense_ood_class(X, y, Xo, K, weighted)
    stats = dense_stats(X, y, K, weighted=weighted, chunks=4)
    ood = split(Xo, yo, chunks=7)
    res = measure(stats, ood=ood, metrics=["nc1_ood_class", "nc1_pinv"], tile_size=3)
    if not weighted:  # unaffected by the OOD set
        assert float(res.nc1_pinv) == pytest.approx(dense_metrics(X, y, K)["nc1_pinv"], rel=1e-9)
    assert float(res.nc1_ood_class) == pytest.approx(want, rel=1e-9)
    assert peers.ood_class_variability(stats, ood) == pytest.approx(want, rel=1e-9)
    assert res["nc1_ood_class"].attrs["reference"].endswith("App. D")


def test_nc1_ood_class_with_float32_store_and_ignore_index(mem_url):
    X, y, W, b, Xt, yt, Xo, yo = _case(4, K=5, D=6)
    yo = yo.copy()
    yo[:7] = -100
    s = ncdask.EmbeddingStore.from_arrays(
        mem_url(), {"train": (X, y), "ood": (Xo, yo)}, n_classes=5, ignore_index=-100,
        chunk_rows=16,
    )
    stats = ncdask.class_stats(s, "train")
    assert stats.attrs["ignore_index"] == -100
    res = measure(stats, ood=(s, "ood"), metrics=["nc1_ood_class", "nc5_ood_dev"])
    X32, Xo32 = X.astype(np.float32), Xo.astype(np.float32)
    want = _dense_ood_class(X32, y, Xo32[7:], 5)
    assert float(res.nc1_ood_class) == pytest.approx(want, rel=1e-9)
    ref = dense_metrics(X32, y, 5, X_ood=Xo32[7:], y_ood=yo[7:])
    assert float(res.nc5_ood_dev) == pytest.approx(ref["nc5_ood_dev"], rel=1e-9)


def test_nc1_ood_class_is_lazy_and_left_out_without_ood():
    X, y, W, b, Xt, yt, Xo, yo = _case(5)
    stats = dense_stats(X, y, 6)
    with dask.config.set(scheduler=_no_compute):
        res = measure(stats, ood=split(Xo), metrics=["nc1_ood_class"])
    assert isinstance(res["nc1_ood_class"].data, da.Array)
    res2 = measure(stats, metrics=["nc1_ood_class"])
    assert res2.attrs["left_out"] == {"nc1_ood_class": "no ood given"}


# --------------------------------------------------------------------------- ignore_index


def test_store_ignore_index_round_trip(mem_url):
    url = mem_url()
    s = ncdask.EmbeddingStore.create(url, n_classes=3, dim=2, ignore_index=-100, chunk_rows=4)
    assert s.ignore_index == -100
    X = np.arange(20, dtype=np.float32).reshape(10, 2)
    y = np.array([0, -100, 1, 2, -100, 0, 1, -100, 2, 2])
    assert s.append("train", X[:5], y[:5]) == 5
    with s.writer("train") as w:
        w.append(X[5:], y[5:])
    with pytest.raises(ValueError, match=r"label -1 is outside \[0, 3\).*ignore_index=-100"):
        s.append("train", X[:2], np.array([0, -1]))
    with pytest.raises(ValueError, match="label 3 is outside"):
        s.append("train", X[:2], np.array([3, -100]))
    back = ncdask.EmbeddingStore.open(url)
    assert back.ignore_index == -100
    ds = back["train"]
    assert ds.attrs["ignore_index"] == -100
    assert ds.attrs["class_counts"].tolist() == [2, 2, 3]
    assert ds.labels.values.tolist() == y.tolist()
    assert back._group["train"].attrs["ncdask_split"]["n_ignored"] == 3


def test_store_rejects_ignore_index_inside_classes_and_default_rejects_padding(mem_url):
    with pytest.raises(ValueError, match="ignore_index=1 is a class index"):
        ncdask.EmbeddingStore.create(mem_url(), n_classes=3, dim=2, ignore_index=1)
    with pytest.raises(TypeError, match="ignore_index must be an integer"):
        ncdask.EmbeddingStore.create(mem_url(), n_classes=3, dim=2, ignore_index=1.5)
    s = ncdask.EmbeddingStore.create(mem_url(), n_classes=3, dim=2)
    assert s.ignore_index is None
    with pytest.raises(ValueError, match="create the store with ignore_index="):
        s.append("train", np.zeros((2, 2)), np.array([0, -100]))


def test_class_stats_drop_ignored_samples(mem_url):
    rng = np.random.default_rng(6)
    K, D = 4, 5
    y = rng.integers(0, K, size=120)
    X = rng.normal(size=(120, D)) + y[:, None]
    y_pad = y.copy()
    y_pad[rng.random(120) < 0.3] = -100
    keep = y_pad != -100
    s = ncdask.EmbeddingStore.from_arrays(
        mem_url(), {"train": (X, y_pad)}, n_classes=K, ignore_index=-100, chunk_rows=17
    )
    want = dense_stats(X.astype(np.float32)[keep], y[keep], K)
    for st in (
        ncdask.class_stats(s, "train"),  # the store's default
        ncdask.class_stats(split(X.astype(np.float32), y_pad, chunks=13), n_classes=K,
                           ignore_index=-100),  # no store: counts from the labels
    ):
        assert st.attrs["ignore_index"] == -100
        assert int(st.n_samples) == keep.sum()
        np.testing.assert_array_equal(st.counts.values, want.counts.values)
        for v in ("means", "within_cov", "var_norms", "global_mean"):
            np.testing.assert_allclose(st[v].values, want[v].values, rtol=1e-10, atol=1e-13)
    bad = ncdask.class_stats(split(X, y_pad, chunks=13), n_classes=K)
    with pytest.raises(ValueError, match="label -100 is outside"):
        bad.compute()


def test_measure_skips_ignored_labels_in_test_and_ood():
    X, y, W, b, Xt, yt, Xo, yo = _case(7)
    K = 6
    ii = 250  # a positive ignore label: only ignore_index tells it apart
    yt2, yo2 = yt.copy(), yo.copy()
    yt2[:9] = ii
    yo2[:5] = ii
    stats = dense_stats(X, y, K)
    stats.attrs["ignore_index"] = ii
    res = measure(stats, weights=W, bias=b, test=split(Xt, yt2), ood=split(Xo, yo2),
                  metrics=["nc4_agree", "agree_per_class", "nc5_ood_dev", "nc1_ood_class"])
    assert res.attrs["ignore_index"] == ii
    ref = dense_metrics(X, y, K, W=W, b=b, X_test=Xt[9:], y_test=yt[9:], X_ood=Xo[5:],
                        y_ood=yo[5:])
    res = res.compute()
    assert float(res.nc4_agree) == pytest.approx(ref["nc4_agree"], rel=1e-12)
    np.testing.assert_allclose(res.agree_per_class.values, ref["agree_per_class"])
    assert float(res.nc5_ood_dev) == pytest.approx(ref["nc5_ood_dev"], rel=1e-12)
    want = _dense_ood_class(X, y, Xo[5:], K)
    assert float(res.nc1_ood_class) == pytest.approx(want, rel=1e-9)
    with pytest.raises(ValueError, match="is a class index"):
        measure(stats, ignore_index=2)


# --------------------------------------------------------------------------- min_count


def _skewed(seed=8, K=7, D=10):
    rng = np.random.default_rng(seed)
    n = np.array([12, 2, 9, 1, 15, 3, 8])[:K]
    means = rng.normal(size=(K, D)) * 3
    y = np.repeat(np.arange(K), n)
    X = means[y] + rng.normal(size=(y.size, D))
    W = means + 0.2 * rng.normal(size=(K, D))
    b = rng.normal(size=K)
    yt = rng.integers(0, K, size=40)
    Xt = means[yt] + rng.normal(size=(40, D))
    Xo = rng.normal(size=(30, D))
    return X, y, W, b, Xt, yt, Xo, n


def test_class_stats_min_count_filters_exactly(mem_url):
    X, y, W, b, Xt, yt, Xo, n = _skewed()
    K = len(n)
    kept = np.isin(y, np.nonzero(n >= 5)[0])
    st = ncdask.class_stats(split(X, y, chunks=11), n_classes=K, min_count=5)
    assert st.attrs["filtered_classes"] == [1, 3, 5] and st.attrs["min_count"] == 5
    assert st.counts.values.tolist() == n.tolist()  # the real counts stay
    assert int(st.n_samples) == kept.sum()
    want = dense_stats(X[kept], y[kept], K)
    full = dense_stats(X, y, K)
    np.testing.assert_allclose(st.within_cov.values, want.within_cov.values, rtol=1e-10)
    np.testing.assert_allclose(st.global_mean.values, want.global_mean.values, rtol=1e-10)
    np.testing.assert_allclose(st.means.values, full.means.values, rtol=1e-10)  # all classes
    np.testing.assert_allclose(st.var_norms.values, full.var_norms.values, rtol=1e-10)
    with pytest.raises(ValueError, match="cannot merge statistics computed with min_count"):
        ncdask.merge_stats(st, st)
    url = mem_url("stats")
    ncdask.save_stats(st, url)
    assert ncdask.load_stats(url).attrs["filtered_classes"] == [1, 3, 5]
    # measure leaves them out: every metric is that of the data without them
    res = measure(st, weights=W, bias=b, test=split(Xt, yt), ood=split(Xo), tile_size=2)
    assert res.attrs["filtered_classes"] == [1, 3, 5]
    assert res.attrs["n_classes_measured"] == 4
    assert res["class"].values.tolist() == [0, 2, 4, 6]
    ref = dense_metrics(X[kept], y[kept], K, W=W, b=b, X_test=Xt, y_test=yt, X_ood=Xo)
    res = res.compute()
    for key, val in ref.items():
        np.testing.assert_allclose(res[key].values, val, rtol=1e-8, atol=1e-7, err_msg=key)
    assert float(res.nc1_ood_class) == pytest.approx(
        _dense_ood_class(X[kept], y[kept], Xo, K), rel=1e-9
    )


def test_measure_min_count_on_unfiltered_stats():
    X, y, W, b, Xt, yt, Xo, n = _skewed(9)
    K = len(n)
    kept = np.isin(y, np.nonzero(n >= 3)[0])
    stats = dense_stats(X, y, K, chunks=3)
    res = measure(stats, weights=W, bias=b, min_count=3, tile_size=3)
    assert res.attrs["filtered_classes"] == [1, 3] and res.attrs["min_count"] == 3
    assert res.attrs["empty_classes"] == []
    ref = dense_metrics(X[kept], y[kept], K, W=W, b=b)
    res = res.compute()
    # Σ_W is the statistics' own (it pools the filtered classes' samples)
    sigma_w = {"nc1_pinv", "nc1_svd", "nc1_quot"}
    for key, val in ref.items():
        if key not in sigma_w:
            np.testing.assert_allclose(res[key].values, val, rtol=1e-8, atol=1e-7, err_msg=key)
    Sw = stats.within_cov.values
    M = np.stack([X[y == k].mean(0) for k in np.nonzero(n >= 3)[0]])
    assert float(res.nc1_quot) == pytest.approx(
        np.trace(Sw) / np.trace((M - M.mean(0)).T @ (M - M.mean(0)) / len(M)), rel=1e-10
    )
    with pytest.raises(ValueError, match="min_count must be >= 0"):
        measure(stats, min_count=-1)
    assert measure(stats, min_count=0, metrics="nc1_cdnv").attrs["filtered_classes"] == []
    with pytest.raises(TypeError, match="min_count must be an integer"):
        measure(stats, min_count=2.5)
    # everything filtered: a degenerate input, not an error
    with pytest.warns(DegenerateInputWarning):
        res = measure(stats, min_count=100)
    assert res.attrs["filtered_classes"] == list(range(K))


def test_min_count_sweep_attrs():
    X, y, W, b, Xt, yt, Xo, n = _skewed(10)
    st = dense_stats(X, y, len(n))
    res = measure([st, st], min_count=3, metrics=["nc1_cdnv"])
    assert res.attrs["filtered_classes"] == [1, 3]


# --------------------------------------------------------------------------- dist_exp


@pytest.mark.parametrize("p", [1.0, 2.0, 0.5])
def test_dist_exp_everywhere(p):
    X, y, *_ = _case(11, K=7, D=5)
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


# --------------------------------------------------------------------------- CLI


def test_cli_analyze_min_count_and_ignore_index(tmp_path, capsys):
    cli = pytest.importorskip("ncdask.cli")
    import json

    if "analyze" not in cli.build_parser().format_help():
        pytest.skip("the CLI has no analyze command yet")
    X, y, W, b, Xt, yt, Xo, n = _skewed(14)
    K = len(n)
    y_pad = y.copy()
    y_pad[::7] = -100
    url = str(tmp_path / "s.zarr")
    s = ncdask.EmbeddingStore.from_arrays(url, {"train": (X, y_pad), "test": (Xt, yt)},
                                          W=W, b=b, ignore_index=-100)
    keep = y_pad != -100
    counts = np.bincount(y[keep], minlength=K)
    m = 4
    out = tmp_path / "m.json"
    rc = cli.main(["analyze", url, "--json", str(out), "--min-count", str(m),
                   "--ignore-index", "-100", "--metrics", "nc1_cdnv", "nc3_papyan",
                   "nc4_agree", "-q"])
    assert rc == 0, capsys.readouterr().err
    got = json.loads(out.read_text())
    st = ncdask.class_stats(s, "train")
    want = measure(st, weights=W, bias=b, test=(s, "test"), min_count=m,
                   metrics=["nc1_cdnv", "nc3_papyan", "nc4_agree"]).compute()
    small = np.nonzero((counts > 0) & (counts < m))[0].tolist()
    assert small and want.attrs["filtered_classes"] == small
    for k in ("nc1_cdnv", "nc3_papyan", "nc4_agree"):
        assert got[k] == pytest.approx(float(want[k]), rel=1e-12), k
    # the dense reference on the data without ignored samples and small classes
    kk = keep & np.isin(y, np.nonzero(counts >= m)[0])
    ref = dense_metrics(X.astype(np.float32)[kk], y[kk], K, W=W, b=b,
                        X_test=Xt.astype(np.float32), y_test=yt)
    assert got["nc1_cdnv"] == pytest.approx(ref["nc1_cdnv"], rel=1e-9)
    assert got["nc3_papyan"] == pytest.approx(ref["nc3_papyan"], rel=1e-9)
    assert got["nc4_agree"] == pytest.approx(ref["nc4_agree"], rel=1e-12)
