"""Per-block kernels for NC4 (classifier vs nearest class centre) and NC5 (OOD means)."""

from __future__ import annotations

import functools
import threading
from typing import Any

import numpy as np

from ncdask.kernels._reduction import Reduction, identity
from ncdask.kernels._xp import array_namespace, errstate, to_numpy
from ncdask.kernels.stats import class_sums

#: Columns of a decision block: best logit, its class, best NCC score, its class.
DECISION = ("lin_score", "lin_class", "ncc_score", "ncc_class")
#: Columns the margins add: ``cos(x̃, w_y)`` of the true class ``y`` (−inf where the tile
#: lacks it) and the best ``cos(x̃, w_k)`` over the tile's other classes.
MARGIN = ("true_cos", "other_cos")
#: Edges of the margin histogram: 400 bins of width 0.01 on [−2, 2].
MARGIN_EDGES = np.linspace(-2.0, 2.0, 401)


#: float32's unit roundoff; a float32 dot product of length D is within (D + 2)·u·‖x‖‖w‖ of
#: the exact one whatever the summation order, the rounding of wider inputs included.
_U = 2.0**-24
#: Added to the norms in the bound: covers float32 underflow (subnormal products, casts).
_TINY = 2.0**-50
#: A decision task works on its sample block this many slices of rows at a time.
SLICES = 8


