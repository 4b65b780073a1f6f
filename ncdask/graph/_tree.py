"""A delayed tree reduction shared by the one-pass graphs (class statistics, OOD means)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import dask


def tree_reduce(
    leaves: list[Any], merge: Callable[[list[Any]], Any], *, split_every: int, name: str
) -> Any:
    """Merge delayed ``leaves`` ``split_every`` at a time until one is left.

    ``merge`` takes a list of partials and returns one. Level ``d``'s task
    ``i`` is named ``f"{name}-{d}-{i}"``. A single leaf is returned as is.
    """
    level = list(leaves)
    depth = 0
    while len(level) > 1:
        level = [
            dask.delayed(merge, pure=True)(
                level[i : i + split_every], dask_key_name=f"{name}-{depth}-{i}"
            )
            for i in range(0, len(level), split_every)
        ]
        depth += 1
    return level[0]
