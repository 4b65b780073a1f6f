"""Every declared metric against the dense reference, at several tile sizes and chunkings.

A metric is a declaration in :data:`ncdask.metrics.declarations.METRICS`; this test is
parametrised over that table, so a new declaration without a dense reference
(``tests/dense_metrics.py``) fails here.
"""

import dask.array as da
import numpy as np
import pytest
from dense_metrics import class_data, dense_metrics, dense_stats, golden, split

import ncdask
from ncdask.graph.pairwise import pairwise_moments
from ncdask.kernels.pairwise import FINAL
from ncdask.metrics.declarations import METRICS, ON_REQUEST, Metric


@pytest.fixture(scope="module")
def wide():
    data, _ = golden("wide")  # K=10, D=32: every metric is defined (nc1_svd needs K-1 < D)
    K = data["W"].shape[0]
    b = np.random.default_rng(0).normal(size=K) * 0.1
    y = data["Y"].astype(np.int64)
    ref = dense_metrics(data["X"], y, K, W=data["W"], b=b,
                        X_test=data["X_test"], y_test=data["Y_test"].astype(np.int64),
                        X_ood=data["X_ood"], y_ood=data["Y_ood"].astype(np.int64),
                        by_frequency=3)
    return data, b, ref


@pytest.mark.parametrize("name", list(METRICS))
def test_every_declared_metric_matches_the_dense_reference(name, wide):
    data, b, ref = wide
    assert name in ref, f"{name} is declared but has no dense reference"
    K = data["W"].shape[0]
    y = data["Y"].astype(np.int64)
    for tile in (1, 3, K):
        for chunks in (1, 4):
            stats = dense_stats(data["X"], y, K, chunks=chunks)
            res = ncdask.measure(
                stats, metrics=[name], weights=data["W"], bias=b, tile_size=tile,
                by_frequency=3 if name in ON_REQUEST else None,
                train=split(data["X"], y, chunks=chunks * 97),  # 31 or 8 row chunks
                test=split(data["X_test"], data["Y_test"].astype(np.int64), chunks=17),
                ood=split(data["X_ood"], data["Y_ood"].astype(np.int64), chunks=13))
            want = list(ON_REQUEST) if name in ON_REQUEST else [name]  # by_frequency adds all
            assert sorted(res.data_vars) == sorted(want)
            # computes this metric's graph only (the others added are checked as their own name)
            np.testing.assert_allclose(res[name].compute().values, ref[name], rtol=1e-8,
                                       atol=1e-11, err_msg=f"{name}, tile {tile}, chunks {chunks}")


def test_interference_equals_the_pairwise_kernel():
    """The closed form (no pair visited) against the fused pairwise kernel's cosines."""
    for case in ("manyclass", "wide"):  # K=40 > D=8: the D×D Gram; K=10 < D=32: the K×K
        data, _ = golden(case)
        K = data["W"].shape[0]
        stats = dense_stats(data["X"], data["Y"].astype(np.int64), K, chunks=7)
        res = ncdask.measure(stats, metrics=["interference", "nc2_equiangle"],
                             tile_size=3).compute()
        n = K * (K - 1) / 2
        var_pairs = float(res.nc2_equiangle) ** 2 * (n - 1) / n
        np.testing.assert_allclose(float(res.interference_var), var_pairs, rtol=1e-9)
        Mc = da.from_array(stats["means"].values - stats["global_mean"].values, chunks=(3, -1))
        cos = pairwise_moments(Mc, stats=["cos"], tile_size=3, inv_km1=1 / (K - 1)).compute()
        np.testing.assert_allclose(float(res.interference_mean), cos[0, FINAL.index("mean")],
                                   rtol=1e-9, atol=1e-15)


def test_effective_ranks_of_a_collapsed_geometry():
    """Simplex-ETF means (balanced): erank_between = K-1; an ETF classifier: erank_w = K-1
    and nc0_w_sum = 0; isotropic within-class noise: erank_within close to D."""
    K, D, n = 6, 12, 400
    E = np.eye(K) - 1.0 / K
    U = np.linalg.qr(np.random.default_rng(0).normal(size=(D, K)))[0]
    means = 5 * E @ U.T
    rng = np.random.default_rng(1)
    y = np.repeat(np.arange(K), n)
    noise = rng.normal(size=(K * n, D))
    for k in range(K):
        noise[y == k] -= noise[y == k].mean(0)
    X = means[y] + 0.1 * noise
    stats = dense_stats(X, y, K)
    res = ncdask.measure(stats, weights=means, metrics=["erank", "nc0"]).compute()
    assert float(res.erank_between) == pytest.approx(K - 1, rel=1e-9)
    assert float(res.erank_w) == pytest.approx(K - 1, rel=1e-9)
    assert float(res.nc0_w_sum) == pytest.approx(0, abs=1e-12)
    assert D - 1 < float(res.erank_within) <= D


