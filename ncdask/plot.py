"""Figures of Neural Collapse results (matplotlib, drawn off screen with Agg).

matplotlib is imported only when a function here is called, so ``import
ncdask`` does not need it (install it with ``pip install 'ncdask[demo]'``).
Every function returns a :class:`matplotlib.figure.Figure` built without
``pyplot`` (no global figure state) and saves it when given ``path``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from .kernels._xp import to_numpy

#: Metrics drawn by :func:`plot_metrics` by default, in this order, when present.
HEADLINE = (
    "nc1_pinv",
    "nc1_cdnv",
    "nc1_quot",
    "nc2_etf_err",
    "nc2_equinorm",
    "nc2_max_angle",
    "nc2g_log_var",
    "nc3_dual_err",
    "nc3_papyan",
    "nc3_bias",
    "nc4_agree",
    "nc5_ood_dev",
)
SWEEP_DIMS = ("epoch", "layer", "checkpoint", "step")


def _figure(ax: Any, size: tuple[float, float]) -> tuple[Any, Any]:
    if ax is not None:
        return ax.figure, ax
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, layout="constrained")
    return fig, fig.add_subplot()


def _save(fig: Any, path: str | Path | None) -> Any:
    if path is not None:
        fig.savefig(str(path), dpi=110)
    return fig


def _values(x: Any) -> np.ndarray:
    if isinstance(x, (xr.DataArray, xr.Variable)):
        x = x.data
    if hasattr(x, "compute") and not isinstance(x, np.ndarray):
        x = x.compute()
    return np.asarray(to_numpy(x), dtype=np.float64)


def _use_log(v: np.ndarray) -> bool:
    f = v[np.isfinite(v)]
    return f.size > 1 and bool(np.all(f > 0)) and f.max() / f.min() > 10


def plot_metrics(
    results: xr.Dataset,
    dim: str | None = None,
    metrics: Sequence[str] | None = None,
    *,
    ax: Any = None,
    path: str | Path | None = None,
    logy: bool | str = "auto",
    ncols: int = 3,
) -> Any:
    """NC curves: each scalar metric against the sweep dim (epoch or layer).

    Parameters
    ----------
    results : xarray.Dataset
        Output of :func:`ncdask.measure` for a sweep (a dim such as ``epoch``).
    dim : str, optional
        The sweep dim; default the first of epoch, layer, checkpoint, step present.
    metrics : sequence of str, optional
        Variables to draw; default the :data:`HEADLINE` metrics present.
    ax : matplotlib Axes, optional
        Draw every curve on this one Axes (with a legend) instead of one
        panel per metric.
    path : str or Path, optional
        Save the figure here (format from the suffix, e.g. ``.png``).
    logy : bool or "auto"
        Log y axis; "auto" uses it for positive values spanning over a decade.
    ncols : int
        Panels per row.

    Returns
    -------
    matplotlib.figure.Figure
    """
    if dim is None:
        dim = next((d for d in SWEEP_DIMS if d in results.dims), None)
        if dim is None:
            raise ValueError(
                f"results have no sweep dim (one of {SWEEP_DIMS}); "
                f"their dims: {dict(results.sizes)}"
            )
    if dim not in results.dims:
        raise ValueError(f"results have no dim {dim!r}; their dims: {dict(results.sizes)}")
    if metrics is None:
        metrics = [m for m in HEADLINE if m in results and results[m].dims == (dim,)]
    else:
        metrics = list(metrics)
        for m in metrics:
            if m not in results:
                raise ValueError(f"no variable {m!r} in results; have {sorted(results.data_vars)}")
            if results[m].dims != (dim,):
                raise ValueError(f"{m!r} has dims {results[m].dims}, expected ({dim!r},)")
    if not metrics:
        raise ValueError(f"no scalar metric along {dim!r} to plot")
    x = results[dim].values
    if x.dtype.kind in "OUS":
        x = np.asarray([str(v) for v in x])
    if ax is not None:
        fig, ax = _figure(ax, (6, 4))
        for m in metrics:
            ax.plot(x, _values(results[m]), marker="o", ms=3, label=m)
        if logy is True or (logy == "auto" and _use_log(
                np.concatenate([_values(results[m]) for m in metrics]))):
            ax.set_yscale("log")
        ax.set_xlabel(dim)
        ax.legend(fontsize="small")
        return _save(fig, path)
    from matplotlib.figure import Figure

    ncols = max(1, min(ncols, len(metrics)))
    nrows = -(-len(metrics) // ncols)
    fig = Figure(figsize=(3.6 * ncols, 2.7 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for a, m in zip(axes, metrics, strict=False):
        v = _values(results[m])
        a.plot(x, v, marker="o", ms=3)
        if logy is True or (logy == "auto" and _use_log(v)):
            a.set_yscale("log")
        a.set_title(m, fontsize="medium")
        long_name = results[m].attrs.get("long_name")
        if long_name:
            a.set_ylabel(long_name if len(long_name) < 32 else m, fontsize="small")
        a.set_xlabel(dim, fontsize="small")
        a.tick_params(labelsize="small")
        a.grid(alpha=0.3)
    for a in axes[len(metrics):]:
        a.set_visible(False)
    return _save(fig, path)


def _pick_classes(
    counts: np.ndarray | None, K: int, max_classes: int, classes: Sequence[int] | None, seed: int
) -> np.ndarray:
    if classes is not None:
        idx = np.asarray(classes, dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= K):
            raise ValueError(f"classes must lie in [0, {K})")
        return idx
    present = np.arange(K) if counts is None else np.nonzero(counts > 0)[0]
    if present.size <= max_classes:
        return present
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(present, size=max_classes, replace=False))


def plot_gram(
    stats: xr.Dataset | Any,
    *,
    max_classes: int = 40,
    classes: Sequence[int] | None = None,
    seed: int = 0,
    ax: Any = None,
    path: str | Path | None = None,
) -> Any:
    """Heatmap of the cosines between centred class means (the normalised Gram matrix).

    Under NC2 the off-diagonal cosines all approach ``-1/(K-1)`` (a simplex ETF).
    For K above ``max_classes`` a random block of ``max_classes`` classes is
    drawn: only those rows of the means are read, and no K×K matrix is formed.

    Parameters
    ----------
    stats : xarray.Dataset or array (K, D)
        Class statistics (``means``, ``global_mean``, ``counts``) from
        :func:`ncdask.class_stats`, or a matrix of class means (centred on
        their mean here).
    max_classes : int
        Largest block drawn.
    classes : sequence of int, optional
        Exactly these classes.
    seed : int
        Seed of the class sample.
    ax : matplotlib Axes, optional
        Draw on this Axes.
    path : str or Path, optional
        Save the figure here.

    Returns
    -------
    matplotlib.figure.Figure
    """
    if isinstance(stats, xr.Dataset):
        K = int(stats.sizes["class"])
        counts = _values(stats["counts"]) if "counts" in stats else None
        idx = _pick_classes(counts, K, max_classes, classes, seed)
        M = _values(stats["means"].isel({"class": idx}))
        mG = _values(stats["global_mean"])
        ids = stats["class"].values[idx] if "class" in stats.coords else idx
        names = stats.attrs.get("class_names")
    else:
        K = int(stats.shape[0])
        idx = _pick_classes(None, K, max_classes, classes, seed)
        mG = _values(stats.mean(axis=0))  # a dask input stays lazy until here
        M = _values(stats[idx])
        ids, names = idx, None
    Mc = M - mG[None, :]
    U = Mc / np.maximum(np.linalg.norm(Mc, axis=1, keepdims=True), 1e-300)
    C = U @ U.T
    fig, ax = _figure(ax, (5.2, 4.4))
    im = ax.imshow(C, vmin=-1, vmax=1, cmap="RdBu_r", interpolation="nearest")
    fig.colorbar(im, ax=ax, label=r"$\cos(\tilde m_i, \tilde m_j)$")
    n = len(idx)
    if n <= 25:
        labels = [names[int(i)] if names else str(i) for i in ids]
        ax.set_xticks(range(n), labels, fontsize="small")
        ax.set_yticks(range(n), labels, fontsize="small")
    off = C[~np.eye(n, dtype=bool)]
    what = f"{n} of {K} classes" if n < K else f"K={K}"
    ideal = f", ETF: {-1 / (K - 1):.3f}" if K > 1 else ""
    mean_off = f"mean off-diag {off.mean():.3f}" if off.size else "one class"
    ax.set_title(f"class-mean cosines ({what})\n{mean_off}{ideal}", fontsize="medium")
    return _save(fig, path)


def plot_per_class(
    results: xr.Dataset,
    var: str = "mean_norms",
    *,
    at: dict[str, Any] | None = None,
    max_bars: int = 64,
    ax: Any = None,
    path: str | Path | None = None,
) -> Any:
    """Bars of a per-class companion (``mean_norms``, ``similarities``, ``agree_per_class``...).

    Parameters
    ----------
    results : xarray.Dataset
        Output of :func:`ncdask.measure`.
    var : str
        A variable on the ``class`` dim.
    at : dict, optional
        Position along a sweep dim, e.g. ``{"epoch": 40}`` (label-based); by
        default the last position of every sweep dim.
    max_bars : int
        Above this many classes the values are drawn sorted, as a profile.
    ax : matplotlib Axes, optional
        Draw on this Axes.
    path : str or Path, optional
        Save the figure here.

    Returns
    -------
    matplotlib.figure.Figure
    """
    if var not in results:
        raise ValueError(f"no variable {var!r} in results; have {sorted(results.data_vars)}")
    da_ = results[var]
    if "class" not in da_.dims:
        raise ValueError(f"{var!r} is not a per-class variable (dims {da_.dims})")
    where = ""
    if at:
        da_ = da_.sel(at)
        where = ", ".join(f"{k}={v}" for k, v in at.items())
    for d in [d for d in da_.dims if d != "class"]:
        where = ", ".join(filter(None, [where, f"{d}={da_[d].values[-1]}"]))
        da_ = da_.isel({d: -1})
    v = _values(da_)
    cls = da_["class"].values if "class" in da_.coords else np.arange(v.size)
    fig, ax = _figure(ax, (max(4.0, min(12.0, 0.25 * min(v.size, max_bars) + 2)), 3.4))
    if v.size <= max_bars:
        ax.bar([str(c) for c in cls], v, color="tab:blue")
        ax.set_xlabel("class")
        if v.size > 20:
            ax.tick_params(axis="x", labelsize="x-small", rotation=90)
    else:
        order = np.argsort(-np.nan_to_num(v, nan=-np.inf))
        ax.plot(np.arange(v.size), v[order])
        ax.set_xlabel(f"classes, sorted ({v.size})")
    long_name = da_.attrs.get("long_name", var)
    ax.set_ylabel(var)
    ax.set_title(f"{long_name}" + (f" ({where})" if where else ""), fontsize="medium")
    return _save(fig, path)
