"""nc1_pinv_by_frequency: each class-count bin's share of nc1_pinv, from one pass over train=."""

from __future__ import annotations

import warnings

import dask.array as da
import numpy as np
import pytest
from dense_metrics import EPS, class_data, dense_metrics, dense_stats, split

import ncdask
from ncdask.graph import shares as SG


def _problem(K, D, seed=0, lo=2, hi=40):
    rng = np.random.default_rng(seed)
    n = rng.integers(lo, hi, K)
    means = 4 * rng.normal(size=(K, D))
    return class_data(rng, means, rng.permutation(np.repeat(np.arange(K), n)))


def _dense_shares(X, y, K, kept, bins, N=None):
    """Σ_{k∈bin} tr(Σ_B⁺ S_k) / (N K') over the classes ``kept`` (K' of them), densely."""
    M = np.stack([X[y == k].mean(0) for k in kept])
    Mc = M - M.mean(0)
    Sb = Mc.T @ Mc / len(kept)
    P = np.linalg.pinv(Sb, rcond=X.shape[1] * EPS)
    t = np.array([np.trace(P @ (X[y == k] - M[i]).T @ (X[y == k] - M[i]))
                  for i, k in enumerate(kept)])
    N = len(X) if N is None else N
    return np.array([t[b].sum() for b in bins]) / N / len(kept)


@pytest.mark.slow
@pytest.mark.parametrize("K,D", [(12, 30), (12, 12), (30, 7)])  # K < D, K = D, K > D
def test_shares_match_the_dense_reference_and_add_up_to_nc1_pinv(K, D):
    X, y = _problem(K, D, seed=K + D)
    ref = dense_metrics(X, y, K, by_frequency=4)
    for tile in (1, 3, K):
        # class chunks and row chunks are separate axes of the pass: each value of each
        # once per tile (rows: several chunks at every K, or one)
        for chunks, rows in ((1, len(X)), (5, 29)):
            stats = dense_stats(X, y, K, chunks=chunks)
            res = ncdask.measure(stats, metrics=["nc1_pinv"], by_frequency=4,
                                 tile_size=tile, train=split(X, y, chunks=rows)).compute()
            got = res.nc1_pinv_by_frequency.values
            np.testing.assert_allclose(got, ref["nc1_pinv_by_frequency"], rtol=1e-9,
                                       err_msg=f"tile {tile}, chunks {chunks}, rows {rows}")
            np.testing.assert_allclose(got.sum(), float(res.nc1_pinv), rtol=1e-12)
            assert res.nc1_pinv_by_frequency.dims == ("frequency_bin",)


def test_not_computed_without_train():
    X, y = _problem(8, 5)
    stats = dense_stats(X, y, 8)
    res = ncdask.measure(stats, metrics="nc1_quot", by_frequency=2)
    assert "nc1_pinv_by_frequency" not in res
    assert res.attrs["left_out"]["nc1_pinv_by_frequency"] == "no train given"
    assert "nc1_quot_by_frequency" in res and "nc1_cdnv_by_frequency" in res
    # train alone asks for nothing: the breakdown needs by_frequency
    assert "nc1_pinv_by_frequency" not in ncdask.measure(stats, metrics="nc1_pinv",
                                                         train=split(X, y))
    res = ncdask.measure(stats, metrics="nc1_pinv_by_frequency", train=split(X, y))
    assert "nc1_pinv_by_frequency" not in res
    assert "by_frequency" in res.attrs["left_out"]["nc1_pinv_by_frequency"]


def test_ignore_index_rows_are_dropped():
    X, y = _problem(7, 9, seed=3)
    pad = np.random.default_rng(1).random(len(y)) < 0.25
    y_pad = np.where(pad, -100, y)
    Xp = X + 1e3 * pad[:, None]  # the padding rows would show if they were read
    stats = dense_stats(X[~pad], y[~pad], 7)
    ref = dense_metrics(X[~pad], y[~pad], 7, by_frequency=3)
    for ii in (-100, None):  # a label outside [0, K) is no class either way
        res = ncdask.measure(stats, metrics="nc1_pinv", by_frequency=3, ignore_index=ii,
                             train=split(Xp, y_pad, chunks=11)).compute()
        np.testing.assert_allclose(res.nc1_pinv_by_frequency.values,
                                   ref["nc1_pinv_by_frequency"], rtol=1e-9)


