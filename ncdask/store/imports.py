"""Imports of saved files: written where readers do not see them, then committed with the
source's fingerprint in one step (a repeat is recognised)."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Mapping
from typing import Any

import zarr

from ncdask._validate import NcdaskStoreError, batch_to_numpy, check_name
from ncdask.errors import option
from ncdask.store.appends import new_shard, shard_kept, tally, write_rows
from ncdask.store.core import DELETED_ATTR, Core, check_labelled, truncate
from ncdask.store.files import inspect_saved, iter_saved_arrays
from ncdask.store.locks import split_lock
from ncdask.store.record import advanced, all_finite, empty_record, snapshot
from ncdask.store.setkey import SetKey
from ncdask.store.staging import Lease
from ncdask.store.zarrio import rename


class DuplicateImportError(NcdaskStoreError):
    """The split already holds the source being imported (see ``import_files(mode=)``)."""


@dataclasses.dataclass(frozen=True)
class _ImportJob:
    """One file to import: where it goes, what it is, and its source record."""

    split: str
    key: SetKey
    dim: int
    X_path: str
    y_path: str | None
    labels: bool
    allow_nonfinite: bool
    source: dict[str, Any]

    def refuse_duplicate(self, rec: Mapping[str, Any], url: str) -> None:
        """Raise :class:`DuplicateImportError` if the split record ``rec`` holds the source."""
        dup = [s for s in rec.get("sources") or []
               if s.get("fingerprint") == self.source["fingerprint"]]
        if dup:
            again = option("mode='append'", "--append")
            replace = option("mode='overwrite'", "--overwrite")
            raise DuplicateImportError(
                f"split {self.split!r} of {url!r} already holds {self.X_path} (imported from "
                f"{dup[0]['embeddings']}, {dup[0]['rows']} rows; it has {rec['n_committed']} "
                f"rows); pass {again} to add the rows again or {replace} to replace the split")


def import_files(core: Core, split: str, X_path: str, y_path: str | None, key: SetKey, *,
                 allow_nonfinite: bool, labels: bool, mode: str) -> int:
    """Import a saved file into ``split``, all or nothing; the split's committed row count."""
    core.require_writable()
    check_name("split", split)
    if mode not in ("add", "append", "overwrite"):
        raise ValueError(f"mode must be 'add', 'append' or 'overwrite', got {mode!r}")
    known = core.known_dim(key)
    info = inspect_saved(X_path, y_path, labels=labels, n_classes=core.n_classes,
                         ignore_index=core.ignore_index)
    if known is not None and info["dim"] != known:
        raise ValueError(
            f"{X_path}: embeddings have dim {info['dim']}, the store expects dim {known}"
            + (f" in set {key.where}" if key.where else "") + "; nothing was imported")
    source = {k: info[k] for k in ("embeddings", "labels", "rows", "fingerprint")}
    job = _ImportJob(split, key, int(info["dim"]), X_path, y_path, labels,
                     allow_nonfinite, source)
    if core.use_shards():
        return _import_shard(core, job, mode)
    n = None if mode == "overwrite" else _import_into(core, job, mode)
    return _import_staged(core, job, mode) if n is None else n


def _import_into(core: Core, job: _ImportJob, mode: str) -> int | None:
    """Import into the existing split under its exclusive lock: rows past the committed end,
    the record (re-read under the lock) moved last; None if the split is missing."""
    with split_lock(core, job.key, job.split):
        g = core.find_split(job.split, job.key)
        if g is None:
            return None
        check_labelled(g, job.labels)
        if mode == "add":
            job.refuse_duplicate(snapshot(g)[1], core.url)
        rec = g.attrs["ncdask_split"]
        try:
            rec = _write_file(core, g, job, rec)
        except BaseException:
            truncate(g, int(g.attrs["ncdask_split"]["n_committed"]))
            raise
        g.attrs["ncdask_split"] = rec  # the commit
        return int(rec["n_committed"])


