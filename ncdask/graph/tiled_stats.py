"""Graphs of the class statistics whose class axis is chunked by tiles.

Two plans, chosen by :func:`plan` from K·D and the statistics budget:

Both fold the row chunks into a few *chains* (one per worker thread):
chunk ``i`` adds itself into the accumulator left by chunk ``i − C`` of its
chain, and one task combines the chain ends. A tree over the chunks would
keep a partial per chunk alive, and each holds a D×D scatter (128 MiB at
D=4096; measured at K=100k, D=2048: 3.0 GiB peak with a tree of sparse
partials, see ``benchmarks/bench_vocab.py``).

**One pass** (K·D small): each chain accumulates dense K-row statistics;
a chunk's rows are read once about a shift near their class mean (the
chain's running mean of the class, or one of its rows) and added with
Chan's exact update (:func:`ncdask.kernels.tiled_stats.fold_summary`).
Chosen when ``C + 2`` K×D arrays fit the budget.

**Pipelined two passes over class groups** (K·D large: language-model
vocabularies). The class axis is cut into groups of whole tiles whose K×D
part fits ``budget / (C + 2)``. Stage ``s`` reads every row chunk once
and, in the same task, (a) sums the rows of group ``s`` and (b) centres the
rows of group ``s − 1`` about that group's final means (known from stage
``s − 1``) for the D×D scatter and ``m2``. G groups cost G + 1 reads of the
embeddings and one scatter GEMM per row, with no cross terms. Accumulators
hold rows only for the classes the counts say are present (see
:func:`_pipelined`): at K=100k, D=2048 with 44% of the classes empty that
took the pass from 6 reads to 4 (``benchmarks/bench_vocab.py``: 3.1× to
2.2× the sum of the I/O and GEMM floors).

Why not one pass with per-group trees of Chan merges (the design sketch)?
The cross terms cost ``2·D²`` flops per (chunk, class) pair beyond the first
and most classes of a vocabulary are rare, so they add up to another
``2·N·D²`` (a second scatter GEMM) while an extra read of a row costs
``itemsize·D`` bytes: at this machine's rates (dgemm 80 GFLOP/s, reads
≈1 GiB/s) the cross terms of a row cost ``D / 160`` times its read, 3× at
D=512 and 13× at D=2048. And one pass over all groups at once must keep
every group's partial sums alive until the last chunk, K×D again.

Stage ``s``'s chunk reads are clones of the embeddings' graph made to wait
for group ``s − 1``'s means (:func:`dask.graph_manipulation.bind`), so a
chunk is never held from one stage to the next and a stage's reads do not
start before they can be used.
"""

from __future__ import annotations

from typing import Any

import dask.array as da
import numpy as np
from dask.array.utils import meta_from_array
from dask.base import tokenize
from dask.delayed import Delayed
from dask.highlevelgraph import HighLevelGraph

from ncdask.kernels import tiled_stats as KT
from ncdask.kernels._reduction import Reduction
from ncdask.kernels._xp import array_namespace, to_numpy
from ncdask.graph._reduce import READ_LAG, gate, n_chains
from ncdask.graph._reduce import chains as fold_chains
from ncdask.graph.closed_forms import gram

#: Dask config key of the statistics budget (bytes or a string like "1GiB").
STATS_BUDGET_KEY = "ncdask.stats.core-budget"
#: Default bytes the statistics pass may hold in its class partials (besides
#: the row chunks in flight and the D×D scatters).
STATS_BUDGET = 3 * 2**29  # 1.5 GiB


def stats_budget(budget: int | str | None = None) -> int:
    """The statistics budget: ``budget``, else the config key, else :data:`STATS_BUDGET`."""
    from ncdask.graph.pairwise import configured_budget

    return configured_budget(budget, STATS_BUDGET_KEY, STATS_BUDGET)


#: Inputs larger than this have their reads throttled to the folds' progress
#: (see ``chained`` in :func:`class_tiled_stats`); below it, reads running
#: ahead cost at most this much, and a bind per batch of C chunks would cost
#: more graph-building time than it saves.
THROTTLE_BYTES = 256 * 2**20


