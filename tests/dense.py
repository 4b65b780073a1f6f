"""Shared test helpers: the dense class statistics of SPEC.md, split Datasets, golden cases."""

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


def check_against(st_, ref: dict, rtol: float) -> None:
    """Computed class statistics ``st_`` against a :func:`dense_stat_arrays` dict."""
    st_ = st_.compute()
    np.testing.assert_array_equal(st_.counts.values, ref["counts"])
    np.testing.assert_allclose(st_.means.values, ref["means"], rtol=rtol)
    np.testing.assert_allclose(st_.global_mean.values, ref["global_mean"], rtol=rtol)
    np.testing.assert_allclose(st_.within_cov.values, ref["within_cov"], rtol=rtol,
                               atol=rtol * np.abs(ref["within_cov"]).max())
    np.testing.assert_allclose(st_.var_norms.values, ref["var_norms"], rtol=rtol)
    assert int(st_.n_samples) == ref["n_samples"]
