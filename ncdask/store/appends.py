"""Appends to a store: :meth:`EmbeddingStore.append`, :meth:`EmbeddingStore.writer`
and the commits under them.

An append writes its rows past the split's committed end and then moves
the split's commit record (one metadata write): on a local disk under an
exclusive lock on the split (:meth:`AppendsMixin._exclusive`), on an object
store into a shard of its own that nobody else writes (no lock, no rename).
The methods here are those of :class:`ncdask.EmbeddingStore` (a mixin),
using its layout and commit-record helpers; the buffered writer itself is
:class:`ncdask.store.writer.StoreWriter`.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Iterator, Mapping
from typing import Any

import dask
import numpy as np
import zarr

from ncdask.store.layout import _check_labelled, _put_once
from ncdask.store.record import _advanced, _finite, _snapshot
from ncdask.store.setkey import SetKey
from ncdask._validate import batch_to_numpy, check_name
from ncdask.store.writer import StoreWriter

#: Dask config key choosing how concurrent writers of one split are kept apart.
WRITERS_KEY = "ncdask.writers"


class AppendsMixin:
    """:meth:`EmbeddingStore.append`, :meth:`EmbeddingStore.writer` and their commits."""

    def append(
        self,
        split: str,
        X: Any,
        y: Any = None,
        *,
        layer: str | None = None,
        epoch: int | None = None,
        allow_nonfinite: bool = False,
    ) -> int:
        """Append one batch and commit it; return the split's committed row count.

        Parameters
        ----------
        split : str
            Split name ("train", "test", "ood", ...); created on first use.
        X : array (n, D)
            Embeddings: NumPy, CuPy or a PyTorch tensor (CPU or CUDA). D is
            the set's width (:meth:`dim_of`); the first write to a new set
            may have any width and records it. Values are cast to the
            store's dtype; ``torch.bfloat16`` (which NumPy lacks) is first
            widened exactly to float32, so a float32 store keeps bfloat16
            hidden states exactly and a float16 store rounds them to 11
            significant bits (values past float16's 65504 become inf and are
            refused unless ``allow_nonfinite``).
        y : array (n,) or None
            Integer labels in ``[0, K)``. ``None`` writes an *unlabelled*
            split (out-of-distribution data has no classes of this model):
            the first write decides, and every later batch of the split must
            agree. Unlabelled splits serve NC5, ``nc1_ood_class`` and NECO;
            class statistics and NC4 need labels.
        layer, epoch : optional
            Tags of the embedding set (default set when both are None).
        allow_nonfinite : bool
            Store NaN/inf instead of raising.

        Raises
        ------
        ValueError
            A bad batch (nothing is written), e.g. a width other than the set's.

        Notes
        -----
        The rows are durable when this returns. Each call rewrites the partly
        filled last chunk, so for many small batches use :meth:`writer`, which
        buffers to whole chunks.
        """
        self._require_writable()
        check_name("split", split)
        key = SetKey(layer, epoch)
        Xn, yn = batch_to_numpy(
            X, y, dim=self._known_dim(key), n_classes=self.n_classes,
            dtype=self.dtype, allow_nonfinite=allow_nonfinite, ignore_index=self.ignore_index,
            where=key.where,
        )
        g = self._split_group(split, key, create=True, dim=Xn.shape[1],
                              labelled=yn is not None)
        _check_labelled(g, yn is not None)
        n = self._write_commit(g, Xn, yn, n_batches=1, finite=_finite(Xn, allow_nonfinite))
        return _snapshot(g)[1]["n_committed"] if self._use_shards() else n

    def _write_rows(self, g: zarr.Group, start: int, X: np.ndarray, y: np.ndarray | None) -> int:
        """Write rows at ``start`` (past the committed end: invisible until committed)."""
        end = start + X.shape[0]
        emb = g["embeddings"]
        # rows past the commit left by an interrupted append are simply overwritten
        emb.resize((end, emb.shape[1]))
        emb[start:end] = X
        if y is not None:
            lab = g["labels"]
            lab.resize((end,))
            lab[start:end] = y
        return end

    def _tally(self, y: np.ndarray | None) -> tuple[np.ndarray | None, int]:
        """Per-class counts of a batch's labels and its number of ignored labels."""
        if y is None:
            return None, 0
        ii = self.ignore_index
        n_ign = 0
        if ii is not None:
            ignored = y == ii
            n_ign = int(ignored.sum())
            if n_ign:
                y = y[~ignored]
        return np.bincount(y, minlength=self.n_classes).astype(np.int64), n_ign

    def _commit(
        self,
        g: zarr.Group,
        n1: int,
        counts: np.ndarray | None,
        n_ignored: int,
        n_batches: int,
        update: Mapping[str, Any] | None = None,
        finite: bool = True,
    ) -> int:
        """Record ``n1`` committed rows (and what the new rows add): the commit."""
        rec = _advanced(g.attrs["ncdask_split"], n1, counts, n_ignored, n_batches, finite)
        rec.update(update or {})
        g.attrs["ncdask_split"] = rec  # the commit
        return int(n1)

    def _use_shards(self) -> bool:
        """Whether appends go to this writer's own shard (see :meth:`_write_shard`)."""
        mode = dask.config.get(WRITERS_KEY, "auto")
        if mode not in ("auto", "lock", "shards"):
            raise ValueError(f"{WRITERS_KEY} must be 'auto', 'lock' or 'shards', got {mode!r}")
        if mode != "auto":
            return mode == "shards"
        if self._protocol is None:  # asked on every append: parse the URL once
            fs, _ = self._fs_path(self._group, "")
            self._protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
        return self._protocol not in ("file", "local", "memory")

    @staticmethod
    def _shard_key(g: zarr.Group) -> tuple[str, int, int]:
        import threading

        return g.path, os.getpid(), threading.get_ident()

    def _own_rows(self, g: zarr.Group) -> int:
        """Rows this handle's writes to split ``g`` start from (for chunk alignment)."""
        if self._use_shards():
            sh = self._my_shards.get(self._shard_key(g))
            return 0 if sh is None else int(sh.attrs["ncdask_shard"]["n_committed"])
        return int(g.attrs["ncdask_split"]["n_committed"])

    def _write_shard(
        self, g: zarr.Group, X: np.ndarray, y: np.ndarray | None, n_batches: int,
        finite: bool = True,
    ) -> int:
        """Append to this writer's own shard of split ``g`` and commit it; no lock needed.

        Object stores have no rename and no lock, so writers never share an
        array: each store handle appends to its own shard
        ``<split>/shards/<uuid>`` and commits by rewriting that shard's
        record (one ``zarr.json``, one atomic PUT), which nobody else
        writes. The split is the main arrays followed by every shard's
        committed rows, in the order the shards were created. A killed
        writer loses only what it had not committed. Returns the shard's
        committed rows.
        """
        sh = self._my_shards.get(self._shard_key(g))
        if sh is None:
            sh = self._my_shards[self._shard_key(g)] = self._new_shard(g, y is not None)
        rec = sh.attrs["ncdask_shard"]
        n1 = self._write_rows(sh, int(rec["n_committed"]), X, y)
        counts, n_ign = self._tally(y)
        sh.attrs["ncdask_shard"] = _advanced(rec, n1, counts, n_ign, n_batches,
                                             finite)  # the commit
        return int(n1)

    def _new_shard(self, g: zarr.Group, labelled: bool) -> zarr.Group:
        """A new empty shard of split ``g`` (nothing committed), under a unique id."""
        emb = g["embeddings"]
        D, rows = int(emb.shape[1]), int(emb.chunks[0])
        wid = uuid.uuid4().hex
        rec = {"ncdask_shard": {
            "writer": wid, "created": time.time(), "n_committed": 0, "n_batches": 0,
            "class_counts": [0] * self.n_classes if labelled else None, "finite": True}}
        parent = _put_once(g, "shards", lambda t: t.create_group("shards"))
        sh = _put_once(parent, wid, lambda t: t.create_group(wid, attributes=rec))
        self._split_arrays(sh, D, rows, labelled)
        return sh

    def _write_commit(
        self, g: zarr.Group, X: np.ndarray, y: np.ndarray | None, n_batches: int,
        finite: bool = True,
    ) -> int:
        if X.shape[0] == 0:
            return self._own_rows(g)
        if self._use_shards():
            return self._write_shard(g, X, y, n_batches, finite)
        with self._exclusive(g) as g:  # the committed end as it is now, not as cached
            n0 = int(g.attrs["ncdask_split"]["n_committed"])
            n1 = self._write_rows(g, n0, X, y)
            counts, n_ign = self._tally(y)
            return self._commit(g, n1, counts, n_ign, n_batches, finite=finite)

    def writer(
        self,
        split: str,
        *,
        layer: str | None = None,
        epoch: int | None = None,
        allow_nonfinite: bool = False,
        dim: int | None = None,
        labelled: bool = True,
    ) -> StoreWriter:
        """A buffered writer for many small batches (use as a context manager).

        Batches are validated as they arrive and written in whole chunks; what
        is buffered is committed on :meth:`StoreWriter.flush` and on exit.
        Batches must have the set's width; a new set takes ``dim`` if given,
        else the width of the first batch (the split is created then, so a
        writer that never gets a valid batch leaves nothing behind).
        ``labelled=False`` writes an unlabelled split (``append(X)`` with no
        labels; OOD data).
        """
        self._require_writable()
        check_name("split", split)
        key = SetKey(layer, epoch)
        known = self._known_dim(key)
        if dim is not None:
            dim = int(dim)
            if dim < 1:
                raise ValueError(f"dim must be >= 1, got {dim}")
            if known is not None and dim != known:
                raise ValueError(
                    f"set {key.where or '(default)'} of {self.url!r} has dim "
                    f"{known}, got dim={dim}"
                )
        g = None
        if split in self.splits(**key.tags):
            # create=True: another writer may have put the split's record but not yet its
            # arrays (seen: KeyError 'embeddings' in a 2-rank capture); they are added here
            g = self._split_group(split, key, create=True)
            _check_labelled(g, labelled)
        return StoreWriter(self, g, allow_nonfinite, split=split, key=key,
                           dim=known if known is not None else dim, labelled=labelled)

    @contextlib.contextmanager
    def _exclusive(self, g: zarr.Group) -> Iterator[zarr.Group]:
        """The split group ``g``, freshly read, while this process holds its write lock.

        Appends read the committed end, write past it and move the record: two
        writers doing that at once write the same rows and one commit hides
        the other's (seen: two concurrent imports kept one file's rows and
        recorded both). On a local disk an exclusive ``flock`` on the split's
        directory serialises them, across threads and processes; other
        filesystems get no lock (issue 13: many writers).
        """
        from fsspec.implementations.local import LocalFileSystem

        fs, path = self._fs_path(self._group, g.path[len(self._group.path):].lstrip("/"))
        fd = None
        local = isinstance(fs, LocalFileSystem)
        if local:
            try:
                import fcntl
            except ImportError:  # pragma: no cover - not on POSIX
                fcntl = None
            if fcntl is not None:
                fd = os.open(path, os.O_RDONLY)
                fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield zarr.open_group(store=g.store, path=g.path, mode="r+")
        finally:
            if fd is not None:
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)
