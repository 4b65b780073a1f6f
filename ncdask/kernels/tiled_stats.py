"""Per-chunk kernels of the class statistics tiled over classes.

Every kernel here reads one row chunk and adds it into a running
*accumulator*, the result of the previous chunk of the same chain (the
graph runs a few chains side by side and combines their ends), so a pass
holds one accumulator per chain instead of one partial per chunk: at D=4096
a chunk's D×D scatter alone is 128 MiB.

:func:`fold_summary` (the one-pass plan)
    dense K-row ``counts``, ``sums``, ``m2`` and the D×D ``scatter``; each
    chunk's classes are first summarised sparsely (at most its rows × D)
    about the chunk's own means, then merged with Chan's exact update.
:func:`fold_stage` (the pipelined plan, one class group ``[lo, hi)`` at a time)
    dense ``counts`` and ``sums`` of one group, and ``m2`` and the scatter
    of the previous group's rows about that group's final means (no cross
    terms).

Rows are upcast to the accumulation dtype in pieces of about
:data:`PIECE_BYTES` (float16/bfloat16-sized stores keep their halved I/O and
never hold a float64 copy of a whole chunk).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

# SciPy's BLAS is a library apart from NumPy's: loaded here, at graph-building
# time, so that the one-BLAS-thread limit set when a compute starts
# (ncdask/graph/_blas.py) reaches it too. Loaded lazily inside the first task
# it kept 2 threads per task: 1 GiB stats, K=1000, D=512 took 7.1 s, not 5.x.
from scipy.linalg import blas

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


def scatter_add(S: Any, P: Any, xp: Any) -> None:
    """``S += PᵀP`` in place; only S's **lower triangle** is guaranteed.

    On NumPy float64/float32 this is BLAS ``syrk`` into S's memory: half the
    flops of ``P.T @ P`` and no D×D temporary. Measured on the 2-core machine
    with one BLAS thread (``S += P.T @ P`` against ``syrk``, GEMM-equivalent
    GFLOP/s): D=512, 2048 rows 58 vs 69; D=2048, 512 rows 44 vs 84; D=4096,
    256 rows 22 vs 117, where the temporary and the add dominated. Other
    array modules (CuPy) take the full product. Call :func:`symmetrize` on
    the final sum.
    """
    if xp is np and S.flags.c_contiguous and S.dtype in (np.float64, np.float32):
        syrk = blas.dsyrk if S.dtype == np.float64 else blas.ssyrk
        # S.T is Fortran-ordered: syrk updates its upper triangle in place,
        # i.e. S's lower triangle; P.T (Fortran) times its transpose is PᵀP.
        syrk(1.0, xp.asarray(P, dtype=S.dtype).T, beta=1.0, c=S.T, trans=0, lower=0,
             overwrite_c=1)
    else:
        S += P.T @ P


def symmetrize(S: Any) -> Any:
    """The symmetric matrix whose lower triangle is S's (see :func:`scatter_add`)."""
    xp = array_namespace(S)
    return xp.tril(S) + xp.tril(S, -1).T


def _centred(
    X: Any,
    idx: Any,
    local: Any,
    means: Any,
    mask: Any,
    dtype: Any,
    step: int,
    xp: Any,
    m2: Any,
    scatter: Any,
) -> None:
    """Add the rows ``idx`` centred about ``means[local]`` into ``m2`` and ``scatter``."""
    n_out = m2.shape[0]
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
        scatter_add(scatter, P, xp)


def fold_stage(
    acc: dict[str, Any] | None,
    X: Any,
    y: Any,
    means: Any = None,
    *,
    n_classes: int,
    sum_group: tuple[int, int] | None,
    centre_group: tuple[int, int] | None,
    mask: Any = None,
    dtype: Any = np.float64,
    ignore_index: int | None = None,
    step: int | None = None,
) -> dict[str, Any]:
    """One read of a chunk for the pipelined plan, added into a running accumulator.

    Sums the rows of classes ``sum_group = (lo, hi)`` into dense ``counts``
    and ``sums`` (hi − lo rows) and adds the rows of ``centre_group``, centred
    about that group's final ``means`` (its rows, NaN for empty classes),
    into ``m2`` and the D×D ``scatter`` (only rows of classes in ``mask``,
    relative to the group, enter the scatter). ``acc`` is the previous result
    of the same chain (None to start) and is updated in place.
    """
    xp = array_namespace(X, y)
    y = xp.asarray(y).astype(xp.int64)
    dt = np.dtype(dtype)
    D = X.shape[1]
    step = step or piece_rows(D, dt.itemsize)
    if acc is None:
        acc = {}
        if sum_group is not None:
            n = sum_group[1] - sum_group[0]
            acc["counts"] = xp.zeros(n, dtype=xp.int64)
            acc["sums"] = xp.zeros((n, D), dtype=dt)
        if centre_group is not None:
            acc["m2"] = xp.zeros(centre_group[1] - centre_group[0], dtype=dt)
            acc["scatter"] = xp.zeros((D, D), dtype=dt)
    if sum_group is not None:
        lo, hi = sum_group
        idx = _rows_of(y, n_classes, lo, hi, ignore_index, xp)
        ids, counts, sums = _sparse_sums(X, y[idx], idx, dt, step, xp)
        acc["counts"][ids - lo] += counts  # ids are unique: plain fancy-index adds
        acc["sums"][ids - lo] += sums
    if centre_group is not None:
        lo, hi = centre_group
        idx = _rows_of(y, n_classes, lo, hi, ignore_index, xp)
        means = xp.asarray(means, dtype=dt)
        _centred(X, idx, y[idx] - lo, means, mask, dt, step, xp, acc["m2"], acc["scatter"])
    return acc


