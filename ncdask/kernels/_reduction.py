"""A reduction as the kernels declare it: chunk, combine, finalize, and an in-place fold.

dask's triple plus ``fold`` (a chunk added into a running partial, in place) for the chains
of :mod:`ncdask.graph._reduce`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Reduction:
    """How one reduction turns blocks into a result. ``combine(partials) -> partial`` may update
    ``partials[0]`` in place (each partial has one reader); ``chunk(*blocks) -> partial``;
    ``finalize(partial) -> result`` (identity when None); ``fold(acc, *blocks) -> partial`` in
    place (``acc`` None for a chain's first block; default ``combine([acc, chunk(*blocks)])``)."""

    combine: Callable[[list[Any]], Any]
    chunk: Callable[..., Any] | None = None
    finalize: Callable[[Any], Any] | None = None
    fold: Callable[..., Any] | None = None

    def __post_init__(self) -> None:
        if self.chunk is None and self.fold is None:
            raise ValueError("a Reduction needs a chunk or a fold function")

    def step(self, acc: Any, *blocks: Any) -> Any:
        """Add one block into the running partial ``acc`` (None: start one)."""
        if self.fold is not None:
            return self.fold(acc, *blocks)
        assert self.chunk is not None
        part = self.chunk(*blocks)
        return part if acc is None else self.combine([acc, part])

    def finish(self, partial: Any) -> Any:
        """The result of a fully combined partial."""
        return partial if self.finalize is None else self.finalize(partial)


def identity(x: Any) -> Any:
    """The partial itself (a chunk function for blocks that already are partials)."""
    return x


def sum_all(parts: list[Any]) -> Any:
    """Sum a list of partials (arrays, or anything with ``+``), left to right."""
    out = parts[0]
    for p in parts[1:]:
        out = out + p
    return out


def sum_fields(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Sum dicts of partial sums field by field, into the first (each has one reader)."""
    out = parts[0]
    for p in parts[1:]:
        for k in out:
            out[k] += p[k]
    return out
