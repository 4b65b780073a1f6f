"""Every Neural Collapse metric of SPEC.md as a lazy, labelled :class:`xarray.Dataset`.

:func:`measure` gives one variable per declaration of
:data:`~ncdask.metrics.declarations.METRICS`; this module chooses and labels.

Degenerate input: empty, filtered and ``min_count`` classes and ``ignore_index`` samples are
left out; metrics missing inputs are left out silently, undefined ones with a
:class:`DegenerateInputWarning` (both in ``left_out``), which also counts one-sample classes
(all of them: Σ_W metrics NaN). The Riesz kernel warns :class:`RieszRangeWarning` beyond
float64's range.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import xarray as xr

from ncdask._validate import check_count
from ncdask._version import __version__
from ncdask.errors import DegenerateInputWarning, did_you_mean, option, warn
from ncdask.graph.pairwise import default_tile_size, resolve_budget
from ncdask.kernels.pairwise import RieszRangeWarning  # noqa: F401 - public with measure
from ncdask.metrics.declarations import GROUPS, METRICS, ON_REQUEST, Inputs, dim_coords
from ncdask.metrics.inputs import check_stats as _check_stats
from ncdask.metrics.inputs import class_inputs, kept_classes
from ncdask.metrics.summary import check_role, is_summary

_LONE = "one-sample classes"  # the key of their note among the degenerate reasons


def _selection(metrics: str | Iterable[str] | None, by_frequency: bool = False) -> list[str]:
    """The variables asked for, in the order of :data:`METRICS` (the head/tail bins only, and
    always, with ``by_frequency``)."""
    if metrics is None:
        return [n for n in METRICS if by_frequency or n not in ON_REQUEST]
    if by_frequency:
        metrics = [metrics] if isinstance(metrics, str) else list(metrics)
        metrics += list(ON_REQUEST)
    if isinstance(metrics, str):
        metrics = [metrics]
    chosen: set[str] = set()
    for m in metrics:
        key = m.lower() if isinstance(m, str) else m  # names are case-insensitive: NC1, nc1
        if key not in METRICS and key not in GROUPS:
            raise ValueError(
                f"unknown metric {m!r}{did_you_mean(m, [*METRICS, *GROUPS])}; the metrics "
                "and groups are listed in "
                + option("ncdask.metrics.METRICS and ncdask.metrics.GROUPS",
                         "`ncdask analyze --help`"))
        chosen.update(GROUPS.get(key, (key,)))
    return [n for n in METRICS if n in chosen]


def label_results(ds: xr.Dataset) -> xr.Dataset:
    """``ds`` with its metric variables in SPEC order, each labelled from :data:`METRICS`.

    Parameters
    ----------
    ds : xarray.Dataset

    Returns
    -------
    xarray.Dataset
    """
    names = [n for n in METRICS if n in ds.data_vars]
    out = ds[names + [n for n in ds.data_vars if n not in METRICS]]
    out.attrs = dict(ds.attrs)
    for n in names:
        out[n].attrs.update(METRICS[n].attrs)
    return out


def _measure_one(
    stats: xr.Dataset, *, weights: Any, bias: Any, test: Any, ood: Any, tile_size: int | None,
    wanted: Sequence[str], dist_exp: float, riesz_s: float | None, nc4_backend: str,
    ood_labels: bool | None, split_every: int | None, min_count: int | None = None,
    ignore_index: int | None = None, memory_budget: int | None = None,
    by_frequency: int | None = None, train: Any = None,
) -> tuple[xr.Dataset, dict[str, str]]:
    """Resolve the inputs once, select the metrics defined for them, compute each, label."""
    stats = _check_stats(stats)
    if isinstance(train, xr.Dataset) and train.attrs.get("ncdask_streamed") is not None:
        raise ValueError("train= takes the training samples (a split Dataset or (store, "
                         "split)), not a streamed summary")
    for role, obj in (("test", test), ("ood", ood), ("train", train)):
        check_role(obj, role)
    kept = kept_classes(stats, min_count, ignore_index)
    K_all, K = kept.n_all, kept.n_kept
    D = int(stats.sizes["feature"])
    class_ids = (np.asarray(stats["class"].values)[kept.present] if "class" in stats.coords
                 else kept.present)
    have = {"weights": weights is not None, "test": test is not None, "ood": ood is not None,
            "by_frequency": by_frequency is not None, "train": train is not None}
    if by_frequency is not None and by_frequency > K:
        raise ValueError(f"by_frequency={by_frequency} bins for {K} classes measured: "
                         "ask for at most one bin per class")

    left_out: dict[str, str] = {}
    degenerate: dict[str, str] = {}
    for name in wanted:
        missing = [n for n in METRICS[name].needs if not have[n]]
        if missing:
            left_out[name] = "no " + " / ".join(missing) + " given"
        elif (v := METRICS[name].summary_var) and is_summary(test, "test") and v not in test:
            left_out[name] = f"the streamed test summary has no {v} (an older ncdask made it)"
        elif (why := METRICS[name].undefined(K, D)) is not None:
            degenerate[name] = why
    left_out.update(degenerate)
    todo = tuple(n for n in wanted if n not in left_out)
    lone = int((kept.counts[kept.present] == 1).sum())
    if lone and (within := [n for n in todo if METRICS[n].within]):
        degenerate[_LONE] = (
            f"every one of the {K} classes measured has one sample: the within-class "
            f"covariance is unestimable (not zero), so {', '.join(within)} are NaN"
            if lone == K else f"{lone} of the {K} classes measured have one sample: their "
            f"within-class variability is unestimable and counts as zero in {', '.join(within)}")

    T = int(tile_size) if tile_size else default_tile_size(max(K, 1), D, budget=memory_budget)
    if T < 1:
        raise ValueError(f"tile_size must be a positive integer, got {tile_size!r}")
    out: dict[str, Any] = {}
    if K:
        inputs = Inputs(
            stats=stats, kept=kept,
            cls=class_inputs(stats, kept, weights=weights, bias=bias, tile_size=T),
            todo=todo, tile_size=T, test=test, ood=ood, dist_exp=float(dist_exp),
            riesz_s=float(D - 2 if riesz_s is None else riesz_s), nc4_backend=nc4_backend,
            ood_labels=ood_labels, split_every=split_every, memory_budget=memory_budget,
            by_frequency=by_frequency, train=train)
        out = {name: METRICS[name].evaluate(inputs) for name in todo}

    data_vars = {n: xr.Variable(METRICS[n].dims, out[n], attrs=METRICS[n].attrs)
                 for n in todo if n in out}
    coords: dict[str, Any] = {}
    if any(METRICS[n].per_class for n in data_vars):
        coords["class"] = class_ids
    if any(METRICS[n].per_bin for n in data_vars):
        coords.update(_bin_coords(inputs.bins, kept.counts[kept.present]))
    for d in {METRICS[n].dim for n in data_vars} - {None}:
        coords.update(dim_coords(d))
    ds = xr.Dataset(data_vars, coords=coords or None)
    ds.attrs.update(
        n_classes=K_all, n_classes_measured=K, dim=D,
        empty_classes=[int(i) for i in kept.empty],
        filtered_classes=[int(i) for i in kept.filtered],
        min_count=None if min_count is None else int(min_count),
        ignore_index=kept.ignore_index, tile_size=T, memory_budget=memory_budget,
        dist_exp=float(dist_exp), riesz_s=float(D - 2 if riesz_s is None else riesz_s),
        global_mean=stats.attrs.get("global_mean", "unweighted"),
        left_out=dict(left_out), ncdask_version=__version__,
    )
    return ds, degenerate


def _bin_coords(bins: list[np.ndarray], counts: np.ndarray) -> dict[str, Any]:
    """The ``frequency_bin`` coordinates: each bin's class count range and size."""
    d = ("frequency_bin",)
    return {"frequency_bin": np.arange(len(bins)),
            "bin_min_count": (d, np.array([counts[b].min() for b in bins], dtype=np.int64)),
            "bin_max_count": (d, np.array([counts[b].max() for b in bins], dtype=np.int64)),
            "bin_n_classes": (d, np.array([b.size for b in bins], dtype=np.int64))}


