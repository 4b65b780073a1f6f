"""Figures of Neural Collapse results: matplotlib Figures built without ``pyplot``.

matplotlib (``pip install 'ncdask[demo]'``) is imported only when a function is called."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from ncdask.metrics.declarations import METRICS
from ncdask.metrics.inputs import host_float64
from ncdask.metrics.separation import equiseparation

#: Metrics drawn by :func:`plot_metrics` by default, in this order, when present.
HEADLINE = ("nc1_pinv", "nc1_cdnv", "nc1_quot", "nc2_etf_err", "nc2_equinorm", "nc2_max_angle",
            "nc2g_log_var", "nc3_dual_err", "nc3_papyan", "nc3_bias", "nc4_agree", "nc5_ood_dev")
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


#: Which way each metric moves under collapse (its declaration's ``direction``): -1 lower
#: is more collapse, +1 higher is. Metrics without a direction are not listed.
COLLAPSE_DIRECTION: dict[str, int] = {
    name: m.direction for name, m in METRICS.items() if m.direction is not None}
#: Accuracy variables drawn in one extra panel of :func:`plot_metrics`; the first is
#: the training accuracy.
ACCURACY = ("train_acc", "test_acc")
#: A log y axis of :func:`plot_metrics` spans at least this many decades.
MIN_DECADES = 1.0
_CUE = {-1: "\u2193 collapse", +1: "\u2191 collapse"}


def collapse_direction(name: str) -> int | None:
    """-1 if lower values of metric ``name`` mean more collapse, +1 if higher, else None.

    >>> collapse_direction("nc1_pinv"), collapse_direction("nc4_agree"), collapse_direction("x")
    (-1, 1, None)
    """
    return COLLAPSE_DIRECTION.get(name)


def log_spaced(x: Any) -> bool:
    """Whether sweep positions look log-spaced (over a decade, gaps more even in log).

    >>> log_spaced([1, 2, 3, 5, 8, 12, 18, 27, 40]), log_spaced([0, 10, 20, 30])
    (True, False)
    >>> log_spaced(range(1, 21))
    False
    """
    v = np.asarray(x)
    if v.dtype.kind not in "iuf" or v.ndim != 1 or v.size < 3:
        return False
    v = v.astype(np.float64)
    if not np.all(np.isfinite(v)) or v[0] <= 0 or np.any(np.diff(v) <= 0) or v[-1] / v[0] <= 10:
        return False
    lin, log = np.diff(v), np.diff(np.log(v))
    return bool(log.std() / log.mean() < lin.std() / lin.mean())


def y_limits(v: np.ndarray, log: bool, min_decades: float = MIN_DECADES) -> tuple[float, float]:
    """The y range of a panel: a linear axis includes 0, a log one spans ``min_decades``.

    >>> y_limits(np.array([0.5, 0.498]), log=False)
    (-0.025, 0.525)
    >>> lo, hi = y_limits(np.array([0.5, 0.498]), log=True)
    >>> round(float(np.log10(hi / lo)), 2)
    1.1
    """
    f = np.asarray(v, dtype=np.float64)
    f = f[np.isfinite(f) & (f > 0)] if log else f[np.isfinite(f)]
    if f.size == 0:
        return (0.1, 10.0) if log else (0.0, 1.0)
    if log:
        lo, hi = float(np.log10(f.min())), float(np.log10(f.max()))
        span = max(hi - lo, min_decades)
        mid = (lo + hi) / 2
        return 10 ** (mid - 0.55 * span), 10 ** (mid + 0.55 * span)
    lo, hi = min(float(f.min()), 0.0), max(float(f.max()), 0.0)
    if hi == lo:
        hi = lo + 1.0
    pad = 0.05 * (hi - lo)
    return lo - pad, hi + pad


def _ylabel(results: xr.Dataset, name: str, width: int = 30) -> str:
    long_name = results[name].attrs.get("long_name") or name
    return "\n".join(textwrap.wrap(str(long_name), width)) or name


def _title(name: str) -> str:
    d = collapse_direction(name)
    return f"{name}  {_CUE[d]}" if d is not None else name


def _draw_y(a: Any, v: np.ndarray, logy: bool | str, min_decades: float) -> str:
    f = v[np.isfinite(v)]
    decade = f.size > 1 and bool(np.all(f > 0)) and f.max() / f.min() > 10
    log = bool(f.size) and bool(np.any(f > 0)) and (logy is True or (logy == "auto" and decade))
    if log:
        a.set_yscale("log")
    lo, hi = y_limits(v, log, min_decades)
    a.set_ylim(lo, hi)
    if log:
        _plain_log_ticks(a.yaxis, np.log10(hi / lo))
    return "log" if log else "linear"


def _plain_log_ticks(axis: Any, decades: float) -> None:
    """Ticks at 1, 2, 5 × 10^k (only 10^k beyond 3 decades), labelled as plain numbers."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0) if decades <= 3 else (1.0,)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def _log_x(a: Any) -> None:
    a.set_xscale("log")
    lo, hi = a.get_xlim()
    _plain_log_ticks(a.xaxis, np.log10(hi / lo) if lo > 0 else 99.0)


