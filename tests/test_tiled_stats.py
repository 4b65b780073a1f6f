"""Class statistics chunked over classes (issue 12): as dense, no K×D task, bounded memory."""

import json
import subprocess
import sys
import textwrap
import warnings

import dask.array as da
import numpy as np
import pytest
import xarray as xr
from dask.callbacks import Callback
from dense import assert_stats_equal, class_data, dense_stat_arrays, split

import ncdask
from ncdask.graph.tiled_stats import plan
from ncdask.stats import EmptyClassWarning

# a budget too small for anything: the pipelined plan, one tile per group
TINY = 1


def _rare_labels(rng, n, K):
    """Most classes absent from most chunks: a Zipf-like draw plus a few frequent classes."""
    y = np.minimum(rng.zipf(1.3, size=n) - 1, K - 1)
    return rng.permutation(y)


def _stats(X, y, K, chunk, tile, budget=None, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EmptyClassWarning)
        return ncdask.class_stats(split(X, y, K, chunks=chunk), tile_size=tile,
                                  memory_budget=budget, **kw)


@pytest.mark.slow
@pytest.mark.parametrize("chunk", [1, 7, 777])
@pytest.mark.parametrize("budget", [None, TINY], ids=["one-pass", "pipelined"])
def test_class_chunked_equals_dense(chunk, budget):
    rng = np.random.default_rng(chunk)
    K, D = 40, 3
    n = {1: 60, 7: 400}.get(chunk, 1500)  # 60 chunks of 1 row, 58 of 7, 2 of 777
    X = rng.normal(size=(n, D)) + 3 * rng.normal(size=(K, D))[_rare_labels(rng, n, K)]
    y = _rare_labels(rng, n, K)
    X = X + 5 * np.eye(K, D)[y]
    ref = dense_stat_arrays(X, y, K)
    for tile in (1, 7, K):  # one class, uneven (7 x 5 and 5), all of K
        st_ = _stats(X, y, K, chunk, tile, budget)
        expect = tuple(min(tile, K - s) for s in range(0, K, tile))
        assert st_.means.data.chunks[0] == expect
        assert st_.var_norms.data.chunks[0] == expect
        if budget is not None:
            assert plan(K, D, tile, budget=budget) is not None
        assert_stats_equal(st_, ref, 1e-10)
        w = _stats(X, y, K, chunk, tile, budget, global_mean="weighted")
        np.testing.assert_allclose(w.global_mean.values, X.mean(0), rtol=1e-10)


@pytest.mark.parametrize("budget", [None, TINY], ids=["one-pass", "pipelined"])
def test_many_more_classes_than_samples(budget):
    rng = np.random.default_rng(3)
    K, D, n = 5000, 4, 600
    y = rng.integers(0, K, n)
    X = rng.normal(size=(n, D))
    ref = dense_stat_arrays(X, y, K)
    st_ = _stats(X, y, K, 64, 97, budget)
    assert len(st_.attrs["empty_classes"]) == int((ref["counts"] == 0).sum())
    assert_stats_equal(st_, ref, 1e-10)


def test_pipelined_with_ignore_index_and_min_count():
    rng = np.random.default_rng(4)
    K, D, n = 30, 3, 2000
    X, y = class_data(rng, 4 * np.eye(K, D), _rare_labels(rng, n, K))
    y_pad = y.copy()
    y_pad[::11] = -100
    one = _stats(X, y_pad, K, 50, 7, None, ignore_index=-100, min_count=25).compute()
    two = _stats(X, y_pad, K, 50, 7, TINY, ignore_index=-100, min_count=25).compute()
    assert one.attrs["filtered_classes"] == two.attrs["filtered_classes"]
    assert one.attrs["filtered_classes"]  # some classes are rare enough to be filtered
    assert_stats_equal(two, one, 1e-10)
    keep = y_pad != -100
    assert int(two.n_samples) == int(np.isin(y_pad[keep], np.nonzero(
        np.bincount(y_pad[keep], minlength=K) >= 25)[0]).sum())


@pytest.mark.parametrize("budget", [None, TINY], ids=["one-pass", "pipelined"])
def test_collapsed_float32_stays_exact(budget):
    """Terminal phase: spread 1e-5 of the means' norm, stored as float32.

    The one-pass plan takes rows about a shift (a class's first row or its
    running mean), the pipelined plan about the final means: both exact.
    """
    rng = np.random.default_rng(5)
    K, D, n = 20, 8, 4000
    y = rng.integers(0, K, n)
    M = 1e3 * rng.normal(size=(K, D))
    X, y = class_data(rng, M, y, noise=1e-2, dtype=np.float32)
    ref = dense_stat_arrays(X.astype(np.float64), y, K)
    st_ = _stats(X, y, K, 333, 3, budget).compute()
    np.testing.assert_allclose(np.trace(st_.within_cov.values), np.trace(ref["within_cov"]),
                               rtol=1e-9)
    np.testing.assert_allclose(st_.within_cov.values, ref["within_cov"], rtol=1e-7,
                               atol=1e-9 * np.abs(ref["within_cov"]).max())
    np.testing.assert_allclose(st_.var_norms.values, ref["var_norms"], rtol=1e-9)


