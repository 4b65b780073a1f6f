"""The one reduction engine of ncdask.graph: trees and chains of kernel triples."""

from __future__ import annotations

import functools
import warnings

import dask
import dask.array as da
import numpy as np
import pytest
from dask.highlevelgraph import HighLevelGraph
from dense import dense_stat_arrays
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import irregular_chunks, labelled_data

from ncdask.graph import _reduce as R
from ncdask.graph.tiled_stats import class_tiled_stats
from ncdask.kernels import tiled_stats as KT
from ncdask.kernels._reduction import Reduction, identity, sum_all
from ncdask.kernels.closed_forms import GRAM


def _concat(parts):
    return [x for p in parts for x in p]


def _rows(x):
    return [float(v) for v in np.asarray(x).ravel()]


def _append(acc, x):
    return (acc or []) + _rows(x)


def test_a_reduction_needs_a_chunk_or_a_fold():
    with pytest.raises(ValueError, match="chunk or a fold"):
        Reduction(combine=sum_all)
    with pytest.raises(ValueError, match="split_every"):
        R.tree({}, "t", Reduction(combine=sum_all, chunk=len), ["a"], split_every=1)


@pytest.mark.parametrize("n_blocks", [1, 2, 5, 17])
@pytest.mark.parametrize("split_every", [2, 3, 8])
def test_tree_keeps_block_order_and_finalizes_once(n_blocks, split_every):
    x = da.arange(n_blocks * 3, chunks=3)
    red = Reduction(chunk=_rows, combine=_concat, finalize=tuple)
    out = R.fold_rows(red, x, how="tree", split_every=split_every).compute(scheduler="sync")
    assert out == tuple(float(v) for v in range(n_blocks * 3))


@pytest.mark.parametrize("n_chains", [1, 2, 3, 8])
@pytest.mark.parametrize("batch", [None, 1, 2])
def test_chains_fold_every_block_once_whatever_the_chains_and_batches(n_chains, batch):
    n = 7
    dsk: dict = {("x", i): np.arange(3 * i, 3 * i + 3, dtype=float) for i in range(n)}
    red = Reduction(fold=_append, combine=_concat)
    seen: list = []

    def read(lo, hi, wait):
        seen.append((lo, hi, list(wait)))
        return [(("x", i),) for i in range(lo, hi)]

    ends = R.chains(dsk, "c", red, n, read, n_chains=n_chains, batch=batch, after="start")
    dsk["start"] = 0
    assert len(ends) == min(n, n_chains)
    top = R.finish(dsk, "c", red, ends)
    got = dask.get(dsk, top)
    assert sorted(got) == [float(v) for v in range(3 * n)]
    # each chain folds its blocks in order: block i after block i - C
    for end in ends:
        chain = dask.get(dsk, end)
        assert chain == sorted(chain)
    if batch is None:
        assert [s[:2] for s in seen] == [(0, n)]
    else:  # batch b waits for the folds of batch b - 2, the first two for ``after``
        assert [s[:2] for s in seen] == [(lo, min(n, lo + batch)) for lo in range(0, n, batch)]
        assert seen[0][2] == ["start"] and (len(seen) < 2 or seen[1][2] == ["start"])
        for b in range(2, len(seen)):
            lo, hi = seen[b - 2][:2]
            assert seen[b][2] == [("c-fold", i) for i in range(lo, hi)]


def test_throttled_reads_wait_for_the_named_tasks():
    x = da.arange(6, chunks=3) + 1  # two tasks a block: the load and the add
    dsk = {"w": (sum, [1, 2])}
    blocks = [(k,) for k in R.row_keys(x)]
    read = R.throttled(dsk, "g", [x], blocks, 2)
    assert read(0, 2, []) == blocks
    got = [k for (k,) in read(0, 2, ["w"])]
    assert got != [k for (k,) in blocks]
    graph = {**dict(x.__dask_graph__()), **dsk}
    deps = {k: set() for k in got}
    for k in got:  # every copy depends on "w", through the gate
        stack = [k]
        while stack:
            node = dsk.get(stack.pop())
            if hasattr(node, "dependencies"):  # the copies and the gate (not "w" itself)
                deps[k] |= set(node.dependencies)
                stack.extend(node.dependencies)
    assert all("w" in d for d in deps.values())
    np.testing.assert_array_equal(np.concatenate(dask.get(graph, got)), np.arange(1, 7))


