"""NC4 and NC5 graphs: classifier/NCC decisions blocked over samples × class tiles, OOD means."""

from __future__ import annotations

from functools import partial
from typing import Any

import dask
import dask.array as da
import numpy as np
from dask.array.utils import meta_from_array
from dask.base import tokenize

from ..kernels import decisions as Dk
from ..kernels._xp import to_numpy
from .pairwise import TILE_BUDGET, _tiles


def _decision_task(X, mG, W, b, Mc, g, *, ncc):
    return Dk.decision_tile(X, mG, W, b, Mc, g, ncc=ncc)


def _merge(x, axis=None, keepdims=True):
    out = Dk.merge_decisions(x)
    return out if keepdims else out[:, 0, :]


def _identity(x, axis=None, keepdims=True):
    return x


def rows_per_block(tile_size: int, dim: int, *, budget: int = TILE_BUDGET) -> int:
    """Sample rows per block so that a block's ``rows × tile`` scores fit ``budget``."""
    return max(1, budget // (8 * (3 * tile_size + 2 * dim)))


def decisions(
    X: da.Array,
    W: da.Array,
    b: da.Array,
    Mc: da.Array,
    mG: da.Array,
    *,
    tile_size: int,
    ncc: bool = True,
    split_every: int | None = None,
) -> da.Array:
    """Best class of the linear classifier and of the NCC for every sample.

    One task per (sample block, class tile) pair runs
    :func:`ncdask.kernels.decisions.decision_tile` (two GEMMs); a tree
    reduction over the class tiles keeps the best of each.

    Parameters
    ----------
    X : dask array (N, D)
    W : dask array (K, D)
    b : dask array (K,)
    Mc : dask array (K, D)
        Centred class means.
    mG : dask array (D,)
        The global mean they are centred on.
    tile_size : int
    ncc : bool
        Also the NCC decisions (False when FAISS supplies them).

    Returns
    -------
    dask array (N, 4)
        Columns :data:`ncdask.kernels.decisions.DECISION`.
    """
    K, D = Mc.shape
    chunks = _tiles(K, tile_size)
    rows = rows_per_block(min(tile_size, K), D)
    X = X.rechunk((rows, -1))
    W = W.rechunk((chunks, -1))
    Mc = Mc.rechunk((chunks, -1))
    b = b.rechunk((chunks,))
    mG = mG.rechunk(-1)
    g = da.arange(K, chunks=(chunks,), dtype=np.int64)
    parts = da.blockwise(
        partial(_decision_task, ncc=ncc),
        "scq",
        X,
        "sd",
        mG,
        "d",
        W,
        "cd",
        b,
        "c",
        Mc,
        "cd",
        g,
        "c",
        new_axes={"q": 4},
        adjust_chunks={"c": 1},
        concatenate=True,
        align_arrays=False,
        dtype=X.dtype,
        meta=meta_from_array(X, ndim=3),
        token="ncdask-nc4-tiles",
    )
    return da.reduction(
        parts,
        chunk=_identity,
        combine=_merge,
        aggregate=_merge,
        axis=1,
        keepdims=False,
        dtype=X.dtype,
        split_every=split_every,
        concatenate=True,
        meta=meta_from_array(X, ndim=2),
        name="ncdask-nc4-merge",
    )


def _faiss_task(X, mG, Mc):
    return Dk.faiss_nearest(X, mG, Mc).astype(np.float64)


def faiss_ncc(X: da.Array, Mc: da.Array, mG: da.Array) -> da.Array:
    """NCC decisions from an exact FAISS index (class positions, as float64)."""
    X = X.rechunk({1: -1})
    return da.blockwise(
        _faiss_task,
        "s",
        X,
        "sd",
        mG.rechunk(-1),
        "d",
        Mc.rechunk(-1),
        "cd",
        concatenate=True,
        align_arrays=False,
        dtype=np.float64,
        meta=meta_from_array(X, ndim=1, dtype=np.float64),
        token="ncdask-nc4-faiss",
    )


def on_host(x: da.Array) -> da.Array:
    """The same lazy array with NumPy blocks (CuPy blocks are copied to the host)."""
    if isinstance(x._meta, np.ndarray):
        return x
    return x.map_blocks(to_numpy, meta=np.empty((0,) * x.ndim, dtype=x.dtype))


def agreement_counts(
    agree: da.Array, labels: da.Array, n_classes: int
) -> tuple[da.Array, da.Array]:
    """Per-class (by true label) hits and sample counts; labels outside ``[0, K)`` are dropped.

    The counting runs on the host (one boolean and one label per sample).
    """
    agree, labels = on_host(agree), on_host(labels).astype(np.int64)
    valid = (labels >= 0) & (labels < n_classes)
    lab = da.where(valid, labels, 0)
    hits = da.bincount(lab, weights=(agree & valid).astype(np.float64), minlength=n_classes)
    counts = da.bincount(lab, weights=valid.astype(np.float64), minlength=n_classes)
    return hits, counts


# --------------------------------------------------------------------------- NC5


def ood_global_mean(
    X: da.Array,
    labels: da.Array | None = None,
    *,
    split_every: int = 8,
    ignore_index: int | None = None,
) -> da.Array:
    """OOD global mean: unweighted mean of per-label means, or the plain mean without labels.

    With labels, samples labelled ``ignore_index`` (or negative) are left out.
    """
    X = X.rechunk({1: -1})
    D = X.shape[1]
    if labels is None:
        return X.astype(np.float64).mean(axis=0)
    labels = labels.rechunk((X.chunks[0],))
    token = tokenize(X, labels, ignore_index)
    level = [
        dask.delayed(Dk.label_sums, pure=True)(
            xb, yb, ignore_index, dask_key_name=f"ncdask-ood-{token}-{i}"
        )
        for i, (xb, yb) in enumerate(
            zip(X.to_delayed().ravel(), labels.to_delayed().ravel(), strict=True)
        )
    ]
    depth = 0
    while len(level) > 1:
        level = [
            dask.delayed(Dk.merge_label_sums, pure=True)(
                level[i : i + split_every], dask_key_name=f"ncdask-ood-merge-{token}-{depth}-{i}"
            )
            for i in range(0, len(level), split_every)
        ]
        depth += 1
    top: Any = level[0]
    if len(level) == 1 and depth == 0:
        top = dask.delayed(Dk.merge_label_sums, pure=True)([top])
    mean = dask.delayed(Dk.mean_of_label_means, pure=True)(top)
    return da.from_delayed(
        mean, shape=(D,), dtype=np.float64, meta=meta_from_array(X, ndim=1, dtype=np.float64)
    )
