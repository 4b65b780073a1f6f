"""The buffered writer of a store split: :class:`StoreWriter`."""

from __future__ import annotations

from typing import Any

import numpy as np
import zarr

from ncdask._validate import batch_to_numpy, check_name
from ncdask.store.appends import own_rows, write_commit
from ncdask.store.core import Core, check_labelled
from ncdask.store.locks import split_lock
from ncdask.store.record import all_finite, generation
from ncdask.store.setkey import DEFAULT, SetKey


class StoreWriter:
    """Buffers small batches and writes them to a split in whole chunks. From
    :meth:`ncdask.EmbeddingStore.writer`. Rows are committed in whole chunks as the buffer fills
    and on :meth:`flush` / exit; rows still buffered when the process dies are lost, committed rows
    never are. The split is created with the first valid batch, whose width a new set takes. Once
    the split is deleted or replaced (``ncdask rm``, an overwriting import), writing raises
    :class:`ncdask.SplitChangedError`."""

    def __init__(self, core: Core, split: str, key: SetKey = DEFAULT, *,
                 allow_nonfinite: bool = False, dim: int | None = None,
                 labelled: bool = True) -> None:
        core.require_writable()
        check_name("split", split)
        known = core.known_dim(key)
        if dim is not None:
            dim = int(dim)
            if dim < 1:
                raise ValueError(f"dim must be >= 1, got {dim}")
            if known is not None and dim != known:
                raise ValueError(f"set {key.where or '(default)'} of {core.url!r} has dim "
                                 f"{known}, got dim={dim}")
        self._core, self._split, self._key = core, split, key
        self._allow, self._labelled = allow_nonfinite, labelled
        self._X: list[np.ndarray] = []
        self._y: list[np.ndarray] = []
        self._rows = self._batches = self._committed = 0
        self._group: zarr.Group | None = None
        #: the generation of the split written to: one deleted or replaced is not written
        self._generation: str | None = None
        #: Width of the batches: the set's (None until a new set's first batch).
        self.dim: int | None = known if known is not None else dim
        self._chunk = 1
        with split_lock(core, key, split, shared=True):  # not deleted between find and attach
            g = core.find_split(split, key)
            if g is not None:
                self._attach(g)
                check_labelled(g, labelled)
        self.closed = False

    def _attach(self, group: zarr.Group) -> None:
        emb = group["embeddings"]
        self._group = group
        self._generation = generation(group.attrs["ncdask_split"])
        self.dim = int(emb.shape[1])
        self._chunk = int(emb.chunks[0])
        self._committed = own_rows(self._core, group)

    def append(self, X: Any, y: Any = None) -> None:
        """Validate a batch and buffer it; write whole chunks once they fill."""
        if self.closed:
            raise ValueError("this writer is closed")
        if (y is None) == self._labelled:
            raise ValueError(
                "this writer's split is labelled: pass labels with every batch"
                if self._labelled else
                "this writer's split is unlabelled (labelled=False): pass no labels")
        s = self._core
        Xn, yn = batch_to_numpy(X, y, dim=self.dim, n_classes=s.n_classes, dtype=s.dtype,
                                allow_nonfinite=self._allow, ignore_index=s.ignore_index,
                                where=self._key.where, split=self._split)
        if self._group is None:  # the first valid batch creates the split
            self._attach(s.split_group(self._split, self._key, create=True,
                                       dim=Xn.shape[1], labelled=self._labelled))
            check_labelled(self._group, self._labelled)
        self._X.append(Xn)
        if yn is not None:
            self._y.append(yn)
        self._rows += Xn.shape[0]
        self._batches += 1
        chunk = self._chunk
        fill = (-self._committed) % chunk  # rows up to the next chunk boundary
        if self._rows >= fill + chunk or (fill and self._rows >= fill):
            whole = fill + ((self._rows - fill) // chunk) * chunk
            self._write(whole)

    def _write(self, rows: int) -> None:
        X = np.concatenate(self._X) if len(self._X) > 1 else self._X[0]
        y = None
        if self._labelled:
            y = np.concatenate(self._y) if len(self._y) > 1 else self._y[0]
        self._committed = write_commit(
            self._core, self._split, self._key, X[:rows], None if y is None else y[:rows],
            self._batches, finite=all_finite(X[:rows], self._allow),
            expect=self._generation)[1]
        self._batches = 0
        rest = X.shape[0] - rows
        self._X = [X[rows:]] if rest else []
        self._y = [y[rows:]] if rest and y is not None else []
        self._rows = rest

    def flush(self) -> None:
        """Write and commit everything buffered."""
        if self._rows:
            self._write(self._rows)

    def close(self) -> None:
        """Flush and close."""
        if not self.closed:
            self.flush()
            self.closed = True

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, *exc: Any) -> None:
        # on an exception the buffered batches are still whole, validated batches
        self.close()
