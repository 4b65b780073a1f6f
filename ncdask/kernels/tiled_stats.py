"""Per-chunk kernels of the class statistics tiled over classes.

Every kernel here reads one row chunk and adds it into a running
*accumulator*, the result of the previous chunk of the same chain (the
graph runs a few chains side by side and combines their ends), so a pass
holds one accumulator per chain instead of one partial per chunk: at D=4096
a chunk's D×D scatter alone is 128 MiB.

:func:`fold_summary` (the one-pass plan)
    dense K-row ``counts``, ``sums``, ``m2`` and the D×D ``scatter``; each
    chunk's classes are first summarised sparsely (at most its rows × D)
    about the chunk's own means, then merged with Chan's exact update.
:func:`fold_stage` (the pipelined plan, one class group ``[lo, hi)`` at a time)
    dense ``counts`` and ``sums`` of one group, and ``m2`` and the scatter
    of the previous group's rows about that group's final means (no cross
    terms).

Rows are upcast to the accumulation dtype in pieces of about
:data:`PIECE_BYTES` (float16/bfloat16-sized stores keep their halved I/O and
never hold a float64 copy of a whole chunk).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any

import numpy as np

from ncdask.kernels._reduction import Reduction, sum_fields
from ncdask.kernels._xp import array_namespace
from ncdask.kernels.stats import check_labels, class_sums, merge_many

#: Bytes of one upcast piece of rows (float64). Pieces of 8 MiB keep the
#: scatter GEMM at full rate (≥ 256 rows at D ≤ 4096) while the upcast copy
#: stays a small fraction of a 64 MiB chunk.
PIECE_BYTES = 8 * 2**20


#: Fewest rows of a piece: below 1024 rows the GEMMs of the blocked scatter
#: and its D×block adds lost rate (D=2048, 2 threads: 512-row pieces 88,
#: 1024-row pieces 98 GEMM-equivalent GFLOP/s).
PIECE_MIN_ROWS = 1024


def piece_rows(dim: int, itemsize: int = 8, piece_bytes: int = PIECE_BYTES) -> int:
    """Rows per upcast piece: ``piece_bytes`` of the accumulation dtype, at least 1024."""
    return max(PIECE_MIN_ROWS, piece_bytes // max(1, dim * itemsize))


def _rows_of(
    y: Any, n_classes: int, lo: int, hi: int, ignore_index: int | None, xp: Any
) -> Any:
    """Indices of the rows whose class is in ``[lo, hi)`` (labels checked first)."""
    keep = check_labels(y, n_classes, ignore_index, xp)
    if lo > 0 or hi < n_classes:
        keep = keep & (y >= lo) & (y < hi)
    return xp.nonzero(keep)[0]


def _pieces(X: Any, idx: Any, dtype: Any, step: int) -> Iterator[tuple[int, int, Any]]:
    """``(s, e, X[idx[s:e]])`` upcast to ``dtype`` (a private copy), ``step`` rows at a time.

    ``idx=None`` means every row in order (slices, no gather).
    """
    xp = array_namespace(X)
    n = X.shape[0] if idx is None else int(idx.shape[0])
    for s in range(0, n, step):
        e = min(n, s + step)
        if idx is None:
            P = xp.array(X[s:e], dtype=dtype, copy=True)
        else:
            P = xp.asarray(xp.take(X, idx[s:e], axis=0), dtype=dtype)
        yield s, e, P


def _sparse_sums(
    X: Any, cls: Any, idx: Any, dtype: Any, step: int, xp: Any
) -> tuple[Any, Any, Any]:
    """Present classes, their counts and sums over the rows ``idx`` of ``X``.

    The rows are visited in class order, so each piece's one-hot product
    covers a contiguous run of classes and its result is no larger than the
    piece.
    """
    D = X.shape[1]
    if idx.shape[0] == 0:
        return (xp.zeros(0, dtype=xp.int64), xp.zeros(0, dtype=xp.int64),
                xp.zeros((0, D), dtype=dtype))
    ids, inv = xp.unique(cls, return_inverse=True)
    inv = inv.reshape(-1)
    counts = xp.bincount(inv, minlength=ids.shape[0]).astype(xp.int64)
    order = xp.argsort(inv, kind="stable") if xp is np else xp.argsort(inv)
    inv_sorted = inv[order]
    rows = idx[order]
    sums = xp.zeros((ids.shape[0], D), dtype=dtype)
    for s, e, P in _pieces(X, rows, dtype, step):
        c0, c1 = int(inv_sorted[s]), int(inv_sorted[e - 1]) + 1
        sums[c0:c1] += class_sums(P, inv_sorted[s:e] - c0, c1 - c0)
    return ids.astype(xp.int64), counts, sums


#: Columns of one block of the scatter's lower triangle (:func:`scatter_add`).
SCATTER_BLOCK = 512


def scatter_add(
    S: Any, P: Any, xp: Any, block: int = SCATTER_BLOCK, subtract: bool = False
) -> None:
    """``S += PᵀP`` (``S −= PᵀP`` with ``subtract``) in place, **lower triangle** only.

    On NumPy the lower triangle is updated by column blocks of ``block``
    columns, ``S[j:, j:j+b] += P[:, j:]ᵀ P[:, j:j+b]``: NumPy's ``matmul``
    releases the GIL, the flops fall towards half of ``PᵀP`` as D grows
    (0.75 at D=1024, 0.56 at D=4096) and the temporary is D×block, not D×D.
    Why not BLAS ``syrk`` (half the flops, no temporary) through
    ``scipy.linalg.blas``: its f2py wrapper holds the GIL, so concurrent dask
    tasks ran their scatters one at a time. Measured on the 2-core machine,
    one BLAS thread per task, GEMM-equivalent GFLOP/s of 1 thread / 2 threads
    together: D=512 (2048-row pieces) syrk 57/48, blocks 52/101; D=4096
    (512 rows) syrk 94/80, blocks 47/83; the 1 GiB statistics pass (K=1000,
    D=512; A/B in one process, medians of 3 runs) went from 9.9 s
    to 8.3 s. Other
    array modules (CuPy) take the full product. Call :func:`symmetrize` on
    the final sum.
    """
    if xp is not np:
        if subtract:
            S -= P.T @ P
        else:
            S += P.T @ P
        return
    D = S.shape[0]
    P = np.asarray(P, dtype=S.dtype)
    b = min(D, block)
    tmp = np.empty((D, b), dtype=S.dtype)
    for j in range(0, D, b):
        e = min(D, j + b)
        out = tmp[: D - j] if e - j == b else None  # C-contiguous rows of tmp
        T = np.matmul(P[:, j:].T, P[:, j:e], out=out)
        if subtract:
            S[j:, j:e] -= T
        else:
            S[j:, j:e] += T


def symmetrize(S: Any) -> Any:
    """The symmetric matrix whose lower triangle is S's (see :func:`scatter_add`)."""
    xp = array_namespace(S)
    return xp.tril(S) + xp.tril(S, -1).T


