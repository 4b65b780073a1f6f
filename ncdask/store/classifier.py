"""A set's classifier: :meth:`EmbeddingStore.set_classifier` and
:meth:`EmbeddingStore.classifier`.

Each version of a set's classifier is written in a ``.classifier-<owner>``
group of its own beside the current one; the set's ``ncdask_classifier``
attribute (:data:`ncdask.store.layout.CLASSIFIER_ATTR`) then switches to it in
one metadata write, and the old version is deleted last, so a reader, or a
writer killed at any point, sees one whole classifier. The methods here are
those of :class:`ncdask.EmbeddingStore` (a mixin).
"""

from __future__ import annotations

from typing import Any

import dask.array as da
import numpy as np
from zarr.codecs import Crc32cCodec, ZstdCodec

from ncdask.store.layout import CLASSIFIER_ATTR, _classifier_name, _fresh
from ncdask.store.setkey import SetKey
from ncdask.store.staging import owner_tag
from ncdask.kernels._xp import to_numpy


class ClassifierMixin:
    """:meth:`EmbeddingStore.set_classifier` and :meth:`EmbeddingStore.classifier`."""

    def set_classifier(
        self, W: Any, b: Any = None, *, layer: str | None = None, epoch: int | None = None
    ) -> None:
        """Store the classifier weights ``W`` (K×D) and optional bias ``b`` (K).

        D is the set's width (:meth:`dim_of`); for a set not written yet,
        W's columns give the set its width.
        """
        self._require_writable()
        W = np.asarray(to_numpy(W), dtype=np.float64)
        key = SetKey(layer, epoch)
        known = self._known_dim(key)
        if (W.ndim != 2 or W.shape[0] != self.n_classes or W.shape[1] < 1
                or (known is not None and W.shape[1] != known)):
            where = key.where
            raise ValueError(
                f"W has shape {W.shape}, expected (n_classes, dim) = "
                f"({self.n_classes}, {known if known is not None else 'D'})"
                + (f" for set {where}" if where else "")
            )
        if b is not None:
            b = np.asarray(to_numpy(b), dtype=np.float64)
            if b.shape != (self.n_classes,):
                raise ValueError(f"b has shape {b.shape}, expected ({self.n_classes},)")
        for name, v in (("W", W), ("b", b)):
            if v is not None and not np.all(np.isfinite(v)):
                raise ValueError(f"{name} holds NaN or inf values; nothing was written")
        sg = self._require_set(key, W.shape[1])[0]
        # a new version is written beside the old, then the set's pointer to it
        # (one zarr.json, one atomic PUT, also on object stores, which have no
        # rename) switches to it; the old version is deleted last. A kill at
        # any point leaves the old classifier or the new one, whole (the first
        # version deleted first: all-zero or missing W after a SIGKILL, 8/8)
        name = f".classifier-{owner_tag()}"
        cg = sg.create_group(name)
        # checksummed, and NaN where a chunk goes missing (was 0: a plausible nc4)
        safe = {"compressors": [ZstdCodec(level=3), Crc32cCodec()], "fill_value": np.nan}
        cg.create_array("W", data=W, dimension_names=("class", "feature"), **safe)
        if b is not None:
            cg.create_array("b", data=b, dimension_names=("class",), **safe)
        sg = _fresh(sg)  # its attrs as they are now
        before = _classifier_name(sg)
        sg.attrs[CLASSIFIER_ATTR] = name  # the switch
        if before is not None:
            self._remove_group(sg, before)
        self._tidy(sg)

    def classifier(
        self, *, layer: str | None = None, epoch: int | None = None, lazy: bool = False
    ) -> tuple[Any, Any]:
        """The stored ``(W, b)`` (b is None when no bias was stored).

        With ``lazy=True``, dask arrays over the stored Zarr chunks: a
        vocabulary-sized classifier (K=128k, D=4096 is 4 GiB in float64) is
        then read tile by tile by :func:`ncdask.measure`, never whole.
        """
        key = SetKey(layer, epoch)
        sg = self._set_group(key, create=False)
        sg = None if sg is None else _fresh(sg)  # the pointer as it is now
        name = None if sg is None else _classifier_name(sg)
        if name is None:
            raise KeyError(f"no classifier stored for set {key.path or 'default'}")
        cg = sg[name]
        if lazy:
            return da.from_zarr(cg["W"]), (da.from_zarr(cg["b"]) if "b" in cg else None)
        return cg["W"][:], (cg["b"][:] if "b" in cg else None)
