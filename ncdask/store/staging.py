"""Names for what ncdask writes aside before switching it in, and their cleanup.

Replaces write beside the old version (``.classifier-*``, ``.import-*``, ``*.ncdask-tmp-*``),
deletes move their target aside (``*.replaced-*``, ``*.deleted-*``, ``*.ncdask-old-*``). The
next writer in the folder removes what a killed writer left, once it is certainly gone: each
name carries its owner ``<host>-<pid>-<random>``, gone when that process no longer runs on
this host, or, from another host, when older than :data:`STALE_AFTER_S`.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import time
import uuid
from typing import Any

#: Age after which staging from another host (or of unknown owner) is stale.
STALE_AFTER_S = 7 * 24 * 3600.0

#: How staging and aside names end: ``<kind>-<host>-<pid>-<hex>`` or ``<kind>-<hex>``.
_OWNED = re.compile(r"-(?P<host>[A-Za-z0-9]{1,24})-(?P<pid>\d+)-(?P<rand>[0-9a-f]{8,})$")
_MARKERS = (".classifier-", ".import-", ".ncdask-tmp-", ".ncdask-old-", ".replaced-",
            ".deleted-")


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:24] or "host"


def owner_tag() -> str:
    """A unique suffix naming this process: ``<host>-<pid>-<random>``."""
    return f"{_host()}-{os.getpid()}-{uuid.uuid4().hex[:12]}"


def is_staging(name: str) -> bool:
    """Whether ``name`` (a basename) is something ncdask writes aside."""
    return any(m in name for m in _MARKERS)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def is_stale(name: str, mtime: float | None, *, now: float | None = None) -> bool:
    """Whether the staging entry ``name`` belongs to a writer that is certainly gone."""
    if not is_staging(name):
        return False
    m = _OWNED.search(name)
    if m is not None and m["host"] == _host():
        return int(m["pid"]) != os.getpid() and not _alive(int(m["pid"]))
    if mtime is None:
        return False
    return (time.time() if now is None else now) - mtime > STALE_AFTER_S


def _mtime(info: dict[str, Any]) -> float | None:
    for key in ("mtime", "LastModified", "last_modified", "created"):
        v = info.get(key)
        with contextlib.suppress(TypeError, ValueError):
            return float(v.timestamp() if hasattr(v, "timestamp") else v)
    return None


def stale_entries(fs: Any, folder: str, *, prefix: str = "",
                  keep: tuple[str, ...] = ()) -> list[str]:
    """Paths in ``folder`` (starting with ``prefix``) that are staging of a gone writer;
    names in ``keep`` are in use and never stale."""
    try:
        listing = fs.ls(folder, detail=True)
    except (FileNotFoundError, NotADirectoryError):
        return []
    out = []
    for info in listing:
        path = str(info["name"]).rstrip("/")
        name = path.rsplit("/", 1)[-1]
        if not name.startswith(prefix) or not is_staging(name) or name in keep:
            continue
        mtime = _mtime(info)
        if mtime is None:  # an object store's "folder" has no time: its zarr.json has
            try:
                mtime = _mtime(fs.info(f"{path}/zarr.json"))
            except (FileNotFoundError, OSError):
                mtime = None
        if is_stale(name, mtime):
            out.append(path)
    return out


def remove_stale(fs: Any, folder: str, *, prefix: str = "",
                 keep: tuple[str, ...] = ()) -> list[str]:
    """Delete the stale staging entries of ``folder`` (errors ignored: another writer may be
    cleaning the same entry); return what was deleted."""
    gone = []
    for path in stale_entries(fs, folder, prefix=prefix, keep=keep):
        try:
            fs.rm(path, recursive=True)
            gone.append(path)
        except (FileNotFoundError, OSError):
            pass
    return gone
