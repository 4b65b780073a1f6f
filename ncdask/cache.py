"""Class statistics kept in the store, and brought up to date from the new rows only.

``class_stats(store, split, cache=True)`` writes its result beside the
split, in ``<split>/.ncdask-stats/<key>`` (a statistics store like
:func:`ncdask.save_stats` writes, replaced atomically), keyed by the
options the values depend on (``global_mean``, ``dtype``, ``ignore_index``,
``min_count``, K) and recording the rows it covers: every committed part of
the split (its main arrays and each writer's shard) with its committed row
count. Parts only ever grow (commits append), so on the next call:

* the same parts and rows: the cached statistics are returned and no
  embedding chunk is read;
* more rows: only the new rows (each part past its cached count, and new
  shards) are read, and their statistics merged into the cached ones with
  :func:`ncdask.merge_stats` (exact: Chan's pairwise update);
* anything else (a part gone or shorter: the split was replaced or
  deleted and written again) or ``min_count`` (whose filter depends on all
  counts): a full pass, and the cache replaced.

Where it goes, and why there: the cache holds no embeddings, so a store
opened read-only (the default) still writes it, through a handle of its
own; where the store cannot be written (permissions, a read-only bucket)
the statistics are computed and returned without a cache. It is deleted
with its split.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr

from .store import EmbeddingStore, _read, _snapshot

#: Folder of a split's cached statistics.
CACHE_DIR = ".ncdask-stats"
#: Attribute of a cached statistics store: its key and the rows it covers.
CACHE_ATTR = "ncdask_cache"


def _parts(store: EmbeddingStore, g: Any) -> list[tuple[Any, int]]:
    return [(p, k) for p, k in _snapshot(g)[0] if k > 0]


def _cover(parts: list[tuple[Any, int]]) -> list[list[Any]]:
    return [[p.path, int(k)] for p, k in parts]


def cache_url(store: EmbeddingStore, g: Any, key: dict[str, Any]) -> str:
    """Where the statistics of split group ``g`` with options ``key`` are cached."""
    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return "/".join([store.url.rstrip("/"), g.path, CACHE_DIR, f"k-{digest}"])


def _new_rows(parts: list[tuple[Any, int]], have: dict[str, int], url: str) -> xr.Dataset:
    """The rows of ``parts`` past the counts in ``have``, as one split Dataset."""
    Xs, ys = [], []
    for p, k in parts:
        k0 = have.get(p.path, 0)
        if k > k0:
            Xs.append(_read(p["embeddings"], url)[k0:k])
            ys.append(_read(p["labels"], url)[k0:k])
    X = Xs[0] if len(Xs) == 1 else da.concatenate(Xs)
    y = ys[0] if len(ys) == 1 else da.concatenate(ys)
    return xr.Dataset({"embeddings": (("sample", "feature"), X), "labels": (("sample",), y)})


def cached_class_stats(
    store: EmbeddingStore, split: str, layer: str | None, epoch: int | None,
    options: dict[str, Any], compute: Any,
) -> xr.Dataset:
    """``class_stats`` of a store's split through its cache (see the module docstring).

    ``compute(data, **options)`` is :func:`ncdask.class_stats` without the cache;
    ``options`` its keyword arguments.
    """
    from ._zarrio import IncompleteOutputError
    from .stats import EmptyClassWarning, load_stats, merge_stats, save_stats

    g = store._split_group(split, layer, epoch, create=False)
    parts = _parts(store, g)
    K = store.n_classes
    ii = options.get("ignore_index")
    key = {"global_mean": options.get("global_mean", "unweighted"),
           "dtype": str(np.dtype(options.get("dtype", "float64"))),
           "ignore_index": store.ignore_index if ii is None else int(ii),
           "min_count": options.get("min_count"), "n_classes": K}
    url = cache_url(store, g, key)
    so = store._storage_options
    cover = _cover(parts)
    cached = None
    try:
        cached = load_stats(url, storage_options=so)
    except (FileNotFoundError, KeyError, ValueError, IncompleteOutputError, OSError):
        cached = None
    if cached is not None:
        meta = cached.attrs.get(CACHE_ATTR) or {}
        if meta.get("key") == key and meta.get("rows") == cover:
            return _strip(cached)  # a hit: no embedding chunk is read
        have = {str(p): int(k) for p, k in meta.get("rows") or []}
        now = {p.path: k for p, k in parts}
        grown = meta.get("key") == key and all(p in now and now[p] >= k for p, k in
                                               have.items())
        if grown and key["min_count"] is None:
            with warnings.catch_warnings():  # the new rows alone often miss classes
                warnings.simplefilter("ignore", EmptyClassWarning)
                fresh = compute(_new_rows(parts, have, store.url), n_classes=K,
                                **{k: v for k, v in options.items() if k != "min_count"})
            out = merge_stats(_strip(cached), fresh)
            return _keep(out, url, so, key, cover, save_stats, load_stats)
    out = compute(store.split(split, layer=layer, epoch=epoch), **options)
    return _keep(out, url, so, key, cover, save_stats, load_stats)


def _strip(st: xr.Dataset) -> xr.Dataset:
    st = st.copy()
    st.attrs = {k: v for k, v in st.attrs.items() if k != CACHE_ATTR}
    return st


def _keep(out: xr.Dataset, url: str, so: dict | None, key: dict, cover: list,
          save_stats: Any, load_stats: Any) -> xr.Dataset:
    """Write ``out`` to the cache and return it read back; computed only, if unwritable."""
    marked = out.copy()
    marked.attrs = dict(out.attrs)
    marked.attrs[CACHE_ATTR] = {"key": key, "rows": cover}
    try:
        _require_folder(url, so)
        save_stats(marked, url, overwrite=True, storage_options=so)
    except OSError:  # unwritable, or another process wrote the same entry first
        try:
            theirs = load_stats(url, storage_options=so)
            if (theirs.attrs.get(CACHE_ATTR) or {}) == {"key": key, "rows": cover}:
                return _strip(theirs)  # the same rows: the same statistics
        except (OSError, KeyError, ValueError):
            pass
        return out.compute()
    return _strip(load_stats(url, storage_options=so))


def _require_folder(url: str, so: dict | None) -> None:
    """Make the cache's parent a Zarr group (Zarr warns about unknown folders in a group)."""
    import zarr

    parent = url.rsplit("/", 1)[0]
    try:
        zarr.open_group(parent, mode="r", storage_options=so)
    except (FileNotFoundError, zarr.errors.GroupNotFoundError):
        zarr.open_group(parent, mode="a", storage_options=so)
