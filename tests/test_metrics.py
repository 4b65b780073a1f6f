"""ncdask.metrics.measure: golden parity, dense reference, degenerate input, laziness, sweeps."""

from __future__ import annotations

import warnings

import dask
import dask.array as da
import numpy as np
import pytest
import xarray as xr
from dense_metrics import CASES, dense_metrics, dense_stats, golden, small_case, split
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from strategies import SEEDS

from ncdask.metrics import GROUPS, METRICS, DegenerateInputWarning, RieszRangeWarning, measure

NC2G = {k for k in METRICS if k.startswith("nc2g_")}
PER_CLASS_GOLDEN = ("mean_norms", "similarities", "distance_norms", "agree_per_class")


def _golden_inputs(name: str, chunks: int = 3):
    d, g = golden(name)
    K = d["W"].shape[0]
    stats = dense_stats(d["X"], d["Y"], K, chunks=chunks)
    kw = dict(
        weights=d["W"], test=split(d["X_test"], d["Y_test"]), ood=split(d["X_ood"], d["Y_ood"])
    )
    return d, g, K, stats, kw


def _measure_maybe_warns(stats, K, D, **kw):
    if K - 1 >= D:
        with pytest.warns(DegenerateInputWarning, match="nc1_svd"):
            return measure(stats, **kw)
    return measure(stats, **kw)


