"""ncdask's own Zarr outputs (statistics, results): written, reopened, renamed.

Outputs carry consolidated metadata (``xr.open_zarr`` opens them quietly), their variables'
order (``ncdask_variables``) and each stored chunk's digest (``ncdask_digests``, checked as
the chunk is read)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import time
import warnings
from typing import Any

import fsspec
import numpy as np
import xarray as xr
import zarr
from zarr.codecs import BloscCodec, Crc32cCodec, ZstdCodec
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync
from zarr.storage import WrapperStore

from ncdask._validate import NcdaskStoreError
from ncdask.errors import option
from ncdask.store.digest import digest
from ncdask.store.staging import Lease, beside_lease, expired, leases, remove_stale

ORDER_ATTR = "ncdask_variables"
KIND_ATTR = "ncdask_output"
WRITTEN_ATTR = "ncdask_written"
DIGEST_ATTR = "ncdask_digests"
#: Folder of a split's cached statistics (``stats.cache``), an output per entry.
CACHE_DIR = ".ncdask-stats"


class IncompleteOutputError(NcdaskStoreError):
    """An ncdask output whose writing was interrupted, with no complete copy left."""


class DamagedOutputError(NcdaskStoreError):
    """An ncdask output (statistics, results, a cache entry) with a chunk missing or changed
    since it was written."""


def url_fs(url: str, storage_options: dict | None) -> tuple[Any, str]:
    """The fsspec filesystem of ``url`` and its path (no trailing ``/``)."""
    fs, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
    return fs, path.rstrip("/")


def fs_exists(url: str, storage_options: dict | None) -> bool:
    fs, path = url_fs(url, storage_options)
    return bool(fs.exists(path))


def backend(fs: Any) -> str:
    """What ``fs`` is, decided here only: ``"local"`` (a disk: atomic ``os.rename`` and
    ``flock``), ``"memory"`` (renames; dies with its process) or ``"object"`` (no rename,
    no lock: an object store)."""
    p = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return "local" if p in ("file", "local") else "memory" if p == "memory" else "object"


def renames(fs: Any) -> bool:
    """Whether ``fs`` renames a folder in one step (not object stores)."""
    return backend(fs) != "object"


def rename(fs: Any, src: str, dst: str) -> None:
    """Rename a directory: ``os.rename`` (atomic) on a local disk, else ``fs.mv``."""
    if backend(fs) == "local":
        os.rename(src, dst)
    else:
        fs.mv(src, dst, recursive=True)


def swap_in(fs: Any, tmp: str, path: str, lease: Lease) -> None:
    """Move the complete ``tmp`` to ``path`` by renames, the old ``path`` set aside (listed
    in ``lease``) and deleted last; on failure the old ``path`` is restored, ``tmp`` deleted."""
    old = None
    if fs.exists(path):
        old = lease.stage(f"{path}.ncdask-old-{lease.id}", to=path, aside=True)
    try:
        if old:
            rename(fs, path, old)
        rename(fs, tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):  # I/O in flight; the lease recovers the rest
            if old and not fs.exists(path) and fs.exists(old):
                rename(fs, old, path)
            fs.rm(tmp, recursive=True)
        raise
    if old:
        fs.rm(old, recursive=True)


def _move_output(fs: Any, src: str, dst: str) -> None:
    """Move a whole output (or store) ``src`` to ``dst``, where ``dst`` is not whole (what
    is there is deleted first: a kill then leaves ``src`` listed, to be moved again)."""
    if renames(fs):
        if fs.exists(dst):
            fs.rm(dst, recursive=True)
        rename(fs, src, dst)
    else:
        _copy_into_place(fs, src, dst, fs.exists(dst))


def _whole(fs: Any, path: str) -> bool:
    return bool(is_complete(fs, path))


def output_lease(fs: Any, path: str) -> Lease:
    """A lease beside the output (or store) ``path``, recovered as :func:`tidy_beside`."""
    return beside_lease(fs, path, whole=_whole, move=_move_output)


def tidy_beside(fs: Any, path: str) -> list[str]:
    """Recover what expired leases beside ``path`` list (staged copies, an old version set
    aside): an aside comes back where ``path`` is not whole, the rest is deleted."""
    parent, _, base = path.rpartition("/")
    return remove_stale(fs, parent, parent, prefix=f"{base}.ncdask-lease-", move=_move_output,
                        whole=_whole)


def _replaceable(url: str, kind: str, storage_options: dict | None) -> str | None:
    """Why the existing path ``url`` must not be replaced by ``kind`` (None: it may)."""
    foreign = "not an ncdask store" if kind == "store" else "not a Zarr store that ncdask wrote"
    have = written_kind(url, storage_options)
    if have is None or (have == "output" and kind == "store"):
        return f"it is {foreign}"
    if have in (kind, "output"):
        return None
    if have == "store":
        return "it is an ncdask embedding store"
    return f"it holds ncdask {have}, not " + ("an ncdask store" if kind == "store" else kind)


def check_output(url: str, kind: str, *, overwrite: bool = False,
                 storage_options: dict | None = None) -> tuple[Any, str]:
    """Raise ``FileExistsError`` unless ``url`` is free, or holds ncdask ``kind`` output (or
    an embedding store: ``"store"``) and ``overwrite`` is true; return its filesystem and path.
    Called before a long compute whose result goes to ``url``, and by :func:`write_dataset`.
    A store is created only where nothing is (``open_group(mode="w")`` deletes it)."""
    fs, path = url_fs(url, storage_options)
    if fs.exists(path) and not (kind == "store" and fs.isdir(path)
                                and not fs.ls(path, detail=False)):  # an empty folder is free
        readable = url if kind == "store" else _readable(url, storage_options)
        why = _replaceable(readable, kind, storage_options)
        if why is not None:
            raise FileExistsError(f"{url!r} exists and {why}; refusing to replace it "
                                  "(choose another path, or remove it yourself)")
        if not overwrite:
            raise FileExistsError(f"{url!r} already holds ncdask {kind}; pass "
                                  f"{option('overwrite=True', '--overwrite')} to replace it")
    return fs, path


def _encoding(ds: xr.Dataset) -> dict[str, dict[str, Any]]:
    """Blosc LZ4 (floats barely compress; twice Zstd's speed) or Zstd, then CRC-32C, so a
    flipped bit fails at read in any Zarr reader."""
    return {str(k): {"compressors": [
        BloscCodec(cname="lz4", clevel=5, shuffle="shuffle", typesize=v.dtype.itemsize)
        if v.dtype.kind == "f" else ZstdCodec(level=0), Crc32cCodec()]}
        for k, v in ds.variables.items()}


def write_dataset(ds: xr.Dataset, url: str, *, kind: str, overwrite: bool = False,
                  storage_options: dict | None = None) -> None:
    """Write ``ds`` as a Zarr store at ``url``, with consolidated metadata, replacing safely.
    Written beside ``url`` and moved in when complete (``ds`` may be read lazily from
    ``url``); an existing ``url`` is replaced only with ``overwrite`` and when it holds
    ncdask output of the same ``kind`` ("stats", "results"). Chunk digests are recorded last."""
    fs, path = check_output(url, kind, overwrite=overwrite, storage_options=storage_options)
    out = ds.copy()
    out.attrs = dict(ds.attrs)
    out.attrs[ORDER_ATTR] = [str(n) for n in ds.data_vars]
    out.attrs[KIND_ATTR] = kind
    out.attrs[WRITTEN_ATTR] = time.time()
    with output_lease(fs, path) as lease:
        tmp = lease.stage(f"{path}.ncdask-tmp-{lease.id}", to=path)
        tmp_url = url.rstrip("/") + tmp[len(path):]
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*[Cc]onsolidated metadata.*")
                out.to_zarr(tmp_url, mode="w-", consolidated=False,
                            storage_options=storage_options, encoding=_encoding(out))
            _seal(tmp_url, storage_options)
            # again: another writer, or the user, may have put something there meanwhile
            check_output(url, kind, overwrite=overwrite, storage_options=storage_options)
        except BaseException:
            with contextlib.suppress(OSError):  # I/O in flight; the lease recovers the rest
                fs.rm(tmp, recursive=True)
            raise
        if renames(fs):
            swap_in(fs, tmp, path, lease)
        else:
            _copy_into_place(fs, tmp, path, fs.exists(path))
    tidy_beside(fs, path)


def _copy_into_place(fs: Any, tmp: str, path: str, replace: bool) -> None:
    """Replace ``path`` by the complete ``tmp`` without rename (object stores): the old root
    ``zarr.json`` goes first, the new one last, so ``path`` reads as incomplete, never as a
    mix, until it is whole, and :func:`open_dataset` reads ``tmp`` meanwhile."""
    root = f"{path}/zarr.json"
    if replace:
        if fs.exists(root):
            fs.rm(root)
        fs.rm(path, recursive=True)
    files = sorted(f for f in fs.find(tmp) if f != f"{tmp}/zarr.json")
    for f in files:
        fs.copy(f, path + f[len(tmp):])
    fs.copy(f"{tmp}/zarr.json", root)
    fs.rm(tmp, recursive=True)


def is_complete(fs: Any, path: str) -> bool | None:
    """Whether the output at ``path`` was written whole, i.e. ends with its consolidated
    root metadata (None: nothing is there)."""
    try:
        raw = fs.cat_file(f"{path}/zarr.json")
    except FileNotFoundError:
        return False if fs.exists(path) else None
    try:
        meta = json.loads(raw)
    except ValueError:
        return False
    attrs = meta.get("attributes") or {}
    if KIND_ATTR not in attrs:
        return True  # written before outputs were marked
    cons = (meta.get("consolidated_metadata") or {}).get("metadata") or {}
    return all(str(n) in cons for n in attrs.get(ORDER_ATTR) or [])


def _complete_copy(fs: Any, path: str, found: list[tuple[str, dict]]) -> str | None:
    """The newest complete copy of ``path`` that the leases ``found`` beside it list (staged,
    or set aside by an interrupted replace)."""
    parent, _, base = path.rpartition("/")
    best, when = None, -1.0
    for _, rec in found:
        for e in rec["paths"]:
            p = f"{parent}/{e['path']}"
            if e.get("to") != base or not is_complete(fs, p):
                continue
            try:
                t = float(json.loads(fs.cat_file(f"{p}/zarr.json"))["attributes"][WRITTEN_ATTR])
            except (KeyError, ValueError, TypeError, FileNotFoundError):
                t = 0.0
            if t > when:
                best, when = p, t
    return best


def _readable(url: str, storage_options: dict | None) -> str:
    """The URL to read the output at ``url`` from: itself (recovered first where its writer's
    lease expired) or a complete copy beside it; :class:`IncompleteOutputError` if none."""
    fs, path = url_fs(url, storage_options)
    fs.invalidate_cache()  # s3fs caches listings; other processes write here
    if is_complete(fs, path):
        return url
    parent, _, base = path.rpartition("/")
    found = leases(fs, parent, f"{base}.ncdask-lease-")
    if any(expired(rec) for _, rec in found):
        tidy_beside(fs, path)  # read-only: nothing changes, a copy is read
        if is_complete(fs, path):
            return url
        found = leases(fs, parent, f"{base}.ncdask-lease-")
    copy = _complete_copy(fs, path, found)
    if copy is None:
        if not fs.exists(f"{path}/zarr.json"):
            return url  # nothing of ours here or beside it: not ours to judge
        raise IncompleteOutputError(
            f"{url!r} is incomplete: a write or replace of it was interrupted and no complete "
            f"copy is left beside it; write it again ({option('overwrite=True', '--overwrite')})")
    return url.rstrip("/") + copy[len(path):]


def _chunks(g: zarr.Group, recorded: dict | None = None) -> dict[str, tuple]:
    """Store key of every chunk of ``g``'s arrays -> (array, flat index, chunk index, recorded
    digest: None where the chunk was not stored, -1 where none was recorded)."""
    out = {}
    for name, a in g.arrays():
        crcs = (recorded or {}).get(name) or []
        for j, ix in enumerate(itertools.product(*map(range, a.cdata_shape))):
            out[f"{name}/{a.metadata.encode_chunk_key(ix)}"] = (
                name, j, ix, crcs[j] if j < len(crcs) else -1)
    return out


def _stored(store: Any, keys: list[str], batch: int = 16) -> Any:
    """``(key, stored bytes or None)`` of ``keys`` in ``store``, ``batch`` at a time."""
    proto = default_buffer_prototype()

    async def get(ks: list[str]) -> list:
        return await asyncio.gather(*(store.get(k, proto) for k in ks))

    for i in range(0, len(keys), batch):
        ks = keys[i:i + batch]
        yield from zip(ks, map(_bytes, sync(get(ks))), strict=True)


def _bytes(buf: Any) -> np.ndarray | None:
    return None if buf is None else buf.as_numpy_array().view(np.uint8).reshape(-1)


def _seal(url: str, storage_options: dict | None) -> None:
    """Record the digest of every stored chunk of the output at ``url`` (None: not stored,
    the fill value), then consolidate its metadata: the mark of a complete output."""
    g = zarr.open_group(url, mode="r+", storage_options=storage_options)
    keys = _chunks(g)
    digests: dict[str, list] = {name: [] for name, _ in g.arrays()}
    for k, raw in _stored(g.store, list(keys)):
        name, j, _, _ = keys[k]
        digests[name].append(None if raw is None else digest(name, j, raw))
    g.attrs[DIGEST_ATTR] = digests
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Cc]onsolidated metadata.*")
        zarr.consolidate_metadata(g.store)


def recorded_digests(url: str, storage_options: dict | None) -> tuple[Any, dict] | None:
    """The store of the output at ``url`` and its chunks with their recorded digests (None:
    an output written without them)."""
    g = zarr.open_group(url, mode="r", storage_options=storage_options)
    recorded = g.attrs.get(DIGEST_ATTR)
    return (g.store, _chunks(g, recorded)) if isinstance(recorded, dict) else None


def _damage(key: str, want: tuple, raw: np.ndarray | None) -> str | None:
    """What is wrong with chunk ``key`` holding ``raw`` (None: nothing)."""
    name, j, ix, crc = want
    where = f"variable {name!r}, chunk {ix} ({key})"
    if raw is None:
        return None if crc is None else f"{where}: missing (it would read as the fill value)"
    if crc is None:
        return f"{where}: present where none was written"
    return None if digest(name, j, raw) == crc else f"{where}: changed since written"


def damaged_chunks(url: str, store: Any, want: dict) -> list[str]:
    """Every chunk of the output at ``url`` missing or changed (``want``: from
    :func:`recorded_digests`); read in batches, not decoded."""
    return [f"{url}: {bad}" for k, raw in _stored(store, list(want))
            if (bad := _damage(k, want[k], raw)) is not None]


class _Verified(WrapperStore):
    """A store whose chunks are checked against the recorded digests as they are read."""

    def __init__(self, store: Any, want: dict, url: str) -> None:
        super().__init__(store)
        self._want, self._url = want, url

    def _with_store(self, store: Any) -> _Verified:
        return type(self)(store, self._want, self._url)

    async def get(self, key: str, prototype: Any, byte_range: Any = None) -> Any:
        buf = await self._store.get(key, prototype, byte_range)
        if key in self._want and byte_range is None:
            bad = _damage(key, self._want[key], _bytes(buf))
            if bad is not None:
                raise DamagedOutputError(f"{self._url!r}: {bad}; write it again")
        return buf


def written_kind(url: str, storage_options: dict | None = None) -> str | None:
    """What ncdask wrote at ``url``: ``"store"``, ``"stats"``, ``"results"``, ``"output"``
    (an output written before outputs were marked), or None (nothing of ncdask's)."""
    try:
        attrs = dict(zarr.open_group(url, mode="r", storage_options=storage_options).attrs)
    except Exception:  # a file, a plain folder, anything that is not a Zarr group
        return None
    if "ncdask" in attrs:
        return "store"
    return attrs.get(KIND_ATTR) or ("output" if "ncdask_version" in attrs else None)


def open_dataset(url: str, *, storage_options: dict | None = None) -> xr.Dataset:
    """Open a store written by :func:`write_dataset` lazily, variables in their written order;
    each chunk is checked against its recorded digest as it is read."""
    url = _readable(url, storage_options)
    where: Any = url
    kw: dict[str, Any] = {"storage_options": storage_options}
    with contextlib.suppress(Exception):  # not a group: xarray says why below
        recorded = recorded_digests(url, storage_options)
        if recorded is not None:
            where, kw = _Verified(*recorded, url), {}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Cc]onsolidated metadata.*")
        try:
            ds = xr.open_zarr(where, consolidated=True, **kw)
        except (KeyError, ValueError, FileNotFoundError) as e:
            if isinstance(e, FileNotFoundError) and not fs_exists(url, storage_options):
                raise
            ds = xr.open_zarr(where, consolidated=False, **kw)
    for a in (KIND_ATTR, WRITTEN_ATTR, DIGEST_ATTR):
        ds.attrs.pop(a, None)
    order = ds.attrs.pop(ORDER_ATTR, None)
    if order:
        names = [n for n in order if n in ds.data_vars]
        names += [n for n in ds.data_vars if n not in names]
        attrs = dict(ds.attrs)
        ds = ds[names]
        ds.attrs = attrs
    return ds
