"""Reads of a split: the committed rows of each part (main arrays, then every shard) from one
snapshot of their records, checked against the arrays (a lost chunk raises when read, in every
split alike); and the array module of the chunks."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr
import zarr

from ncdask._version import __version__
from ncdask.store.core import Core, is_labelled, naming_broken_metadata, read_array
from ncdask.store.record import (
    DamagedStoreError,
    SplitChangedError,
    check_record,
    generation,
    record,
    snapshot,
)
from ncdask.store.setkey import SetKey


@contextlib.contextmanager
def told_if_changed(core: Core, name: str, key: SetKey, g: zarr.Group) -> Iterator[None]:
    """Turn a missing node or damage met while reading split ``g`` (``name``) into
    :class:`SplitChangedError` where the split was deleted or replaced meanwhile (no lock
    keeps a reader's nodes: a delete may pull them from under it)."""
    try:
        yield
    except (DamagedStoreError, KeyError) as e:
        now = core.find_split(name, key)
        if now is None or generation(record(now)) != generation(record(g)):
            raise SplitChangedError(
                f"{core.url!r}: split {name!r} in {key.path or 'the default set'} was "
                "deleted or replaced while it was opened") from e
        raise


def read_split(core: Core, name: str, key: SetKey, backend: Any) -> xr.Dataset:
    """The committed rows of a split as a lazy Dataset (:meth:`ncdask.EmbeddingStore.split`)."""
    xp = array_backend(backend)
    with naming_broken_metadata(core.url, core.storage_options):
        g = core.split_group(name, key)
        with told_if_changed(core, name, key, g):
            parts, rec = snapshot(g)
            for p, _ in parts:
                check_record(p, core.n_classes, core.url)
            D = int(g["embeddings"].shape[1])
    parts = [(p, k) for p, k in parts if k > 0] or parts[:1]

    split = name

    def column(name: str) -> da.Array:
        cols = [read_array(p[name], core.url, split, record(p))[:k] for p, k in parts]
        return on_backend(cols[0] if len(cols) == 1 else da.concatenate(cols), xp)

    data_vars = {"embeddings": (("sample", "feature"), column("embeddings"))}
    if is_labelled(g):
        data_vars["labels"] = (("sample",), column("labels"))
    counts, names = rec.get("class_counts"), core.meta.get("class_names")
    attrs = {
        "n_classes": core.n_classes, "dim": D, "split": name, "layer": key.layer,
        "epoch": key.epoch,
        "class_counts": None if counts is None else np.asarray(counts, dtype=np.int64),
        "n_committed": int(rec["n_committed"]), "labelled": int(is_labelled(g)),
        # every part promises finite rows: NaN in them is a lost chunk, not data
        "finite": 1 if all(record(p).get("finite") is True for p, _ in parts) else None,
        "store": core.url, "ncdask_version": __version__, "ignore_index": core.ignore_index,
        "class_names": None if names is None else list(names),
    }
    attrs = {k: v for k, v in attrs.items() if v is not None}
    return xr.Dataset(data_vars, coords={"feature": np.arange(D)}, attrs=attrs)


def array_backend(backend: Any) -> Any:
    """The array module for ``backend`` ("numpy", "cupy" or a module); None for NumPy.
    ``"cupy"`` without CuPy or a CUDA device raises an error naming the fix."""
    if backend is None or (isinstance(backend, str) and backend == "numpy") or backend is np:
        return None
    if isinstance(backend, str):
        if backend != "cupy":
            raise ValueError(f"backend must be 'numpy' or 'cupy', got {backend!r}")
        try:
            import cupy
        except ImportError as e:
            raise ImportError(
                "backend='cupy' needs CuPy: pip install 'ncdask[gpu]' (or the cupy-cuda* "
                "wheel matching your CUDA driver)") from e
        try:
            n_dev = cupy.cuda.runtime.getDeviceCount()
        except Exception as e:  # CUDARuntimeError without a driver
            raise RuntimeError(f"backend='cupy' but no CUDA device is usable: {e}") from e
        if n_dev < 1:
            raise RuntimeError("backend='cupy' but no CUDA device is visible")
        return cupy
    if not (hasattr(backend, "asarray") and hasattr(backend, "empty")):
        raise TypeError(
            f"backend must be 'numpy', 'cupy' or an array module, got {type(backend).__name__}")
    return backend


def on_backend(x: da.Array, xp: Any) -> da.Array:
    """``x`` with its chunks moved to the array module ``xp`` (unchanged for None)."""
    if xp is None:
        return x
    return x.map_blocks(xp.asarray, meta=xp.empty((0,) * x.ndim, dtype=x.dtype))
