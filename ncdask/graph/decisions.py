"""NC4 and NC5 graphs: classifier/NCC decisions blocked over samples × class tiles, OOD means."""

from __future__ import annotations

from functools import partial

import dask.array as da
import numpy as np
from dask.array.utils import meta_from_array

from ncdask.graph._reduce import fold_rows, reduce_blocks
from ncdask.graph.pairwise import resolve_budget, tiles
from ncdask.kernels import decisions as Dk
from ncdask.kernels._xp import to_numpy


def _decision_task(X, mG, W, b, Mc, g, *pos, ncc):
    return Dk.decision_tile(X, mG, W, b, Mc, g, *pos, ncc=ncc)


# An NC4 task holds its inputs: the sample block X (n×D, the split's own dtype: the
# kernel casts it), W and Mc of the tile (T×D float64 each), b, the class indices, mG;
# float32 copies of W and Mc, a few length-T vectors, and ROW_EXTRA length-n ones. It
# works on 1/SLICES of the rows at a time: their float64 copy, float32 copy or a gather
# of W (n×D each), the float32 scores (n×T), with the margins a copy of them, and float64
# scores of the rows the bound leaves to a recheck (n×T at most) and 32 length-n
# vectors: at most 16·(D + 16 + T) bytes a row of the slice (12·T without the margins),
# its rounding up counted with the tile. :func:`nc4_tile_size` keeps the tile part under
# half the budget, :func:`rows_per_block` gives the rows the rest (tests/test_budget.py
# measures the peak).

#: Length-n float64 vectors of a decision block (output, positions) and a spare.
ROW_EXTRA = 10


def _tile_bytes(tile_size: int, dim: int) -> int:
    return tile_size * (24 * dim + 128) + 24 * dim + 2**14  # and small objects


