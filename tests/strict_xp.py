"""A host stand-in for CuPy: arrays that refuse to become NumPy arrays implicitly.

:class:`StrictArray` wraps a NumPy array and behaves like a CuPy array does
towards NumPy code:

* ``np.asarray(a)`` / ``np.array(a)`` / ``__array__`` raise ``TypeError``
  (CuPy's "Implicit conversion to a NumPy array is not allowed"); ``a.get()``
  is the explicit copy to the host;
* ``np.<function>(a)`` dispatches to the namespace (CuPy's
  ``__array_function__``), ufuncs and operators work on strict arrays;
* mixing a strict array with a NumPy array of ndim >= 1 in a ufunc, an
  operator or a namespace function raises ``TypeError`` (CuPy's "Unsupported
  type <class 'numpy.ndarray'>"); only ``xp.asarray`` and friends take host
  arrays, and, as CuPy does, indices may be host arrays;
* floating-point warnings are silenced (CuPy does not warn).

:data:`sx` is its NumPy-like module, registered with
:func:`ncdask.kernels._xp.register_namespace`, so the kernels pick it up from
their inputs as they would pick up ``cupy``. A kernel that calls a NumPy
function on its ``xp`` arrays, turns them into NumPy arrays implicitly, or
mixes them with host arrays fails under it as it would on a GPU.
"""

from __future__ import annotations

import functools
import types
from typing import Any

import dask.array as da
import numpy as np
from numpy.lib.mixins import NDArrayOperatorsMixin

from ncdask.kernels._xp import register_namespace

MESSAGE = (
    "Implicit conversion to a NumPy array is not allowed. Please use `.get()` to construct "
    "a NumPy array explicitly."
)

#: Namespace functions that take host arrays (explicit transfers).
FROM_HOST = frozenset({"asarray", "array", "asanyarray", "ascontiguousarray", "asfortranarray"})


class StrictArray(NDArrayOperatorsMixin):
    """A NumPy array behind a CuPy-like wall (see the module docstring)."""

    __slots__ = ("_a",)
    __array_priority__ = 100
    __hash__ = None  # type: ignore[assignment]

    def __init__(self, a: np.ndarray) -> None:
        if not isinstance(a, np.ndarray):
            raise TypeError(f"StrictArray wraps a numpy.ndarray, got {type(a).__name__}")
        object.__setattr__(self, "_a", a)

    # -- the wall
    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        raise TypeError(MESSAGE)

    def get(self) -> np.ndarray:
        """Explicit copy to a NumPy array (CuPy's ``ndarray.get``)."""
        return self._a.copy()

    def __array_ufunc__(self, ufunc: Any, method: str, *inputs: Any, **kwargs: Any) -> Any:
        return _call(getattr(ufunc, method), inputs, kwargs, host=False)

    def __array_function__(self, func: Any, types_: Any, args: Any, kwargs: Any) -> Any:
        # np.array(host, like=strict) is CuPy's explicit transfer (NEP 35)
        return _call(func, args, kwargs, host=func.__name__ in FROM_HOST)

    # -- array protocol
    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        attr = getattr(self._a, name)
        if callable(attr):
            return functools.wraps(attr)(lambda *a, **k: _call(attr, a, k, host=False))
        return _wrap(attr)

    def __getitem__(self, key: Any) -> Any:
        return _wrap(self._a[_unwrap(key, host=True)])

    def __setitem__(self, key: Any, value: Any) -> None:
        with np.errstate(all="ignore"):
            self._a[_unwrap(key, host=True)] = _unwrap(value, host=True)

    def __len__(self) -> int:
        return len(self._a)

    def __iter__(self) -> Any:
        return (_wrap(r) for r in self._a)

    def __float__(self) -> float:
        return float(self._a)

    def __int__(self) -> int:
        return int(self._a)

    def __index__(self) -> int:
        return self._a.__index__()

    def __bool__(self) -> bool:
        return bool(self._a)

    def __complex__(self) -> complex:
        return complex(self._a)

    def __repr__(self) -> str:
        return f"StrictArray({self._a!r})"

    def __copy__(self) -> StrictArray:
        return StrictArray(self._a.copy())

    def __deepcopy__(self, memo: Any) -> StrictArray:
        return StrictArray(self._a.copy())

    def __reduce__(self) -> Any:
        return (StrictArray, (self._a,))

    def __dask_tokenize__(self) -> Any:
        from dask.base import tokenize

        return ("StrictArray", tokenize(self._a))