def test_store_split_and_min_count(mem_url):
    """A (store, split) pair; classes under min_count contribute to no bin."""
    K, D = 10, 6
    X, y = _problem(K, D, seed=4, lo=1, hi=30)
    y_pad = np.where(np.random.default_rng(2).random(len(y)) < 0.2, -100, y)
    s = ncdask.EmbeddingStore.from_arrays(mem_url(), {"train": (X, y_pad)}, n_classes=K,
                                          ignore_index=-100, chunk_rows=13)
    Xs, ok = X.astype(np.float32).astype(np.float64), y_pad != -100
    Xk, yk = Xs[ok], y[ok]
    counts = np.bincount(yk, minlength=K)
    m = int(np.sort(counts)[3]) + 1  # filters the four smallest classes (at least)
    kept = np.nonzero(counts >= m)[0]
    n_k = counts[kept]
    order = np.lexsort((np.arange(kept.size), -n_k))
    bins = [np.sort(b) for b in np.array_split(order, 3)]
    # filtered by class_stats too: Σ_W leaves them out and the shares add up to nc1_pinv
    st = ncdask.class_stats(s, "train", min_count=m)
    res = ncdask.measure(st, metrics="nc1_pinv", by_frequency=3, min_count=m,
                         train=(s, "train")).compute()
    want = _dense_shares(Xk, yk, K, kept, bins, N=int(n_k.sum()))
    np.testing.assert_allclose(res.nc1_pinv_by_frequency.values, want, rtol=1e-9)
    np.testing.assert_allclose(float(res.nc1_pinv_by_frequency.sum()), float(res.nc1_pinv),
                               rtol=1e-12)
    # filtered by measure only: Σ_W still pools their samples (N counts them); each kept
    # class's term is its term of nc1_pinv, the filtered classes' terms are in no bin
    st = ncdask.class_stats(s, "train")
    res = ncdask.measure(st, metrics="nc1_pinv", by_frequency=3, min_count=m,
                         train=s.split("train")).compute()
    want = _dense_shares(Xk, yk, K, kept, bins, N=int(ok.sum()))
    np.testing.assert_allclose(res.nc1_pinv_by_frequency.values, want, rtol=1e-9)
    assert float(res.nc1_pinv_by_frequency.sum()) < float(res.nc1_pinv)


def test_a_train_split_that_is_not_the_statistics_raises():
    X, y = _problem(6, 4, seed=5)
    stats = dense_stats(X, y, 6)
    res = ncdask.measure(stats, metrics="nc1_pinv", by_frequency=2,
                         train=split(X[:-3], y[:-3]))
    with pytest.raises(ValueError, match="does not match the class statistics"):
        res.compute()
    with pytest.raises(ValueError, match="expected"):
        ncdask.measure(stats, metrics="nc1_pinv", by_frequency=2,
                       train=split(X[:, :3], y))
    with pytest.raises(ValueError, match="needs 'labels'"):
        ncdask.measure(stats, metrics="nc1_pinv", by_frequency=2, train=split(X))


@pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning")  # nc1_quot's shares: x / 0
def test_undefined_nc1_gives_nan_shares():
    """All class means equal: nc1_pinv is NaN, and so is every share."""
    a = np.random.default_rng(0).normal(size=(4, 3))
    y = np.repeat(np.arange(4), 2)
    X = np.stack([a, -a], axis=1).reshape(8, 3)  # class k: a_k and -a_k, mean exactly 0
    stats = dense_stats(X, y, 4)
    res = ncdask.measure(stats, metrics="nc1_pinv", by_frequency=2,
                         train=split(X, y)).compute()
    assert np.isnan(float(res.nc1_pinv))
    assert np.isnan(res.nc1_pinv_by_frequency.values).all()


def _factor(stats):
    M = da.from_array(stats["means"].values, chunks=(5, -1))
    mG = M.mean(0)
    L, s = SG.pinv_factor(M - mG, da.from_array(stats["within_cov"].values))
    return M - mG, mG, L, s


