"""Imports of saved embedding files into a store: :meth:`EmbeddingStore.import_files`.

Kept apart from the store's appends because an import is a job of its own:
each file is written in staging (or, on an object store, into a new shard of
its own), checked, and committed together with the fingerprint of its source,
so that a killed import leaves nothing half-done and a repeated one is
refused (:class:`DuplicateImportError`) or resumed. The methods here are
those of :class:`ncdask.EmbeddingStore` (a mixin), using its layout and
commit-record helpers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np
import zarr

from ncdask.store.layout import _check_labelled, _truncate
from ncdask.store.record import _advanced, _empty_record, _finite, _snapshot
from ncdask.store.setkey import SetKey
from ncdask.store.staging import owner_tag
from ncdask._validate import NcdaskStoreError, batch_to_numpy, check_name
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


class ImportsMixin:
    """:meth:`EmbeddingStore.import_files` and its steps."""

    def import_files(
        self,
        split: str,
        X_path: str,
        y_path: str | None = None,
        *,
        layer: str | None = None,
        epoch: int | None = None,
        allow_nonfinite: bool = False,
        labels: bool = True,
        mode: str = "add",
    ) -> int:
        """Import an ``.npy`` pair or an ``.npz`` file without loading it whole.

        ``.npy`` files are memory-mapped; ``.npz`` members (keys ``X``/``Y`` or
        ``embeddings``/``labels``) are streamed chunk by chunk. Into a new
        set, the file's width becomes the set's.

        An import is all or nothing and safe to retry: the files' shapes,
        widths and labels are checked before anything is written, the rows
        are committed in one step at the end (a failed or killed import
        leaves the split as it was, and no new split or set behind), and
        each split remembers the sources imported into it (a fingerprint of
        their contents), so importing the same source twice is refused.

        Parameters
        ----------
        split : str
        X_path : path
            ``.npy`` embeddings (with ``y_path``) or an ``.npz`` file.
        y_path : path, optional
            ``.npy`` labels for an ``.npy`` embeddings file.
        layer, epoch : optional
            Tags of the embedding set.
        allow_nonfinite : bool
            Store NaN/inf instead of raising.
        labels : bool, default True
            False imports embeddings only, into an unlabelled split (OOD
            data); ``y_path`` must then be None.
        mode : {"add", "append", "overwrite"}
            ``"add"`` appends unless this source is already in the split (a
            :class:`DuplicateImportError`); ``"append"`` appends regardless;
            ``"overwrite"`` replaces the split's rows with the file's (the old
            rows stay readable until the new ones are complete).

        Returns
        -------
        int
            The split's committed row count.

        Raises
        ------
        DuplicateImportError
            ``mode="add"`` and the split already holds this source.
        ValueError
            Bad files (nothing is written).
        """
        from ncdask.store.files import inspect_saved

        self._require_writable()
        check_name("split", split)
        if mode not in ("add", "append", "overwrite"):
            raise ValueError(f"mode must be 'add', 'append' or 'overwrite', got {mode!r}")
        key = SetKey(layer, epoch)
        known = self._known_dim(key)
        info = inspect_saved(X_path, y_path, labels=labels, n_classes=self.n_classes,
                             ignore_index=self.ignore_index)
        if known is not None and info["dim"] != known:
            where = key.where
            raise ValueError(
                f"{X_path}: embeddings have dim {info['dim']}, the store expects dim {known}"
                + (f" in set {where}" if where else "") + "; nothing was imported"
            )
        source = {k: info[k] for k in ("embeddings", "labels", "rows", "fingerprint")}
        job = _ImportJob(split, key, int(info["dim"]), X_path, y_path, labels,
                         allow_nonfinite, source)
        if self._use_shards():
            return self._import_shard(job, mode)
        if split in self.splits(**key.tags):
            g0 = self._split_group(split, key, create=False)
            with self._exclusive(g0) as g:  # one writer at a time; the record re-read
                _check_labelled(g, labels)
                rec = g.attrs["ncdask_split"]
                if mode == "add":
                    _refuse_duplicate(_snapshot(g)[1], source, split, self.url, X_path)
                if mode != "overwrite":
                    # one commit: rows go past the committed end, the record moves last
                    n0 = int(rec["n_committed"])
                    try:
                        end, counts, n_ign, blocks, finite = self._write_file(g, n0, job)
                    except BaseException:
                        _truncate(g, n0)
                        raise
                    srcs = list(rec.get("sources") or []) + [source]
                    return self._commit(g, end, counts, n_ign, blocks, {"sources": srcs},
                                        finite=finite)
            return self._import_staged(job, replace=True)
        return self._import_staged(job, replace=False)

    def _import_shard(self, job: _ImportJob, mode: str) -> int:
        """Import into a new shard of its own, committed in one step (object stores).

        No lock and no rename are needed: the rows go to a shard nobody else
        writes, and its record (one PUT) commits them with the source, so
        importers of one split, and writers beside them, never meet. A
        killed import leaves an uncommitted shard that readers skip.
        """
        if mode == "overwrite":
            raise ValueError(
                f"mode='overwrite' cannot replace a split in one step on {self.url!r} (an "
                "object store has no rename): delete the split first (store.delete_split, "
                "CLI: ncdask rm) and import again; nothing was imported")
        g = self._split_group(job.split, job.key, create=True, dim=job.dim,
                              labelled=job.labels)
        _check_labelled(g, job.labels)
        rec = _snapshot(g)[1]
        if mode == "add":
            _refuse_duplicate(rec, job.source, job.split, self.url, job.X_path)
        sh = self._new_shard(g, job.labels)
        n, counts, n_ign, blocks, finite = self._write_file(sh, 0, job)
        srec = _advanced(sh.attrs["ncdask_shard"], n, counts, n_ign, blocks, finite)
        srec["sources"] = [job.source]
        sh.attrs["ncdask_shard"] = srec  # the commit
        return int(_snapshot(g)[1]["n_committed"])

    def _write_file(
        self, g: zarr.Group, start: int, job: _ImportJob
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
                Xb, yb, dim=g["embeddings"].shape[1], n_classes=self.n_classes,
                dtype=self.dtype, allow_nonfinite=job.allow_nonfinite,
                ignore_index=self.ignore_index, where=job.key.where,
            )
            end = self._write_rows(g, end, Xn, yn)
            finite = finite and _finite(Xn, job.allow_nonfinite)
            c, k = self._tally(yn)
            counts = c if counts is None else counts + c
            n_ign += k
            blocks += 1
        return end, counts, n_ign, blocks, finite

    def _import_staged(self, job: _ImportJob, replace: bool) -> int:
        """Import into a hidden staging group, then move it into place as ``split``."""
        split, key, D = job.split, job.key, job.dim
        sg = self._set_group(key, create=True)
        lay = self._layout(sg)
        rows = lay[1] if lay is not None else self._chunk_rows_for(D)
        tmp = f".import-{split}-{owner_tag()}"
        g = self._new_split_arrays(sg, tmp, D, rows, job.labels)
        try:
            rec = _empty_record(split, key, self.n_classes, job.labels)
            n, counts, n_ign, blocks, finite = self._write_file(g, 0, job)
            if counts is not None:
                rec["class_counts"] = counts.tolist()
            if n_ign:
                rec["n_ignored"] = n_ign
            rec.update(n_committed=n, n_batches=blocks, sources=[job.source], finite=finite)
            self._require_set(key, D)  # a new set's width, recorded on success only
            g.attrs["ncdask_split"] = rec
            self._move_into_place(sg, tmp, split, replace)
        except BaseException:
            self._remove_group(sg, tmp)
            raise
        self._tidy(sg)
        return n

    def _move_into_place(self, sg: zarr.Group, tmp: str, split: str, replace: bool) -> None:
        """Rename the staged group ``tmp`` to ``split`` (a local rename is atomic).

        When replacing, the old split is first renamed aside and deleted only
        after the new one is in place.
        """
        fs, src = self._fs_path(sg, tmp)
        _, dst = self._fs_path(sg, split)
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
