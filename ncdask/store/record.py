"""Commit records (``ncdask_split``, ``ncdask_shard`` attributes): committed rows, class
counts, batches, sources, finiteness, chunk digests, replaced in one metadata write. Shards
carry their split's ``generation``, so a dead split's shard is never read into its successor."""

from __future__ import annotations

import uuid
import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import zarr

from ncdask._validate import NcdaskStoreError
from ncdask.store.digest import extend, seed

if TYPE_CHECKING:  # pragma: no cover
    from ncdask.store.setkey import SetKey


class DamagedStoreError(NcdaskStoreError):
    """A store whose records disagree with its arrays (edited, or damaged)."""


class SplitChangedError(NcdaskStoreError):
    """A split was deleted or replaced while a writer was writing to it: the writer's rows
    were not committed into the split that took its place."""


def empty_record(split: str, key: SetKey, n_classes: int, labelled: bool) -> dict[str, Any]:
    return {
        "split": split, "layer": key.layer, "epoch": key.epoch,
        "n_committed": 0, "n_batches": 0,
        "class_counts": [0] * n_classes if labelled else None,
        "labelled": bool(labelled), "finite": True, "generation": uuid.uuid4().hex,
    }


def generation(rec: Mapping[str, Any] | None) -> str | None:
    """The generation of a split or shard record (None: written before generations)."""
    return None if rec is None else rec.get("generation")


def subgroups(g: zarr.Group) -> list[tuple[str, zarr.Group]]:
    """The child groups of ``g``, by name; folders without ``zarr.json`` (a split being
    created, what a killed creator left) are skipped without Zarr's warning."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Object at .* is not recognized")
        return sorted(g.groups())


def record(p: zarr.Group) -> Mapping[str, Any]:
    """The commit record of a split group or of one of its shards."""
    return p.attrs.get("ncdask_shard") or p.attrs["ncdask_split"]


def forget_listings(g: zarr.Group, below: str | None = None) -> None:
    """Drop fsspec's cached listings of ``g``'s store (all, or of ``g/below`` and parents):
    s3fs keeps deleted nodes and hides other processes' new ones."""
    fs = getattr(g.store, "fs", None)  # a local disk's store has none
    if fs is None or not hasattr(fs, "invalidate_cache"):
        return
    if below is None:
        fs.invalidate_cache()
    else:
        fs.invalidate_cache("/".join(p for p in (g.store.path, g.path, below) if p))


def shards(g: zarr.Group) -> list[tuple[zarr.Group, dict[str, Any]]]:
    """The committed shards of split ``g``'s generation, by writer start, listed afresh."""
    forget_listings(g, "shards")
    try:
        parent = g["shards"]
    except KeyError:  # none, or the split was deleted meanwhile
        return []
    out, gen = [], generation(g.attrs["ncdask_split"])
    for _, sub in subgroups(parent):
        rec = sub.attrs.get("ncdask_shard")
        if (isinstance(rec, Mapping) and int(rec.get("n_committed", 0)) > 0
                and generation(rec) == gen):
            out.append((sub, dict(rec)))
    out.sort(key=lambda t: (float(t[1]["created"]), str(t[1]["writer"])))
    return out


def snapshot(g: zarr.Group) -> tuple[list[tuple[zarr.Group, int]], dict[str, Any]]:
    """A split's committed parts ``[(group, rows), ...]`` (main arrays, then shards, from
    one listing) and its record summed over them."""
    rec = dict(g.attrs["ncdask_split"])
    parts = [(g, int(rec["n_committed"]))]
    counts = rec.get("class_counts")
    counts = None if counts is None else np.asarray(counts, dtype=np.int64)
    for sub, srec in shards(g):
        parts.append((sub, int(srec["n_committed"])))
        if counts is not None and srec.get("class_counts") is not None:
            counts = counts + np.asarray(srec["class_counts"], dtype=np.int64)
        for k in ("n_ignored", "n_batches"):
            if srec.get(k):
                rec[k] = int(rec.get(k, 0)) + int(srec[k])
        if srec.get("sources"):
            rec["sources"] = list(rec.get("sources") or []) + list(srec["sources"])
    rec["n_committed"] = sum(n for _, n in parts)
    rec.pop("digests", None)  # per part, not summed
    if counts is not None:
        rec["class_counts"] = counts.tolist()
    return parts, rec


