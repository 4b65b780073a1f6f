"""Graphs of the per-class shares of ``nc1_pinv``: one blocked pass over the samples.

Σ_B⁺ is factored once; one task per (sample block, class tile) sums the signed
``‖(x_i − μ_{y_i}) L‖²`` of its rows per class."""

from __future__ import annotations

import warnings
from typing import Any

import dask.array as da
import numpy as np
from dask.array.core import PerformanceWarning
from dask.array.utils import meta_from_array

from ncdask.graph.closed_forms import delayed_array, gram
from ncdask.graph.pairwise import resolve_budget
from ncdask.kernels import shares as KS

#: Bytes per number of a block (float64).
ITEMSIZE = 8


def pinv_factor(Mc: da.Array, Sw: da.Array, *, eps_dtype: Any = None,
                terms: dict[str, da.Array] | None = None) -> tuple[da.Array, da.Array]:
    """Lazy ``(L (D, R), s (R,))`` with ``Σ_B⁺ = L diag(s) Lᵀ`` as ``nc1_pinv`` cuts it off.
    See :func:`ncdask.kernels.shares.pinv_factor`; with ``terms``
    (:func:`~ncdask.graph.closed_forms.tile_terms` of ``Mc``, K > D) ``Σ_B``
    comes from the Gram folded for ``nc1_pinv`` too."""
    K, D = Mc.shape
    if K <= D:
        F = delayed_array(KS.pinv_factor, Mc, Sw, K, from_means=True, eps_dtype=eps_dtype,
                          shape=(D + 1, K), like=Mc)
    else:
        Sb = (gram(Mc) if terms is None else terms["MM"]) / K
        F = delayed_array(KS.pinv_factor, Sb, Sw, K, from_means=False, eps_dtype=eps_dtype,
                          shape=(D + 1, D), like=Mc)
    return F[:D], F[D]


def rows_per_block(tile_size: int, dim: int, rank: int, *,
                   budget: int | str | None = None) -> int:
    """Sample rows per block so that one task of :func:`class_pinv_sums` fits ``budget``.
    A task holds ``T·D + D·R`` numbers, and per row ``3D + R`` and a few more."""
    budget = resolve_budget(budget)
    fixed = ITEMSIZE * (tile_size * dim + dim * rank)
    per_row = ITEMSIZE * (3 * dim + rank + 6)
    return max(1, (budget - fixed) // per_row)


def class_pinv_sums(X: da.Array, y: da.Array, M: da.Array, L: da.Array, sign: da.Array, *,
                    lookup: np.ndarray, budget: int | str | None = None,
                    split_every: int | None = None) -> da.Array:
    """``[S_k, n_k]`` (2, K) per class measured, ``S_k = Σ_{y_i=k} Σ_j s_j ((x_i − μ_k)·l_j)²``.
    ``M`` holds the means of the classes measured, in class tiles (cut to half
    of ``budget``); ``lookup`` gives each label's row of ``M`` (-1: skipped);
    ``L``, ``sign`` are the factor of :func:`pinv_factor`."""
    K, D = M.shape
    R = L.shape[1]
    budget = resolve_budget(budget)
    M = M.rechunk({1: -1})
    T = max(M.chunks[0])
    if ITEMSIZE * (T * D + D * R) > budget // 2:  # the tile takes at most half the budget
        T = max(1, (budget // 2 // ITEMSIZE - D * R) // D)
        M = M.rechunk({0: T})
    X = X.rechunk({1: -1})
    rows = rows_per_block(T, D, R, budget=budget)
    if max(X.chunks[0]) > rows:
        X = X.rechunk({0: rows})
    y = y.rechunk((X.chunks[0],))
    yk = y.map_blocks(KS.kept_positions, lookup, dtype=np.int64,
                      meta=meta_from_array(y, ndim=1, dtype=np.int64))
    pos = da.arange(K, chunks=(M.chunks[0],), dtype=np.int64)
    with warnings.catch_warnings():  # the sample-block × class-tile grid is the plan
        warnings.simplefilter("ignore", PerformanceWarning)
        parts = da.blockwise(
            KS.class_quadratic_sums, "icj",
            X, "if", yk, "i", M, "jf", pos, "j", L.rechunk(-1), "fr", sign.rechunk(-1), "r",
            new_axes={"c": 2}, adjust_chunks={"i": 1}, dtype=np.float64,
            meta=meta_from_array(M, ndim=3, dtype=np.float64), concatenate=True,
        )
    # a sample block's tiles joined first: each block is read once and freed, where separate
    # trees per tile would keep every block alive until the last tile's tree reached it
    return parts.rechunk({2: -1}).sum(axis=0, split_every=split_every).rechunk(
        {1: M.chunks[0]})
