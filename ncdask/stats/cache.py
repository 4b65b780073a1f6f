"""Class statistics kept beside a split (``class_stats(..., cache=True)``), updated from new rows.

An entry is keyed by its :class:`MemoKey`: the same key reads no embedding chunk, appended
rows are read alone and merged, anything else is a full pass. Entries are only added and are
pruned an hour after being superseded; one whose chunks do not match their digests is
recomputed with a :class:`DamagedCacheWarning`. Read-only stores get no cache."""

from __future__ import annotations

import hashlib
import json
import time
import warnings
from dataclasses import dataclass
from typing import Any

import dask.array as da
import fsspec
import numpy as np
import xarray as xr
import zarr

from ncdask.errors import warn
from ncdask.stats import core
from ncdask.store.core import committed_parts, read_array
from ncdask.store.embedding import EmbeddingStore
from ncdask.store.reads import told_if_changed
from ncdask.store.record import record
from ncdask.store.setkey import SetKey
from ncdask.store.staging import is_staging, owner_tag
from ncdask.store.zarrio import (
    CACHE_DIR,
    IncompleteOutputError,
    damaged_chunks,
    is_complete,
    recorded_digests,
)

#: Attribute of a cached statistics store: its :class:`MemoKey`, when it was written and the
#: embedding rows its pass read (``rows_read``: the appended rows alone on an update).
CACHE_ATTR = "ncdask_cache"
#: Superseded cache entries are deleted once older than this (a reader may hold one lazily).
PRUNE_AFTER_S = 3600.0


class DamagedCacheWarning(UserWarning):
    """A statistics-cache entry had a missing or changed chunk; it was recomputed."""


def _canonical(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples become lists, others their repr)."""
    return json.loads(json.dumps(value, sort_keys=True, default=repr))



@dataclass(frozen=True)
class MemoKey:
    """What a memoised result depends on: options and committed parts read (``parts``: split
    -> ``[[part path, rows], ...]``); keys the cache and :func:`ncdask.sweep`'s ``out=``."""

    options: Any
    parts: Any

    @classmethod
    def of(cls, options: dict[str, Any], parts: dict[str, list[tuple[Any, int]]]) -> MemoKey:
        return cls(_canonical(options),
                   {n: [[p.path, int(k)] for p, k in ps] for n, ps in parts.items()})

    @classmethod
    def from_attr(cls, attr: Any) -> MemoKey | None:
        if not isinstance(attr, dict) or "options" not in attr:
            return None
        return cls(attr["options"], attr.get("parts") or {})

    def attr(self) -> dict[str, Any]:
        return {"options": self.options, "parts": self.parts}

    def rows(self) -> dict[str, int]:
        """Rows per part path, over every split."""
        return {str(p): int(k) for ps in self.parts.values() for p, k in ps}

    def grows(self, older: MemoKey) -> bool:
        """Same options, and every part of ``older`` still here with at least its rows."""
        now = self.rows()
        return older.options == self.options and all(
            p in now and now[p] >= k for p, k in older.rows().items())

    @property
    def prefix(self) -> str:
        digest = hashlib.sha1(json.dumps(self.options, sort_keys=True).encode()).hexdigest()
        return f"k-{digest[:16]}-"


def _folder(store: EmbeddingStore, g: Any) -> str:
    return "/".join([store.url.rstrip("/"), g.path, CACHE_DIR])


def _entries(store: EmbeddingStore, g: Any, key: MemoKey) -> list[tuple[str, MemoKey, dict]]:
    """``[(url, memo key, cache attrs), ...]`` of the complete entries of split ``g`` with
    ``key``'s options, newest first."""
    folder = _folder(store, g)
    fs, path = fsspec.core.url_to_fs(folder, **(store.core.storage_options or {}))
    fs.invalidate_cache()
    try:
        names = [str(n).rstrip("/").rsplit("/", 1)[-1] for n in fs.ls(path, detail=False)]
    except (FileNotFoundError, NotADirectoryError):
        return []
    out = []
    for name in sorted(names):
        if not name.startswith(key.prefix) or is_staging(name):
            continue
        p = f"{path.rstrip('/')}/{name}"
        try:
            if not is_complete(fs, p):
                continue
            meta = json.loads(fs.cat_file(f"{p}/zarr.json"))["attributes"].get(CACHE_ATTR)
        except (OSError, ValueError, KeyError):
            continue
        old = MemoKey.from_attr(meta.get("key") if isinstance(meta, dict) else None)
        if old is not None and old.options == key.options:
            out.append((f"{folder}/{name}", old, meta))
    return sorted(out, key=lambda e: -float(e[2].get("written") or 0))  # newest first


def _new_rows(parts: list[tuple[Any, int]], have: dict[str, int], url: str) -> xr.Dataset:
    """The rows of ``parts`` past the counts in ``have``, as one split Dataset."""
    Xs, ys = [], []
    for p, k in parts:
        k0 = have.get(p.path, 0)
        if k > k0:
            Xs.append(read_array(p["embeddings"], url, rec=record(p))[k0:k])
            ys.append(read_array(p["labels"], url, rec=record(p))[k0:k])
    X = Xs[0] if len(Xs) == 1 else da.concatenate(Xs)
    y = ys[0] if len(ys) == 1 else da.concatenate(ys)
    # finite rows promised, as store.split gives: a lost chunk of the new rows raises
    attrs = {"store": url, "split": parts[0][0].path}
    if all(record(p).get("finite") is True for p, _ in parts):
        attrs["finite"] = 1
    return xr.Dataset({"embeddings": (("sample", "feature"), X), "labels": (("sample",), y)},
                      attrs=attrs)


