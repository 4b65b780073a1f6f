"""Per-chunk kernels for per-class covariances, their spectra and per-class NC1.

A partial holds, for the m classes of a chunk present in a row block, ``pos``, ``counts``,
``sums`` and ``scatter`` (m, D, D) about their means; merged by Chan et al.'s update."""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np

from ncdask.kernels._reduction import Reduction
from ncdask.kernels._xp import array_namespace, errstate
from ncdask.kernels.spectrum import between_spectrum
from ncdask.kernels.stats import check_labels

CovPartial = dict[str, Any]


def _empty(D: int, dtype: Any, xp: Any) -> CovPartial:
    return {"pos": xp.zeros(0, dtype=xp.int64), "counts": xp.zeros(0, dtype=xp.int64),
            "sums": xp.zeros((0, D), dtype=dtype), "scatter": xp.zeros((0, D, D), dtype=dtype)}


def scatter_partial(X: Any, y: Any, position: Any, lo: int, hi: int, *, n_classes: int,
                    dtype: Any = np.float64, ignore_index: int | None = None) -> CovPartial:
    """The covariance partial of the rows of block ``X``, ``y`` whose class lies in one chunk.
    ``position`` (K,) places each class among those asked for (-1: not asked);
    the chunk is positions ``[lo, hi)`` (the partial's relative to ``lo``);
    labels ``ignore_index`` are dropped; sums accumulate in ``dtype``."""
    xp = array_namespace(X, y)
    D = X.shape[1]
    y = xp.asarray(y)
    keep = check_labels(y, n_classes, ignore_index, xp)
    position = xp.asarray(position)
    p = xp.where(keep, position[xp.where(keep, y, 0)], -1)
    rows = xp.nonzero((p >= lo) & (p < hi))[0]
    if rows.shape[0] == 0:
        return _empty(D, dtype, xp)
    p = p[rows] - lo
    order = xp.argsort(p, kind="stable")
    rows, p = rows[order], p[order]
    Xs = xp.asarray(X[rows], dtype=dtype)
    pos, starts, counts = xp.unique(p, return_index=True, return_counts=True)
    m = int(pos.shape[0])
    sums = xp.empty((m, D), dtype=dtype)
    scatter = xp.empty((m, D, D), dtype=dtype)
    s_h = [int(s) for s in starts]
    c_h = [int(c) for c in counts]
    for j in range(m):
        seg = Xs[s_h[j] : s_h[j] + c_h[j]]
        tot = xp.sum(seg, axis=0)
        sums[j] = tot
        seg = seg - tot / c_h[j]
        scatter[j] = seg.T @ seg
    return {"pos": pos.astype(xp.int64), "counts": counts.astype(xp.int64), "sums": sums,
            "scatter": scatter}


def merge_scatter(a: CovPartial, b: CovPartial) -> CovPartial:
    """Merge two covariance partials of the same class chunk (exact, centred)."""
    if a["pos"].shape[0] == 0:
        return b
    if b["pos"].shape[0] == 0:
        return a
    xp = array_namespace(a["sums"], b["sums"])
    pos = xp.union1d(a["pos"], b["pos"])
    m, D = int(pos.shape[0]), a["sums"].shape[1]
    ia = xp.searchsorted(pos, a["pos"])
    ib = xp.searchsorted(pos, b["pos"])
    dt = a["sums"].dtype
    counts = xp.zeros(m, dtype=xp.int64)
    sums = xp.zeros((m, D), dtype=dt)
    scatter = xp.zeros((m, D, D), dtype=dt)
    counts[ia] += a["counts"]
    counts[ib] += b["counts"]
    sums[ia] += a["sums"]
    sums[ib] += b["sums"]
    scatter[ia] += a["scatter"]
    scatter[ib] += b["scatter"]
    # classes on both sides: Chan's cross term w δ δᵀ
    both, ja, jb = xp.intersect1d(a["pos"], b["pos"], return_indices=True)
    if both.shape[0]:
        na = a["counts"][ja].astype(dt)
        nb = b["counts"][jb].astype(dt)
        delta = b["sums"][jb] / nb[:, None] - a["sums"][ja] / na[:, None]
        w = na * nb / (na + nb)
        k = xp.searchsorted(pos, both)
        scatter[k] += w[:, None, None] * (delta[:, :, None] * delta[:, None, :])
    return {"pos": pos, "counts": counts, "sums": sums, "scatter": scatter}