def _terminal_phase(results: xr.Dataset, dim: str, acc: Sequence[str]) -> Any:
    if not acc:
        return None
    v = host_float64(results[acc[0]])
    hit = np.nonzero(v >= 1.0)[0]
    return results[dim].values[hit[0]] if hit.size else None


def _check_metrics(results: xr.Dataset, dim: str, metrics: Sequence[str] | None) -> list[str]:
    if metrics is None:
        return [m for m in HEADLINE if m in results and results[m].dims == (dim,)]
    metrics = list(metrics)
    for m in metrics:
        if m not in results:
            raise ValueError(f"no variable {m!r} in results; have {sorted(results.data_vars)}")
        if results[m].dims != (dim,):
            raise ValueError(f"{m!r} has dims {results[m].dims}, expected ({dim!r},)")
    return metrics


def _sweep_dim(results: xr.Dataset, dim: str | None) -> str:
    if dim is None:
        dim = next((d for d in SWEEP_DIMS if d in results.dims), None)
        if dim is None:
            raise ValueError(f"results have no sweep dim (one of {SWEEP_DIMS}); "
                             f"their dims: {dict(results.sizes)}")
    if dim not in results.dims:
        raise ValueError(f"results have no dim {dim!r}; their dims: {dict(results.sizes)}")
    return dim


