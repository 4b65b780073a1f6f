"""Per-chunk kernels of the class statistics tiled over classes.

Every function here sees one row chunk (or a list of partial results) and
one *group*: a contiguous range ``[lo, hi)`` of class ids. Nothing here
allocates an array with more than ``max(rows of the chunk, hi − lo)`` rows
of width D, so a K×D array exists only when the caller makes the group the
whole class axis.

Two kinds of partial result:

*sums* ``{"ids", "counts", "sums"}``
    the classes of the group present in the chunk (sorted global ids), their
    sample counts and per-class sums (float, m×D).
*summary* ``{"ids", "counts", "sums", "m2", "scatter"}``
    the same plus, per class, ``Σ‖x − μ_ck‖²`` about the chunk's own class
    mean, and the D×D scatter of the rows about those means (the one-pass
    form, merged with Chan's exact update by :func:`merge_summaries`).
*centred* ``{"m2", "scatter"}``
    ``m2`` (hi − lo,) and the D×D scatter of the group's rows about given
    class means (the second pass of the two-pass form: no cross terms).

Rows are upcast to the accumulation dtype in pieces of about
:data:`PIECE_BYTES` (float16/bfloat16-sized stores keep their halved I/O and
never hold a float64 copy of a whole chunk).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from ._xp import array_namespace
from .stats import check_labels, class_sums

#: Bytes of one upcast piece of rows (float64). Pieces of 8 MiB keep the
#: scatter GEMM at full rate (≥ 256 rows at D ≤ 4096) while the upcast copy
#: stays a small fraction of a 64 MiB chunk.
PIECE_BYTES = 8 * 2**20


def piece_rows(dim: int, itemsize: int = 8, piece_bytes: int = PIECE_BYTES) -> int:
    """Rows per upcast piece: ``piece_bytes`` of the accumulation dtype, at least 256."""
    return max(256, piece_bytes // max(1, dim * itemsize))


def _rows_of(
    y: Any, n_classes: int, lo: int, hi: int, ignore_index: int | None, xp: Any
) -> Any:
    """Indices of the rows whose class is in ``[lo, hi)`` (labels checked first)."""
    keep = check_labels(y, n_classes, ignore_index, xp)
    if lo > 0 or hi < n_classes:
        keep = keep & (y >= lo) & (y < hi)
    return xp.nonzero(keep)[0]


def _pieces(X: Any, idx: Any, dtype: Any, step: int) -> Iterator[tuple[int, int, Any]]:
    """``(s, e, X[idx[s:e]])`` upcast to ``dtype`` (a private copy), ``step`` rows at a time.

    ``idx=None`` means every row in order (slices, no gather).
    """
    xp = array_namespace(X)
    n = X.shape[0] if idx is None else int(idx.shape[0])
    for s in range(0, n, step):
        e = min(n, s + step)
        if idx is None:
            P = xp.array(X[s:e], dtype=dtype, copy=True)
        else:
            P = xp.asarray(xp.take(X, idx[s:e], axis=0), dtype=dtype)
        yield s, e, P


def _sparse_sums(
    X: Any, cls: Any, idx: Any, dtype: Any, step: int, xp: Any
) -> tuple[Any, Any, Any]:
    """Present classes, their counts and sums over the rows ``idx`` of ``X``.

    The rows are visited in class order, so each piece's one-hot product
    covers a contiguous run of classes and its result is no larger than the
    piece.
    """
    D = X.shape[1]
    if idx.shape[0] == 0:
        return (xp.zeros(0, dtype=xp.int64), xp.zeros(0, dtype=xp.int64),
                xp.zeros((0, D), dtype=dtype))
    ids, inv = xp.unique(cls, return_inverse=True)
    inv = inv.reshape(-1)
    counts = xp.bincount(inv, minlength=ids.shape[0]).astype(xp.int64)
    order = xp.argsort(inv, kind="stable") if xp is np else xp.argsort(inv)
    inv_sorted = inv[order]
    rows = idx[order]
    sums = xp.zeros((ids.shape[0], D), dtype=dtype)
    for s, e, P in _pieces(X, rows, dtype, step):
        c0, c1 = int(inv_sorted[s]), int(inv_sorted[e - 1]) + 1
        sums[c0:c1] += class_sums(P, inv_sorted[s:e] - c0, c1 - c0)
    return ids.astype(xp.int64), counts, sums


def chunk_sums(
    X: Any,
    y: Any,
    n_classes: int,
    lo: int,
    hi: int,
    *,
    dtype: Any = np.float64,
    ignore_index: int | None = None,
    step: int | None = None,
) -> dict[str, Any]:
    """Counts and sums of the classes in ``[lo, hi)`` present in one chunk (*sums* form)."""
    xp = array_namespace(X, y)
    y = xp.asarray(y).astype(xp.int64)
    idx = _rows_of(y, n_classes, lo, hi, ignore_index, xp)
    step = step or piece_rows(X.shape[1], np.dtype(dtype).itemsize)
    ids, counts, sums = _sparse_sums(X, y[idx], idx, dtype, step, xp)
    return {"ids": ids, "counts": counts, "sums": sums}


def _centred(
    X: Any,
    idx: Any,
    local: Any,
    means: Any,
    n_out: int,
    mask: Any,
    dtype: Any,
    step: int,
    xp: Any,
) -> dict[str, Any]:
    """``m2`` (n_out,) and the scatter of rows ``idx`` about ``means[local]``."""
    D = X.shape[1]
    m2 = xp.zeros(n_out, dtype=dtype)
    scatter = xp.zeros((D, D), dtype=dtype)
    if idx.shape[0] == X.shape[0]:
        idx = None  # every row, in order: slices instead of gathers
    for s, e, P in _pieces(X, idx, dtype, step):
        loc = local[s:e]
        P -= means[loc]
        m2 += xp.bincount(loc, weights=xp.einsum("ij,ij->i", P, P), minlength=n_out)
        if mask is not None:
            rows = mask[loc]
            if not bool(xp.all(rows)):
                P = P[rows]
        scatter += P.T @ P
    return {"m2": m2, "scatter": scatter}


def chunk_centred(
    X: Any,
    y: Any,
    n_classes: int,
    lo: int,
    hi: int,
    means: Any,
    *,
    mask: Any = None,
    dtype: Any = np.float64,
    ignore_index: int | None = None,
    step: int | None = None,
) -> dict[str, Any]:
    """The *centred* form: rows of classes ``[lo, hi)`` about the group's final means.

    ``means`` is (hi − lo, D); ``mask`` (hi − lo,) bool, optional, names the
    classes whose rows enter the scatter (``m2`` covers every class).
    """
    xp = array_namespace(X, y)
    y = xp.asarray(y).astype(xp.int64)
    idx = _rows_of(y, n_classes, lo, hi, ignore_index, xp)
    step = step or piece_rows(X.shape[1], np.dtype(dtype).itemsize)
    means = xp.asarray(means, dtype=dtype)
    return _centred(X, idx, y[idx] - lo, means, hi - lo, mask, dtype, step, xp)


def chunk_stage(
    X: Any,
    y: Any,
    n_classes: int,
    sum_group: tuple[int, int] | None,
    centre_group: tuple[int, int] | None,
    means: Any = None,
    mask: Any = None,
    *,
    dtype: Any = np.float64,
    ignore_index: int | None = None,
    step: int | None = None,
) -> dict[str, Any]:
    """One read of a chunk serving two groups: sums of one, centred scatter of the previous.

    Returns ``{"sums": ..., "centred": ...}`` with the parts asked for.
    """
    out: dict[str, Any] = {}
    if sum_group is not None:
        out["sums"] = chunk_sums(X, y, n_classes, *sum_group, dtype=dtype,
                                 ignore_index=ignore_index, step=step)
    if centre_group is not None:
        out["centred"] = chunk_centred(X, y, n_classes, *centre_group, means, mask=mask,
                                       dtype=dtype, ignore_index=ignore_index, step=step)
    return out


def chunk_summary(
    X: Any,
    y: Any,
    n_classes: int,
    *,
    mask: Any = None,
    dtype: Any = np.float64,
    ignore_index: int | None = None,
    step: int | None = None,
) -> dict[str, Any]:
    """The one-pass *summary* form of a chunk (all classes; centred about its own means).

    ``mask`` (K,) bool, optional: classes whose rows enter the scatter.
    """
    xp = array_namespace(X, y)
    y = xp.asarray(y).astype(xp.int64)
    idx = _rows_of(y, n_classes, 0, n_classes, ignore_index, xp)
    step = step or piece_rows(X.shape[1], np.dtype(dtype).itemsize)
    cls = y[idx]
    ids, counts, sums = _sparse_sums(X, cls, idx, dtype, step, xp)
    local = xp.searchsorted(ids, cls)
    means = sums / xp.maximum(counts, 1)[:, None].astype(dtype)
    sub = None if mask is None else xp.asarray(mask, dtype=bool)[ids]
    cen = _centred(X, idx, local, means, int(ids.shape[0]), sub, dtype, step, xp)
    return {"ids": ids, "counts": counts, "sums": sums, **cen}


def _concat(parts: list[dict[str, Any]], key: str, xp: Any) -> Any:
    return xp.concatenate([p[key] for p in parts], axis=0)


def merge_sums(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Merge *sums* partials (or the sums of *summaries*) by class id."""
    xp = array_namespace(parts[0]["sums"])
    if len(parts) == 1:
        return parts[0]
    ids_all = _concat(parts, "ids", xp)
    ids, inv = xp.unique(ids_all, return_inverse=True)
    inv = inv.reshape(-1)
    counts = xp.bincount(inv, weights=_concat(parts, "counts", xp), minlength=ids.shape[0])
    sums = class_sums(_concat(parts, "sums", xp), inv, int(ids.shape[0]))
    return {"ids": ids, "counts": counts.astype(xp.int64), "sums": sums}