def test_a_small_budget_splits_the_row_blocks():
    K, D = 20, 16  # about 430 rows: blocks of 5 rows
    X, y = _problem(K, D, seed=6)
    stats = dense_stats(X, y, K)
    ref = dense_metrics(X, y, K, by_frequency=5)
    budget = 8 * (D * D + 4 * K + 5 * (2 * D + 6))  # L, the output and 5 rows
    res = ncdask.measure(stats, metrics="nc1_pinv", by_frequency=5, memory_budget=budget,
                         train=split(X, y, chunks=len(y))).compute()
    np.testing.assert_allclose(res.nc1_pinv_by_frequency.values,
                               ref["nc1_pinv_by_frequency"], rtol=1e-9)

    assert SG.rows_per_block(D, D, K, budget=budget) == 5
    Mc, mG, L, s = _factor(stats)
    sums, qm = SG.class_pinv_sums(da.from_array(X, chunks=(len(y), -1)), da.from_array(y), Mc,
                                  mG, L, s, lookup=np.arange(K), budget=budget)
    assert sums.shape == (2, K) and qm.shape == (K,)
    np.testing.assert_array_equal(sums[1].compute(), np.bincount(y, minlength=K))


def test_each_row_block_feeds_one_task_so_it_is_freed_after_it():
    """Per-tile trees over the row blocks kept every block alive until the last tile's tree
    reached it: 10.5 GB at N=1M, K=50,257, D=1,024 (the whole train split at N=10M). Each
    block must feed one task, the block's sums."""
    from dask.core import get_dependencies

    K, D = 20, 16
    X, y = _problem(K, D, seed=6)
    stats = dense_stats(X, y, K)
    Mc, mG, L, s = _factor(stats)
    Xd = da.from_array(X, chunks=(len(y), -1))
    sums, _ = SG.class_pinv_sums(Xd, da.from_array(y), Mc, mG, L, s, lookup=np.arange(K),
                                 budget=8 * (D * D + 4 * K + 5 * (2 * D + 6)))
    graph = dict(sums.__dask_graph__())
    users = {}
    for k in graph:
        for dep in get_dependencies(graph, k):
            users.setdefault(dep, set()).add(k)
    blocks = [k for k in graph if isinstance(k, tuple) and "rechunk" in k[0]
              and any("pinv-shares" in u[0] for u in users.get(k, ()))]
    assert len(blocks) > 10
    assert all(len(users[k]) == 1 for k in blocks)
    np.testing.assert_array_equal(sums[1].compute(), np.bincount(y, minlength=K))


@pytest.mark.parametrize("spread", [1e-3, 1e-5])
def test_far_and_tight_classes_keep_their_digits_or_are_nan(spread):
    """Each share is a difference of sums about the global mean: classes far from the origin
    and tight about their means lose digits to it. A share keeps ~5 digits or is NaN with a
    warning, never a wrong number."""
    rng = np.random.default_rng(3)
    K, D = 10, 6
    means = 1e4 + 50 * rng.normal(size=(K, D))  # far from 0, well apart
    y = rng.permutation(np.repeat(np.arange(K), rng.integers(3, 30, K)))
    X = means[y] + spread * rng.normal(size=(len(y), D))  # nc1_pinv about 2e-9 or 2e-13
    ref = dense_metrics(X, y, K, by_frequency=3)
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        res = ncdask.measure(dense_stats(X, y, K), metrics="nc1_pinv", by_frequency=3,
                             train=split(X, y, chunks=37)).compute()
    np.testing.assert_allclose(float(res.nc1_pinv), ref["nc1_pinv"], rtol=1e-6)
    shares = res.nc1_pinv_by_frequency.values
    if spread == 1e-3:
        np.testing.assert_allclose(shares, ref["nc1_pinv_by_frequency"], rtol=1e-4)
        assert not [w for w in got if issubclass(w.category, ncdask.DegenerateInputWarning)]
    else:
        assert np.isnan(shares).all()
        assert [w for w in got if issubclass(w.category, ncdask.DegenerateInputWarning)
                and "too few" in str(w.message)]