def combine_stages(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Sum the accumulators of several chains (every term is already final)."""
    out = parts[0]
    for p in parts[1:]:
        for k in out:
            out[k] += p[k]
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
    """A chunk's one-pass summary: its classes (sparse), centred about its own means.

    Returns ``ids``, ``counts``, ``sums`` (m×D), ``m2`` and the D×D
    ``scatter``; ``mask`` (K,) bool, optional: classes whose rows enter it.
    """
    xp = array_namespace(X, y)
    y = xp.asarray(y).astype(xp.int64)
    dt = np.dtype(dtype)
    D = X.shape[1]
    idx = _rows_of(y, n_classes, 0, n_classes, ignore_index, xp)
    step = step or piece_rows(D, dt.itemsize)
    cls = y[idx]
    ids, counts, sums = _sparse_sums(X, cls, idx, dt, step, xp)
    local = xp.searchsorted(ids, cls)
    means = sums / xp.maximum(counts, 1)[:, None].astype(dt)
    sub = None if mask is None else xp.asarray(mask, dtype=bool)[ids]
    m2 = xp.zeros(ids.shape[0], dtype=dt)
    scatter = xp.zeros((D, D), dtype=dt)
    _centred(X, idx, local, means, sub, dt, step, xp, m2, scatter)
    return {"ids": ids, "counts": counts, "sums": sums, "m2": m2, "scatter": scatter}


def fold_summary(
    acc: dict[str, Any] | None, X: Any, y: Any, *, n_classes: int, mask: Any = None,
    **options: Any,
) -> dict[str, Any]:
    """Add a chunk's summary into a dense one-pass accumulator (Chan's update), in place.

    The accumulator is a partial of :mod:`ncdask.kernels.stats` (dense K
    rows: ``counts``, ``sums``, ``m2``, ``scatter``, and ``in_scatter`` when
    ``mask`` is given), so chains combine with
    :func:`ncdask.kernels.stats.merge_many`. For a class already in ``acc``
    with ``δ = μ_chunk − μ_acc`` and ``w = n_acc n_chunk / (n_acc + n_chunk)``,
    ``m2`` gains ``w‖δ‖²`` and the scatter ``w δδᵀ``: centred terms only, so
    float32 input in the terminal phase stays exact. Only classes present on
    both sides cost a cross term. ``options``: those of :func:`chunk_summary`.
    """
    part = chunk_summary(X, y, n_classes, mask=mask, **options)
    xp = array_namespace(part["sums"])
    ids = part["ids"]
    if acc is None:
        D, dt = part["scatter"].shape[0], part["scatter"].dtype
        acc = {"counts": xp.zeros(n_classes, dtype=xp.int64),
               "sums": xp.zeros((n_classes, D), dtype=dt),
               "m2": xp.zeros(n_classes, dtype=dt), "scatter": part["scatter"]}
        if mask is not None:
            acc["in_scatter"] = xp.asarray(mask, dtype=bool)
        acc["counts"][ids] = part["counts"]
        acc["sums"][ids] = part["sums"]
        acc["m2"][ids] = part["m2"]
        return acc
    dt = acc["sums"].dtype
    n_a = acc["counts"][ids]
    both = xp.nonzero(n_a > 0)[0]
    acc["scatter"] += part["scatter"]
    if both.shape[0]:
        ib = ids[both]
        na = n_a[both].astype(dt)
        nb = part["counts"][both].astype(dt)
        delta = part["sums"][both] / nb[:, None] - acc["sums"][ib] / na[:, None]
        w = na * nb / (na + nb)
        acc["m2"][ib] += w * xp.einsum("ij,ij->i", delta, delta)
        if mask is not None:
            sel = xp.asarray(mask, dtype=bool)[ib]
            delta, w = delta[sel], w[sel]
        scatter_add(acc["scatter"], delta * xp.sqrt(w)[:, None], xp)
    acc["counts"][ids] += part["counts"]
    acc["sums"][ids] += part["sums"]
    acc["m2"][ids] += part["m2"]
    return acc


def group_means(counts: Any, sums: Any) -> Any:
    """Means from dense counts and sums (NaN rows for empty classes)."""
    xp = array_namespace(sums)
    present = counts > 0
    means = sums / xp.where(present, counts, 1).astype(sums.dtype)[:, None]
    means[~present] = float("nan")
    return means


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
