"""One lock per split name (and per set's classifier), taken by every change of the split.

Local disk: ``flock`` of ``<root>/.ncdask/locks/<sha1>.lock`` (never deleted, so never locked
twice); ``memory://``: a lock of this process; object stores: none (shards carry the split's
generation instead). Shared holders exclude only exclusive ones; re-entry is free."""

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
_held = threading.local()
_memory: dict[tuple[str, str], threading.RLock] = {}


@contextlib.contextmanager
def split_lock(core: Any, key: Any, split: str, shared: bool = False) -> Iterator[None]:
    """Hold the lock of ``split`` in set ``key`` (exclusive unless ``shared``); a no-op on
    object stores and where this thread holds it already."""
    kind = core.kind
    ident = (core.fs_path()[1], "/".join(p for p in (key.path, split) if p))
    held = _held.__dict__.setdefault("locks", {})
    if kind == "object" or ident in held:
        if held.get(ident) and not shared:
            raise RuntimeError(f"{ident[1]!r} of {core.url!r}: exclusive lock asked for while "
                               "this thread holds the shared one")
        yield
        return
    held[ident] = shared
    try:
        if kind == "memory":
            with _memory.setdefault(ident, threading.RLock()):
                yield
        else:
            with _flock(*ident, shared):
                yield
    finally:
        del held[ident]


@contextlib.contextmanager
def _flock(root: str, name: str, shared: bool) -> Iterator[None]:
    path = os.path.join(root, ".ncdask", "locks", hashlib.sha1(name.encode()).hexdigest())
    try:
        fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT, 0o666)
    except FileNotFoundError:  # the first lock of this store
        os.makedirs(os.path.dirname(path), exist_ok=True)
        meta = os.path.join(root, ".ncdask", "zarr.json")  # a group: listings skip it quietly
        if not os.path.exists(meta):
            with open(tmp := f"{meta}.{uuid.uuid4().hex}", "w") as f:
                json.dump({"zarr_format": 3, "node_type": "group", "attributes": {}}, f)
            os.replace(tmp, meta)
        fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT, 0o666)
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock
