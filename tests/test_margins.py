"""Cosine margins (``margin_mean``, ``margin_hist``) against a dense N×K reference.

The margins ride in the NC4 decisions pass; ``measure`` on CuPy-like input is checked with
every other metric by ``test_array_namespace.py::test_class_stats_and_measure_end_to_end``.
"""


import numpy as np
import pytest
from dense_metrics import dense_margins, dense_stats, golden, split
from strict_xp import sx, to_host

import ncdask
import ncdask.graph.decisions as DG
from ncdask.kernels import decisions as Dk


@pytest.fixture(scope="module")
def case():
    data, _ = golden("wide")  # K=10, D=32
    X, y = data["X"], data["Y"].astype(np.int64)
    Xt, yt = data["X_test"].astype(np.float64), data["Y_test"].astype(np.int64)
    W = data["W"].astype(np.float64)
    noise = np.random.default_rng(5).normal(size=W.shape)
    W = W + 2 * noise * np.linalg.norm(W, axis=1).mean() / np.sqrt(W.shape[1])  # some m < 0
    return X, y, Xt, yt, W


def _measure(X, y, Xt, yt, W, *, tile, chunks, **kw):
    K = W.shape[0]
    return ncdask.measure(dense_stats(X, y, K, chunks=3), weights=W, tile_size=tile,
                          test=split(Xt, yt, chunks=chunks), metrics=["margins", "nc4"], **kw)


@pytest.mark.parametrize("chunks", [17, 250])
def test_margins_match_the_dense_reference(case, chunks):
    X, y, Xt, yt, W = case
    K = W.shape[0]
    M = np.stack([X[y == k].mean(0) for k in range(K)])
    ref = dense_margins(Xt, yt, W, M.mean(0), np.arange(K))  # μ_G: the mean of class means
    assert 0.1 < ref["margin_mean"] < 0.5 and (ref["margins"] < 0).any()  # not all one side
    for tile in (1, 3, K):
        res = _measure(X, y, Xt, yt, W, tile=tile, chunks=chunks).compute()
        np.testing.assert_allclose(float(res.margin_mean), ref["margin_mean"], rtol=1e-10)
        np.testing.assert_array_equal(res.margin_hist.values, ref["margin_hist"])
        assert int(res.margin_hist.sum()) == len(Xt)
        assert res.margin_hist.dims == ("margin_bin",) and res.sizes["margin_bin"] == 400
        np.testing.assert_allclose(res.margin_hi.values - res.margin_lo.values, 0.01)


def test_quantiles_read_from_the_histogram(case):
    X, y, Xt, yt, W = case
    res = _measure(X, y, Xt, yt, W, tile=3, chunks=40).compute()
    mG = dense_stats(X, y, W.shape[0])["global_mean"].values
    m = dense_margins(Xt, yt, W, mG, np.arange(W.shape[0]))["margins"]
    cum = np.cumsum(res.margin_hist.values) / int(res.margin_hist.sum())
    for q in (0.1, 0.5, 0.9):
        i = int(np.argmax(cum >= q))  # the first bin reaching q: the quantile lies in it
        lo, hi = float(res.margin_lo[i]), float(res.margin_hi[i])
        assert lo <= np.quantile(m, q, method="inverted_cdf") <= hi


def test_samples_without_a_class_row_follow_nc4(case):
    """``ignore_index`` and negative labels and classes ``min_count`` leaves out are not
    counted; a label past K raises as NC4 does."""
    X, y, Xt, yt, W = case
    K = W.shape[0]
    yt2 = yt.copy()
    yt2[::7], yt2[3::11] = -100, -1
    y2 = y.copy()
    y2[y2 == 4] = np.where(np.arange((y2 == 4).sum()) < 1, 4, 5)  # class 4: one sample
    keep = np.array([k for k in range(K) if (y2 == k).sum() >= 2])
    M = np.stack([X[y2 == k].mean(0) for k in keep])
    ref = dense_margins(Xt, yt2, W[keep], M.mean(0), keep)
    n = int(((yt2 >= 0) & np.isin(yt2, keep)).sum())
    for tile in (1, 3, K):
        res = ncdask.measure(dense_stats(X, y2, K), weights=W, tile_size=tile, min_count=2,
                             ignore_index=-100, test=split(Xt, yt2, chunks=60),
                             metrics=["margins"]).compute()
        np.testing.assert_allclose(float(res.margin_mean), ref["margin_mean"], rtol=1e-10)
        np.testing.assert_array_equal(res.margin_hist.values, ref["margin_hist"])
        assert int(res.margin_hist.sum()) == n < len(Xt)
    yt2[5] = K
    with pytest.raises(ValueError, match=f"test label {K} is outside"):
        _measure(X, y, Xt, yt2, W, tile=3, chunks=60).compute()


def test_one_pass_for_nc4_and_the_margins(case):
    """The margins add columns to the NC4 decision tiles, not a second pass; the decisions
    stay what they were."""
    X, y, Xt, yt, W = case
    both = _measure(X, y, Xt, yt, W, tile=3, chunks=40)
    layers = [k for k in both.__dask_graph__().layers if k.startswith("ncdask-nc4-tiles")]
    assert len(layers) == 1
    alone = ncdask.measure(dense_stats(X, y, W.shape[0], chunks=3), weights=W, tile_size=3,
                           test=split(Xt, yt, chunks=40), metrics=["nc4"]).compute()
    np.testing.assert_array_equal(both.agree_per_class.values, alone.agree_per_class.values)


def test_streamed_margins_equal_the_pass_over_the_split(case):
    """``EvalAccumulator`` batches over two ranks give the margins of the split; a summary
    without them (an older ncdask's) leaves them out."""
    X, y, Xt, yt, W = case
    stats = dense_stats(X, y, W.shape[0])
    ranks = [ncdask.EvalAccumulator(stats, weights=W) for _ in range(2)]
    for i in range(0, len(Xt), 100):
        ranks[(i // 100) % 2].update_test(Xt[i:i + 100], yt[i:i + 100])
    summary = ranks[0].merge(ranks[1]).test_summary()
    got = ncdask.measure(stats, weights=W, test=summary, metrics=["margins"]).compute()
    want = _measure(X, y, Xt, yt, W, tile=3, chunks=60).compute()
    np.testing.assert_allclose(float(got.margin_mean), float(want.margin_mean), rtol=1e-12)
    np.testing.assert_array_equal(got.margin_hist.values, want.margin_hist.values)
    old = summary.drop_vars(["margin_sum", "margin_n", "margin_hist"])
    res = ncdask.measure(stats, weights=W, test=old, metrics=["margins", "nc4"])
    assert "nc4_agree" in res and "margin_mean" not in res
    assert "no margin_hist" in res.attrs["left_out"]["margin_mean"]


def test_the_kernel_on_a_cupy_like_array():
    rng = np.random.default_rng(1)
    X, W, Mc = rng.normal(size=(30, 5)), rng.normal(size=(7, 5)), rng.normal(size=(7, 5))
    mG, b, g, pos = rng.normal(size=5), np.zeros(7), np.arange(7), rng.integers(-1, 7, 30)
    parts = [Dk.decision_tile(sx.asarray(X), sx.asarray(mG), sx.asarray(W[s]), sx.asarray(b[s]),
                              sx.asarray(Mc[s]), g[s], pos) for s in (slice(0, 3), slice(3, 7))]
    merged = Dk.merge_decisions(sx.concatenate(parts, axis=1))[:, 0]
    hist = Dk.margin_histogram(merged)
    assert isinstance(hist, sx.ndarray)
    ref = dense_margins(X, pos, W, mG, np.arange(7))
    np.testing.assert_array_equal(to_host(hist)[0], ref["margin_hist"])


@pytest.mark.parametrize("budget", [2**20])
def test_task_peak_with_margins_within_budget(decision_task_peaks, budget):
    """A decision task with the margin columns holds no more than the budget (the cosines
    are one more n×T beside the scores: no N×K array)."""
    peaks = decision_task_peaks
    rng = np.random.default_rng(0)
    K, D, N = 300, 64, 4000
    means = rng.normal(size=(K, D))
    y = np.repeat(np.arange(K), 2)
    X = means[y] + 0.1 * rng.normal(size=(2 * K, D))
    yt = rng.integers(0, K, N)
    res = ncdask.measure(dense_stats(X, y, K), weights=means, memory_budget=budget,
                         test=split(means[yt] + rng.normal(size=(N, D)), yt, chunks=4000),
                         metrics=["margin_mean"])
    assert np.isfinite(float(res.margin_mean.compute(scheduler="sync")))
    assert budget // 2 <= max(peaks) <= budget, (max(peaks), budget)


def _near_ties(dtype):
    """Rows whose best classes (triples ``w + k·δ·e_j``, ``μ + k·δ·e_j``, k = 0, 1, 2; in
    shuffled order, so the tiles split them) differ by ``δ·|x_j| ≥ δ``: far below float32's
    error on scores with large common parts (they cancel), far above float64's."""
    rng = np.random.default_rng(7)
    n, D, K, delta = 300, 32, 12, 1e-4
    big = np.ones(D)
    big[:K // 3] = 0  # e_j, j < K/3: the perturbed coordinates, zero in the common parts
    P, C, CM = (s * big * rng.normal(size=D) for s in (1e2, 1e3, 1e3))
    base = rng.normal(size=(K // 3, D)) * big
    k = np.arange(K)
    bump = delta * (k % 3)[:, None] * np.eye(D)[k // 3]
    perm = rng.permutation(K)
    W, Mc = (C + base[k // 3] + bump)[perm], (CM + base[k // 3] + bump)[perm]
    b = rng.normal(size=K // 3)[k // 3][perm]
    y = rng.integers(0, K, n)
    X = P + Mc[y] - CM + rng.normal(size=(n, D))
    X[:, :K // 3] = rng.choice([-1, 1], size=(n, K // 3)) * (1 + rng.random((n, K // 3)))
    return X.astype(dtype), P, W, b, Mc, y


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16])
def test_float32_scores_give_the_float64_decisions_on_near_ties(dtype):
    """The decision tiles' float32 GEMMs, rechecked in float64 where the bound leaves more
    than one class, return what a dense float64 pass does: the decisions exactly, the
    winners' scores and the margin columns to float64 rounding."""
    X, mG, W, b, Mc, y = _near_ties(dtype)
    x, K = X.astype(np.float64), W.shape[0]
    lin, ncc = x @ W.T + b, (Mc * Mc).sum(1) - 2 * (x - mG) @ Mc.T
    cos = (x - mG) @ W.T / np.outer(np.linalg.norm(x - mG, axis=1), np.linalg.norm(W, axis=1))
    i = np.arange(len(x))
    true, cos[i, y] = cos[i, y].copy(), -np.inf
    f32 = X.astype(np.float32) @ W.astype(np.float32).T + b.astype(np.float32)
    assert (f32.argmax(1) != lin.argmax(1)).mean() > 0.2  # float32 alone gets these wrong
    for tile in (1, 3, K):
        parts = [Dk.decision_tile(X, mG, W[s:s + tile], b[s:s + tile], Mc[s:s + tile],
                                  np.arange(s, min(s + tile, K)), y) for s in range(0, K, tile)]
        got = Dk.merge_decisions(np.concatenate(parts, axis=1))[:, 0]
        np.testing.assert_array_equal(got[:, 1], lin.argmax(1))
        np.testing.assert_array_equal(got[:, 3], ncc.argmin(1))
        np.testing.assert_allclose(got[:, 0], lin.max(1), rtol=1e-13)
        np.testing.assert_allclose(got[:, 2], ncc.min(1), rtol=1e-13)
        np.testing.assert_allclose(got[:, 4], true, rtol=0, atol=1e-11)
        np.testing.assert_allclose(got[:, 5], cos.max(1), rtol=0, atol=1e-11)


def test_the_tasks_take_the_split_as_stored(case, monkeypatch):
    """A float16 test split reaches the decision tasks as float16 (no float64 copy of it
    upstream) and decides as its float64 copy does."""
    X, y, Xt, yt, W = case
    seen = []
    orig = DG._decision_task
    monkeypatch.setattr(DG, "_decision_task", lambda X, *a, **k: seen.append(X.dtype)
                        or orig(X, *a, **k))
    half = Xt.astype(np.float16)
    got = _measure(X, y, half, yt, W, tile=3, chunks=40).compute(scheduler="sync")
    assert set(seen) == {np.dtype(np.float16)}
    want = _measure(X, y, half.astype(np.float64), yt, W, tile=3, chunks=40).compute()
    np.testing.assert_array_equal(got.agree_per_class.values, want.agree_per_class.values)
    np.testing.assert_array_equal(got.margin_hist.values, want.margin_hist.values)
    np.testing.assert_allclose(float(got.margin_mean), float(want.margin_mean), rtol=1e-12)
