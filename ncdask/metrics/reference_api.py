"""Drop-in functions with the reference package's names and argument order.

Users of the PyTorch ``neural_collapse`` package (rhubarbwu/neural-collapse)
switch by changing an import: ``from ncdask import covariance_ratio, ...``.
The functions accept NumPy, CuPy, dask, xarray or PyTorch arrays and compute
in float64 with ncdask's blocked kernels:

* functions that return one number in the reference return a Python
  ``float`` here too (they compute; use :func:`ncdask.measure` for lazy
  results);
* per-class functions (:func:`similarities`, :func:`distance_norms`,
  :func:`mean_norms`) return the input's kind: a ``DataArray`` on ``class``
  for xarray input, a dask array for dask input, a ``torch.Tensor`` for
  PyTorch input (on the device and in the floating dtype the reference's
  result has, so ``.var()`` is torch's unbiased variance as in the
  reference's README), else a NumPy array (``.var()`` is then NumPy's
  population variance: use ``.var(ddof=1)``);
* grids (:func:`kernel_grid`, :func:`dist_kernel`, :func:`log_kernel`,
  :func:`riesz_kernel`, :func:`class_dist_norm_vars`,
  :func:`interference_grid`) are returned lazily as dask-backed
  ``DataArray`` objects on ``(class, class_)``, one chunk per tile pair, to
  be reduced or written to Zarr without ever holding the K×K grid, whatever
  the input (xarray's ``.var()`` is the population variance, torch's the
  unbiased one);
* :func:`clf_ncc_agreement` takes the reference's ``DecAccumulator`` (or
  any object with its ``ns_samples`` and ``totals``) as well as count arrays.

Rows of ``M`` are taken as given, as in the reference: drop empty classes
first (:func:`ncdask.measure` does it for you).
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import dask
import dask.array as da
import numpy as np
import xarray as xr

from ncdask.metrics.inputs import as_dask, class_rows, computed_float
from ncdask.metrics.declarations import METRICS, Inputs, evaluate
from ncdask.graph import closed_forms as CF
from ncdask.graph.pairwise import pair_grid
from ncdask.kernels._xp import to_numpy
from ncdask.metrics.api import DegenerateInputWarning

Array = Any


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
    A, T = class_rows(M, tile_size)
    g = _vec(m_G, A.shape[1])
    return (A - g if not (isinstance(g, float) and g == 0.0) else A), T


def _is_torch(x: Any) -> bool:
    return type(x).__module__.split(".")[0] == "torch" and hasattr(x, "device")


def _to_torch(values: Any, device: Any, dtypes: Sequence[Any]) -> Any:
    """``values`` as a tensor on ``device``, in the promotion of ``dtypes``.

    Integer or bool operands give float64, since the result here is a float.
    """
    import torch

    dt = functools.reduce(torch.promote_types, dtypes)
    if not dt.is_floating_point:
        dt = torch.float64
    return torch.as_tensor(np.asarray(to_numpy(values))).to(device=device, dtype=dt)


def _like(result: da.Array, *inputs: Array, dtype_of: Sequence[Array] | None = None) -> Array:
    """``result`` in the kind of ``inputs``: xarray, dask, torch, else NumPy (or CuPy).

    For PyTorch input the tensor is where and what the reference's would be:
    on the device of the first tensor in ``inputs`` (the reference computes
    on ``W``'s), in torch's promotion of the dtypes of ``dtype_of`` (default
    ``inputs``); scalars such as ``m_G = 0`` and 0-d tensors take no part,
    as in torch's own promotion.
    """
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
        warnings.warn(
            f"nc1_svd is defined only when K-1 < D (K={K}, D={D}); returning NaN",
            DegenerateInputWarning,
            stacklevel=2,
        )
        return math.nan
    given = np.dtype(as_dask(M).dtype)
    eps_dtype = given if np.issubdtype(given, np.floating) else np.dtype(np.float64)
    return computed_float(evaluate(names[metric], M=Mc, Sw=Sw, eps_dtype=eps_dtype))


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
    A, T = class_rows(M, tile_size)
    v = as_dask(V_norms).astype(np.float64).reshape(-1)
    # centred on the mean row: distances do not change; precision does
    return computed_float(evaluate("nc1_cdnv", M=A, mG=A.mean(axis=0), v=v, tile_size=T,
                          dist_exp=dist_exp))


# --------------------------------------------------------------------------- GNC2 kernels


def dist_kernel(data: Array, tile_size: int | None = None) -> xr.DataArray:
    """Lazy grid of ``‖x_i − x_j‖`` over the rows of ``data``.

    Returns
    -------
    xarray.DataArray (class, class_)
        Dask-backed, one chunk per tile pair.
    """
    A, T = class_rows(data, tile_size)
    return _grid(pair_grid(A, kind="dist", tile_size=T))


def log_kernel(data: Array, exponent: float = -1, tile_size: int | None = None) -> xr.DataArray:
    """Lazy grid of ``log(‖x_i − x_j‖^exponent)`` (``+inf`` on the diagonal for exponent < 0).

    References
    ----------
    Liu et al. (2023), arXiv:2303.06484.
    """
    A, T = class_rows(data, tile_size)
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
    A, T = class_rows(data, tile_size)
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


def class_dist_norm_vars(
    V_norms: Array, M: Array, dist_exp: float = 1.0, tile_size: int | None = None
) -> xr.DataArray:
    """Lazy K×K grid of class-distance normalised variances (``+inf`` on the diagonal).

    References
    ----------
    Galanti, György & Hutter (2022), arXiv:2112.15121.
    """
    A, T = class_rows(M, tile_size)
    v = as_dask(V_norms).astype(np.float64).reshape(-1)
    return _grid(pair_grid(A, kind="cdnv", v=v, tile_size=T, dist_exp=dist_exp))


def interference_grid(M: Array, m_G: Array = 0, tile_size: int | None = None) -> xr.DataArray:
    """Lazy grid of inner products ``m̃_i · m̃_j`` of the centred means."""
    Mc, T = _centred(M, m_G, tile_size)
    return _grid(pair_grid(Mc, kind="inner", tile_size=T))


# --------------------------------------------------------------------------- NC2 / NC3


def structure_error(A: Array, B: Array) -> float:
    """``‖G/‖G‖_F − (I − 11ᵀ/K)/√(K−1)‖_F`` with ``G = B Aᵀ``, in closed form.

    The reference's building block: :func:`simplex_etf_error` is
    ``structure_error(M̃, M̃)`` and :func:`self_duality_error`
    ``structure_error(M̃, W)``.

    Parameters
    ----------
    A, B : array (K, D)
        Rows taken as given (no centring).

    Returns
    -------
    float

    References
    ----------
    Kothapalli (2023), arXiv:2206.04041.
    """
    Ad, _ = class_rows(A, name="A")
    Bd = as_dask(B).astype(np.float64)
    if Bd.shape != Ad.shape:
        raise ValueError(f"B has shape {Bd.shape}, expected {Ad.shape} like A")
    return computed_float(CF.etf_error(Ad, Bd.rechunk(Ad.chunks)))


def simplex_etf_error(M: Array, m_G: Array = 0) -> float:
    """``‖G/‖G‖_F − (I − 11ᵀ/K)/√(K−1)‖_F`` with ``G = M̃M̃ᵀ``, in closed form.

    References
    ----------
    Kothapalli (2023), arXiv:2206.04041.
    """
    Mc, _ = _centred(M, m_G)
    return computed_float(evaluate("nc2_etf_err", M=Mc))


def self_duality_error(W: Array, M: Array, m_G: Array = 0) -> float:
    """:func:`simplex_etf_error` of ``G = W M̃ᵀ``, in closed form.

    References
    ----------
    Kothapalli (2023), arXiv:2206.04041.
    """
    Mc, _ = _centred(M, m_G)
    Wd = as_dask(W).astype(np.float64).rechunk(Mc.chunks)
    return computed_float(evaluate("nc3_dual_err", M=Mc, W=Wd))


def similarities(W: Array, M: Array, m_G: Array = 0, cos: bool = False) -> Array:
    """Per-class ``w_k · m̃_k``, or its cosine (each norm clamped at 1e-8, as torch does).

    Parameters
    ----------
    W : array (K, D)
        Classifier weights.
    M : array (K, D)
        Class means.
    m_G : array (D,) or 0
        Global mean.
    cos : bool, default False
        Cosine similarity instead of the dot product.

    Returns
    -------
    array (K,)
        The input's kind (see the module notes). For PyTorch input a tensor
        on ``W``'s device, in ``W``'s dtype for ``cos`` and in the promotion
        of the inputs' dtypes otherwise, as the reference's: the reference
        README's UNC3, ``similarities(W, M, m_G).var().item()``, is then
        torch's unbiased variance here too (``measure``'s ``nc3u_uni_dual``).
        For NumPy input a NumPy array, whose ``.var()`` is the population
        variance: use ``.var(ddof=1)``.

    References
    ----------
    Wu & Papyan (2024), arXiv:2405.17767.
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
    """Per-class ``‖w_k − m̃_k‖``, after normalising both by ``‖·‖ + ε`` if ``norm``.

    Parameters
    ----------
    W : array (K, D)
        Classifier weights.
    M : array (K, D)
        Class means.
    m_G : array (D,) or 0
        Global mean.
    norm : bool, default True
        Normalise ``w_k`` and ``m̃_k`` first.

    Returns
    -------
    array (K,)
        The input's kind; for PyTorch input a tensor on ``W``'s device in the
        promotion of the inputs' dtypes, as the reference's.
    """
    Mc, _ = _centred(M, m_G)
    Wd = as_dask(W).astype(np.float64)
    if Wd.shape != Mc.shape:
        raise ValueError(f"W has shape {Wd.shape}, expected {Mc.shape} like M")
    Wd = Wd.rechunk(Mc.chunks)
    out = evaluate("distance_norms", M=Mc, W=Wd) if norm else CF.row_norms(Wd - Mc)
    return _like(out, W, M, m_G)


