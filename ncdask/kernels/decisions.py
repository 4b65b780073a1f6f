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


def decision_tile(X: Any, mG: Any, W: Any, b: Any, Mc: Any, gidx: Any, *, ncc: bool = True) -> Any:
    """Both classifiers' best class within one class tile, for one block of samples ``X``. The
    linear classifier scores ``x · w_k + b_k`` (``W``, ``b`` of the tile); the nearest class centre
    ``‖μ̃_k‖² − 2 x̃ · μ̃_k`` (``‖x̃ − μ̃_k‖²`` less a per-sample constant) with ``x̃ = x − mG``
    and the tile's centred means ``Mc``: two GEMMs, no difference tensor. ``gidx`` are the tile's
    class indices; with ``ncc=False`` the NCC columns are 0. Returns ``(n, 1, 4)``, columns
    :data:`DECISION`; ties go to the smallest class index."""
    xp = array_namespace(X, W, Mc)
    mG, b, gidx = xp.asarray(mG), xp.asarray(b), xp.asarray(gidx)
    n = X.shape[0]
    out = xp.empty((n, 1, 4), dtype=X.dtype)
    if n == 0:
        return out
    with errstate(xp):
        lin = X @ W.T
        lin += b[None, :]
        i_lin = xp.argmax(lin, axis=1)
        r = xp.arange(n)
        out[:, 0, 0] = lin[r, i_lin]
        del lin
        out[:, 0, 1] = gidx[i_lin]
        if not ncc:
            out[:, 0, 2:] = 0
            return out
        Xc = X - mG[None, :]
        score = Xc @ Mc.T
        score *= -2.0
        score += xp.sum(Mc * Mc, axis=1)[None, :]
        i_ncc = xp.argmin(score, axis=1)
        out[:, 0, 2] = score[r, i_ncc]
        out[:, 0, 3] = gidx[i_ncc]
    return out


def merge_decisions(parts: Any) -> Any:
    """Merge ``(n, m, 4)`` decision blocks along axis 1 (class tiles ascending): ``(n, 1, 4)``."""
    xp = array_namespace(parts)
    n = parts.shape[0]
    out = xp.empty((n, 1, 4), dtype=parts.dtype)
    if n == 0:
        return out
    r = xp.arange(n)
    a = xp.argmax(parts[:, :, 0], axis=1)  # first maximum: smallest class on ties
    c = xp.argmin(parts[:, :, 2], axis=1)
    out[:, 0, 0] = parts[r, a, 0]
    out[:, 0, 1] = parts[r, a, 1]
    out[:, 0, 2] = parts[r, c, 2]
    out[:, 0, 3] = parts[r, c, 3]
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
    """:func:`merge_decisions` of blocks ``(n, m_i, 4)`` side by side (class tiles in order)."""
    if len(parts) == 1 and parts[0].shape[1] == 1:
        return parts[0]
    xp = array_namespace(parts[0])
    return merge_decisions(xp.concatenate(parts, axis=1))


def decisions_of(merged: Any) -> Any:
    """The ``(n, 4)`` decisions of a merged ``(n, 1, 4)`` block."""
    return merged[:, 0, :]


#: NC4 decisions of a sample block over its class tiles, merged (:mod:`ncdask.graph._reduce`).
DECISIONS = Reduction(combine=merge_decision_blocks, chunk=identity, finalize=decisions_of)

