"""A set's classifier: each version is written beside the current one (listed in a lease),
the set's ``ncdask_classifier`` attribute switches to it in one PUT, the old one is deleted
last: readers and killed writers see one whole classifier."""

from __future__ import annotations

from typing import Any

import dask.array as da
import numpy as np
from zarr.codecs import Crc32cCodec, ZstdCodec

from ncdask.kernels._xp import to_numpy
from ncdask.store.core import CLASSIFIER_ATTR, Core, classifier_name, fresh, read_array
from ncdask.store.locks import CLASSIFIER, split_lock
from ncdask.store.setkey import SetKey


def set_classifier(core: Core, W: Any, b: Any, key: SetKey) -> None:
    """Store ``W`` (K×D) and ``b`` (K or None) as the set's classifier."""
    core.require_writable()
    W = np.asarray(to_numpy(W), dtype=np.float64)
    K, known = core.n_classes, core.known_dim(key)
    if (W.ndim != 2 or W.shape[0] != K or W.shape[1] < 1
            or (known is not None and W.shape[1] != known)):
        raise ValueError(
            f"W has shape {W.shape}, expected (n_classes, dim) = "
            f"({K}, {known if known is not None else 'D'})"
            + (f" for set {key.where}" if key.where else ""))
    if b is not None:
        b = np.asarray(to_numpy(b), dtype=np.float64)
        if b.shape != (K,):
            raise ValueError(f"b has shape {b.shape}, expected ({K},)")
    for name, v in (("W", W), ("b", b)):
        if v is not None and not np.all(np.isfinite(v)):
            raise ValueError(f"{name} holds NaN or inf values; nothing was written")
    sg = core.require_set(key, W.shape[1])[0]
    with core.lease() as lease:  # each version listed: removable once unused and expired
        name = f".classifier-{lease.id}"
        lease.stage(core.fs_path(sg, name)[1], unless=CLASSIFIER_ATTR)
        cg = sg.create_group(name)
        # checksummed, and NaN where a chunk goes missing (0 would pass for a classifier)
        safe = {"compressors": [ZstdCodec(level=3), Crc32cCodec()], "fill_value": np.nan}
        cg.create_array("W", data=W, dimension_names=("class", "feature"), **safe)
        if b is not None:
            cg.create_array("b", data=b, dimension_names=("class",), **safe)
        with split_lock(core, key, CLASSIFIER):  # one switch at a time: none left behind
            sg = fresh(sg)
            before = classifier_name(sg)
            if before is not None:
                lease.stage(core.fs_path(sg, before)[1], unless=CLASSIFIER_ATTR)
            sg.attrs[CLASSIFIER_ATTR] = name  # the switch
            if before is not None:
                core.remove_group(sg, before)
    core.tidy(sg)


def classifier(core: Core, key: SetKey, lazy: bool) -> tuple[Any, Any]:
    """The set's stored ``(W, b)``, NumPy or (``lazy``) dask arrays over the stored chunks."""
    sg = core.set_group(key)
    sg = None if sg is None else fresh(sg)  # the pointer as it is now
    name = None if sg is None else classifier_name(sg)
    if name is None:
        raise KeyError(f"no classifier stored for set {key.path or 'default'}")
    cg = sg[name]  # a lost chunk raises (W and b are finite: a NaN fill is no classifier)
    out = [read_array(cg[n], core.url) for n in ("W", "b") if n in cg]
    if not lazy:  # read in place, chunk by chunk: compute() would hold the chunks and the whole
        out, lazies = [np.empty(a.shape, a.dtype) for a in out], out
        da.store(lazies, out, lock=False, scheduler="sync")
    return out[0], (out[1] if len(out) > 1 else None)