@pytest.mark.parametrize("name", CASES)
def test_golden_parity_every_tile_size(name):
    d, g, K, stats, kw = _golden_inputs(name)
    D = d["X"].shape[1]
    for T in sorted({1, 3, K // 2 + 1, K}):  # one class, uneven, two tiles, all of K
        res = _measure_maybe_warns(stats, K, D, tile_size=T, **kw).compute()
        for key, want in g["metrics"].items():
            rtol = 1e-5 if key in NC2G else 1e-6
            got = float(res[key])
            assert got == pytest.approx(want, rel=rtol), (name, T, key, got, want)
        for key in PER_CLASS_GOLDEN:
            np.testing.assert_allclose(
                res[key].values,
                g["stats"][key],
                rtol=1e-9,
                atol=1e-12,
                err_msg=f"{name} T={T} {key}",
            )
        if K - 1 >= D:
            assert "nc1_svd" not in res and "nc1_svd" in res.attrs["left_out"]


def test_golden_parity_through_class_stats():
    """The whole pipeline: the class statistics of the store side feed measure."""
    stats_mod = pytest.importorskip("ncdask.stats")
    if not hasattr(stats_mod, "class_stats"):
        pytest.skip("ncdask.stats.class_stats not available")
    d, g = golden("collapsed")
    K = d["W"].shape[0]
    ds = split(d["X"], d["Y"], chunks=512)
    ds.attrs["n_classes"] = K
    stats = stats_mod.class_stats(ds, n_classes=K)
    res = measure(
        stats,
        weights=d["W"],
        test=split(d["X_test"], d["Y_test"]),
        ood=split(d["X_ood"], d["Y_ood"]),
        tile_size=2,
    ).compute()
    for key, want in g["metrics"].items():
        assert float(res[key]) == pytest.approx(want, rel=1e-5 if key in NC2G else 1e-6), key


# --------------------------------------------------------------------------- dense reference


def _random_case(seed, K, D, n_per, empty):
    X, y, W, b, Xt, yt, Xo, yo = small_case(seed, K, D, n_per, n_test=60, empty=empty)
    yt[:3] = -100  # padding is ignored
    return X, y, W, b, Xt, yt, Xo, yo


def _expected_degenerate(K_present, D):
    out = set()
    if K_present == 2:
        out.add("nc2_equiangle")
    if not K_present - 1 < D:
        out.add("nc1_svd")
    return out


#: The closed-form ETF errors √(2 − 2c) resolve about √ε ≈ 1.5e-8 absolute.
ETF = ("nc2_etf_err", "nc3_dual_err", "nc2w_etf_err")


def _check_against_dense(res, ref, *, rtol, atol):
    for key, want in ref.items():
        assert key in res, key
        got = res[key].values
        np.testing.assert_allclose(
            got, want, rtol=rtol, atol=max(atol, 1e-7) if key in ETF else atol, err_msg=key
        )


@pytest.mark.slow
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=SEEDS,
    K=st.integers(2, 8),
    D=st.integers(2, 8),
    n_per=st.integers(2, 5),
    empty=st.booleans(),
    chunk=st.integers(1, 8),
    tile=st.integers(1, 8),
    x32=st.booleans(),
)
def test_matches_dense_reference(seed, K, D, n_per, empty, chunk, tile, x32):
    empty = empty and K >= 3
    X, y, W, b, Xt, yt, Xo, yo = _random_case(seed, K, D, n_per, empty)
    if x32:  # embeddings stored as float32; statistics accumulated in float64
        X, Xt, Xo = X.astype(np.float32), Xt.astype(np.float32), Xo.astype(np.float32)
    ref = dense_metrics(X, y, K, W=W, b=b, X_test=Xt, y_test=yt, X_ood=Xo, y_ood=yo)
    M = np.stack([X[y == k].mean(0) for k in np.unique(y)]).astype(np.float64)
    sv = np.linalg.svd(M - M.mean(0), compute_uv=False)
    assume(sv[min(M.shape[0] - 1, D) - 1] > 1e-3 * sv[0])  # well-conditioned Σ_B
    stats = dense_stats(X, y, K, chunks=min(chunk, K))
    kw = dict(
        weights=W,
        bias=b,
        test=split(Xt, yt, chunks=17),
        ood=split(Xo, yo, chunks=13),
        tile_size=min(tile, K),
    )
    deg = _expected_degenerate(K - int(empty), D)
    if deg:
        with pytest.warns(DegenerateInputWarning):
            res = measure(stats, **kw)
    else:
        res = measure(stats, **kw)
    assert set(res.attrs["left_out"]) == deg
    assert res.attrs["empty_classes"] == ([K // 2] if empty else [])
    res = res.compute()
    _check_against_dense(res, ref, rtol=1e-8, atol=1e-11)
    if empty:
        assert K // 2 not in res["class"].values


@pytest.mark.slow
@settings(max_examples=10, deadline=None)
@given(seed=SEEDS, K=st.integers(3, 7), D=st.integers(2, 8))
def test_float32_statistics(seed, K, D):
    """Statistics kept in float32: the pinv cutoff uses float32's epsilon."""
    X, y, W, b, Xt, yt, Xo, yo = _random_case(seed, K, D, 4, False)
    stats = dense_stats(X, y, K, chunks=2)
    M = np.stack([X[y == k].mean(0) for k in range(K)])
    s = np.linalg.svd(M - M.mean(0), compute_uv=False)
    r = min(K - 1, D)
    assume(s[r - 1] > 1e-2 * s[0])
    s32 = stats.copy()
    for v in ("means", "global_mean", "within_cov", "var_norms"):
        s32[v] = stats[v].astype(np.float32)
    ref = dense_metrics(X, y, K, W=W, b=b)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DegenerateInputWarning)
        res = measure(s32, weights=W.astype(np.float32), bias=b, tile_size=2).compute()
    _check_against_dense(res, ref, rtol=2e-4, atol=1e-5)


# --------------------------------------------------------------------------- degenerate input


def _stats_from_means(means, var=0.1, n=5):
    """Samples around the given means (class means equal to them up to rounding)."""
    K, D = means.shape
    y = np.repeat(np.arange(K), n)
    rng = np.random.default_rng(0)
    noise = rng.normal(size=(K * n, D))
    for k in range(K):
        noise[y == k] -= noise[y == k].mean(0)
    X = means[y] + np.sqrt(var) * noise
    return dense_stats(X, y, K), X, y


def _stats_exact(means, var_norms):
    """The class_stats contract with exactly the given means (bit for bit)."""
    K, D = means.shape
    ds = dense_stats(np.zeros((1, D)), np.zeros(1, int), K)  # layout only
    ds["counts"] = ("class", np.full(K, 3))
    ds["means"] = (("class", "feature"), da.from_array(means, chunks=(2, -1)))
    ds["global_mean"] = ("feature", means.mean(0))
    ds["within_cov"] = (("feature", "feature_"), 0.01 * np.eye(D))
    ds["var_norms"] = ("class", np.asarray(var_norms, dtype=float))
    ds.attrs["empty_classes"] = []
    return ds


def test_single_class_keeps_what_is_defined():
    stats, _, _ = _stats_from_means(np.ones((1, 4)))
    W = np.ones((1, 4))
    Xt = np.ones((6, 4))
    with pytest.warns(DegenerateInputWarning, match="at least 2"):
        res = measure(
            stats, weights=W, test=split(Xt, np.zeros(6, int)), ood=split(Xt + 1.0)
        ).compute()
    assert float(res.nc4_agree) == 1.0
    assert float(res.nc5_ood_dev) == pytest.approx(1.0)
    assert "nc3_bias" in res and "mean_norms" in res
    for k in ("nc1_pinv", "nc1_cdnv", "nc2_etf_err", "nc2g_dist_mean", "nc3_dual_err"):
        assert k not in res and k in res.attrs["left_out"]


def test_two_classes():
    means = np.array([[1.0, 0.0, 0.0], [-1.0, 0.5, 0.0]])
    stats, X, y = _stats_from_means(means)
    with pytest.warns(DegenerateInputWarning, match="nc2_equiangle"):
        res = measure(stats, tile_size=1).compute()
    assert float(res.nc2g_dist_mean) == pytest.approx(2.0)
    assert float(res.nc2g_dist_var) == 0.0
    assert float(res.nc2_etf_err) == pytest.approx(0.0, abs=1e-7)
    assert float(res.nc2_max_angle) == pytest.approx(0.0, abs=1e-12)
    ref = dense_metrics(X, y, 2)
    assert float(res.nc1_cdnv) == pytest.approx(ref["nc1_cdnv"], rel=1e-12)
    assert float(res.nc1_svd) == pytest.approx(ref["nc1_svd"], rel=1e-10)


def test_identical_means_are_defined():
    rng = np.random.default_rng(1)
    means = rng.normal(size=(5, 6))
    means[3] = means[1]
    stats = _stats_exact(means, np.full(5, 0.2))
    res = measure(stats, tile_size=2).compute()
    assert float(res.nc1_cdnv) == np.inf
    assert float(res.nc2g_log_mean) == np.inf and np.isnan(float(res.nc2g_log_var))
    assert float(res.nc2g_riesz_mean) == np.inf and np.isnan(float(res.nc2g_riesz_var))
    # the distance kernel stays finite: the coincident pair contributes an exact 0
    u = means - means.mean(0)
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    iu = np.triu_indices(5, 1)
    du = np.linalg.norm(u[:, None] - u[None], axis=-1)[iu]
    assert float(res.nc2g_dist_mean) == pytest.approx(du.mean(), rel=1e-12)
    assert float(res.nc2g_dist_var) == pytest.approx(du.var(), rel=1e-10)
    assert np.isfinite(float(res.nc1_pinv)) and np.isfinite(float(res.nc2_etf_err))
    assert float(res.nc1_svd) == np.inf  # Σ_B has rank K-2 < K-1


def test_svd_left_out_when_dim_small():
    rng = np.random.default_rng(2)
    stats, _, _ = _stats_from_means(rng.normal(size=(6, 3)))
    with pytest.warns(DegenerateInputWarning, match="K-1 < D"):
        res = measure(stats, metrics=["nc1_svd", "nc1_pinv"])
    assert list(res.data_vars) == ["nc1_pinv"]


def test_empty_classes_left_out_and_listed():
    rng = np.random.default_rng(3)
    K, D = 7, 5
    X, y, W, b, Xt, yt, Xo, yo = _random_case(4, K, D, 4, False)
    keep = (y != 2) & (y != 5)
    X, y = X[keep], y[keep]
    stats = dense_stats(X, y, K, chunks=3)
    res = measure(stats, weights=W, bias=b, test=split(Xt, yt), ood=split(Xo, yo), tile_size=2)
    assert res.attrs["empty_classes"] == [2, 5]
    assert res.attrs["n_classes"] == 7 and res.attrs["n_classes_measured"] == 5
    assert res["class"].values.tolist() == [0, 1, 3, 4, 6]
    ref = dense_metrics(X, y, K, W=W, b=b, X_test=Xt, y_test=yt, X_ood=Xo, y_ood=yo)
    _check_against_dense(res.compute(), ref, rtol=1e-8, atol=1e-11)
    assert rng is not None


def test_all_classes_empty():
    stats = dense_stats(np.zeros((0, 3)), np.zeros(0, int), 3)
    with pytest.warns(DegenerateInputWarning):
        res = measure(stats)
    assert not res.data_vars and res.attrs["empty_classes"] == [0, 1, 2]


# --------------------------------------------------------------------------- the graph


def test_measure_is_lazy_and_pairwise_is_one_fused_graph():
    d, g, K, stats, kw = _golden_inputs("wide")

    def no_compute(*args, **kwargs):
        raise AssertionError("measure computed something while building its graph")

    with dask.config.set(scheduler=no_compute):
        res = measure(stats, tile_size=3, **kw)
    for name, var in res.data_vars.items():
        assert isinstance(var.data, da.Array), name
    pair = [
        "nc1_cdnv",
        "nc2g_dist_var",
        "nc2g_log_var",
        "nc2g_riesz_var",
        "nc2_equiangle",
        "nc2_max_angle",
        "nc2w_max_angle",
    ]
    graph = res[pair].__dask_graph__()
    tiles = [k for k in graph.layers if k.startswith("ncdask-pair-tiles")]
    assert len(tiles) == 1, tiles
    out = res[pair].compute()
    for k in pair[:4]:
        assert np.isfinite(float(out[k]))


def test_task_count_grows_with_tiles_not_classes():
    def n_tasks(K, T):
        rng = np.random.default_rng(0)
        M = rng.normal(size=(K, 4))
        stats, _, _ = _stats_from_means(M, n=2)
        res = measure(stats, metrics=["nc1_cdnv", "nc2g"], tile_size=T)
        return len(dict(res.__dask_graph__()))

    a, b = n_tasks(40, 10), n_tasks(400, 100)
    assert a == b  # same number of tiles, ten times the classes
    assert n_tasks(40, 5) > a


def test_default_tile_size_from_budget():
    from ncdask.graph.pairwise import TEMPS_PER_PAIR, default_tile_size

    T = default_tile_size(100_000, 128)
    assert 64 <= T <= 100_000 and T % 64 == 0
    assert TEMPS_PER_PAIR * 8 * T * T <= 128 * 2**20
    assert default_tile_size(10, 128) == 10
    assert default_tile_size(100_000, 128, budget=2**20) < T


def test_selection_and_missing_inputs():
    d, g, K, stats, kw = _golden_inputs("collapsed")
    res = measure(stats, metrics=["nc2g_riesz", "nc1_quot", "nc4_agree", "nc5_ood_dev"])
    assert set(res.data_vars) == {"nc1_quot", *GROUPS["nc2g_riesz"]}
    assert res.attrs["left_out"] == {
        "nc4_agree": "no weights / test given",
        "nc5_ood_dev": "no ood given",
    }
    for v in res.data_vars.values():
        assert {"long_name", "formula", "reference"} <= set(v.attrs)
    with pytest.raises(ValueError, match="unknown metric"):
        measure(stats, metrics=["nc9"])
    with pytest.raises(ValueError, match="weights have shape"):
        measure(stats, weights=np.ones((2, 2)))
    with pytest.raises(TypeError, match="stats must be a Dataset"):
        measure(np.ones(3))


def test_options_dist_exp_riesz_s_bias_and_unlabelled_ood():
    X, y, W, b, Xt, yt, Xo, yo = _random_case(7, 6, 7, 4, False)
    stats = dense_stats(X, y, 6)
    ref = dense_metrics(
        X, y, 6, W=W, b=b, X_test=Xt, y_test=yt, X_ood=Xo, dist_exp=2.0, riesz_s=1.5
    )
    res = measure(
        stats,
        weights=W,
        bias=b,
        test=split(Xt, yt),
        ood=split(Xo, yo),
        dist_exp=2.0,
        riesz_s=1.5,
        ood_labels=False,
        tile_size=4,
    ).compute()
    _check_against_dense(res, ref, rtol=1e-8, atol=1e-11)
    res2 = measure(stats, ood=split(Xo), metrics="nc5_ood_dev").compute()
    assert float(res2.nc5_ood_dev) == pytest.approx(ref["nc5_ood_dev"], rel=1e-12)


def test_riesz_log_domain_for_large_dim():
    """S = D - 2 underflows for D ≳ 250 in float32 and for larger D in float64."""
    rng = np.random.default_rng(5)
    K, D = 6, 1200
    means = rng.normal(size=(K, D))
    stats = _stats_exact(means, np.ones(K))
    # the mean (about e^-420) is representable, the variance (about e^-1008) is not
    with pytest.warns(RieszRangeWarning, match="variance over pairs underflows"):
        res = measure(stats, metrics=["nc2g_riesz"], tile_size=4).compute()
    assert float(res.nc2g_riesz_var) == 0.0 and np.isfinite(float(res.nc2g_riesz_log_var))
    u = means - means.mean(0)
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    iu = np.triu_indices(K, 1)
    logd = np.log(np.linalg.norm(u[:, None] - u[None], axis=-1)[iu])
    logr = -(D - 2) * logd
    c = logr.max()
    log_mean = c + np.log(np.exp(logr - c).mean())
    assert float(res.nc2g_riesz_log_mean) == pytest.approx(log_mean, rel=1e-10)
    assert float(res.nc2g_riesz_mean) == pytest.approx(np.exp(log_mean), rel=1e-8)


def test_faiss_backend_gives_identical_decisions():
    pytest.importorskip("faiss")
    d, g, K, stats, kw = _golden_inputs("wide")
    a = measure(stats, metrics=["nc4_agree", "agree_per_class"], **kw).compute()
    b = measure(
        stats, metrics=["nc4_agree", "agree_per_class"], nc4_backend="faiss", **kw
    ).compute()
    xr.testing.assert_identical(a, b)


# --------------------------------------------------------------------------- sweeps


def test_sweeps_stacked_list_and_dict():
    cases = [_random_case(s, 5, 6, 4, False) for s in (11, 12)]
    stats = [dense_stats(c[0], c[1], 5) for c in cases]
    Ws = [c[2] for c in cases]
    singles = [measure(s, weights=w).compute() for s, w in zip(stats, Ws, strict=True)]

    stacked = xr.concat(stats, dim="epoch").assign_coords(epoch=[10, 20])
    W_da = xr.DataArray(np.stack(Ws), dims=("epoch", "class", "feature"))
    res = measure(stacked, weights=W_da).compute()
    assert res.sizes["epoch"] == 2 and res["epoch"].values.tolist() == [10, 20]
    for i, single in enumerate(singles):
        xr.testing.assert_allclose(
            res.isel(epoch=i, drop=True),
            single.drop_attrs() if hasattr(single, "drop_attrs") else single,
        )

    res_list = measure(stats, weights=Ws, dim="layer", labels=["a", "b"]).compute()
    assert res_list["layer"].values.tolist() == ["a", "b"]
    res_dict = measure(
        {"a": stats[0], "b": stats[1]}, weights={"a": Ws[0], "b": Ws[1]}, dim="layer"
    ).compute()
    xr.testing.assert_allclose(res_list, res_dict)
    np.testing.assert_allclose(
        res_list.nc3_dual_err.values, [float(s.nc3_dual_err) for s in singles], rtol=1e-12
    )


def test_splits_from_a_store():
    ncdask = pytest.importorskip("ncdask")
    if not hasattr(ncdask, "EmbeddingStore"):
        pytest.skip("no store")
    X, y, W, b, Xt, yt, Xo, yo = _random_case(3, 5, 6, 4, False)
    ok = yt >= 0
    store = ncdask.EmbeddingStore.from_arrays(
        "memory://ncdask-tests/metrics-splits",
        {"train": (X, y), "test": (Xt[ok], yt[ok]), "ood": (Xo, yo)},
        W=W,
        overwrite=True,
    )
    stats = dense_stats(X, y, 5)
    res = measure(stats, weights=W, test=(store, "test"), ood=(store, "ood")).compute()
    ref = dense_metrics(X, y, 5, W=W, X_test=Xt[ok], y_test=yt[ok], X_ood=Xo, y_ood=yo)
    # the store keeps float32 embeddings
    assert float(res.nc4_agree) == pytest.approx(ref["nc4_agree"], rel=1e-12)
    assert float(res.nc5_ood_dev) == pytest.approx(ref["nc5_ood_dev"], rel=1e-6)