# --------------------------------------------------------------------------- sweeps

_CORE_DIMS = {"class", "feature", "feature_"}


def _sweep_dim(stats: xr.Dataset) -> str | None:
    """The one dim of stacked statistics beside their own (None for one statistics object)."""
    extra = [d for d in stats.dims if d not in _CORE_DIMS]
    if len(extra) > 1:
        raise ValueError(f"stats have more than one sweep dim: {extra}; stack them first")
    return extra[0] if extra else None


def _sweep_items(
    stats: Any, dim: str | None, labels: Sequence[Any] | None
) -> tuple[str, list[Any], list[xr.Dataset]]:
    """The sweep dim, its labels and the statistics of each item of a sweep."""
    if isinstance(stats, xr.Dataset):
        d = _sweep_dim(stats)
        if dim is not None and dim != d:
            raise ValueError(f"dim={dim!r} but the stats are stacked along {d!r}")
        labs = list(stats[d].values) if d in stats.coords else list(range(stats.sizes[d]))
        items = [stats.isel({d: i}) for i in range(stats.sizes[d])]
        for it in items:  # the per-item empty classes follow from its own counts
            it.attrs = dict(it.attrs)
            counts = np.asarray(it["counts"].values)
            it.attrs["empty_classes"] = np.nonzero(counts == 0)[0].tolist()
        return d, labs, items
    if isinstance(stats, Mapping):
        return dim or "epoch", list(stats.keys()), list(stats.values())
    if isinstance(stats, (list, tuple)):
        labs = list(labels) if labels is not None else list(range(len(stats)))
        if len(labs) != len(stats):
            raise ValueError(f"{len(labs)} labels for {len(stats)} stats")
        return dim or "epoch", labs, list(stats)
    raise TypeError(
        f"stats must be a Dataset, a list or a dict of Datasets, got {type(stats).__name__}"
    )