@pytest.mark.parametrize("block", [1, 3, 7, 64])
@pytest.mark.parametrize("subtract", [False, True])
def test_scatter_add_updates_the_lower_triangle(block, subtract):
    from ncdask.kernels.tiled_stats import scatter_add, symmetrize

    rng = np.random.default_rng(block)
    P, S0 = rng.normal(size=(50, 19)), rng.normal(size=(19, 19))
    S0 = S0 + S0.T
    S = S0.copy()
    scatter_add(S, P, np, block=block, subtract=subtract)
    want = S0 - P.T @ P if subtract else S0 + P.T @ P
    np.testing.assert_allclose(symmetrize(S), want, rtol=1e-12, atol=1e-12)


class _Sizes(Callback):
    """Largest array (elements) any task returned, looking inside dicts and tuples."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def _posttask(self, key, result, dsk, state, id):
        def walk(r):
            if isinstance(r, dict):
                for v in r.values():
                    walk(v)
            elif isinstance(r, (list, tuple)):
                for v in r:
                    walk(v)
            elif isinstance(r, np.ndarray):  # (not the lazy Zarr wrappers xarray passes along)
                self.largest = max(self.largest, int(r.size))

        walk(result)


def test_no_task_returns_a_K_by_D_block(tmp_path):
    rng = np.random.default_rng(6)
    K, D, n = 600, 16, 3000
    X, y = class_data(rng, np.eye(K, D), rng.integers(0, K, n))
    budget = 4 * 100 * D * 8  # groups of 100 classes (two chains)
    groups = plan(K, D, 50, budget=budget, chains=2)
    assert plan(K, D, 50, budget=6 * K * D * 8, chains=2) is None  # (one pass when K×D fits)
    assert len(groups) == 6 and all(hi - lo == 100 for lo, hi in groups)
    st_ = _stats(X, y, K, 500, 50, budget, chains=2)
    with _Sizes() as cb:
        ncdask.save_stats(st_, str(tmp_path / "s.zarr"))
    # a group (100 × D) or a row chunk (500 × D) at most; never K × D
    assert max(100, 500) * D >= cb.largest and cb.largest < K * D
    back = ncdask.load_stats(str(tmp_path / "s.zarr"))
    assert back.means.data.chunks[0] == (50,) * 12  # one Zarr chunk per tile, opened lazily
    assert_stats_equal(back, dense_stat_arrays(X, y, K), 1e-10)
    # the same through measure: no task computes K×D either
    W = da.from_array(rng.normal(size=(K, D)), chunks=(50, D))  # e.g. a classifier in Zarr
    with _Sizes() as cb, pytest.warns(ncdask.DegenerateInputWarning, match="one sample"):
        res = ncdask.measure(back, weights=W, metrics=["nc1_pinv", "nc2_etf_err",
                                                       "nc3_dual_err"], tile_size=50).compute()
    assert cb.largest < K * D
    assert np.isfinite(res.nc1_pinv.item())


def test_merge_of_class_chunked_stats_stays_chunked_and_exact():
    rng = np.random.default_rng(7)
    K, D, n = 50, 4, 2000
    X, y = class_data(rng, 3 * np.eye(K, D), _rare_labels(rng, n, K))
    a = _stats(X[:700], y[:700], K, 100, 9, TINY)
    b = _stats(X[700:], y[700:], K, 100, 9, None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EmptyClassWarning)
        m = ncdask.merge_stats(a, b)
    assert m.means.data.chunks[0] == a.means.data.chunks[0]
    assert_stats_equal(m, dense_stat_arrays(X, y, K), 1e-10)


@pytest.mark.parametrize("budget", [None, TINY], ids=["one-pass", "pipelined"])
@pytest.mark.parametrize("damage", ["shifted", "said-empty"])
def test_record_counts_are_checked_against_the_data(budget, damage):
    """A split whose record disagrees with its labels is an error, not a number.

    Also when the record says a class has no samples: the pipelined plan
    keeps accumulator rows only for the classes the record says are present.
    """
    rng = np.random.default_rng(8)
    K = 5
    y = rng.integers(0, K, 100)
    ds = split(rng.normal(size=(100, 3)), y, K, chunks=30)
    wrong = np.bincount(y, minlength=K)
    if damage == "shifted":
        wrong[0] += 1
        wrong[1] -= 1
    else:
        wrong[0] += wrong[3]
        wrong[3] = 0
    ds.attrs.update(class_counts=wrong, n_committed=100)
    with pytest.raises(ValueError, match="record and the data disagree"), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore", EmptyClassWarning)
        ncdask.class_stats(ds, memory_budget=budget, tile_size=2).compute()
    # a subset no longer matches the record: its counts come from its labels
    sub = ds.isel(sample=slice(0, 40))
    np.testing.assert_array_equal(ncdask.class_stats(sub).counts.values,
                                  np.bincount(y[:40], minlength=K))
    cat = xr.concat([sub, sub], dim="sample")
    np.testing.assert_array_equal(ncdask.class_stats(cat).counts.values,
                                  2 * np.bincount(y[:40], minlength=K))


def test_float16_store_upcasts_in_pieces(mem_url):
    rng = np.random.default_rng(9)
    K, D, n = 12, 6, 3000
    X, y = class_data(rng, 2 * np.eye(K, D), rng.integers(0, K, n), dtype=np.float16)
    s = ncdask.EmbeddingStore.from_arrays(mem_url(), {"train": (X, y)}, dtype="float16")
    assert s["train"].embeddings.dtype == np.float16
    ref = dense_stat_arrays(X.astype(np.float64), y, K)
    for budget in (None, TINY):
        st_ = ncdask.class_stats(s, "train", memory_budget=budget, tile_size=5)
        assert st_.means.dtype == np.float64
        assert_stats_equal(st_, ref, 1e-10)


_MEMORY_SCRIPT = textwrap.dedent("""
    import json, resource, sys
    import dask, numpy as np, dask.array as da, xarray as xr
    import warnings, ncdask
    K, D, n = 50_000, 512, 100_000
    rng = np.random.default_rng(0)
    y = rng.integers(0, K, n)
    X = da.random.default_rng(1).standard_normal((n, D), chunks=(8192, D), dtype=np.float32)
    ds = xr.Dataset({"embeddings": (("sample", "feature"), X),
                     "labels": (("sample",), da.from_array(y, chunks=8192))},
                    attrs={"n_classes": K})
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # fixed chains and budget: the same plan on any machine, however many cores
        st = ncdask.class_stats(ds, chains=2, memory_budget="512MiB")
        with dask.config.set(num_workers=2):
            tr = float(st.var_norms.sum().compute())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"base_mib": base / 1024, "peak_mib": peak / 1024, "tr": tr}))