def _load(url: str, so: dict | None, damaged: list[str] | None = None) -> xr.Dataset | None:
    """A cache entry, lazily, chunks checked as read (None: unreadable). Given ``damaged``,
    every chunk is checked first; a damaged entry warns and joins ``damaged``, one without
    digests is not used."""
    try:
        if damaged is not None:
            recorded = recorded_digests(url, so)
            bad = [] if recorded is None else damaged_chunks(url, *recorded)
            if bad:
                more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
                warn(f"statistics cache entry {bad[0]}{more}; recomputing it",
                     DamagedCacheWarning)
                damaged.append(url)
            if recorded is None or bad:
                return None
        st = core.load_stats(url, storage_options=so)
    except (OSError, KeyError, ValueError, IncompleteOutputError):
        return None
    st.attrs = {k: v for k, v in st.attrs.items() if k != CACHE_ATTR}
    return st


def cached_stats(
    store: EmbeddingStore, split: str, set_key: SetKey, options: dict[str, Any]
) -> xr.Dataset:
    """:func:`ncdask.stats.core.compute_stats` (keywords ``options``) through the cache."""
    g = store.core.split_group(split, set_key, create=False)
    with told_if_changed(store.core, split, set_key, g):
        return _cached_stats(store, g, split, set_key, options)


def _cached_stats(store: EmbeddingStore, g: Any, split: str, set_key: SetKey,
                  options: dict[str, Any]) -> xr.Dataset:
    parts = committed_parts(store.core, split, set_key)
    K = store.n_classes
    ii = options.get("ignore_index")
    key = MemoKey.of({"global_mean": options.get("global_mean", "unweighted"),
                      "dtype": str(np.dtype(options.get("dtype", "float64"))),
                      "ignore_index": store.ignore_index if ii is None else int(ii),
                      "min_count": options.get("min_count"), "n_classes": K}, {split: parts})
    so = store.core.storage_options
    entries = _entries(store, g, key)
    damaged: list[str] = []
    for url, old, _ in entries:
        hit = _load(url, so, damaged) if old == key else None
        if hit is not None:
            _remove(damaged, so)
            return hit  # no embedding read
    grown = [(sum(old.rows().values()), url, old) for url, old, _ in entries
             if key.grows(old) and url not in damaged]
    cached = None
    if grown and options.get("min_count") is None:
        _, url, old = max(grown, key=lambda t: t[0])  # the entry covering the most rows
        cached = _load(url, so, damaged)
    if cached is not None:
        with warnings.catch_warnings():  # the new rows alone often miss classes
            warnings.simplefilter("ignore", core.EmptyClassWarning)
            fresh = core.compute_stats(_new_rows(parts, old.rows(), store.url), n_classes=K,
                                       **{k: v for k, v in options.items() if k != "min_count"})
        out = core.merge_stats(cached, fresh)
        read = sum(key.rows().values()) - sum(old.rows().values())
    else:
        ds = store.split(split, **set_key.tags)
        if int(ds.attrs["n_committed"]) != sum(k for _, k in parts):  # parts only grow
            return cached_stats(store, split, set_key, options)  # rows came since: new key
        out = core.compute_stats(ds, **options)
        read = sum(key.rows().values())
    return _keep(out, store, g, key, entries, damaged, read)


def _keep(out: xr.Dataset, store: EmbeddingStore, g: Any, key: MemoKey,
          entries: list[tuple[str, MemoKey, dict]], damaged: list[str],
          read: int) -> xr.Dataset:
    """Write ``out`` as a new cache entry (recording the ``read`` rows its pass read) and
    return it read back (``out`` itself when the store cannot be written); remove the key's
    long superseded and its damaged entries."""
    so = store.core.storage_options
    url = f"{_folder(store, g)}/{key.prefix}{owner_tag()}"
    marked = out.copy()
    marked.attrs = {**out.attrs, CACHE_ATTR: {"key": key.attr(), "written": time.time(),
                                              "rows_read": int(read)}}
    try:
        _require_folder(url, so)
        core.save_stats(marked, url, storage_options=so)
    except OSError:  # unwritable
        return out.compute()
    _remove(damaged + [old for old, _, meta in entries
                       if time.time() - float(meta.get("written") or 0) > PRUNE_AFTER_S], so)
    back = _load(url, so)  # just written and digested: checked as it is read
    return out if back is None else back


def _remove(urls: list[str], so: dict | None) -> None:
    for url in dict.fromkeys(urls):
        try:
            fs, p = fsspec.core.url_to_fs(url, **(so or {}))
            fs.rm(p, recursive=True)
        except OSError:
            pass  # unwritable, or removed by another process


def _require_folder(url: str, so: dict | None) -> None:
    """Make the cache's parent a Zarr group (Zarr warns about unknown folders in a group)."""
    parent = url.rsplit("/", 1)[0]
    try:
        zarr.open_group(parent, mode="r", storage_options=so)
    except (FileNotFoundError, zarr.errors.GroupNotFoundError):
        try:
            zarr.open_group(parent, mode="a", storage_options=so)
        except zarr.errors.ContainsGroupError:
            pass  # another process filling the cache made it meanwhile
