"""Every Neural Collapse metric of a store in one call: ``ncdask analyze`` from Python.

Finds the splits and the stored classifier of one embedding set (or of every set, a
sweep), measures them with :func:`ncdask.measure` / :func:`ncdask.sweep` and returns the
computed, labelled Dataset."""

from __future__ import annotations

import contextlib
import os
from typing import Any

import xarray as xr

from ncdask.errors import did_you_mean, option
from ncdask.metrics.api import measure
from ncdask.results import save_results
from ncdask.scheduler import Runner, to_gpu, to_host, use_scheduler
from ncdask.stats import class_stats
from ncdask.store.embedding import EmbeddingStore
from ncdask.store.zarrio import check_output
from ncdask.sweeps import sweep as sweep_sets

TAGS = ("layer", "epoch")


class _IfPresent(str):
    """A default split name: measured where every set holds it, quietly left out where not
    (a name the caller gives must be there)."""


def analyze(url_or_store: Any, *, layer: str | None = None, epoch: int | None = None,
            metrics: Any = None, train: str = "train", test: str | None = _IfPresent("test"),
            ood: str | None = _IfPresent("ood"), weights: Any = "stored", out: str | None = None,
            overwrite: bool = False, sweep: bool | str | None = None, cache: bool = True,
            scheduler: str | None = None, progress: bool = False,
            **measure_kwargs: Any) -> xr.Dataset:
    """Measure every Neural Collapse metric of a store, as ``ncdask analyze`` does.

    Parameters
    ----------
    url_or_store : str, path or EmbeddingStore
        The store.
    layer, epoch : optional
        The embedding set (default: the untagged one); with ``sweep``, the tag kept fixed.
    metrics : str or iterable of str, optional
        Metrics or groups (``"nc1"``, ``"nc4_agree"``); default all.
    train : str, default "train"
        Split of the class statistics.
    test, ood : str or None, default "test" / "ood"
        Splits for NC4 and NC5: by default used where present; a name given must exist;
        None leaves the split out.
    weights : "stored", None, (W, b) or W
        The classifier: ``"stored"`` uses :meth:`EmbeddingStore.classifier` where the set
        has one.
    out : str, optional
        Also write the results there (:func:`ncdask.save_results`); checked before the pass.
    overwrite : bool, default False
        Replace ``out`` if it holds ncdask results.
    sweep : True, "epoch" or "layer", optional
        Measure every tagged set holding ``train`` along that tag (True: the one that
        varies), each with its stored classifier.
    cache : bool, default True
        Keep the class statistics in the store and reuse them (a rerun reads only new rows).
    scheduler : str, optional
        As :func:`ncdask.scheduler.use_scheduler` (default: the current Dask scheduler).
    progress : bool, default False
        Print what is measured and a progress bar on stderr.
    **measure_kwargs
        Passed to :func:`ncdask.measure` (``tile_size``, ``dist_exp``, ``min_count``, ...);
        ``ignore_index`` goes to :func:`ncdask.class_stats`.

    Returns
    -------
    xarray.Dataset
        The computed metrics (with the sweep dim first for a sweep).

    Examples
    --------
    >>> import numpy as np, ncdask
    >>> y = np.arange(90) % 3
    >>> X = 3 * np.eye(3, 4)[y] + np.random.default_rng(0).normal(size=(90, 4))
    >>> s = ncdask.EmbeddingStore.from_arrays("memory://analyze-doc", {"train": (X, y)},
    ...                                       W=3 * np.eye(3, 4), overwrite=True)
    >>> res = ncdask.analyze(s, metrics=["nc1_pinv", "nc3_dual_err"])
    >>> sorted(res.data_vars), float(res.nc1_pinv) < 1
    (['nc1_pinv', 'nc3_dual_err'], True)
    """
    store = (EmbeddingStore.open(os.fspath(url_or_store))
             if isinstance(url_or_store, (str, os.PathLike)) else url_or_store)
    if sweep is True and epoch is not None:
        raise ValueError(f"{option('sweep=True', '--sweep')} measures every embedding set; "
                         f"do not pass {option('epoch=', '--epoch')} with it")
    if out is not None:
        check_output(out, "results", overwrite=overwrite)  # before the pass
    stats_kw = {k: measure_kwargs.pop(k) for k in ("ignore_index",) if k in measure_kwargs}
    tags = {k: v for k, v in (("layer", layer), ("epoch", epoch)) if v is not None}
    dim, sets = _swept(store, sweep, train, tags) if sweep else (None, [tags])
    if dim is None:
        _measurable(store, train, tags, sweep_hint=True)
    test, ood = _optional(store, test, sets), _optional(store, ood, sets)
    stored = _stored(weights, sweep=dim is not None)
    runner = (use_scheduler(scheduler, quiet=not progress) if scheduler is not None
              else contextlib.nullcontext(Runner("default", quiet=not progress)))
    with runner as run:
        cache = cache and not run.gpu
        if dim is not None:
            pick = {("order" if k == dim else k): ([v] if k == dim else v)
                    for k, v in tags.items()}
            lazy = run.call(sweep_sets, store, over=dim, split=train, test=test, ood=ood,
                            cache=cache, stats_kwargs=stats_kw, use_classifier=stored,
                            backend="cupy" if run.gpu else "numpy", metrics=metrics,
                            **pick, **measure_kwargs)
        else:
            def read(name: str | None) -> Any:
                split = store.split(name, **tags) if name else None
                return to_gpu(split) if run.gpu and split is not None else split

            W, b = _classifier(store, weights, stored, tags)
            stats = (run.call(class_stats, store, train, cache=True, **tags, **stats_kw)
                     if cache else class_stats(read(train), **stats_kw))
            by_freq = measure_kwargs.get("by_frequency") is not None
            lazy = measure(stats, weights=W, bias=b, test=read(test), ood=read(ood),
                           # the samples again, for each bin's share of nc1_pinv
                           train=read(train) if by_freq else None, metrics=metrics,
                           **measure_kwargs)
        where = f"{lazy.sizes[dim]} sets" if dim else _where(tags)
        url = getattr(store, "url", "the store")
        results = to_host(run.compute(lazy, label=f"measuring {url} [{train}, {where}] ..."))
    if not results.data_vars:
        left = results.attrs.get("left_out") or {}
        raise ValueError("nothing was measured" + (": " + "; ".join(
            f"{k} ({r})" for k, r in left.items()) if left else ""))
    if out is not None:
        save_results(results, out, overwrite=overwrite)
    return results