def plan(
    n_classes: int, dim: int, tile: int, *, budget: int, chains: int = 2, itemsize: int = 8,
    present: np.ndarray | None = None,
) -> list[tuple[int, int]] | None:
    """Class groups ``[(lo, hi), ...]`` of the pipelined plan, or None for one pass.

    One pass when ``(chains + 2)·K·D·itemsize ≤ budget`` (an accumulator per
    chain, their merge and the means); else groups of whole tiles holding at
    most ``budget / (chains + 2)`` bytes of accumulator rows each (at least
    one tile): one group's sums per chain, plus the previous group's means
    and the next group's being finished. With ``present`` (K bools: classes
    the record says have samples) only present classes take accumulator
    rows, and the groups are balanced to hold about as many each.
    """
    row = dim * itemsize
    if (chains + 2) * n_classes * row <= budget:
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


def _check_counts(counts: Any, expect: np.ndarray | None, classes: np.ndarray | None) -> None:
    """The counts found in the data must be the counts the statistics were set up with."""
    if expect is None:
        return
    got = np.asarray(to_numpy(counts))
    if not np.array_equal(got, expect):
        k = int(np.nonzero(got != expect)[0][0])
        c = k if classes is None else int(classes[k])
        raise ValueError(
            f"class {c} has {int(got[k])} samples in the embeddings' labels but "
            f"{int(expect[k])} in the split's record: the record and the data disagree "
            "(a damaged store, or a Dataset whose attrs no longer describe its rows)"
        )


def finish_dense(p: dict, used: np.ndarray | None, expect: np.ndarray | None) -> dict:
    """The one-pass plan's merged accumulator as ``means``, ``var_norms``, ``scatter``, ``terms``.

    ``used``: classes whose rows enter N and the global mean (None: all);
    ``expect``: the counts the caller set up with (checked, see ``expect_counts``).
    Also :class:`ncdask.StatsAccumulator`'s last step.
    """
    xp = array_namespace(p["sums"])
    _check_counts(p["counts"], expect, None)
    means = KT.group_means(p["counts"], p["sums"])
    n = p["counts"].shape[0]
    use = xp.ones(n, dtype=bool) if used is None else xp.asarray(used)
    return {
        "means": means,
        "var_norms": KT.var_norms(p["m2"], p["counts"]),
        "scatter": KT.symmetrize(p["scatter"]),
        "terms": KT.mean_terms(means, p["counts"], use),
    }


def _finish_sums(p: dict, classes: np.ndarray, expect: np.ndarray | None) -> dict[str, Any]:
    _check_counts(p["counts"], expect, classes)
    return {"counts": p["counts"], "means": KT.group_means(p["counts"], p["sums"])}


def _finish_centred(p: dict, g: dict, used: np.ndarray | None) -> dict[str, Any]:
    xp = array_namespace(g["means"])
    n = g["counts"].shape[0]
    use = xp.ones(n, dtype=bool) if used is None else xp.asarray(used)
    return {
        "var_norms": KT.var_norms(p["m2"], g["counts"]),
        "scatter": KT.symmetrize(p["scatter"]),
        "terms": KT.mean_terms(g["means"], g["counts"], use),
    }


def _get(d: dict, key: str) -> Any:
    return d[key]