def _square_into(P: Any, loc: Any, mask: Any, m2: Any, scatter: Any, xp: Any) -> None:
    """Add rows ``P`` (accumulator rows ``loc``) into ``m2`` and, where ``mask``, the scatter."""
    m2 += xp.bincount(loc, weights=xp.einsum("ij,ij->i", P, P), minlength=m2.shape[0])
    if mask is not None:
        rows = mask[loc]
        if not bool(xp.all(rows)):
            P = P[rows]
    scatter_add(scatter, P, xp)


def _centred(
    X: Any,
    idx: Any,
    local: Any,
    means: Any,
    mask: Any,
    dtype: Any,
    step: int,
    xp: Any,
    m2: Any,
    scatter: Any,
) -> None:
    """Add the rows ``idx`` centred about ``means[local]`` into ``m2`` and ``scatter``."""
    if idx.shape[0] == X.shape[0]:
        idx = None  # every row, in order: slices instead of gathers
    for s, e, P in _pieces(X, idx, dtype, step):
        loc = local[s:e]
        P -= means[loc]
        _square_into(P, loc, mask, m2, scatter, xp)


def _local(cls: Any, group: tuple[int, int, int, int], rank: Any, xp: Any) -> Any:
    """Row positions of the classes ``cls`` in a group's compact accumulator.

    ``group = (lo, hi, base, n)``: classes ``[lo, hi)`` whose present ones
    are accumulator rows ``[0, n)``; ``rank[c]`` is class ``c``'s position
    among every present class (−1 when the record says it has no samples),
    or ``rank`` is None for dense groups (``n = hi − lo``).
    """
    lo, _, base, _ = group
    if rank is None:
        return cls - lo
    loc = xp.asarray(rank)[cls] - base
    bad = loc < 0
    if bool(xp.any(bad)):
        c = int(cls[xp.nonzero(bad)[0][0]])
        raise ValueError(
            f"class {c} has samples in the embeddings' labels but 0 in the split's "
            "record: the record and the data disagree (a damaged store, or a Dataset "
            "whose attrs no longer describe its rows)"
        )
    return loc


