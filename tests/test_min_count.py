"""min_count: rare classes filtered exactly, in class_stats, measure, sweeps and the CLI."""

from __future__ import annotations

import numpy as np
import pytest
from dense_metrics import class_data, dense_metrics, dense_ood_class, dense_stats, split

import ncdask
from ncdask.metrics import DegenerateInputWarning, measure

# --------------------------------------------------------------------------- min_count


def _skewed(seed=8, K=7, D=10):
    rng = np.random.default_rng(seed)
    n = np.array([12, 2, 9, 1, 15, 3, 8])[:K]
    means = rng.normal(size=(K, D)) * 3
    X, y = class_data(rng, means, np.repeat(np.arange(K), n))
    W = means + 0.2 * rng.normal(size=(K, D))
    b = rng.normal(size=K)
    Xt, yt = class_data(rng, means, rng.integers(0, K, 40))
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
        dense_ood_class(X[kept], y[kept], Xo, K), rel=1e-9
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
    sigma_w = {"nc1_pinv", "nc1_svd", "nc1_quot", "erank_within", "vci", "alpha_req", "rankme"}
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
    with pytest.warns(DegenerateInputWarning, match="1 of the 7 classes .* one sample"):
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
