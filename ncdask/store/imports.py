"""Imports of saved embedding files into a store (:meth:`ncdask.EmbeddingStore.import_files`).

Each file is written in staging (on an object store, into a new shard of its
own), checked, and committed with the fingerprint of its source in one step,
so a killed import leaves nothing half-done and a repeated one is refused
(:class:`DuplicateImportError`) or resumed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np
import zarr

from ncdask._validate import NcdaskStoreError, batch_to_numpy, check_name
from ncdask.store.appends import commit, exclusive, new_shard, tally, write_rows
from ncdask.store.core import Core, check_labelled, truncate
from ncdask.store.record import advanced, all_finite, empty_record, snapshot
from ncdask.store.setkey import SetKey
from ncdask.store.staging import owner_tag
from ncdask.store.zarrio import rename


class DuplicateImportError(NcdaskStoreError):
    """The split already holds the source being imported (see ``import_files(mode=)``)."""


def _refuse_duplicate(
    rec: Mapping[str, Any], source: Mapping[str, Any], split: str, url: str, X_path: str
) -> None:
    """Raise :class:`DuplicateImportError` if the split record ``rec`` holds ``source``."""
    dup = [src for src in rec.get("sources") or []
           if src.get("fingerprint") == source["fingerprint"]]
    if dup:
        raise DuplicateImportError(
            f"split {split!r} of {url!r} already holds {X_path} "
            f"(imported from {dup[0]['embeddings']}, {dup[0]['rows']} rows; "
            f"it has {rec['n_committed']} rows); pass mode='append' "
            "(--append) to add the rows again or mode='overwrite' "
            "(--overwrite) to replace the split"
        )


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


def import_files(core: Core, split: str, X_path: str, y_path: str | None, key: SetKey, *,
                 allow_nonfinite: bool, labels: bool, mode: str) -> int:
    """Import a saved file into ``split``, all or nothing; the split's committed row count."""
    from ncdask.store.files import inspect_saved

    core.require_writable()
    check_name("split", split)
    if mode not in ("add", "append", "overwrite"):
        raise ValueError(f"mode must be 'add', 'append' or 'overwrite', got {mode!r}")
    known = core.known_dim(key)
    info = inspect_saved(X_path, y_path, labels=labels, n_classes=core.n_classes,
                         ignore_index=core.ignore_index)
    if known is not None and info["dim"] != known:
        where = key.where
        raise ValueError(
            f"{X_path}: embeddings have dim {info['dim']}, the store expects dim {known}"
            + (f" in set {where}" if where else "") + "; nothing was imported"
        )
    source = {k: info[k] for k in ("embeddings", "labels", "rows", "fingerprint")}
    job = _ImportJob(split, key, int(info["dim"]), X_path, y_path, labels,
                     allow_nonfinite, source)
    if core.use_shards():
        return _import_shard(core, job, mode)
    if split in core.splits(key):
        g0 = core.split_group(split, key, create=False)
        with exclusive(core, g0) as g:  # one writer at a time; the record re-read
            check_labelled(g, labels)
            rec = g.attrs["ncdask_split"]
            if mode == "add":
                _refuse_duplicate(snapshot(g)[1], source, split, core.url, X_path)
            if mode != "overwrite":
                # one commit: rows go past the committed end, the record moves last
                n0 = int(rec["n_committed"])
                try:
                    end, counts, n_ign, blocks, finite = _write_file(core, g, n0, job)
                except BaseException:
                    truncate(g, n0)
                    raise
                srcs = list(rec.get("sources") or []) + [source]
                return commit(g, end, counts, n_ign, blocks, {"sources": srcs}, finite=finite)
        return _import_staged(core, job, replace=True)
    return _import_staged(core, job, replace=False)


