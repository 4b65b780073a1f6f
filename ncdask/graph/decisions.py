"""NC4 and NC5 graphs: classifier/NCC decisions blocked over samples × class tiles, OOD means."""

from __future__ import annotations

from functools import partial

import dask.array as da
import numpy as np
from dask.array.utils import meta_from_array

from ncdask.kernels import decisions as Dk
from ncdask.kernels._xp import to_numpy
from ncdask.graph._reduce import fold_rows, reduce_blocks
from ncdask.graph.pairwise import _tiles, resolve_budget


def _decision_task(X, mG, W, b, Mc, g, *, ncc):
    return Dk.decision_tile(X, mG, W, b, Mc, g, ncc=ncc)


# What one NC4 task holds (``decision_tile`` on a block of ``n`` sample rows
# and a tile of ``T`` classes; every array is float64, 8 bytes a number, as
# ``measure`` casts the test embeddings to float64 before blocking them):
#
# * inputs: the sample block X (n × D), the classifier rows W and the centred
#   means Mc of the tile (T × D each), b, the class indices (T) and mG (D);
# * the linear scores ``X @ W.T`` (n × T), freed before the NCC part;
# * the NCC part: the centred block ``X − mG`` (n × D), its scores
#   ``Xc @ Mc.T`` (n × T, updated in place) and the transient ``Mc * Mc``
#   (T × D) of the squared norms;
# * the output (n × 4) and a few length-n vectors (argmax indices, arange, gathers).
#
# So the peak is at most 8 · [n · (2D + T + ROW_EXTRA) + 3·T·D + 3·T + D] bytes:
# :func:`nc4_tile_size` keeps the tile part (``3·T·D``) under half the budget
# and :func:`rows_per_block` gives the rows the rest. A merge task holds
# ``n × split_every × 4`` numbers (16 a row at the default fan-in of 4,
# against 2D + T + 10 a row in a decision task).
# tests/test_budget.py measures the peak with tracemalloc at small budgets.

#: Bytes per number of an NC4 block (float64).
ITEMSIZE = 8
#: Length-n vectors of a decision task besides its n × D and n × T arrays: the
#: n × 4 output, both argmax index vectors, the row index, the gathered best
#: scores and classes (9 at the NCC step's peak), and one spare.
ROW_EXTRA = 10


def _tile_bytes(tile_size: int, dim: int) -> int:
    return ITEMSIZE * (3 * tile_size * dim + 3 * tile_size + dim)


def nc4_tile_size(
    n_classes: int, dim: int, tile_size: int, *, budget: int | str | None = None
) -> int:
    """Classes per NC4 tile: ``tile_size`` (at most K), shrunk to take ≤ half the budget."""
    budget = resolve_budget(budget)
    t = max(1, min(int(tile_size), int(n_classes)))
    if _tile_bytes(t, dim) > budget // 2:
        t = max(1, (budget // 2 // ITEMSIZE - dim) // (3 * dim + 3))
    return t


def rows_per_block(tile_size: int, dim: int, *, budget: int | str | None = None) -> int:
    """Sample rows per NC4 block so that a task on a ``tile_size``-class tile fits ``budget``.

    See the comment above for what a task holds; ``budget`` defaults to
    :func:`ncdask.graph.pairwise.resolve_budget`.
    """
    budget = resolve_budget(budget)
    per_row = ITEMSIZE * (2 * dim + tile_size + ROW_EXTRA)
    return max(1, (budget - _tile_bytes(tile_size, dim)) // per_row)


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
    budget: int | str | None = None,
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
        Classes per tile, lowered when its tiles would take over half of ``budget``.
    ncc : bool
        Also the NCC decisions (False when FAISS supplies them).
    split_every : int, optional
        Fan-in of the merge tree over the class tiles.
    budget : int or str, optional
        Bytes one task may hold (default :func:`ncdask.graph.pairwise.resolve_budget`);
        sets the tile and the sample rows per block.

    Returns
    -------
    dask array (N, 4)
        Columns :data:`ncdask.kernels.decisions.DECISION`.
    """
    K, D = Mc.shape
    budget = resolve_budget(budget)
    tile_size = nc4_tile_size(K, D, tile_size, budget=budget)
    chunks = _tiles(K, tile_size)
    rows = rows_per_block(tile_size, D, budget=budget)
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
    return reduce_blocks(
        Dk.DECISIONS, parts, axis=1, split_every=split_every or 4,
        chunks=(X.chunks[0], (4,)), meta=meta_from_array(X, ndim=2), prefix="ncdask-nc4-merge",
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


def _no_unknown_labels(y: np.ndarray, n_classes: int, ignore_index: int | None) -> np.ndarray:
    bad = y >= n_classes
    if ignore_index is not None:
        bad &= y != ignore_index
    if bad.any():
        raise ValueError(
            f"test label {int(y[bad][0])} is outside the statistics' {n_classes} classes: "
            "NC4 needs test data of the same classes (pass ignore_index= for padding)")
    return y


def agreement_counts(
    agree: da.Array, labels: da.Array, n_classes: int, *, ignore_index: int | None = None
) -> tuple[da.Array, da.Array]:
    """Per-class (by true label) hits and sample counts.

    Samples labelled ``ignore_index`` (or negative) are dropped; a label
    ``≥ K`` raises ``ValueError`` when computed (a test split of another
    classifier's classes used to be counted silently short). The counting
    runs on the host (one boolean and one label per sample).
    """
    agree, labels = on_host(agree), on_host(labels).astype(np.int64)
    labels = labels.map_blocks(_no_unknown_labels, n_classes, ignore_index, dtype=np.int64)
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
    mean = fold_rows(Dk.ood_mean_reduction(ignore_index), X, labels, how="tree",
                     split_every=split_every, prefix="ncdask-ood-mean")
    return da.from_delayed(
        mean, shape=(D,), dtype=np.float64, meta=meta_from_array(X, ndim=1, dtype=np.float64)
    )
