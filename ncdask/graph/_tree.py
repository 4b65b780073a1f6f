"""Reductions shared by the graphs: a delayed tree (OOD means) and chain counts for folds."""

from __future__ import annotations

import os
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


#: Most chains of accumulation a fold runs side by side.
MAX_CHAINS = 8


def n_chains(n_blocks: int) -> int:
    """Chains of accumulation for ``n_blocks`` blocks: one per worker thread, at most 8.

    Each chain holds one running sum (a D×D scatter or Gram matrix, and for
    the class statistics a class group), so chains, not blocks, set the
    memory of a fold; with fewer chains than threads cores would idle, since
    a chain's blocks run one after another.
    """
    workers = dask.config.get("num_workers", None) or os.cpu_count() or 1
    return max(1, min(n_blocks, int(workers), MAX_CHAINS))
