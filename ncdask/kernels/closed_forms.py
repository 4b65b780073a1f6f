"""Small dense kernels: NC1 traces on the smaller side, closed-form ETF errors, class-tile folds.

None forms a K×K matrix unless K ≤ D (then no larger than the D×D covariances)."""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np

from ncdask.kernels._reduction import Reduction, sum_all, sum_fields
from ncdask.kernels._xp import array_namespace, errstate
from ncdask.kernels.spectrum import between_spectrum, effective_rank, nc1_undefined


def nc1_from_means(Mc: Any, Sw: Any, n_classes: int, *, want_svd: bool,
                   eps_dtype: Any = None) -> Any:
    """``[nc1_pinv, nc1_svd]`` (NaN where not asked or undefined) from the K×D centred means.
    With the thin SVD of ``M̃``, ``Σ_B = M̃ᵀM̃/K`` has eigenvalues ``σ_i = s_i²/K``
    and ``tr(Σ_B⁺ Σ_W) = Σ_{σ_i > cut} v_iᵀ Σ_W v_i / σ_i`` (cutoff and
    ``eps_dtype``: :func:`~ncdask.kernels.spectrum.between_spectrum`). ``nc1_svd``
    takes the top K−1 pairs without cutoff (+inf when Σ_B has rank < K−1)."""
    xp = array_namespace(Mc, Sw)
    Mc, Sw = xp.asarray(Mc), xp.asarray(Sw)
    if nc1_undefined(Mc, Sw, xp):
        return xp.asarray([math.nan, math.nan], dtype=Mc.dtype)
    with errstate(xp):
        sig, V, keep = between_spectrum(Mc, n_classes, from_means=True, eps_dtype=eps_dtype)
        q = xp.sum((V.T @ Sw) * V.T, axis=1)
        pinv = xp.sum(xp.where(keep, q / xp.where(keep, sig, 1.0), 0.0)) / n_classes
        svd = math.nan
        if want_svd:
            top = sig[: n_classes - 1]
            if top.shape[0] and bool(xp.any(~keep[: n_classes - 1])):
                svd = math.inf
            else:
                svd = float(xp.sum(q[: n_classes - 1] / top)) / n_classes
    return xp.asarray([float(pinv), svd], dtype=Mc.dtype)


def nc1_from_between(Sb: Any, Sw: Any, n_classes: int, *, eps_dtype: Any = None) -> Any:
    """``[nc1_pinv]`` from the D×D between-class covariance (the D side, D < K)."""
    xp = array_namespace(Sb, Sw)
    Sb, Sw = xp.asarray(Sb), xp.asarray(Sw)
    if nc1_undefined(Sb, Sw, xp):
        return xp.asarray([math.nan], dtype=Sb.dtype)
    with errstate(xp):
        lam, V, keep = between_spectrum(Sb, n_classes, from_means=False, eps_dtype=eps_dtype)
        q = xp.sum((Sw @ V) * V, axis=0)
        val = xp.sum(xp.where(keep, q / xp.where(keep, lam, 1.0), 0.0)) / n_classes
    return xp.reshape(xp.asarray(val, dtype=Sb.dtype), (1,))


def etf_error(fro2: Any, trace: Any, ones2: Any, n_classes: int) -> Any:
    """:func:`etf_error_gram` from ``‖G‖_F²``, ``tr G`` and ``1ᵀG1``, for K > D + 1 only.
    Both terms have unit norm: ``√(2 − 2c)``, ``c = (tr G − 1ᵀG1/K) / (√(K−1) ‖G‖_F)``.
    Relative precision ``ε/err²``; G has rank ≤ D, so ``err² ≥ (K−1−D)/(K−1) ≥ 1/(K−1)``."""
    xp = array_namespace(fro2)
    with errstate(xp):
        c = (trace - ones2 / n_classes) / (math.sqrt(n_classes - 1) * xp.sqrt(fro2))
        return xp.sqrt(xp.maximum(2.0 - 2.0 * c, 0.0))


def etf_error_gram(G: Any) -> Any:
    """``‖G/‖G‖_F − (I − 11ᵀ/K)/√(K−1)‖_F`` from the K×K ``G``, entry by entry.
    A difference, not ``√(2 − 2 cos)``: an exact simplex gives ε, not √ε."""
    xp = array_namespace(G)
    K = G.shape[0]
    with errstate(xp):
        g = xp.sqrt(xp.sum(G * G))
        T = (xp.eye(K, dtype=G.dtype) - 1.0 / K) / math.sqrt(K - 1)
        E = G / g - T
        return xp.sqrt(xp.sum(E * E))