def _import_shard(core: Core, job: _ImportJob, mode: str) -> int:
    """Import into a new shard of its own, committed by its record (one PUT): no rename; a
    killed import leaves an uncommitted shard that readers skip."""
    if mode == "overwrite":
        raise ValueError(
            f"mode='overwrite' cannot replace a split in one step on {core.url!r} (an "
            "object store has no rename): delete the split first "
            f"({option('store.delete_split', 'ncdask rm')}) and import again; nothing was "
            "imported")
    with split_lock(core, job.key, job.split, shared=True):  # a delete waits (local)
        g = core.split_group(job.split, job.key, create=True, dim=job.dim,
                             labelled=job.labels)
        check_labelled(g, job.labels)
        if mode == "add":
            job.refuse_duplicate(snapshot(g)[1], core.url)
        sh = new_shard(core, g, job.labels)
        sh.attrs["ncdask_shard"] = _write_file(core, sh, job, sh.attrs["ncdask_shard"])
    if core.kind == "object":
        shard_kept(core, job.split, job.key, sh)
    return int(snapshot(g)[1]["n_committed"])


def _write_file(core: Core, g: zarr.Group, job: _ImportJob,
                rec: Mapping[str, Any]) -> dict[str, Any]:
    """Write the file's rows into ``g`` past ``rec``'s committed end, in chunk-sized blocks;
    return the record that commits them with the source (not written yet)."""
    rows = int(g["embeddings"].chunks[0])
    for Xb, yb in iter_saved_arrays(job.X_path, job.y_path, rows=rows, labels=job.labels):
        Xn, yn = batch_to_numpy(
            Xb, yb, dim=g["embeddings"].shape[1], n_classes=core.n_classes, dtype=core.dtype,
            allow_nonfinite=job.allow_nonfinite, ignore_index=core.ignore_index,
            where=job.key.where)
        end, rec = write_rows(g, rec, Xn, yn)
        rec = advanced(rec, end, *tally(core, yn), 1, all_finite(Xn, job.allow_nonfinite))
    return {**rec, "sources": [*(rec.get("sources") or []), job.source]}


def _import_staged(core: Core, job: _ImportJob, mode: str) -> int:
    """Import into a leased staging group, then rename it into place under the split's lock;
    a split another importer made meanwhile is imported into instead."""
    sg = core.set_group(job.key, create=True)
    lay = core.layout(sg)
    rows = lay[1] if lay is not None else core.chunk_rows_for(job.dim)
    with core.lease() as lease:
        tmp = f".import-{job.split}-{lease.id}"
        lease.stage(core.fs_path(sg, tmp)[1])
        g = sg.create_group(tmp)
        core.split_arrays(g, job.dim, rows, job.labels)
        try:
            rec = _write_file(core, g, job, empty_record(job.split, job.key, core.n_classes,
                                                         job.labels))
            g.attrs["ncdask_split"] = rec
            with split_lock(core, job.key, job.split):
                n = None if mode == "overwrite" else _import_into(core, job, mode)
                if n is None:
                    core.require_set(job.key, job.dim)  # a new set's width, on success only
                    _move_into_place(core, sg, tmp, job.split, mode == "overwrite", lease)
        except BaseException:
            with contextlib.suppress(OSError):  # I/O in flight; the lease recovers the rest
                core.remove_group(sg, tmp)
            raise
        if n is not None:
            core.remove_group(sg, tmp)
    core.tidy(sg)
    return int(rec["n_committed"]) if n is None else n


def _move_into_place(core: Core, sg: zarr.Group, tmp: str, split: str, replace: bool,
                     lease: Lease) -> None:
    """Rename ``tmp`` to ``split``; an old split is set aside first (listed in ``lease``) and
    deleted once the new one is in place."""
    fs, src = core.fs_path(sg, tmp)
    dst = core.fs_path(sg, split)[1]
    old = None
    if not replace and fs.exists(dst) and not _left_over(fs, sg, split, dst):
        raise FileExistsError(f"{dst} exists and is not an ncdask split")
    if fs.exists(dst):
        old = lease.stage(core.fs_path(sg, f".{split}.replaced-{lease.id}")[1], to=dst,
                          aside=True)
        rename(fs, dst, old)
    try:
        rename(fs, src, dst)
    except BaseException:
        if old is not None and not fs.exists(dst):
            rename(fs, old, dst)
        raise
    if old is not None:
        fs.rm(old, recursive=True)


def _left_over(fs: Any, sg: zarr.Group, split: str, dst: str) -> bool:
    """Whether ``dst``, no readable split, is what a killed ncdask writer left there: arrays
    without a record (a creation), a deletion's mark, or a record without arrays."""
    try:
        sub = sg[split]
    except KeyError:  # no zarr.json
        names = {str(p).rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(dst, detail=False)}
        return names <= {"embeddings", "labels", "shards"}
    return (DELETED_ATTR in sub.attrs or "ncdask_split" in sub.attrs
            or set(dict(sub.members())) <= {"embeddings", "labels"})
