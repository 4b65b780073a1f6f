"""Reads of a store: :meth:`EmbeddingStore.split` (and ``store[split]``).

A split is read as the committed rows of each of its parts (the main
arrays, then every writer's shard), one consistent snapshot of their commit
records, each checked against its arrays; chunks are read lazily, with
errors that name the store, array and rows. The methods here are those of
:class:`ncdask.EmbeddingStore` (a mixin); :func:`array_backend` and
:func:`on_backend` put the chunks on CuPy (or another array module).
"""

from __future__ import annotations

from typing import Any

import dask.array as da
import numpy as np
import xarray as xr

from ncdask.store.layout import _is_labelled, _naming_broken_metadata, _read
from ncdask.store.record import _check_record, _record, _snapshot
from ncdask.store.setkey import SetKey
from ncdask._version import __version__


class ReadsMixin:
    """:meth:`EmbeddingStore.split`, ``store[split]`` and ``split in store``."""

    def split(
        self,
        name: str,
        *,
        layer: str | None = None,
        epoch: int | None = None,
        backend: Any = "numpy",
    ) -> xr.Dataset:
        """The committed rows of a split as a lazy Dataset.

        Parameters
        ----------
        name : str
            Split name.
        layer, epoch : optional
            The set to read (see :meth:`sets`).
        backend : {"numpy", "cupy"} or array module, default "numpy"
            Array module of the chunks. ``"cupy"`` copies each chunk to the
            current CUDA device as it is read (``cupy.asarray`` per block), so
            :func:`ncdask.class_stats` and :func:`ncdask.measure` run on the
            GPU; the results stay CuPy-backed until you move them, e.g. with
            ``.compute().as_numpy()``. Any NumPy-like module with ``asarray``
            and ``empty`` is accepted too.

        Returns
        -------
        xarray.Dataset
            ``embeddings (sample, feature)`` and ``labels (sample)`` (no
            ``labels`` in an unlabelled split), dask-backed,
            chunked as stored; attrs ``n_classes``, ``dim`` (the set's width),
            ``class_names``,
            ``split``, ``layer``, ``epoch``, ``class_counts``, ``n_committed`` (the
            rows the record describes), ``ncdask_version``.

        Raises
        ------
        ImportError
            ``backend="cupy"`` without CuPy installed.
        RuntimeError
            ``backend="cupy"`` without a CUDA device.
        """
        xp = array_backend(backend)
        with _naming_broken_metadata(self.url, self._storage_options):
            key = SetKey(layer, epoch)
            g = self._split_group(name, key, create=False)
            parts, rec = _snapshot(g)
            for p, _ in parts:
                _check_record(p, self.n_classes, self.url)
        n = int(rec["n_committed"])
        D = int(g["embeddings"].shape[1])
        parts = [(p, k) for p, k in parts if k > 0] or parts[:1]

        def column(name: str) -> da.Array:
            cols = [_read(p[name], self.url)[:k] for p, k in parts]
            return on_backend(cols[0] if len(cols) == 1 else da.concatenate(cols), xp)

        data_vars = {"embeddings": (("sample", "feature"), column("embeddings"))}
        if _is_labelled(g):
            data_vars["labels"] = (("sample",), column("labels"))
        counts = rec.get("class_counts")
        attrs = {
            "n_classes": self.n_classes,
            "dim": D,
            "split": name,
            "layer": key.layer,
            "epoch": key.epoch,
            "class_counts": None if counts is None else np.asarray(counts, dtype=np.int64),
            "n_committed": n,
            "labelled": int(_is_labelled(g)),
            # every part promises finite rows: NaN in them is a lost chunk, not data
            "finite": 1 if all(_record(p).get("finite") is True for p, _ in parts) else None,
            "store": self.url,
            "ncdask_version": __version__,
            "ignore_index": self.ignore_index,
        }
        if self.class_names is not None:
            attrs["class_names"] = list(self.class_names)
        attrs = {k: v for k, v in attrs.items() if v is not None}
        return xr.Dataset(
            data_vars,
            coords={"feature": np.arange(D)},
            attrs=attrs,
        )

    def __getitem__(self, split: str) -> xr.Dataset:
        return self.split(split)

    def __contains__(self, split: str) -> bool:
        return split in self.splits()


def array_backend(backend: Any) -> Any:
    """The array module for ``backend`` ("numpy", "cupy" or a module); None for NumPy.

    Raises a clear error, naming the fix, when ``"cupy"`` is asked for on a
    machine without CuPy or without a CUDA device.
    """
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
                "wheel matching your CUDA driver)"
            ) from e
        try:
            n_dev = cupy.cuda.runtime.getDeviceCount()
        except Exception as e:  # CUDARuntimeError without a driver
            raise RuntimeError(f"backend='cupy' but no CUDA device is usable: {e}") from e
        if n_dev < 1:
            raise RuntimeError("backend='cupy' but no CUDA device is visible")
        return cupy
    if not (hasattr(backend, "asarray") and hasattr(backend, "empty")):
        raise TypeError(
            f"backend must be 'numpy', 'cupy' or an array module, got {type(backend).__name__}"
        )
    return backend


def on_backend(x: da.Array, xp: Any) -> da.Array:
    """``x`` with its chunks moved to the array module ``xp`` (unchanged for None)."""
    if xp is None:
        return x
    return x.map_blocks(xp.asarray, meta=xp.empty((0,) * x.ndim, dtype=x.dtype))
