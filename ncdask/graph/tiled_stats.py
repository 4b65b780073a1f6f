"""Graphs of the class statistics, their class axis chunked by tiles.

Row chunks fold into a few *chains* (one per thread). **One pass** when ``2C + 2`` K×D
arrays fit the budget; else **pipelined passes over class groups**: stage ``s`` sums group
``s`` and centres group ``s − 1``, so G groups cost G + 1 reads."""

from __future__ import annotations

import functools
import operator
from typing import Any

import dask
import dask.array as da
import numpy as np
from dask.array.utils import meta_from_array
from dask.base import tokenize
from dask.delayed import Delayed
from dask.highlevelgraph import HighLevelGraph

from ncdask.graph._reduce import (
    READ_LAG,
    THROTTLE_BYTES,
    fold_rows,
    n_chains,
    row_keys,
    throttled,
)
from ncdask.graph._reduce import chains as fold_chains
from ncdask.graph.closed_forms import nc1_values
from ncdask.kernels import tiled_stats as KT
from ncdask.kernels._reduction import Reduction
from ncdask.kernels._xp import array_namespace

#: Dask config key of the statistics budget (bytes or a string like "1GiB").
STATS_BUDGET_KEY = "ncdask.stats-budget"
#: Default bytes of class partials the statistics pass may hold.
STATS_BUDGET = 3 * 2**29  # 1.5 GiB


def stats_budget(budget: int | str | None = None) -> int:
    """The statistics budget: ``budget``, else the config key, else :data:`STATS_BUDGET`."""
    from ncdask.graph.pairwise import configured_budget

    return configured_budget(budget, STATS_BUDGET_KEY, STATS_BUDGET)


