"""Measure every embedding set of a store: sweeps over epochs or layers.

A store holds several embedding *sets* tagged ``layer=`` and ``epoch=``
(see :meth:`ncdask.EmbeddingStore.sets`), written by
:func:`ncdask.hooks` or by ``append(..., layer=, epoch=)``. :func:`sweep`
computes the class statistics and the metrics of each set, with that set's
own classifier and its own width (layers of a network differ in width; the
metrics are scalars or per class, so they stack along an ``epoch`` or
``layer`` dim whatever the widths).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import xarray as xr

from ncdask.store.setkey import SET_TAGS, SetKey
from ncdask.metrics.api import measure
from ncdask.stats.core import class_stats
from ncdask.store.core import committed_parts, current_classifier, set_keys
from ncdask.store.embedding import EmbeddingStore

_RESERVED = ("weights", "bias", "dim", "labels")


def _stores(store: Any) -> list[EmbeddingStore]:
    if isinstance(store, str):
        return [EmbeddingStore.open(store)]
    if isinstance(store, EmbeddingStore):
        return [store]
    if isinstance(store, Mapping):
        store = list(store.values())
    if isinstance(store, (list, tuple)) and store:
        return [s if isinstance(s, EmbeddingStore) else EmbeddingStore.open(s) for s in store]
    raise TypeError(
        "store must be an EmbeddingStore, a URL, or a non-empty list or dict of them, "
        f"got {type(store).__name__}"
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
    **measure_kwargs: Any,
) -> xr.Dataset:
    """Class statistics and NC metrics of every embedding set, along one dim.

    Parameters
    ----------
    store : EmbeddingStore, URL, or list / dict of them
        The store(s) to read. One store holds sets of any widths (see
        :meth:`ncdask.EmbeddingStore.dim_of`); several stores are read as
        one, and two sets with the same tags are an error.
    over : {"epoch", "layer"} or ("layer", "epoch")
        The set tag to sweep: the result gets a dim of that name. A pair
        gives a 2-D sweep (missing combinations are NaN).
    split : str, default "train"
        The split whose class statistics are measured in each set.
    test : str, optional
        Split name, read from the same set, for NC4 (needs a classifier).
    ood : str, optional
        Split name, read from the same set, for NC5.
    layer, epoch : optional
        Keep only the sets with this tag (the one not swept), e.g.
        ``sweep(s, over="epoch", layer="fc_in")``. When the sets differ in
        a tag that is neither swept nor fixed, a ValueError names the values.
    order : sequence, optional
        The coordinates to keep, in this order (for instance layers in
        network order); default: every set, sorted by coordinate.
    use_classifier : bool, default True
        Measure each set with the classifier stored for that set
        (:meth:`ncdask.EmbeddingStore.set_classifier` with the same tags);
        sets without one get NaN for the metrics that need it.
    stats_kwargs : mapping, optional
        Passed to :func:`ncdask.class_stats` (``global_mean=``, ``dtype=``).
    compute : bool, default False
        Compute the result before returning it; by default it is lazy, like
        :func:`ncdask.measure`, and one ``.compute()`` runs every set's pass
        over its embeddings in one graph.
    out : str, optional
        Keep the results in this Zarr store (:func:`ncdask.save_results`)
        and, when run again, measure only the sets that are not in it yet or
        whose data changed (more rows in a split, another classifier, other
        options); the rest are read back. A sweep re-run after each epoch of
        a training run then costs one epoch. The store is replaced
        atomically with the union, and returned. One swept tag only.
    cache : bool, default False
        Keep each set's class statistics in the store
        (``class_stats(..., cache=True)``): a changed set reads only its new
        rows.
    **measure_kwargs
        Passed to :func:`ncdask.measure` (``metrics=``, ``tile_size=``, ...).

    Returns
    -------
    xarray.Dataset
        The variables of :func:`ncdask.measure` with the sweep dim first,
        sorted by coordinate (or in ``order``); attrs as measure's, plus
        ``split``, ``sweep_over`` and the fixed tags.

    Raises
    ------
    ValueError
        No set matches, or the matching sets differ in a tag not swept.

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
            f"sweep takes no {bad}: each set is measured with its own stored classifier"
        )
    items, coords = _ordered(_matching_sets(store, dims, fixed, split), dims, order)
    sk = dict(stats_kwargs or {})
    if out is not None:
        if len(dims) != 1:
            raise ValueError("out= keeps sweeps over one tag; sweep each layer on its own")
        return _incremental(items, coords, dims[0], out, split, test, ood, use_classifier,
                            sk, measure_kwargs, fixed, cache)
    res = _measure_sets(items, coords, dims, split, test, ood, use_classifier, sk,
                        measure_kwargs, fixed, order, cache)
    return res.compute() if compute else res


#: The sets found: set key -> the store holding it.
Found = dict[SetKey, EmbeddingStore]


def _swept_dims(over: str | Sequence[str]) -> list[str]:
    """The swept tag(s), checked: "epoch", "layer" or a pair of them."""
    dims = [over] if isinstance(over, str) else list(over)
    if not dims or len(dims) > 2 or len(set(dims)) != len(dims):
        raise ValueError(f"over must be 'epoch', 'layer' or a pair of them, got {over!r}")
    for d in dims:
        if d not in SET_TAGS:
            raise ValueError(f"over must name set tags {SET_TAGS}, got {d!r}")
    return dims


