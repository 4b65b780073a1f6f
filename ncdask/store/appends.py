"""Appends to a store's split: rows written past the committed end, then the commit record
moved (one metadata write), under the split's lock (:mod:`ncdask.store.locks`) or into the
writer's own shard."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Mapping
from types import SimpleNamespace
from typing import Any

import numpy as np
import zarr

from ncdask._validate import batch_to_numpy, check_name
from ncdask.store.core import Core, check_labelled, put_once
from ncdask.store.locks import split_lock
from ncdask.store.record import (
    SplitChangedError,
    advanced,
    all_finite,
    digested,
    generation,
    snapshot,
)
from ncdask.store.setkey import SetKey

#: ``write_commit(expect=ANY)``: any generation of the split will do, or a new one.
ANY = object()


def append(core: Core, split: str, X: Any, y: Any, key: SetKey, allow_nonfinite: bool) -> int:
    """Validate, write and commit one batch; the split's committed row count."""
    core.require_writable()
    check_name("split", split)
    Xn, yn = batch_to_numpy(
        X, y, dim=core.known_dim(key), n_classes=core.n_classes, dtype=core.dtype,
        allow_nonfinite=allow_nonfinite, ignore_index=core.ignore_index, where=key.where,
        split=split)
    g, n = write_commit(core, split, key, Xn, yn, n_batches=1,
                        finite=all_finite(Xn, allow_nonfinite))
    return snapshot(g)[1]["n_committed"] if core.use_shards() else n


def write_rows(g: zarr.Group, rec: Mapping[str, Any], X: np.ndarray,
               y: np.ndarray | None) -> tuple[int, dict[str, Any]]:
    """Write rows past ``rec``'s committed end, every chunk stored (a missing one is damage);
    return the new end and ``rec`` with digests extended (the caller commits it)."""
    start = int(rec["n_committed"])
    end = start + X.shape[0]
    every = {"write_empty_chunks": True}
    emb = g["embeddings"].with_config(every)
    batch = {"embeddings": np.ascontiguousarray(X, dtype=emb.dtype)}
    emb.resize((end, emb.shape[1]))  # rows an interrupted append left are overwritten
    emb[start:end] = batch["embeddings"]
    if y is not None:
        lab = g["labels"].with_config(every)
        batch["labels"] = np.ascontiguousarray(y, dtype=lab.dtype)
        lab.resize((end,))
        lab[start:end] = batch["labels"]
    return end, digested(rec, start, int(emb.chunks[0]), batch)


def tally(core: Core, y: np.ndarray | None) -> tuple[np.ndarray | None, int]:
    """Per-class counts of a batch's labels and its number of ignored labels."""
    if y is None:
        return None, 0
    n_ign = 0
    if core.ignore_index is not None:
        ignored = y == core.ignore_index
        n_ign = int(ignored.sum())
        if n_ign:
            y = y[~ignored]
    return np.bincount(y, minlength=core.n_classes).astype(np.int64), n_ign


def own_rows(core: Core, g: zarr.Group) -> int:
    """Rows this handle's writes to split ``g`` start from (for chunk alignment)."""
    if core.use_shards():
        sh = core.shards.get(core.shard_key(g))
        return 0 if sh is None else int(sh.attrs["ncdask_shard"]["n_committed"])
    return int(g.attrs["ncdask_split"]["n_committed"])


def new_shard(core: Core, g: zarr.Group, labelled: bool) -> zarr.Group:
    """A new empty shard ``<split>/shards/<uuid>`` of split ``g`` (nothing committed), of the
    split's generation; its arrays first, its record last."""
    emb = g["embeddings"]
    wid = uuid.uuid4().hex
    rec = {"ncdask_shard": {
        "writer": wid, "created": time.time(), "n_committed": 0, "n_batches": 0,
        "class_counts": [0] * core.n_classes if labelled else None, "finite": True,
        "generation": generation(g.attrs["ncdask_split"])}}
    parent = put_once(g, "shards", lambda t: t.create_group("shards"))
    core.split_arrays(SimpleNamespace(store=g.store, path=f"{parent.path}/{wid}"),
                      int(emb.shape[1]), int(emb.chunks[0]), labelled)
    return put_once(parent, wid, lambda t: t.create_group(wid, attributes=rec))