def class_tiled_stats(
    X: da.Array,
    y: da.Array,
    n_classes: int,
    *,
    tile: int,
    budget: int | str | None = None,
    dtype: Any = np.float64,
    ignore_index: int | None = None,
    in_scatter: np.ndarray | None = None,
    global_mean: str = "unweighted",
    chains: int | None = None,
    expect_counts: np.ndarray | None = None,
) -> dict[str, da.Array]:
    """Lazy class statistics whose class axis is chunked by ``tile``.

    Parameters
    ----------
    X : dask array (N, D)
        Embeddings (any float dtype; upcast to ``dtype`` piece by piece).
    y : dask array (N,)
        Integer labels.
    n_classes : int
        K.
    tile : int
        Classes per output chunk of ``means`` and ``var_norms``.
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
        Chains of accumulation run side by side (default :func:`n_chains`).
    expect_counts : array (K,) of int, optional
        Counts the caller set up with; a mismatch with the data raises
        ``ValueError`` when the pass runs.

    Returns
    -------
    dict of dask arrays
        ``means (K, D)`` and ``var_norms (K,)`` chunked by ``tile``;
        ``global_mean (D,)``, ``within_cov (D, D)`` and ``n_samples ()``.
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
    token = tokenize(X, y, n_classes, dt.str, ignore_index, in_scatter, tile, groups, C,
                     global_mean, expect_counts)
    name = f"ncdask-cstats-{token}"
    kw = dict(n_classes=n_classes, dtype=dt, ignore_index=ignore_index,
              step=KT.piece_rows(D, dt.itemsize))
    y_keys = list(y.__dask_keys__())
    dsk: dict[Any, Any] = {}
    deps: list[Any] = [X, y]
    per_group: list[dict[str, Any]] = []  # keys of: means, var_norms, scatter, terms

    def get(key: Any, field: str, tag: str) -> Any:
        out = (f"{name}-get-{tag}", field)
        dsk[out] = (_get, key, field)
        return out

    def chained(red: Reduction, tag: str, *extra: Any, after: Any = None) -> list[Any]:
        """Fold the chunks into C chains (:func:`ncdask.graph._reduce.chains`); the chain ends.

        Large inputs have their reads throttled, a batch of C chunks at a
        time (see ``chains``); small ones are one batch, one bind per stage.
        """
        n = X.numblocks[0]

        def read(lo: int, hi: int, wait: list[Any]) -> list[tuple[Any, ...]]:
            Xb = gate(dsk, f"{name}-{tag}-wait{lo}", X.blocks[lo:hi], wait,
                      seed=f"{token}-{tag}-{lo}")
            deps.append(Xb)
            return [(k[0], y_keys[lo + j], *extra) for j, k in enumerate(Xb.__dask_keys__())]

        return fold_chains(dsk, f"{name}-{tag}", red, n, read, n_chains=C,
                           batch=C if X.nbytes > THROTTLE_BYTES else None, lag=READ_LAG,
                           after=after)

    if groups is None:
        groups = [(0, n_classes)]
        mask = None if in_scatter is None else np.asarray(in_scatter, dtype=bool)
        red = KT.summary_reduction(mask=mask, **kw)
        ends = chained(red, "summary")
        comb = f"{name}-combine"
        dsk[comb] = (red.combine, ends)
        fin = f"{name}-finish"
        dsk[fin] = (finish_dense, comb, mask, expect_counts)
        per_group.append({"means": [(get(fin, "means", "finish"), n_classes)],
                          **{k: get(fin, k, "finish") for k in
                             ("var_norms", "scatter", "terms")}})
    else:
        _pipelined(dsk, name, groups, chained, get, per_group, kw, tile, in_scatter,
                   expect_counts)
    graph = HighLevelGraph.from_collections(name, dsk, dependencies=deps)
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
    """The stages of the pipelined plan, added to ``dsk`` (see the module docstring).

    With known counts, a group's accumulators hold only the classes the
    counts say are present (``rank``: each class's position among them, −1
    for an empty class), so a vocabulary's empty classes cost no memory and
    its groups are fewer. ``per_group`` gets, per group, its ``means`` as
    tile-sized pieces ``[(key, rows), ...]`` and keys of the rest.
    """
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
            per_group.append({
                "means": pieces, "var_norms": vn,
                **{k: get(fin, k, f"finish{s}") for k in ("scatter", "terms")},
            })


def assemble(
    per_group: list[dict[str, Any]],
    groups: list[tuple[int, int]],
    D: int,
    tile: int,
    dt: np.dtype,
    meta: Any,
    global_mean: str,
) -> dict[str, da.Array]:
    """The lazy statistics (:func:`class_tiled_stats`'s result) from each class group's pieces.

    ``per_group`` holds, per group of ``groups``, its ``means`` as
    ``[(delayed, rows), ...]`` and delayed ``var_norms``, ``scatter`` and
    ``terms``; the means and variance norms are rechunked to ``tile`` classes.
    """

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
    n = terms[2 * D + 1]
    if global_mean == "unweighted":
        gm = terms[:D] / da.maximum(terms[2 * D], 1.0)
    elif global_mean == "weighted":
        gm = terms[D : 2 * D] / da.maximum(n, 1.0)
    else:
        raise ValueError(f"global_mean must be 'unweighted' or 'weighted', got {global_mean!r}")
    return {
        "means": means,
        "var_norms": vn,
        "global_mean": gm,
        "within_cov": scatter / da.maximum(n, 1.0),
        "n_samples": n.astype(np.int64),
    }


def _vec(values: np.ndarray, chunks: tuple, like: da.Array) -> da.Array:
    """A NumPy vector as a dask array with ``chunks``, on ``like``'s array module."""
    v = da.from_array(values, chunks=(chunks,))
    if type(like._meta) is not np.ndarray:
        xp = array_namespace(like._meta)
        v = v.map_blocks(xp.asarray, meta=meta_from_array(like._meta, ndim=1,
                                                           dtype=values.dtype))
    return v


def merge_tiled(
    a: dict[str, Any], b: dict[str, Any], na: np.ndarray, nb: np.ndarray, *, global_mean: str
) -> dict[str, da.Array]:
    """Statistics of the union of two sets, tile by tile (no K×D task).

    ``a`` and ``b`` hold dask ``means``, ``var_norms``, ``within_cov`` and the
    integer ``n_samples``; ``na``, ``nb`` the counts. With ``n = n_a + n_b``,
    ``w = n_a n_b / n`` and ``δ = μ_b − μ_a`` for classes on both sides:
    ``μ = (n_a μ_a + n_b μ_b)/n``, ``n v = n_a v_a + n_b v_b + w‖δ‖²`` and
    ``N Σ_W = N_a Σ_a + N_b Σ_b + Σ_k w_k δ_k δ_kᵀ`` (a blocked GEMM summed
    over the class tiles): centred terms only, exact in the terminal phase.
    """
    Ma = a["means"]
    chunks = Ma.chunks[0]
    Mb = b["means"].rechunk(Ma.chunks)
    dt = Ma.dtype
    n = na + nb
    safe = np.maximum(n, 1).astype(dt)
    both = (na > 0) & (nb > 0)
    wa, wb = _vec(na / safe, chunks, Ma), _vec(nb / safe, chunks, Ma)
    has_a, has_b = _vec(na > 0, chunks, Ma), _vec(nb > 0, chunks, Ma)
    present = _vec(n > 0, chunks, Ma)
    mean = (da.where(has_a[:, None], Ma, 0.0) * wa[:, None]
            + da.where(has_b[:, None], Mb, 0.0) * wb[:, None])
    mean = da.where(present[:, None], mean, np.nan)
    delta = da.where(_vec(both, chunks, Ma)[:, None], Mb - Ma, 0.0)
    w = _vec(np.where(both, na * nb / safe, 0.0).astype(dt), chunks, Ma)
    va = da.where(has_a, a["var_norms"].rechunk((chunks,)), 0.0)
    vb = da.where(has_b, b["var_norms"].rechunk((chunks,)), 0.0)
    vn = (wa * va + wb * vb + w / _vec(safe, chunks, Ma) * (delta * delta).sum(axis=1))
    vn = da.where(present, vn, np.nan)
    dw = delta * da.sqrt(w)[:, None]
    N_a, N_b = int(a["n_samples"]), int(b["n_samples"])
    N = max(N_a + N_b, 1)
    Sw = (a["within_cov"] * N_a + b["within_cov"] * N_b + gram(dw)) / N
    if global_mean == "unweighted":
        gm = da.where(present[:, None], mean, 0.0).sum(axis=0) / max(int((n > 0).sum()), 1)
    elif global_mean == "weighted":
        gm = (da.where(present[:, None], mean, 0.0) * _vec(n.astype(dt), chunks, Ma)[:, None]
              ).sum(axis=0) / N
    else:
        raise ValueError(f"global_mean must be 'unweighted' or 'weighted', got {global_mean!r}")
    return {"means": mean, "var_norms": vn, "within_cov": Sw, "global_mean": gm}
