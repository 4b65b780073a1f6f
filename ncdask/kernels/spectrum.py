"""Spectra shared by the NC1 closed forms, the per-class covariances and the pinv shares."""

from __future__ import annotations

import math
from typing import Any

from ncdask.kernels._xp import array_namespace, errstate


def pinv_cutoff(sigma_max: float, dim: int, dtype: Any, xp: Any) -> float:
    """``torch.linalg.pinv``'s default cutoff on a ``dim × dim`` matrix: ``dim · ε · σ₁``."""
    return float(dim) * float(xp.finfo(dtype).eps) * float(sigma_max)


def nc1_undefined(B: Any, Sw: Any, xp: Any) -> bool:
    """Whether NC1 is undefined: non-finite input, or ``Σ_B = 0`` (every class mean equal).
    ``Σ_B = 0`` has pseudo-inverse 0, which would read as perfect collapse; NaN
    is returned instead, as the other NC1 metrics do."""
    if not (bool(xp.all(xp.isfinite(B))) and bool(xp.all(xp.isfinite(Sw)))):
        return True
    return not bool(xp.any(B != 0))


def between_spectrum(A: Any, n_classes: int, *, from_means: bool,
                     eps_dtype: Any = None) -> tuple[Any, Any, Any]:
    """Eigenpairs ``(λ, V, keep)`` of ``Σ_B`` on the smaller side, under torch's pinv cutoff. With
    ``from_means``, ``A`` is the K×D centred means and ``Σ_B = AᵀA/K`` has ``λ = s²/K`` on the
    right singular vectors (thin SVD); else ``A`` is the D×D ``Σ_B`` (symmetric
    eigendecomposition). ``keep``: ``|λ| > D ε max|λ|`` (ε of ``eps_dtype``, default ``A.dtype``).
    ``nc1_pinv``, ``Σ_B⁺`` and its factor all use it, so they cut off the same directions."""
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


def effective_rank(eigenvalues: Any) -> Any:
    """Roy & Vetterli's effective rank ``exp(H(p))``, ``p = λ / Σλ`` (λ clipped at 0), per row.
    NaN rows stay NaN; a zero matrix has effective rank 0."""
    xp = array_namespace(eigenvalues)
    with errstate(xp):
        lam = xp.maximum(eigenvalues, 0.0)
        lam = xp.where(xp.isnan(eigenvalues), math.nan, lam)
        tot = xp.sum(lam, axis=1)
        p = lam / xp.where(tot > 0, tot, 1.0)[:, None]
        h = -xp.sum(xp.where(p > 0, p * xp.log(xp.where(p > 0, p, 1.0)), 0.0), axis=1)
        er = xp.exp(h)
        return xp.where(tot > 0, er, xp.where(xp.isnan(tot), math.nan, 0.0))
