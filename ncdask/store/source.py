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
    :func:`ncdask.capture` writes to one, :func:`ncdask.sweep` and the statistics read one;
    :class:`ncdask.EmbeddingStore` and :class:`ncdask.StatsSink` implement it, a new backend goes
    here. A missing split, set or classifier is a KeyError."""

    url: str
    n_classes: int

    def sets(self) -> list[dict[str, Any]]: ...
    def splits(self, *, layer: str | None = None, epoch: int | None = None) -> list[str]: ...
    def dim_of(self, *, layer: str | None = None, epoch: int | None = None) -> int: ...
    def n_rows(self, split: str, *, layer: str | None = None,
               epoch: int | None = None) -> int: ...
    def split(self, name: str, *, layer: str | None = None,
              epoch: int | None = None) -> xr.Dataset: ...
    def writer(self, split: str, *, layer: str | None = None, epoch: int | None = None,
               allow_nonfinite: bool = False, dim: int | None = None,
               labelled: bool = True) -> BatchWriter: ...
    def create_set(self, *, layer: str | None = None, epoch: int | None = None,
                   dim: int | None = None, depth: int | None = None) -> int | None: ...
    def depth(self, *, layer: str | None = None, epoch: int | None = None) -> int | None: ...
    def set_classifier(self, W: Any, b: Any = None, *, layer: str | None = None,
                       epoch: int | None = None) -> None: ...
    def classifier(self, *, layer: str | None = None, epoch: int | None = None,
                   lazy: bool = False) -> tuple[Any, Any]: ...
