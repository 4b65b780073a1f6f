"""The one sweep: every embedding set of a store (or a StatsSink) measured along a dim."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import xarray as xr

from ncdask.metrics.api import measure
from ncdask.stats import class_stats
from ncdask.stats.cache import MemoKey
from ncdask.store.core import committed_parts, current_classifier
from ncdask.store.embedding import EmbeddingStore
from ncdask.store.setkey import SET_TAGS, SetKey

_RESERVED = ("weights", "bias", "dim", "labels", "train")


def _stores(store: Any) -> list[Any]:
    """The sources swept: EmbeddingStores (opened from URLs) or a StatsSink."""
    if isinstance(store, str):
        return [EmbeddingStore.open(store)]
    if isinstance(store, Mapping):
        store = list(store.values())
    if isinstance(store, (list, tuple)) and store:
        return [EmbeddingStore.open(s) if isinstance(s, str) else s for s in store]
    if hasattr(store, "sets") and hasattr(store, "splits"):
        return [store]
    raise TypeError(
        "store must be an EmbeddingStore, a StatsSink, a URL, or a non-empty list or dict of "
        f"them, got {type(store).__name__}"
    )


def _sort_key(v: Any) -> tuple[int, Any]:
    return (0, v) if isinstance(v, (int, np.integer)) else (1, str(v))


def sweep(
    store: EmbeddingStore | str | Sequence[Any] | Mapping[Any, Any],
    over: str | Sequence[str] = "epoch",
    split: str = "train",
    *,
    test: str | None = None,
    ood: str | None = None,
    layer: str | None = None,
    epoch: int | None = None,
    order: Sequence[Any] | None = None,
    use_classifier: bool = True,
    stats_kwargs: Mapping[str, Any] | None = None,
    compute: bool = False,
    out: str | None = None,
    cache: bool = False,
    backend: str = "numpy",
    **measure_kwargs: Any,
) -> xr.Dataset:
    """Class statistics and NC metrics of every embedding set, along one dim.

    Parameters
    ----------
    store : EmbeddingStore, URL, StatsSink, or list / dict of stores
        The store(s) to read, as one.
    over : {"epoch", "layer"} or ("layer", "epoch")
        The set tag(s) swept; a pair gives a 2-D sweep (missing ones NaN).
    split : str, default "train"
        The split whose class statistics are measured in each set.
    test, ood : str, optional
        Split names, read from each set, for NC4 and NC5.
    layer, epoch : optional
        Keep only the sets with this tag (the one not swept).
    order : sequence, optional
        The coordinates to keep, in this order; default every set, sorted (layers by their
        depth in the model where :func:`ncdask.capture` recorded it, else by name).
    use_classifier : bool, default True
        Measure each set with its own stored classifier.
    stats_kwargs : mapping, optional
        Passed to :func:`ncdask.class_stats` (``global_mean=``, ``dtype=``).
    compute : bool, default False
        Compute the result (default: lazy, one graph for every set).
    out : str, optional
        Zarr store of results: a rerun measures only new or changed sets.
    cache : bool, default False
        Keep each set's class statistics in the store (``class_stats(cache=True)``).
    backend : {"numpy", "cupy"}, default "numpy"
        Array module of the splits' chunks.
    **measure_kwargs
        Passed to :func:`ncdask.measure`.

    Returns
    -------
    xarray.Dataset
        The variables of :func:`ncdask.measure` with the sweep dim first.

    Examples
    --------
    >>> import numpy as np, ncdask
    >>> from ncdask.sweeps import sweep
    >>> rng = np.random.default_rng(0)
    >>> s = ncdask.EmbeddingStore.create("memory://sweep-doc", n_classes=3, dim=4,
    ...                                  overwrite=True)
    >>> y = np.arange(60) % 3
    >>> for e in (0, 5, 10):
    ...     X = np.eye(3, 4)[y] * (1 + e) + rng.normal(size=(60, 4))
    ...     _ = s.append("train", X, y, epoch=e)
    >>> res = sweep(s, over="epoch", metrics=["nc1_quot"], compute=True)
    >>> res.epoch.values.tolist(), bool((np.diff(res.nc1_quot.values) < 0).all())
    ([0, 5, 10], True)
    """
    dims = _swept_dims(over)
    fixed = {k: v for k, v in (("layer", layer), ("epoch", epoch)) if v is not None}
    clash = [k for k in fixed if k in dims]
    if clash:
        raise ValueError(f"{clash[0]}= fixes the tag that is swept over")
    bad = [k for k in measure_kwargs if k in _RESERVED]
    if bad:
        raise TypeError(
            f"sweep takes no {bad}: each set is measured with its own stored classifier "
            "and splits"
        )
    items, coords, axes = _ordered(_matching_sets(store, dims, fixed, split), dims, order)
    sk = dict(stats_kwargs or {})
    if out is not None:
        if len(dims) != 1:
            raise ValueError("out= keeps sweeps over one tag; sweep each layer on its own")
        if backend != "numpy":
            raise ValueError("out= measures on the host: leave backend= out")
        return _incremental(items, coords, dims[0], out, split, test, ood, use_classifier,
                            sk, measure_kwargs, fixed, cache)
    res = _measure_sets(items, coords, dims, split, test, ood, use_classifier, sk,
                        measure_kwargs, fixed, axes, cache, backend)
    return res.compute() if compute else res


#: The sets found: set key -> the store (or sink) holding it.
Found = dict[SetKey, Any]


def _swept_dims(over: str | Sequence[str]) -> list[str]:
    dims = [over] if isinstance(over, str) else list(over)
    if not dims or len(dims) > 2 or len(set(dims)) != len(dims):
        raise ValueError(f"over must be 'epoch', 'layer' or a pair of them, got {over!r}")
    for d in dims:
        if d not in SET_TAGS:
            raise ValueError(f"over must name set tags {SET_TAGS}, got {d!r}")
    return dims


def _matching_sets(store: Any, dims: list[str], fixed: dict[str, Any],
                   split: str) -> Found:
    """Every set of the store(s) with the swept and fixed tags, holding ``split`` (an error
    when none does, one is in two stores, or sets differ in another tag)."""
    found: Found = {}
    for st in _stores(store):
        for key in map(SetKey.from_tags, st.sets()):
            tags = key.tags
            if any(d not in tags for d in dims):
                continue
            if any(tags.get(k) != v for k, v in fixed.items()):
                continue
            if split not in st.splits(**tags):
                continue
            if key in found:
                raise ValueError(f"the set {tags} is in more than one of the stores")
            found[key] = st
    if not found:
        raise ValueError(
            f"no embedding set with tag(s) {dims}{' and ' + str(fixed) if fixed else ''} "
            f"holds split {split!r}"
        )
    free = [t for t in SET_TAGS if t not in dims and t not in fixed]
    for t in free:
        values = sorted({getattr(key, t) for key in found}, key=lambda v: str(v))
        if len(values) > 1:
            raise ValueError(
                f"the sets differ in {t!r} ({values}); fix it (sweep(..., {t}=...)) or sweep "
                f"over both tags (over=('layer', 'epoch'))"
            )
    return found


def _depths(found: Found, dims: list[str]) -> dict[str, int]:
    """Each swept layer's depth in its model (:func:`ncdask.capture` records it); empty
    unless every set has one (sets of an older ncdask: sorted by name)."""
    out: dict[str, int] = {}
    for key, st in found.items() if "layer" in dims else ():
        d = st.depth(**key.tags) if hasattr(st, "depth") else None
        if d is None:
            return {}
        out.setdefault(key.layer, d)
    return out


def _ordered(found: Found, dims: list[str], order: Sequence[Any] | None
             ) -> tuple[list[tuple[EmbeddingStore, SetKey]], list[tuple[Any, ...]],
                        dict[str, list[Any]] | None]:
    """The sets and their coordinates, in ``order`` or sorted by coordinate (layers by depth
    where recorded), and without ``order`` each dim's coordinates in that order."""
    items = [(st, key) for key, st in found.items()]
    coords = [tuple(getattr(key, d) for d in dims) for _, key in items]
    if order is not None:
        wanted = [tuple(o) if len(dims) > 1 else (o,) for o in order]
        missing = [w for w in wanted if w not in coords]
        if missing:
            raise ValueError(f"order names {missing}, which have no set; sets: {coords}")
        idx = [coords.index(w) for w in wanted]
        return [items[i] for i in idx], [coords[i] for i in idx], None
    depth = _depths(found, dims)

    def rank(d: str, v: Any) -> tuple[Any, ...]:
        return (0, depth[v], v) if d == "layer" and depth else _sort_key(v)

    idx = sorted(range(len(items)), key=lambda i: tuple(map(rank, dims, coords[i])))
    axes = {d: sorted({c[j] for c in coords}, key=lambda v, d=d: rank(d, v))
            for j, d in enumerate(dims)}
    return [items[i] for i in idx], [coords[i] for i in idx], axes