def mean_norms(M: Array, m_G: Array = 0, post_funcs: Sequence[Callable] = ()) -> Array:
    """Per-class ``‖m̃_k‖``, then each of ``post_funcs`` applied in turn.

    Parameters
    ----------
    M : array (K, D)
        Class means.
    m_G : array (D,) or 0
        Global mean.
    post_funcs : sequence of callables
        Applied to the norms in the output's kind (tensor → tensor for
        PyTorch input, as in the reference).

    Returns
    -------
    array (K,)
        The input's kind; for PyTorch input a tensor on ``M``'s device in the
        promotion of the dtypes of ``M`` and ``m_G``, as the reference's.
    """
    Mc, _ = _centred(M, m_G)
    out = _like(evaluate("mean_norms", M=Mc), M, m_G)
    for f in post_funcs:
        out = f(out)
    return out


# --------------------------------------------------------------------------- NC4 / NC5


def _host(a: Array) -> np.ndarray:
    """A host float64 NumPy array from any supported array (dask is computed)."""
    a = a.data if isinstance(a, xr.DataArray) else a
    a = dask.compute(a)[0] if isinstance(a, da.Array) else a
    return np.asarray(to_numpy(a), dtype=np.float64)


def _is_accumulator(x: Any) -> bool:
    """Whether ``x`` looks like the reference's ``DecAccumulator`` (duck-typed)."""
    return hasattr(x, "ns_samples") and hasattr(x, "totals")


