"""The class-statistics state and its per-chunk kernels.

The **state**: ``counts``, ``shift`` (each class's first row), shifted ``sums`` and ``m2``,
the D×D ``scatter`` (lower triangle), optionally ``in_scatter``. :func:`fold` adds rows,
:func:`merge` is Chan's update, :func:`centre` removes the shifts (no cancellation)."""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from ncdask.kernels._reduction import Reduction, sum_fields
from ncdask.kernels._xp import array_namespace, to_numpy
from ncdask.kernels.stats import check_labels, class_sums

State = dict[str, Any]
Group = tuple[int, int, int, int]  # (lo, hi, base, n): see _local
DISAGREE = ("the record and the data disagree (a damaged store, or a Dataset whose attrs no "
            "longer describe its rows)")

#: Bytes of one upcast piece of rows: keeps the scatter GEMM at full rate.
PIECE_BYTES = 8 * 2**20
#: Fewest rows of a piece (smaller pieces lose GEMM rate).
PIECE_MIN_ROWS = 1024
#: Columns of one block of the scatter's lower triangle (:func:`scatter_add`).
SCATTER_BLOCK = 512


def piece_rows(dim: int, itemsize: int = 8, piece_bytes: int = PIECE_BYTES) -> int:
    """Rows per upcast piece: ``piece_bytes`` of the accumulation dtype, at least 1024."""
    return max(PIECE_MIN_ROWS, piece_bytes // max(1, dim * itemsize))


def scatter_add(
    S: Any, P: Any, xp: Any, block: int = SCATTER_BLOCK, subtract: bool = False
) -> None:
    """``S += PᵀP`` (``S −= PᵀP`` with ``subtract``) in place, lower triangle only on NumPy. Column
    blocks ``S[j:, j:j+b] += P[:, j:]ᵀ P[:, j:j+b]`` skip most of the upper triangle with a D×block
    temporary. Why not BLAS ``syrk``: scipy's wrapper holds the GIL, so concurrent dask tasks ran
    their scatters one at a time. Other array modules take the full product. :func:`symmetrize`
    gives the matrix."""
    op = xp.subtract if subtract else xp.add
    if xp is not np:
        op(S, P.T @ P, out=S)
        return
    D = S.shape[0]
    P = np.asarray(P, dtype=S.dtype)
    b = min(D, block)
    tmp = np.empty((D, b), dtype=S.dtype)
    for j in range(0, D, b):
        e = min(D, j + b)
        out = tmp[: D - j] if e - j == b else None  # C-contiguous rows of tmp
        op(S[j:, j:e], np.matmul(P[:, j:].T, P[:, j:e], out=out), out=S[j:, j:e])


def symmetrize(S: Any) -> Any:
    """The symmetric matrix whose lower triangle is S's (see :func:`scatter_add`)."""
    xp = array_namespace(S)
    return xp.tril(S) + xp.tril(S, -1).T


def _rows_of(y: Any, n_classes: int, lo: int, hi: int, ignore_index: int | None, xp: Any) -> Any:
    """Indices of the rows whose class is in ``[lo, hi)`` (labels checked first)."""
    keep = check_labels(y, n_classes, ignore_index, xp)
    if lo > 0 or hi < n_classes:
        keep = keep & (y >= lo) & (y < hi)
    return xp.nonzero(keep)[0]


def _square_into(P: Any, loc: Any, mask: Any, m2: Any, scatter: Any, xp: Any) -> None:
    """Add rows ``P`` (accumulator rows ``loc``) into ``m2`` and, where ``mask``, the scatter."""
    m2 += xp.bincount(loc, weights=xp.einsum("ij,ij->i", P, P), minlength=m2.shape[0])
    if mask is not None:
        rows = mask[loc]
        if not bool(xp.all(rows)):
            P = P[rows]
    scatter_add(scatter, P, xp)


def _shifted_pieces(X: Any, idx: Any, loc: Any, shift: Any, step: int, xp: Any):
    """``(s, e, X[idx[s:e]] − shift[loc[s:e]])`` in the shift's dtype, ``step`` rows at a time.
    The gathered shifts are overwritten by the difference: one temporary per piece."""
    n = X.shape[0] if idx is None else int(idx.shape[0])
    if idx is not None and n == X.shape[0]:
        idx = None  # every row, in order: slices instead of gathers
    for s in range(0, n, step):
        e = min(n, s + step)
        P = xp.take(shift, loc[s:e], axis=0)
        xp.subtract(X[s:e] if idx is None else xp.take(X, idx[s:e], axis=0), P, out=P)
        yield s, e, P


def empty(n_classes: int, dim: int, dtype: Any, xp: Any, mask: Any = None) -> State:
    """A state with no rows."""
    dt, KD = np.dtype(dtype), (n_classes, dim)
    out = {"counts": xp.zeros(n_classes, dtype=xp.int64), "shift": xp.zeros(KD, dtype=dt),
           "sums": xp.zeros(KD, dtype=dt), "m2": xp.zeros(n_classes, dtype=dt),
           "scatter": xp.zeros((dim, dim), dtype=dt)}
    if mask is not None:
        out["in_scatter"] = xp.asarray(mask, dtype=bool)
    return out


def fold(
    acc: State | None, X: Any, y: Any, mask: Any = None, *, n_classes: int,
    dtype: Any = np.float64, ignore_index: int | None = None, step: int | None = None,
) -> State:
    """Add a chunk of rows ``X`` with labels ``y`` into the state ``acc`` (None: start one). A
    class new to ``acc`` takes its first row here as its shift (a data value, so ``x − c`` is
    exact; a rounded mean would leave ``n·ulp(μ)`` in the sums). Rows go in pieces of ``step`` rows
    (:func:`piece_rows`), summed per class sparsely when K exceeds a piece. ``mask`` (K bools):
    classes whose rows enter the scatter. Updates ``acc`` in place and returns it."""
    xp = array_namespace(X, y)
    y = xp.asarray(y).astype(xp.int64)
    dt = np.dtype(dtype)
    D = X.shape[1]
    if acc is None:
        acc = empty(n_classes, D, dt, xp, mask)
    idx = _rows_of(y, n_classes, 0, n_classes, ignore_index, xp)
    if idx.shape[0] == 0:
        return acc
    loc = y[idx]
    n_in = xp.bincount(loc, minlength=n_classes)
    new = (n_in > 0) & (acc["counts"] == 0)
    if bool(xp.any(new)):  # classes seen for the first time: shift each by its first row
        rows = xp.nonzero(new[loc])[0]
        ids, first = xp.unique(loc[rows], return_index=True)
        acc["shift"][ids] = xp.asarray(xp.take(X, idx[rows[first]], axis=0), dtype=dt)
    sub = acc.get("in_scatter")
    step = step or piece_rows(D, dt.itemsize)
    for s, e, P in _shifted_pieces(X, idx, loc, acc["shift"], step, xp):
        lp = loc[s:e]
        if n_classes <= e - s:
            acc["sums"] += class_sums(P, lp, n_classes)
        else:  # the piece's classes only: no temporary larger than the piece
            u, inv = xp.unique(lp, return_inverse=True)
            acc["sums"][u] += class_sums(P, inv.reshape(-1), u.shape[0])
        _square_into(P, lp, sub, acc["m2"], acc["scatter"], xp)
    acc["counts"] += n_in.astype(xp.int64)
    return acc


def centre(s: State) -> State:
    """Remove the shifts, in place: each class's shift becomes its mean, its shifted sums 0."""
    xp = array_namespace(s["sums"])
    n = s["counts"]
    rows = xp.nonzero((n > 0) & xp.any(s["sums"] != 0, axis=1))[0]
    if not rows.shape[0]:
        return s
    nf = n[rows].astype(s["sums"].dtype)
    d = s["sums"][rows] / nf[:, None]
    s["m2"][rows] -= nf * xp.einsum("ij,ij->i", d, d)
    s["shift"][rows] += d
    s["sums"][rows] = 0
    if "in_scatter" in s:
        d, nf = d[s["in_scatter"][rows]], nf[s["in_scatter"][rows]]
    scatter_add(s["scatter"], d * xp.sqrt(nf)[:, None], xp, subtract=True)
    return s


def merge(a: State, b: State) -> State:
    """Add the state ``b`` into ``a`` exactly (Chan's pairwise update), in place. ``b``'s rows are
    rebased on ``a``'s shifts: with ``e_k = c_b,k − c_a,k`` and ``u_k = sums_b,k + n_b,k e_k``:
    ``sums += u``, ``m2 += m2_b + e·(sums_b + u)`` and ``S += S_b + Σ_k (u_k u_kᵀ − s_k s_kᵀ) /
    n_b,k`` (classes new to ``a`` take ``b``'s shift). ``b`` is left as it was."""
    xp = array_namespace(a["sums"])
    nb = xp.asarray(b["counts"])
    rows = xp.nonzero(nb > 0)[0]
    if not rows.shape[0]:
        return a
    new = rows[a["counts"][rows] == 0]
    a["shift"][new] = xp.asarray(b["shift"])[new]
    nf = nb[rows].astype(a["sums"].dtype)
    e = xp.asarray(b["shift"])[rows] - a["shift"][rows]
    sb = xp.asarray(b["sums"])[rows]
    u = sb + nf[:, None] * e
    a["sums"][rows] += u
    a["m2"][rows] += xp.asarray(b["m2"])[rows] + xp.einsum("ij,ij->i", e, sb + u)
    a["counts"] += nb
    if "in_scatter" in a:
        keep = a["in_scatter"][rows]
        u, sb, nf = u[keep], sb[keep], nf[keep]
    a["scatter"] += xp.asarray(b["scatter"])
    w = 1 / xp.sqrt(nf)[:, None]
    scatter_add(a["scatter"], u * w, xp)
    if bool(xp.any(sb)):  # a centred b (merge_stats' inputs) has no s_k s_kᵀ to remove
        scatter_add(a["scatter"], sb * w, xp, subtract=True)
    return a


def merge_many(parts: list[State]) -> State:
    """Merge a list of states into the first (each has one reader)."""
    return functools.reduce(merge, parts)


def from_stats(counts: Any, means: Any, var_norms: Any, scatter: Any) -> State:
    """A centred state from finished statistics (``scatter``: ``N Σ_W``, or zeros)."""
    xp = array_namespace(means)
    counts = xp.asarray(counts).astype(xp.int64)
    seen = counts > 0
    return {"counts": counts, "shift": xp.where(seen[:, None], means, 0.0),
            "sums": xp.zeros_like(means),
            "m2": xp.where(seen, var_norms * counts.astype(means.dtype), 0.0),
            "scatter": xp.array(scatter, dtype=means.dtype, copy=True)}


def coarse_state(means: Any, var_norms: Any, counts: Any, groups: Any, *, n_groups: int) -> State:
    """A centred state over ``n_groups`` groups from a tile of finished class statistics
    (class ``k`` in group ``groups[k]``), for :func:`merge`: per group the count ``Σ n_k``, the
    shift ``c_g`` (the tile's count-weighted mean of its classes),
    ``m2 = Σ n_k (v_k + ‖μ_k − c_g‖²)`` and the scatter ``Σ n_k (μ_k − c_g)(μ_k − c_g)ᵀ``
    of the class means about their group's (the classes' own Σ_W is the caller's)."""
    xp = array_namespace(means)
    n = xp.asarray(counts).astype(xp.int64)
    g = xp.asarray(groups).astype(xp.int64)
    have = n > 0
    nf = n.astype(means.dtype)
    mu = xp.where(have[:, None], means, 0.0)
    cnt = xp.rint(xp.bincount(g, weights=n, minlength=n_groups)).astype(xp.int64)
    shift = class_sums(mu * nf[:, None], g, n_groups)
    shift /= xp.where(cnt > 0, cnt, 1).astype(means.dtype)[:, None]
    d = mu - shift[g]
    m2 = nf * (xp.where(have, xp.asarray(var_norms), 0.0) + xp.einsum("ij,ij->i", d, d))
    scatter = xp.zeros((means.shape[1],) * 2, dtype=means.dtype)
    scatter_add(scatter, d * xp.sqrt(nf)[:, None], xp)
    return {"counts": cnt, "shift": shift, "sums": xp.zeros_like(shift),
            "m2": xp.bincount(g, weights=m2, minlength=n_groups).astype(means.dtype),
            "scatter": scatter}


def group_means(counts: Any, sums: Any) -> Any:
    """Means from dense counts and sums (NaN rows for empty classes)."""
    xp = array_namespace(sums)
    present = counts > 0
    means = sums / xp.where(present, counts, 1).astype(sums.dtype)[:, None]
    means[~present] = float("nan")
    return means


def var_norms(m2: Any, counts: Any) -> Any:
    """``m2_k / n_k``, NaN for empty classes."""
    xp = array_namespace(m2)
    present = counts > 0
    return xp.where(present, m2 / xp.where(present, counts, 1).astype(m2.dtype), float("nan"))


def mean_terms(means: Any, counts: Any, used: Any) -> Any:
    """``[Σ_used μ_k (D), Σ_used n_k μ_k (D), #used, Σ_used n_k]``: summed over class
    groups, they give the global mean and ``N`` (:func:`global_terms`)."""
    xp = array_namespace(means)
    u = used & (counts > 0)
    Mu = xp.where(u[:, None], means, 0.0)
    n = xp.where(u, counts, 0).astype(means.dtype)
    tail = xp.stack([xp.sum(u.astype(means.dtype)), xp.sum(n)])
    return xp.concatenate([xp.sum(Mu, axis=0), n @ Mu, tail])


def global_terms(terms: Any, scatter: Any, global_mean: str) -> tuple[Any, Any, Any]:
    """``(global mean, Σ_W, N)`` from summed :func:`mean_terms` and scatter (any array type)."""
    D = scatter.shape[0]
    n = terms[2 * D + 1]
    if global_mean == "unweighted":
        gm = terms[:D] / terms[2 * D].clip(1)
    elif global_mean == "weighted":
        gm = terms[D : 2 * D] / n.clip(1)
    else:
        raise ValueError(f"global_mean must be 'unweighted' or 'weighted', got {global_mean!r}")
    return gm, scatter / n.clip(1), n


def finish(s: State, expect: Any = None) -> dict[str, Any]:
    """A state as ``counts``, ``means``, ``var_norms``, ``scatter`` and ``terms``.
    ``expect``: counts the caller set up with; a mismatch raises ``ValueError``."""
    xp = array_namespace(s["sums"])
    s = centre(s)
    counts = s["counts"]
    check_counts(counts, expect)
    means = xp.where((counts > 0)[:, None], s["shift"], float("nan"))
    used = s.get("in_scatter")
    used = xp.ones(counts.shape[0], dtype=bool) if used is None else used
    return {"counts": counts, "means": means, "var_norms": var_norms(s["m2"], counts),
            "scatter": symmetrize(s["scatter"]), "terms": mean_terms(means, counts, used)}


def check_counts(counts: Any, expect: Any, classes: Any = None) -> None:
    """The counts found in the data must be the counts the statistics were set up with."""
    if expect is None:
        return
    got = np.asarray(to_numpy(counts))
    if not np.array_equal(got, expect):
        k = int(np.nonzero(got != expect)[0][0])
        c = k if classes is None else int(classes[k])
        raise ValueError(f"class {c} has {int(got[k])} samples in the embeddings' labels but "
                         f"{int(expect[k])} in the split's record: {DISAGREE}")


def summary_reduction(**options: Any) -> Reduction:
    """The one-pass plan: :func:`fold` into chains, :func:`merge_many` at their ends."""
    return Reduction(fold=functools.partial(fold, **options), combine=merge_many)


# --------------------------------------------------------------------------- pipelined plan


def _sparse_sums(
    X: Any, cls: Any, idx: Any, dtype: Any, step: int, xp: Any
) -> tuple[Any, Any, Any]:
    """Present classes, their counts and sums over the rows ``idx`` of ``X``.
    Rows are visited in class order, so each piece's one-hot product covers
    a contiguous run of classes and is no larger than the piece."""
    D = X.shape[1]
    if idx.shape[0] == 0:
        return (xp.zeros(0, dtype=xp.int64), xp.zeros(0, dtype=xp.int64),
                xp.zeros((0, D), dtype=dtype))
    ids, inv = xp.unique(cls, return_inverse=True)
    inv = inv.reshape(-1)
    counts = xp.bincount(inv, minlength=ids.shape[0]).astype(xp.int64)
    order = xp.argsort(inv, kind="stable") if xp is np else xp.argsort(inv)
    inv_sorted = inv[order]
    sums = xp.zeros((ids.shape[0], D), dtype=dtype)
    rows = idx[order]
    for s in range(0, int(rows.shape[0]), step):
        e = min(int(rows.shape[0]), s + step)
        P = xp.asarray(xp.take(X, rows[s:e], axis=0), dtype=dtype)
        c0, c1 = int(inv_sorted[s]), int(inv_sorted[e - 1]) + 1
        sums[c0:c1] += class_sums(P, inv_sorted[s:e] - c0, c1 - c0)
    return ids.astype(xp.int64), counts, sums


def _local(cls: Any, group: Group, rank: Any, xp: Any) -> Any:
    """Rows of the classes ``cls`` in the accumulator of ``group = (lo, hi, base, n)``: the
    present classes of ``[lo, hi)``, ``rank[c] − base`` (``rank``: position among all present
    classes, −1 if empty; None for dense groups)."""
    lo, _, base, _ = group
    if rank is None:
        return cls - lo
    loc = xp.asarray(rank)[cls] - base
    bad = loc < 0
    if bool(xp.any(bad)):
        c = int(cls[xp.nonzero(bad)[0][0]])
        raise ValueError(f"class {c} has samples in the embeddings' labels but 0 in the "
                         f"split's record: {DISAGREE}")
    return loc


def fold_stage(
    acc: dict[str, Any] | None, X: Any, y: Any, means: Any = None, rank: Any = None, *,
    n_classes: int, sum_group: Group | None, centre_group: Group | None, mask: Any = None,
    dtype: Any = np.float64, ignore_index: int | None = None, step: int | None = None,
) -> dict[str, Any]:
    """One chunk of a pipelined stage, into ``acc``: the rows of ``sum_group`` into its
    ``counts`` and ``sums``, those of ``centre_group`` centred about that group's ``means``
    into ``m2`` and the scatter (where ``mask``). Rows per present class (:func:`_local`)."""
    xp = array_namespace(X, y)
    y = xp.asarray(y).astype(xp.int64)
    dt = np.dtype(dtype)
    D = X.shape[1]
    step = step or piece_rows(D, dt.itemsize)
    if acc is None:
        acc = {}
        if sum_group is not None:
            acc["counts"] = xp.zeros(sum_group[3], dtype=xp.int64)
            acc["sums"] = xp.zeros((sum_group[3], D), dtype=dt)
        if centre_group is not None:
            acc["m2"] = xp.zeros(centre_group[3], dtype=dt)
            acc["scatter"] = xp.zeros((D, D), dtype=dt)
    if sum_group is not None:
        idx = _rows_of(y, n_classes, sum_group[0], sum_group[1], ignore_index, xp)
        ids, counts, sums = _sparse_sums(X, _local(y[idx], sum_group, rank, xp), idx, dt,
                                         step, xp)
        acc["counts"][ids] += counts
        acc["sums"][ids] += sums
    if centre_group is not None:
        idx = _rows_of(y, n_classes, centre_group[0], centre_group[1], ignore_index, xp)
        loc = _local(y[idx], centre_group, rank, xp)
        means = xp.asarray(means, dtype=dt)
        for s, e, P in _shifted_pieces(X, idx, loc, means, step, xp):
            _square_into(P, loc[s:e], mask, acc["m2"], acc["scatter"], xp)
    return acc


def expand_rows(compact: Any, rank: Any, lo: int, hi: int, base: int) -> Any:
    """Rows ``[lo, hi)`` of a class axis from a group's compact rows (NaN for absent classes)."""
    xp = array_namespace(compact)
    if rank is None:
        return compact[lo - base : hi - base]
    pos = xp.asarray(rank[lo:hi]) - base
    out = xp.full((hi - lo,) + compact.shape[1:], float("nan"), dtype=compact.dtype)
    have = xp.nonzero(pos >= 0)[0]
    out[have] = compact[pos[have]]
    return out


def stage_reduction(**options: Any) -> Reduction:
    """One stage of the pipelined plan: :func:`fold_stage` into chains, summed (all terms
    are final)."""
    return Reduction(fold=functools.partial(fold_stage, **options), combine=sum_fields)