def plan(
    n_classes: int, dim: int, tile: int, *, budget: int, chains: int = 2, itemsize: int = 8,
    present: np.ndarray | None = None,
) -> list[tuple[int, int]] | None:
    """Class groups ``[(lo, hi), ...]`` of the pipelined plan, or None for one pass.
    One pass when ``(2·chains + 2)·K·D·itemsize ≤ budget`` (a state holds shifts and
    sums); else balanced groups of whole tiles of at most ``budget / (chains + 2)``
    bytes of sums each (only present classes, with ``present``)."""
    row = dim * itemsize
    if (2 * chains + 2) * n_classes * row <= budget:
        return None
    cap = max(1, budget // ((chains + 2) * row))
    starts = list(range(0, n_classes, tile))
    if present is None:
        sizes = [min(n_classes, t + tile) - t for t in starts]
    else:
        sizes = np.add.reduceat(np.asarray(present, dtype=np.int64), starts).tolist()
    n_groups = max(1, -(-sum(sizes) // cap))
    target = -(-sum(sizes) // n_groups)
    groups: list[tuple[int, int]] = []
    lo, held = 0, 0
    for t, n in zip(starts, sizes, strict=True):
        if t > lo and (held + n > cap or held >= target):
            groups.append((lo, t))
            lo, held = t, 0
        held += n
    groups.append((lo, n_classes))
    return groups


def _finish_sums(p: dict, classes: np.ndarray, expect: np.ndarray | None) -> dict[str, Any]:
    KT.check_counts(p["counts"], expect, classes)
    return {"counts": p["counts"], "means": KT.group_means(p["counts"], p["sums"])}


def _finish_centred(p: dict, g: dict, used: np.ndarray | None) -> dict[str, Any]:
    xp = array_namespace(g["means"])
    use = xp.ones(g["counts"].shape[0], dtype=bool) if used is None else xp.asarray(used)
    return {"var_norms": KT.var_norms(p["m2"], g["counts"]),
            "scatter": KT.symmetrize(p["scatter"]),
            "terms": KT.mean_terms(g["means"], g["counts"], use)}


def class_tiled_stats(
    X: da.Array, y: da.Array, n_classes: int, *, tile: int, budget: int | str | None = None,
    dtype: Any = np.float64, ignore_index: int | None = None,
    in_scatter: np.ndarray | None = None, global_mean: str = "unweighted",
    chains: int | None = None, expect_counts: np.ndarray | None = None,
) -> dict[str, da.Array]:
    """Lazy class statistics of ``X`` (N, D) with labels ``y``, class axis chunked by ``tile``.

    Parameters
    ----------
    X, y : dask arrays (N, D) and (N,)
        Embeddings and integer labels.
    n_classes, tile : int
        K, and classes per chunk of ``means`` and ``var_norms``.
    budget : int or str, optional
        Bytes of class partials the pass may hold (:func:`stats_budget`).
    dtype : dtype
        Accumulation dtype.
    ignore_index : int, optional
        Label of rows left out.
    in_scatter : array (K,) of bool, optional
        Classes whose rows enter the scatter, ``N`` and the global mean.
    global_mean : {"unweighted", "weighted"}
    chains : int, optional
        Chains of accumulation side by side (default :func:`n_chains`).
    expect_counts : array (K,) of int, optional
        Counts the caller set up with, checked in the pass.

    Returns
    -------
    dict of dask arrays
        ``means (K, D)``, ``var_norms (K,)``, ``global_mean (D,)``,
        ``within_cov (D, D)`` and ``n_samples ()``.
    """
    if tile < 1:
        raise ValueError(f"tile must be a positive integer, got {tile!r}")
    dt = np.dtype(dtype)
    X = X.rechunk({1: -1})
    y = y.rechunk((X.chunks[0],))
    D = int(X.shape[1])
    C = n_chains(X.numblocks[0]) if chains is None else max(1, int(chains))
    budget = stats_budget(budget)
    present = None if expect_counts is None else np.asarray(expect_counts) > 0
    groups = plan(n_classes, D, tile, budget=budget, chains=C, itemsize=dt.itemsize,
                  present=present)
    if groups is not None and C > 1 and plan(n_classes, D, tile, budget=budget, chains=1,
                                             itemsize=dt.itemsize) is None:
        # one read folded by one chain beats G+1 reads (1 GiB, D=512: 4.0 s against 4.8 s)
        C, groups = 1, None
    token = tokenize(X, y, n_classes, dt.str, ignore_index, in_scatter, tile, groups, C,
                     global_mean, expect_counts)
    name = f"ncdask-cstats-{token}"
    kw = dict(n_classes=n_classes, dtype=dt, ignore_index=ignore_index,
              step=KT.piece_rows(D, dt.itemsize))
    y_keys = list(y.__dask_keys__())
    dsk: dict[Any, Any] = {}
    per_group: list[dict[str, Any]] = []  # keys of: means, var_norms, scatter, terms

    def get(key: Any, field: str, tag: str) -> Any:
        out = (f"{name}-get-{tag}", field)
        dsk[out] = (operator.getitem, key, field)
        return out

    def chained(red: Reduction, tag: str, *extra: Any, after: Any = None) -> list[Any]:
        """Fold the chunks into C chains; the chain ends (large inputs read C at a time, a
        pass ``after`` another reads afresh once it is done)."""
        n = X.numblocks[0]
        big = X.nbytes > THROTTLE_BYTES
        blocks = [(xk, yk, *extra) for xk, yk in zip(row_keys(X), y_keys, strict=True)]
        read = throttled(dsk, f"{name}-{tag}-read", (X, y), blocks, C if big else n)
        return fold_chains(dsk, f"{name}-{tag}", red, n, read, n_chains=C,
                           batch=C if big else None, lag=READ_LAG, after=after)

    if groups is None:
        groups = [(0, n_classes)]
        red = KT.summary_reduction(**kw)
        extra = ()
        if in_scatter is not None:  # one graph key, read by every chunk task
            extra = (f"{name}-mask",)
            dsk[extra[0]] = np.asarray(in_scatter, dtype=bool)
        ends = chained(red, "summary", *extra)
        comb = f"{name}-combine"
        dsk[comb] = (red.combine, ends)
        fin = f"{name}-finish"
        dsk[fin] = (KT.finish, comb, expect_counts)
        per_group.append({"means": [(get(fin, "means", "finish"), n_classes)],
                          **{k: get(fin, k, "finish") for k in
                             ("var_norms", "scatter", "terms")}})
    else:
        _pipelined(dsk, name, groups, chained, get, per_group, kw, tile, in_scatter,
                   expect_counts)
    graph = HighLevelGraph.from_collections(name, dsk, dependencies=[X, y])

    def lazy(k: str, v: Any) -> Any:
        if k == "means":
            return [(Delayed(key, graph, layer=name), n) for key, n in v]
        return Delayed(v, graph, layer=name)

    out = [{k: lazy(k, v) for k, v in g.items()} for g in per_group]
    return assemble(out, groups, D, tile, dt, X._meta, global_mean)


def _pipelined(
    dsk: dict, name: str, groups: list[tuple[int, int]], chained: Any, get: Any,
    per_group: list[dict[str, Any]], kw: dict[str, Any], tile: int,
    in_scatter: np.ndarray | None, expect_counts: np.ndarray | None,
) -> None:
    """The stages of the pipelined plan, added to ``dsk`` (see the module docstring)."""
    present = None if expect_counts is None else np.asarray(expect_counts) > 0
    rank_key = None
    if present is not None:
        rank = np.cumsum(present) - 1
        rank[~present] = -1
        rank_key = f"{name}-rank"
        dsk[rank_key] = rank
        before = np.concatenate([[0], np.cumsum(present)])
    full = []  # (lo, hi, base, n) of each group
    for lo, hi in groups:
        if present is None:
            full.append((lo, hi, lo, hi - lo))
        else:
            full.append((lo, hi, int(before[lo]), int(before[hi] - before[lo])))

    def classes(g: tuple[int, int, int, int]) -> np.ndarray:
        ids = np.arange(g[0], g[1])
        return ids if present is None else ids[present[g[0]:g[1]]]

    def compact(v: np.ndarray | None, g: tuple[int, int, int, int]) -> np.ndarray | None:
        return None if v is None else np.asarray(v)[classes(g)]

    sums_fin: list[Any] = []
    G = len(full)
    for s in range(G + 1):
        sum_group = full[s] if s < G else None
        prev = full[s - 1] if s else None
        means_prev = get(sums_fin[s - 1], "means", f"means{s - 1}") if s else None
        mask_prev = None if prev is None else compact(in_scatter, prev)
        red = KT.stage_reduction(sum_group=sum_group, centre_group=prev,
                                 mask=None if mask_prev is None else mask_prev.astype(bool),
                                 **kw)
        comb = f"{name}-combine{s}"
        # stage s reads afresh, and only once group s-1's means exist
        ends = chained(red, f"stage{s}", means_prev, rank_key,
                       after=None if s == 0 else sums_fin[s - 1])
        dsk[comb] = (red.combine, ends)
        if sum_group is not None:
            key = f"{name}-means{s}"
            dsk[key] = (_finish_sums, comb, classes(sum_group),
                        compact(expect_counts, sum_group))
            sums_fin.append(key)
        if prev is not None:
            lo, hi, base, _ = prev
            fin = f"{name}-finish{s}"
            dsk[fin] = (_finish_centred, comb, sums_fin[s - 1], mask_prev)
            pieces = []
            for t0 in range(lo, hi, tile):
                t1 = min(hi, t0 + tile)
                key = (f"{name}-means-tile", t0)
                dsk[key] = (KT.expand_rows, means_prev, rank_key, t0, t1, base)
                pieces.append((key, t1 - t0))
            vn = f"{name}-var-norms{s}"
            dsk[vn] = (KT.expand_rows, get(fin, "var_norms", f"finish{s}"), rank_key, lo, hi,
                       base)
            per_group.append({"means": pieces, "var_norms": vn,
                              **{k: get(fin, k, f"finish{s}") for k in ("scatter", "terms")}})


def assemble(
    per_group: list[dict[str, Any]], groups: list[tuple[int, int]], D: int, tile: int,
    dt: np.dtype, meta: Any, global_mean: str,
) -> dict[str, da.Array]:
    """The lazy statistics from each class group's delayed pieces (``means`` as
    ``[(delayed, rows), ...]``, ``var_norms``, ``scatter``, ``terms``), rechunked to ``tile``."""

    def arr(d: Any, shape: tuple[int, ...]) -> da.Array:
        return da.from_delayed(d, shape=shape, dtype=dt,
                               meta=meta_from_array(meta, ndim=len(shape), dtype=dt))

    sizes = [hi - lo for lo, hi in groups]
    pairs = list(zip(per_group, sizes, strict=True))
    means = da.concatenate([arr(k, (n, D)) for g in per_group for k, n in g["means"]])
    vn = da.concatenate([arr(g["var_norms"], (n,)) for g, n in pairs])
    tiles = tuple(min(tile, sum(sizes) - s) for s in range(0, sum(sizes), tile))
    means = means.rechunk((tiles, D))
    vn = vn.rechunk((tiles,))
    scatter = da.stack([arr(g["scatter"], (D, D)) for g in per_group]).sum(axis=0)
    terms = da.stack([arr(g["terms"], (2 * D + 2,)) for g in per_group]).sum(axis=0)
    gm, within_cov, n = KT.global_terms(terms, scatter, global_mean)
    return {"means": means, "var_norms": vn, "global_mean": gm, "within_cov": within_cov,
            "n_samples": n.astype(np.int64)}


def _merge_tile(Ma: Any, va: Any, Mb: Any, vb: Any, na: np.ndarray, nb: np.ndarray,
                Sa: Any = None, Sb: Any = None) -> dict[str, Any]:
    """One class tile of two sets' statistics merged (:func:`ncdask.kernels.tiled_stats.merge`)."""
    xp = array_namespace(Ma)
    D = Ma.shape[1]
    zero = xp.zeros((D, D), dtype=Ma.dtype)
    a = KT.from_stats(xp.asarray(na), Ma, va, zero if Sa is None else Sa)
    b = KT.from_stats(xp.asarray(nb), xp.asarray(Mb), xp.asarray(vb), zero if Sb is None else Sb)
    return KT.finish(KT.merge(a, b))


def merge_tiled(
    a: dict[str, Any], b: dict[str, Any], na: np.ndarray, nb: np.ndarray, *, global_mean: str
) -> dict[str, da.Array]:
    """Statistics of the union of two sets (dask ``means``, ``var_norms``, ``within_cov``,
    int ``n_samples``; counts ``na``, ``nb``), one task per class tile (no K×D task)."""
    Ma = a["means"]
    tiles = Ma.chunks[0]
    parts = [Ma, a["var_norms"].rechunk((tiles,)), b["means"].rechunk(Ma.chunks),
             b["var_norms"].rechunk((tiles,))]
    # unoptimised: a fused copy of a pass would run its in-place combine twice
    blocks = [x.to_delayed(optimize_graph=False).ravel() for x in parts]
    Sa, Sb = ((s["within_cov"] * s["n_samples"]).rechunk(-1).to_delayed(optimize_graph=False)
              .ravel()[0] for s in (a, b))
    merge_one = dask.delayed(_merge_tile, pure=True)
    per_group, groups, lo = [], [], 0
    for i, n in enumerate(tiles):
        sl = slice(lo, lo + n)
        fin = merge_one(*(bl[i] for bl in blocks), na[sl], nb[sl],
                        *((Sa, Sb) if i == 0 else ()))
        per_group.append({"means": [(fin["means"], n)],
                          **{k: fin[k] for k in ("var_norms", "scatter", "terms")}})
        groups.append((lo, lo + n))
        lo += n
    D = Ma.shape[1]
    return assemble(per_group, groups, D, max(tiles), Ma.dtype, Ma._meta, global_mean)


def coarsen_tiled(
    means: da.Array, var_norms: da.Array, counts: np.ndarray, groups: np.ndarray,
    n_groups: int, *, global_mean: str, split_every: int = 8,
) -> dict[str, da.Array]:
    """The statistics of the groups ``groups`` (K ints in ``[0, n_groups)``) of the classes from
    their ``means``, ``var_norms`` and ``counts``: one :func:`~ncdask.kernels.tiled_stats.
    coarse_state` per class tile, merged in a tree (n_groups×D partials, no K×D task).
    ``within_cov`` is the scatter of the class means about their group means over N only:
    the classes' own Σ_W is the caller's to add."""
    tiles = means.chunks[0]
    blocks = [means.rechunk({1: -1}), var_norms.rechunk((tiles,)),
              da.from_array(counts, chunks=(tiles,)), da.from_array(groups, chunks=(tiles,))]
    red = Reduction(chunk=functools.partial(KT.coarse_state, n_groups=n_groups),
                    combine=KT.merge_many, finalize=KT.finish)
    fin = fold_rows(red, *blocks, split_every=split_every, token=n_groups,
                    prefix="ncdask-coarsen")
    part = {"means": [(fin["means"], n_groups)],
            **{k: fin[k] for k in ("var_norms", "scatter", "terms")}}
    return assemble([part], [(0, n_groups)], means.shape[1], min(max(tiles), n_groups),
                    means.dtype, means._meta, global_mean)


def _one_class_labels(yo: Any, ignore_index: int | None) -> Any:
    """Every label 0 (one class), except ``ignore_index``."""
    xp = array_namespace(yo)
    zero = xp.zeros(yo.shape, dtype=xp.int64)
    return zero if ignore_index is None else xp.where(yo == ignore_index, ignore_index, zero)


def one_class_stats(
    X: da.Array, y: da.Array | None = None, *, ignore_index: int | None = None
) -> tuple[da.Array, da.Array, da.Array]:
    """``(n, μ (1, D), Σ)`` of the rows of ``X`` as one class (``K=1`` of the statistics),
    leaving out those labelled ``ignore_index`` in ``y``."""
    X = X.rechunk({1: -1})
    like = meta_from_array(X._meta, ndim=1, dtype=np.int64)
    if y is None or ignore_index is None:
        y = da.zeros(X.shape[0], chunks=(X.chunks[0],), dtype=np.int64)
        y = y.map_blocks(array_namespace(X._meta).asarray, meta=like)
    else:
        y = y.rechunk((X.chunks[0],)).map_blocks(_one_class_labels, ignore_index,
                                                 dtype=np.int64, meta=like)
    st = class_tiled_stats(X, y, 1, tile=1, dtype=np.float64, ignore_index=ignore_index)
    return st["n_samples"].astype(np.float64), st["means"], st["within_cov"]


def ood_class_nc1(
    M: da.Array, Sw: da.Array, n_id: int, n_k: np.ndarray, ood: tuple[Any, Any, Any], *,
    global_mean: str = "unweighted", eps_dtype: Any = None,
) -> da.Array:
    """Lazy ``nc1_pinv`` of the K classes of ``M`` (counts ``n_k``) plus an OOD class. ``ood =
    (n_o, μ_o (1, D), Σ_o)`` (:func:`one_class_stats`): ``Σ_W' = (n_id Σ_W + n_o Σ_o) / (n_id +
    n_o)``, the means gain ``μ_o``, the global mean is over the K+1 means (or count-weighted), then
    ``nc1_pinv`` (``eps_dtype``: :func:`ncdask.graph.closed_forms.nc1_values`). Ammar et al.
    (2024), NECO, ICLR, Appendix D."""
    n_o, mu_o, Sw_o = ood
    Sw2 = (Sw * float(n_id) + Sw_o * n_o) / (float(n_id) + n_o)
    M2 = da.concatenate([M, mu_o.rechunk((1, -1))], axis=0)
    if global_mean == "weighted":
        nk = da.from_array(n_k.astype(np.float64), chunks=(M.chunks[0],)).map_blocks(
            array_namespace(M._meta).asarray, meta=meta_from_array(M._meta, ndim=1))
        mG2 = ((M * nk[:, None]).sum(axis=0) + mu_o[0] * n_o) / (float(n_k.sum()) + n_o)
    else:
        mG2 = M2.mean(axis=0)
    return nc1_values(M2 - mG2[None, :], Sw2, want_svd=False, eps_dtype=eps_dtype)[0]
