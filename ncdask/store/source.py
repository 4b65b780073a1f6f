"""What capture, sweeps and the statistics need from where embeddings go: :class:`SplitSource`."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import xarray as xr


class BatchWriter(Protocol):
    """A split's writer: ``append`` batches inside a ``with`` block."""

    def append(self, X: Any, y: Any = None) -> None: ...
    def __enter__(self) -> BatchWriter: ...
    def __exit__(self, *exc: Any) -> Any: ...


@runtime_checkable
class SplitSource(Protocol):
    """Embedding sets (tagged ``layer=`` / ``epoch=``) of splits, written and read.

    :func:`ncdask.capture` writes to one (``writer``, ``set_classifier``,
    ``dim_of``, ``splits``, ``n_rows``); :func:`ncdask.sweep` and the
    statistics read one (``sets``, ``splits``, ``split``, ``classifier``).
    :class:`ncdask.EmbeddingStore` (Zarr, any fsspec URL) and
    :class:`ncdask.StatsSink` (streamed statistics, no embeddings) implement
    it. A new backend (in memory, icechunk, ...) implements this protocol:
    the methods take the set's tags as ``layer=`` / ``epoch=`` keywords and
    raise KeyError for a split or set that does not exist.
    """

    url: str
    n_classes: int

    def sets(self) -> list[dict[str, Any]]:
        """The tags of every set holding a split (``{}`` for the default set)."""
        ...

    def splits(self, *, layer: str | None = None, epoch: int | None = None) -> list[str]:
        """The split names of one set."""
        ...

    def dim_of(self, *, layer: str | None = None, epoch: int | None = None) -> int:
        """A set's width D."""
        ...

    def n_rows(self, split: str, *, layer: str | None = None, epoch: int | None = None) -> int:
        """The rows of a split."""
        ...

    def split(self, name: str, *, layer: str | None = None,
              epoch: int | None = None) -> xr.Dataset:
        """A split as a Dataset: ``embeddings (sample, feature)``, ``labels (sample)``."""
        ...

    def writer(self, split: str, *, layer: str | None = None, epoch: int | None = None,
               allow_nonfinite: bool = False, dim: int | None = None,
               labelled: bool = True) -> BatchWriter:
        """A writer that appends batches to a split (created with its first batch)."""
        ...

    def set_classifier(self, W: Any, b: Any = None, *, layer: str | None = None,
                       epoch: int | None = None) -> None:
        """Keep a set's classifier ``W`` (K×D) and bias ``b`` (K or None)."""
        ...

    def classifier(self, *, layer: str | None = None, epoch: int | None = None,
                   lazy: bool = False) -> tuple[Any, Any]:
        """A set's ``(W, b)``."""
        ...
