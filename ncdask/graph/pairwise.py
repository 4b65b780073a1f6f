"""Blocked pairwise graphs over the class axis, and the memory budget of blocked tasks.

One ``blockwise`` runs :func:`~ncdask.kernels.pairwise.pair_moments` on every pair of class
tiles, each giving ``(S, NSLOT)`` moments, merged by a tree: never K×K numbers."""

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

from ncdask.graph._reduce import reduce_blocks
from ncdask.kernels import pairwise as P

#: Default bytes one blocked task (pairwise, NC4, shares) may hold.
TILE_BUDGET = 128 * 2**20
#: Dask config key that overrides :data:`TILE_BUDGET` (bytes or a string such as "64MiB").
BUDGET_CONFIG_KEY = "ncdask.tile-budget"
#: Under a distributed client the default is at most ``memory_limit / CLIENT_FRACTION``
#: of the smallest worker, and ``memory_limit / (CLIENT_THREAD_FACTOR · nthreads)``
#: (its tasks at once hold at most half its memory), floored at MIN_CLIENT_BUDGET.
CLIENT_FRACTION = 8
CLIENT_THREAD_FACTOR = 2
MIN_CLIENT_BUDGET = 4 * 2**20
#: The default tile size aims for MIN_TILES tiles unless tiles get below MIN_TILE classes.
MIN_TILES = 4
MIN_TILE = 256
#: T×T float64 arrays a fused pairwise task holds at once (its GEMMs).
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
    elif isinstance(budget, (int, np.integer)) or (isinstance(budget, float)
                                                     and budget.is_integer()):
        value = int(budget)
    else:
        raise TypeError(f"memory budget must be bytes or a string like '64MiB', got {budget!r}")
    if value <= 0:
        raise ValueError(f"memory budget must be positive, got {budget!r}")
    return int(value)


def client_budget() -> int | None:
    """Budget suggested by the active distributed client's smallest worker, if any. Looked for only
    once ``distributed`` is imported; None without a synchronous client or worker memory limits."""
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
    """The memory budget (bytes) of one blocked task (config key :data:`BUDGET_CONFIG_KEY`)."""
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


def default_tile_size(n_classes: int, dim: int, *, budget: int | str | None = None,
                      itemsize: int = 8) -> int:
    """Default classes per tile: fits ``budget`` bytes, and leaves work for several threads.
    A fused task holds :data:`TEMPS_PER_PAIR` T×T arrays and the T×D blocks; T
    is rounded down to a multiple of 64 when at least 64, and capped so that
    there are :data:`MIN_TILES` tiles as long as tiles keep :data:`MIN_TILE` classes."""
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


def tiles(n: int, tile_size: int) -> tuple[int, ...]:
    """Chunks of ``n`` classes in tiles of ``tile_size``."""
    tile_size = max(1, int(tile_size))
    full, rest = divmod(n, tile_size)
    return (tile_size,) * full + ((rest,) if rest else ())


def _unlisted(args: tuple) -> list:
    # blockwise with concatenate=False passes the blocks of the contracted feature index as
    # lists (of one: that axis is one chunk); concatenate=True would copy every T×D block
    # in every task
    return [a[0] if isinstance(a, list) else a for a in args]


def _pair_task(*args, **kwargs):
    return P.pair_moments(*_unlisted(args), **kwargs)[None, None]


def _grid_task(*args, **kwargs):
    return P.pair_values(*_unlisted(args), **kwargs)


def pairwise_moments(M: da.Array, *, stats: Sequence[str], v: da.Array | None = None,
                     W: da.Array | None = None, tile_size: int, dist_exp: float = 1.0,
                     riesz_s: float = 0.0, inv_km1: float = 0.0,
                     split_every: int | None = None) -> da.Array:
    """Columns ``FINAL`` (S, 5) of the pairwise ``stats`` over all pairs of the K×D means ``M``.
    ``v`` and ``W``, the variance norms and classifier rows, and the floats go
    to :func:`~ncdask.kernels.pairwise.pair_moments`; ``split_every`` is the
    fan-in of the merge tree."""
    stats = tuple(stats)
    K = M.shape[0]
    chunks = tiles(K, tile_size)
    M = M.rechunk((chunks, -1))
    gidx = da.arange(K, chunks=(chunks,), dtype=np.int64)
    args: list[Any] = [M, "ik", M, "jk", gidx, "i", gidx, "j"]
    v = None if v is None else v.rechunk((chunks,))
    args += [None, None, None, None] if v is None else [v, "i", v, "j"]
    W = None if W is None else W.rechunk((chunks, -1))
    args += [None, None, None, None] if W is None else [W, "ik", W, "jk"]
    fn = partial(_pair_task, stats=stats, dist_exp=float(dist_exp), riesz_s=float(riesz_s),
                 inv_km1=float(inv_km1))
    parts = da.blockwise(
        fn, "ijsq", *args, new_axes={"s": len(stats), "q": P.NSLOT},
        adjust_chunks={"i": 1, "j": 1}, concatenate=False, align_arrays=False,
        dtype=np.float64, meta=meta_from_array(M, ndim=4, dtype=np.float64),
        token="ncdask-pair-tiles",
    )
    riesz_sign = math.copysign(1.0, riesz_s) if riesz_s != 0 else 0.0
    signs = [riesz_sign if s == "riesz" else 1.0 for s in stats]
    check = [s == "riesz" and riesz_s != 0 for s in stats]
    red = P.moments_reduction(np.asarray(signs), np.asarray(check) if any(check) else None)
    return reduce_blocks(
        red, parts, axis=(0, 1), split_every=split_every or 16,
        chunks=((len(stats),), (len(P.FINAL),)),
        meta=meta_from_array(M, ndim=2, dtype=np.float64), prefix="ncdask-pair-merge",
    )


def pair_grid(A: da.Array, *, kind: str, v: da.Array | None = None, tile_size: int,
              dist_exp: float = 1.0, exponent: float = -1.0, riesz_s: float = 0.0) -> da.Array:
    """The K×K grid of :func:`~ncdask.kernels.pairwise.pair_values`, a chunk per tile pair."""
    K = A.shape[0]
    chunks = tiles(K, tile_size)
    A = A.rechunk((chunks, -1))
    args: list[Any] = [A, "ik", A, "jk"]
    v = None if v is None else v.rechunk((chunks,))
    args += [None, None, None, None] if v is None else [v, "i", v, "j"]
    fn = partial(_grid_task, kind=kind, dist_exp=float(dist_exp), exponent=float(exponent),
                 riesz_s=float(riesz_s))
    return da.blockwise(
        fn, "ij", *args, concatenate=False, align_arrays=False, dtype=A.dtype,
        meta=meta_from_array(A, ndim=2), token=f"ncdask-grid-{kind}",
    )
