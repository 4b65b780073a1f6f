"""Small dense kernels: NC1 traces on the smaller side, closed-form ETF errors.

None of these ever forms a K×K matrix unless K ≤ D, in which case it is no
larger than the D×D covariances that are held anyway.

Everything here takes its array module from its inputs (NumPy or CuPy) and
imports neither dask nor xarray.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np

from ncdask.kernels._reduction import Reduction, sum_all, sum_fields
from ncdask.kernels._xp import array_namespace
from ncdask.kernels.pairwise import errstate


def pinv_cutoff(sigma_max: float, dim: int, dtype: Any, xp: Any) -> float:
    """``torch.linalg.pinv``'s default cutoff on a ``dim × dim`` matrix: ``dim · ε · σ₁``."""
    return float(dim) * float(xp.finfo(dtype).eps) * float(sigma_max)


def _undefined(B: Any, Sw: Any, xp: Any) -> bool:
    """NC1 is undefined: non-finite inputs, or no between-class spread at all.

    Every class mean equal (all rows identical, or an offset that float32
    storage rounded the spread away) makes ``Σ_B = 0``; its pseudo-inverse is
    0 and ``tr(Σ_B⁺ Σ_W)`` would read as perfect collapse, so it is NaN, as
    the other NC1 metrics are. NaN or inf inputs give NaN, not a LinAlgError.
    """
    if not (bool(xp.all(xp.isfinite(B))) and bool(xp.all(xp.isfinite(Sw)))):
        return True
    return not bool(xp.any(B != 0))


def between_spectrum(A: Any, n_classes: int, *, from_means: bool,
                     eps_dtype: Any = None) -> tuple[Any, Any, Any]:
    """Eigenpairs ``(λ, V, keep)`` of ``Σ_B`` on the smaller side, under torch's pinv cutoff.

    With ``from_means``, ``A`` is the K×D centred means and ``Σ_B = AᵀA/K`` has
    ``λ = s²/K`` on the right singular vectors (thin SVD); else ``A`` is the
    D×D ``Σ_B`` itself (symmetric eigendecomposition). ``keep``: ``|λ|`` above
    ``torch.linalg.pinv``'s cutoff ``D ε max|λ|`` (ε of ``eps_dtype``,
    default ``A.dtype``). Shared by ``nc1_pinv`` on the D side, ``Σ_B⁺`` and
    its factor, so all three cut off the same directions.
    """
    xp = array_namespace(A)
    D = A.shape[1]
    if from_means:
        _, s, Vt = xp.linalg.svd(A, full_matrices=False)
        lam, V = s * s / n_classes, Vt.T
    else:
        lam, V = xp.linalg.eigh((A + A.T) * 0.5)
    sig = xp.abs(lam)
    cut = pinv_cutoff(float(xp.max(sig)) if sig.shape[0] else 0.0, D, eps_dtype or A.dtype, xp)
    return lam, V, sig > cut


def nc1_from_means(
    Mc: Any, Sw: Any, n_classes: int, *, want_svd: bool, eps_dtype: Any = None
) -> Any:
    """``nc1_pinv`` and ``nc1_svd`` from the centred means (the K side, for K ≤ D).

    With the thin SVD ``M̃ = U diag(s) Vᵀ``, ``Σ_B = M̃ᵀM̃ / K`` has singular
    values ``σ_i = s_i² / K`` and vectors ``v_i``, so
    ``tr(Σ_B⁺ Σ_W) = Σ_{σ_i > cut} (v_iᵀ Σ_W v_i) / σ_i`` with torch's cutoff
    ``cut = D ε σ₁`` of the D×D ``Σ_B`` (the centring null direction has
    ``σ ≈ ε² σ₁`` here and always falls below it).

    Parameters
    ----------
    Mc : array (K, D)
        Centred class means, K ≤ D.
    Sw : array (D, D)
        Within-class covariance.
    n_classes : int
        K.
    want_svd : bool
        Also compute ``nc1_svd`` (top K−1 pairs, no cutoff; +inf when one of
        them is at or below the cutoff, i.e. Σ_B has rank < K−1).
    eps_dtype : dtype, optional
        Dtype whose ε sets the cutoff: that of the means as given (float32
        means upcast to float64 still carry float32 rounding), default
        ``Mc.dtype``.

    Returns
    -------
    array (2,)
        ``[nc1_pinv, nc1_svd]`` (NaN where not asked).
    """
    xp = array_namespace(Mc, Sw)
    Mc, Sw = xp.asarray(Mc), xp.asarray(Sw)
    if _undefined(Mc, Sw, xp):
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
    """``nc1_pinv`` from the D×D between-class covariance (the D side, for D < K).

    ``tr(Σ_B⁺ Σ_W) / K`` with the symmetric eigendecomposition of ``Σ_B`` and
    torch's cutoff ``D ε σ₁`` on its singular values ``|λ|`` (ε of ``eps_dtype``,
    default ``Sb.dtype``).

    Returns
    -------
    array (1,)
    """
    xp = array_namespace(Sb, Sw)
    Sb, Sw = xp.asarray(Sb), xp.asarray(Sw)
    if _undefined(Sb, Sw, xp):
        return xp.asarray([math.nan], dtype=Sb.dtype)
    with errstate(xp):
        lam, V, keep = between_spectrum(Sb, n_classes, from_means=False, eps_dtype=eps_dtype)
        q = xp.sum((Sw @ V) * V, axis=0)
        val = xp.sum(xp.where(keep, q / xp.where(keep, lam, 1.0), 0.0)) / n_classes
    return xp.reshape(xp.asarray(val, dtype=Sb.dtype), (1,))