def _measure_sets(
    items: list[tuple[EmbeddingStore, SetKey]], coords: list[tuple[Any, ...]],
    dims: list[str], split: str, test: str | None, ood: str | None, use_classifier: bool,
    sk: dict[str, Any], measure_kwargs: dict[str, Any], fixed: dict[str, Any],
    axes: dict[str, list[Any]] | None, cache: bool, backend: str = "numpy",
) -> xr.Dataset:
    """The lazy sweep of the sets ``items`` at ``coords`` (see :func:`sweep`)."""
    train = measure_kwargs.get("by_frequency") is not None  # each bin's share of nc1_pinv
    sets = [_set_inputs(st, key.tags, split, test, ood, train, use_classifier, sk, cache,
                        backend) for st, key in items]
    inputs = {k: [one[k] for one in sets] for k in sets[0]}
    inputs = {k: (v if any(x is not None for x in v) else None) for k, v in inputs.items()}
    flat_dim = dims[0] if len(dims) == 1 else "set"
    labels = [c[0] for c in coords] if len(dims) == 1 else list(range(len(coords)))
    res = measure(inputs.pop("stats"), dim=flat_dim, labels=labels, **inputs, **measure_kwargs)
    attrs = dict(res.attrs)
    if len(dims) == 2:
        res = res.assign_coords(
            {dims[0]: ("set", [c[0] for c in coords]), dims[1]: ("set", [c[1] for c in coords])}
        )
        res = res.set_index(set=dims).unstack("set")
        res = res.transpose(*dims, ...)
        res = res.sel(axes) if axes else res
    attrs.update(split=split, sweep_over=dims[0] if len(dims) == 1 else list(dims), **fixed)
    urls = sorted({st.url for st, _ in items})
    attrs["store"] = urls[0] if len(urls) == 1 else urls
    res.attrs = attrs
    return res


