"""Shared test helpers: class-structured data, split Datasets, the dense class statistics
of SPEC.md and a checker for them, golden cases."""

from __future__ import annotations

import json
from pathlib import Path

import dask.array as da
import numpy as np
import xarray as xr

GOLDEN = Path(__file__).parent / "golden"
CASES = ("collapsed", "manyclass", "wide")


def golden(name: str) -> tuple[dict, dict]:
    """Inputs (npz arrays) and expected values (json) of a golden case."""
    with np.load(GOLDEN / f"{name}.npz") as z:
        data = {k: z[k] for k in z.files}
    return data, json.loads((GOLDEN / f"{name}.json").read_text())


def class_data(rng, means, labels, *, noise: float = 1.0, dtype=None):
    """``(X, y)``: for each label, its class's mean (a row of the K×D ``means``) plus
    ``noise`` × N(0, 1) drawn from ``rng``.

    ``labels``: the labels, or a number n of rows labelled 0, 1, …, K−1, 0, … in turn.
    """
    means = np.asarray(means, dtype=np.float64)
    y = np.arange(labels) % len(means) if np.ndim(labels) == 0 else np.asarray(labels)
    X = means[y] + noise * rng.normal(size=(y.size, means.shape[1]))
    return (X if dtype is None else X.astype(dtype)), y


def split(X, y=None, K: int | None = None, *, chunks: int | tuple | None = 97) -> xr.Dataset:
    """A split Dataset of ``X`` (and labels ``y``, and ``n_classes=K`` if given).

    ``chunks``: rows per dask chunk (an int or the chunk sizes); None keeps NumPy arrays.
    """
    def var(a, dims):
        a = np.asarray(a)
        if chunks is not None:
            a = da.from_array(a, chunks=(chunks, -1)[: a.ndim])
        return dims, a

    v = {"embeddings": var(X, ("sample", "feature"))}
    if y is not None:
        v["labels"] = var(y, ("sample",))
    return xr.Dataset(v, attrs={} if K is None else {"n_classes": K})


def dense_stat_arrays(X: np.ndarray, y: np.ndarray, K: int, weighted: bool = False) -> dict:
    """Class statistics straight from the definitions, in float64 (two passes)."""
    X = np.asarray(X, dtype=np.float64)
    counts = np.bincount(y, minlength=K)
    means = np.full((K, X.shape[1]), np.nan)
    var_norms = np.full(K, np.nan)
    Sw = np.zeros((X.shape[1], X.shape[1]))
    for k in range(K):
        Xk = X[y == k]
        if len(Xk):
            means[k] = Xk.mean(0)
            C = Xk - means[k]
            var_norms[k] = (C * C).sum(1).mean()
            Sw += C.T @ C
    present = counts > 0
    if not present.any():
        gm = np.full(X.shape[1], np.nan)
    else:
        gm = X.mean(0) if weighted else means[present].mean(0)
    return {
        "counts": counts,
        "means": means,
        "global_mean": gm,
        "within_cov": Sw / max(len(X), 1),
        "var_norms": var_norms,
        "n_samples": len(X),
    }


STATS = ("means", "global_mean", "within_cov", "var_norms")


def assert_stats_equal(got, want, rtol: float = 1e-12) -> None:
    """Class statistics ``got`` equal ``want`` (Datasets or :func:`dense_stat_arrays` dicts).

    ``counts`` and ``n_samples`` exactly; each float statistic in norm against its own
    norm, ``‖got − want‖ ≤ rtol‖want‖`` with NaN in the same places (an entrywise test
    would judge the rounding of Σ_W's near-zero off-diagonal entries; a shared scale such
    as ``‖XᵀX/N‖`` would hide an error in a Σ_W a million times smaller).
    """
    def values(st, v):
        return np.asarray(getattr(st[v], "values", st[v]), dtype=np.float64)

    got, want = (st.compute() if hasattr(st, "compute") else st for st in (got, want))
    np.testing.assert_array_equal(values(got, "counts"), values(want, "counts"))
    assert int(values(got, "n_samples")) == int(values(want, "n_samples"))
    for v in STATS:
        x, w = values(got, v), values(want, v)
        np.testing.assert_array_equal(np.isnan(x), np.isnan(w), err_msg=v)
        ok = ~np.isnan(w)
        err, scale = np.linalg.norm(x[ok] - w[ok]), np.linalg.norm(w[ok])
        assert err <= rtol * scale, f"{v}: ‖got − want‖ = {err:.3g} > {rtol:g} × {scale:.3g}"
    empty = [getattr(st, "attrs", {}).get("empty_classes") for st in (got, want)]
    if None not in empty:
        assert empty[0] == empty[1]