def _pick(obj: Any, i: int, label: Any, dim: str) -> Any:
    """Item ``i`` of a per-item input (a dict, a list, or an xarray object with ``dim``)."""
    if isinstance(obj, Mapping):
        return obj[label]
    if isinstance(obj, list):
        return obj[i]
    if isinstance(obj, (xr.DataArray, xr.Dataset)) and dim in obj.dims:
        return obj.isel({dim: i})
    return obj


def _measure_each(stats: Any, dim: str | None, labels: Sequence[Any] | None,
                  per_item: dict[str, Any], opts: dict[str, Any]) -> xr.Dataset:
    """A sweep: each item of ``stats`` measured with its own inputs, stacked along its dim."""
    d, labs, items = _sweep_items(stats, dim, labels)
    results, degenerate = [], {}
    for i, (lab, st) in enumerate(zip(labs, items, strict=True)):
        ds, deg = _measure_one(st, **{k: _pick(v, i, lab, d) for k, v in per_item.items()},
                               **opts)
        results.append(ds)
        for k, reason in deg.items():  # metric -> reason -> the items it holds for
            degenerate.setdefault(k, {}).setdefault(reason, []).append(lab)
    _warn_degenerate({k: _where_held(by, d, len(labs)) for k, by in degenerate.items()})
    attrs = dict(results[0].attrs)
    attrs["left_out"] = {k: v for r in results for k, v in r.attrs["left_out"].items()}
    attrs["empty_classes"] = sorted({c for r in results for c in r.attrs["empty_classes"]})
    attrs["filtered_classes"] = sorted(
        {c for r in results for c in r.attrs["filtered_classes"]}
    )
    attrs["n_classes_measured"] = [r.attrs["n_classes_measured"] for r in results]
    out = xr.concat(results, dim=d, join="outer", combine_attrs="override", data_vars="all",
                    coords="different", compat="equals")
    out = label_results(out.assign_coords({d: labs}))
    out.attrs = attrs
    return out


def _where_held(by_reason: dict[str, list[Any]], dim: str, n_items: int) -> str:
    """A sweep's reasons for one metric: a reason that holds for every item alone, else each
    reason with the items it holds for."""
    if len(by_reason) == 1 and len(next(iter(by_reason.values()))) == n_items:
        return next(iter(by_reason))
    parts = []
    for reason, labs in by_reason.items():
        more = f" and {len(labs) - 6} more" if len(labs) > 6 else ""
        parts.append(f"{reason} at {dim}={', '.join(map(str, labs[:6]))}{more}")
    return "; ".join(parts)


def _warn_degenerate(degenerate: dict[str, str]) -> None:
    """One warning for the metrics left out as undefined (those with one reason named
    together), one for one-sample classes; at the caller's line."""
    by_reason: dict[str, list[str]] = {}
    for k, reason in degenerate.items():
        if k != _LONE:
            by_reason.setdefault(reason, []).append(k)
    if by_reason:
        shown = "; ".join(f"{', '.join(ks)}: {r}" for r, ks in by_reason.items())
        warn(f"left out as undefined for this input: {shown}", DegenerateInputWarning)
    if _LONE in degenerate:
        warn(degenerate[_LONE], DegenerateInputWarning)


