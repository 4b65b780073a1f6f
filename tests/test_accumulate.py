"""Streaming statistics without a store: StatsAccumulator equals class_stats (issue 15)."""

import numpy as np
import pytest
from dense import assert_stats_equal, golden, split

import ncdask


def _stats_of(X, y, K, **kw):
    return ncdask.class_stats(split(X, y, K, chunks=None), **kw).compute()


@pytest.mark.parametrize("case", ["collapsed", "manyclass", "wide"])
@pytest.mark.parametrize("batch", [1, 7, 777])
@pytest.mark.parametrize("buffer_rows", [0, 50, None])
def test_batches_of_any_size_give_class_stats(case, batch, buffer_rows):
    """Whatever the batches and however many rows are buffered before a fold
    (0: every batch folded at once; 50: folds within and across batches)."""
    data, _ = golden(case)
    X, y = data["X"], data["Y"].astype(np.int64)
    K = int(data["W"].shape[0])
    if batch == 1:  # one-row batches over the whole set take a while: a prefix will do
        X, y = X[:600], y[:600]
    acc = ncdask.StatsAccumulator(K, X.shape[1], buffer_rows=buffer_rows)
    for i in range(0, X.shape[0], batch):
        acc.update(X[i:i + batch], y[i:i + batch])
    assert_stats_equal(acc.result(), _stats_of(X, y, K))


def test_buffered_rows_count_and_refused_batches_leave_the_buffer_alone():
    rng = np.random.default_rng(3)
    X, y = rng.normal(size=(90, 5)), rng.integers(0, 4, 90)
    acc = ncdask.StatsAccumulator(4, 5, buffer_rows=64)
    acc.update(X[:30], y[:30])
    assert acc._n_buf == 30  # held, not folded yet
    with pytest.raises(ValueError, match="outside"):
        acc.update(X[30:40], np.r_[y[30:39], 7])
    with pytest.raises(ValueError, match="NaN"):
        acc.update(np.full((10, 5), np.inf), y[30:40])
    assert acc._n_buf == 30
    acc.update(X[30:], y[30:])  # 60 more rows overflow the buffer: a fold, then buffered
    assert_stats_equal(acc.result(), _stats_of(X, y, 4))
    assert acc._n_buf == 0
    a2 = ncdask.StatsAccumulator(4, 5, buffer_rows=64).update(X[:45], y[:45])
    b2 = ncdask.StatsAccumulator(4, 5, buffer_rows=64).update(X[45:], y[45:])
    assert_stats_equal(a2.merge(b2).result(), _stats_of(X, y, 4))  # merge folds both buffers
    for bad in (-1, 2.5, True):
        with pytest.raises(ValueError, match="buffer_rows"):
            ncdask.StatsAccumulator(4, 5, buffer_rows=bad)


@pytest.mark.parametrize("global_mean", ["unweighted", "weighted"])
def test_ranks_merge_exactly(global_mean):
    data, _ = golden("manyclass")
    X, y = data["X"], data["Y"].astype(np.int64)
    K = int(data["W"].shape[0])
    ranks = [ncdask.StatsAccumulator(K, X.shape[1], global_mean=global_mean) for _ in range(2)]
    for i in range(0, X.shape[0], 100):  # rank = batch index mod 2, as a DistributedSampler
        ranks[(i // 100) % 2].update(X[i:i + 100], y[i:i + 100])
    want = _stats_of(X, y, K, global_mean=global_mean)
    assert_stats_equal(ncdask.merge_stats(ranks[0].result(), ranks[1].result()).compute(), want)
    assert_stats_equal(ranks[0].merge(ranks[1]).result(), want)


def test_ignore_index_torch_and_bad_batches():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    X = rng.normal(size=(50, 3)).astype(np.float32)
    y = np.arange(50) % 4
    y[::5] = -100
    acc = ncdask.StatsAccumulator(4, 3, ignore_index=-100)
    acc.update(torch.from_numpy(X[:20]).to(torch.bfloat16).float(), torch.from_numpy(y[:20]))
    acc.update(X[20:], y[20:])
    Xb = torch.from_numpy(X[:20]).to(torch.bfloat16).float().numpy()
    want = _stats_of(np.concatenate([Xb, X[20:]]), y, 4, ignore_index=-100)
    assert_stats_equal(acc.result(), want)
    before = acc.result()
    with pytest.raises(ValueError, match="outside"):
        acc.update(X[:3], np.array([0, 1, 9]))
    with pytest.raises(ValueError, match="NaN or inf"):
        acc.update(np.full((2, 3), np.nan), np.array([0, 1]))
    with pytest.raises(ValueError, match="expected"):
        acc.update(X[:, :2], y)
    with pytest.raises(TypeError, match="integers"):
        acc.update(X[:2], np.array([0.0, 1.0]))
    assert_stats_equal(acc.result(), before)  # refused batches added nothing
    with pytest.raises(ValueError, match="no batch"):
        ncdask.StatsAccumulator(4, 3).result()


def test_result_feeds_measure_and_save(tmp_path):
    data, _ = golden("collapsed")
    X, y, W = data["X"], data["Y"].astype(np.int64), data["W"]
    acc = ncdask.StatsAccumulator(W.shape[0], X.shape[1]).update(X, y)
    st = acc.result()
    ncdask.save_stats(st, str(tmp_path / "st.zarr"))
    a = ncdask.measure(ncdask.load_stats(str(tmp_path / "st.zarr")), weights=W,
                       metrics=["nc1", "nc2", "nc3"]).compute()
    b = ncdask.measure(_stats_of(X, y, W.shape[0]), weights=W,
                       metrics=["nc1", "nc2", "nc3"]).compute()
    for v in a.data_vars:
        np.testing.assert_allclose(a[v].values, b[v].values, rtol=1e-10, err_msg=v)