def test_a_sweep_takes_one_train_split_per_item():
    X, y = _problem(8, 5, seed=7)
    X2 = 1.5 * X
    stats = {0: dense_stats(X, y, 8), 1: dense_stats(X2, y, 8)}
    res = ncdask.measure(stats, metrics="nc1_pinv", by_frequency=2,
                         train={0: split(X, y), 1: split(X2, y)}).compute()
    for e, Xe in ((0, X), (1, X2)):
        ref = dense_metrics(Xe, y, 8, by_frequency=2)
        np.testing.assert_allclose(res.nc1_pinv_by_frequency.sel(epoch=e).values,
                                   ref["nc1_pinv_by_frequency"], rtol=1e-9)


def test_a_streamed_summary_is_not_a_train_split():
    X, y = _problem(6, 4, seed=8)
    stats = dense_stats(X, y, 6)
    fake = split(X, y)
    fake.attrs["ncdask_streamed"] = "test"
    with pytest.raises(ValueError, match="not a streamed summary"):
        ncdask.measure(stats, metrics="nc1_quot", by_frequency=2, train=fake)


def test_cli_sweep_by_frequency_reads_each_train_split(tmp_path, capsys):
    from ncdask import cli

    rng = np.random.default_rng(9)
    K, D = 6, 8
    means = 3 * rng.normal(size=(K, D))
    n = np.array([30, 4, 20, 9, 25, 6])
    url, out = str(tmp_path / "s.zarr"), str(tmp_path / "r.zarr")
    s = ncdask.EmbeddingStore.create(url, K, D)
    data = {}
    for e, noise in ((1, 2.0), (5, 0.3)):
        X, y = class_data(rng, means, np.repeat(np.arange(K), n), noise=noise)
        s.append("train", X, y, epoch=e)
        data[e] = (X.astype(np.float32), y)
    assert cli.main(["analyze", url, "--sweep", "--metrics", "nc1_pinv", "--by-frequency", "2",
                     "--out", out, "-q"]) == 0
    capsys.readouterr()
    got = ncdask.open_results(out)
    for e, (X, y) in data.items():
        ref = dense_metrics(X, y, K, by_frequency=2)
        np.testing.assert_allclose(got.nc1_pinv_by_frequency.sel(epoch=e).values,
                                   ref["nc1_pinv_by_frequency"], rtol=1e-9)
        np.testing.assert_allclose(float(got.nc1_pinv_by_frequency.sel(epoch=e).sum()),
                                   float(got.nc1_pinv.sel(epoch=e)), rtol=1e-12)


@pytest.mark.parametrize("backend", ["strict", pytest.param("cupy", marks=pytest.mark.gpu)])
@pytest.mark.parametrize("K,D", [(6, 8), (12, 4)])
def test_device_arrays_stay_on_the_device(mem_url, backend, K, D):
    """A CuPy-like split (the strict stand-in, or CuPy): the pass keeps its array module."""
    from strict_xp import namespace, to_host

    xp = namespace(backend)
    rng = np.random.default_rng(K)
    means = 3 * rng.normal(size=(K, D))
    y = rng.integers(0, K, 300)
    y[::40] = -100
    X = means[np.maximum(y, 0)] + rng.normal(size=(300, D))
    s = ncdask.EmbeddingStore.from_arrays(mem_url(), {"train": (X, y)}, n_classes=K,
                                          chunk_rows=32, ignore_index=-100)
    ref = ncdask.measure(ncdask.class_stats(s, "train"), metrics="nc1_pinv", by_frequency=3,
                         tile_size=4, train=s.split("train")).compute()
    st = ncdask.class_stats(s.split("train", backend=xp))
    res = ncdask.measure(st, metrics="nc1_pinv", by_frequency=3, tile_size=4,
                         train=s.split("train", backend=xp))
    # every breakdown, the CDNV's bins included (a bin's rows are taken block by block
    # with a device index: CuPy's take refuses the host one)
    for name in ("nc1_pinv_by_frequency", "nc1_cdnv_by_frequency", "nc1_quot_by_frequency"):
        got = res[name]
        assert isinstance(got.data._meta, xp.ndarray), name
        np.testing.assert_allclose(to_host(got.data.compute()), ref[name].values, rtol=1e-9,
                                   err_msg=name)