def _matching_sets(store: Any, dims: list[str], fixed: dict[str, Any],
                   split: str) -> Found:
    """Every set of the store(s) tagged with the swept dims and the fixed tags, holding
    ``split``; an error when none matches, a set is in two stores, or the sets differ in a
    tag that is neither swept nor fixed."""
    found: Found = {}
    for st in _stores(store):
        for key in set_keys(st.core):
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


def _ordered(found: Found, dims: list[str], order: Sequence[Any] | None
             ) -> tuple[list[tuple[EmbeddingStore, SetKey]], list[tuple[Any, ...]]]:
    """The sets and their coordinates, in ``order`` or sorted by coordinate."""
    items = [(st, key) for key, st in found.items()]
    coords = [tuple(getattr(key, d) for d in dims) for _, key in items]
    if order is not None:
        wanted = [tuple(o) if len(dims) > 1 else (o,) for o in order]
        missing = [w for w in wanted if w not in coords]
        if missing:
            raise ValueError(f"order names {missing}, which have no set; sets: {coords}")
        idx = [coords.index(w) for w in wanted]
    else:
        idx = sorted(range(len(items)), key=lambda i: tuple(_sort_key(v) for v in coords[i]))
    return [items[i] for i in idx], [coords[i] for i in idx]


def _measure_sets(
    items: list[tuple[EmbeddingStore, SetKey]], coords: list[tuple[Any, ...]],
    dims: list[str], split: str, test: str | None, ood: str | None, use_classifier: bool,
    sk: dict[str, Any], measure_kwargs: dict[str, Any], fixed: dict[str, Any],
    order: Sequence[Any] | None, cache: bool,
) -> xr.Dataset:
    """The lazy sweep of the sets ``items`` at ``coords`` (see :func:`sweep`)."""
    stats, weights, bias, tests, oods = [], [], [], [], []
    for st, key in items:
        tags = key.tags
        if cache:
            stats.append(class_stats(st, split, cache=True, **tags, **sk))
        else:
            stats.append(class_stats(st.split(split, **tags), **sk))
        W = b = None
        if use_classifier:
            try:
                W, b = st.classifier(**tags, lazy=True)
            except KeyError:
                pass
        weights.append(W)
        bias.append(b)
        tests.append(st.split(test, **tags) if test is not None else None)
        oods.append(st.split(ood, **tags) if ood is not None else None)

    flat_dim = dims[0] if len(dims) == 1 else "set"
    labels = [c[0] for c in coords] if len(dims) == 1 else list(range(len(coords)))
    res = measure(
        stats,
        weights=weights,
        bias=bias,
        test=tests if test is not None else None,
        ood=oods if ood is not None else None,
        dim=flat_dim,
        labels=labels,
        **measure_kwargs,
    )
    attrs = dict(res.attrs)
    if len(dims) == 2:
        res = res.assign_coords(
            {dims[0]: ("set", [c[0] for c in coords]), dims[1]: ("set", [c[1] for c in coords])}
        )
        res = res.set_index(set=dims).unstack("set")
        res = res.transpose(*dims, ...)
        res = res.sortby(dims) if order is None else res
    attrs.update(split=split, sweep_over=dims[0] if len(dims) == 1 else list(dims), **fixed)
    urls = sorted({st.url for st, _ in items})
    attrs["store"] = urls[0] if len(urls) == 1 else urls
    res.attrs = attrs
    return res


#: Attribute of a sweep kept with ``out=``: per coordinate, what its results came from.
SWEEP_ATTR = "ncdask_sweep"


def _signature(st: EmbeddingStore, key: SetKey, splits: list[str],
               use_classifier: bool) -> dict[str, Any]:
    """What a set's results depend on: its splits' committed parts and its classifier."""
    sig: dict[str, Any] = {"store": st.url}
    for name in splits:
        sig[name] = [[p.path, int(k)] for p, k in committed_parts(st.core, name, key)]
    if use_classifier:
        sig["classifier"] = current_classifier(st.core, key)
    return sig


def _incremental(
    items: list[tuple[EmbeddingStore, SetKey]], coords: list[tuple[Any, ...]],
    dim: str, out: str, split: str, test: str | None, ood: str | None, use_classifier: bool,
    sk: dict[str, Any], measure_kwargs: dict[str, Any], fixed: dict[str, Any], cache: bool,
) -> xr.Dataset:
    """Measure the sets not yet in ``out`` (or changed), keep the rest, write the union."""
    import json

    from ncdask.results import open_results, save_results

    splits = [n for n in (split, test, ood) if n is not None]
    options = json.dumps({"split": split, "test": test, "ood": ood, "fixed": fixed,
                          "stats": sk, "measure": measure_kwargs,
                          "classifier": use_classifier}, sort_keys=True, default=repr)
    sigs = {str(c[0]): _signature(st, key, splits, use_classifier)
            for (st, key), c in zip(items, coords, strict=True)}
    prev = None
    try:
        prev = open_results(out)
    except (FileNotFoundError, KeyError, ValueError):
        prev = None
    kept: list[Any] = []
    if prev is not None:
        meta = prev.attrs.get(SWEEP_ATTR) or {}
        if meta.get("options") == options and prev.attrs.get("sweep_over") == dim:
            have = meta.get("sets") or {}
            kept = [c[0] for c in coords if c[0] in prev[dim].values.tolist()
                    and have.get(str(c[0])) == sigs[str(c[0])]]
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
    attrs[SWEEP_ATTR] = {"options": options, "sets": sigs, "measured": [str(t[1][0])
                                                                         for t in todo]}
    res.attrs = attrs
    save_results(res, out, overwrite=prev is not None)
    back = open_results(out)
    return back
