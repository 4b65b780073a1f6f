"""The one-pass class-statistics graph: per-chunk partials, tree-merged."""

from __future__ import annotations

from typing import Any

import dask
import dask.array as da
import numpy as np
from dask.array.utils import meta_from_array
from dask.base import tokenize
from dask.delayed import Delayed

from ..kernels import stats as K
from ._tree import tree_reduce


def _chunk(
    X: Any, y: Any, n_classes: int, dtype: Any, ignore_index: int | None = None,
    in_scatter: Any = None,
) -> K.Partial:
    return K.chunk_partial(
        X, y, n_classes, dtype, ignore_index=ignore_index, in_scatter=in_scatter
    )


def partials_tree(
    X: da.Array,
    y: da.Array,
    n_classes: int,
    *,
    dtype: Any = np.float64,
    split_every: int = 8,
    ignore_index: int | None = None,
    in_scatter: np.ndarray | None = None,
) -> Delayed:
    """Build the graph of one pass over ``X``: a partial per row block, tree-merged.

    The partials are dicts of differently shaped arrays (counts, sums, m2,
    scatter), which ``dask.array.reduction`` cannot carry, so the tree is
    built from ``dask.delayed`` over the array's blocks: ``nblocks`` chunk
    tasks plus about ``nblocks / (split_every − 1)`` merge tasks, independent
    of K.

    Parameters
    ----------
    X : dask array (N, D)
        Embeddings; rechunked to a single block along the feature axis.
    y : dask array (N,)
        Labels; rechunked to X's row blocks.
    n_classes : int
        K.
    dtype : dtype
        Accumulation dtype.
    split_every : int
        Fan-in of the merge tree.
    ignore_index : int, optional
        Label of rows to drop.
    in_scatter : array (K,) of bool, optional
        Classes whose rows enter the pooled scatter (see
        :func:`ncdask.kernels.stats.chunk_partial`); one graph key, shared by
        every chunk task.

    Returns
    -------
    dask.delayed.Delayed
        The merged partial (a dict, see :mod:`ncdask.kernels.stats`).
    """
    if split_every < 2:
        raise ValueError(f"split_every must be >= 2, got {split_every}")
    X = X.rechunk({1: -1})
    y = y.rechunk((X.chunks[0],))
    token = tokenize(X, y, n_classes, np.dtype(dtype).str, ignore_index, in_scatter)
    xs = X.to_delayed().ravel()
    ys = y.to_delayed().ravel()
    mask = None if in_scatter is None else dask.delayed(np.asarray(in_scatter, dtype=bool))
    level = [
        dask.delayed(_chunk, pure=True)(
            xb, yb, n_classes, dtype, ignore_index, mask,
            dask_key_name=f"ncdask-partial-{token}-{i}",
        )
        for i, (xb, yb) in enumerate(zip(xs, ys, strict=True))
    ]
    return tree_reduce(
        level, K.merge_many, split_every=split_every, name=f"ncdask-merge-{token}"
    )


def finalized_arrays(
    partial: Delayed,
    n_classes: int,
    dim: int,
    *,
    global_mean: str,
    dtype: Any,
    meta: Any,
) -> dict[str, da.Array]:
    """Lazy dask arrays for each finished statistic of a (delayed) partial."""
    fin = dask.delayed(K.finalize, pure=True)(partial, global_mean)
    dt = np.dtype(dtype)
    shapes = {
        "means": ((n_classes, dim), dt),
        "global_mean": ((dim,), dt),
        "within_cov": ((dim, dim), dt),
        "var_norms": ((n_classes,), dt),
        "counts": ((n_classes,), np.dtype(np.int64)),
        "n_samples": ((), np.dtype(np.int64)),
    }
    out = {}
    for name, (shape, d) in shapes.items():
        out[name] = da.from_delayed(
            fin[name], shape=shape, dtype=d, meta=meta_from_array(meta, ndim=len(shape), dtype=d)
        )
    return out