def nc4_tile_size(n_classes: int, dim: int, tile_size: int, *,
                  budget: int | str | None = None) -> int:
    """Classes per NC4 tile: ``tile_size`` (at most K), shrunk to take ≤ half the budget."""
    budget = resolve_budget(budget)
    t = max(1, min(int(tile_size), int(n_classes)))
    if _tile_bytes(t, dim) > budget // 2:
        t = max(1, (budget // 2 - 24 * dim - 2**14) // (24 * dim + 128))
    return t


def rows_per_block(tile_size: int, dim: int, *, budget: int | str | None = None,
                   margins: bool = False, itemsize: int = 8) -> int:
    """Sample rows per NC4 block so that a task on a ``tile_size``-class tile fits ``budget``
    (with ``margins``, the :data:`~ncdask.kernels.decisions.MARGIN` columns too) for samples
    of ``itemsize`` bytes."""
    budget = resolve_budget(budget)
    per_slice_row = 16 * (dim + 16) + (16 if margins else 12) * tile_size  # 32 vectors
    per_row = itemsize * dim + per_slice_row // Dk.SLICES + 8 * ROW_EXTRA
    return max(1, (budget - _tile_bytes(tile_size, dim)) // per_row)


def decisions(X: da.Array, W: da.Array, b: da.Array, Mc: da.Array, mG: da.Array, *, tile_size: int,
              ncc: bool = True, split_every: int | None = None,
              budget: int | str | None = None, positions: da.Array | None = None) -> da.Array:
    """Best class of the classifier ``W``, ``b`` and of the NCC (means ``Mc`` centred on ``mG``)
    for samples ``X`` of any float dtype (each task casts its block). One task per (sample
    block, class tile), a tree over the tiles keeps the best; ``ncc=False`` when FAISS
    supplies the NCC. Returns float64 (N, 4): ``DECISION``; with
    ``positions`` (each sample's class row, −1: none) (N, 6): ``DECISION + MARGIN``."""
    K, D = Mc.shape
    budget = resolve_budget(budget)
    tile_size = nc4_tile_size(K, D, tile_size, budget=budget)
    chunks = tiles(K, tile_size)
    rows = rows_per_block(tile_size, D, budget=budget, margins=positions is not None,
                          itemsize=X.dtype.itemsize)
    X = X.rechunk((rows, -1))
    cols = 4 if positions is None else 6
    pos = () if positions is None else (positions.rechunk((X.chunks[0],)), "s")
    W = W.rechunk((chunks, -1))
    Mc = Mc.rechunk((chunks, -1))
    b = b.rechunk((chunks,))
    mG = mG.rechunk(-1)
    g = da.arange(K, chunks=(chunks,), dtype=np.int64)
    parts = da.blockwise(
        partial(_decision_task, ncc=ncc), "scq",
        X, "sd", mG, "d", W, "cd", b, "c", Mc, "cd", g, "c", *pos,
        new_axes={"q": cols}, adjust_chunks={"c": 1}, concatenate=True, align_arrays=False,
        dtype=np.float64, meta=meta_from_array(X, ndim=3, dtype=np.float64),
        token="ncdask-nc4-tiles",
    )
    return reduce_blocks(
        Dk.DECISIONS, parts, axis=1, split_every=split_every or 4,
        chunks=(X.chunks[0], (cols,)), meta=meta_from_array(X, ndim=2, dtype=np.float64),
        prefix="ncdask-nc4-merge",
    )


def margins(dec: da.Array) -> tuple[da.Array, da.Array]:
    """``(margin_mean, margin_hist)`` of :func:`decisions` with ``positions``: the mean
    margin over the samples with a class row (NaN if none) and their counts over
    :data:`~ncdask.kernels.decisions.MARGIN_EDGES`, on the decisions' device."""
    true, other = dec[:, 4], dec[:, 5]
    valid = true > -np.inf
    n = valid.sum()
    total = da.where(valid, true - other, 0.0).sum()
    mean = da.where(n > 0, total / da.maximum(n, 1), np.nan)
    nb = Dk.MARGIN_EDGES.size - 1
    hist = dec.map_blocks(Dk.margin_histogram, chunks=((1,) * dec.numblocks[0], (nb,)),
                          dtype=np.int64, meta=meta_from_array(dec, ndim=2, dtype=np.int64))
    return mean, hist.sum(axis=0)


def _faiss_task(X, mG, Mc):
    return Dk.faiss_nearest(X, mG, Mc).astype(np.float64)


def faiss_ncc(X: da.Array, Mc: da.Array, mG: da.Array) -> da.Array:
    """NCC decisions from an exact FAISS index (class positions, as float64)."""
    X = X.rechunk({1: -1})
    return da.blockwise(
        _faiss_task, "s", X, "sd", mG.rechunk(-1), "d", Mc.rechunk(-1), "cd",
        concatenate=True, align_arrays=False, dtype=np.float64,
        meta=meta_from_array(X, ndim=1, dtype=np.float64), token="ncdask-nc4-faiss",
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


def class_positions(labels: da.Array, present: np.ndarray, n_classes: int,
                    ignore_index: int | None = None) -> da.Array:
    """Each sample's row among the classes measured (``present``), on the host: −1 for
    labels ``ignore_index``, negative or of a class not measured; a label ``≥ n_classes``
    raises ``ValueError`` when computed, as :func:`agreement_counts`."""
    lookup = np.full(n_classes + 1, -1, dtype=np.int64)  # the last entry answers index −1
    lookup[present] = np.arange(len(present))
    labels = on_host(labels).astype(np.int64)
    labels = labels.map_blocks(_no_unknown_labels, n_classes, ignore_index, dtype=np.int64)
    return labels.map_blocks(_rows_of, lookup, dtype=np.int64)


def _rows_of(y: np.ndarray, lookup: np.ndarray) -> np.ndarray:
    return lookup[np.where((y >= 0) & (y < lookup.size - 1), y, -1)]


def agreement_counts(agree: da.Array, labels: da.Array, n_classes: int, *,
                     ignore_index: int | None = None) -> tuple[da.Array, da.Array]:
    """Per-class (by true label) hits and sample counts, counted on the host.
    Labels ``ignore_index`` (or negative) are dropped; a label ``≥ K`` raises
    ``ValueError`` when computed."""
    agree, labels = on_host(agree), on_host(labels).astype(np.int64)
    labels = labels.map_blocks(_no_unknown_labels, n_classes, ignore_index, dtype=np.int64)
    valid = (labels >= 0) & (labels < n_classes)
    lab = da.where(valid, labels, 0)
    hits = da.bincount(lab, weights=(agree & valid).astype(np.float64), minlength=n_classes)
    counts = da.bincount(lab, weights=valid.astype(np.float64), minlength=n_classes)
    return hits, counts


def ood_global_mean(X: da.Array, labels: da.Array | None = None, *, split_every: int = 8,
                    ignore_index: int | None = None) -> da.Array:
    """OOD global mean: unweighted mean of per-label means (labels ``ignore_index`` or
    negative left out), or the plain mean without labels."""
    X = X.rechunk({1: -1})
    D = X.shape[1]
    if labels is None:
        return X.astype(np.float64).mean(axis=0)
    labels = labels.rechunk((X.chunks[0],))
    mean = fold_rows(Dk.ood_mean_reduction(ignore_index), X, labels, how="tree",
                     split_every=split_every, prefix="ncdask-ood-mean")
    return da.from_delayed(mean, shape=(D,), dtype=np.float64,
                           meta=meta_from_array(X, ndim=1, dtype=np.float64))
