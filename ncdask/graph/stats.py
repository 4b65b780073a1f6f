"""The one-pass class-statistics graph: a partial per row block, tree-merged."""

from __future__ import annotations

from typing import Any

import dask.array as da
import numpy as np

from ncdask.kernels import stats as K
from ncdask.graph._reduce import fields, fold_rows


def stats_arrays(
    X: da.Array,
    y: da.Array,
    n_classes: int,
    *,
    dtype: Any = np.float64,
    split_every: int = 8,
    ignore_index: int | None = None,
    in_scatter: np.ndarray | None = None,
    global_mean: str = "unweighted",
) -> dict[str, da.Array]:
    """Lazy class statistics of ``X`` from one pass: a partial per row block, tree-merged.

    The partials are small here (this graph serves few classes: the one-class
    OOD statistics), so a tree (:func:`ncdask.graph._reduce.fold_rows`) of
    :func:`ncdask.kernels.stats.reduction` suits them; the class statistics
    of a split use the chains of :mod:`ncdask.graph.tiled_stats`.

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
        :func:`ncdask.kernels.stats.chunk_partial`); stored once in the graph.
    global_mean : {"unweighted", "weighted"}

    Returns
    -------
    dict of dask arrays
        ``means (K, D)``, ``global_mean (D,)``, ``within_cov (D, D)``,
        ``var_norms (K,)``, ``counts (K,)`` and ``n_samples ()``.
    """
    X = X.rechunk({1: -1})
    y = y.rechunk((X.chunks[0],))
    red = K.reduction(n_classes, dtype, ignore_index=ignore_index, global_mean=global_mean)
    shared = () if in_scatter is None else (np.asarray(in_scatter, dtype=bool),)
    result = fold_rows(red, X, y, how="tree", split_every=split_every, shared=shared,
                       prefix="ncdask-stats")
    dt, D = np.dtype(dtype), X.shape[1]
    i8 = np.dtype(np.int64)
    return fields(result, {
        "means": ((n_classes, D), dt),
        "global_mean": ((D,), dt),
        "within_cov": ((D, D), dt),
        "var_norms": ((n_classes,), dt),
        "counts": ((n_classes,), i8),
        "n_samples": ((), i8),
    }, X._meta)
