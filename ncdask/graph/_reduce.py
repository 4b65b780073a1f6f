"""The one reduction engine of :mod:`ncdask.graph`: trees and chains of kernel reductions.

A :class:`~ncdask.kernels._reduction.Reduction` runs as a **tree** (small partials) or as
**chains** (block ``i`` folded in place into chain ``i mod C``; D×D or K×D partials)."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import dask
import dask.array as da
import numpy as np
from dask._task_spec import Task, TaskRef, convert_legacy_graph
from dask.array.utils import meta_from_array
from dask.base import tokenize
from dask.delayed import Delayed
from dask.highlevelgraph import HighLevelGraph

from ncdask.kernels._reduction import Reduction

#: Most chains of accumulation a fold runs side by side.
MAX_CHAINS = 8
#: A throttled batch of reads waits for the folds of the batch this many batches back.
READ_LAG = 2
#: Inputs larger than this have their reads throttled to the folds' progress
#: (below it, gating each batch of C blocks costs more than it saves).
THROTTLE_BYTES = 256 * 2**20


def n_chains(n_blocks: int) -> int:
    """Chains for ``n_blocks`` blocks: one per worker thread (each chain runs serially), at most 8.
    Each chain holds one running partial, so chains, not blocks, set a fold's memory."""
    workers = dask.config.get("num_workers", None) or os.cpu_count() or 1
    return max(1, min(n_blocks, int(workers), MAX_CHAINS))