def merge_centred(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Merge *centred* partials (plain sums: every term is about the final means)."""
    out = {"m2": parts[0]["m2"].copy(), "scatter": parts[0]["scatter"].copy()}
    for p in parts[1:]:
        out["m2"] += p["m2"]
        out["scatter"] += p["scatter"]
    return out


def merge_summaries(parts: list[dict[str, Any]], mask: Any = None) -> dict[str, Any]:
    """Merge *summary* partials exactly (Chan et al.'s update, many at once).

    With ``μ_k`` the merged mean of class k and ``μ_jk`` part j's, the merged
    ``m2_k = Σ_j m2_jk + n_jk ‖μ_jk − μ_k‖²`` and the scatter gains
    ``Σ_jk n_jk (μ_jk − μ_k)(μ_jk − μ_k)ᵀ``: centred terms only, so float32
    input in the terminal phase stays exact. Only classes held by two or
    more parts contribute a cross term. ``mask`` (K,) bool, optional: the
    classes whose cross terms enter the scatter.
    """
    if len(parts) == 1:
        return parts[0]
    xp = array_namespace(parts[0]["sums"])
    merged = merge_sums(parts)
    ids_all = _concat(parts, "ids", xp)
    inv = xp.searchsorted(merged["ids"], ids_all)
    n_all = _concat(parts, "counts", xp)
    m2 = xp.bincount(inv, weights=_concat(parts, "m2", xp), minlength=merged["ids"].shape[0])
    scatter = parts[0]["scatter"].copy()
    for p in parts[1:]:
        scatter += p["scatter"]
    mult = xp.bincount(inv, minlength=merged["ids"].shape[0])
    dup = xp.nonzero(mult[inv] > 1)[0]
    if dup.shape[0]:
        dt = scatter.dtype
        n_d = n_all[dup].astype(dt)
        mu = merged["sums"] / merged["counts"].astype(dt)[:, None]
        sums_d = xp.concatenate([p["sums"] for p in parts], axis=0)[dup]
        delta = sums_d / n_d[:, None] - mu[inv[dup]]
        m2 += xp.bincount(inv[dup], weights=n_d * xp.einsum("ij,ij->i", delta, delta),
                          minlength=merged["ids"].shape[0])
        if mask is not None:
            sel = xp.asarray(mask, dtype=bool)[ids_all[dup]]
            delta, n_d = delta[sel], n_d[sel]
        scatter += (delta * n_d[:, None]).T @ delta
    return {**merged, "m2": m2, "scatter": scatter}


def dense_sums(part: dict[str, Any], lo: int, hi: int) -> tuple[Any, Any]:
    """Counts (hi − lo,) and sums (hi − lo, D) of a *sums* partial, zero where absent."""
    xp = array_namespace(part["sums"])
    n = hi - lo
    counts = xp.zeros(n, dtype=xp.int64)
    sums = xp.zeros((n, part["sums"].shape[1]), dtype=part["sums"].dtype)
    loc = part["ids"] - lo
    counts[loc] = part["counts"]
    sums[loc] = part["sums"]
    return counts, sums


def group_means(part: dict[str, Any], lo: int, hi: int) -> dict[str, Any]:
    """Counts and means (NaN rows for empty classes) of the group ``[lo, hi)``."""
    xp = array_namespace(part["sums"])
    counts, sums = dense_sums(part, lo, hi)
    present = counts > 0
    dt = sums.dtype
    sums /= xp.where(present, counts, 1).astype(dt)[:, None]
    sums[~present] = float("nan")
    return {"counts": counts, "means": sums}


def var_norms(m2: Any, counts: Any) -> Any:
    """``m2_k / n_k``, NaN for empty classes."""
    xp = array_namespace(m2)
    present = counts > 0
    return xp.where(present, m2 / xp.where(present, counts, 1).astype(m2.dtype), float("nan"))


def mean_terms(means: Any, counts: Any, used: Any) -> Any:
    """``[Σ_used μ_k (D values), Σ_used n_k μ_k (D values), #used, Σ_used n_k]`` of a group.

    The global mean (unweighted or weighted) and ``N`` are sums of these over
    the groups.
    """
    xp = array_namespace(means)
    u = used & (counts > 0)
    Mu = xp.where(u[:, None], means, 0.0)
    n = xp.where(u, counts, 0).astype(means.dtype)
    tail = xp.stack([xp.sum(u.astype(means.dtype)), xp.sum(n)])
    return xp.concatenate([xp.sum(Mu, axis=0), n @ Mu, tail])
