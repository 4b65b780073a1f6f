"""Per-chunk kernels of NECO (Ammar et al. 2024): a fit on D×D matrices, a score per block."""

from __future__ import annotations

from typing import Any

from ncdask.kernels._xp import array_namespace, errstate


def pca_of_total_covariance(St: Any, n_components: int, *,
                            standardize: bool = True) -> tuple[Any, Any, Any]:
    """``(scale (D,), components (d, D), eigenvalues (D,) descending)`` from the total covariance.
    ``StandardScaler`` divides feature j by ``σ_j = √(Σ_T)_jj`` (1 where
    ``σ_j < 10 ε``; ``σ = 1`` without ``standardize``), so the leading
    eigenvectors of ``Σ_T / (σ σᵀ)`` are the directions its ``PCA`` finds."""
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


def neco_block(X: Any, mean: Any, scale: Any, components: Any, max_logit: Any = None,
               mask: Any = None) -> Any:
    """NECO scores ``‖P_d x̃‖ / ‖x̃‖``, ``x̃ = (x − μ)/σ``, of one block (times ``max_logit``).
    ``components`` (d, D) are orthonormal directions; rows outside ``mask``,
    or equal to the mean, get NaN. Returns float64 (n,)."""
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
    """NCI scores ``((x − μ_G)·w_ĉ) / ‖x − μ_G‖ + α‖x‖₁`` of one block.
    The numerator is ``best − g[ĉ]``, with ``best`` the largest logit and
    ``g = b + W μ_G``, so no classifier row is gathered."""
    xp = array_namespace(X)
    with errstate(xp):
        Xc = X - mG[None, :]
        num = best - xp.asarray(g)[xp.asarray(cls).astype(xp.int64)]
        score = num / xp.sqrt(xp.sum(Xc * Xc, axis=1))
        if alpha:
            score = score + alpha * xp.sum(xp.abs(X), axis=1)
    return score
