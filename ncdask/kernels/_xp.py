"""Array-module dispatch for the per-chunk kernels: NumPy, CuPy or a registered module."""

from __future__ import annotations

import contextlib
from types import ModuleType
from typing import Any

import numpy as np

#: Array types registered with :func:`register_namespace`, and their modules.
_NAMESPACES: dict[type, Any] = {}


def register_namespace(array_type: type, namespace: Any) -> None:
    """Make :func:`array_namespace` return ``namespace`` for arrays of ``array_type``.
    ``namespace`` must follow NumPy's API and its arrays copy to the host with
    ``.get()``, as CuPy's do (the tests register a strict CuPy stand-in)."""
    _NAMESPACES[array_type] = namespace


def array_namespace(*arrays: Any) -> ModuleType:
    """The array module of the given arrays; CuPy is imported only when one of them is CuPy's."""
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
    ``torch.bfloat16`` has no NumPy dtype: it widens to float32, which holds
    every bfloat16 value exactly."""
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


def errstate(xp: Any) -> contextlib.AbstractContextManager:
    """Silence floating-point warnings (NumPy only; CuPy does not warn)."""
    if xp is np:
        return np.errstate(all="ignore")
    return contextlib.nullcontext()


def as_array(a: Any) -> Any:
    """NumPy or CuPy view of ``a`` (a torch tensor goes to CuPy on CUDA, else to NumPy; an
    array of a registered namespace stays as it is)."""
    mod = type(a).__module__
    if mod.startswith("torch"):
        a = a.detach()
        if str(a.dtype) == "torch.bfloat16":
            a = a.float()  # NumPy has no bfloat16; float32 holds it exactly
        if a.is_cuda:
            try:
                import cupy

                return cupy.from_dlpack(a)
            except ImportError:
                a = a.cpu()
        return a.numpy()
    if mod.startswith("cupy") or type(a) in _NAMESPACES:
        return a
    return np.asarray(a)
