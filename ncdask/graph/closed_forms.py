"""Graphs of the metrics that need no pairwise pass: NC1 traces, ETF errors, NC3.

K-sized reductions are folded over the class tiles; dense factorisations run on
the smaller of the K×D means (K ≤ D) and the D×D between-class covariance."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import dask
import dask.array as da
import numpy as np
from dask.array.utils import meta_from_array

from ncdask.graph._reduce import fields, fold_rows
from ncdask.kernels import closed_forms as C
from ncdask.kernels import spectrum as SP


def whole_block(x: da.Array) -> Any:
    """One delayed block of ``x``, its graph's keys unchanged.
    ``dask.delayed`` of dask arrays optimises (renames) each array's graph on
    its own, so arrays sharing a class-tile pass would each run a copy of it."""
    return x.rechunk(-1).to_delayed(optimize_graph=False).ravel()[0]


def delayed_array(fn: Callable[..., Any], *args: Any, shape: tuple[int, ...], like: da.Array,
                  **kwargs: Any) -> da.Array:
    """Lazy array from ``fn`` applied to whole (small) arrays, as one task."""
    d = dask.delayed(fn, pure=True)(
        *[whole_block(a) if isinstance(a, da.Array) else a for a in args], **kwargs
    )
    return da.from_delayed(d, shape=shape, dtype=np.float64,
                           meta=meta_from_array(like, ndim=len(shape), dtype=np.float64))


def gram(A: da.Array, B: da.Array | None = None) -> da.Array:
    """``AᵀB`` (D×D) over the class tiles, folded into a few running sums.
    Not ``A.T @ B``: its tree sum can hold one D×D product per class tile; the
    chains hold ``C + 1`` (:func:`~ncdask.graph._reduce.n_chains`)."""
    B = A if B is None else B
    A = A.rechunk({1: -1})
    B = B.rechunk((A.chunks[0], -1))
    dt = np.result_type(A.dtype, B.dtype)
    d = fold_rows(C.GRAM, A, B, how="chains", prefix="ncdask-gram")
    return da.from_delayed(d, shape=(A.shape[1], B.shape[1]), dtype=dt,
                           meta=meta_from_array(A._meta, ndim=2, dtype=dt))


def tile_terms(M: da.Array, W: da.Array | None = None, *, unit: bool = False,
               cross: bool = False) -> dict[str, da.Array]:
    """Every class-tile reduction of the closed forms, in one fold over the tiles. ``MM = MᵀM``,
    ``WW = WᵀW`` (D×D), ``M_sum``/``W_sum`` (column sums), ``M_sq``/``W_sq`` (squared norms), ``MW
    = Σ M∘W``; with ``cross`` (and W) ``MWg = MᵀW``;
    with ``unit``, of the rows ``u_k = m_k/(‖m_k‖ + ε)``: ``UU``, ``U_sum``, ``U_sq =
    Σ‖u_k‖²``, ``U_quad = Σ‖u_k‖⁴``. One fold, as separate reductions in one compute keep every
    tile alive until the last of them has passed it."""
    M = M.rechunk({1: -1})
    D = M.shape[1]
    args = [M]
    if W is not None:
        W = W.rechunk((M.chunks[0], -1))
        args.append(W)
    cross = cross and W is not None
    d = fold_rows(C.terms_reduction(unit, cross), *args, how="chains", prefix="ncdask-terms")
    shapes = {"MM": (D, D), "M_sum": (D,), "M_sq": ()}
    if W is not None:
        shapes.update(WW=(D, D), W_sum=(D,), W_sq=(), MW=())
    if cross:
        shapes["MWg"] = (D, D)
    if unit:
        shapes.update(UU=(D, D), U_sum=(D,), U_sq=(), U_quad=())
    f64 = np.dtype(np.float64)
    return fields(d, {k: (shape, f64) for k, shape in shapes.items()}, M._meta)


def nc1_values(Mc: da.Array, Sw: da.Array, *, want_svd: bool, eps_dtype: Any = None,
               terms: dict[str, da.Array] | None = None) -> da.Array:
    """``[nc1_pinv, nc1_svd]`` (NaN where not asked or defined), on the smaller side.
    ``eps_dtype`` (the dtype the means came in) sets the pinv cutoff's ε."""
    K, D = Mc.shape
    if K <= D:
        return delayed_array(C.nc1_from_means, Mc, Sw, K, want_svd=want_svd, shape=(2,),
                             like=Mc, eps_dtype=eps_dtype)
    Sb = (gram(Mc) if terms is None else terms["MM"]) / K
    pinv = delayed_array(C.nc1_from_between, Sb, Sw, K, shape=(1,), like=Mc, eps_dtype=eps_dtype)
    return da.concatenate([pinv, da.full_like(pinv, math.nan)])  # full_like: pinv's array module