def fold_stage(
    acc: dict[str, Any] | None,
    X: Any,
    y: Any,
    means: Any = None,
    rank: Any = None,
    *,
    n_classes: int,
    sum_group: tuple[int, int, int, int] | None,
    centre_group: tuple[int, int, int, int] | None,
    mask: Any = None,
    dtype: Any = np.float64,
    ignore_index: int | None = None,
    step: int | None = None,
) -> dict[str, Any]:
    """One read of a chunk for the pipelined plan, added into a running accumulator.

    Sums the rows of the classes of ``sum_group`` into ``counts`` and
    ``sums`` and adds the rows of ``centre_group``, centred about that
    group's final ``means``, into ``m2`` and the D×D ``scatter`` (only rows
    whose accumulator row is in ``mask`` enter the scatter). A group is
    ``(lo, hi, base, n)``: its accumulators have a row per class the record
    says is present (``rank``, see :func:`_local`), so the empty classes of
    a vocabulary cost no memory. ``acc`` is the previous result of the same
    chain (None to start) and is updated in place.
    """
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
        loc = _local(y[idx], sum_group, rank, xp)
        ids, counts, sums = _sparse_sums(X, loc, idx, dt, step, xp)
        acc["counts"][ids] += counts  # ids are unique: plain fancy-index adds
        acc["sums"][ids] += sums
    if centre_group is not None:
        idx = _rows_of(y, n_classes, centre_group[0], centre_group[1], ignore_index, xp)
        loc = _local(y[idx], centre_group, rank, xp)
        means = xp.asarray(means, dtype=dt)
        _centred(X, idx, loc, means, mask, dt, step, xp, acc["m2"], acc["scatter"])
    return acc


def expand_rows(compact: Any, rank: Any, lo: int, hi: int, base: int) -> Any:
    """Rows ``[lo, hi)`` of a class axis from a group's compact rows (NaN for absent classes).

    ``compact`` holds the group's present classes (see :func:`_local`);
    ``rank`` None means it is already dense from ``lo``.
    """
    xp = array_namespace(compact)
    if rank is None:
        return compact[lo - base : hi - base]
    pos = xp.asarray(rank[lo:hi]) - base
    out = xp.full((hi - lo,) + compact.shape[1:], float("nan"), dtype=compact.dtype)
    have = xp.nonzero(pos >= 0)[0]
    out[have] = compact[pos[have]]
    return out


#: Sum the accumulators of several chains (every term is already final).
combine_stages = sum_fields