def finalize_covariances(p: CovPartial, n_chunk: int) -> Any:
    """Dense ``(n_chunk, D, D)`` covariances ``scatter_k / n_k`` (NaN for absent classes)."""
    xp = array_namespace(p["sums"])
    D = p["sums"].shape[1]
    out = xp.full((n_chunk, D, D), math.nan, dtype=p["sums"].dtype)
    if p["pos"].shape[0]:
        n = p["counts"].astype(p["sums"].dtype)
        out[p["pos"]] = p["scatter"] / n[:, None, None]
    return out


def covariance_counts(p: CovPartial, n_chunk: int) -> Any:
    """Per-class sample counts ``(n_chunk,)`` of a merged partial."""
    xp = array_namespace(p["sums"])
    out = xp.zeros(n_chunk, dtype=xp.int64)
    if p["pos"].shape[0]:
        out[p["pos"]] = p["counts"]
    return out


def merge_scatters(parts: list[CovPartial]) -> CovPartial:
    """Merge a list of covariance partials of one class chunk, left to right."""
    out = parts[0]
    for p in parts[1:]:
        out = merge_scatter(out, p)
    return out


def covariance_reduction(lo: int, hi: int, *, n_classes: int, dtype: Any = np.float64,
                         ignore_index: int | None = None) -> Reduction:
    """Covariances of the output classes ``[lo, hi)`` as a reduction over row blocks."""
    return Reduction(
        chunk=functools.partial(scatter_partial, lo=lo, hi=hi, n_classes=n_classes,
                                dtype=np.dtype(dtype), ignore_index=ignore_index),
        combine=merge_scatters,
        finalize=functools.partial(finalize_covariances, n_chunk=hi - lo),
    )


def between_pinv(Mc: Any, n_classes: int, *, eps_dtype: Any = None) -> Any:
    """``Σ_B⁺`` (D×D) under torch's pinv cutoff, from the K×D centred means ``Mc`` (K ≤ D)
    or, with ``n_classes=0``, from ``Σ_B`` itself (see :mod:`ncdask.kernels.spectrum`)."""
    xp = array_namespace(Mc)
    Mc = xp.asarray(Mc)
    with errstate(xp):
        lam, V, keep = between_spectrum(Mc, n_classes, from_means=bool(n_classes),
                                        eps_dtype=eps_dtype)
        inv = xp.where(keep, 1.0 / xp.where(keep, lam, 1.0), 0.0)
        return (V * inv[None, :]) @ V.T


def trace_products(covs: Any, P: Any, scale: float = 1.0) -> Any:
    """``scale · tr(Σ_k P)`` for every ``Σ_k`` of a ``(C, D, D)`` block (P symmetric)."""
    xp = array_namespace(covs, P)
    P = xp.asarray(P)
    C = covs.shape[0]
    flat = xp.reshape(covs, (C, -1))
    return (flat @ xp.reshape(P, (-1,))) * scale


def spectra(covs: Any) -> Any:
    """Eigenvalues of each ``Σ_k`` of a ``(C, D, D)`` block, descending (NaN rows stay NaN)."""
    xp = array_namespace(covs)
    C, D = covs.shape[0], covs.shape[1]
    out = xp.full((C, D), math.nan, dtype=covs.dtype)
    ok = xp.all(xp.isfinite(xp.reshape(covs, (C, -1))), axis=1)
    idx = xp.nonzero(ok)[0]
    if idx.shape[0]:
        sym = covs[idx]
        sym = (sym + xp.swapaxes(sym, 1, 2)) * 0.5
        lam = xp.linalg.eigvalsh(sym)
        out[idx] = lam[:, ::-1]
    return out