def etf_error_terms(AA: Any, BB: Any, AB: Any, a_sum: Any, b_sum: Any, n_classes: int) -> Any:
    """:func:`etf_error_gram` of ``G = BAᵀ`` (K×K, K = D + 1: a simplex fits) from the D×D
    ``AᵀA``, ``BᵀB``,
    ``AᵀB`` and the column sums (``BB``, ``AB``, ``b_sum`` None: ``B = A``), without forming G.

    With ``P = I − 11ᵀ/K`` and ``s = √(K−1)`` the error splits into orthogonal parts,
    ``‖G − PGP‖²`` (from the row means) and ``‖PGP − gP/s‖²``. The second lives in the span
    of ``C = [PA, PB]``: with ``CᵀC = S = VΛVᵀ`` and ``R = Λ^½Vᵀ`` (the r rows above
    round-off), it is ``g²‖Y − I/s‖² + g²(K−1−r)/s²``, ``Y = R E Rᵀ/g`` (r×r) for the E with
    ``CECᵀ = PB(PA)ᵀ``. Every square is of a difference, so an exact simplex gives ε."""
    xp = array_namespace(AA)
    K, D = n_classes, AA.shape[0]
    s2 = float(K - 1)
    with errstate(xp):
        a = a_sum / K
        Sa = AA - K * (a[:, None] * a[None, :])
        if AB is None:
            b, Sb, S, g2 = a, Sa, Sa, xp.sum(AA * AA)
        else:
            b = b_sum / K
            Sb = BB - K * (b[:, None] * b[None, :])
            Sab = AB - K * (a[:, None] * b[None, :])
            S, g2 = xp.concat([xp.concat([Sa, Sab], axis=1), xp.concat([Sab.T, Sb], axis=1)]), \
                xp.sum(AA * BB)
        off = (K * (xp.maximum(a @ Sb @ a, 0.0) + xp.maximum(b @ Sa @ b, 0.0))
               + K * K * xp.sum(a * b) ** 2) / g2
        lam, V = xp.linalg.eigh((S + S.T) / 2.0)
        eps = float(np.finfo(np.float64).eps)
        tol = float(xp.max(xp.abs(lam))) * eps * 16 * (S.shape[0] + math.sqrt(K))  # round-off
        keep = lam > tol
        R = (xp.sqrt(xp.where(keep, lam, 0.0))[:, None] * V.T)[keep]
        Y = (R @ R.T if AB is None else R[:, D:] @ R[:, :D].T) / xp.sqrt(g2)
        Y = Y - xp.eye(Y.shape[0], dtype=Y.dtype) / math.sqrt(s2)
        r = int(xp.sum(keep))
        return xp.sqrt(xp.maximum(off + xp.sum(Y * Y) + (s2 - r) / s2, 0.0))


def gram_effective_rank(G: Any, *, singular: bool = False) -> Any:
    """Effective rank (0-d) of a PSD Gram's eigenvalues, or (``singular``) of their roots."""
    xp = array_namespace(G)
    if not bool(xp.all(xp.isfinite(G))):  # eigvalsh would raise: NaN, as the other metrics
        return xp.asarray(math.nan)
    with errstate(xp):
        lam = xp.maximum(xp.linalg.eigvalsh((G + G.T) / 2.0), 0.0)
        if singular:
            lam = xp.sqrt(lam)
    return effective_rank(lam[None, :])[0]


def off_diagonal_moments(sum_sq: Any, frob_sq: Any, sq: Any, quad: Any, n_rows: float) -> Any:
    """``[mean, var]`` of the off-diagonal entries of ``UUᵀ`` over the K(K−1) ordered pairs.
    Their sum is ``‖Σ_k u_k‖² − Σ‖u_k‖²``, their sum of squares ``‖UᵀU‖²_F − Σ‖u_k‖⁴``."""
    xp = array_namespace(sum_sq)
    P = float(n_rows * (n_rows - 1))
    with errstate(xp):
        mean = (sum_sq - sq) / P
        var = (frob_sq - quad) / P - mean * mean
    return xp.stack([xp.asarray(mean, dtype=xp.float64), xp.asarray(var, dtype=xp.float64)])


def add_gram(acc: Any, a: Any, b: Any) -> Any:
    """``acc + aᵀb`` (``aᵀb`` when ``acc`` is None), in place."""
    p = a.T @ b
    if acc is None:
        return p
    acc += p  # acc is the previous fold step's result, read by this step alone
    return acc


#: ``AᵀB`` over the class tiles, folded into running sums (:func:`ncdask.graph.closed_forms.gram`).
GRAM = Reduction(fold=add_gram, combine=sum_all)


def fold_terms(acc: Any, m: Any, w: Any = None, *, unit: bool = False,
               cross: bool = False) -> dict[str, Any]:
    """Add one class tile's terms into ``acc`` (:func:`ncdask.graph.closed_forms.tile_terms`)."""
    xp = array_namespace(m)
    t = {"MM": m.T @ m, "M_sum": xp.sum(m, axis=0), "M_sq": xp.sum(m * m)}
    if w is not None:
        t.update(WW=w.T @ w, W_sum=xp.sum(w, axis=0), W_sq=xp.sum(w * w), MW=xp.sum(m * w))
        if cross:
            t["MWg"] = m.T @ w
    if unit:  # the rows normalised as the reference does, u = m / (‖m‖ + eps)
        u = m / (xp.sqrt(xp.sum(m * m, axis=1)) + float(np.finfo(m.dtype).eps))[:, None]
        q = xp.sum(u * u, axis=1)
        t.update(UU=u.T @ u, U_sum=xp.sum(u, axis=0), U_sq=xp.sum(q), U_quad=xp.sum(q * q))
    if acc is None:
        return t
    for k, v in t.items():
        acc[k] += v  # acc is the previous fold step's result, read by this step alone
    return acc


def terms_reduction(unit: bool = False, cross: bool = False) -> Reduction:
    """The class-tile terms as a fold (``unit``: also those of the normalised rows,
    ``cross``: ``MᵀW``)."""
    return Reduction(fold=functools.partial(fold_terms, unit=unit, cross=cross),
                     combine=sum_fields)
