"""Appends to a store's split: rows written past the committed end, then the commit record
moved (one metadata write), under the split's lock or into the writer's own shard."""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import zarr

from ncdask._validate import batch_to_numpy, check_name
from ncdask.store.core import Core, check_labelled, put_once
from ncdask.store.record import advanced, all_finite, digested, snapshot
from ncdask.store.setkey import SetKey


def append(core: Core, split: str, X: Any, y: Any, key: SetKey, allow_nonfinite: bool) -> int:
    """Validate, write and commit one batch; the split's committed row count."""
    core.require_writable()
    check_name("split", split)
    Xn, yn = batch_to_numpy(
        X, y, dim=core.known_dim(key), n_classes=core.n_classes, dtype=core.dtype,
        allow_nonfinite=allow_nonfinite, ignore_index=core.ignore_index, where=key.where)
    g = core.split_group(split, key, create=True, dim=Xn.shape[1], labelled=yn is not None)
    check_labelled(g, yn is not None)
    n = write_commit(core, g, Xn, yn, n_batches=1, finite=all_finite(Xn, allow_nonfinite))
    return snapshot(g)[1]["n_committed"] if core.use_shards() else n


def write_rows(g: zarr.Group, rec: Mapping[str, Any], X: np.ndarray,
               y: np.ndarray | None) -> tuple[int, dict[str, Any]]:
    """Write rows past ``rec``'s committed end (invisible until committed); the new end and
    ``rec`` with its chunk digests extended over the rows as stored (the caller commits it).
    Every chunk is stored, all-NaN ones too, so a missing one is always damage."""
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
    """A new empty shard ``<split>/shards/<uuid>`` of split ``g`` (nothing committed)."""
    emb = g["embeddings"]
    wid = uuid.uuid4().hex
    rec = {"ncdask_shard": {
        "writer": wid, "created": time.time(), "n_committed": 0, "n_batches": 0,
        "class_counts": [0] * core.n_classes if labelled else None, "finite": True}}
    parent = put_once(g, "shards", lambda t: t.create_group("shards"))
    sh = put_once(parent, wid, lambda t: t.create_group(wid, attributes=rec))
    core.split_arrays(sh, int(emb.shape[1]), int(emb.chunks[0]), labelled)
    return sh


def write_commit(core: Core, g: zarr.Group, X: np.ndarray, y: np.ndarray | None,
                 n_batches: int, finite: bool = True) -> int:
    """Write a validated batch to split ``g`` and commit it; the rows this handle committed.
    On object stores (no lock) each handle appends to a shard of its own, committed by
    rewriting its record (one atomic PUT); the split reads as its main rows, then the shards'."""
    if X.shape[0] == 0:
        return own_rows(core, g)
    if core.use_shards():
        key = core.shard_key(g)
        if key not in core.shards:
            core.shards[key] = new_shard(core, g, y is not None)
        g, attr = core.shards[key], "ncdask_shard"
        lock = contextlib.nullcontext(g)
    else:
        lock, attr = exclusive(core, g), "ncdask_split"
    with lock as g:  # under the lock, the committed end as it is now, not as cached
        n1, rec = write_rows(g, g.attrs[attr], X, y)
        g.attrs[attr] = advanced(rec, n1, *tally(core, y), n_batches, finite)  # the commit
        return int(n1)


@contextlib.contextmanager
def exclusive(core: Core, g: zarr.Group) -> Iterator[zarr.Group]:
    """The split group ``g``, freshly read, under an exclusive ``flock`` of its directory
    on a local disk (two writers would write the same rows, one commit hiding the other's)."""
    fd = None
    if core.kind == "local":
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not on POSIX
            fcntl = None
        if fcntl is not None:
            fd = os.open(core.fs_path(g)[1], os.O_RDONLY)
            fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        yield zarr.open_group(store=g.store, path=g.path, mode="r+")
    finally:
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