def measure(
    stats: xr.Dataset | Sequence[xr.Dataset] | Mapping[Any, xr.Dataset], *,
    weights: Any = None, bias: Any = None, test: Any = None, ood: Any = None,
    tile_size: int | None = None, metrics: str | Iterable[str] | None = None,
    dist_exp: float = 1.0, riesz_s: float | None = None, nc4_backend: str = "gemm",
    ood_labels: bool | None = None, dim: str | None = None,
    labels: Sequence[Any] | None = None, split_every: int | None = None,
    min_count: int | None = None, ignore_index: int | None = None,
    memory_budget: int | str | None = None, by_frequency: int | None = None, train: Any = None,
) -> xr.Dataset:
    """Measure Neural Collapse: every SPEC.md metric as a lazy labelled Dataset.

    Parameters
    ----------
    stats : xarray.Dataset, list or dict of them
        Class statistics from :func:`ncdask.class_stats`; stacked along an extra
        dim, a list (with ``labels``) or a dict measures a sweep.
    weights : array (K, D), optional
        Classifier weights (any array type); for a sweep, one per item.
    bias : array (K,), optional
        Classifier bias, for NC4 and ``nc3_bias`` (0 if not given).
    test : split Dataset, (store, split) or streamed summary, optional
        Samples for NC4.
    ood : split Dataset, (store, split) or streamed summary, optional
        Out-of-distribution samples for NC5.
    tile_size : int, optional
        Classes per tile; by default the largest that fits ``memory_budget``.
    metrics : str or iterable of str, optional
        Variables or groups (:data:`GROUPS`, e.g. ``"nc2g_riesz"``), in any case; default all.
    dist_exp : float, default 1
        CDNV distance exponent ``p`` (linguistic collapse uses 2).
    riesz_s : float, optional
        Riesz exponent ``S``; default ``D − 2``.
    nc4_backend : {"gemm", "faiss"}
        NCC decisions by blocked GEMM or by an exact (float32) FAISS index.
    ood_labels : bool, optional
        Use the OOD labels; default: if present.
    dim : str, optional
        Sweep dim for a list or dict of stats (default "epoch").
    labels : sequence, optional
        Coordinates of a list sweep.
    split_every : int, optional
        Fan-in of the merge trees.
    min_count : int, optional
        Leave classes with fewer samples out of every class-level metric.
    ignore_index : int, optional
        Label of samples to skip (default: the statistics' attribute).
    memory_budget : int or str, optional
        Bytes one task may hold (``"64MiB"`` works); sets tiles and NC4 blocks.
    by_frequency : int, optional
        Bins of classes ranked by count for the ``*_by_frequency`` metrics.
    train : split Dataset or (store, split), optional
        The training samples, for ``nc1_pinv_by_frequency``.

    Returns
    -------
    xarray.Dataset
        One variable per metric; attrs include ``left_out`` (metric → reason).

    Warns
    -----
    DegenerateInputWarning
        When a requested metric is undefined for the input and left out, or
        classes have one sample (with their count; NC1 NaN when all do). Once
        per call; a sweep's names the items only where the reason holds for some.
    RieszRangeWarning
        When computed, if the Riesz kernel's statistics leave float64's range.

    Examples
    --------
    >>> import numpy as np, ncdask
    >>> from ncdask.metrics.api import measure
    >>> rng = np.random.default_rng(0)
    >>> y = np.arange(40) % 4
    >>> X = rng.normal(size=(40, 6)) + 3 * np.eye(4, 6)[y]
    >>> stats = ncdask.StatsAccumulator(4, 6).update(X, y).result()
    >>> res = measure(stats, metrics=["nc1_quot", "nc2g_dist"]).compute()
    >>> sorted(res.data_vars)
    ['nc1_quot', 'nc2g_dist_mean', 'nc2g_dist_var']
    """
    if by_frequency is not None:
        check_count("by_frequency", by_frequency)
    wanted = _selection(metrics, by_frequency is not None)
    if riesz_s is not None and not math.isfinite(float(riesz_s)):
        raise ValueError(f"riesz_s must be finite, got {riesz_s!r}")
    if min_count is not None:
        check_count("min_count", min_count, minimum=0)
    opts = dict(tile_size=tile_size, wanted=wanted, dist_exp=dist_exp, riesz_s=riesz_s,
                nc4_backend=nc4_backend, ood_labels=ood_labels, split_every=split_every,
                min_count=min_count, ignore_index=ignore_index,
                memory_budget=resolve_budget(memory_budget), by_frequency=by_frequency)
    per_item = dict(weights=weights, bias=bias, test=test, ood=ood, train=train)
    if not isinstance(stats, xr.Dataset) or _sweep_dim(stats):  # a sweep: list, dict, stacked
        return _measure_each(stats, dim, labels, per_item, opts)
    ds, degenerate = _measure_one(stats, **per_item, **opts)
    _warn_degenerate(degenerate)
    return ds
