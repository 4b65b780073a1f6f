"""Leases: what a writer stages, listed before it is made, and whether the writer lives.

A writer lists each path it stages (a split built beside the old, a classifier version, an
output written beside its path, a folder set aside) in a lease, a Zarr group whose
``ncdask_lease`` attribute holds a heartbeat (renewed by a daemon thread) and the paths with
their recovery: delete, or move an aside back where its place is not whole. A lease not
renewed for ``ncdask.lease_expiry`` seconds (dask config, default 600; one per store) is
expired and the next writer recovers it; a name never decides. Leases live in
``<store>/.ncdask/leases/`` or beside an output as ``<path>.ncdask-lease-<id>``.

A writer that ends in an exception recovers its own lease at once; after an interrupt
(``KeyboardInterrupt``) it leaves the lease expired, listing every path, so that what I/O still
in flight writes afterwards is recovered too: by :func:`release_own` (the CLI, once that I/O has
ended) or by the next writer."""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import dask

#: Dask config key: seconds after its last heartbeat that a lease is expired.
EXPIRY_KEY = "ncdask.lease_expiry"
EXPIRY_S, BEAT_S = 600.0, 30.0
STORE_LEASES = ".ncdask/leases"  # a store's lease folder (a Zarr group), under its root
LEASE_ATTR = "ncdask_lease"
_BESIDE = (".ncdask-tmp-", ".ncdask-old-", ".ncdask-lease-")  # beside an output
Whole = Callable[[Any, str], bool]
Move = Callable[[Any, str, str], None]
_OWN: dict[str, Lease] = {}  # this process's leases not yet released (see release_own)


def expiry() -> float:
    """Seconds after its last heartbeat that a lease is expired (``ncdask.lease_expiry``)."""
    return float(dask.config.get(EXPIRY_KEY, EXPIRY_S))


def owner_tag() -> str:
    """A unique suffix for a staged name (random; it identifies nothing)."""
    return uuid.uuid4().hex[:16]


def is_staging(name: str) -> bool:
    """Whether a basename in the statistics cache is staged beside an output (listings skip
    it; cleanup never decides by name)."""
    return any(m in name for m in _BESIDE)


def _group(attrs: dict) -> bytes:
    return json.dumps({"zarr_format": 3, "node_type": "group", "attributes": attrs}).encode()


def _put(fs: Any, path: str, data: bytes) -> None:
    """Write a small file whole (readers never see half of it)."""
    if getattr(fs, "local_file", False):
        fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        part = f"{path}.{owner_tag()}"
        fs.pipe_file(part, data)
        os.replace(part, path)
    else:
        fs.pipe_file(path, data)


def has_root(fs: Any, path: str) -> bool:
    """Whether ``path`` is a Zarr node (has its ``zarr.json``)."""
    return bool(fs.exists(f"{path}/zarr.json"))