def clf_ncc_agreement(
    accum: Any = None,
    *args: Any,
    indices: Sequence[int] | Array | None = None,
    weighted: bool | None = None,
    Ns: Array | None = None,
    hits: Array | None = None,
    misses: Array | None = None,
) -> float | None:
    """Agreement rate of the linear and nearest-class-centre classifiers.

    Two call forms, both computed in float64:

    * the reference's, ``clf_ncc_agreement(accum, indices=None,
      weighted=True)``: ``accum`` is its ``DecAccumulator``, or any object
      with the same ``ns_samples`` (samples per class) and ``totals``
      (agreements per class) attributes;
    * the earlier reference's, ``clf_ncc_agreement(Ns, hits=None,
      misses=None, weighted=True)``, on count arrays.

    Either way, as ``DecAccumulator.compute`` does: the per-class rate of a
    class without samples is 0 (its ε-guarded ``0 / (0 + ε)``) and counts in
    the unweighted mean, and no samples at all give 0.0.

    Parameters
    ----------
    accum : DecAccumulator-like or array (K,)
        The accumulator, or the samples per class ``Ns`` (which may also be
        passed as ``Ns=``).
    *args
        With an accumulator: ``indices``, ``weighted`` (the reference's
        order). With arrays: ``hits``, ``misses``, ``weighted``.
    indices : sequence of int or array, optional
        Classes to include (integer indices or a boolean mask); default all.
    weighted : bool, default True
        ``Σ hits / Σ Ns``; else the mean of the per-class rates (None: True).
    Ns, hits, misses : array (K,), optional
        Samples, agreements and disagreements per class (array form only;
        ``hits`` or ``misses`` is needed).

    Returns
    -------
    float or None
        None, in the array form, when neither ``hits`` nor ``misses`` matches
        ``Ns`` in shape (as the earlier reference).

    Raises
    ------
    TypeError
        On arguments of the other form, or too many positional ones.
    ValueError
        When an accumulator's ``totals`` are not per class, like its
        ``ns_samples`` (e.g. a ``MeanAccumulator``).

    Notes
    -----
    :func:`ncdask.measure`'s ``nc4_agree`` gives the same number from the
    class statistics and a test split, where the linear decision is
    ``argmax_k(w_k · x + b_k)``: pass no ``bias`` for the reference's
    ``DecAccumulator``, whose decision is ``argmax_k w_k · x``.

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
    if _is_accumulator(accum):
        if Ns is not None or hits is not None or misses is not None:
            raise TypeError("Ns, hits and misses are for the array form, not with an accumulator")
        if len(args) > 2:
            raise TypeError(
                f"with an accumulator: (accum, indices, weighted), got {len(args)} more"
            )
        pos = dict(zip(("indices", "weighted"), args, strict=False))
        for name, value in (("indices", indices), ("weighted", weighted)):
            if value is not None and name in pos:
                raise TypeError(f"clf_ncc_agreement got {name} twice")
        n, h = _host(accum.ns_samples).reshape(-1), _host(accum.totals)
        if h.shape != n.shape:
            raise ValueError(
                f"the accumulator's totals have shape {h.shape}, expected per-class counts "
                f"{n.shape} (a DecAccumulator)"
            )
        indices = pos.get("indices", indices)
        weighted = pos.get("weighted", weighted)
    else:
        if Ns is not None:
            raise TypeError("Ns given twice")
        if len(args) > 3:
            raise TypeError(f"array form: (Ns, hits, misses, weighted), got {len(args)} more")
        pos = dict(zip(("hits", "misses", "weighted"), args, strict=False))
        for name, value in (("hits", hits), ("misses", misses), ("weighted", weighted)):
            if value is not None and name in pos:
                raise TypeError(f"clf_ncc_agreement got {name} twice")
        hits, misses = pos.get("hits", hits), pos.get("misses", misses)
        weighted = pos.get("weighted", weighted)
        n = _host(accum)
        if hits is None and misses is not None:
            m = _host(misses)
            if m.shape == n.shape:
                hits = n - m
        if hits is None:
            return None
        h = _host(hits)
        if h.shape != n.shape:
            return None
    if indices is not None:
        sel = np.asarray(to_numpy(indices) if _is_torch(indices) else indices)
        if sel.dtype != bool:  # integer indices; a 0-d one (one class) and [] too
            sel = sel.reshape(-1).astype(np.intp)
        n, h = n[sel], h[sel]
    if weighted is None or weighted:
        total = n.sum()
        return float(h.sum() / total) if total > 0 else 0.0
    if n.size == 0:
        return math.nan
    rates = np.divide(h, n, out=np.zeros_like(h), where=n > 0)
    return float(rates.mean())


def orthogonality_deviation(M: Array, m_G_ood: Array = 0) -> float:
    """``(1/K) Σ_k |cos(μ_k, μ_G^ood)|`` with uncentred class means.

    References
    ----------
    Ammar et al. (2024), arXiv:2310.06823.
    """
    A, _ = class_rows(M)
    g = _vec(m_G_ood, A.shape[1])
    if isinstance(g, float):
        return 0.0
    g = da.broadcast_to(g, (1, A.shape[1]))[0]
    return computed_float(evaluate("nc5_ood_dev", M=A, ood_mean=g))


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
    "structure_error",
    "similarities",
    "distance_norms",
    "mean_norms",
    "clf_ncc_agreement",
    "orthogonality_deviation",
]
