"""Per-chunk partial class statistics and their exact pairwise merge.

A *partial* is a dict of four arrays describing one block of samples:

``counts`` (K,)
    samples per class, int64.
``sums`` (K, D)
    per-class sums of the embeddings.
``m2`` (K,)
    per-class sum of squared distances to the block's own class mean.
``scatter`` (D, D)
    pooled centred scatter ``Σ_i (x_i − m_{y_i})(x_i − m_{y_i})ᵀ`` about the
    block's own class means.
``in_scatter`` (K,) bool, optional
    the classes whose samples enter ``scatter`` (all when absent): classes
    filtered out by a minimum count keep their counts, sums and ``m2`` but
    leave the pooled covariance and its sample count.

Two partials merge exactly with the pairwise (Chan et al. 1979) update: with
``δ_k = mean_b,k − mean_a,k`` and ``w_k = n_a,k n_b,k / (n_a,k + n_b,k)``,
``scatter = scatter_a + scatter_b + Σ_k w_k δ_k δ_kᵀ`` and likewise for ``m2``.
Every term is formed from centred data, so the result stays accurate in the
terminal phase of collapse, where ``‖x − μ‖`` is 1e-5 of ``‖μ‖`` and the
textbook ``Σ xxᵀ − Σ n μμᵀ`` loses every significant digit.

The kernels take their array module from their inputs, so CuPy blocks run
unchanged; the only operation outside the Array API, the per-class sum, goes
through :func:`class_sums`, which dispatches on the array module.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from ncdask.kernels._reduction import Reduction
from ncdask.kernels._xp import array_namespace

Partial = dict[str, Any]

FIELDS = ("counts", "sums", "m2", "scatter")


def class_sums(X: Any, y: Any, n_classes: int) -> Any:
    """Per-class sums of the rows of ``X`` (K×D), by a sparse one-hot product.

    Why not ``flox`` or ``xp.add.at``: measured on this project's 2-core
    machine (N=1e6, D=256, K=1000) a per-chunk sparse one-hot product took
    0.22 s, flox 1.5-2.3 s and an xarray groupby 17 s. A dense one-hot GEMM
    would cost 2·n·K·D flops, more than the scatter GEMM itself once K > D.
    """
    xp = array_namespace(X, y)
    n = X.shape[0]
    if n == 0:
        return xp.zeros((n_classes, X.shape[1]), dtype=X.dtype)
    if xp is np:
        import scipy.sparse as sp

        onehot = sp.csr_matrix(
            (np.ones(n, dtype=X.dtype), (y, np.arange(n))), shape=(n_classes, n)
        )
        return np.asarray(onehot @ X)
    if getattr(xp, "__name__", "") == "cupy":  # pragma: no cover - needs a GPU
        import cupyx.scipy.sparse as csp

        onehot = csp.csr_matrix(
            (xp.ones(n, dtype=X.dtype), (y, xp.arange(n))), shape=(n_classes, n)
        )
        return onehot @ X
    # any other NumPy-like module: dense one-hot GEMMs on row blocks of ~4M entries
    out = xp.zeros((n_classes, X.shape[1]), dtype=X.dtype)
    classes = xp.arange(n_classes)[:, None]
    step = max(1, (1 << 22) // n_classes)
    for s in range(0, n, step):
        onehot = (y[None, s : s + step] == classes).astype(X.dtype)
        out += onehot @ X[s : s + step]
    return out


#: Fill values of ncdask's labels arrays (the smallest int32 and int64): what
#: Zarr returns for a labels chunk that is missing, never a valid label.
MISSING_LABELS = (-(2**31), -(2**63))


def check_labels(y: Any, n_classes: int, ignore_index: int | None, xp: Any) -> Any:
    """Boolean mask of the rows to keep.

    Raises ``ValueError`` on labels outside ``[0, K)`` other than ``ignore_index``.
    """
    keep = (y >= 0) & (y < n_classes)
    if y.shape[0] and not bool(xp.all(keep)):
        bad = ~keep
        if ignore_index is not None:
            bad &= y != ignore_index
        if bool(xp.any(bad)):
            first = int(y[xp.nonzero(bad)[0][0]])
            hint = ("pass ignore_index= for padding labels" if ignore_index is None
                    else f"only ignore_index={ignore_index} may lie outside it")
            if first in MISSING_LABELS:
                hint = ("that is the fill value a missing labels chunk reads as: the store "
                        "is damaged (a chunk file was deleted or never written)")
            raise ValueError(
                f"label {first} is outside [0, {n_classes}) (n_classes={n_classes}); {hint}"
            )
    return keep


def chunk_partial(
    X: Any,
    y: Any,
    n_classes: int,
    dtype: Any = np.float64,
    *,
    ignore_index: int | None = None,
    in_scatter: Any = None,
) -> Partial:
    """Partial statistics of one block of samples.

    Parameters
    ----------
    X : array (n, D)
        Embeddings of the block (NumPy or CuPy, any float dtype).
    y : array (n,)
        Integer labels in ``[0, n_classes)``.
    n_classes : int
        Number of classes K.
    dtype : dtype, default float64
        Accumulation dtype.
    ignore_index : int, optional
        Rows with this label are dropped; any other label outside ``[0, K)``
        raises ``ValueError``.
    in_scatter : array (K,) of bool, optional
        Classes whose rows enter the pooled scatter (default all).

    Returns
    -------
    dict
        ``counts``, ``sums``, ``m2`` and ``scatter`` (and ``in_scatter`` when
        given; see the module docstring).
    """
    xp = array_namespace(X, y)
    y = xp.asarray(y)
    keep = check_labels(y, n_classes, ignore_index, xp)
    if not bool(xp.all(keep)):
        X, y = X[keep], y[keep]
    # One private copy in the accumulation dtype, centred in place: the block
    # is read once more by the scatter GEMM and once by the row norms, with no
    # second n×D temporary (measured in benchmarks/bench_stats.py: the copy +
    # in-place centring + einsum row norms cut the 1 GiB pass by ~25%).
    Xc = xp.array(X, dtype=dtype, copy=True)
    y = xp.asarray(y).astype(xp.int64)
    counts = xp.bincount(y, minlength=n_classes).astype(xp.int64)
    sums = class_sums(Xc, y, n_classes)
    means = sums / xp.maximum(counts, 1)[:, None].astype(dtype)
    Xc -= means[y]
    sq = xp.einsum("ij,ij->i", Xc, Xc)
    m2 = xp.bincount(y, weights=sq, minlength=n_classes).astype(dtype)
    out = {"counts": counts, "sums": sums, "m2": m2}
    if in_scatter is None:
        out["scatter"] = Xc.T @ Xc
    else:
        in_scatter = xp.asarray(in_scatter, dtype=bool)
        rows = in_scatter[y]
        Xs = Xc if bool(xp.all(rows)) else Xc[rows]
        out["scatter"] = Xs.T @ Xs
        out["in_scatter"] = in_scatter
    return out


def merge_partials(a: Partial, b: Partial) -> Partial:
    """Merge two partials exactly (pairwise update on centred terms).

    Only classes present on both sides get a cross term, so merging blocks
    that each hold few of many classes costs O(min(n_a, n_b)·D²), not O(K·D²).
    """
    xp = array_namespace(a["sums"], b["sums"])
    na, nb = a["counts"], b["counts"]
    counts = na + nb
    both = xp.nonzero((na > 0) & (nb > 0))[0]
    scatter = a["scatter"] + b["scatter"]
    m2 = a["m2"] + b["m2"]
    mask = a.get("in_scatter", b.get("in_scatter"))
    if both.shape[0]:
        na_b = na[both].astype(scatter.dtype)
        nb_b = nb[both].astype(scatter.dtype)
        delta = b["sums"][both] / nb_b[:, None] - a["sums"][both] / na_b[:, None]
        w = na_b * nb_b / (na_b + nb_b)
        m2[both] = m2[both] + w * xp.sum(delta * delta, axis=1)
        if mask is not None:
            sel = mask[both]
            delta, w = delta[sel], w[sel]
        scatter = scatter + (delta * w[:, None]).T @ delta
    out = {"counts": counts, "sums": a["sums"] + b["sums"], "m2": m2, "scatter": scatter}
    if mask is not None:
        out["in_scatter"] = mask
    return out


def merge_many(parts: list[Partial]) -> Partial:
    """Merge a list of partials, left to right."""
    if not parts:
        raise ValueError("merge_many needs at least one partial")
    out = parts[0]
    for p in parts[1:]:
        out = merge_partials(out, p)
    return out


def finalize(p: Partial, global_mean: str = "unweighted") -> dict[str, Any]:
    """Turn a partial into the class statistics.

    Returns a dict with ``counts``, ``means`` (NaN rows for empty classes),
    ``global_mean``, ``within_cov`` (``scatter / N``), ``var_norms``
    (``m2_k / n_k``, NaN for empty classes) and ``n_samples``. With
    ``in_scatter``, ``N``, ``n_samples`` and the global mean count only the
    classes in it.
    """
    xp = array_namespace(p["sums"])
    counts = p["counts"]
    present = counts > 0
    n = counts.astype(p["sums"].dtype)
    safe = xp.where(present, n, 1.0)
    nan = xp.asarray(float("nan"), dtype=p["sums"].dtype)
    means = xp.where(present[:, None], p["sums"] / safe[:, None], nan)
    var_norms = xp.where(present, p["m2"] / safe, nan)
    used = present if p.get("in_scatter") is None else present & p["in_scatter"]
    n_samples = xp.sum(xp.where(used, counts, 0))
    if global_mean == "unweighted":
        gm = xp.sum(xp.where(used[:, None], means, 0.0), axis=0) / max(int(xp.sum(used)), 1)
    elif global_mean == "weighted":
        gm = xp.sum(xp.where(used[:, None], p["sums"], 0.0), axis=0) / max(int(n_samples), 1)
    else:
        raise ValueError(f"global_mean must be 'unweighted' or 'weighted', got {global_mean!r}")
    within_cov = p["scatter"] / max(int(n_samples), 1)
    return {
        "counts": counts,
        "means": means,
        "global_mean": gm,
        "within_cov": within_cov,
        "var_norms": var_norms,
        "n_samples": n_samples,
    }


def reduction(
    n_classes: int, dtype: Any = np.float64, *, ignore_index: int | None = None,
    global_mean: str = "unweighted",
) -> Reduction:
    """The one-pass class statistics as a reduction (see :mod:`ncdask.graph._reduce`).

    ``chunk(X, y[, in_scatter])`` is :func:`chunk_partial`, ``combine`` is
    :func:`merge_many` and ``finalize`` is :func:`finalize`.
    """
    return Reduction(
        chunk=functools.partial(_block_partial, n_classes=int(n_classes), dtype=np.dtype(dtype),
                                ignore_index=ignore_index),
        combine=merge_many,
        finalize=functools.partial(finalize, global_mean=global_mean),
    )


def _block_partial(X: Any, y: Any, in_scatter: Any = None, *, n_classes: int, dtype: Any,
                   ignore_index: int | None) -> Partial:
    return chunk_partial(X, y, n_classes, dtype, ignore_index=ignore_index, in_scatter=in_scatter)


def partial_from_stats(
    counts: Any, means: Any, var_norms: Any, within_cov: Any, in_scatter: Any = None
) -> Partial:
    """Rebuild a partial from finished statistics (the inverse of :func:`finalize`)."""
    xp = array_namespace(means)
    counts = xp.asarray(counts).astype(xp.int64)
    n = counts.astype(means.dtype)
    present = counts > 0
    sums = xp.where(present[:, None], means * n[:, None], 0.0)
    m2 = xp.where(present, var_norms * n, 0.0)
    if in_scatter is None:
        scatter = within_cov * xp.sum(n)
    else:
        in_scatter = xp.asarray(in_scatter, dtype=bool)
        scatter = within_cov * xp.sum(xp.where(in_scatter, n, 0.0))
    out = {"counts": counts, "sums": sums, "m2": m2, "scatter": scatter}
    if in_scatter is not None:
        out["in_scatter"] = in_scatter
    return out


def refuse_nonfinite(block: Any, present: Any = None, *, what: str = "", where: str = "") -> Any:
    """Return ``block`` unchanged, or raise if it holds NaN/inf where data was promised.

    A split whose commit record promises finite rows cannot yield a
    non-finite statistic unless a chunk went missing (Zarr then returns the
    embeddings' NaN fill value) or was damaged. ``present`` (per row of
    ``block``) limits the check to classes with samples (an empty class's
    NaN mean is by definition).
    """
    from ncdask.kernels._xp import array_namespace

    xp = array_namespace(block)
    bad = ~xp.isfinite(block)
    if present is not None:
        p = xp.asarray(present)
        bad = bad & (p.reshape(p.shape + (1,) * (block.ndim - 1)))
    if bool(xp.any(bad)):
        from ncdask._validate import NcdaskStoreError

        raise NcdaskStoreError(
            f"{where}: {what} holds NaN or inf although the split was written without "
            "allow_nonfinite: an embeddings chunk is missing (it reads as NaN) or damaged; "
            "run `ncdask check` on the store")
    return block