def tree(dsk: dict, name: str, red: Reduction, leaves: Sequence[Any], *,
         split_every: int) -> Any:
    """Combine the partials under ``leaves`` ``split_every`` at a time into ``dsk``; the top key.
    At least one combine runs, even on a single leaf (kernels check their input there)."""
    if split_every < 2:
        raise ValueError(f"split_every must be >= 2, got {split_every}")
    if not leaves:
        raise ValueError("a tree needs at least one leaf")
    level = list(leaves)
    depth = 0
    while True:
        nxt = []
        for i in range(0, len(level), split_every):
            key = (f"{name}-combine-{depth}", i // split_every)
            dsk[key] = (red.combine, list(level[i : i + split_every]))
            nxt.append(key)
        level, depth = nxt, depth + 1
        if len(level) == 1:
            return level[0]


def chains(
    dsk: dict, name: str, red: Reduction, n_blocks: int,
    read: Callable[[int, int, list[Any]], list[tuple[Any, ...]]] | Sequence[tuple[Any, ...]],
    *, n_chains: int, batch: int | None = None, lag: int = READ_LAG, after: Any = None,
) -> list[Any]:
    """Fold ``n_blocks`` blocks into ``n_chains`` running partials; return the chain ends.
    ``read(lo, hi, wait)`` gives the task arguments of blocks ``lo`` to ``hi``
    (:meth:`Reduction.step` gets ``(acc, *args)``), their reads made to wait for the keys
    ``wait`` (:func:`throttled`); or ``read`` is the list of every block's arguments. With
    ``batch``, batch ``b`` of reads waits for the folds of batch ``b − lag`` (the first ones for
    ``after``): left free, dask reads every block before the first fold, as reads are
    always-ready roots."""
    if not callable(read):
        blocks = list(read)

        def read(lo: int, hi: int, wait: list[Any]) -> list[tuple[Any, ...]]:
            return blocks[lo:hi]

    C = max(1, int(n_chains))
    step = n_blocks if batch is None else max(1, int(batch))
    last: list[Any] = [None] * C
    batches: list[list[Any]] = []
    for lo in range(0, n_blocks, max(step, 1)):
        hi = min(n_blocks, lo + step)
        wait = batches[-lag] if len(batches) >= lag else [] if after is None else [after]
        batches.append([])
        for i, args in enumerate(read(lo, hi, wait), start=lo):
            key = (f"{name}-fold", i)
            dsk[key] = (red.step, last[i % C], *args)
            last[i % C] = key
            batches[-1].append(key)
    return [k for k in last if k is not None]


def finish(dsk: dict, name: str, red: Reduction, parts: Sequence[Any], *,
           key: Any = None) -> Any:
    """One task combining ``parts`` and finalizing; its key (default ``f"{name}-finish"``)."""
    key = f"{name}-finish" if key is None else key
    dsk[key] = (_combine_finish, red, list(parts))
    return key


def _combine_finish(red: Reduction, parts: list[Any]) -> Any:
    return red.finish(red.combine(parts))


def throttled(dsk: dict, name: str, arrays: Sequence[da.Array], blocks: list[tuple[Any, ...]],
              C: int) -> Callable[[int, int, list[Any]], list[tuple[Any, ...]]]:
    """:func:`chains`' ``read`` for row blocks ``blocks`` of ``arrays`` (in batches of ``C``):
    the tasks that only batch ``b`` needs run after the folds ``wait``, as ``dsk``'s copies;
    tasks that several batches share run once, unthrottled (with ``C`` the number of blocks:
    a whole pass that reads afresh after ``wait``). Left free, dask reads ahead of the folds
    (every block of one chain first). Not ``dask.graph_manipulation.bind``: it loses the
    dependencies of rechunks (dask 2026.8)."""
    graph = convert_legacy_graph(dict(HighLevelGraph.merge(*(a.__dask_graph__() for a in arrays))))
    owner: dict[Any, int] = {}  # the one batch that needs a task, else -1
    for i, blk in enumerate(blocks):
        stack = [k for k in blk if k in graph]
        while stack:
            k = stack.pop()
            if owner.get(k, i // C) != i // C:
                owner[k] = -1
            elif k not in owner:
                owner[k] = i // C
                stack.extend(graph[k].dependencies)
                continue
            if owner[k] == -1:
                stack.extend(d for d in graph[k].dependencies if owner.get(d) != -1)

    def read(lo: int, hi: int, wait: list[Any]) -> list[tuple[Any, ...]]:
        if not wait:
            return blocks[lo:hi]
        mine = {k for k, b in owner.items() if b == lo // C}
        ren = {k: (f"{name}-{lo}-{k[0]}", *k[1:]) if isinstance(k, tuple) else f"{name}-{lo}-{k}"
               for k in mine}
        gate_key = f"{name}-gate-{lo}"
        dsk[gate_key] = Task(gate_key, _after, None, *map(TaskRef, wait))
        for k in mine:
            node = graph[k].substitute(ren, key=ren[k])
            if not graph[k].dependencies & mine:  # first of this batch's tasks: after the gate
                node = Task(ren[k], _after, node, TaskRef(gate_key))
            dsk[ren[k]] = node
        return [tuple(ren.get(k, k) for k in blk) for blk in blocks[lo:hi]]

    return read


def _after(value: Any, *_: Any) -> Any:
    return value


def row_keys(x: da.Array) -> list[Any]:
    """The key of each row block of ``x`` (one block wide on every other axis)."""
    if any(n != 1 for n in x.numblocks[1:]):
        raise ValueError(f"expected one block along every axis but the first, got {x.numblocks}")
    rest = (0,) * (x.ndim - 1)
    return [(x.name, i, *rest) for i in range(x.numblocks[0])]


def fold_rows(red: Reduction, *arrays: da.Array, how: str = "tree", split_every: int = 8,
              chains_: int | None = None, shared: Sequence[Any] = (),
              prefix: str = "ncdask-reduce", token: Any = None) -> Delayed:
    """Reduce the aligned row blocks of ``arrays`` to one finalized result (a Delayed). ``arrays``
    share their row chunks and are one block wide on every other axis; ``red`` gets ``(*blocks,
    *shared)`` per row block, ``shared`` being stored once in the graph. ``how`` is ``"tree"``
    (fan-in ``split_every``) or ``"chains"`` (``chains_``, default :func:`n_chains`; over more
    than :data:`THROTTLE_BYTES`, read in step with the folds: :func:`throttled`); ``token``
    adds to the identity what the functions close over."""
    n = arrays[0].numblocks[0]
    for a in arrays[1:]:
        if a.chunks[0] != arrays[0].chunks[0]:
            raise ValueError("fold_rows needs arrays with the same row chunks")
    name = f"{prefix}-{tokenize(*arrays, red, how, split_every, chains_, shared, token)}"
    dsk: dict[Any, Any] = {}
    shared_keys = [f"{name}-shared-{j}" for j in range(len(shared))]
    dsk.update(zip(shared_keys, shared, strict=True))
    blocks = [(*ks, *shared_keys) for ks in zip(*map(row_keys, arrays), strict=True)]
    if how == "chains" and sum(a.nbytes for a in arrays) > THROTTLE_BYTES:
        C = n_chains(n) if chains_ is None else chains_
        read = throttled(dsk, name, arrays, blocks, C)
        out = finish(dsk, name, red, chains(dsk, name, red, n, read, n_chains=C, batch=C))
        graph = HighLevelGraph.from_collections(name, dsk, dependencies=list(arrays))
        return Delayed(out, graph, layer=name)
    if how == "tree":
        assert red.chunk is not None
        leaves = [(f"{name}-chunk", i) for i in range(len(blocks))]
        dsk.update({k: (red.chunk, *args) for k, args in zip(leaves, blocks, strict=True)})
        out = f"{name}-finish"
        dsk[out] = (red.finish, tree(dsk, name, red, leaves, split_every=split_every))
    elif how == "chains":
        C = n_chains(n) if chains_ is None else chains_
        ends = chains(dsk, name, red, n, blocks, n_chains=C)
        out = finish(dsk, name, red, ends)
    else:
        raise ValueError(f"how must be 'tree' or 'chains', got {how!r}")
    graph = HighLevelGraph.from_collections(name, dsk, dependencies=list(arrays))
    return Delayed(out, graph, layer=name)


def reduce_blocks(red: Reduction, parts: da.Array, *, axis: int | tuple[int, ...],
                  split_every: int, chunks: tuple[tuple[int, ...], ...], meta: Any,
                  prefix: str) -> da.Array:
    """Tree-reduce the blocks of ``parts`` (each a partial) along ``axis``.
    Each block position along the other axes gives one output block of ``chunks``."""
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    keep = [d for d in range(parts.ndim) if d not in axes]
    name = f"{prefix}-{tokenize(parts, red, axes, split_every)}"
    dsk: dict[Any, Any] = {}
    for out_idx in np.ndindex(*[parts.numblocks[d] for d in keep]):
        leaves = []
        for red_idx in np.ndindex(*[parts.numblocks[d] for d in axes]):
            idx = [0] * parts.ndim
            for d, i in zip(keep, out_idx, strict=True):
                idx[d] = i
            for d, i in zip(axes, red_idx, strict=True):
                idx[d] = i
            leaves.append((parts.name, *idx))
        sub = f"{name}-{'-'.join(map(str, out_idx))}" if out_idx else name
        top = tree(dsk, sub, red, leaves, split_every=split_every)
        out_key = (name, *out_idx) + (0,) * (len(chunks) - len(out_idx))
        dsk[out_key] = (red.finish, top)
    graph = HighLevelGraph.from_collections(name, dsk, dependencies=[parts])
    return da.Array(graph, name, chunks=chunks, meta=meta)


def fields(result: Delayed, shapes: dict[str, tuple[tuple[int, ...], Any]],
           like: Any) -> dict[str, da.Array]:
    """Lazy arrays of the named fields of a dict-valued ``result``."""
    return {k: da.from_delayed(result[k], shape=shape, dtype=dt,
                               meta=meta_from_array(like, ndim=len(shape), dtype=dt))
            for k, (shape, dt) in shapes.items()}
