"""One lock per split name, which every change of a split takes (append, writer flush, import,
overwrite, delete) and one per set for its classifier, so no writer works on a split that is
being deleted or replaced.

On a local disk it is an ``flock`` of a file ncdask owns, ``<root>/.ncdask/locks/<sha1>.lock``
(made once, never deleted: a lock file that went away could be locked twice); in a
``memory://`` store a lock of this process; object stores have no lock (their writers commit
shards of their own, tied to the split's generation: :mod:`ncdask.store.record`).
Shared holders (shard appenders, creators) exclude only exclusive ones (deletes, imports,
appends in lock mode). A thread already holding a split's lock takes it again for free.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
import uuid
from collections.abc import Iterator
from typing import Any

try:
    import fcntl
except ImportError:  # pragma: no cover - not on POSIX: no lock
    fcntl = None

#: The lock key of a set's classifier (split names never start with ".").
CLASSIFIER = ".classifier"
#: The folder of ncdask's own files in a store root: a Zarr group, so listings skip it quietly.
OWN = ".ncdask"

_held = threading.local()
_memory: dict[tuple[str, str], threading.RLock] = {}
_memory_guard = threading.Lock()


@contextlib.contextmanager
def split_lock(core: Any, key: Any, split: str, shared: bool = False) -> Iterator[None]:
    """Hold the lock of ``split`` in the set ``key`` of store ``core`` (exclusive unless
    ``shared``); a no-op on object stores and where this thread holds it already."""
    kind = core.kind
    if kind == "object":
        yield
        return
    root = core.fs_path()[1]
    name = "/".join(p for p in (key.path, split) if p)
    held = _held.__dict__.setdefault("locks", {})
    ident = (root, name)
    if ident in held:
        if held[ident] and not shared:
            raise RuntimeError(f"split {name!r} of {core.url!r}: an exclusive lock was asked "
                               "for while this thread holds the shared one")
        yield
        return
    held[ident] = shared
    try:
        with _memory_lock(ident) if kind == "memory" else _flock(root, name, shared):
            yield
    finally:
        del held[ident]


@contextlib.contextmanager
def _memory_lock(ident: tuple[str, str]) -> Iterator[None]:
    with _memory_guard:
        lock = _memory.setdefault(ident, threading.RLock())
    with lock:
        yield


@contextlib.contextmanager
def _flock(root: str, name: str, shared: bool) -> Iterator[None]:
    if fcntl is None:  # pragma: no cover
        yield
        return
    path = os.path.join(root, OWN, "locks", hashlib.sha1(name.encode()).hexdigest() + ".lock")
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except FileNotFoundError:
        _own_folder(root)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _own_folder(root: str) -> None:
    """Make ``<root>/.ncdask/locks`` and the ``zarr.json`` that makes ``.ncdask`` a group
    (written whole, by rename: a reader never sees it half)."""
    own = os.path.join(root, OWN)
    os.makedirs(os.path.join(own, "locks"), exist_ok=True)
    meta = os.path.join(own, "zarr.json")
    if not os.path.exists(meta):
        tmp = f"{meta}.{uuid.uuid4().hex}.partial"
        with open(tmp, "w") as f:
            json.dump({"zarr_format": 3, "node_type": "group",
                       "attributes": {"ncdask_own": "locks"}}, f)
        os.replace(tmp, meta)
