""":class:`Core`: an opened store (layout: :mod:`ncdask.store.embedding`) that finds or creates
its sets and splits; appends, writer, imports, classifier and reads are functions over it."""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Iterator, Mapping
from types import SimpleNamespace
from typing import Any

import dask
import dask.array as da
import numpy as np
import zarr
from dask.base import tokenize
from zarr.codecs import BloscCodec, Crc32cCodec, ZstdCodec
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync
from zarr.storage import MemoryStore

from ncdask._validate import NcdaskStoreError, check_name
from ncdask.errors import did_you_mean
from ncdask.store.locks import split_lock
from ncdask.store.record import (
    DamagedStoreError,
    SplitChangedError,
    chunk_digest,
    empty_record,
    forget_listings,
    generation,
    record,
    snapshot,
    subgroups,
)
from ncdask.store.setkey import SetKey
from ncdask.store.staging import STORE_LEASES, Lease, leftovers, remove_stale, store_lease
from ncdask.store.zarrio import backend, rename, url_fs

FORMAT = 2  # 2: sets may have their own width (``ncdask_layout``); 1 otherwise
CHUNK_BYTES = 64 * 2**20
#: Set on a split group whose deletion has begun (object stores).
DELETED_ATTR = "ncdask_deleted"
#: The set attribute naming the group that holds the set's current classifier.
CLASSIFIER_ATTR = "ncdask_classifier"
#: A set's depth in its model (the order of its tensor in the forward), recorded at creation.
DEPTH_ATTR = "ncdask_depth"
#: Dask config key choosing how concurrent writers of one split are kept apart.
WRITERS_KEY = "ncdask.writers"


def default_codec() -> list:
    """Blosc LZ4 (zstd writes at half its speed), then CRC-32C (damage errors, not values)."""
    return [BloscCodec(cname="lz4", clevel=5, shuffle="bitshuffle"), Crc32cCodec()]