def _unwrap(obj: Any, *, host: bool) -> Any:
    if isinstance(obj, StrictArray):
        return obj._a
    if isinstance(obj, np.ndarray):
        if host or obj.ndim == 0:
            return obj
        raise TypeError(f"Unsupported type {type(obj)} (a host array mixed with strict arrays)")
    if type(obj) in (list, tuple):
        return type(obj)(_unwrap(o, host=host) for o in obj)
    if type(obj) is dict:
        return {k: _unwrap(v, host=host) for k, v in obj.items()}
    return obj


def _wrap(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return StrictArray(obj)
    if isinstance(obj, np.generic):  # CuPy reductions give 0-d arrays, not scalars
        return StrictArray(np.asarray(obj))
    if type(obj) in (list, tuple):
        return type(obj)(_wrap(o) for o in obj)
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # namedtuple results
        return type(obj)(*(_wrap(o) for o in obj))
    return obj


def _call(fn: Any, args: Any, kwargs: Any, *, host: bool) -> Any:
    args, kwargs = _unwrap(tuple(args), host=host), _unwrap(dict(kwargs), host=host)
    if "like" in kwargs:
        kwargs.pop("like")
    with np.errstate(all="ignore"):
        return _wrap(fn(*args, **kwargs))


class _Namespace(types.ModuleType):
    """NumPy's functions, taking and returning :class:`StrictArray`."""

    def __init__(self, name: str, module: types.ModuleType) -> None:
        super().__init__(name)
        self._np = module

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        obj = getattr(self._np, name)
        if isinstance(obj, types.ModuleType):
            out: Any = _Namespace(f"{self.__name__}.{name}", obj)
        elif isinstance(obj, type) or not callable(obj):
            return obj  # dtypes, finfo, errstate, constants
        else:
            host = name in FROM_HOST
            out = functools.wraps(obj)(lambda *a, _f=obj, _h=host, **k: _call(_f, a, k, host=_h))
        setattr(self, name, out)
        return out


#: The strict module (``xp`` of strict arrays).
sx = _Namespace("strict_xp.sx", np)
sx.ndarray = StrictArray
register_namespace(StrictArray, sx)


def _register_with_dask() -> None:
    """The dispatches dask registers for ``cupy.ndarray`` (``dask.array.backends``)."""
    from dask.array import backends, dispatch

    dispatch.concatenate_lookup.register(StrictArray, sx.concatenate)
    dispatch.take_lookup.register(StrictArray, sx.take)
    dispatch.tensordot_lookup.register(StrictArray, sx.tensordot)
    dispatch.einsum_lookup.register(StrictArray, sx.einsum)
    dispatch.empty_lookup.register(StrictArray, sx.empty)
    dispatch.numel_lookup.register(StrictArray, backends._numel_arraylike)
    dispatch.nannumel_lookup.register(StrictArray, backends._nannumel)
    dispatch.to_numpy_dispatch.register(StrictArray, lambda x: x.get())


_register_with_dask()


def asstrict(x: Any) -> Any:
    """A strict array, or a dask array with strict chunks, from a NumPy or dask array."""
    if isinstance(x, da.Array):
        return x.map_blocks(sx.asarray, meta=sx.empty((0,) * x.ndim, dtype=x.dtype))
    return sx.asarray(x)


def is_strict_dask(x: Any) -> bool:
    """True for a dask array whose chunks are strict arrays (by its ``_meta``)."""
    return isinstance(x, da.Array) and isinstance(x._meta, StrictArray)


def to_host(x: Any) -> np.ndarray:
    """Explicit copy of a strict, CuPy or NumPy array (or an xarray variable's data) to NumPy."""
    if type(x).__module__.startswith("xarray."):
        x = x.data
    if isinstance(x, da.Array):
        x = x.compute()
    if isinstance(x, np.ndarray | np.generic):
        return np.asarray(x)
    return x.get()


def cupy_or_skip() -> Any:
    """The ``cupy`` module, or skip the test: no CuPy, or no usable CUDA device behind it."""
    import pytest

    cp = pytest.importorskip("cupy")
    try:
        n = cp.cuda.runtime.getDeviceCount()
    except Exception as e:  # CUDARuntimeError without a driver
        pytest.skip(f"CuPy without a usable CUDA device: {e}")
    if n < 1:
        pytest.skip("no CUDA device")
    return cp


def namespace(name: str) -> Any:
    """The array module a parametrised test runs on: ``"strict"`` (:data:`sx`) or ``"cupy"``."""
    return sx if name == "strict" else cupy_or_skip()