def _import_shard(core: Core, job: _ImportJob, mode: str) -> int:
    """Import into a new shard of its own, committed in one step (object stores).

    No lock and no rename are needed: the rows go to a shard nobody else
    writes, and its record (one PUT) commits them with the source, so
    importers of one split, and writers beside them, never meet. A
    killed import leaves an uncommitted shard that readers skip.
    """
    if mode == "overwrite":
        raise ValueError(
            f"mode='overwrite' cannot replace a split in one step on {core.url!r} (an "
            "object store has no rename): delete the split first (store.delete_split, "
            "CLI: ncdask rm) and import again; nothing was imported")
    g = core.split_group(job.split, job.key, create=True, dim=job.dim, labelled=job.labels)
    check_labelled(g, job.labels)
    rec = snapshot(g)[1]
    if mode == "add":
        _refuse_duplicate(rec, job.source, job.split, core.url, job.X_path)
    sh = new_shard(core, g, job.labels)
    n, counts, n_ign, blocks, finite = _write_file(core, sh, 0, job)
    srec = advanced(sh.attrs["ncdask_shard"], n, counts, n_ign, blocks, finite)
    srec["sources"] = [job.source]
    sh.attrs["ncdask_shard"] = srec  # the commit
    return int(snapshot(g)[1]["n_committed"])

def _write_file(
    core: Core, g: zarr.Group, start: int, job: _ImportJob
) -> tuple[int, np.ndarray | None, int, int, bool]:
    """Write a saved file's rows into ``g`` from row ``start``, in chunk-sized blocks.

    Nothing is committed. Returns the end row, the per-class counts, the
    number of ignored labels, the number of blocks written and whether
    every value was finite.
    """
    from ncdask.store.files import iter_saved_arrays

    rows = int(g["embeddings"].chunks[0])
    end, counts, n_ign, blocks, finite = start, None, 0, 0, True
    for Xb, yb in iter_saved_arrays(job.X_path, job.y_path, rows=rows, labels=job.labels):
        Xn, yn = batch_to_numpy(
            Xb, yb, dim=g["embeddings"].shape[1], n_classes=core.n_classes,
            dtype=core.dtype, allow_nonfinite=job.allow_nonfinite,
            ignore_index=core.ignore_index, where=job.key.where,
        )
        end = write_rows(g, end, Xn, yn)
        finite = finite and all_finite(Xn, job.allow_nonfinite)
        c, k = tally(core, yn)
        counts = c if counts is None else counts + c
        n_ign += k
        blocks += 1
    return end, counts, n_ign, blocks, finite

def _import_staged(core: Core, job: _ImportJob, replace: bool) -> int:
    """Import into a hidden staging group, then move it into place as ``split``."""
    split, key, D = job.split, job.key, job.dim
    sg = core.set_group(key, create=True)
    lay = core.layout(sg)
    rows = lay[1] if lay is not None else core.chunk_rows_for(D)
    tmp = f".import-{split}-{owner_tag()}"
    g = sg.create_group(tmp)
    core.split_arrays(g, D, rows, job.labels)
    try:
        rec = empty_record(split, key, core.n_classes, job.labels)
        n, counts, n_ign, blocks, finite = _write_file(core, g, 0, job)
        if counts is not None:
            rec["class_counts"] = counts.tolist()
        if n_ign:
            rec["n_ignored"] = n_ign
        rec.update(n_committed=n, n_batches=blocks, sources=[job.source], finite=finite)
        core.require_set(key, D)  # a new set's width, recorded on success only
        g.attrs["ncdask_split"] = rec
        _move_into_place(core, sg, tmp, split, replace)
    except BaseException:
        core.remove_group(sg, tmp)
        raise
    core.tidy(sg)
    return n

def _move_into_place(core: Core, sg: zarr.Group, tmp: str, split: str, replace: bool) -> None:
    """Rename the staged group ``tmp`` to ``split`` (a local rename is atomic).

    When replacing, the old split is first renamed aside and deleted only
    after the new one is in place.
    """
    fs, src = core.fs_path(sg, tmp)
    _, dst = core.fs_path(sg, split)
    old = None
    if replace:
        old = f"{dst}.replaced-{owner_tag()}"
        rename(fs, dst, old)
    elif fs.exists(dst):  # a group left by an import killed before its commit
        sub = sg[split]
        if "ncdask_split" in sub.attrs or set(dict(sub.members())) - {"embeddings",
                                                                       "labels"}:
            raise FileExistsError(f"{dst} exists and is not an ncdask split")
        old = f"{dst}.replaced-{owner_tag()}"
        rename(fs, dst, old)
    rename(fs, src, dst)
    if old is not None:
        fs.rm(old, recursive=True)
