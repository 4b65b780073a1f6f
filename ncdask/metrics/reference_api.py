"""Drop-in functions with the reference package's names and argument order.

Any arrays in, float64 from the metrics' declarations; out a ``float``, per-class vectors in
the input's kind (torch: its device and dtype), or K×K grids as lazy ``DataArray``. ``M``
(K × D class means, rows as given), ``W`` (K × D weights), ``m_G`` (D,) or 0, ``V_norms``
(K,), ``tile_size`` (classes per pairwise tile)."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import dask
import dask.array as da
import numpy as np
import xarray as xr

from ncdask.errors import warn
from ncdask.graph import closed_forms as CF
from ncdask.graph.pairwise import pair_grid
from ncdask.kernels._xp import to_numpy
from ncdask.metrics.api import DegenerateInputWarning
from ncdask.metrics.declarations import METRICS, Inputs, evaluate
from ncdask.metrics.inputs import (
    as_dask,
    class_rows,
    computed_float,
    float64,
    host_float64,
    pinv_dtype,
    shaped,
)

Array = Any


def _vec(m_G: Array, D: int) -> da.Array | float:
    if isinstance(m_G, (int, float)) and m_G == 0:
        return 0.0
    v = float64(as_dask(m_G))
    return v if v.ndim == 0 else shaped(v, (D,), "m_G").rechunk(-1)[None, :]


def _centred(M: Array, m_G: Array, tile_size: int | None = None) -> tuple[da.Array, int]:
    A, T = class_rows(M, tile_size)
    g = _vec(m_G, A.shape[1])
    return (A - g if not (isinstance(g, float) and g == 0.0) else A), T


def _is_torch(x: Any) -> bool:
    return type(x).__module__.split(".")[0] == "torch" and hasattr(x, "device")


def _to_torch(values: Any, device: Any, dtypes: Sequence[Any]) -> Any:
    """``values`` as a tensor on ``device``, in the promotion of ``dtypes`` (float64 at least
    for integer or bool operands)."""
    import torch

    dt = functools.reduce(torch.promote_types, dtypes)
    if not dt.is_floating_point:
        dt = torch.float64
    return torch.as_tensor(np.asarray(to_numpy(values))).to(device=device, dtype=dt)


def _like(result: da.Array, *inputs: Array, dtype_of: Sequence[Array] | None = None) -> Array:
    """``result`` in the kind of ``inputs`` (a tensor on the first one's device, in torch's
    promotion of ``dtype_of``'s dtypes, 0-d ones aside)."""
    if any(isinstance(i, (xr.DataArray, xr.Dataset)) for i in inputs):
        return xr.DataArray(result, dims=("class",))
    if any(isinstance(i, da.Array) for i in inputs):
        return result
    values = dask.compute(result)[0]
    tensors = [i for i in inputs if _is_torch(i)]
    if not tensors:
        return values
    promoted = inputs if dtype_of is None else dtype_of
    typed = [i.dtype for i in promoted if _is_torch(i) and i.ndim]
    return _to_torch(values, tensors[0].device, typed or [t.dtype for t in tensors])


def _grid(result: da.Array) -> xr.DataArray:
    return xr.DataArray(result, dims=("class", "class_"))


def covariance_ratio(V_intra: Array, M: Array, m_G: Array = 0, metric: str = "pinv") -> float:
    """NC1 within-class variability relative to between-class variability.

    Parameters
    ----------
    V_intra : array (D, D)
        Within-class covariance Σ_W.
    metric : {"pinv", "svd", "quotient"}
        ``measure``'s ``nc1_pinv``, ``nc1_svd`` (NaN with a
        :class:`DegenerateInputWarning` unless K − 1 < D) or ``nc1_quot``.

    Returns
    -------
    float

    Examples
    --------
    >>> import numpy as np
    >>> from ncdask.metrics.reference_api import covariance_ratio
    >>> M = np.eye(3)
    >>> round(covariance_ratio(0.1 * np.eye(3), M, M.mean(0), metric="quotient"), 6)
    0.45
    """
    Mc, _ = _centred(M, m_G)
    Sw = as_dask(V_intra).astype(np.float64)
    K, D = Mc.shape
    names = {"pinv": "nc1_pinv", "svd": "nc1_svd", "quotient": "nc1_quot"}
    if metric not in names:
        raise ValueError(f"metric must be 'pinv', 'svd' or 'quotient', got {metric!r}")
    if metric == "svd" and not K - 1 < D:
        warn(f"nc1_svd is defined only when K-1 < D (K={K}, D={D}); returning NaN",
             DegenerateInputWarning)
        return math.nan
    return computed_float(evaluate(names[metric], M=Mc, Sw=Sw,
                                   eps_dtype=pinv_dtype(as_dask(M).dtype)))


def variability_cdnv(V_norms: Array, M: Array, dist_exp: float = 1.0,
                     tile_size: int | None = None) -> float:
    """Mean class-distance normalised variance over pairs (``measure``'s ``nc1_cdnv``);
    ``dist_exp`` is the distance exponent ``p``."""
    A, T = class_rows(M, tile_size)
    v = as_dask(V_norms).astype(np.float64).reshape(-1)
    # centred on the mean row: distances do not change; precision does
    return computed_float(evaluate("nc1_cdnv", M=A, mG=A.mean(axis=0), v=v, tile_size=T,
                          dist_exp=dist_exp))


def dist_kernel(data: Array, tile_size: int | None = None) -> xr.DataArray:
    """Lazy grid of ``‖x_i − x_j‖`` over the rows of ``data``."""
    A, T = class_rows(data, tile_size)
    return _grid(pair_grid(A, kind="dist", tile_size=T))


def log_kernel(data: Array, exponent: float = -1, tile_size: int | None = None) -> xr.DataArray:
    """Lazy grid of ``log(‖x_i − x_j‖^exponent)`` (+inf on the diagonal if exponent < 0)."""
    A, T = class_rows(data, tile_size)
    return _grid(pair_grid(A, kind="log", tile_size=T, exponent=exponent))


def riesz_kernel(data: Array, tile_size: int | None = None, *, s: float | None = None,
                 log: bool = False) -> xr.DataArray:
    """Lazy grid of ``sign(S) ‖x_i − x_j‖^{−S}`` (``S = s``, default ``D − 2``).

    In the log domain (:class:`ncdask.RieszRangeWarning` outside float64's range);
    ``log=True`` gives ``−S log ‖x_i − x_j‖``."""
    A, T = class_rows(data, tile_size)
    S = float(A.shape[1] - 2 if s is None else s)
    if not math.isfinite(S):
        raise ValueError(f"the Riesz exponent s must be finite, got {s!r}")
    kind = "riesz_log" if log else "riesz"
    return _grid(pair_grid(A, kind=kind, tile_size=T, riesz_s=S))


_STAT_OF: dict[Callable, str] = {dist_kernel: "dist", log_kernel: "log", riesz_kernel: "riesz"}


def kernel_grid(M: Array, m_G: Array = 0, kernel: Callable = dist_kernel,
                tile_size: int | None = None) -> Any:
    """Lazy grid of ``kernel(data, tile_size=...)`` on ``u_k = m̃_k/(‖m̃_k‖ + ε)``."""
    Mc, T = _centred(M, m_G, tile_size)
    return kernel(CF.normalized(Mc), tile_size=T)


def kernel_stats(M: Array, m_G: Array = 0, kernel: Callable = dist_kernel,
                 tile_size: int | None = None, *, riesz_s: float | None = None
                 ) -> tuple[float, float]:
    """Mean and population variance of a kernel over pairs ``i < j`` of ``u_k`` (``nc2g_*``).

    ncdask's kernels run as one fused pass over upper-triangle tiles (``riesz_s`` default
    ``D − 2``); another callable gets its grid reduced lazily.

    Examples
    --------
    >>> import numpy as np
    >>> from ncdask.metrics.reference_api import kernel_stats, log_kernel
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
        names = (f"nc2g_{stat}_mean", f"nc2g_{stat}_var")
        ins = Inputs.from_arrays(M=Mc, tile_size=T, riesz_s=S, todo=names)
        mean, var = dask.compute(*[METRICS[n].evaluate(ins) for n in names])
        return float(to_numpy(mean)), float(to_numpy(var))
    grid = as_dask(kernel(CF.normalized(Mc), tile_size=T)).astype(np.float64)
    upper = da.triu(da.ones(grid.shape, chunks=grid.chunks, dtype=bool), 1)
    P = K * (K - 1) / 2
    mean = da.where(upper, grid, 0.0).sum() / P
    var = (da.where(upper, grid - mean, 0.0) ** 2).sum() / P
    m, v = dask.compute(mean, var)
    return float(to_numpy(m)), float(to_numpy(v))


def class_dist_norm_vars(V_norms: Array, M: Array, dist_exp: float = 1.0,
                         tile_size: int | None = None) -> xr.DataArray:
    """Lazy K×K grid of class-distance normalised variances (``+inf`` on the diagonal)."""
    A, T = class_rows(M, tile_size)
    v = as_dask(V_norms).astype(np.float64).reshape(-1)
    return _grid(pair_grid(A, kind="cdnv", v=v, tile_size=T, dist_exp=dist_exp))


def interference_grid(M: Array, m_G: Array = 0, tile_size: int | None = None) -> xr.DataArray:
    """Lazy grid of inner products ``m̃_i · m̃_j`` of the centred means."""
    Mc, T = _centred(M, m_G, tile_size)
    return _grid(pair_grid(Mc, kind="inner", tile_size=T))


def structure_error(A: Array, B: Array) -> float:
    """``nc2_etf_err``'s distance from a simplex ETF with ``G = B Aᵀ`` (rows as given)."""
    Ad, _ = class_rows(A, name="A")
    return computed_float(CF.etf_error(Ad, shaped(B, Ad.shape, "B", like="A").rechunk(Ad.chunks)))


def simplex_etf_error(M: Array, m_G: Array = 0) -> float:
    """``measure``'s ``nc2_etf_err``: the simplex ETF error of ``G = M̃M̃ᵀ``."""
    Mc, _ = _centred(M, m_G)
    return computed_float(evaluate("nc2_etf_err", M=Mc))


def self_duality_error(W: Array, M: Array, m_G: Array = 0) -> float:
    """``measure``'s ``nc3_dual_err``: :func:`simplex_etf_error` of ``G = W M̃ᵀ``."""
    Mc, _ = _centred(M, m_G)
    Wd = as_dask(W).astype(np.float64).rechunk(Mc.chunks)
    return computed_float(evaluate("nc3_dual_err", M=Mc, W=Wd))


def similarities(W: Array, M: Array, m_G: Array = 0, cos: bool = False) -> Array:
    """Per-class ``w_k · m̃_k``, or its cosine if ``cos`` (``similarities``,
    ``similarities_cos``); one row ``W`` (D,) serves every class, as torch broadcasts.

    Returns
    -------
    array (K,)
        The input's kind (a tensor in ``W``'s dtype for ``cos``).
    """
    Mc, _ = _centred(M, m_G)
    Wd = as_dask(W).astype(np.float64)
    if Wd.ndim == 1:
        Wd = Wd[None, :]
    if Wd.ndim != 2 or Wd.shape[0] not in (1, Mc.shape[0]) or Wd.shape[1] != Mc.shape[1]:
        raise ValueError(f"W has shape {Wd.shape}, expected {Mc.shape} like M (or one row)")
    if Wd.shape[0] != Mc.shape[0]:  # one row for every class, as torch broadcasts
        Wd = da.broadcast_to(Wd.rechunk(-1), Mc.shape)
    out = evaluate("similarities_cos" if cos else "similarities", M=Mc, W=Wd)
    return _like(out, W, M, m_G, dtype_of=(W,) if cos else None)


def distance_norms(W: Array, M: Array, m_G: Array = 0, norm: bool = True) -> Array:
    """Per-class ``‖w_k − m̃_k‖`` (``distance_norms``), in the input's kind; ``norm``
    divides ``w_k`` and ``m̃_k`` by ``‖·‖ + ε`` first."""
    Mc, _ = _centred(M, m_G)
    Wd = shaped(W, Mc.shape, "W", like="M").rechunk(Mc.chunks)
    out = evaluate("distance_norms", M=Mc, W=Wd) if norm else CF.row_norms(Wd - Mc)
    return _like(out, W, M, m_G)


def mean_norms(M: Array, m_G: Array = 0, post_funcs: Sequence[Callable] = ()) -> Array:
    """Per-class ``‖m̃_k‖`` (``mean_norms``) in the input's kind, then each of
    ``post_funcs`` in turn."""

    Mc, _ = _centred(M, m_G)
    out = _like(evaluate("mean_norms", M=Mc), M, m_G)
    for f in post_funcs:
        out = f(out)
    return out


def _is_accumulator(x: Any) -> bool:  # the reference's DecAccumulator, duck-typed
    return hasattr(x, "ns_samples") and hasattr(x, "totals")


def clf_ncc_agreement(accum: Any = None, *args: Any, indices: Sequence[int] | Array | None = None,
                      weighted: bool | None = None, Ns: Array | None = None,
                      hits: Array | None = None, misses: Array | None = None) -> float | None:
    """Agreement rate of the linear and nearest-class-centre classifiers.

    As the reference's ``DecAccumulator.compute`` (an empty class has rate 0), called as
    ``(accum, indices=None, weighted=True)`` (anything with ``ns_samples`` and ``totals``)
    or ``(Ns, hits=None, misses=None, weighted=True)``; ``measure``'s ``nc4_agree`` too.

    Parameters
    ----------
    accum : DecAccumulator-like or array (K,)
        The accumulator, or the samples per class ``Ns``.
    *args
        The remaining arguments of the call form, by position.
    indices : sequence of int, boolean mask or array, optional
        Classes to include; default all.
    weighted : bool, default True
        ``Σ hits / Σ Ns``; else the mean of the per-class rates.
    Ns, hits, misses : array (K,), optional
        Samples, agreements and disagreements per class (array form only).

    Returns
    -------
    float or None
        None, in the array form, when neither ``hits`` nor ``misses`` has
        the shape of ``Ns``.

    Examples
    --------
    >>> import numpy as np
    >>> from types import SimpleNamespace
    >>> from ncdask.metrics.reference_api import clf_ncc_agreement
    >>> acc = SimpleNamespace(ns_samples=np.array([4, 6]), totals=np.array([3, 3]))
    >>> clf_ncc_agreement(acc), clf_ncc_agreement(acc, weighted=False)
    (0.6, 0.625)
    >>> clf_ncc_agreement(np.array([4, 6]), np.array([3, 3]))
    0.6
    """
    if accum is None and Ns is not None:
        accum, Ns = Ns, None
    if accum is None:
        raise TypeError("clf_ncc_agreement needs an accumulator or the counts Ns")
    acc = _is_accumulator(accum)
    if acc and (Ns is not None or hits is not None or misses is not None):
        raise TypeError("Ns, hits and misses are for the array form, not with an accumulator")
    if Ns is not None:
        raise TypeError("Ns given twice")
    names = ("indices", "weighted") if acc else ("hits", "misses", "weighted")
    if len(args) > len(names):
        form = "with an accumulator: (accum, " if acc else "array form: (Ns, "
        raise TypeError(f"{form}{', '.join(names)}), got {len(args)} more")
    given = {"indices": indices, "weighted": weighted, "hits": hits, "misses": misses}
    for name, value in zip(names, args, strict=False):
        if given[name] is not None:
            raise TypeError(f"clf_ncc_agreement got {name} twice")
        given[name] = value
    if acc:
        n, h = host_float64(accum.ns_samples).reshape(-1), host_float64(accum.totals)
        if h.shape != n.shape:
            raise ValueError(f"the accumulator's totals have shape {h.shape}, expected "
                             f"per-class counts {n.shape} (a DecAccumulator)")
    else:
        n = host_float64(accum)
        h = None if given["hits"] is None else host_float64(given["hits"])
        if h is None and given["misses"] is not None:
            m = host_float64(given["misses"])
            h = n - m if m.shape == n.shape else None
        if h is None or h.shape != n.shape:
            return None
    if given["indices"] is not None:
        sel = to_numpy(given["indices"])
        if sel.dtype != bool:  # integer indices; a 0-d one (one class) and [] too
            sel = sel.reshape(-1).astype(np.intp)
        n, h = n[sel], h[sel]
    if given["weighted"] is None or given["weighted"]:
        total = n.sum()
        return float(h.sum() / total) if total > 0 else 0.0
    if n.size == 0:
        return math.nan
    rates = np.divide(h, n, out=np.zeros_like(h), where=n > 0)
    return float(rates.mean())


def orthogonality_deviation(M: Array, m_G_ood: Array = 0) -> float:
    """``measure``'s ``nc5_ood_dev`` of the class means and the OOD global mean."""
    A, _ = class_rows(M)
    g = _vec(m_G_ood, A.shape[1])
    if isinstance(g, float):
        return 0.0
    g = da.broadcast_to(g, (1, A.shape[1]))[0]
    return computed_float(evaluate("nc5_ood_dev", M=A, ood_mean=g))


__all__ = [
    "covariance_ratio", "variability_cdnv", "kernel_stats", "kernel_grid", "dist_kernel",
    "log_kernel", "riesz_kernel", "class_dist_norm_vars", "interference_grid",
    "simplex_etf_error", "self_duality_error", "structure_error", "similarities",
    "distance_norms", "mean_norms", "clf_ncc_agreement", "orthogonality_deviation",
]