class Lease:
    """A writer's lease ``folder/<prefix><id>``, a context manager: :meth:`stage` each path
    (under ``root``) before it is created. At exit (after recovering it where the writer
    failed) it is removed, or kept expired while a listed path is still there."""

    def __init__(self, fs: Any, root: str, folder: str, prefix: str = "", *,
                 whole: Whole = has_root, move: Move | None = None) -> None:
        self.fs, self.root, self.id = fs, root, owner_tag()
        self.whole, self.move = whole, move
        self.dir = f"{folder.rstrip('/')}/{prefix}{self.id}"
        self.paths: list[dict[str, str]] = []
        self._lock, self._stop = threading.Lock(), threading.Event()
        self._beat: threading.Thread | None = None

    def _rel(self, path: str) -> str:
        if not path.startswith(f"{self.root}/"):
            raise ValueError(f"{path!r} is not under the lease's root {self.root!r}")
        return path[len(self.root) + 1:]

    def _write(self, heartbeat: float | None = None) -> None:
        with self._lock:
            rec = {"heartbeat": time.time() if heartbeat is None else heartbeat,
                   "paths": list(self.paths)}
            _put(self.fs, f"{self.dir}/zarr.json", _group({LEASE_ATTR: rec}))

    def stage(self, path: str, *, to: str | None = None, unless: str | None = None,
              aside: bool = False) -> str:
        """List ``path`` before it is created; return it. Recovery deletes it, or moves it
        back to ``to`` where ``to`` is not whole; it is kept while its parent group's
        attribute ``unless`` names it (a set's current classifier). ``aside``: ``path`` is
        ``to``'s old version (this writer's own recovery moves only that back)."""
        self.paths.append({"path": self._rel(path), **({"to": self._rel(to)} if to else {}),
                           **({"unless": unless} if unless else {}),
                           **({"aside": True} if aside else {})})
        if self._beat is not None:
            self._write()
        return path

    def __enter__(self) -> Lease:
        self._write()
        _OWN[self.id] = self
        every = min(BEAT_S, expiry() / 4)
        self._beat = threading.Thread(target=self._renew, args=(every,), daemon=True,
                                      name=f"ncdask-lease-{self.id}")
        self._beat.start()
        return self

    def _renew(self, every: float) -> None:
        while not self._stop.wait(every):
            with contextlib.suppress(Exception):  # a failed beat is retried at the next
                self._write()

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._beat is not None:
            self._beat.join()
        if exc[0] is not None:
            with contextlib.suppress(Exception):  # kept listed; recovered later
                self._recover()
        if exc[0] is None or issubclass(exc[0], Exception):
            self._release()
            return
        with contextlib.suppress(Exception):  # an interrupt: I/O may still be in flight
            self._write(heartbeat=0.0)  # every path still listed: late writes are found

    def _recover(self) -> list[str]:
        """Undo what this writer left (it ended in an exception): old versions set aside
        come back, the rest is deleted (a whole new version too: nothing was committed)."""
        undo = [e if e.get("aside") else {k: v for k, v in e.items() if k != "to"}
                for e in self.paths]
        return _apply(self.fs, _plan(self.fs, self.root, {"paths": undo}, self.whole),
                      self.move)[0]

    def _release(self) -> None:
        """Drop what is gone from the record: removed, or kept expired while a path stays."""
        with contextlib.suppress(Exception):  # what cannot be checked stays listed
            self.paths = [e for e in self.paths if self.fs.exists(f"{self.root}/{e['path']}")]
        if self.paths:
            self._write(heartbeat=0.0)  # this writer is done with them
        else:
            with contextlib.suppress(OSError):
                self.fs.rm(self.dir, recursive=True)
        _OWN.pop(self.id, None)


def release_own() -> list[str]:
    """Recover what this process's interrupted writers staged (their leases list it exactly)
    and release their leases; return the paths deleted or restored. Call
    once no work of this process writes any more (the CLI after Ctrl-C)."""
    done: list[str] = []
    for lease in [x for x in list(_OWN.values()) if x._stop.is_set()]:
        with contextlib.suppress(Exception):  # what stays listed, the next writer recovers
            done += lease._recover()
            lease._release()
    return done


def store_lease(fs: Any, root: str, move: Move | None = None) -> Lease:
    """A lease in the store at ``root`` (its lease folder made a Zarr group where missing);
    ``move`` restores what it sets aside."""
    for sub in (".ncdask", STORE_LEASES):
        meta = f"{root}/{sub}/zarr.json"
        if not fs.exists(meta):
            _put(fs, meta, _group({}))
    return Lease(fs, root, f"{root}/{STORE_LEASES}", move=move)


def beside_lease(fs: Any, path: str, *, whole: Whole = has_root,
                 move: Move | None = None) -> Lease:
    """A lease beside ``path`` (an output), ``<path>.ncdask-lease-<id>``; ``whole`` and
    ``move`` as for :func:`remove_stale`."""
    parent, _, base = path.rpartition("/")
    return Lease(fs, parent, parent, f"{base}.ncdask-lease-", whole=whole, move=move)