def advanced(rec: Mapping[str, Any], n1: int, counts: np.ndarray | None, n_ignored: int,
             n_batches: int, finite: bool = True) -> dict[str, Any]:
    """A commit record moved on to ``n1`` rows; ``finite=False`` withdraws its promise of
    finite rows (by which statistics tell a lost chunk's NaN fill from data)."""
    rec = dict(rec)
    if not finite:
        rec["finite"] = False
    if counts is not None:
        rec["class_counts"] = (np.asarray(rec["class_counts"], dtype=np.int64)
                               + counts).tolist()
    if n_ignored:
        rec["n_ignored"] = int(rec.get("n_ignored", 0)) + n_ignored
    rec.update(n_committed=int(n1), n_batches=int(rec["n_batches"]) + n_batches)
    return rec


def digested(rec: Mapping[str, Any], start: int, chunk: int,
             batch: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """``rec`` with its chunk digests (``["digests"][name][i]``, rows below ``["rows"]``)
    extended over ``batch`` written at ``start``; digests that stop short are kept as is."""
    rec = dict(rec)
    old = rec.get("digests") or ({"rows": 0} if start == 0 else None)
    if old is None or int(old["rows"]) != start:
        return rec
    stop = start + len(next(iter(batch.values())))
    rec["digests"] = new = {"rows": stop}
    for name, v in batch.items():
        new[name] = crcs = list(old.get(name, []))
        for i in range(start // chunk, -(-stop // chunk)):
            lo, hi = max(start, i * chunk), min(stop, (i + 1) * chunk)
            crcs[i:i + 1] = [extend(crcs[i] if i < len(crcs) else seed(name, i),
                                    v[lo - start: hi - start])]
    return rec


def chunk_digest(rec: Mapping[str, Any], name: str, i: int,
                 chunk: int) -> tuple[int, int] | None:
    """``(digest, rows)`` that record ``rec`` holds for chunk ``i`` of array ``name`` (its
    first ``rows`` rows); None where it holds none."""
    d = rec.get("digests") or {}
    crcs, n = d.get(name) or [], min(int(d.get("rows", 0)), (i + 1) * chunk) - i * chunk
    return (int(crcs[i]), n) if i < len(crcs) and n > 0 else None


def check_record(p: zarr.Group, n_classes: int, url: str) -> None:
    """Raise :class:`DamagedStoreError` unless ``p``'s record describes its arrays (rows
    held, counts non-negative and adding up)."""
    rec = record(p)
    where = f"{url!r}: the commit record of {p.path!r}"
    n = rec.get("n_committed")
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise DamagedStoreError(f"{where} has n_committed={n!r}: not a row count")
    labelled = rec.get("labelled", rec.get("class_counts") is not None)
    for name in ("embeddings", "labels") if labelled else ("embeddings",):
        if n > 0 and name not in p:
            raise DamagedStoreError(
                f"{url!r}: {p.path!r} holds {n} committed rows but no {name} array (its "
                f"{p.path}/{name}/zarr.json is missing): the store is damaged")
    for name in ("embeddings", "labels"):
        if name in p and p[name].shape[0] < n:
            raise DamagedStoreError(
                f"{where} says {n} rows are committed but {name} holds "
                f"{p[name].shape[0]}: the store is damaged")
    counts = rec.get("class_counts")
    if counts is None:
        return
    c = np.asarray(counts)
    n_ign = rec.get("n_ignored", 0)
    if (c.shape != (n_classes,) or not np.issubdtype(c.dtype, np.integer) or (c < 0).any()
            or int(c.sum()) + int(n_ign) != n):
        raise DamagedStoreError(
            f"{where} has class counts that do not describe its {n} rows (they sum to "
            f"{c.sum() if c.dtype != object else '?'}, with {n_ign} ignored, over "
            f"{c.shape} classes, for K={n_classes}): the store is damaged")


def all_finite(X: np.ndarray, allowed: bool) -> bool:
    """Whether a batch is all finite (checked only where non-finite values were allowed)."""
    return not allowed or bool(np.isfinite(X).all())