def plot_metrics(results: xr.Dataset, dim: str | None = None, metrics: Sequence[str] | None = None,
                 *, ax: Any = None, path: str | Path | None = None, logy: bool | str = "auto",
                 logx: bool | str = "auto", accuracy: Sequence[str] = ACCURACY,
                 min_decades: float = MIN_DECADES, ncols: int = 3) -> Any:
    """NC curves: each scalar metric against the sweep dim (epoch or layer).

    Parameters
    ----------
    results : xarray.Dataset
        Output of :func:`ncdask.sweep`.
    dim : str, optional
        The sweep dim; default the first of :data:`SWEEP_DIMS` present.
    metrics : sequence of str, optional
        Variables to draw; default the :data:`HEADLINE` metrics present.
    ax : matplotlib Axes, optional
        Draw every curve on this one Axes, with a legend.
    path : str or Path, optional
        Save the figure here (format from the suffix).
    logy, logx : bool or "auto"
        Log axes; "auto" picks them from the data.
    accuracy : sequence of str
        Accuracy variables of the extra panel (empty: none).
    min_decades : float
    ncols : int
        Panels per row.

    Returns
    -------
    matplotlib.figure.Figure
    """
    dim = _sweep_dim(results, dim)
    metrics = _check_metrics(results, dim, metrics)
    if not metrics:
        raise ValueError(f"no scalar metric along {dim!r} to plot")
    acc = [a for a in accuracy if a in results and results[a].dims == (dim,)]
    x = results[dim].values
    if x.dtype.kind in "OUS":
        x = np.asarray([str(v) for v in x])
    xlog = logx is True or (logx == "auto" and log_spaced(x))
    tpt = _terminal_phase(results, dim, acc)
    if ax is not None:
        fig, ax = _figure(ax, (6, 4))
        for m in metrics:
            d = collapse_direction(m)
            ax.plot(x, host_float64(results[m]), marker="o", ms=3,
                    label=m + (f" ({_CUE[d]})" if d is not None else ""))
        scale = _draw_y(ax, np.concatenate([host_float64(results[m]) for m in metrics]), logy,
                        min_decades)
        rule = f"log, \u2265 {min_decades:g} decade" if scale == "log" else "linear, from 0"
        ax.set_ylabel(f"value ({rule})")
        if xlog:
            _log_x(ax)
        ax.set_xlabel(dim)
        ax.legend(fontsize="small")
        return _save(fig, path)
    from matplotlib.figure import Figure

    n = len(metrics) + (1 if acc else 0)
    ncols = max(1, min(ncols, n))
    nrows = -(-n // ncols)
    fig = Figure(figsize=(3.6 * ncols, 2.8 * nrows + 0.4), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for a, m in zip(axes, metrics, strict=False):
        v = host_float64(results[m])
        a.plot(x, v, marker="o", ms=3)
        _draw_y(a, v, logy, min_decades)
        a.set_title(_title(m), fontsize="medium")
        a.set_ylabel(_ylabel(results, m), fontsize="small")
    if acc:
        a = axes[len(metrics)]
        for name in acc:
            a.plot(x, host_float64(results[name]), marker="o", ms=3,
                   label=str(results[name].attrs.get("long_name") or name))
        a.set_ylim(0, 1.05)
        a.set_title("accuracy", fontsize="medium")
        a.set_ylabel("accuracy", fontsize="small")
        a.legend(fontsize="x-small", loc="lower right")
    for a in axes[:n]:
        if xlog:
            _log_x(a)
        if tpt is not None:
            a.axvline(tpt, color="0.4", ls=":", lw=1)
        a.set_xlabel(dim, fontsize="small")
        a.tick_params(labelsize="small")
        a.grid(alpha=0.3)
    for a in axes[n:]:
        a.set_visible(False)
    note = (f"; dotted: train accuracy reaches 100 % at {dim} {tpt} (terminal phase)"
            if tpt is not None else "")
    head = (f"NC metrics against {dim}. y axes: linear ones include 0, log ones span "
            f"\u2265 {min_decades:g} decade{note}")
    fig.suptitle("\n".join(textwrap.wrap(head, 45 * ncols)), fontsize="medium")
    return _save(fig, path)


def _pick_classes(counts: np.ndarray | None, K: int, max_classes: int,
                  classes: Sequence[int] | None, seed: int) -> np.ndarray:
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


def cosine_spread(C: np.ndarray) -> float:
    """The standard deviation (ddof 1) of a cosine matrix's off-diagonal entries.

    >>> K = 4
    >>> cosine_spread(np.full((K, K), -1 / (K - 1)) + np.eye(K) * K / (K - 1))
    0.0
    """
    C = np.asarray(C, dtype=np.float64)
    off = C[np.triu_indices(C.shape[0], k=1)]
    return float(np.std(off, ddof=1)) if off.size > 1 else float("nan")


def _where(attrs: Any) -> str:
    return ", ".join(f"{k}={attrs[k]}" for k in ("layer", "epoch") if k in attrs)


def _class_cosines(stats: Any, idx: np.ndarray) -> np.ndarray:
    if isinstance(stats, xr.Dataset):
        M = host_float64(stats["means"].isel({"class": idx}))
        mG = host_float64(stats["global_mean"])
    else:
        mG = host_float64(stats.mean(axis=0))  # a dask input stays lazy until here
        M = host_float64(stats[idx])
    Mc = M - mG[None, :]
    U = Mc / np.maximum(np.linalg.norm(Mc, axis=1, keepdims=True), 1e-300)
    return U @ U.T


def _class_axis(stats: Any) -> tuple[int, np.ndarray | None, np.ndarray]:
    if isinstance(stats, xr.Dataset):
        K = int(stats.sizes["class"])
        counts = host_float64(stats["counts"]) if "counts" in stats else None
        ids = stats["class"].values if "class" in stats.coords else np.arange(K)
        return K, counts, ids
    K = int(stats.shape[0])
    return K, None, np.arange(K)


def _tick_classes(ax: Any, labels: list[str]) -> None:
    n = len(labels)
    step = max(1, -(-n // 25))
    pos = list(range(0, n, step))
    size = "small" if n <= 12 else "x-small"
    ax.set_xticks(pos, [labels[i] for i in pos], fontsize=size, rotation=90 if n > 12 else 0)
    ax.set_yticks(pos, [labels[i] for i in pos], fontsize=size)
    ax.set_xlabel("class", fontsize="small")
    ax.set_ylabel("class", fontsize="small")


def plot_gram(stats: xr.Dataset | Any | Mapping[Any, Any], *, max_classes: int = 40,
              classes: Sequence[int] | None = None, class_names: Sequence[str] | None = None,
              seed: int = 0, dim: str | None = None, ax: Any = None,
              path: str | Path | None = None) -> Any:
    """Heatmap of the cosines between centred class means (the normalised Gram matrix).

    Parameters
    ----------
    stats : xarray.Dataset, array (K, D), or mapping of them
        Class statistics or class means; a mapping draws one panel per entry.
    max_classes : int
        Above it a random block of classes (drawn with ``seed``) is drawn.
    classes : sequence of int, optional
        Exactly these classes.
    class_names : sequence of str, optional
        Names of all K classes for the tick labels (default the class ids).
    seed : int
    dim : str, optional
        What the mapping keys are (titles read ``epoch=40``).
    ax : matplotlib Axes, optional
        Draw on this Axes (one set only).
    path : str or Path, optional

    Returns
    -------
    matplotlib.figure.Figure
    """
    if isinstance(stats, Mapping) and not isinstance(stats, xr.Dataset):
        if not stats:
            raise ValueError("no class statistics to draw")
        if ax is not None and len(stats) > 1:
            raise ValueError("ax= draws one set; pass one set, or no ax for side-by-side panels")
        sets = {(f"{dim}={k}" if dim else str(k)): v for k, v in stats.items()}
    else:
        sets = {_where(stats.attrs) if isinstance(stats, xr.Dataset) else "": stats}
    K, counts, ids = _class_axis(next(iter(sets.values())))
    for v in sets.values():
        k2, c2, _ = _class_axis(v)
        if k2 != K:
            raise ValueError(f"the sets differ in their number of classes ({K} vs {k2})")
        if c2 is not None:
            counts = c2 if counts is None else np.minimum(counts, c2)
    idx = _pick_classes(counts, K, max_classes, classes, seed)
    names = list(class_names) if class_names is not None else None
    if names is not None and len(names) != K:
        raise ValueError(f"{len(names)} class names for K={K}")
    labels = [names[int(i)] if names else str(ids[int(i)]) for i in idx]
    n = len(idx)
    what = f"{n} of {K} classes" if n < K else f"K={K}"
    if ax is not None:
        fig, axes = ax.figure, [ax]
    else:
        from matplotlib.figure import Figure

        fig = Figure(figsize=(4.4 * len(sets) + 1.0, 4.6), layout="constrained")
        axes = list(fig.subplots(1, len(sets), squeeze=False).ravel())
    im = None
    for a, (where, st) in zip(axes, sets.items(), strict=True):
        C = _class_cosines(st, idx)
        im = a.imshow(C, vmin=-1, vmax=1, cmap="RdBu_r", interpolation="nearest")
        _tick_classes(a, labels)
        spread = cosine_spread(C)
        head = (f"spread (std) of off-diagonal cosines {spread:.3f} (ETF: 0)" if n > 2
                else "one pair" if n == 2 else "one class")
        a.set_title(f"class-mean cosines, {', '.join(filter(None, [where, what]))}\n{head}",
                    fontsize="medium")
    ideal = f"  (ETF: {-1 / (K - 1):.3f} off the diagonal)" if K > 1 else ""
    fig.colorbar(im, ax=axes, label=r"$\cos(\tilde m_i, \tilde m_j)$" + ideal,
                 shrink=0.9)
    return _save(fig, path)


def plot_per_class(results: xr.Dataset, var: str = "mean_norms", *,
                   at: dict[str, Any] | None = None, max_bars: int = 64, ax: Any = None,
                   path: str | Path | None = None) -> Any:
    """Bars of a per-class companion (``mean_norms``, ``similarities``, ``agree_per_class``...).

    Parameters
    ----------
    results : xarray.Dataset
        Output of :func:`ncdask.measure` or :func:`ncdask.sweep`.
    var : str
    at : dict, optional
        Position along a sweep dim, e.g. ``{"epoch": 40}``; default the last.
    max_bars : int
        Above this many classes the values are drawn sorted, as a profile.
    ax : matplotlib Axes, optional
    path : str or Path, optional

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
    v = host_float64(da_)
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


def plot_equiseparation(result_or_fit: xr.Dataset, ax: Any = None, *, dim: str = "layer",
                        path: str | Path | None = None) -> Any:
    """The separation fuzziness ``D_l`` of each layer on a log axis against depth, with the
    fitted geometric law ``D_l = e^a ρ^l`` (ρ and R² in the legend).

    Parameters
    ----------
    result_or_fit : xarray.Dataset
        A sweep over layers with ``nc1_pinv``, or :func:`ncdask.equiseparation` of one; a
        second dim (``epoch``) draws one series per entry.
    ax : matplotlib Axes, optional
    dim : str, default "layer"
    path : str or Path, optional

    Returns
    -------
    matplotlib.figure.Figure
    """
    fit = result_or_fit if "rho" in result_or_fit else equiseparation(result_or_fit, dim)
    fit = fit.compute()
    dim = fit.attrs.get("dim", dim)
    fig, ax = _figure(ax, (5.0, 3.4))
    other = [d for d in fit["fuzziness"].dims if d != dim]
    series = [{}] if not other else [{other[0]: v} for v in fit[other[0]].values]
    x = fit["depth"].values
    for i, at in enumerate(series):
        one = fit.sel(at) if at else fit
        where = f"{other[0]}={at[other[0]]}: " if at else ""
        c = f"C{i % 10}"
        ax.plot(x, host_float64(one["fuzziness"]), "o", color=c, label=None if at else "D_l")
        rho, r2, a = (float(one[k]) for k in ("rho", "r2", "intercept"))
        ax.plot(x, np.exp(a) * rho ** x, "-", color=c, lw=1,
                label=f"{where}\u03c1 = {rho:.3g}, R\u00b2 = {r2:.3f}")
    ax.set_yscale("log")
    ax.set_xticks(x, [str(v) for v in fit[dim].values],
                  rotation=45 if len(x) > 6 else 0)
    ax.set(xlabel=f"{dim} (by depth)", ylabel="D_l = tr(\u03a3_W \u03a3_B\u207a)",
           title="equi-separation across layers")
    ax.legend(fontsize="small")
    return _save(fig, path)


__all__ = [
    "plot_metrics", "plot_gram", "plot_per_class", "plot_equiseparation", "collapse_direction",
    "cosine_spread", "log_spaced", "y_limits", "HEADLINE", "SWEEP_DIMS", "COLLAPSE_DIRECTION",
    "ACCURACY", "MIN_DECADES",
]


def __dir__() -> list[str]:  # the public names only, for dir() and tab completion
    return list(__all__)