def write_commit(core: Core, split: str, key: SetKey, X: np.ndarray, y: np.ndarray | None,
                 n_batches: int, finite: bool = True,
                 expect: str | None | object = ANY) -> tuple[zarr.Group, int]:
    """Write a batch to ``split`` and commit it; return the split's group and this handle's
    committed rows. Lock mode: past the end under the exclusive lock; shards: this handle's
    shard. With ``expect`` (a generation) a replaced split raises :class:`SplitChangedError`."""
    shards, seen = core.use_shards(), {}
    unlocked = shards and core.kind == "object"
    try:
        with split_lock(core, key, split, shared=shards):
            g, part, n1 = _commit(core, split, key, X, y, n_batches, finite, expect, seen)
        if unlocked and part is not g:
            shard_kept(core, split, key, part)
        return g, n1
    except Exception as e:  # on an object store a delete may pull nodes from under us
        core.shards.pop(seen.get("shard_key"), None)
        # a node gone is a delete, even where a creator already made the split again
        gone = isinstance(e, (KeyError, FileNotFoundError))
        if not unlocked or isinstance(e, SplitChangedError) or (
                isinstance(e, (ValueError, TypeError)) and not isinstance(e, OSError)) or (
                not gone and seen and _of_generation(core, split, key, seen["gen"])):
            raise
        raise _changed(core, split, key, f"while rows were written to it ({type(e).__name__}:"
                       f" {e}): they were not kept") from e


def _commit(core: Core, split: str, key: SetKey, X: np.ndarray, y: np.ndarray | None,
            n_batches: int, finite: bool, expect: str | None | object,
            seen: dict) -> tuple[zarr.Group, zarr.Group, int]:
    """:func:`write_commit` under the lock: the split, the part written, the rows."""
    if expect is ANY:
        g = core.split_group(split, key, create=True, dim=X.shape[1], labelled=y is not None)
        check_labelled(g, y is not None)
    else:
        g = core.find_split(split, key)
        if g is None or generation(g.attrs["ncdask_split"]) != expect:
            raise _changed(core, split, key, "since this writer first wrote to it: its "
                           "buffered rows were not written (open a new writer for them)")
    seen["gen"] = gen = generation(g.attrs["ncdask_split"])
    if X.shape[0] == 0:
        return g, g, own_rows(core, g)
    part, attr = g, "ncdask_split"
    if core.use_shards():
        seen["shard_key"] = sk = core.shard_key(g)
        part = core.shards.get(sk)
        if part is None or generation(part.attrs["ncdask_shard"]) != gen:
            part = core.shards[sk] = new_shard(core, g, y is not None)
        attr = "ncdask_shard"
    n1, rec = write_rows(part, part.attrs[attr], X, y)
    part.attrs[attr] = advanced(rec, n1, *tally(core, y), n_batches, finite)  # the commit
    return g, part, int(n1)


def _of_generation(core: Core, split: str, key: SetKey, gen: str | None) -> bool:
    """Whether the split is now (read from the store, not a cache) of generation ``gen``."""
    now = core.find_split(split, key)
    return now is not None and generation(now.attrs["ncdask_split"]) == gen


def _changed(core: Core, split: str, key: SetKey, when: str) -> SplitChangedError:
    return SplitChangedError(f"split {split!r} in {key.path or 'the default set'} of "
                             f"{core.url!r} was deleted or replaced {when}")


def shard_kept(core: Core, split: str, key: SetKey, shard: zarr.Group) -> None:
    """After a shard's commit: raise :class:`SplitChangedError`, deleting the shard, if its
    split was deleted or replaced meanwhile."""
    if not _of_generation(core, split, key, generation(shard.attrs["ncdask_shard"])):
        with contextlib.suppress(OSError):
            core.fs_path(shard)[0].rm(core.fs_path(shard)[1], recursive=True)
        raise _changed(core, split, key, f"while rows were committed to shard {shard.path}: "
                       "they were not kept")
