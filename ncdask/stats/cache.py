"""Class statistics kept in the store, and brought up to date from the new rows only.

``class_stats(store, split, cache=True)`` writes its result beside the
split, in ``<split>/.ncdask-stats/k-<key>-<owner>`` (a statistics store like
:func:`ncdask.save_stats` writes), keyed by the options the values depend
on (``global_mean``, ``dtype``, ``ignore_index``, ``min_count``, K) and
recording the rows it covers. Entries are never replaced, only added (and
removed an hour after a newer one superseded them), because statistics are
read lazily and must not change under their reader. The rows: every committed part of
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

from ncdask.store.core import read_array
from ncdask.store.record import record, snapshot
from ncdask.store.setkey import SetKey
from ncdask.store.embedding import EmbeddingStore

#: Folder of a split's cached statistics.
CACHE_DIR = ".ncdask-stats"
#: Attribute of a cached statistics store: its key and the rows it covers.
CACHE_ATTR = "ncdask_cache"


def _parts(store: EmbeddingStore, g: Any) -> list[tuple[Any, int]]:
    return [(p, k) for p, k in snapshot(g)[0] if k > 0]


def _cover(parts: list[tuple[Any, int]]) -> list[list[Any]]:
    return [[p.path, int(k)] for p, k in parts]


def _folder(store: EmbeddingStore, g: Any) -> str:
    return "/".join([store.url.rstrip("/"), g.path, CACHE_DIR])


def _prefix(key: dict[str, Any]) -> str:
    return "k-" + hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16] + "-"


def _entries(store: EmbeddingStore, g: Any, key: dict[str, Any]) -> list[tuple[str, dict]]:
    """``[(url, cache attrs), ...]`` of the complete cache entries of split ``g`` for ``key``.

    Entries are immutable (each write makes a new one, ``k-<key hash>-<owner>``):
    a statistics store read lazily must never be replaced under its reader (a
    replace on a local disk has an instant with nothing at the path, and Zarr
    reads missing chunks as NaN: seen as a NaN Σ_W in one of two processes
    filling the cache at once).
    """
    import fsspec

    from ncdask.store.staging import is_staging
    from ncdask.store.zarrio import _complete

    folder = _folder(store, g)
    fs, path = fsspec.core.url_to_fs(folder, **(store.core.storage_options or {}))
    fs.invalidate_cache()
    try:
        names = [str(n).rstrip("/").rsplit("/", 1)[-1] for n in fs.ls(path, detail=False)]
    except (FileNotFoundError, NotADirectoryError):
        return []
    out = []
    for name in sorted(names):
        if not name.startswith(_prefix(key)) or is_staging(name):
            continue
        p = f"{path.rstrip('/')}/{name}"
        try:
            if not _complete(fs, p):
                continue
            meta = json.loads(fs.cat_file(f"{p}/zarr.json"))["attributes"].get(CACHE_ATTR)
        except (OSError, ValueError, KeyError):
            continue
        if isinstance(meta, dict) and meta.get("key") == key:
            out.append((f"{folder}/{name}", meta))
    return out


def _new_rows(parts: list[tuple[Any, int]], have: dict[str, int], url: str) -> xr.Dataset:
    """The rows of ``parts`` past the counts in ``have``, as one split Dataset."""
    Xs, ys = [], []
    for p, k in parts:
        k0 = have.get(p.path, 0)
        if k > k0:
            Xs.append(read_array(p["embeddings"], url)[k0:k])
            ys.append(read_array(p["labels"], url)[k0:k])
    X = Xs[0] if len(Xs) == 1 else da.concatenate(Xs)
    y = ys[0] if len(ys) == 1 else da.concatenate(ys)
    # the promise store.split gives a full pass: finite rows, so a lost chunk of the new
    # rows (read as NaN) raises instead of entering the cache as NaN statistics
    attrs = {"store": url, "split": parts[0][0].path}
    if all(record(p).get("finite") is True for p, _ in parts):
        attrs["finite"] = 1
    return xr.Dataset({"embeddings": (("sample", "feature"), X), "labels": (("sample",), y)},
                      attrs=attrs)


def cached_class_stats(
    store: EmbeddingStore, split: str, set_key: SetKey, options: dict[str, Any],
    compute: Any,
) -> xr.Dataset:
    """``class_stats`` of a store's split through its cache (see the module docstring).

    ``compute(data, **options)`` is :func:`ncdask.class_stats` without the cache;
    ``options`` its keyword arguments.
    """
    from ncdask.store.zarrio import IncompleteOutputError
    from ncdask.stats.core import EmptyClassWarning, load_stats, merge_stats, save_stats

    g = store.core.split_group(split, set_key)
    parts = _parts(store, g)
    K = store.n_classes
    ii = options.get("ignore_index")
    key = {"global_mean": options.get("global_mean", "unweighted"),
           "dtype": str(np.dtype(options.get("dtype", "float64"))),
           "ignore_index": store.ignore_index if ii is None else int(ii),
           "min_count": options.get("min_count"), "n_classes": K}
    so = store.core.storage_options
    cover = _cover(parts)
    now = {p.path: k for p, k in parts}
    entries = _entries(store, g, key)
    for url, meta in entries:
        if meta.get("rows") == cover:
            try:
                return _strip(load_stats(url, storage_options=so))  # a hit: nothing read
            except (OSError, KeyError, ValueError, IncompleteOutputError):
                continue
    base = None  # the entry covering the most rows, all of which are still committed
    for url, meta in entries:
        have = {str(p): int(k) for p, k in meta.get("rows") or []}
        if all(p in now and now[p] >= k for p, k in have.items()) and (
                base is None or sum(have.values()) > sum(base[1].values())):
            base = (url, have)
    if base is not None and key["min_count"] is None:
        try:
            cached = _strip(load_stats(base[0], storage_options=so))
        except (OSError, KeyError, ValueError, IncompleteOutputError):
            cached = None
        if cached is not None:
            with warnings.catch_warnings():  # the new rows alone often miss classes
                warnings.simplefilter("ignore", EmptyClassWarning)
                fresh = compute(_new_rows(parts, base[1], store.url), n_classes=K,
                                **{k: v for k, v in options.items() if k != "min_count"})
            out = merge_stats(cached, fresh)
            return _keep(out, store, g, key, cover, entries, save_stats, load_stats)
    out = compute(store.split(split, **set_key.tags), **options)
    return _keep(out, store, g, key, cover, entries, save_stats, load_stats)


def _strip(st: xr.Dataset) -> xr.Dataset:
    st = st.copy()
    st.attrs = {k: v for k, v in st.attrs.items() if k != CACHE_ATTR}
    return st


#: Superseded cache entries are deleted once older than this (a reader may still
#: hold one lazily; an entry is never replaced, only removed when long superseded).
PRUNE_AFTER_S = 3600.0


def _keep(out: xr.Dataset, store: EmbeddingStore, g: Any, key: dict, cover: list,
          entries: list[tuple[str, dict]], save_stats: Any, load_stats: Any) -> xr.Dataset:
    """Write ``out`` as a new cache entry and return it read back; computed only, if the
    store cannot be written. Older entries of the key, long superseded, are removed."""
    import time

    from ncdask.store.staging import owner_tag

    so = store.core.storage_options
    url = f"{_folder(store, g)}/{_prefix(key)}{owner_tag()}"
    marked = out.copy()
    marked.attrs = dict(out.attrs)
    marked.attrs[CACHE_ATTR] = {"key": key, "rows": cover, "written": time.time()}
    try:
        _require_folder(url, so)
        save_stats(marked, url, storage_options=so)
    except OSError:  # unwritable
        return out.compute()
    for old, meta in entries:
        if time.time() - float(meta.get("written") or 0) > PRUNE_AFTER_S:
            try:
                import fsspec

                fs, p = fsspec.core.url_to_fs(old, **(so or {}))
                fs.rm(p, recursive=True)
            except OSError:
                pass
    return _strip(load_stats(url, storage_options=so))


def _require_folder(url: str, so: dict | None) -> None:
    """Make the cache's parent a Zarr group (Zarr warns about unknown folders in a group)."""
    import zarr

    parent = url.rsplit("/", 1)[0]
    try:
        zarr.open_group(parent, mode="r", storage_options=so)
    except (FileNotFoundError, zarr.errors.GroupNotFoundError):
        zarr.open_group(parent, mode="a", storage_options=so)
