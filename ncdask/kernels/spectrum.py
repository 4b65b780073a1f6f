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


#: RankMe's ε, added to each normalised singular value (Garrido et al. 2023).
RANKME_EPS = 1e-7


def total_spectra(Sw: Any, Sb: Any, mean: Any, n_classes: int, n_rows: int, *,
                  want: tuple[bool, bool, bool] = (True, True, True),
                  eps_dtype: Any = None) -> Any:
    """``[vci, alpha_req, rankme]`` (NaN where not in ``want`` or undefined) of the total
    covariance ``Σ_T = Σ_W + Σ_B^f`` (``Sb`` the frequency-weighted between-class covariance
    around the sample mean ``mean``; both 1/N). One eigendecomposition of Σ_T serves the first
    two, one of the second moment ``Σ_T + x̄x̄ᵀ`` the third. An eigenvalue counts as nonzero
    above torch's pinv cutoff ``D ε λ₁`` (ε of ``eps_dtype``), as in ``nc1_pinv``:

    - ``vci = 1 − tr(Σ_T⁺ Σ_B^f) / min(D, K−1)``;
    - ``alpha_req = −slope`` of the least-squares line of ``log λ_i`` on ``log i`` over the
      nonzero eigenvalues of Σ_T in decreasing order (≥ 0; NaN with fewer than two);
    - ``rankme = exp(−Σ p_k log p_k)``, ``p_k = σ_k / Σσ + 1e-7`` over the ``min(N, D)``
      singular values of the raw (uncentred) N×D embedding matrix, ``σ_k = √(N μ_k)`` from the
      eigenvalues μ of the second moment; μ under the cutoff (``σ ≲ √(Dε) σ₁``, which a second
      moment does not resolve) counts as 0."""
    xp = array_namespace(Sw, Sb, mean)
    Sw, Sb, mean = xp.asarray(Sw), xp.asarray(Sb), xp.asarray(mean)
    out = [math.nan] * 3
    if not all(bool(xp.all(xp.isfinite(a))) for a in (Sw, Sb, mean)):
        return xp.asarray(out, dtype=xp.float64)
    D, St = Sw.shape[0], (Sw + Sw.T + Sb + Sb.T) * 0.5
    with errstate(xp):
        if want[0] or want[1]:
            lam, V = xp.linalg.eigh(St)
            keep = lam > pinv_cutoff(float(xp.max(xp.abs(lam))), D, eps_dtype or St.dtype, xp)
            if want[0] and n_classes > 1 and bool(xp.any(keep)):
                q = xp.sum((Sb @ V) * V, axis=0)
                tr = float(xp.sum(xp.where(keep, q / xp.where(keep, lam, 1.0), 0.0)))
                out[0] = 1.0 - tr / min(D, n_classes - 1)
            if want[1]:
                out[1] = _power_law_decay(lam[keep][::-1], xp)
        if want[2]:
            mu = xp.linalg.eigvalsh(St + mean[:, None] * mean[None, :])[::-1][: min(n_rows, D)]
            cut = pinv_cutoff(float(xp.max(xp.abs(mu))), D, eps_dtype or St.dtype, xp)
            s = xp.sqrt(xp.where(mu > cut, mu, 0.0))
            tot = float(xp.sum(s))
            if tot > 0:
                p = s / tot + RANKME_EPS
                out[2] = math.exp(-float(xp.sum(p * xp.log(p))))
    return xp.asarray(out, dtype=xp.float64)


def _power_law_decay(lam: Any, xp: Any) -> float:
    """``−slope`` of ``log λ_i`` against ``log i`` (least squares), λ decreasing and positive."""
    r = int(lam.shape[0])
    if r < 2:
        return math.nan
    x = xp.log(xp.arange(1, r + 1, dtype=xp.float64))
    y = xp.log(lam)
    x, y = x - xp.mean(x), y - xp.mean(y)
    return -float(xp.sum(x * y)) / float(xp.sum(x * x))
