"""Graphs of the metrics that need no pairwise pass: NC1 traces, ETF errors, NC3.

All K-sized reductions are blocked over the class tiles by dask; the only
dense factorisations run on the smaller of the K×D means (K ≤ D) or the D×D
between-class covariance (D < K).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import dask
import dask.array as da
import numpy as np
from dask.array.utils import meta_from_array

from ..kernels import closed_forms as C


def _one_block(x: da.Array) -> da.Array:
    return x.rechunk(-1) if x.ndim else x


def delayed_array(
    fn: Callable[..., Any], *args: Any, shape: tuple[int, ...], like: da.Array, **kwargs: Any
) -> da.Array:
    """Lazy array from ``fn`` applied to whole (small) arrays, as one task."""
    d = dask.delayed(fn, pure=True)(
        *[_one_block(a) if isinstance(a, da.Array) else a for a in args], **kwargs
    )
    return da.from_delayed(
        d,
        shape=shape,
        dtype=np.float64,
        meta=meta_from_array(like, ndim=len(shape), dtype=np.float64),
    )


def gram(A: da.Array, B: da.Array | None = None) -> da.Array:
    """``AᵀB`` (D×D) summed over class tiles."""
    B = A if B is None else B
    return A.T @ B


def nc1_values(Mc: da.Array, Sw: da.Array, *, want_svd: bool, eps_dtype: Any = None) -> da.Array:
    """``[nc1_pinv, nc1_svd]`` (NaN where not asked or not defined), on the smaller side.

    ``eps_dtype`` sets the pinv cutoff's ε (the dtype the means came in).

    K ≤ D: thin SVD of the K×D centred means (:func:`~ncdask.kernels.closed_forms.nc1_from_means`);
    D < K: eigendecomposition of ``Σ_B = M̃ᵀM̃/K`` (D×D), blocked over the class tiles.
    """
    K, D = Mc.shape
    if K <= D:
        return delayed_array(
            C.nc1_from_means,
            Mc,
            Sw,
            K,
            want_svd=want_svd,
            shape=(2,),
            like=Mc,
            eps_dtype=eps_dtype,
        )
    Sb = gram(Mc) / K
    pinv = delayed_array(C.nc1_from_between, Sb, Sw, K, shape=(1,), like=Mc, eps_dtype=eps_dtype)
    return da.concatenate([pinv, da.full_like(pinv, math.nan)])  # full_like: pinv's array module


def etf_terms(A: da.Array, B: da.Array | None = None) -> tuple[da.Array, da.Array, da.Array]:
    """``‖G‖_F²``, ``tr G`` and ``1ᵀG1`` of ``G = B Aᵀ`` without forming it when D < K.

    ``‖BAᵀ‖_F² = ⟨BᵀB, AᵀA⟩`` (two D×D grams) when D < K, else the K×K
    product itself (no larger than the D×D grams).
    """
    Bm = A if B is None else B
    K, D = A.shape
    if K <= D:  # K×D is no larger than D×D: one block
        A1, B1 = A.rechunk(-1), Bm.rechunk(-1)
        G = B1 @ A1.T
        fro2 = (G * G).sum()
    elif B is None:
        Ga = gram(A)
        fro2 = (Ga * Ga).sum()
    else:
        fro2 = (gram(A) * gram(Bm)).sum()
    trace = (A * Bm).sum()
    ones2 = (A.sum(axis=0) * Bm.sum(axis=0)).sum()
    return fro2, trace, ones2


def etf_error(A: da.Array, B: da.Array | None = None) -> da.Array:
    """``‖G/‖G‖_F − (I − 11ᵀ/K)/√(K−1)‖_F`` with ``G = B Aᵀ`` (``B = A`` by default)."""
    fro2, trace, ones2 = etf_terms(A, B)
    K = A.shape[0]
    return delayed_array(C.etf_error, fro2, trace, ones2, K, shape=(), like=A)


def row_norms(A: da.Array) -> da.Array:
    """``‖a_k‖`` per row."""
    return da.sqrt((A * A).sum(axis=1))


def normalized(A: da.Array) -> da.Array:
    """Rows divided by ``‖a_k‖ + ε`` (the reference's normalisation)."""
    eps = float(np.finfo(A.dtype).eps)
    return A / (row_norms(A)[:, None] + eps)


def cosine_rows(A: da.Array, B: da.Array, *, eps: float = 1e-8) -> da.Array:
    """``a_k · b_k / max(‖a_k‖ ‖b_k‖, eps)`` per row (torch's ``cosine_similarity``)."""
    return (A * B).sum(axis=1) / da.maximum(row_norms(A) * row_norms(B), eps)