def auto_chunk_rows(dim: int, dtype: np.dtype) -> int:
    """Rows of about ``CHUNK_BYTES`` (64 MiB) per chunk."""
    return max(1, CHUNK_BYTES // (int(dim) * np.dtype(dtype).itemsize))


@contextlib.contextmanager
def naming_broken_metadata(url: str, storage_options: dict | None) -> Iterator[None]:
    """Turn Zarr's JSON error (which names no file) into one naming the broken ``zarr.json``."""
    try:
        yield
    except json.JSONDecodeError as e:
        fs, root = url_fs(url, storage_options)
        broken = []
        for f in fs.glob(f"{root}/**/zarr.json") + [f"{root}/zarr.json"]:
            try:
                json.loads(fs.cat_file(f))
            except (ValueError, FileNotFoundError):
                broken.append(str(f))
        raise DamagedStoreError(
            f"{url!r}: unreadable metadata ({e}) in " + (", ".join(sorted(set(broken)))
                                                         or "a zarr.json file")
            + ": the store is damaged (truncated or edited)") from e


def chunk_exists(a: zarr.Array, i: int) -> bool:
    """Whether row-chunk ``i`` of ``a`` is stored (Zarr reads a missing one as the fill)."""
    key = a.metadata.encode_chunk_key((i,) + (0,) * (a.ndim - 1))
    return bool(sync(a.store.exists("/".join(p for p in (a.path, key) if p))))


class NamedChunks:
    """A Zarr array whose read errors (bad checksum, lost chunk) name store, split, array and
    rows. A chunk read as fill is lost if missing, unless ``rec`` (its part's commit record;
    None: finite) neither promises finite floats nor digests it."""

    def __init__(self, a: zarr.Array, url: str, split: str | None = None,
                 rec: Mapping[str, Any] | None = None) -> None:
        self.a, self.url, self.split, self.rec = a, url, split, rec
        self.shape, self.dtype, self.ndim = a.shape, a.dtype, a.ndim
        self.fill, self.rows = a.fill_value, int(a.chunks[0])

    def __getitem__(self, key: Any) -> np.ndarray:
        rows = key[0] if isinstance(key, tuple) else key
        try:
            block = self.a[key]
        except Exception as e:
            span = (f"rows {rows.start}-{rows.stop - 1}" if isinstance(rows, slice)
                    and rows.start is not None and rows.stop is not None else f"{key}")
            self._refuse_changed(span)
            raise DamagedStoreError(
                f"{self.url!r}: {self.a.path}, {span} (chunk rows {self.a.chunks[0]}): "
                f"cannot be read ({type(e).__name__}: {e}); run `ncdask check` on the store"
            ) from e
        if isinstance(rows, slice) and block.size:
            self._refuse_lost(block, *rows.indices(self.shape[0]))
        return block

    def _refuse_lost(self, block: np.ndarray, lo: int, hi: int, step: int) -> None:
        c, fill = self.rows, self.fill
        if block.dtype.kind in "iu" and (block == fill).any():  # labels: cheap to scan whole
            self._refuse_changed(f"rows {lo}-{hi - 1}")  # a shorter split replaced it
        firsts = block.reshape(block.shape[0], -1)[:, 0]
        for i in range(lo // c, -(-hi // c)) if step == 1 else ():
            first = firsts[max(lo, i * c) - lo]
            if (first != first if fill != fill else first == fill) and self._lost(i):
                n = self.shape[0] if self.rec is None else int(self.rec["n_committed"])
                self._refuse_changed(f"rows {i * c}-{min(n, (i + 1) * c) - 1}")
                raise DamagedStoreError(
                    f"{self.url!r}: " + (f"split {self.split!r}, " if self.split else "")
                    + f"{self.a.path} rows {i * c}-{min(n, (i + 1) * c) - 1} (chunk {i}): "
                    "the chunk is missing (Zarr reads it as the fill value): the store is "
                    "damaged; run `ncdask check` on it")

    def _refuse_changed(self, span: str) -> None:
        """Raise :class:`SplitChangedError` if the part's generation changed since ``rec``."""
        if self.rec is None:
            return
        try:
            g = zarr.open_group(store=self.a.store, path=self.a.path.rpartition("/")[0],
                                mode="r")
            if generation(record(g)) == generation(self.rec):
                return
        except (KeyError, FileNotFoundError, ValueError):
            pass
        raise SplitChangedError(
            f"{self.url!r}: " + (f"split {self.split!r}, " if self.split else "")
            + f"{self.a.path} {span}: the split was deleted or replaced while it was read")

    def _lost(self, i: int) -> bool:
        rec, a = self.rec, self.a
        if chunk_exists(a, i):
            return False
        if rec is None or rec.get("finite") is True or not np.issubdtype(a.dtype, np.floating):
            return True
        # digested rows were written with every chunk stored; others may be NaN data
        return chunk_digest(rec, a.basename, i, self.rows) is not None


def read_array(a: zarr.Array, url: str, split: str | None = None,
               rec: Mapping[str, Any] | None = None) -> da.Array:
    """``da.from_zarr(a)`` with read errors that name store, split, array and rows (see
    :class:`NamedChunks`)."""
    name = "zarr-" + tokenize(url, a.path, a.shape, a.chunks, str(a.dtype), a.metadata.to_dict())
    return da.from_array(NamedChunks(a, url, split, rec), chunks=a.chunks, name=name,
                         asarray=False, fancy=False, lock=False,
                         meta=np.empty((0,) * a.ndim, a.dtype))


def fresh(g: zarr.Group) -> zarr.Group:
    """Group ``g`` reopened: its attributes as they are in the store now, not as cached."""
    return zarr.open_group(store=g.store, path=g.path, mode="r" if g.store.read_only else "r+")


def classifier_name(sg: zarr.Group) -> str | None:
    """The group of set ``sg`` holding its current classifier (``classifier`` in old stores)."""
    name = sg.attrs.get(CLASSIFIER_ATTR)
    if isinstance(name, str) and name in sg:
        return name
    return "classifier" if "classifier" in sg else None


def is_labelled(g: zarr.Group) -> bool:
    return bool(g.attrs["ncdask_split"].get("labelled", True))


def is_split(g: zarr.Group) -> bool:
    """Whether group ``g`` is a whole split: a record, made after its arrays (older ncdask
    made it first)."""
    rec = g.attrs.get("ncdask_split")
    return isinstance(rec, Mapping) and (generation(rec) is not None
                                         or rec.get("n_committed") != 0 or "embeddings" in g)


def check_labelled(g: zarr.Group, labelled: bool) -> None:
    """Labelled and unlabelled batches do not mix in one split."""
    have = is_labelled(g)
    if have != labelled:
        name = g.attrs["ncdask_split"].get("split")
        raise ValueError(
            f"split {name!r} is {'labelled' if have else 'unlabelled'}: "
            + ("pass labels with every batch" if have else
               "its batches take no labels (y=None); use another split for labelled data"))


def truncate(g: zarr.Group, n: int) -> None:
    """Shrink a split's arrays back to its ``n`` committed rows (after a failed write)."""
    for name in ("embeddings", "labels"):
        if name in g and g[name].shape[0] > n:
            g[name].resize((n, *g[name].shape[1:]))


def put_once(parent: Any, name: str, build: Any) -> zarr.Group | zarr.Array:
    """Create node ``name`` of ``parent`` (anything with ``store`` and ``path``), as
    ``build(group)`` makes it in a scratch group, by one put-if-absent of its ``zarr.json``:
    racing creators all end with one node."""
    scratch = zarr.open_group(MemoryStore(), mode="w", zarr_format=3)
    build(scratch)
    body = sync(scratch.store.get(f"{name}/zarr.json", prototype=default_buffer_prototype()))
    path = "/".join(p for p in (parent.path, name) if p)
    store, fs = parent.store, getattr(parent.store, "fs", None)
    try:
        if fs is None or backend(fs) != "object":
            raise NotImplementedError
        sync(fs._pipe_file(f"{store.path}/{path}/zarr.json", body.to_bytes(), mode="create"))
    except FileExistsError:
        pass
    except (NotImplementedError, TypeError, AttributeError):
        sync(store.set_if_not_exists(f"{path}/zarr.json", body))
    return zarr.open(store=store, path=path, mode="r+", zarr_format=3)


def remove_split(g: zarr.Group, fs: Any, path: str) -> None:
    """Delete split group ``g`` at ``path`` without rename: marked deleted first, its
    ``zarr.json`` last (a kill leaves a group the next creator removes)."""
    g.attrs.put({DELETED_ATTR: time.time()})
    root = f"{path}/zarr.json"
    with contextlib.suppress(FileNotFoundError):  # another process may be finishing it
        forget_listings(g)
        files = [f for f in fs.find(path) if f != root]
        if files:
            fs.rm(files)
        fs.rm(root)
        if fs.exists(path):
            fs.rm(path, recursive=True)
    forget_listings(g)


class Core:
    """An opened store: root ``group``, ``url``, ``mode``, metadata and filesystem."""

    def __init__(self, group: zarr.Group, url: str, mode: str,
                 storage_options: dict | None = None) -> None:
        meta = group.attrs.get("ncdask")
        if not isinstance(meta, Mapping) or "n_classes" not in meta:
            raise NcdaskStoreError(f"{url!r} is a Zarr group but not an ncdask store")
        if int(meta.get("format", 0)) > FORMAT:
            raise NcdaskStoreError(
                f"{url!r} has store format {meta['format']}; this ncdask reads up to {FORMAT}")
        self.group, self.url, self.mode = group, url, mode
        self.storage_options = storage_options
        self.meta = dict(meta)
        #: this handle's shards, one per (split, process, thread): a shard has one writer
        self.shards: dict[tuple[str, int, int], zarr.Group] = {}
        self._fs: tuple[Any, str] | None = None

    n_classes = property(lambda self: int(self.meta["n_classes"]))
    dim = property(lambda self: int(self.meta["dim"]))
    dtype = property(lambda self: np.dtype(self.meta["dtype"]))
    chunk_rows = property(lambda self: int(self.meta["chunk_rows"]))

    @property
    def ignore_index(self) -> int | None:
        ii = self.meta.get("ignore_index")
        return None if ii is None else int(ii)

    def fs_path(self, group: zarr.Group | None = None, name: str = "") -> tuple[Any, str]:
        """The fsspec filesystem and the path of ``name`` in ``group`` (default: the root)."""
        if self._fs is None:
            self._fs = url_fs(self.url, self.storage_options)
        fs, root = self._fs
        return fs, "/".join([root, *(p for p in (getattr(group, "path", ""), name) if p)])

    @property
    def kind(self) -> str:
        """``"local"``, ``"memory"`` or ``"object"`` (:func:`ncdask.store.zarrio.backend`)."""
        return backend(self.fs_path()[0])

    def use_shards(self) -> bool:
        """Whether appends go to this writer's own shard: on object stores, or as configured."""
        mode = dask.config.get(WRITERS_KEY, "auto")
        if mode not in ("auto", "lock", "shards"):
            raise ValueError(f"{WRITERS_KEY} must be 'auto', 'lock' or 'shards', got {mode!r}")
        return self.kind == "object" if mode == "auto" else mode == "shards"

    def shard_key(self, g: zarr.Group) -> tuple[str, int, int]:
        return g.path, os.getpid(), threading.get_ident()

    def require_writable(self) -> None:
        if self.mode == "r":
            raise PermissionError(
                f"store {self.url!r} is open read-only; open it with mode='a' to append")

    def chunk_rows_for(self, dim: int) -> int:
        """Rows per chunk of a new set of width ``dim``."""
        auto = self.meta.get("chunk_rows_auto")
        if auto is None:  # stores written before sets had their own widths
            auto = self.chunk_rows == auto_chunk_rows(self.dim, self.dtype)
        return auto_chunk_rows(dim, self.dtype) if auto else self.chunk_rows

    # ----------------------------------------------------------------- sets
    def set_group(self, key: SetKey, create: bool = False, layout: dict | None = None,
                  depth: int | None = None) -> zarr.Group | None:
        """A set's group (None if missing); ``create`` makes it, with ``layout`` and ``depth``
        if given."""
        if not key.path:
            return self.group
        try:
            return self.group[key.path]
        except KeyError:
            if not create:
                return None
        self.require_writable()
        parent = self.group
        if key.layer is not None and key.epoch is not None:
            top = {"ncdask_set": {"layer": key.layer}}
            parent = put_once(self.group, f"layer={key.layer}",
                              lambda g: g.create_group(f"layer={key.layer}", attributes=top))
        name = key.path.rsplit("/", 1)[-1]
        attrs = {"ncdask_set": key.tags, **({"ncdask_layout": layout} if layout else {}),
                 **({DEPTH_ATTR: int(depth)} if depth is not None else {})}
        return put_once(parent, name, lambda g: g.create_group(name, attributes=attrs))

    def layout(self, sg: zarr.Group) -> tuple[int, int] | None:
        """``(dim, chunk_rows)`` of a set group; None while nothing fixes its width."""
        if sg.path == self.group.path:
            return self.dim, self.chunk_rows
        lay = sg.attrs.get("ncdask_layout")
        if isinstance(lay, Mapping) and "dim" in lay:
            return int(lay["dim"]), int(lay.get("chunk_rows") or self.chunk_rows_for(lay["dim"]))
        if classifier_name(sg) is not None or any(
                "ncdask_split" in sub.attrs for n, sub in subgroups(sg) if not n.startswith(".")):
            return self.dim, self.chunk_rows  # written before sets had their own widths
        return None

    def depth(self, key: SetKey) -> int | None:
        """The set's recorded depth (None: none recorded, e.g. a set of an older ncdask)."""
        sg = self.set_group(key)
        d = None if sg is None else sg.attrs.get(DEPTH_ATTR)
        return None if d is None else int(d)

    def known_dim(self, key: SetKey) -> int | None:
        sg = self.set_group(key)
        lay = None if sg is None else self.layout(sg)
        return None if lay is None else lay[0]

    def require_set(self, key: SetKey, dim: int, chunk_rows: int | None = None,
                    depth: int | None = None) -> tuple[zarr.Group, int, int]:
        """The set's group and ``(dim, chunk_rows)``, recorded on its first write (with
        ``depth`` if given)."""
        dim = int(dim)
        rows = int(chunk_rows) if chunk_rows is not None else self.chunk_rows_for(dim)
        # created with its width: concurrent first writers agree or are refused
        sg = self.set_group(key, create=True, layout={"dim": dim, "chunk_rows": rows},
                            depth=depth)
        lay = self.layout(sg)
        if lay is None:  # a set created empty by an older ncdask
            sg.attrs["ncdask_layout"] = {"dim": dim, "chunk_rows": rows}
            lay = (dim, rows)
        if dim != lay[0]:
            raise ValueError(f"set {key.where or '(default)'} of {self.url!r} has dim "
                             f"{lay[0]} (recorded when it was first written), got dim {dim}")
        if dim != self.dim and int(self.meta.get("format", 1)) < 2:
            # older ncdask reads every set with the store's dim: make it refuse the store
            self.meta = {**self.group.attrs["ncdask"], "format": 2}
            self.group.attrs["ncdask"] = self.meta
        return sg, lay[0], lay[1]

    def sets(self) -> list[dict[str, Any]]:
        """The tags of every set holding at least one split."""
        out: list[dict[str, Any]] = []

        def walk(g: zarr.Group, tags: dict) -> None:
            subs = subgroups(g)
            if any(is_split(sub) for n, sub in subs if not n.startswith(".")):
                out.append(tags)
            for _, sub in subs:
                if "ncdask_set" in sub.attrs:
                    walk(sub, dict(sub.attrs["ncdask_set"]))

        forget_listings(self.group)  # sets and splits other processes made since
        with naming_broken_metadata(self.url, self.storage_options):
            walk(self.group, {})
        return sorted(out, key=lambda t: (str(t.get("layer", "")), t.get("epoch", -1)))

    def splits(self, key: SetKey) -> list[str]:
        with naming_broken_metadata(self.url, self.storage_options):
            g = self.set_group(key)
            if g is None:
                return []
            forget_listings(g, "")  # splits other processes made since
            return sorted(n for n, sub in subgroups(g) if not n.startswith(".") and is_split(sub))

    # --------------------------------------------------------------- splits
    def find_split(self, split: str, key: SetKey) -> zarr.Group | None:
        """A split's group as it is now; None if missing or half made."""
        sg = self.set_group(key)
        try:
            g = None if sg is None else sg[split]
        except KeyError:  # no zarr.json: missing, or its arrays are still being made
            return None
        return g if isinstance(g, zarr.Group) and is_split(g) else None

    def split_group(self, split: str, key: SetKey, create: bool = False,
                    dim: int | None = None, labelled: bool = True) -> zarr.Group:
        """A split's group; with ``create``, made (in a set of width ``dim``) if missing."""
        check_name("split", split)
        g = self.find_split(split, key)
        if g is None and create:
            self.require_writable()
            with split_lock(self, key, split, shared=True):  # no delete meanwhile
                g = self.find_split(split, key) or self.create_split(split, key, dim, labelled)
        if g is None:
            have = self.splits(key)
            raise KeyError(f"unknown split {split!r} in {key.path or 'the default set'} of "
                           f"{self.url!r}{did_you_mean(split, have)}; splits there: {have}")
        return g

    def create_split(self, split: str, key: SetKey, dim: int | None,
                     labelled: bool) -> zarr.Group:
        """Make a split: its arrays first, then its group with an empty record, put once (a
        racing creator's record is never replaced)."""
        sg, D, rows = self.require_set(key, self.dim if dim is None else dim)
        try:
            old = sg[split]
        except KeyError:
            old = None
        if old is not None and DELETED_ATTR in old.attrs:
            remove_split(old, *self.fs_path(sg, split))  # finish a killed delete
            old = None
        if old is not None and "ncdask_split" not in old.attrs:
            raise NcdaskStoreError(f"{self.url!r}: {old.path} exists and is not an ncdask split")
        labelled = labelled if old is None else is_labelled(old)
        at = SimpleNamespace(store=sg.store, path="/".join(p for p in (sg.path, split) if p))
        self.split_arrays(at, D, rows, labelled)
        rec = {"ncdask_split": empty_record(split, key, self.n_classes, labelled)}
        g = put_once(sg, split, lambda t: t.create_group(split, attributes=rec))
        check_labelled(g, labelled)
        return g

    def split_arrays(self, g: Any, D: int, rows: int, labelled: bool) -> None:
        """Give split or shard ``g`` its empty arrays where missing (fill values NaN and an
        impossible label make a lost chunk visible)."""
        put_once(g, "embeddings", lambda t: t.create_array(
            "embeddings", shape=(0, D), chunks=(rows, D), dtype=self.dtype,
            dimension_names=("sample", "feature"), compressors=default_codec(),
            fill_value=np.nan))
        if labelled:
            lab = np.int32 if self.n_classes < 2**31 else np.int64
            put_once(g, "labels", lambda t: t.create_array(
                "labels", shape=(0,), chunks=(rows,), dtype=lab,
                dimension_names=("sample",), compressors=[ZstdCodec(level=3), Crc32cCodec()],
                fill_value=np.iinfo(lab).min))

    def lease(self) -> Lease:
        """A new lease in this store, for what a writer stages (:mod:`ncdask.store.staging`)."""
        return store_lease(*self.fs_path(), move=rename)

    def tidy(self, sg: zarr.Group | None = None) -> list[str]:
        """Recover what expired leases in the store list; return those paths."""
        fs, root = self.fs_path()
        gone = remove_stale(fs, root, f"{root}/{STORE_LEASES}", move=rename)
        if gone:
            forget_listings(self.group if sg is None else sg)
        return gone

    def leftovers(self) -> list[str]:
        """What :meth:`tidy` would recover now (for ``ncdask check``)."""
        fs, root = self.fs_path()
        return leftovers(fs, root, f"{root}/{STORE_LEASES}")

    def remove_group(self, sg: zarr.Group, name: str) -> None:
        fs, path = self.fs_path(sg, name)
        with contextlib.suppress(FileNotFoundError):  # another writer's recovery removing it
            if fs.exists(path):
                fs.rm(path, recursive=True)
        forget_listings(sg)


def committed_parts(core: Core, split: str, key: SetKey) -> list[tuple[zarr.Group, int]]:
    """``[(group, rows), ...]`` of a split's parts holding committed rows, in read order."""
    return [(p, k) for p, k in snapshot(core.split_group(split, key))[0] if k > 0]


def current_classifier(core: Core, key: SetKey) -> str | None:
    """The name of the group holding the set's classifier version (None: none stored)."""
    sg = core.set_group(key)
    return None if sg is None else classifier_name(fresh(sg))