def decision_tile(X: Any, mG: Any, W: Any, b: Any, Mc: Any, gidx: Any, pos: Any = None, *,
                  ncc: bool = True) -> Any:
    """Both classifiers' best class within one class tile, for one block of samples ``X`` (any
    float dtype). The linear classifier scores ``x · w_k + b_k`` (``W``, ``b`` of the tile); the
    nearest class centre ``‖μ̃_k‖² − 2 x̃ · μ̃_k`` (``‖x̃ − μ̃_k‖²`` less a per-sample constant)
    with ``x̃ = x − mG`` and the tile's centred means ``Mc``: two GEMMs, no difference tensor,
    run in float32 with the float64 result (:func:`_best`), :data:`SLICES` slices of rows at a
    time. ``gidx`` are the tile's class indices; with ``ncc=False`` the NCC columns are 0.
    Returns float64 ``(n, 1, 4)``, columns :data:`DECISION`, the winners' scores in float64;
    ties go to the smallest class index. With ``pos``, each sample's class index (−1: none),
    the :data:`MARGIN` columns ``cos(x̃, w_k)`` of the true class (−inf where the tile lacks
    it) and of the best other one, from the classifier's GEMM (``x̃ · w_k = x · w_k − mG ·
    w_k``, so no third GEMM; norms clamped at 1e-8, as ``torch.nn.functional.cosine_similarity``):
    ``(n, 1, 6)``."""
    xp = array_namespace(X, W, Mc)
    mG, b, gidx = xp.asarray(mG), xp.asarray(b), xp.asarray(gidx)
    n, T, f32 = X.shape[0], W.shape[0], xp.float32
    out = xp.zeros((n, 1, 4 if pos is None else 6), dtype=xp.float64)
    with errstate(xp):
        nw, W32 = _norms(W, xp), W.astype(f32)
        m, wn = W @ mG, xp.maximum(nw, 1e-8)
        q, Mc32 = xp.einsum("ij,ij->i", Mc, Mc), Mc.astype(f32) if ncc else None
        pos = None if pos is None else xp.asarray(pos)
        step = max(1, -(-n // SLICES))
        for s in range(0, n, step):
            r = slice(s, s + step)
            x = X[r].astype(xp.float64)
            nx, o = _norms(x, xp), out[r, 0]
            S = x.astype(f32) @ W32.T
            if pos is not None:  # the margins' best other class, from a copy of the scores
                local = pos[r] - gidx[0]
                k = _best(S.copy(), x, W, m, 1.0 / wn, nx, nw, xp, skip=local)
                lc = xp.clip(local, 0, T - 1)
                dots = xp.stack([_dot(x, W[lc], xp), _dot(x, W[k], xp)])
            i = _best(S, x, W, -b, None, nx, nw, xp)
            del S
            o[:, 0], o[:, 1] = _dot(x, W[i], xp) + b[i], gidx[i]
            x -= mG[None, :]
            xn = xp.maximum(_norms(x, xp), 1e-8)
            if pos is not None:  # cos(x̃, w_j) = (x · w_j − mG · w_j) / (‖x̃‖ ‖w_j‖)
                j = xp.stack([lc, k])
                cos = (dots - m[j]) / xn / wn[j]
                inside = (local >= 0) & (local < T)
                o[:, 4] = xp.where(inside, cos[0], -xp.inf)
                o[:, 5] = xp.where(inside & (k == lc), -xp.inf, cos[1])
            if ncc:  # argmin ‖μ̃‖² − 2 x̃ · μ̃ = argmax x̃ · μ̃ − ‖μ̃‖²/2
                i = _best(x.astype(f32) @ Mc32.T, x, Mc, q / 2, None, xn, xp.sqrt(q), xp)
                o[:, 2], o[:, 3] = q[i] - 2.0 * _dot(x, Mc[i], xp), gidx[i]
    return out


def _best(S: Any, A: Any, B: Any, m: Any, g: Any, na: Any, nb: Any, xp: Any,
          skip: Any = None) -> Any:
    """Each row's class ``k`` of largest ``(a_i · b_k − m_k) · g_k`` (``g > 0``; None: 1) as
    float64 computes it (the first on ties), from ``S``, ``A @ B.T`` in float32 (overwritten).

    A float32 GEMM runs at twice the float64 rate, and its products are within
    ``(D + 8)·u·‖a_i‖‖b_k‖`` of the exact ones (the rounding of the inputs and of any summation
    order; the slack covers the few float32 operations after it): so a row with a single class
    within twice that bound of its best float32 score has the float64 winner; the others (rare
    near-ties, non-finite or huge rows) are scored again in float64 as the float64 pass does.
    ``A``: float64; ``na``, ``nb``: upper bounds of the row norms of ``A`` and ``B``;
    ``skip``: a class per row left out (outside ``[0, T)``: none)."""
    n, T = S.shape
    f32, g1 = S.dtype, xp.ones_like(nb) if g is None else g
    S -= m.astype(f32)[None, :]
    if g is not None:
        S *= g.astype(f32)[None, :]
    r = xp.arange(n)
    if skip is not None:
        inside, lc = (skip >= 0) & (skip < T), xp.clip(skip, 0, T - 1)
        S[r, lc] = xp.where(inside, -xp.inf, S[r, lc])
    err = ((B.shape[1] + 8) * _U * 1.01 * (na + _TINY) * xp.max(g1 * (nb + _TINY))
           + 4 * _U * xp.max(xp.abs(g1 * m)) + _TINY**2)
    best = xp.argmax(S, axis=1)
    top = S[r, best].astype(xp.float64)
    thr = top - 2 * err - 2 * _U * (xp.abs(top) + 2 * err)  # ≤ every float64 winner's S
    S[r, best] = -xp.inf
    one = xp.max(S, axis=1) < thr.astype(f32)  # no second class within the bound
    one &= xp.isfinite(thr) & (xp.maximum(na, 1.0) * xp.maximum(xp.max(nb), 1.0) < 2.0**100)
    rows = xp.nonzero(~one)[0]
    if rows.shape[0]:
        F = A[rows] @ B.T
        F -= m[None, :]
        if g is not None:
            F *= g[None, :]
        if skip is not None:
            j = xp.arange(rows.shape[0])
            F[j, lc[rows]] = xp.where(inside[rows], -xp.inf, F[j, lc[rows]])
        best[rows] = xp.argmax(F, axis=1)
    return best


def _dot(A: Any, B: Any, xp: Any) -> Any:
    return xp.einsum("ij,ij->i", A, B)


def _norms(A: Any, xp: Any) -> Any:
    return xp.sqrt(_dot(A, A, xp))


def margin_histogram(dec: Any) -> Any:
    """Counts ``(1, 400)`` over :data:`MARGIN_EDGES` of the margins ``true_cos − other_cos``
    of merged decisions ``(n, 6)``; non-finite margins (no true class) are left out, a margin
    past ±2 by rounding counts in the end bin. Bins are ``[e_i, e_{i+1})``, the last closed,
    as :func:`numpy.histogram`."""
    xp = array_namespace(dec)
    m = dec[:, 4] - dec[:, 5]
    m = m[xp.isfinite(m)]
    nb = MARGIN_EDGES.size - 1
    idx = xp.searchsorted(xp.asarray(MARGIN_EDGES), m, side="right") - 1
    return xp.bincount(xp.clip(idx, 0, nb - 1), minlength=nb)[None, :].astype(xp.int64)


def merge_decisions(parts: Any) -> Any:
    """Merge ``(n, m, c)`` decision blocks along axis 1 (class tiles ascending): ``(n, 1, c)``;
    the :data:`MARGIN` columns (``c = 6``) keep their maxima."""
    xp = array_namespace(parts)
    n = parts.shape[0]
    out = xp.empty((n, 1, parts.shape[2]), dtype=parts.dtype)
    if n == 0:
        return out
    r = xp.arange(n)
    a = xp.argmax(parts[:, :, 0], axis=1)  # first maximum: smallest class on ties
    c = xp.argmin(parts[:, :, 2], axis=1)
    out[:, 0, 0] = parts[r, a, 0]
    out[:, 0, 1] = parts[r, a, 1]
    out[:, 0, 2] = parts[r, c, 2]
    out[:, 0, 3] = parts[r, c, 3]
    if parts.shape[2] > 4:
        out[:, 0, 4:] = xp.max(parts[:, :, 4:], axis=1)
    return out


_FAISS_GPU = threading.local()


def _faiss_gpu_nearest(faiss: Any, cp: Any, X: Any, mG: Any, Mc: Any) -> Any:  # pragma: no cover
    """faiss-gpu search on CuPy's memory and current stream; one resource per thread and device."""
    dev = int(cp.cuda.Device().id)
    cache = _FAISS_GPU.__dict__.setdefault("res", {})
    if dev not in cache:
        cache[dev] = faiss.StandardGpuResources()
    res = cache[dev]
    res.setDefaultStream(dev, faiss.cast_integer_to_cudastream_t(cp.cuda.get_current_stream().ptr))
    cfg = faiss.GpuIndexFlatConfig()
    cfg.device = dev
    index = faiss.GpuIndexFlatL2(res, int(Mc.shape[1]), cfg)
    base = cp.ascontiguousarray(Mc, dtype=cp.float32)
    index.add_c(int(base.shape[0]), faiss.cast_integer_to_float_ptr(base.data.ptr))
    q = cp.ascontiguousarray(X - mG[None, :], dtype=cp.float32)
    dist = cp.empty((q.shape[0], 1), dtype=cp.float32)
    idx = cp.empty((q.shape[0], 1), dtype=cp.int64)
    index.search_c(int(q.shape[0]), faiss.cast_integer_to_float_ptr(q.data.ptr), 1,
                   faiss.cast_integer_to_float_ptr(dist.data.ptr),
                   faiss.cast_integer_to_idx_t_ptr(idx.data.ptr))
    return idx[:, 0]


def faiss_nearest(X: Any, mG: Any, Mc: Any) -> Any:
    """Nearest class centre (int64 (n,), ``X``'s array module) by an exact FAISS search.
    FAISS works in float32: decisions match the GEMM path but for near-ties.
    CuPy blocks are searched on the device when FAISS has GPU support."""
    import faiss  # optional dependency, imported only when asked for

    xp = array_namespace(X)
    if X.shape[0] and getattr(xp, "__name__", "") == "cupy":  # pragma: no cover - needs a GPU
        if hasattr(faiss, "GpuIndexFlatL2") and faiss.get_num_gpus() > 0:
            return _faiss_gpu_nearest(faiss, xp, X, mG, Mc)
    Xc = np.ascontiguousarray(to_numpy(X - mG[None, :]), dtype=np.float32)
    index = faiss.IndexFlatL2(Xc.shape[1])
    index.add(np.ascontiguousarray(to_numpy(Mc), dtype=np.float32))
    _, idx = index.search(Xc, 1)
    return xp.asarray(idx[:, 0].astype(np.int64))


def label_sums(X: Any, y: Any, ignore_index: int | None = None) -> tuple[Any, Any, Any]:
    """Per-label ``(labels, sums (L, D) float64, counts (L,))`` of one block.
    Negative labels (PyTorch's ``-100`` padding) and ``ignore_index`` are dropped."""
    xp = array_namespace(X, y)
    y = xp.asarray(y)
    keep = y >= 0
    if ignore_index is not None:
        keep &= y != ignore_index
    if not bool(xp.all(keep)):
        X, y = X[keep], y[keep]
    labels, inv = xp.unique(y, return_inverse=True)
    inv = xp.reshape(inv, (-1,))
    sums = class_sums(X.astype(xp.float64), inv, int(labels.shape[0]))
    counts = xp.bincount(inv, minlength=int(labels.shape[0])).astype(xp.int64)
    return labels, sums, counts


def merge_label_sums(parts: list[tuple[Any, Any, Any]]) -> tuple[Any, Any, Any]:
    """Merge :func:`label_sums` results (exact: sums and counts add)."""
    parts = [p for p in parts if p[0].shape[0]]
    if not parts:
        raise ValueError("no OOD samples")
    if len(parts) == 1:
        return parts[0]
    xp = array_namespace(parts[0][1])
    lab = xp.concatenate([p[0] for p in parts])
    labels, inv = xp.unique(lab, return_inverse=True)
    inv = xp.reshape(inv, (-1,))
    L = int(labels.shape[0])
    sums = class_sums(xp.concatenate([p[1] for p in parts]), inv, L)
    cat = xp.concatenate([p[2] for p in parts])
    counts = xp.bincount(inv, weights=cat.astype(xp.float64), minlength=L).astype(xp.int64)
    return labels, sums, counts


def mean_of_label_means(part: tuple[Any, Any, Any]) -> Any:
    """Unweighted mean of the per-label means (the OOD global mean with labels)."""
    _, sums, counts = part
    return (sums / counts[:, None]).mean(axis=0)


def ood_mean_reduction(ignore_index: int | None = None) -> Reduction:
    """The OOD global mean with labels as a reduction over row blocks."""
    return Reduction(
        chunk=functools.partial(label_sums, ignore_index=ignore_index),
        combine=merge_label_sums,
        finalize=mean_of_label_means,
    )


def merge_decision_blocks(parts: list[Any]) -> Any:
    """:func:`merge_decisions` of blocks ``(n, m_i, c)`` side by side (class tiles in order)."""
    if len(parts) == 1 and parts[0].shape[1] == 1:
        return parts[0]
    xp = array_namespace(parts[0])
    return merge_decisions(xp.concatenate(parts, axis=1))


def decisions_of(merged: Any) -> Any:
    """The ``(n, c)`` decisions of a merged ``(n, 1, c)`` block."""
    return merged[:, 0, :]


#: NC4 decisions of a sample block over its class tiles, merged (:mod:`ncdask.graph._reduce`).
DECISIONS = Reduction(combine=merge_decision_blocks, chunk=identity, finalize=decisions_of)