def _where(tags: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in tags.items()) or "the default set"


def require_split(store: Any, name: str, tags: dict[str, Any], *,
                  sweep_hint: bool = False) -> None:
    """A KeyError unless the set ``tags`` of ``store`` holds split ``name``: it names the
    splits there (with a did-you-mean) or, where the set holds none, every set."""
    have = store.splits(**tags)
    if name in have:
        return
    head = f"no split {name!r} in {_where(tags)} of {getattr(store, 'url', 'the store')!r}"
    if have:
        raise KeyError(f"{head}{did_you_mean(name, have)}; splits there: {have}")
    sets = store.sets()
    hint = _layer_hint(sets, tags)
    choose = option("layer=/epoch=", "--layer/--epoch")
    if sweep_hint and len(sets) > 1:
        choose += f", or measure every set with {option('sweep=True', '--sweep')}"
    raise KeyError(f"{head}: that set holds no splits{hint}; embedding sets: {sets} "
                   f"(choose one with {choose})" if sets else f"{head}: the store is empty")


def _layer_hint(sets: list[dict[str, Any]], tags: dict[str, Any]) -> str:
    """A did-you-mean for a ``layer`` tag that no set has."""
    layers = {str(s["layer"]) for s in sets if "layer" in s}
    return did_you_mean(tags["layer"], layers) if tags.get("layer") not in (None, *layers) else ""


def _measurable(store: Any, train: str, tags: dict[str, Any], sweep_hint: bool = False) -> None:
    require_split(store, train, tags, sweep_hint=sweep_hint)
    if store.n_rows(train, **tags) == 0:
        raise ValueError(f"split {train!r} in {_where(tags)} of {store.url!r} holds no rows: "
                         "nothing to measure")


def _swept(store: Any, sweep: bool | str, train: str,
           tags: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    """The swept tag (``sweep``, or for True the one that varies) and the tagged sets
    holding ``train`` that match ``tags``."""
    if sweep is not True and sweep not in TAGS:
        raise ValueError(f"sweep must be True, 'epoch' or 'layer', got {sweep!r}")
    every = store.sets()
    sets = [s for s in every if s and train in store.splits(**s)
            and all(s.get(k) == v for k, v in tags.items()) and (sweep is True or sweep in s)]
    if not sets:
        raise ValueError(f"no tagged embedding sets with a {train!r} split"
                         f"{' and ' + _where(tags) if tags else ''} in {store.url!r}"
                         f"{_layer_hint(every, tags)}; "
                         f"embedding sets: {every}")
    varying = [k for k in TAGS if len({s.get(k) for s in sets}) > 1]
    if sweep is True and len(varying) > 1:
        raise ValueError("the sets vary in both layer and epoch; pick a "
                         f"{option('layer=', '--layer')} to sweep epochs")
    for s in sets:
        _measurable(store, train, s)
    if sweep is not True:
        return sweep, sets
    return varying[0] if varying else ("epoch" if "epoch" in sets[0] else "layer"), sets


def _optional(store: Any, name: str | None, sets: list[dict[str, Any]]) -> str | None:
    """``name`` where every set holds it: a default is left out where one does not, a
    given name is required."""
    if name is None:
        return None
    if isinstance(name, _IfPresent):
        return str(name) if all(name in store.splits(**s) for s in sets) else None
    for s in sets:
        require_split(store, name, s)
    return name


def _stored(weights: Any, sweep: bool = False) -> bool:
    """Whether ``weights`` asks for the stored classifier (a sweep takes only that or None)."""
    stored = isinstance(weights, str) and weights == "stored"
    if isinstance(weights, str) and not stored:
        raise ValueError(f"weights must be 'stored', None, (W, b) or W, got {weights!r}")
    if sweep and not stored and weights is not None:
        raise ValueError("a sweep measures each set with its own stored classifier: pass "
                         "weights='stored' or None")
    return stored


def _classifier(store: Any, weights: Any, stored: bool,
                tags: dict[str, Any]) -> tuple[Any, Any]:
    """``(W, b)`` from ``weights``: the set's stored classifier, none, a pair or ``W``."""
    if weights is None:
        return None, None
    if stored:
        try:
            return store.classifier(**tags, lazy=True)
        except KeyError:
            return None, None
    return tuple(weights) if isinstance(weights, tuple) else (weights, None)
