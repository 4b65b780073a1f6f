"""Graphs of the per-class shares of ``nc1_pinv``: one blocked pass over the samples.

Σ_B⁺ is factored once; one task per sample block sums the signed ``‖(x_i − c) L‖²`` of its
rows per class (:mod:`ncdask.kernels.shares` says why about ``c``, the global mean)."""

from __future__ import annotations

from typing import Any

import dask.array as da
import numpy as np
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


def rows_per_block(dim: int, rank: int, n_kept: int, *,
                   budget: int | str | None = None) -> int:
    """Sample rows per block so that one task of :func:`class_pinv_sums` fits ``budget``.
    A task holds ``L`` (D·R), its output (2K) and per row the float64 row, its ``R`` products
    and a few more."""
    budget = resolve_budget(budget)
    fixed = ITEMSIZE * (dim * rank + 4 * n_kept)
    per_row = ITEMSIZE * (dim + rank + 6)
    return max(1, (budget - fixed) // per_row)


def class_pinv_sums(X: da.Array, y: da.Array, Mc: da.Array, c: da.Array, L: da.Array,
                    sign: da.Array, *, lookup: np.ndarray, budget: int | str | None = None,
                    split_every: int | None = None) -> tuple[da.Array, da.Array]:
    """``([Σ_{y_i=k} q(x_i − c), n_k] (2, K), q(μ_k − c) (K,))`` per class measured, ``q(v) =
    Σ_j s_j (v·l_j)²``: their difference ``S_k`` is class k's share of ``tr(Σ_B⁺ Σ_W)``. ``Mc``
    holds the means of the classes measured centred on ``c``, in class tiles; ``lookup`` gives
    each label's row of ``Mc`` (−1: skipped); ``L``, ``sign`` are :func:`pinv_factor`'s."""
    K, D = Mc.shape
    R = L.shape[1]
    L, sign, c = L.rechunk(-1), sign.rechunk(-1), c.rechunk(-1)
    X = X.rechunk({1: -1})
    rows = rows_per_block(D, R, K, budget=budget)
    if max(X.chunks[0]) > rows:
        X = X.rechunk({0: rows})
    y = y.rechunk((X.chunks[0],))
    yk = y.map_blocks(KS.kept_positions, lookup, dtype=np.int64,
                      meta=meta_from_array(y, ndim=1, dtype=np.int64))
    parts = da.blockwise(
        KS.row_quadratic_sums, "ick", X, "if", yk, "i", c, "f", L, "fr", sign, "r",
        new_axes={"c": 2, "k": K}, adjust_chunks={"i": 1}, dtype=np.float64, n_kept=K,
        meta=meta_from_array(Mc, ndim=3, dtype=np.float64), concatenate=True,
        token="ncdask-pinv-shares",
    )
    sums = parts.sum(axis=0, split_every=split_every)
    qm = Mc.rechunk({1: -1}).map_blocks(KS.mean_quadratic, L, sign, drop_axis=1,
                                        dtype=np.float64)
    return sums, qm