def _set_inputs(st: Any, tags: dict[str, Any], split: str, test: str | None, ood: str | None,
                train: bool, use_classifier: bool, sk: dict[str, Any], cache: bool,
                backend: str) -> dict[str, Any]:
    """One set's inputs of :func:`ncdask.measure`: its statistics, classifier and splits; a
    StatsSink gives its streamed statistics and the test / OOD summaries it captured."""
    W = b = None
    if use_classifier:
        try:
            W, b = st.classifier(**tags, lazy=True)
        except KeyError:
            pass
    if not isinstance(st, EmbeddingStore):
        summ = st.summaries(**tags)
        return {"stats": st.stats(split, **tags), "weights": W, "bias": b, "train": None,
                "test": summ.get("test") if test else None,
                "ood": summ.get("ood") if ood else None}

    def read(name: str | None) -> xr.Dataset | None:
        return None if name is None else st.split(name, **tags, backend=backend)

    stats = (class_stats(st, split, cache=True, **tags, **sk) if cache
             else class_stats(read(split), **sk))
    return {"stats": stats, "weights": W, "bias": b, "test": read(test), "ood": read(ood),
            "train": read(split) if train else None}


#: Attribute of a sweep kept with ``out=``: per coordinate, what its results came from.
SWEEP_ATTR = "ncdask_sweep"


def _signature(st: EmbeddingStore, key: SetKey, splits: list[str], use_classifier: bool,
               options: dict[str, Any]) -> MemoKey:
    """What a set's results depend on: the options, its classifier and its splits' parts."""
    opts = {**options, "store": st.url}
    if use_classifier:
        opts["classifier"] = current_classifier(st.core, key)
    return MemoKey.of(opts, {n: committed_parts(st.core, n, key) for n in splits})


def _incremental(
    items: list[tuple[EmbeddingStore, SetKey]], coords: list[tuple[Any, ...]],
    dim: str, out: str, split: str, test: str | None, ood: str | None, use_classifier: bool,
    sk: dict[str, Any], measure_kwargs: dict[str, Any], fixed: dict[str, Any], cache: bool,
) -> xr.Dataset:
    """Measure the sets not yet in ``out`` (or changed), keep the rest, write the union."""
    from ncdask.results import open_results, save_results

    splits = [n for n in (split, test, ood) if n is not None]
    options = {"split": split, "test": test, "ood": ood, "fixed": fixed, "stats": sk,
               "measure": measure_kwargs, "classifier": use_classifier}
    sigs = {str(c[0]): _signature(st, key, splits, use_classifier, options)
            for (st, key), c in zip(items, coords, strict=True)}
    prev = None
    try:
        prev = open_results(out)
    except (FileNotFoundError, KeyError, ValueError):
        prev = None
    kept: list[Any] = []
    if prev is not None:
        have = (prev.attrs.get(SWEEP_ATTR) or {}).get("sets") or {}
        if prev.attrs.get("sweep_over") == dim:
            kept = [c[0] for c in coords if c[0] in prev[dim].values.tolist()
                    and MemoKey.from_attr(have.get(str(c[0]))) == sigs[str(c[0])]]
    todo = [(it, c) for it, c in zip(items, coords, strict=True) if c[0] not in kept]
    parts = []
    if kept:
        parts.append(prev.sel({dim: kept}).compute())
    if todo:
        new = _measure_sets([t[0] for t in todo], [t[1] for t in todo], [dim], split, test,
                            ood, use_classifier, sk, measure_kwargs, fixed, None, cache)
        parts.append(new.compute())
    res = parts[0] if len(parts) == 1 else xr.concat(parts, dim=dim, combine_attrs="override",
                                                     data_vars="all", join="outer")
    order = [c[0] for c in coords]
    res = res.sel({dim: order})
    attrs = dict(parts[-1].attrs)
    attrs[SWEEP_ATTR] = {"sets": {c: k.attr() for c, k in sigs.items()},
                         "measured": [str(t[1][0]) for t in todo]}
    res.attrs = attrs
    save_results(res, out, overwrite=prev is not None)
    back = open_results(out)
    return back