def etf_error(fro2: Any, trace: Any, ones2: Any, n_classes: int) -> Any:
    """``‖G/‖G‖_F − (I − 11ᵀ/K)/√(K−1)‖_F`` from three scalars of ``G``.

    ``‖G‖_F² = fro2``, ``tr G = trace``, ``1ᵀG1 = ones2``. Since both terms have
    unit norm, the error is ``√(2 − 2 c)`` with
    ``c = (tr G − 1ᵀG1/K) / (√(K−1) ‖G‖_F)``. It keeps about
    ``ε / err²`` relative precision, so it is exact to 1e-6 down to errors of
    about 1e-5.
    """
    xp = array_namespace(fro2)
    with errstate(xp):
        c = (trace - ones2 / n_classes) / (math.sqrt(n_classes - 1) * xp.sqrt(fro2))
        return xp.sqrt(xp.maximum(2.0 - 2.0 * c, 0.0))


def gram_effective_rank(G: Any, *, singular: bool = False) -> Any:
    """Roy & Vetterli's effective rank of a symmetric PSD Gram matrix, as a 0-d array.

    ``exp(H(p))``, ``p = λ / Σλ`` over the eigenvalues λ of ``G`` (rounding
    negatives clipped to 0); with ``singular``, over their square roots: the
    singular values of ``A`` when ``G = AᵀA`` or ``AAᵀ``. Either Gram of a
    matrix has the same non-zero eigenvalues, so the smaller one serves.
    """
    from ncdask.kernels.covariances import effective_rank

    xp = array_namespace(G)
    if not bool(xp.all(xp.isfinite(G))):  # eigvalsh would raise: NaN, as the other metrics
        return xp.asarray(math.nan)
    with errstate(xp):
        lam = xp.maximum(xp.linalg.eigvalsh((G + G.T) / 2.0), 0.0)
        if singular:
            lam = xp.sqrt(lam)
    return effective_rank(lam[None, :])[0]


def off_diagonal_moments(sum_sq: Any, frob_sq: Any, sq: Any, quad: Any, n_rows: float) -> Any:
    """Mean and variance of the off-diagonal entries ``c_ij = u_i·u_j`` (i ≠ j) of ``UUᵀ``.

    From ``sum_sq = ‖Σ_k u_k‖²``, ``frob_sq = ‖UᵀU‖²_F = ‖UUᵀ‖²_F``,
    ``sq = Σ‖u_k‖²`` and ``quad = Σ‖u_k‖⁴``: ``Σ_{i≠j} c_ij = sum_sq − sq``,
    ``Σ_{i≠j} c_ij² = frob_sq − quad``, each over the K(K−1) ordered pairs
    (the same moments as over the unordered ones). Returns ``[mean, var]``.
    """
    xp = array_namespace(sum_sq)
    P = float(n_rows * (n_rows - 1))
    with errstate(xp):
        mean = (sum_sq - sq) / P
        var = (frob_sq - quad) / P - mean * mean
    return xp.stack([xp.asarray(mean, dtype=xp.float64), xp.asarray(var, dtype=xp.float64)])


# --------------------------------------------------------------------------- class-tile folds


def add_gram(acc: Any, a: Any, b: Any) -> Any:
    """``acc + aᵀb`` (``aᵀb`` when ``acc`` is None), in place."""
    p = a.T @ b
    if acc is None:
        return p
    acc += p  # acc is the previous fold step's result, read by this step alone
    return acc


#: ``AᵀB`` over the class tiles, folded into running sums (:func:`ncdask.graph.closed_forms.gram`).
GRAM = Reduction(fold=add_gram, combine=sum_all)


def fold_terms(acc: Any, m: Any, w: Any = None, *, unit: bool = False) -> dict[str, Any]:
    """Add one class tile's terms into ``acc`` (:func:`ncdask.graph.closed_forms.tile_terms`)."""
    xp = array_namespace(m)
    t = {"MM": m.T @ m, "M_sum": xp.sum(m, axis=0), "M_sq": xp.sum(m * m)}
    if w is not None:
        t.update(WW=w.T @ w, W_sum=xp.sum(w, axis=0), W_sq=xp.sum(w * w), MW=xp.sum(m * w))
    if unit:  # the rows normalised as the reference does, u = m / (‖m‖ + eps)
        u = m / (xp.sqrt(xp.sum(m * m, axis=1)) + float(np.finfo(m.dtype).eps))[:, None]
        q = xp.sum(u * u, axis=1)
        t.update(UU=u.T @ u, U_sum=xp.sum(u, axis=0), U_sq=xp.sum(q), U_quad=xp.sum(q * q))
    if acc is None:
        return t
    for k, v in t.items():
        acc[k] += v  # acc is the previous fold step's result, read by this step alone
    return acc


def terms_reduction(unit: bool = False) -> Reduction:
    """The class-tile terms as a fold (``unit``: also those of the normalised rows)."""
    return Reduction(fold=functools.partial(fold_terms, unit=unit), combine=sum_fields)

