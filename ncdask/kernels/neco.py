"""Per-chunk kernels of NECO, the Neural-Collapse-based OOD score (Ammar et al. 2024).

The fit works on D×D matrices only (the total covariance comes from the
class statistics); the score works on one block of samples at a time.
Everything here takes its array module from its inputs (NumPy or CuPy) and
imports neither dask nor xarray.
"""

from __future__ import annotations

from typing import Any

from ncdask.kernels._xp import array_namespace
from ncdask.kernels.pairwise import errstate


def pca_of_total_covariance(
    St: Any, n_components: int, *, standardize: bool = True
) -> tuple[Any, Any, Any]:
    """Per-feature scale and principal directions of (standardised) features.

    With ``σ_j² = (Σ_T)_jj`` the population variance of feature j,
    ``StandardScaler`` divides by ``σ_j`` (1 where ``σ_j < 10 ε``), so the
    standardised features have covariance ``Σ_T / (σ σᵀ)``; its leading
    eigenvectors are the principal directions a ``PCA`` fitted on the
    standardised train features finds (up to sign).

    Parameters
    ----------
    St : array (D, D)
        Total (population) covariance of the train features.
    n_components : int
        Number of directions ``d`` kept.
    standardize : bool
        Standardise the features first (else ``σ = 1``).

    Returns
    -------
    (scale (D,), components (d, D), eigenvalues (D,))
        Eigenvalues of the (standardised) covariance, descending (population
        variances along each direction).
    """
    xp = array_namespace(St)
    St = xp.asarray(St)
    D = St.shape[0]
    with errstate(xp):
        var = xp.maximum(xp.diagonal(St), 0.0)
        scale = xp.sqrt(var)
        if standardize:
            tiny = 10.0 * float(xp.finfo(St.dtype).eps)
            scale = xp.where(scale < tiny, 1.0, scale)
        else:
            scale = xp.ones(D, dtype=St.dtype)
        C = St / scale[:, None] / scale[None, :]
        lam, V = xp.linalg.eigh((C + C.T) * 0.5)
    lam, V = lam[::-1], V[:, ::-1]
    return scale, xp.ascontiguousarray(V[:, :n_components].T), lam


def neco_block(
    X: Any, mean: Any, scale: Any, components: Any, max_logit: Any = None, mask: Any = None
) -> Any:
    """NECO scores of one block of samples.

    ``‖P_d x̃‖ / ‖x̃‖`` with ``x̃ = (x − μ) / σ`` and ``P_d`` the projection on
    the ``d`` principal directions (rows of ``components``), times the
    sample's largest logit when ``max_logit`` is given.

    Parameters
    ----------
    X : array (n, D)
    mean, scale : array (D,)
        Train feature mean and per-feature scale.
    components : array (d, D)
        Orthonormal principal directions.
    max_logit : array (n,), optional
    mask : array (n,) of bool, optional
        Samples to score; the others get NaN.

    Returns
    -------
    array (n,) float64
        NaN for a sample equal to the mean (``x̃ = 0``) or masked out.
    """
    xp = array_namespace(X, components)
    if X.shape[0] == 0:
        return xp.zeros(0, dtype=xp.float64)
    with errstate(xp):
        Z = xp.asarray(X, dtype=xp.float64) - xp.asarray(mean)[None, :]
        Z /= xp.asarray(scale)[None, :]
        P = Z @ xp.asarray(components).T
        num = xp.sqrt(xp.einsum("ij,ij->i", P, P))
        den = xp.sqrt(xp.einsum("ij,ij->i", Z, Z))
        out = xp.where(den > 0, num / xp.where(den > 0, den, 1.0), xp.nan)
        if max_logit is not None:
            out = out * xp.asarray(max_logit, dtype=xp.float64)
        if mask is not None:
            out = xp.where(xp.asarray(mask), out, xp.nan)
    return out


def max_over_last(logits: Any) -> Any:
    """Largest logit of each row (float64)."""
    xp = array_namespace(logits)
    return xp.max(xp.asarray(logits, dtype=xp.float64), axis=-1)


def nci_block(X: Any, best: Any, cls: Any, g: Any, mG: Any, alpha: float) -> Any:
    """NCI scores of one block of rows.

    ``((x − μ_G)·w_ĉ) / ‖x − μ_G‖ + α‖x‖₁`` with ĉ the classifier's
    prediction: the numerator is ``best − g[ĉ]`` where ``best = w_ĉ·x + b_ĉ``
    (the largest logit) and ``g = b + W μ_G``, so no classifier row is gathered.
    """
    xp = array_namespace(X)
    with errstate(xp):
        Xc = X - mG[None, :]
        num = best - xp.asarray(g)[xp.asarray(cls).astype(xp.int64)]
        score = num / xp.sqrt(xp.sum(Xc * Xc, axis=1))
        if alpha:
            score = score + alpha * xp.sum(xp.abs(X), axis=1)
    return score
