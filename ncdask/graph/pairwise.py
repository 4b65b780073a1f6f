"""Blocked pairwise graphs over the class axis.

The class axis is chunked into tiles of ``tile_size`` classes. One
``blockwise`` call evaluates :func:`ncdask.kernels.pairwise.pair_moments` on
every tile pair ``(I, J)``: tiles above the diagonal do the work, tiles on it
their strict upper triangle, tiles below it return empty rows at once. Each
task returns a ``(S, NSLOT)`` block of moments, so the whole intermediate is
``n_tiles² × S × 7`` numbers, never K×K; a tree ``reduction`` merges them
with Chan's update. Every statistic asked for comes from the same tasks.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from functools import partial
from typing import Any

import dask
import dask.array as da
import numpy as np
from dask.array.utils import meta_from_array
from dask.utils import parse_bytes

from ncdask.kernels import pairwise as P
from ncdask.graph._reduce import reduce_blocks

#: Default bytes of tile-sized temporaries one blocked task may hold (the
#: pairwise tiles here, the NC4 blocks of :mod:`ncdask.graph.decisions`).
TILE_BUDGET = 128 * 2**20
#: Dask config key that overrides :data:`TILE_BUDGET` (bytes or a string such as "64MiB").
BUDGET_CONFIG_KEY = "ncdask.tile-budget"
#: Under a distributed client, the default budget is at most this fraction of the
#: smallest worker's ``memory_limit``...
CLIENT_FRACTION = 8
#: ...and at most ``memory_limit / (CLIENT_THREAD_FACTOR · nthreads)``, so the
#: tasks a worker runs at once hold at most half of its memory.
CLIENT_THREAD_FACTOR = 2
#: Floor of the client-derived default (tiny limits would shatter the graphs).
MIN_CLIENT_BUDGET = 4 * 2**20
#: Tiles along the class axis the default tile size aims for (parallelism)...
MIN_TILES = 4
#: ...unless tiles would get smaller than this.
MIN_TILE = 256
#: T×T float64 arrays a fused pairwise task holds at once (its GEMMs; the
#: elementwise work runs on cache-sized strips of them).
TEMPS_PER_PAIR = 2


def parse_budget(budget: int | str) -> int:
    """A memory budget in bytes: a positive integer or a string such as ``"64MiB"``."""
    if isinstance(budget, bool):
        raise TypeError(f"memory budget must be bytes or a string like '64MiB', got {budget!r}")
    if isinstance(budget, str):
        try:
            value = parse_bytes(budget)
        except ValueError as e:
            raise ValueError(f"cannot parse memory budget {budget!r}: {e}") from None
    elif isinstance(budget, (int, np.integer)) or (
        isinstance(budget, float) and budget.is_integer()
    ):
        value = int(budget)
    else:
        raise TypeError(f"memory budget must be bytes or a string like '64MiB', got {budget!r}")
    if value <= 0:
        raise ValueError(f"memory budget must be positive, got {budget!r}")
    return int(value)


def client_budget() -> int | None:
    """Budget suggested by the active distributed client's smallest worker, if any.

    ``min(memory_limit / CLIENT_FRACTION, memory_limit / (CLIENT_THREAD_FACTOR ·
    nthreads))`` over the workers that have a memory limit, floored at
    :data:`MIN_CLIENT_BUDGET`; None when no client is active (``distributed``
    is not even imported then), it is asynchronous, or no worker has a limit.
    """
    if "distributed" not in sys.modules:
        return None
    try:
        from distributed import default_client

        client = default_client()
        if getattr(client, "asynchronous", False):
            return None  # its scheduler_info() is a cache without the workers
        workers = client.scheduler_info()["workers"].values()
        best = None
        for w in workers:
            limit = int(w.get("memory_limit") or 0)
            if limit <= 0:
                continue
            threads = max(1, int(w.get("nthreads") or 1))
            b = min(limit // CLIENT_FRACTION, limit // (CLIENT_THREAD_FACTOR * threads))
            best = b if best is None else min(best, b)
    except Exception:  # no client, a closed one, an unreachable scheduler: no hint
        return None
    return None if best is None else max(MIN_CLIENT_BUDGET, best)


def resolve_budget(budget: int | str | None = None) -> int:
    """The memory budget (bytes) of one blocked task.

    In order: ``budget`` when given; the dask config key
    :data:`BUDGET_CONFIG_KEY` (``dask.config.set({"ncdask.tile-budget":
    "64MiB"})``); else :data:`TILE_BUDGET`, lowered to :func:`client_budget`
    when a distributed client with smaller workers is active.
    """
    return configured_budget(budget, BUDGET_CONFIG_KEY, TILE_BUDGET)


def configured_budget(budget: int | str | None, key: str, default: int) -> int:
    """``budget`` when given, else the dask config ``key``, else ``default`` lowered
    to :func:`client_budget` under a distributed client with smaller workers."""
    if budget is not None:
        return parse_budget(budget)
    configured = dask.config.get(key, None)
    if configured is not None:
        return parse_budget(configured)
    hint = client_budget()
    return default if hint is None else min(default, hint)


def default_tile_size(
    n_classes: int, dim: int, *, budget: int | str | None = None, itemsize: int = 8
) -> int:
    """Default classes per tile: fits ``budget`` bytes, and leaves work for several threads.

    A fused task holds about :data:`TEMPS_PER_PAIR` T×T arrays plus two T×D
    blocks, so ``T ≤ √(budget / (TEMPS_PER_PAIR · itemsize))`` less what the
    blocks take (rounded down to a multiple of 64, or any size below 64).
    Below that, the class axis is cut into at least :data:`MIN_TILES` tiles
    (``MIN_TILES·(MIN_TILES+1)/2`` upper-triangle tasks) as long as tiles keep
    :data:`MIN_TILE` classes. ``budget`` defaults to :func:`resolve_budget`.
    """
    if n_classes <= 0:
        return 1
    budget = resolve_budget(budget)
    per = TEMPS_PER_PAIR * itemsize

    def size(t: int) -> int:
        return per * t * t + 4 * itemsize * t * dim

    t = int(math.isqrt(max(1, budget // per)))
    # leave room for the two T×D input blocks
    while t > 64 and size(t) > budget:
        t -= 64
    if t >= 64:
        t -= t % 64
    while t > 1 and size(t) > budget:  # small budgets or wide features
        t -= 1
    t = min(t, max(MIN_TILE, -(-n_classes // MIN_TILES)))
    return max(1, min(n_classes, t))


def _tiles(n: int, tile_size: int) -> tuple[int, ...]:
    tile_size = max(1, int(tile_size))
    full, rest = divmod(n, tile_size)
    return (tile_size,) * full + ((rest,) if rest else ())


def _pair_task(Mi, Mj, gi, gj, *rest, stats, has_v, has_w, params):
    k = 0
    vi = vj = Wi = Wj = None
    if has_v:
        vi, vj = rest[0], rest[1]
        k = 2
    if has_w:
        Wi, Wj = rest[k], rest[k + 1]
    out = P.pair_moments(Mi, Mj, gi, gj, vi, vj, Wi, Wj, stats=stats, **params)
    return out[None, None]


def pairwise_moments(
    M: da.Array,
    *,
    stats: Sequence[str],
    v: da.Array | None = None,
    W: da.Array | None = None,
    tile_size: int,
    dist_exp: float = 1.0,
    riesz_s: float = 0.0,
    inv_km1: float = 0.0,
    split_every: int | None = None,
) -> da.Array:
    """Merged moments of the requested pairwise statistics over all class pairs.

    Parameters
    ----------
    M : dask array (K, D)
        Centred class means (rechunked into tiles along the class axis).
    stats : sequence of str
        Names from :data:`ncdask.kernels.pairwise.PAIR_STATS`.
    v : dask array (K,), optional
        Variance norms (for ``"cdnv"``).
    W : dask array (K, D), optional
        Classifier rows (for ``"wcos_dev"``).
    tile_size : int
        Classes per tile.
    dist_exp, riesz_s, inv_km1 : float
        Passed to the kernel.
    split_every : int, optional
        Fan-in of the merge tree.

    Returns
    -------
    dask array (S, 5)
        Columns :data:`ncdask.kernels.pairwise.FINAL` (``n, mean, var,
        log_mean, log_var``), one row per statistic, one chunk.
    """
    stats = tuple(stats)
    K = M.shape[0]
    chunks = _tiles(K, tile_size)
    M = M.rechunk((chunks, -1))
    gidx = da.arange(K, chunks=(chunks,), dtype=np.int64)
    args: list[Any] = [M, "ik", M, "jk", gidx, "i", gidx, "j"]
    if v is not None:
        v = v.rechunk((chunks,))
        args += [v, "i", v, "j"]
    if W is not None:
        W = W.rechunk((chunks, -1))
        args += [W, "ik", W, "jk"]
    params = dict(dist_exp=float(dist_exp), riesz_s=float(riesz_s), inv_km1=float(inv_km1))
    fn = partial(_pair_task, stats=stats, has_v=v is not None, has_w=W is not None, params=params)
    meta = meta_from_array(M, ndim=4, dtype=np.float64)
    parts = da.blockwise(
        fn,
        "ijsq",
        *args,
        new_axes={"s": len(stats), "q": P.NSLOT},
        adjust_chunks={"i": 1, "j": 1},
        concatenate=True,
        align_arrays=False,
        dtype=np.float64,
        meta=meta,
        token="ncdask-pair-tiles",
    )
    signs = [
        math.copysign(1.0, riesz_s)
        if (s == "riesz" and riesz_s != 0)
        else (0.0 if s == "riesz" else 1.0)
        for s in stats
    ]
    check = [s == "riesz" and riesz_s != 0 for s in stats]
    red = P.moments_reduction(np.asarray(signs), np.asarray(check) if any(check) else None)
    return reduce_blocks(
        red, parts, axis=(0, 1), split_every=split_every or 16,
        chunks=((len(stats),), (len(P.FINAL),)),
        meta=meta_from_array(M, ndim=2, dtype=np.float64), prefix="ncdask-pair-merge",
    )


def _grid_task(Ai, Aj, *rest, kind, has_v, params):
    vi, vj = (rest[0], rest[1]) if has_v else (None, None)
    return P.pair_values(Ai, Aj, vi, vj, kind=kind, **params)


def pair_grid(
    A: da.Array,
    *,
    kind: str,
    v: da.Array | None = None,
    tile_size: int,
    dist_exp: float = 1.0,
    exponent: float = -1.0,
    riesz_s: float = 0.0,
) -> da.Array:
    """The full K×K grid of a pairwise kernel, lazily, one chunk per tile pair.

    Nothing is computed until asked for; write it to Zarr chunk by chunk
    with ``to_zarr``. See :func:`ncdask.kernels.pairwise.pair_values` for
    ``kind``.
    """
    K = A.shape[0]
    chunks = _tiles(K, tile_size)
    A = A.rechunk((chunks, -1))
    args: list[Any] = [A, "ik", A, "jk"]
    if v is not None:
        v = v.rechunk((chunks,))
        args += [v, "i", v, "j"]
    params = dict(dist_exp=float(dist_exp), exponent=float(exponent), riesz_s=float(riesz_s))
    fn = partial(_grid_task, kind=kind, has_v=v is not None, params=params)
    return da.blockwise(
        fn,
        "ij",
        *args,
        concatenate=True,
        align_arrays=False,
        dtype=A.dtype,
        meta=meta_from_array(A, ndim=2),
        token=f"ncdask-grid-{kind}",
    )