def etf_error(A: da.Array, B: da.Array | None = None, *, terms: dict[str, da.Array] | None = None,
              pair: str = "MM") -> da.Array:
    """``‖G/‖G‖_F − (I − 11ᵀ/K)/√(K−1)‖_F`` with ``G = B Aᵀ`` (``B = A`` by default).
    G is formed only when K ≤ D; else from the D×D grams in ``terms`` (:func:`tile_terms` of M
    and W, ``cross`` for ``pair`` "MW" when K = D + 1; ``pair`` names A and B) or folded here.
    Where G can be a simplex (K ≤ D + 1) from differences, an exact one giving ε
    (:mod:`ncdask.kernels.closed_forms`); else (err ≥ 1/√(K−1)) from three scalars."""
    K, D = A.shape
    if K <= D:  # K×K is no larger than D×D: one block
        G = (A if B is None else B).rechunk(-1) @ A.rechunk(-1).T
        return delayed_array(C.etf_error_gram, G, shape=(), like=A)
    a, b = pair
    exact = K == D + 1
    if terms is None or (exact and a != b and "MWg" not in terms):
        terms, (a, b) = tile_terms(A, B, cross=exact), ("M", "M" if B is None else "W")
    if not exact:
        fro2 = (terms[a + a] * terms[b + b]).sum()
        trace = terms[f"{a}_sq"] if a == b else terms["MW"]
        ones2 = (terms[f"{a}_sum"] * terms[f"{b}_sum"]).sum()
        return delayed_array(C.etf_error, fro2, trace, ones2, K, shape=(), like=A)
    if a == b:
        args = (terms[a + a], None, None, terms[f"{a}_sum"], None)
    else:
        args = (terms["MM"], terms["WW"], terms["MWg"], terms["M_sum"], terms["W_sum"])
    return delayed_array(C.etf_error_terms, *args, K, shape=(), like=A)


def row_norms(A: da.Array) -> da.Array:
    """``‖a_k‖`` per row."""
    return da.sqrt((A * A).sum(axis=1))


def normalized(A: da.Array) -> da.Array:
    """Rows divided by ``‖a_k‖ + ε`` (the reference's normalisation)."""
    eps = float(np.finfo(A.dtype).eps)
    return A / (row_norms(A)[:, None] + eps)


def cosine_rows(A: da.Array, B: da.Array, *, eps: float = 1e-8) -> da.Array:
    """``a_k · b_k / (max(‖a_k‖, ε) max(‖b_k‖, ε))`` per row, as torch's ``cosine_similarity``."""
    na = da.maximum(row_norms(A), eps)
    nb = da.maximum(row_norms(B), eps)
    return (A * B).sum(axis=1) / (na * nb)


def small_gram(A: da.Array) -> da.Array:
    """The smaller Gram matrix of ``A`` (K×D): ``AAᵀ`` when K ≤ D, else ``AᵀA`` (:func:`gram`)."""
    K, D = A.shape
    if K > D:
        return gram(A)
    A = A.rechunk(-1)
    return A @ A.T


def effective_rank(G: da.Array, *, singular: bool = False) -> da.Array:
    """Lazy effective rank (0-d) of a small symmetric Gram matrix (one task, ``eigvalsh``)."""
    return delayed_array(C.gram_effective_rank, G, shape=(), like=G, singular=singular)


def total_spectra(M: da.Array, Sw: da.Array, frac: da.Array, *, n_rows: int,
                  want: tuple[bool, bool, bool], eps_dtype: Any = None) -> da.Array:
    """Lazy ``[vci, alpha_req, rankme]`` (:func:`ncdask.kernels.spectrum.total_spectra`) from
    the class means ``M`` (K×D, class tiles), ``Σ_W`` and the class weights ``frac = n_k/N``.
    The sample mean ``x̄ = Σ_k f_k μ_k`` and ``Σ_B^f = Σ_k f_k (μ_k − x̄)(μ_k − x̄)ᵀ`` are
    folded over the tiles (D×D, no K×K array); then one task."""
    xbar = (M * frac[:, None]).sum(axis=0).rechunk(-1)
    dev = M - xbar[None, :]
    Sb = gram(dev * frac[:, None], dev)
    return delayed_array(SP.total_spectra, Sw, Sb, xbar, M.shape[0], n_rows, want=want,
                         eps_dtype=eps_dtype, shape=(3,), like=M)


def interference(Mc: da.Array, terms: dict[str, da.Array] | None = None) -> da.Array:
    """Lazy ``[mean, var]`` of the off-diagonal cosines ``u_i·u_j`` of the rows of ``Mc``.
    From ``‖Σu‖²`` and ``‖UᵀU‖²_F``: with ``terms`` (:func:`tile_terms`,
    ``unit=True``, K > D) from the folded D×D Gram, else from the K×K Gram."""
    if terms is not None:
        s, G, q2, q4 = terms["U_sum"], terms["UU"], terms["U_sq"], terms["U_quad"]
    else:
        U = normalized(Mc)
        s, G = U.sum(axis=0), small_gram(U)
        q = (U * U).sum(axis=1)
        q2, q4 = q.sum(), (q * q).sum()
    return delayed_array(C.off_diagonal_moments, (s * s).sum(), (G * G).sum(), q2, q4,
                         float(Mc.shape[0]), shape=(2,), like=Mc)
