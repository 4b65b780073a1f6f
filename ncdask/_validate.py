"""Checks on user batches before anything is written."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import numpy as np

from ncdask.errors import option
from ncdask.kernels._xp import to_numpy

if TYPE_CHECKING:
    import xarray as xr

_NAME = re.compile(r"^[A-Za-z0-9_\-][A-Za-z0-9_.\-]*$")  # a leading '.' is ncdask's


class NcdaskStoreError(ValueError):
    """A store or group that ncdask cannot use as asked."""


def check_name(kind: str, name: Any) -> str:
    """Split and layer names become group paths: no '/', no '=', no leading '.' (ncdask's)."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(
            f"{kind} name must be a non-empty string of letters, digits, '_', '.' or '-', "
            f"not starting with '.', got {name!r}")
    return name


def batch_to_numpy(X: Any, y: Any | None, *, dim: int | None, n_classes: int, dtype: np.dtype,
                   allow_nonfinite: bool = False, ignore_index: int | None = None,
                   where: str | None = None, split: str | None = None,
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Validate one batch and return it as host NumPy arrays (X in the store's dtype).
    ``dim`` is the width of the set written to (None: any, for a new set's
    first write), ``where`` names that set and ``split`` the split in messages.
    A bad shape, label or value is a ValueError, non-integer labels a TypeError."""
    X = to_numpy(X)
    y = None if y is None else to_numpy(y)
    if X.ndim != 2:
        raise ValueError(f"embeddings must be 2-D (samples, features), got shape {X.shape}")
    if dim is not None and X.shape[1] != dim:
        raise ValueError(
            f"embeddings have dim {X.shape[1]}, the store expects dim {dim}"
            + (f" in set {where} (its width, recorded when the set was first written)"
               if where else ""))
    if X.shape[1] < 1:
        raise ValueError(f"embeddings must have at least one feature, got shape {X.shape}")
    if not (np.issubdtype(X.dtype, np.floating) or np.issubdtype(X.dtype, np.integer)):
        raise TypeError(f"embeddings must be numeric, got dtype {X.dtype}")
    if y is None:  # an unlabelled batch (OOD data)
        return _embeddings(X, dtype, allow_nonfinite), None
    to = "" if split is None else f"split {split!r}{f' ({where})' if where else ''}: "
    if y.ndim != 1:
        raise ValueError(f"{to}labels must be 1-D, got shape {y.shape}")
    if y.shape[0] != X.shape[0]:
        raise ValueError(
            f"{to}embeddings have {X.shape[0]} rows but labels have {y.shape[0]} entries")
    y = check_labels(y, n_classes, ignore_index, to)
    Xs = _embeddings(X, dtype, allow_nonfinite)
    return Xs, y.astype(np.int32 if n_classes < 2**31 else np.int64, copy=False)


def check_labels(y: np.ndarray, n_classes: int | None, ignore_index: int | None,
                 where: str = "") -> np.ndarray:
    """``y`` as integer labels, each in ``[0, n_classes)`` or ``ignore_index``.
    ``where`` prefixes the messages; ``n_classes=None`` checks only ``>= 0``."""
    if np.issubdtype(y.dtype, np.floating):
        if y.size and not np.all(np.isfinite(y) & (y == np.round(y))):
            raise TypeError(f"{where}labels must be integers; got floats with fractional or "
                            "non-finite values")
        y = y.astype(np.int64)
    elif not np.issubdtype(y.dtype, np.integer):
        raise TypeError(f"{where}labels must be integers, got dtype {y.dtype}")
    bad = y < 0 if n_classes is None else (y < 0) | (y >= n_classes)
    if ignore_index is not None:
        bad &= y != ignore_index
    if bad.any():
        K = "K" if n_classes is None else n_classes
        hint = (f"; only ignore_index={ignore_index} may lie outside" if ignore_index is not None
                else f"; create the store with {option('ignore_index=', '--ignore-index')} "
                "to keep padding labels")
        raise ValueError(
            f"{where}label {int(y[np.argmax(bad)])} is outside [0, {K}) (n_classes={K}){hint}; "
            "data without classes of this model (OOD) is stored unlabelled: pass no labels "
            f"({option('y=None; labels=False for import_files', '--no-labels')})")
    return y


def _embeddings(X: np.ndarray, dtype: np.dtype, allow_nonfinite: bool) -> np.ndarray:
    """``X`` cast to the store's dtype, checked for NaN / inf (unless allowed)."""
    with np.errstate(over="ignore", invalid="ignore"):  # overflow is reported below
        Xs = np.asarray(X, dtype=dtype)
    if not allow_nonfinite and Xs.size and not np.isfinite(Xs).all():
        rows = np.nonzero(~np.isfinite(Xs).all(axis=1))[0]
        cast = Xs.dtype != X.dtype and bool(np.isfinite(X[rows[0]]).all())
        raise ValueError(
            f"embeddings contain NaN or inf in {rows.size} row(s) (first: row {rows[0]}"
            f"{', after casting to ' + str(dtype) if Xs.dtype != X.dtype else ''}); "
            + option("pass allow_nonfinite=True to store them anyway",
                     "the command line stores finite rows only"
                     + (f": they overflow {dtype}, so import them into a store of a wider "
                        "--dtype" if cast else "")))
    return Xs


def check_ignore_index(ignore_index: Any, n_classes: int) -> int | None:
    """``None`` or an integer outside ``[0, K)`` (a label that is no class)."""
    if ignore_index is None:
        return None
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, (int, np.integer)):
        raise TypeError(f"ignore_index must be an integer or None, got {ignore_index!r}")
    ii = int(ignore_index)
    if 0 <= ii < n_classes:
        raise ValueError(
            f"ignore_index={ii} is a class index (n_classes={n_classes}); it must lie "
            "outside [0, K), e.g. -100")
    if not -(2**31) <= ii < 2**31:
        raise ValueError(f"ignore_index={ii} does not fit the int32 labels")
    return ii


def check_count(name: str, value: Any, *, minimum: int = 1) -> int:
    """``value`` as an int: a positive one (``minimum=1``, else ValueError), or one
    ``>= 0`` (``minimum=0``: TypeError for a non-integer). Bools are not counts."""
    is_int = not isinstance(value, bool) and isinstance(value, (int, np.integer))
    if minimum >= 1 and (not is_int or value < minimum):
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if not is_int:
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def split_classes(ds: xr.Dataset, n_classes: int | None = None, ignore_index: Any = None, *,
                  required: bool = True) -> tuple[int, int | None]:
    """K and the checked ``ignore_index`` of a split: the arguments given, else its attrs
    (without either K: ``ValueError`` when ``required``, else K = 0)."""
    if n_classes is not None:
        K = int(n_classes)
    elif "n_classes" in ds.attrs:
        K = int(ds.attrs["n_classes"])
    elif required:
        raise ValueError("the split Dataset has no 'n_classes' attribute; pass n_classes=")
    else:
        K = 0
    ii = ds.attrs.get("ignore_index") if ignore_index is None else ignore_index
    return K, check_ignore_index(ii, K)