""")


@pytest.mark.slow
def test_memory_at_vocabulary_scale_is_bounded():
    """K=50,000, D=512 (a K×D float64 partial is 195 MiB; the old pass kept many alive)."""
    out = subprocess.run([sys.executable, "-c", _MEMORY_SCRIPT], capture_output=True,
                         text=True, check=True, timeout=600)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["tr"] > 0
    assert res["peak_mib"] < 1536, res


def test_bad_label_error_names_the_ignore_index_given():
    ds = split(np.zeros((6, 2)), np.array([0, 1, -100, 7, 2, 0]), 3, chunks=3)
    with pytest.raises(ValueError, match=r"label 7 is outside \[0, 3\).*only ignore_index=-100"):
        ncdask.class_stats(ds, ignore_index=-100).compute()
    with pytest.raises(ValueError, match="pass ignore_index="):
        ncdask.class_stats(split(np.zeros((4, 2)), np.array([0, -100, 1, 2]), 3,
                                 chunks=4)).compute()


def test_one_chain_reads_once_where_two_chains_would_not_fit(monkeypatch):
    import uuid

    from ncdask.store import core

    reads = []
    orig = core.NamedChunks.__getitem__
    monkeypatch.setattr(core.NamedChunks, "__getitem__",
                        lambda self, key: reads.append(self.a.path) or orig(self, key))
    rng = np.random.default_rng(3)
    K, D = 40, 16
    X, y = rng.normal(size=(4000, D)), np.arange(4000) % K
    store = ncdask.EmbeddingStore.from_arrays(f"memory://one-chain-{uuid.uuid4().hex}",
                                              {"train": (X, y)}, n_classes=K, chunk_rows=500)
    ref = ncdask.class_stats(store, "train").compute(scheduler="sync")
    n_read = {}
    for budget in (5 * K * D * 8, 3 * K * D * 8):  # one chain fits / nothing fits: pipelined
        reads.clear()
        got = ncdask.class_stats(store, "train", memory_budget=budget, chains=2)
        assert_stats_equal(got.compute(scheduler="sync"), ref)
        n_read[budget] = sum(p.endswith("embeddings") for p in reads)
    assert n_read[5 * K * D * 8] == 8 < n_read[3 * K * D * 8]


@pytest.mark.parametrize("budget", [None, TINY], ids=["one-pass", "pipelined"])
def test_large_inputs_chunked_along_features_read_in_step(monkeypatch, budget):
    """Inputs over the throttle size are read a batch at a time, also when their features
    come in several chunks (the rechunk's tasks are throttled with the reads)."""
    import ncdask.graph.tiled_stats as TS

    monkeypatch.setattr(TS, "THROTTLE_BYTES", 0)
    rng = np.random.default_rng(5)
    K, D = 12, 6
    X, y = rng.normal(size=(500, D)), _rare_labels(rng, 500, K)
    ref = dense_stat_arrays(X, y, K)
    ds = split(X, y, K, chunks=50)
    ds["embeddings"] = ds.embeddings.chunk({"feature": 3})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EmptyClassWarning)
        got = ncdask.class_stats(ds, tile_size=5, memory_budget=budget, chains=2)
        assert_stats_equal(got.compute(), ref, 1e-10)
