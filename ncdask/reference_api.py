"""Drop-in functions with the reference package's names and argument order.

Users of the PyTorch ``neural_collapse`` package (rhubarbwu/neural-collapse)
switch by changing an import: ``from ncdask import covariance_ratio, ...``.
The functions accept NumPy, CuPy, dask, xarray or PyTorch arrays and compute
in float64 with ncdask's blocked kernels:

* functions that return one number in the reference return a Python
  ``float`` here too (they compute; use :func:`ncdask.measure` for lazy
  results);
* per-class functions return the input's kind: a ``DataArray`` on ``class``
  for xarray input, a dask array for dask input, else a NumPy (or CuPy) array;
* grids (:func:`kernel_grid`, :func:`dist_kernel`, :func:`log_kernel`,
  :func:`riesz_kernel`, :func:`class_dist_norm_vars`,
  :func:`interference_grid`) are returned lazily as dask-backed
  ``DataArray`` objects on ``(class, class_)``, one chunk per tile pair, to
  be reduced or written to Zarr without ever holding the K×K grid.

Rows of ``M`` are taken as given, as in the reference: drop empty classes
first (:func:`ncdask.measure` does it for you).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import dask
import dask.array as da
import numpy as np
import xarray as xr

from .graph import closed_forms as CF
from .graph.pairwise import default_tile_size, pair_grid, pairwise_moments
from .kernels._xp import to_numpy
from .metrics import DegenerateInputWarning, as_dask

Array = Any


def _mat(M: Array, tile_size: int | None = None, name: str = "M") -> tuple[da.Array, int]:
    """``M`` as a float64 dask matrix chunked in class tiles, and the tile size."""
    A = as_dask(M)
    if A.ndim != 2:
        raise ValueError(f"{name} must be a (K, D) matrix, got shape {A.shape}")
    A = A.astype(np.float64)
    K, D = A.shape
    T = int(tile_size) if tile_size else default_tile_size(max(K, 1), D)
    if T < 1:
        raise ValueError(f"tile_size must be a positive integer, got {tile_size!r}")
    return A.rechunk((min(T, max(K, 1)), -1)), T


def _vec(m_G: Array, D: int) -> da.Array | float:
    if isinstance(m_G, (int, float)) and m_G == 0:
        return 0.0
    v = as_dask(m_G).astype(np.float64)
    if v.ndim == 0:
        return v
    if v.shape != (D,):
        raise ValueError(f"m_G has shape {v.shape}, expected ({D},)")
    return v.rechunk(-1)[None, :]


def _centred(M: Array, m_G: Array, tile_size: int | None = None) -> tuple[da.Array, int]:
    A, T = _mat(M, tile_size)
    g = _vec(m_G, A.shape[1])
    return (A - g if not (isinstance(g, float) and g == 0.0) else A), T


def _float(x: da.Array) -> float:
    return float(to_numpy(dask.compute(x)[0]))


def _like(result: da.Array, *inputs: Array) -> Array:
    if any(isinstance(i, (xr.DataArray, xr.Dataset)) for i in inputs):
        return xr.DataArray(result, dims=("class",))
    if any(isinstance(i, da.Array) for i in inputs):
        return result
    return dask.compute(result)[0]


def _grid(result: da.Array) -> xr.DataArray:
    return xr.DataArray(result, dims=("class", "class_"))


# --------------------------------------------------------------------------- NC1


def covariance_ratio(V_intra: Array, M: Array, m_G: Array = 0, metric: str = "pinv") -> float:
    """NC1 within-class variability relative to between-class variability.

    Parameters
    ----------
    V_intra : array (D, D)
        Within-class covariance Σ_W.
    M : array (K, D)
        Class means.
    m_G : array (D,) or 0
        Global mean; ``Σ_B = (M − m_G)ᵀ(M − m_G) / K``.
    metric : {"pinv", "svd", "quotient"}
        ``tr(Σ_B⁺ Σ_W)/K`` (torch's pinv cutoff ``D ε σ₁``, computed on the
        smaller of K and D), ``tr(Σ_W U diag(s)⁻¹ Uᵀ)/K`` with the top K−1
        singular pairs (NaN with a :class:`DegenerateInputWarning` unless
        K − 1 < D), or ``tr(Σ_W)/tr(Σ_B)``.

    Returns
    -------
    float

    References
    ----------
    Papyan et al. (2020); Han et al. (2022); Tirer et al. (2023).

    Examples
    --------
    >>> import numpy as np
    >>> from ncdask.reference_api import covariance_ratio
    >>> M = np.eye(3)
    >>> round(covariance_ratio(0.1 * np.eye(3), M, M.mean(0), metric="quotient"), 6)
    0.45
    """
    Mc, _ = _centred(M, m_G)
    Sw = as_dask(V_intra).astype(np.float64)
    K, D = Mc.shape
    if metric == "quotient":
        return _float(da.trace(Sw) / ((Mc * Mc).sum() / K))
    if metric not in ("pinv", "svd"):
        raise ValueError(f"metric must be 'pinv', 'svd' or 'quotient', got {metric!r}")
    if metric == "svd" and not K - 1 < D:
        warnings.warn(
            f"nc1_svd is defined only when K-1 < D (K={K}, D={D}); returning NaN",
            DegenerateInputWarning,
            stacklevel=2,
        )
        return math.nan
    given = np.dtype(as_dask(M).dtype)
    eps_dtype = given if np.issubdtype(given, np.floating) else np.dtype(np.float64)
    vals = CF.nc1_values(Mc, Sw, want_svd=metric == "svd", eps_dtype=eps_dtype)
    return _float(vals[0 if metric == "pinv" else 1])


def variability_cdnv(
    V_norms: Array, M: Array, dist_exp: float = 1.0, tile_size: int | None = None
) -> float:
    """Mean class-distance normalised variance over pairs ``i < j``.

    ``((v_i + v_j)/2) / ‖μ_i − μ_j‖^{2 p}`` with ``p = dist_exp``, blocked
    over upper-triangle class tiles (any ``tile_size``, including
    ``K mod tile_size == 1``).

    Parameters
    ----------
    V_norms : array (K,)
        Variance norms ``v_k``.
    M : array (K, D)
        Class means.
    dist_exp : float, default 1
    tile_size : int, optional

    Returns
    -------
    float

    References
    ----------
    Galanti, György & Hutter (2022), arXiv:2112.15121.
    """
    A, T = _mat(M, tile_size)
    A = A - A.mean(axis=0)[None, :]  # distances do not change; precision does
    v = as_dask(V_norms).astype(np.float64).reshape(-1)
    res = pairwise_moments(A, stats=("cdnv",), v=v, tile_size=T, dist_exp=dist_exp)
    return _float(res[0, 1])


# --------------------------------------------------------------------------- GNC2 kernels


def dist_kernel(data: Array, tile_size: int | None = None) -> xr.DataArray:
    """Lazy grid of ``‖x_i − x_j‖`` over the rows of ``data``.

    Returns
    -------
    xarray.DataArray (class, class_)
        Dask-backed, one chunk per tile pair.
    """
    A, T = _mat(data, tile_size)
    return _grid(pair_grid(A, kind="dist", tile_size=T))


def log_kernel(data: Array, exponent: float = -1, tile_size: int | None = None) -> xr.DataArray:
    """Lazy grid of ``log(‖x_i − x_j‖^exponent)`` (``+inf`` on the diagonal for exponent < 0).

    References
    ----------
    Liu et al. (2023), arXiv:2303.06484.
    """
    A, T = _mat(data, tile_size)
    return _grid(pair_grid(A, kind="log", tile_size=T, exponent=exponent))


def riesz_kernel(
    data: Array,
    tile_size: int | None = None,
    *,
    s: float | None = None,
    log: bool = False,
) -> xr.DataArray:
    """Lazy grid of ``sign(S) ‖x_i − x_j‖^{−S}`` (``S = D − 2`` by default).

    The values are evaluated in the log domain, ``exp(−S log ‖x_i − x_j‖)``;
    with ``S = D − 2`` they under- or overflow float64 for D in the hundreds
    to thousands, which issues a :class:`ncdask.RieszRangeWarning` when the
    grid is computed. ``log=True`` returns the log-magnitudes
    ``−S log ‖x_i − x_j‖`` instead, finite off the diagonal for any ``S``.

    Parameters
    ----------
    data : array (K, D)
    tile_size : int, optional
    s : float, optional
        The exponent ``S``; default ``D − 2``.
    log : bool
        Return ``log |kernel|`` rather than the kernel.

    References
    ----------
    Liu et al. (2023), arXiv:2303.06484.
    """
    A, T = _mat(data, tile_size)
    S = float(A.shape[1] - 2 if s is None else s)
    if not math.isfinite(S):
        raise ValueError(f"the Riesz exponent s must be finite, got {s!r}")
    kind = "riesz_log" if log else "riesz"
    return _grid(pair_grid(A, kind=kind, tile_size=T, riesz_s=S))


_STAT_OF: dict[Callable, str] = {dist_kernel: "dist", log_kernel: "log", riesz_kernel: "riesz"}


def kernel_grid(
    M: Array, m_G: Array = 0, kernel: Callable = dist_kernel, tile_size: int | None = None
) -> Any:
    """Lazy grid of ``kernel`` on the normalised centred means ``u_k = m̃_k/(‖m̃_k‖ + ε)``.

    Parameters
    ----------
    M : array (K, D)
    m_G : array (D,) or 0
    kernel : callable
        :func:`dist_kernel`, :func:`log_kernel`, :func:`riesz_kernel` or any
        ``kernel(data, tile_size=...)``.
    tile_size : int, optional

    Returns
    -------
    xarray.DataArray (class, class_)
        For ncdask's kernels: dask-backed, never computed here.
    """
    Mc, T = _centred(M, m_G, tile_size)
    return kernel(CF.normalized(Mc), tile_size=T)


def kernel_stats(
    M: Array,
    m_G: Array = 0,
    kernel: Callable = dist_kernel,
    tile_size: int | None = None,
    *,
    riesz_s: float | None = None,
) -> tuple[float, float]:
    """Mean and (population) variance of a kernel over the pairs ``i < j``.

    The kernel runs on ``u_k = m̃_k / (‖m̃_k‖ + ε)``. For ncdask's three
    kernels this is one fused pass over upper-triangle tiles (the Riesz kernel
    in the log domain); another callable gets its grid built and reduced
    lazily.

    ``riesz_s`` sets the Riesz exponent ``S`` (default ``D − 2``); where the
    mean or variance of that kernel over- or underflows float64, a
    :class:`ncdask.RieszRangeWarning` is issued (:func:`ncdask.measure`
    reports their logs as ``nc2g_riesz_log_mean`` / ``_log_var``).

    Returns
    -------
    (float, float)

    References
    ----------
    Liu et al. (2023), arXiv:2303.06484.

    Examples
    --------
    >>> import numpy as np
    >>> from ncdask.reference_api import kernel_stats, log_kernel
    >>> M = np.eye(4) - 0.25
    >>> mean, var = kernel_stats(M, M.mean(0), kernel=log_kernel)
    >>> round(mean, 6), round(var, 12)
    (-0.490415, 0.0)
    """
    Mc, T = _centred(M, m_G, tile_size)
    stat = _STAT_OF.get(kernel)
    K, D = Mc.shape
    S = float(D - 2 if riesz_s is None else riesz_s)
    if stat is not None:
        res = pairwise_moments(Mc, stats=(stat,), tile_size=T, riesz_s=S)
        mean, var = dask.compute(res[0, 1], res[0, 2])
        return float(to_numpy(mean)), float(to_numpy(var))
    grid = as_dask(kernel(CF.normalized(Mc), tile_size=T)).astype(np.float64)
    upper = da.triu(da.ones(grid.shape, chunks=grid.chunks, dtype=bool), 1)
    P = K * (K - 1) / 2
    mean = da.where(upper, grid, 0.0).sum() / P
    var = (da.where(upper, grid - mean, 0.0) ** 2).sum() / P
    m, v = dask.compute(mean, var)
    return float(to_numpy(m)), float(to_numpy(v))


def class_dist_norm_vars(
    V_norms: Array, M: Array, dist_exp: float = 1.0, tile_size: int | None = None
) -> xr.DataArray:
    """Lazy K×K grid of class-distance normalised variances (``+inf`` on the diagonal).

    References
    ----------
    Galanti, György & Hutter (2022), arXiv:2112.15121.
    """
    A, T = _mat(M, tile_size)
    v = as_dask(V_norms).astype(np.float64).reshape(-1)
    return _grid(pair_grid(A, kind="cdnv", v=v, tile_size=T, dist_exp=dist_exp))


def interference_grid(M: Array, m_G: Array = 0, tile_size: int | None = None) -> xr.DataArray:
    """Lazy grid of inner products ``m̃_i · m̃_j`` of the centred means."""
    Mc, T = _centred(M, m_G, tile_size)
    return _grid(pair_grid(Mc, kind="inner", tile_size=T))


# --------------------------------------------------------------------------- NC2 / NC3


def simplex_etf_error(M: Array, m_G: Array = 0) -> float:
    """``‖G/‖G‖_F − (I − 11ᵀ/K)/√(K−1)‖_F`` with ``G = M̃M̃ᵀ``, in closed form.

    References
    ----------
    Kothapalli (2023), arXiv:2206.04041.
    """
    Mc, _ = _centred(M, m_G)
    return _float(CF.etf_error(Mc))


def self_duality_error(W: Array, M: Array, m_G: Array = 0) -> float:
    """:func:`simplex_etf_error` of ``G = W M̃ᵀ``, in closed form.

    References
    ----------
    Kothapalli (2023), arXiv:2206.04041.
    """
    Mc, _ = _centred(M, m_G)
    Wd = as_dask(W).astype(np.float64).rechunk(Mc.chunks)
    return _float(CF.etf_error(Mc, Wd))


def similarities(W: Array, M: Array, m_G: Array = 0, cos: bool = False) -> Array:
    """Per-class ``w_k · m̃_k`` (or its cosine, clamped like torch at 1e-8)."""
    Mc, _ = _centred(M, m_G)
    Wd = as_dask(W).astype(np.float64)
    if Wd.ndim == 1:
        Wd = Wd[None, :]
    Wd = Wd.rechunk((Mc.chunks[0] if Wd.shape[0] == Mc.shape[0] else -1, -1))
    out = CF.cosine_rows(Wd, Mc) if cos else (Wd * Mc).sum(axis=1)
    return _like(out, W, M, m_G)


def distance_norms(W: Array, M: Array, m_G: Array = 0, norm: bool = True) -> Array:
    """Per-class ``‖w_k − m̃_k‖``, after normalising both by ``‖·‖ + ε`` if ``norm``."""
    Mc, _ = _centred(M, m_G)
    Wd = as_dask(W).astype(np.float64).rechunk(Mc.chunks)
    diff = CF.normalized(Wd) - CF.normalized(Mc) if norm else Wd - Mc
    return _like(CF.row_norms(diff), W, M, m_G)


def mean_norms(M: Array, m_G: Array = 0, post_funcs: Sequence[Callable] = ()) -> Array:
    """Per-class ``‖m̃_k‖``, then each of ``post_funcs`` applied in turn."""
    Mc, _ = _centred(M, m_G)
    out = _like(CF.row_norms(Mc), M, m_G)
    for f in post_funcs:
        out = f(out)
    return out


# --------------------------------------------------------------------------- NC4 / NC5


def clf_ncc_agreement(
    Ns: Array, hits: Array = None, misses: Array = None, weighted: bool = True
) -> float | None:
    """Agreement rate of the linear and nearest-class-centre classifiers.

    Parameters
    ----------
    Ns : array (K,)
        Samples per class.
    hits, misses : array (K,), optional
        Agreements (or disagreements) per class; one of them is needed.
    weighted : bool, default True
        ``Σ hits / Σ Ns``; else the mean of the per-class rates.

    Returns
    -------
    float or None
        None when neither ``hits`` nor ``misses`` matches ``Ns`` (as the reference).
    """

    def host(a: Array) -> np.ndarray:
        a = a.data if isinstance(a, xr.DataArray) else a
        a = dask.compute(a)[0] if isinstance(a, da.Array) else a
        return np.asarray(to_numpy(a), dtype=np.float64)

    n = host(Ns)
    if hits is None and misses is not None:
        m = host(misses)
        if m.shape == n.shape:
            hits = n - m
    if hits is None:
        return None
    h = host(hits)
    if h.shape != n.shape:
        return None
    if weighted:
        return float(h.sum() / n.sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        return float(np.mean(h / n))


def orthogonality_deviation(M: Array, m_G_ood: Array = 0) -> float:
    """``(1/K) Σ_k |cos(μ_k, μ_G^ood)|`` with uncentred class means.

    References
    ----------
    Ammar et al. (2024), arXiv:2310.06823.
    """
    A, _ = _mat(M)
    g = _vec(m_G_ood, A.shape[1])
    if isinstance(g, float):
        return 0.0
    g = g if g.ndim == 2 else da.broadcast_to(g, (1, A.shape[1]))
    return _float(da.fabs(CF.cosine_rows(A, g)).mean())


__all__ = [
    "covariance_ratio",
    "variability_cdnv",
    "kernel_stats",
    "kernel_grid",
    "dist_kernel",
    "log_kernel",
    "riesz_kernel",
    "class_dist_norm_vars",
    "interference_grid",
    "simplex_etf_error",
    "self_duality_error",
    "similarities",
    "distance_norms",
    "mean_norms",
    "clf_ncc_agreement",
    "orthogonality_deviation",
]