def leases(fs: Any, folder: str, prefix: str = "") -> list[tuple[str, dict]]:
    """``[(lease group, record), ...]`` in ``folder`` named ``prefix...`` (well-formed only)."""
    with contextlib.suppress(AttributeError):
        fs.invalidate_cache()  # s3fs caches listings; other processes write here
    try:
        names = [str(p).rstrip("/") for p in fs.ls(folder, detail=False)]
    except (FileNotFoundError, NotADirectoryError):
        return []
    out = []
    for p in names:
        if not p.rsplit("/", 1)[-1].startswith(prefix):
            continue
        try:
            rec = json.loads(fs.cat_file(f"{p}/zarr.json"))["attributes"][LEASE_ATTR]
            float(rec["heartbeat"])
            if all(isinstance(e.get("path"), str) for e in rec["paths"]):
                out.append((p, rec))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue  # not a lease, or one being written
    return out


def expired(rec: dict) -> bool:
    """Whether the lease record ``rec`` has not been renewed within :func:`expiry`."""
    return time.time() - float(rec["heartbeat"]) > expiry()


def _named(fs: Any, path: str, attr: str) -> bool:
    """Whether the group above ``path`` names it in ``attr`` (unreadable: yes, kept)."""
    parent, _, name = path.rpartition("/")
    try:
        return json.loads(fs.cat_file(f"{parent}/zarr.json"))["attributes"].get(attr) == name
    except FileNotFoundError:
        return False
    except (OSError, ValueError, KeyError, TypeError):
        return True


def _plan(fs: Any, root: str, rec: dict, whole: Whole) -> list[tuple[str, str, str | None]]:
    """``(action, path, to)`` per listed path of ``rec``, in order: ``"delete"``,
    ``"restore"`` (move to ``to``) or ``"keep"``."""
    out: list[tuple[str, str, str | None]] = []
    restored: set[str] = set()
    for e in rec["paths"]:
        rel = e["path"]
        if rel.startswith("/") or ".." in rel.split("/"):
            continue  # never outside the root
        path = f"{root}/{rel}"
        if not fs.exists(path):
            continue
        to = f"{root}/{e['to']}" if e.get("to") else None
        if e.get("unless") and _named(fs, path, e["unless"]):
            out.append(("keep", path, None))
        elif to and to not in restored and not whole(fs, to) and whole(fs, path):
            restored.add(to)
            out.append(("restore", path, to))
        else:
            out.append(("delete", path, None))
    return out


def leftovers(fs: Any, root: str, folder: str, *, prefix: str = "",
              whole: Whole = has_root) -> list[str]:
    """What expired leases in ``folder`` still list and recovery would delete or restore."""
    return [f"{path} ({'to be restored to ' + to if to else 'to be deleted'})"
            for _, rec in leases(fs, folder, prefix) if expired(rec)
            for act, path, to in _plan(fs, root, rec, whole) if act != "keep"]


def _apply(fs: Any, plan: list[tuple[str, str, str | None]],
           move: Move | None) -> tuple[list[str], bool]:
    """Carry out ``plan`` (errors ignored: another process may be at it too); the paths
    deleted or restored, and whether any is kept."""
    done, kept = [], False
    for act, path, to in plan:
        act = "keep" if act == "restore" and move is None else act  # for the next writer
        try:
            if act == "restore":
                move(fs, path, to)  # type: ignore[misc]
            elif act == "delete":
                fs.rm(path, recursive=True)
        except OSError:  # retried by the next recovery
            act = "keep"
        kept = kept or act == "keep"
        done += [] if act == "keep" else [path]
    return done, kept


def remove_stale(fs: Any, root: str, folder: str, *, move: Move,
                 prefix: str = "", whole: Whole = has_root) -> list[str]:
    """Recover every expired lease in ``folder``, removing it unless it keeps something;
    return the paths deleted or restored."""
    done = []
    for lp, rec in leases(fs, folder, prefix):
        if not expired(rec):
            continue
        gone, kept = _apply(fs, _plan(fs, root, rec, whole), move)
        done += gone
        if not kept:
            with contextlib.suppress(OSError):  # another process may be removing it
                fs.rm(lp, recursive=True)
    return done
