"""Per-batch kernels of :class:`ncdask.StatsAccumulator`: fixed per-class shifts.

A stream of small batches is not a store's chunks: a training batch of 256
rows holds ~200 classes of a K=1000 problem, so the one-pass plan's exact
per-chunk merge (:func:`ncdask.kernels.tiled_stats.fold_summary`), whose
cross term costs one row of scatter GEMM per class in the chunk, doubled the
work of each update (measured, ``benchmarks/bench_accumulate.py``, hidden
2048-2048-512, K=1000, batch 256: updates 2.9× the forward pass).

Here every class keeps the shift it got when first seen (its first row:
a point inside its spread), and a batch only adds its shifted rows:
``sums += Σ (x − c_y)``, ``m2 += Σ ‖x − c_y‖²``, ``S += Σ (x − c_y)(x − c_y)ᵀ``
(one scatter GEMM, no cross term). :func:`partial` removes the shifts once,
at the end: with ``d_k = sums_k / n_k`` (the class mean less its shift,
small against the spread, so nothing cancels in the float32 collapsed case)
``Σ_W·N = S − Σ_k n_k d_k d_kᵀ`` and ``m2_k −= n_k ‖d_k‖²``.
"""

from __future__ import annotations

from typing import Any

from ncdask.kernels._xp import array_namespace
from ncdask.kernels.stats import check_labels, class_sums
from ncdask.kernels.tiled_stats import scatter_add


def empty(n_classes: int, dim: int, dtype: Any, xp: Any) -> dict[str, Any]:
    """A state with no rows: counts, shifts, shifted sums, m2 and scatter."""
    return {"counts": xp.zeros(n_classes, dtype=xp.int64),
            "shift": xp.zeros((n_classes, dim), dtype=dtype),
            "sums": xp.zeros((n_classes, dim), dtype=dtype),
            "m2": xp.zeros(n_classes, dtype=dtype),
            "scatter": xp.zeros((dim, dim), dtype=dtype)}


def update(state: dict[str, Any], X: Any, y: Any, *, ignore_index: int | None = None) -> None:
    """Add the rows ``X`` with labels ``y`` to ``state`` in place (labels checked first)."""
    xp = array_namespace(X, y)
    K = state["counts"].shape[0]
    y = xp.asarray(y).astype(xp.int64)
    keep = check_labels(y, K, ignore_index, xp)
    if not bool(xp.all(keep)):
        X, y = X[keep], y[keep]
    if y.shape[0] == 0:
        return
    dt = state["sums"].dtype
    n_in = xp.bincount(y, minlength=K)
    new = (n_in > 0) & (state["counts"] == 0)
    if bool(xp.any(new)):  # classes seen for the first time: shift each by its first row
        rows = xp.nonzero(new[y])[0]
        ids, first = xp.unique(y[rows], return_index=True)
        state["shift"][ids] = xp.asarray(X[rows[first]], dtype=dt)
    # gather, then subtract in place: ``X - shift[y]`` allocates a second n×D
    # temporary, and fresh pages cost more than the arithmetic (8192×64 float64:
    # 4.2 ms against 0.8 ms, measured on the 2-core machine)
    P = xp.take(state["shift"], y, axis=0)
    xp.subtract(X, P, out=P)
    state["sums"] += class_sums(P, y, K)
    state["m2"] += xp.bincount(y, weights=xp.einsum("ij,ij->i", P, P), minlength=K)
    state["counts"] += n_in.astype(xp.int64)
    scatter_add(state["scatter"], P, xp)


def partial(state: dict[str, Any]) -> dict[str, Any]:
    """The state as a dense partial of :mod:`ncdask.kernels.stats` (shifts removed)."""
    xp = array_namespace(state["sums"])
    n = state["counts"]
    seen = n > 0
    nf = xp.where(seen, n, 1).astype(state["sums"].dtype)
    d = xp.where(seen[:, None], state["sums"] / nf[:, None], 0)
    scatter = xp.array(state["scatter"], copy=True)
    rows = xp.nonzero(seen)[0]
    if rows.shape[0]:
        scatter_add(scatter, d[rows] * xp.sqrt(nf[rows])[:, None], xp, subtract=True)
    return {"counts": n, "sums": state["sums"] + nf[:, None] * xp.where(
                seen[:, None], state["shift"], 0),
            "m2": state["m2"] - nf * xp.einsum("ij,ij->i", d, d) * seen,
            "scatter": scatter}


def from_partial(p: dict[str, Any]) -> dict[str, Any]:
    """A state holding a dense partial: each class shifted to its own mean."""
    xp = array_namespace(p["sums"])
    n = p["counts"]
    seen = (n > 0)[:, None]
    mean = xp.where(seen, p["sums"] / xp.where(n > 0, n, 1).astype(p["sums"].dtype)[:, None],
                    0)
    return {"counts": n, "shift": mean, "sums": xp.zeros_like(p["sums"]), "m2": p["m2"],
            "scatter": p["scatter"]}