def _shifted(
    X: Any, idx: Any, loc: Any, shift: Any, sub: Any, dtype: Any, step: int, xp: Any,
    scatter: Any,
) -> tuple[Any, Any]:
    """One pass over the rows ``idx``, shifted by ``shift[loc]``: class sums, ``m2``, scatter.

    Returns the sums and squared norms of ``x − shift`` per local class and
    adds their outer products (rows whose class is in ``sub``) into
    ``scatter``. Each piece's class sums are taken over the classes present
    in the piece, so no temporary is larger than the piece.
    """
    m, D = shift.shape
    sums = xp.zeros((m, D), dtype=dtype)
    m2 = xp.zeros(m, dtype=dtype)
    if idx is not None and idx.shape[0] == X.shape[0]:
        idx = None  # every row, in order: slices instead of gathers
    for s, e, P in _pieces(X, idx, dtype, step):
        lp = loc[s:e]
        P -= shift[lp]
        if m <= e - s:
            sums += class_sums(P, lp, m)
        else:
            u, inv = xp.unique(lp, return_inverse=True)
            sums[u] += class_sums(P, inv.reshape(-1), u.shape[0])
        _square_into(P, lp, sub, m2, scatter, xp)
    return sums, m2


def chunk_summary(
    X: Any,
    y: Any,
    n_classes: int,
    *,
    acc: dict[str, Any] | None = None,
    scatter: Any = None,
    mask: Any = None,
    dtype: Any = np.float64,
    ignore_index: int | None = None,
    step: int | None = None,
) -> dict[str, Any]:
    """A chunk's classes (sparse) in one pass, about a shift close to each class mean.

    The shift of a class is its running mean in ``acc`` (a dense
    accumulator, see :func:`fold_summary`) when the class is there, else
    the chunk's first row of the class: a point inside the class's spread,
    so the shifted sums of squares lose nothing to cancellation (the
    float32 collapsed case stays exact) while each row is read, upcast and
    multiplied once. (The previous kernel summed the classes first and then
    centred them about the chunk's own means, reading and upcasting every
    row twice: 0.64 s against 0.35 s for the scatter GEMM itself on 32,768
    rows of D=512, one thread.)

    Returns ``ids``, ``counts``, ``shift`` (m×D), ``sums`` and ``m2`` of the
    shifted rows, and the D×D ``scatter`` of the shifted rows (added into
    ``scatter`` when given); ``mask`` (K,) bool, optional: classes whose
    rows enter the scatter.
    """
    xp = array_namespace(X, y)
    y = xp.asarray(y).astype(xp.int64)
    dt = np.dtype(dtype)
    D = X.shape[1]
    idx = _rows_of(y, n_classes, 0, n_classes, ignore_index, xp)
    step = step or piece_rows(D, dt.itemsize)
    ids, first, loc, counts = xp.unique(y[idx], return_index=True, return_inverse=True,
                                        return_counts=True)
    loc = loc.reshape(-1)
    shift = xp.asarray(xp.take(X, idx[first], axis=0), dtype=dt)
    if acc is not None and ids.shape[0]:
        n_a = acc["counts"][ids]
        seen = xp.nonzero(n_a > 0)[0]
        shift[seen] = acc["sums"][ids[seen]] / n_a[seen, None].astype(dt)
    sub = None if mask is None else xp.asarray(mask, dtype=bool)[ids]
    if scatter is None:
        scatter = xp.zeros((D, D), dtype=dt)
    sums, m2 = _shifted(X, idx, loc, shift, sub, dt, step, xp, scatter)
    return {"ids": ids.astype(xp.int64), "counts": counts.astype(xp.int64), "shift": shift,
            "sums": sums, "m2": m2, "scatter": scatter}


