"""Array-module dispatch for the per-chunk kernels."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np


def array_namespace(*arrays: Any) -> ModuleType:
    """Return the array module (``numpy`` or ``cupy``) of the given arrays.

    CuPy is recognised by the module its array type comes from, so CuPy is
    never imported on a machine that has no arrays of it.
    """
    for a in arrays:
        mod = type(a).__module__.split(".")[0]
        if mod == "cupy":
            import cupy

            return cupy
    return np


def to_numpy(a: Any) -> np.ndarray:
    """Copy a NumPy, CuPy or PyTorch array to a host NumPy array (no copy for NumPy)."""
    mod = type(a).__module__.split(".")[0]
    if mod == "torch":
        a = a.detach()
        if a.device.type != "cpu":
            a = a.cpu()
        return a.numpy()
    if mod == "cupy":
        return a.get()
    return np.asarray(a)