def test_a_declaration_is_computed_one_way():
    with pytest.raises(ValueError, match="exactly one"):
        Metric("x", "x", "x")
    with pytest.raises(ValueError, match="unknown pairwise column"):
        Metric("x", "x", "x", pair=("cos", "median"))


def test_head_tail_breakdown_by_class_frequency():
    """by_frequency=n: bins of near-equal class counts, most frequent first; CDNV within
    each bin, each bin's share of nc1_quot (the shares add up), NC4 within each bin."""
    rng = np.random.default_rng(5)
    K, D = 9, 10
    n = np.array([50, 3, 20, 8, 40, 2, 12, 30, 5])
    means = 4 * rng.normal(size=(K, D))
    X, y = class_data(rng, means, np.repeat(np.arange(K), n))
    W = means + 0.5 * rng.normal(size=(K, D))
    Xt, yt = class_data(rng, means, rng.integers(0, K, 300), noise=2)
    stats = dense_stats(X, y, K, chunks=4)
    res = ncdask.measure(stats, weights=W, test=split(Xt, yt, chunks=50), by_frequency=3,
                         tile_size=2).compute()
    bins = [[0, 4, 7], [2, 6, 3], [8, 1, 5]]  # ranked by count: 50 40 30 | 20 12 8 | 5 3 2
    assert res.frequency_bin.values.tolist() == [0, 1, 2]
    assert res.bin_min_count.values.tolist() == [30, 8, 2]
    assert res.bin_max_count.values.tolist() == [50, 20, 5]
    assert res.bin_n_classes.values.tolist() == [3, 3, 3]
    ref = dense_metrics(X, y, K, W=W, X_test=Xt, y_test=yt)
    M = np.stack([X[y == k].mean(0) for k in range(K)])
    v = np.array([((X[y == k] - M[k]) ** 2).sum(1).mean() for k in range(K)])
    Mc = M - M.mean(0)
    lin, ncc = (Xt @ W.T).argmax(1), ((Xt[:, None] - M[None]) ** 2).sum(-1).argmin(1)
    for i, b in enumerate(bins):
        iu = np.triu_indices(len(b), 1)
        d2 = ((M[b][:, None] - M[b][None]) ** 2).sum(-1)[iu]
        cdnv = (((v[b][:, None] + v[b][None]) / 2)[iu] / d2).mean()
        share = (n[b] * v[b]).sum() / n.sum() / ((Mc * Mc).sum() / K)
        agree = (lin == ncc)[np.isin(yt, b)].mean()
        np.testing.assert_allclose(
            [res.nc1_cdnv_by_frequency[i], res.nc1_quot_by_frequency[i],
             res.nc4_agree_by_frequency[i]], [cdnv, share, agree], rtol=1e-10)
    np.testing.assert_allclose(float(res.nc1_quot_by_frequency.sum()), ref["nc1_quot"],
                               rtol=1e-10)
    assert "nc1_cdnv_by_frequency" not in ncdask.measure(stats)  # only when asked for
    with pytest.raises(ValueError, match="at most one bin per class"):
        ncdask.measure(stats, by_frequency=10)
    with pytest.raises(ValueError, match="positive integer"):
        ncdask.measure(stats, by_frequency=0)


def test_cli_by_frequency_prints_and_keeps_the_breakdown(tmp_path, capsys):
    from ncdask import cli

    rng = np.random.default_rng(7)
    K, D = 6, 8
    n = np.array([40, 5, 25, 10, 30, 3])
    means = 4 * rng.normal(size=(K, D))
    X, y = class_data(rng, means, np.repeat(np.arange(K), n))
    url, out = str(tmp_path / "s.zarr"), str(tmp_path / "r.zarr")
    ncdask.EmbeddingStore.from_arrays(url, {"train": (X, y)}, W=means)
    rc = cli.main(["analyze", url, "--metrics", "nc1_quot", "--by-frequency", "2", "--out", out])
    printed = capsys.readouterr().out
    assert rc == 0
    assert "by class frequency" in printed and "25-40" in printed and "3-10" in printed
    assert "nc1_pinv_by_frequency" in printed  # the train split is at hand: its pinv shares
    got = ncdask.open_results(out)
    stored = X.astype(np.float32)  # the store keeps float32 embeddings
    want = ncdask.measure(dense_stats(stored, y, K), weights=means, metrics="nc1_quot",
                          by_frequency=2, train=split(stored, y)).compute()
    for v in ("nc1_cdnv_by_frequency", "nc1_quot_by_frequency", "nc1_pinv_by_frequency"):
        np.testing.assert_allclose(got[v].values, want[v].values, rtol=1e-9, err_msg=v)
    assert "nc4_agree_by_frequency" in got.attrs["left_out"]  # no test split given