def fold_summary(
    acc: dict[str, Any] | None, X: Any, y: Any, *, n_classes: int, mask: Any = None,
    **options: Any,
) -> dict[str, Any]:
    """Add a chunk into a dense one-pass accumulator (Chan's update, shifted), in place.

    The accumulator is a partial of :mod:`ncdask.kernels.stats` (dense K
    rows: ``counts``, ``sums``, ``m2``, ``scatter``, and ``in_scatter`` when
    ``mask`` is given), so chains combine with
    :func:`ncdask.kernels.stats.merge_many`. The chunk's rows are taken
    about a shift (:func:`chunk_summary`): the running mean ``μ_a`` of a
    class already in ``acc``, else one of its rows. With ``d`` the mean of
    the chunk's shifted rows of a class, ``n_c`` their number and ``n_a``
    the class's count so far, the exact update is
    ``M += S_shifted − α d dᵀ`` with ``α = n_c² / (n_a + n_c)`` (for a class
    in ``acc``, ``d = μ_c − μ_a`` and this is Chan's ``w δδᵀ`` cross term
    folded with the chunk's own centring; for a new class ``α = n_c``), and
    the same for ``m2`` with ``‖d‖²``: every term is small against the
    spread, so float32 input in the terminal phase stays exact. A class seen
    once in the chunk and new to ``acc`` costs no correction (``d = 0``).
    ``options``: those of :func:`chunk_summary`.
    """
    if acc is None:
        xp = array_namespace(X, y)
        dt = np.dtype(options.get("dtype", np.float64))
        D = X.shape[1]
        acc = {"counts": xp.zeros(n_classes, dtype=xp.int64),
               "sums": xp.zeros((n_classes, D), dtype=dt),
               "m2": xp.zeros(n_classes, dtype=dt), "scatter": xp.zeros((D, D), dtype=dt)}
        if mask is not None:
            acc["in_scatter"] = xp.asarray(mask, dtype=bool)
    part = chunk_summary(X, y, n_classes, acc=acc, scatter=acc["scatter"], mask=mask,
                         **options)
    xp = array_namespace(part["sums"])
    ids = part["ids"]
    if not ids.shape[0]:
        return acc
    dt = acc["sums"].dtype
    nc = part["counts"].astype(dt)
    na = acc["counts"][ids].astype(dt)
    d = part["sums"] / nc[:, None]
    alpha = nc * nc / (na + nc)
    acc["sums"][ids] += nc[:, None] * part["shift"] + part["sums"]
    acc["m2"][ids] += part["m2"] - alpha * xp.einsum("ij,ij->i", d, d)
    acc["counts"][ids] += part["counts"]
    keep = (na > 0) | (nc > 1)
    if mask is not None:
        keep &= xp.asarray(mask, dtype=bool)[ids]
    rows = xp.nonzero(keep)[0]
    if rows.shape[0]:
        scatter_add(acc["scatter"], d[rows] * xp.sqrt(alpha[rows])[:, None], xp,
                    subtract=True)
    return acc


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
    """``[Σ_used μ_k (D values), Σ_used n_k μ_k (D values), #used, Σ_used n_k]`` of a group.

    The global mean (unweighted or weighted) and ``N`` are sums of these over
    the groups.
    """
    xp = array_namespace(means)
    u = used & (counts > 0)
    Mu = xp.where(u[:, None], means, 0.0)
    n = xp.where(u, counts, 0).astype(means.dtype)
    tail = xp.stack([xp.sum(u.astype(means.dtype)), xp.sum(n)])
    return xp.concatenate([xp.sum(Mu, axis=0), n @ Mu, tail])


def summary_reduction(**options: Any) -> Reduction:
    """The one-pass plan as a fold: :func:`fold_summary` into chains, merged exactly.

    ``options`` go to :func:`fold_summary` (``n_classes``, ``mask``, ...); the
    chain ends combine with :func:`ncdask.kernels.stats.merge_many`.
    """
    return Reduction(fold=functools.partial(fold_summary, **options), combine=merge_many)


def stage_reduction(**options: Any) -> Reduction:
    """One stage of the pipelined plan as a fold: :func:`fold_stage` into chains, summed.

    ``options`` go to :func:`fold_stage`; every term of a stage is final, so
    the chain ends add up (:func:`combine_stages`).
    """
    return Reduction(fold=functools.partial(fold_stage, **options), combine=combine_stages)
