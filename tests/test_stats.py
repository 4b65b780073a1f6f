import dask
import dask.array as da
import numpy as np
import pytest
import xarray as xr
from dense import CASES, assert_stats_equal, dense_stat_arrays, golden, split
from hypothesis import HealthCheck, given, settings
from strategies import irregular_chunks, labelled_data

import ncdask
from ncdask.stats import EmptyClassWarning


def assert_golden(st_, gold):
    g = gold["stats"]
    np.testing.assert_array_equal(st_.counts.values, g["class_counts"])
    rel = dict(rtol=1e-9, atol=0)
    np.testing.assert_allclose(st_.means.values.sum(), g["means_sum"], **rel)
    np.testing.assert_allclose(st_.global_mean.values.sum(), g["global_mean_sum"], **rel)
    np.testing.assert_allclose(np.trace(st_.within_cov.values), g["within_cov_trace"], **rel)
    np.testing.assert_allclose(st_.within_cov.values.sum(), g["within_cov_sum"], **rel)
    np.testing.assert_allclose(st_.var_norms.values, g["var_norms"], **rel)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("batch,chunk_rows", [(1, 31), (7, 777), (777, 31), (777, 1000)])
def test_golden_parity_store(mem_url, case, batch, chunk_rows):
    """Written in odd batches into odd chunks, float64, against the golden stats.

    31-row chunks: batches of 1 fill each chunk in many appends, batches of 777 span 25
    chunks and end inside one; about 100 chunks per case read as well as 500 of 7 rows."""
    data, gold = golden(case)
    X, Y = data["X"], data["Y"]
    K = len(gold["stats"]["class_counts"])
    s = ncdask.EmbeddingStore.create(mem_url(), K, X.shape[1], dtype="float64",
                                     chunk_rows=chunk_rows)
    with s.writer("train") as w:
        for i, j in _spans(len(X), batch):
            w.append(X[i:j], Y[i:j])
    assert_golden(ncdask.class_stats(s, "train").compute(), gold)


# One-row pieces are the edge case; 300 of them exercise it as well as 4000 (the
# whole golden set cut into rows took 40 s of the suite), the rest goes in 777s.
_ONES = 300


