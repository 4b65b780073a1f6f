"""Checks on user batches before anything is written."""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from .kernels._xp import to_numpy

_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")


class NcdaskStoreError(ValueError):
    """A store or group that ncdask cannot use as asked."""


def check_name(kind: str, name: Any) -> str:
    """Split and layer names: non-empty, no '/', no '=' (they become group paths)."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(
            f"{kind} name must be a non-empty string of letters, digits, '_', '.' or '-', "
            f"got {name!r}"
        )
    return name


def batch_to_numpy(
    X: Any,
    y: Any,
    *,
    dim: int,
    n_classes: int,
    dtype: np.dtype,
    allow_nonfinite: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Validate one batch and return it as host NumPy arrays (X in the store's dtype).

    Raises
    ------
    ValueError
        Wrong ndim or dim, length mismatch, labels out of ``[0, K)``, NaN or inf.
    TypeError
        Labels that are not integers (floats holding integers are accepted).
    """
    X = to_numpy(X)
    y = to_numpy(y)
    if X.ndim != 2:
        raise ValueError(f"embeddings must be 2-D (samples, features), got shape {X.shape}")
    if X.shape[1] != dim:
        raise ValueError(f"embeddings have dim {X.shape[1]}, the store expects dim {dim}")
    if not (np.issubdtype(X.dtype, np.floating) or np.issubdtype(X.dtype, np.integer)):
        raise TypeError(f"embeddings must be numeric, got dtype {X.dtype}")
    if y.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {y.shape}")
    if y.shape[0] != X.shape[0]:
        raise ValueError(
            f"embeddings have {X.shape[0]} rows but labels have {y.shape[0]} entries"
        )
    if np.issubdtype(y.dtype, np.floating):
        if y.size and not np.all(np.isfinite(y) & (y == np.round(y))):
            raise TypeError("labels must be integers; got floats with fractional or non-finite values")
        y = y.astype(np.int64)
    elif not np.issubdtype(y.dtype, np.integer) or y.dtype == np.bool_:
        raise TypeError(f"labels must be integers, got dtype {y.dtype}")
    if y.size:
        lo, hi = int(y.min()), int(y.max())
        if lo < 0 or hi >= n_classes:
            bad = lo if lo < 0 else hi
            raise ValueError(f"label {bad} is outside [0, {n_classes}) (n_classes={n_classes})")
    with np.errstate(over="ignore", invalid="ignore"):  # overflow is reported below
        Xs = np.asarray(X, dtype=dtype)
    if not allow_nonfinite and Xs.size and not np.isfinite(Xs).all():
        rows = np.nonzero(~np.isfinite(Xs).all(axis=1))[0]
        raise ValueError(
            f"embeddings contain NaN or inf in {rows.size} row(s) (first: row {rows[0]}"
            f"{', after casting to ' + str(dtype) if Xs.dtype != X.dtype else ''}); "
            "pass allow_nonfinite=True to store them anyway"
        )
    return Xs, y.astype(np.int32 if n_classes < 2**31 else np.int64, copy=False)