def test_reduce_blocks_reduces_only_the_named_axes():
    a = da.from_array(np.arange(24, dtype=float).reshape(4, 6), chunks=(2, 2))
    red = Reduction(chunk=identity, combine=_row_sums_of, finalize=np.asarray)
    out = R.reduce_blocks(red, a, axis=1, split_every=2, chunks=((2, 2), (1,)),
                          meta=np.empty((0, 0)), prefix="t")
    np.testing.assert_array_equal(out.compute(), a.compute().sum(axis=1, keepdims=True))


def _row_sums_of(parts):
    return sum(np.asarray(p).sum(axis=1, keepdims=True) for p in parts)


def test_shared_values_are_stored_once_and_the_graph_is_deterministic():
    rng = np.random.default_rng(0)
    X = da.from_array(rng.normal(size=(40, 3)), chunks=(5, 3))
    y = da.from_array(rng.integers(0, 4, size=40), chunks=5)
    mask = np.array([True, False, True, True])
    a = class_tiled_stats(X, y, 4, tile=4, in_scatter=mask)
    b = class_tiled_stats(X, y, 4, tile=4, in_scatter=mask)
    assert a["means"].name == b["means"].name  # same inputs, same keys: dask shares the pass
    g = a["within_cov"].__dask_graph__()
    layers = g.layers if isinstance(g, HighLevelGraph) else {"": g}
    stored = [k for layer in layers.values() for k, v in layer.items()
              if isinstance(v, np.ndarray) and v.dtype == bool and v.shape == (4,)]
    assert len(stored) == 1  # one graph key, read by all 8 chunk tasks
    Xn, yn = X.compute(), y.compute()
    keep = mask[yn]
    m = np.stack([Xn[yn == k].mean(0) for k in range(4)])
    c = Xn[keep] - m[yn[keep]]
    np.testing.assert_allclose(a["within_cov"].compute(), c.T @ c / keep.sum(), rtol=1e-12)


@settings(max_examples=25, deadline=None)
@given(data=labelled_data(max_rows=60), n_chains=st.integers(1, 4), split_every=st.integers(2, 5))
def test_trees_and_chains_do_not_depend_on_the_blocks(data, n_chains, split_every):
    """The same numbers whatever the row blocks, the fan-in and the number of chains."""
    X, y, K, cuts, _ = data
    chunks = irregular_chunks(len(X), cuts)
    Xd = da.from_array(X, chunks=(chunks, -1))
    yd = da.from_array(y, chunks=(chunks,))
    # chains: XᵀX folded block by block
    G = R.fold_rows(GRAM, Xd, Xd, how="chains", chains_=n_chains).compute(scheduler="sync")
    np.testing.assert_allclose(G, X.T @ X, rtol=1e-10, atol=1e-9 * np.abs(X).max() ** 2)
    # a tree: the class statistics of every block, merged split_every at a time
    red = Reduction(chunk=functools.partial(KT.fold, None, n_classes=K), combine=KT.merge_many,
                    finalize=KT.finish)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # empty classes' NaN means
        fin = R.fold_rows(red, Xd, yd, how="tree", split_every=split_every).compute()
    got = {"counts": fin["counts"], "means": fin["means"],
           "within_cov": fin["scatter"] / max(int(fin["counts"].sum()), 1)}
    ref = dense_stat_arrays(X, y, K)
    np.testing.assert_array_equal(got["counts"], ref["counts"])
    np.testing.assert_allclose(got["means"], ref["means"], rtol=1e-10)
    np.testing.assert_allclose(got["within_cov"], ref["within_cov"], rtol=1e-8,
                               atol=1e-8 * np.abs(ref["within_cov"]).max())