def _sizes(n: int, size: int) -> tuple[int, ...]:
    """Pieces of ``size`` rows; size 1 means 300 one-row pieces, then 777-row pieces."""
    if size != 1:
        return (size,) * (n // size) + ((n % size,) if n % size else ())
    return (1,) * _ONES + _sizes(n - _ONES, 777)


def _spans(n: int, size: int) -> list[tuple[int, int]]:
    ends = np.cumsum(_sizes(n, size))
    return list(zip([0, *ends[:-1].tolist()], ends.tolist(), strict=True))


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("chunks", [1, 7, 777])
def test_golden_parity_chunks(case, chunks):
    """Dask chunks of 1 (the first 300 rows), 7 and 777 rows (no store in between)."""
    data, gold = golden(case)
    K = len(gold["stats"]["class_counts"])
    st_ = ncdask.class_stats(split(data["X"], data["Y"], K, chunks=_sizes(len(data["Y"]), chunks)))
    assert_golden(st_.compute(), gold)


def test_collapsed_float32_within_cov_trace(mem_url):
    """Terminal phase of collapse, stored as float32: tr(Sigma_W) to 1e-3 of the float64 value."""
    data, gold = golden("collapsed")
    X = data["X"].astype(np.float32)
    s = ncdask.EmbeddingStore.from_arrays(mem_url(), {"train": (X, data["Y"])}, n_classes=5,
                                          chunk_rows=500)
    st_ = ncdask.class_stats(s, "train").compute()
    tr = np.trace(st_.within_cov.values)
    assert abs(tr / gold["stats"]["within_cov_trace"] - 1) < 1e-3
    # what ncdask guarantees beyond the trace: a symmetric covariance, PSD to rounding
    S = st_.within_cov.values
    np.testing.assert_allclose(S, S.T, rtol=0, atol=1e-12 * tr)
    assert np.linalg.eigvalsh((S + S.T) / 2).min() >= -1e-9 * tr


def test_matches_dense_reference_and_is_lazy():
    rng = np.random.default_rng(5)
    X = rng.normal(size=(500, 7)) * 3 + 10
    y = rng.integers(0, 6, 500)
    ds = split(X, y, 6, chunks=64)
    st_ = ncdask.class_stats(ds)
    assert isinstance(st_.means.data, da.Array) and isinstance(st_.within_cov.data, da.Array)
    assert st_.within_cov.dims == ("feature", "feature_")
    assert st_.attrs["global_mean"] == "unweighted" and st_.attrs["empty_classes"] == []
    assert "definition" in st_.within_cov.attrs
    assert_stats_equal(st_, dense_stat_arrays(X, y, 6), 1e-10)
    assert_stats_equal(ncdask.class_stats(ds, global_mean="weighted"),
                  dense_stat_arrays(X, y, 6, weighted=True), 1e-10)


def test_one_pass_graph_size_depends_on_tiles_not_K():
    rng = np.random.default_rng(6)
    X = rng.normal(size=(1000, 4))
    sizes = []
    for K in (5, 500):
        y = np.arange(1000) % K
        st_ = ncdask.class_stats(split(X, y, K, chunks=100), tile_size=K)
        sizes.append(len(dict(dask.base.collections_to_expr([st_]).__dask_graph__())))
    assert sizes[0] == sizes[1]
    # one graph for all variables: the chunk kernel appears once per chunk
    st_ = ncdask.class_stats(split(X, rng.integers(0, 5, 1000), 5, chunks=100))
    graph = dict(dask.base.collections_to_expr([st_]).__dask_graph__())
    assert sum(1 for k in graph if "-summary" in str(k)) == 10


def test_empty_classes_nan_and_excluded_from_global_mean():
    rng = np.random.default_rng(7)
    X = rng.normal(size=(60, 3))
    y = rng.choice([0, 1, 3], 60)
    with pytest.warns(EmptyClassWarning, match=r"2 class\(es\) have no samples: \[2, 4\]"):
        st_ = ncdask.class_stats(split(X, y, 5, chunks=16)).compute()
    assert st_.attrs["empty_classes"] == [2, 4]
    assert st_.counts.values.tolist()[2] == 0
    assert np.isnan(st_.means.values[[2, 4]]).all() and np.isnan(st_.var_norms.values[2])
    ref = dense_stat_arrays(X, y, 5)
    np.testing.assert_allclose(st_.global_mean.values, ref["global_mean"], rtol=1e-12)
    assert np.isfinite(st_.within_cov.values).all()


def test_merge_stats_equals_concatenation():
    rng = np.random.default_rng(8)
    X = rng.normal(size=(400, 5)) + 50
    y = rng.integers(0, 4, 400)
    a = ncdask.class_stats(split(X[:150], y[:150], 4, chunks=32))
    b = ncdask.class_stats(split(X[150:], y[150:], 4, chunks=50))
    m = ncdask.merge_stats(a, b)
    assert isinstance(m.means.data, da.Array)
    assert_stats_equal(m, dense_stat_arrays(X, y, 4), 1e-11)
    w = ncdask.class_stats(split(X[:150], y[:150], 4, chunks=32), global_mean="weighted")
    with pytest.raises(ValueError, match="different global_mean"):
        ncdask.merge_stats(a, w)


def test_merge_with_disjoint_classes():
    rng = np.random.default_rng(9)
    X = rng.normal(size=(100, 3))
    y = np.r_[np.zeros(50, int), np.ones(50, int)]
    with pytest.warns(EmptyClassWarning):
        a = ncdask.class_stats(split(X[:50], y[:50], 2, chunks=16))
    with pytest.warns(EmptyClassWarning):
        b = ncdask.class_stats(split(X[50:], y[50:], 2, chunks=16))
    assert_stats_equal(ncdask.merge_stats(a, b), dense_stat_arrays(X, y, 2), 1e-11)


def test_save_load_roundtrip_exact(tmp_path, mem_url):
    rng = np.random.default_rng(10)
    X = rng.normal(size=(200, 4))
    y = rng.choice([0, 1, 2, 4], 200)
    with pytest.warns(EmptyClassWarning):
        st_ = ncdask.class_stats(split(X, y, 5, chunks=30)).compute()
    for url in (str(tmp_path / "stats.zarr"), mem_url("stats")):
        ncdask.save_stats(st_, url)
        back = ncdask.load_stats(url)
        assert isinstance(back.counts.data, np.ndarray)
        xr.testing.assert_identical(back.compute(), st_)
        assert back.attrs["empty_classes"] == [3]
    with pytest.raises(ValueError, match="does not hold ncdask class statistics"):
        xr.Dataset({"a": ("x", [1])}).to_zarr(str(tmp_path / "other.zarr"), consolidated=False)
        ncdask.load_stats(str(tmp_path / "other.zarr"))


def test_stats_from_store_url_and_errors(small_store):
    s, X, y = small_store
    st_ = ncdask.class_stats(s.url, "train").compute()
    assert_stats_equal(st_, dense_stat_arrays(X, y, 4), 1e-6)
    with pytest.raises(KeyError, match="unknown split"):
        ncdask.class_stats(s, "nope")
    with pytest.raises(ValueError, match="global_mean must be"):
        ncdask.class_stats(s, "train", global_mean="median")
    bare = split(X, y, 4, chunks=50)
    bare.attrs = {}
    with pytest.raises(ValueError, match="pass n_classes="):
        ncdask.class_stats(bare)
    assert_stats_equal(ncdask.class_stats(bare, n_classes=4), dense_stat_arrays(X, y, 4), 1e-6)
    with pytest.raises(TypeError, match="expected a split Dataset"):
        ncdask.class_stats(42)


def test_numpy_backed_dataset_and_float32_accumulation():
    rng = np.random.default_rng(11)
    X = rng.normal(size=(90, 3))
    y = rng.integers(0, 3, 90)
    ds = split(X, y, 3, chunks=None)
    assert_stats_equal(ncdask.class_stats(ds), dense_stat_arrays(X, y, 3), 1e-10)
    st32 = ncdask.class_stats(ds, dtype="float32").compute()
    assert st32.means.dtype == np.float32
    np.testing.assert_allclose(st32.within_cov.values, dense_stat_arrays(X, y, 3)["within_cov"],
                               rtol=1e-4, atol=1e-5)


def test_on_a_distributed_cluster(small_store):
    distributed = pytest.importorskip("distributed")
    s, X, y = small_store
    with distributed.LocalCluster(processes=False, n_workers=2, threads_per_worker=1,
                                  dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        st_ = client.compute(ncdask.class_stats(s, "train")).result()
    assert_stats_equal(st_, dense_stat_arrays(X, y, 4), 1e-6)


# ------------------------------------------------------------------ invariance
@pytest.mark.slow
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(labelled_data())
def test_invariant_to_chunking_order_and_batches(data):
    X, y, K, cuts, seed = data
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EmptyClassWarning)
        base = ncdask.class_stats(split(X, y, K, chunks=X.shape[0])).compute()
        chunks = irregular_chunks(len(X), cuts)
        ds = split(X, y, K, chunks=chunks)
        chunked = ncdask.class_stats(ds, chains=3).compute()
        piped = ncdask.class_stats(ds, memory_budget=1, tile_size=2, chains=2).compute()
        perm = np.random.default_rng(seed).permutation(len(X))
        shuffled = ncdask.class_stats(split(X[perm], y[perm], K, chunks=13)).compute()
        # batch boundaries: the same data merged from pieces
        edges = [0, *[c for c in cuts if 0 < c < len(X)], len(X)]
        parts = [ncdask.class_stats(split(X[a:b], y[a:b], K, chunks=5))
                 for a, b in zip(edges[:-1], edges[1:], strict=False)]
        merged = parts[0]
        for p in parts[1:]:
            merged = ncdask.merge_stats(merged, p)
        merged = merged.compute()
    scale = np.abs(X).max() ** 2
    for other in (chunked, piped, shuffled, merged):
        np.testing.assert_array_equal(other.counts.values, base.counts.values)
        for v in ("means", "global_mean", "var_norms"):
            np.testing.assert_allclose(other[v].values, base[v].values, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(other.within_cov.values, base.within_cov.values,
                                   rtol=1e-8, atol=1e-12 * scale)


def test_class_stats_on_a_store_computes_nothing(small_store):
    def refuse(*args, **kwargs):
        raise AssertionError("a dask compute happened")

    s, X, y = small_store
    with dask.config.set(scheduler=refuse):
        st_ = ncdask.class_stats(s, "train")
        m = ncdask.merge_stats(st_, st_)
    np.testing.assert_array_equal(m.counts.values, 2 * np.bincount(y, minlength=4))


def test_chained_merges_keep_one_copy_of_each_pass(monkeypatch):
    """Merging rank after rank: the graph grows linearly and each chunk is read once.

    (Each merged result used to carry a copy of everything merged before per
    statistic: 7 chained merges of 24 chunks ran the chunk kernel 2,340 times.)
    """
    import ncdask.kernels.tiled_stats as KT

    calls = []
    orig = KT.fold
    monkeypatch.setattr(KT, "fold", lambda *a, **k: calls.append(1) or orig(*a, **k))
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(160, 5)), np.arange(160) % 6
    parts = [ncdask.class_stats(split(X[i:i + 20], y[i:i + 20], 6, chunks=5))
             for i in range(0, 160, 20)]
    merged, sizes = parts[0], []
    for p in parts[1:]:
        merged = ncdask.merge_stats(merged, p)
        sizes.append(len(dict(merged.__dask_graph__())))
    steps = np.diff(sizes)[1:]  # (the first merge also adds the first part's finishing)
    assert steps.max() == steps.min()  # the same number of new tasks per merge
    out = merged.compute()
    assert len(calls) == 32  # 8 parts of 4 chunks, each read once
    assert_stats_equal(out, dense_stat_arrays(X, y, 6), 1e-10)
