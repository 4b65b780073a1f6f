"""Array-module dispatch for the per-chunk kernels."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np

#: Array types registered with :func:`register_namespace`, and their modules.
_NAMESPACES: dict[type, Any] = {}


def register_namespace(array_type: type, namespace: Any) -> None:
    """Make :func:`array_namespace` return ``namespace`` for arrays of ``array_type``.

    For device-like array modules other than CuPy (the tests register a strict
    host stand-in for CuPy with it). ``namespace`` must follow NumPy's API, and
    its arrays must copy themselves to a NumPy array with ``.get()``, as CuPy's do.
    """
    _NAMESPACES[array_type] = namespace


def array_namespace(*arrays: Any) -> ModuleType:
    """Return the array module (``numpy``, ``cupy`` or a registered one) of the given arrays.

    CuPy is recognised by the module its array type comes from, so CuPy is
    never imported on a machine that has no arrays of it.
    """
    for a in arrays:
        ns = _NAMESPACES.get(type(a))
        if ns is not None:
            return ns
        mod = type(a).__module__.split(".")[0]
        if mod == "cupy":
            import cupy

            return cupy
    return np


def to_numpy(a: Any) -> np.ndarray:
    """Copy a NumPy, CuPy or PyTorch array to a host NumPy array (no copy for NumPy).

    ``torch.bfloat16`` has no NumPy dtype: such tensors widen to float32,
    which holds every bfloat16 value exactly (the same 8-bit exponent, 16 more
    bits of mantissa), and a store then casts them to its own dtype.
    """
    mod = type(a).__module__.split(".")[0]
    if mod == "torch":
        a = a.detach()
        if str(a.dtype) == "torch.bfloat16":
            a = a.float()  # exact; on the tensor's device, before the copy
        if a.device.type != "cpu":
            a = a.cpu()
        return a.numpy()
    if mod == "cupy" or type(a) in _NAMESPACES:
        return a.get()
    return np.asarray(a)
