"""Where things are in a store, and how they are read: the layout.

A store is a Zarr group; each embedding set is a group named by its tags
(``layer=<name>/epoch=<e>``, the root for the untagged set), each split a
group in it with ``embeddings`` and ``labels`` arrays (and writers' shards),
and each set's classifier a ``.classifier-<owner>`` group that the set's
``ncdask_classifier`` attribute points to (a set's own path is its
:class:`ncdask.store.setkey.SetKey`'s). This module names those places, follows
the pointer, reads arrays with errors that name the store,
array and rows, and creates a node once however many writers race to
(:func:`_put_once`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import dask.array as da
import numpy as np
import zarr

from ncdask.store.record import DamagedStoreError
from ncdask.store.setkey import SET_TAGS  # noqa: F401 - the set tags, named here as before


@contextlib.contextmanager
def _naming_broken_metadata(url: str, storage_options: dict | None) -> Iterator[None]:
    """Turn a JSON error from Zarr into one that names the broken ``zarr.json``.

    Zarr parses a node's metadata without saying which file it was: a
    truncated ``zarr.json`` surfaced as "Expecting value: line 6 column 16".
    On such an error the store's metadata files are read one by one to find
    the broken ones (only then: it lists the whole store).
    """
    import json

    try:
        yield
    except json.JSONDecodeError as e:
        import fsspec

        fs, root = fsspec.core.url_to_fs(url, **(storage_options or {}))
        broken = []
        for f in fs.glob(f"{root.rstrip('/')}/**/zarr.json") + [f"{root.rstrip('/')}/zarr.json"]:
            try:
                json.loads(fs.cat_file(f))
            except (ValueError, FileNotFoundError):
                broken.append(str(f))
        raise DamagedStoreError(
            f"{url!r}: unreadable metadata ({e}) in " + (", ".join(sorted(set(broken)))
                                                         or "a zarr.json file")
            + ": the store is damaged (truncated or edited)") from e


class _NamedChunks:
    """A Zarr array whose read errors name the store, the array and the rows.

    A checksum mismatch or a truncated chunk otherwise surfaces deep in a
    dask traceback as ``Stored and computed checksum do not match`` or
    ``error during blosc decompression: -1``, with nothing to say where.
    """

    def __init__(self, a: zarr.Array, url: str) -> None:
        self.a, self.url = a, url
        self.shape, self.dtype, self.ndim = a.shape, a.dtype, a.ndim

    def __getitem__(self, key: Any) -> np.ndarray:
        try:
            return self.a[key]
        except Exception as e:
            rows = key[0] if isinstance(key, tuple) else key
            span = (f"rows {rows.start}-{rows.stop - 1}" if isinstance(rows, slice)
                    and rows.start is not None and rows.stop is not None else f"{key}")
            raise DamagedStoreError(
                f"{self.url!r}: {self.a.path}, {span} (chunk rows {self.a.chunks[0]}): "
                f"cannot be read ({type(e).__name__}: {e}); run `ncdask check` on the store"
            ) from e


def _read(a: zarr.Array, url: str) -> da.Array:
    """``da.from_zarr(a)``, with read errors that name the store, array and rows."""
    from dask.base import tokenize

    name = "zarr-" + tokenize(url, a.path, a.shape, a.chunks, str(a.dtype), a.metadata.to_dict())
    return da.from_array(_NamedChunks(a, url), chunks=a.chunks, name=name, asarray=False,
                         fancy=False, lock=False, meta=np.empty((0,) * a.ndim, a.dtype))


#: Set on a split group whose deletion has begun (object stores).
DELETED_ATTR = "ncdask_deleted"


#: The set attribute naming the group that holds the set's current classifier.
CLASSIFIER_ATTR = "ncdask_classifier"


def _fresh(g: zarr.Group) -> zarr.Group:
    """Group ``g`` reopened: its attributes as they are in the store now, not as cached."""
    return zarr.open_group(store=g.store, path=g.path, mode="r" if g.store.read_only else "r+")


def _classifier_name(sg: zarr.Group) -> str | None:
    """The group of set ``sg`` holding its classifier (None: none stored).

    Versions live in ``.classifier-<owner>`` groups and the set's
    :data:`CLASSIFIER_ATTR` names the current one; stores written before
    versions keep theirs in ``classifier``.
    """
    name = sg.attrs.get(CLASSIFIER_ATTR)
    if isinstance(name, str) and name in sg:
        return name
    return "classifier" if "classifier" in sg else None


def _is_labelled(g: zarr.Group) -> bool:
    return bool(g.attrs["ncdask_split"].get("labelled", True))


def _check_labelled(g: zarr.Group, labelled: bool) -> None:
    """Labelled and unlabelled batches do not mix in one split."""
    have = _is_labelled(g)
    if have != labelled:
        name = g.attrs["ncdask_split"].get("split")
        raise ValueError(
            f"split {name!r} is {'labelled' if have else 'unlabelled'}: "
            + ("pass labels with every batch" if have else
               "its batches take no labels (y=None); use another split for labelled data")
        )


def _forget_listings(g: zarr.Group) -> None:
    """Drop the listings fsspec cached for ``g``'s store (s3fs keeps them: after a
    delete through another handle, Zarr's own saw the deleted nodes as present)."""
    fs = getattr(g.store, "fs", None)
    if fs is not None and hasattr(fs, "invalidate_cache"):
        fs.invalidate_cache()


def _truncate(g: zarr.Group, n: int) -> None:
    """Shrink a split's arrays back to its ``n`` committed rows (after a failed write)."""
    for name in ("embeddings", "labels"):
        if name in g:
            a = g[name]
            if a.shape[0] > n:
                a.resize((n, *a.shape[1:]))


def _put_once(parent: zarr.Group, name: str, build: Any) -> zarr.Group | zarr.Array:
    """Create node ``name`` of ``parent`` with one write that never replaces an existing node.

    ``build(group)`` creates the node (a group or array, with its attributes)
    in a scratch in-memory group; its ``zarr.json`` is then put in the store
    with ``set_if_not_exists``, so writers creating the same new set or split
    at once all end with one node and its attributes (atomic on a local disk
    and in memory; object stores check, then write). Why not
    ``require_group`` / ``create_array``: a creator that passed its existence
    check wrote the metadata again after another had created the node, and
    the node lost its attributes (a set's tags: ``sets()`` returned ``[]``)
    or an array its shape, and two creators raised ``ContainsGroupError``
    (issue 13: 5 of 150 trials). Returns the node as it is in the store.
    """
    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.sync import sync
    from zarr.storage import MemoryStore

    scratch = zarr.open_group(MemoryStore(), mode="w", zarr_format=3)
    build(scratch)
    proto = default_buffer_prototype()
    body = sync(scratch.store.get(f"{name}/zarr.json", prototype=proto))
    key = "/".join(p for p in (parent.path, name, "zarr.json") if p)
    sync(parent.store.set_if_not_exists(key, body))
    return zarr.open(store=parent.store, path="/".join(p for p in (parent.path, name) if p),
                     mode="r+", zarr_format=3)

