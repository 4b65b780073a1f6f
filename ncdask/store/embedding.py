"""The Zarr (v3) embedding store.

Layout (one Zarr group per store; any fsspec URL)::

    store.zarr/                      attrs["ncdask"]: format, version, n_classes, dim, ...
        classifier/{W,b}             classifier of the default embedding set
        train/{embeddings,labels}    a split: attrs["ncdask_split"] = commit record
        test/...
        layer=fc_in/epoch=12/        another embedding set (tags as path parts)
            classifier/{W,b}
            train/...

Each embedding set has its own width D (different layers of a network have
different widths): the default set has the store's ``dim``; a tagged set
records its width in the set group's attribute ``ncdask_layout``
(``{"dim": D, "chunk_rows": R}``) when it is first written (first append,
writer batch, classifier or :meth:`EmbeddingStore.create_set`), and every
later write to the set must match it. A store holding a set whose width
differs from ``dim`` is marked format 2, so older ncdask versions refuse it
instead of misreading it.

Each split holds ``embeddings (sample, feature)`` and ``labels (sample)``.
The split group's attribute ``ncdask_split`` is the *commit record*: the
number of committed rows and the per-class counts. An append writes the rows
past the committed end first and updates the record last, so a writer killed
mid-append leaves a store whose readers (and the next append) see exactly the
committed rows; Zarr's local store writes every object by rename, so the
record itself is never half-written.

:class:`EmbeddingStore` is assembled from mixins, one module each: appends
and their commits (:mod:`ncdask.store.appends`, with the buffered
:class:`StoreWriter` in :mod:`ncdask.store.writer`), the classifier
(:mod:`ncdask.store.classifier`), file imports (:mod:`ncdask.store.imports`) and
reads (:mod:`ncdask.store.reads`); this module keeps opening, the layout of sets
and splits, and deletes.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import xarray as xr
import zarr
from zarr.codecs import BloscCodec, Crc32cCodec, ZstdCodec

from ncdask.store.appends import WRITERS_KEY, AppendsMixin  # noqa: F401 - WRITERS_KEY: here as before
from ncdask.store.classifier import ClassifierMixin
from ncdask.store.imports import DuplicateImportError, ImportsMixin  # noqa: F401 - public here as before
from ncdask.store.layout import (  # noqa: F401 - re-exported: the store's layout names
    CLASSIFIER_ATTR,
    DELETED_ATTR,
    SET_TAGS,
    _check_labelled,
    _classifier_name,
    _forget_listings,
    _fresh,
    _is_labelled,
    _NamedChunks,
    _naming_broken_metadata,
    _put_once,
    _read,
    _truncate,
)
from ncdask.store.reads import ReadsMixin, array_backend, on_backend  # noqa: F401 - public here
from ncdask.store.record import (  # noqa: F401 - DamagedStoreError is public here as before
    DamagedStoreError,
    _advanced,
    _check_record,
    _empty_record,
    _finite,
    _record,
    _shards,
    _snapshot,
)
from ncdask.store.setkey import SetKey
from ncdask.store.staging import owner_tag, remove_stale
from ncdask._validate import NcdaskStoreError, check_ignore_index, check_name
from ncdask._version import __version__
from ncdask.store.writer import StoreWriter  # noqa: F401 - public here as before
from ncdask.store.zarrio import rename, renames
from ncdask.kernels._xp import to_numpy

FORMAT = 2  # 2: sets may have their own width (``ncdask_layout``); 1 otherwise
CHUNK_BYTES = 64 * 2**20


def default_codec() -> list:
    """Blosc LZ4 with bit-shuffle, then a CRC-32C checksum of each chunk.

    The checksum makes a damaged chunk an error on read instead of silently
    wrong values (issue 14: 16 garbled bytes in an LZ4 chunk moved the means
    by 7.8e-5); it cost 0.05 s per 64 MiB chunk written and nothing
    measurable on read (0.144 s against 0.155 s, noise).

    Measured with ``benchmarks/bench_codecs.py`` (float32, D=512, 64 MiB):
    compression ratio 1.11 on Gaussian features, 1.14 post-ReLU, 1.22 on
    average-pooled ReLU features, at about the write and read speed of no
    compression; zstd-1 compresses post-ReLU data better (1.77) but writes
    at half the speed and gains only 1.08-1.13 elsewhere.
    """
    return [BloscCodec(cname="lz4", clevel=5, shuffle="bitshuffle"), Crc32cCodec()]


def _auto_chunk_rows(dim: int, dtype: np.dtype) -> int:
    """Rows of about ``CHUNK_BYTES`` (64 MiB) per chunk."""
    return max(1, CHUNK_BYTES // (int(dim) * np.dtype(dtype).itemsize))




def _check_free(url: str, overwrite: bool, storage_options: dict | None) -> None:
    """Refuse to create a store where something is: ``zarr.open_group(mode="w")`` deletes it.

    An existing ncdask store is replaced only with ``overwrite=True``; any
    other non-empty path (a folder of the user's, another Zarr group) never.
    """
    import fsspec

    fs, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
    path = path.rstrip("/")
    if not fs.exists(path):
        return
    try:
        g = zarr.open_group(url, mode="r", storage_options=storage_options)
    except (FileNotFoundError, zarr.errors.GroupNotFoundError, ValueError, OSError):
        g = None
    if g is not None and "ncdask" in g.attrs:
        if not overwrite:
            raise FileExistsError(f"an ncdask store exists at {url!r}; pass overwrite=True "
                                  "to replace it")
        return
    if fs.isdir(path) and not fs.ls(path, detail=False):
        return  # an empty folder
    raise FileExistsError(
        f"{url!r} exists and is not an ncdask store; refusing to create a store there "
        "(it would delete what is there): choose a new path"
    )


def _remove_split(g: zarr.Group, fs: Any, path: str) -> None:
    """Delete split group ``g`` (at ``path``) where there is no rename.

    Its record is dropped first (one PUT: the split is gone for readers),
    then its arrays, and its ``zarr.json`` last, so a kill at any point
    leaves either the split or an unrecorded group that the split's next
    creator removes (never a group without metadata, which Zarr warns about
    on every listing).
    """
    g.attrs.put({DELETED_ATTR: time.time()})
    root = f"{path}/zarr.json"
    try:  # another process may be finishing the same delete
        files = [f for f in fs.find(path) if f != root]
        if files:
            fs.rm(files)
        fs.rm(root)
    except FileNotFoundError:
        pass
    _forget_listings(g)


class EmbeddingStore(ReadsMixin, AppendsMixin, ClassifierMixin, ImportsMixin):
    """Embeddings and labels of one or more splits, in a chunked Zarr store.

    Create one with :meth:`create` or :meth:`from_arrays`, open one with
    :meth:`open`. ``store[split]`` is a lazy :class:`xarray.Dataset`.

    A store holds one or more embedding *sets* (``layer=`` / ``epoch=``
    tags, see :meth:`sets`). Each set has its own width: the default set
    has :attr:`dim`, a tagged set takes the width of its first write (or of
    :meth:`create_set`), so one store holds several layers of a network;
    :meth:`dim_of` tells a set's width.

    Examples
    --------
    >>> import numpy as np, ncdask
    >>> s = ncdask.EmbeddingStore.create("memory://doc-example", n_classes=3, dim=4,
    ...                                  overwrite=True)
    >>> s.append("train", np.ones((5, 4)), np.array([0, 1, 2, 0, 1]))
    5
    >>> s["train"].embeddings.shape
    (5, 4)
    >>> s.append("train", np.ones((5, 7)), np.array([0, 1, 2, 0, 1]), layer="wide")
    5
    >>> s.dim_of(layer="wide"), s.split("train", layer="wide").attrs["dim"]
    (7, 7)
    """

    def __init__(self, group: zarr.Group, url: str, mode: str) -> None:
        meta = group.attrs.get("ncdask")
        if not isinstance(meta, Mapping) or "n_classes" not in meta:
            raise NcdaskStoreError(f"{url!r} is a Zarr group but not an ncdask store")
        if int(meta.get("format", 0)) > FORMAT:
            raise NcdaskStoreError(
                f"{url!r} has store format {meta['format']}; this ncdask reads up to {FORMAT}"
            )
        self._group = group
        self.url = url
        self.mode = mode
        self._meta = dict(meta)
        self._storage_options: dict | None = None  # for ncdask's own renames (imports)
        # this handle's shards, one per (split, process, thread): a shard has one writer
        self._my_shards: dict[tuple[str, int, int], zarr.Group] = {}
        self._protocol: str | None = None

    # ------------------------------------------------------------------ open
    @classmethod
    def create(
        cls,
        url: str,
        n_classes: int,
        dim: int,
        *,
        dtype: Any = "float32",
        chunk_rows: int | None = None,
        class_names: list[str] | None = None,
        attrs: Mapping[str, Any] | None = None,
        overwrite: bool = False,
        storage_options: dict | None = None,
        ignore_index: int | None = None,
    ) -> EmbeddingStore:
        """Create an empty store.

        Parameters
        ----------
        url : str
            Local path or fsspec URL (``memory://``, ``s3://``, ...).
        n_classes : int
            Number of classes K; labels must lie in ``[0, K)``.
        dim : int
            Embedding dimension D of the default (untagged) set. Tagged sets
            take their own width from their first write (or
            :meth:`create_set`), so sets of several widths share one store.
        dtype : dtype, default "float32"
            Storage dtype of the embeddings.
        chunk_rows : int, optional
            Rows per chunk of every set; default about 64 MiB per chunk,
            computed from each set's own width.
        class_names : list of str, optional
            K class names.
        attrs : mapping, optional
            User metadata (JSON-serialisable) kept with the store.
        overwrite : bool
            Replace an existing store at ``url``.
        storage_options : dict, optional
            Passed to fsspec for remote URLs.
        ignore_index : int, optional
            A label that marks samples to leave out (PyTorch's ``-100``
            padding); it must lie outside ``[0, K)``. Appends then accept it,
            the per-class counts leave it out, and :func:`ncdask.class_stats`
            and :func:`ncdask.measure` drop such samples by default.
        """
        n_classes, dim = int(n_classes), int(dim)
        if n_classes < 1:
            raise ValueError(f"n_classes must be >= 1, got {n_classes}")
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        dt = np.dtype(dtype)
        if not np.issubdtype(dt, np.floating):
            raise TypeError(f"dtype must be a float dtype, got {dt}")
        auto_rows = chunk_rows is None
        if auto_rows:
            chunk_rows = _auto_chunk_rows(dim, dt)
        chunk_rows = int(chunk_rows)
        if chunk_rows < 1:
            raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
        if class_names is not None:
            class_names = [str(c) for c in class_names]
            if len(class_names) != n_classes:
                raise ValueError(
                    f"{len(class_names)} class names given for n_classes={n_classes}"
                )
        _check_free(url, overwrite, storage_options)
        group = zarr.open_group(url, mode="w", storage_options=storage_options)
        group.attrs["ncdask"] = {
            "format": 1,  # raised to 2 once a set of another width is written
            "version": __version__,
            "n_classes": n_classes,
            "dim": dim,
            "dtype": dt.str,
            "chunk_rows": chunk_rows,
            "chunk_rows_auto": auto_rows,
            "class_names": class_names,
            "attrs": dict(attrs or {}),
            "ignore_index": check_ignore_index(ignore_index, n_classes),
        }
        out = cls(group, url, "a")
        out._storage_options = storage_options
        return out

    @classmethod
    def open(
        cls, url: str, mode: str = "r", *, storage_options: dict | None = None
    ) -> EmbeddingStore:
        """Open an existing store, read-only (``mode="r"``) or to append (``"a"``)."""
        if mode not in ("r", "a"):
            raise ValueError(f"mode must be 'r' or 'a', got {mode!r}")
        try:
            with _naming_broken_metadata(url, storage_options):
                group = zarr.open_group(url, mode="r" if mode == "r" else "r+",
                                        storage_options=storage_options)
        except (FileNotFoundError, zarr.errors.GroupNotFoundError) as e:
            raise FileNotFoundError(f"no ncdask store at {url!r}") from e
        out = cls(group, url, mode)
        out._storage_options = storage_options
        return out

    @classmethod
    def from_arrays(
        cls,
        url: str,
        splits: Mapping[str, tuple[Any, Any]],
        W: Any = None,
        b: Any = None,
        *,
        n_classes: int | None = None,
        **create_kwargs: Any,
    ) -> EmbeddingStore:
        """Create a store from in-memory (or memory-mapped) arrays.

        ``splits`` maps split names to ``(X, y)``. K is taken from ``n_classes``,
        else from W's rows, else from the largest label + 1. With
        ``overwrite=True`` an existing store is replaced only once the new one
        is complete (it is built beside it): bad input (a label out of range,
        a NaN, a non-finite classifier) or a kill leaves the old store as it
        was, and a failed call leaves nothing of its own behind. On an object
        store, which cannot swap two folders in one step, replacing an existing
        store is refused.
        """
        if not splits:
            raise ValueError("from_arrays needs at least one split")
        first = next(iter(splits.values()))
        dim = int(first[0].shape[1])
        if n_classes is None:
            if W is not None:
                n_classes = int(W.shape[0])
            else:
                ii = create_kwargs.get("ignore_index")
                n_classes = 1 + max((
                    int(np.max(yy[yy != ii] if ii is not None else yy, initial=-1))
                    for yy in (np.asarray(to_numpy(y)) for _, y in splits.values()
                               if y is not None)
                ), default=-1)
                if n_classes < 1:
                    raise ValueError("cannot tell n_classes from the labels given (there are "
                                     "none): pass n_classes=")
        import fsspec

        opts = create_kwargs.get("storage_options")
        _check_free(url, bool(create_kwargs.get("overwrite", False)), opts)
        fs, path = fsspec.core.url_to_fs(url, **(opts or {}))
        path = path.rstrip("/")
        existed = fs.exists(path)
        # replacing a store: build the new one beside it and swap them when complete,
        # so bad input or a kill leaves the old store as it was
        staged = existed and not (fs.isdir(path) and not fs.ls(path, detail=False))
        if staged and not renames(fs):
            raise ValueError(
                f"from_arrays(overwrite=True) cannot replace the store at {url!r} in one step "
                "(an object store has no rename, so the old store would be gone before the "
                "new one is whole): write to a new URL, or delete the old store yourself "
                "first; nothing was written")
        tag = owner_tag()
        target = f"{url.rstrip('/')}.ncdask-tmp-{tag}" if staged else url
        built = False
        try:
            store = cls.create(target, n_classes, dim, **{**create_kwargs, "overwrite": False})
            built = True
            for name, (X, y) in splits.items():
                with store.writer(name) as w:
                    step = store.chunk_rows
                    for i in range(0, X.shape[0], step):
                        w.append(X[i : i + step], y[i : i + step])
            if W is not None:
                store.set_classifier(W, b)
        except BaseException:
            if built and (staged or not existed):
                fs.rm(f"{path}.ncdask-tmp-{tag}" if staged else path, recursive=True)
            raise
        if staged:
            old = f"{path}.ncdask-old-{tag}"
            rename(fs, path, old)
            rename(fs, f"{path}.ncdask-tmp-{tag}", path)
            fs.rm(old, recursive=True)
        parent, _, base = path.rpartition("/")
        remove_stale(fs, parent or ".", prefix=f"{base}.ncdask-")
        return cls.open(url, mode="a", storage_options=opts)

    # ------------------------------------------------------------ properties
    @property
    def n_classes(self) -> int:
        """Number of classes K."""
        return int(self._meta["n_classes"])

    @property
    def dim(self) -> int:
        """Embedding dimension D of the default set (tagged sets: :meth:`dim_of`)."""
        return int(self._meta["dim"])

    @property
    def dtype(self) -> np.dtype:
        """Storage dtype of the embeddings."""
        return np.dtype(self._meta["dtype"])

    @property
    def chunk_rows(self) -> int:
        """Rows per stored chunk of the default set."""
        return int(self._meta["chunk_rows"])

    def _chunk_rows_for(self, dim: int) -> int:
        """Rows per chunk of a new set of width ``dim``."""
        auto = self._meta.get("chunk_rows_auto")
        if auto is None:  # stores written before sets had their own widths
            auto = self.chunk_rows == _auto_chunk_rows(self.dim, self.dtype)
        return _auto_chunk_rows(dim, self.dtype) if auto else self.chunk_rows

    @property
    def class_names(self) -> list[str] | None:
        """Class names, or None."""
        return self._meta.get("class_names")

    @property
    def ignore_index(self) -> int | None:
        """The label that marks samples to leave out (None: every label is a class)."""
        ii = self._meta.get("ignore_index")
        return None if ii is None else int(ii)

    @property
    def attrs(self) -> dict:
        """User metadata given at creation."""
        return dict(self._meta.get("attrs") or {})

    def __repr__(self) -> str:
        sets = self.sets()
        return (
            f"<ncdask.EmbeddingStore {self.url!r} mode={self.mode!r} K={self.n_classes} "
            f"D={self.dim} sets={len(sets)} splits={self.splits()}>"
        )

    # ------------------------------------------------------------- structure
    def _set_group(
        self, key: SetKey, create: bool, layout: dict | None = None
    ) -> zarr.Group | None:
        """A set's group (None if missing); ``create`` makes it, with ``layout`` if given."""
        path = key.path
        if not path:
            return self._group
        try:
            return self._group[path]
        except KeyError:
            if not create:
                return None
            self._require_writable()
            tags = key.tags
            layer = key.layer
            parent = self._group
            if layer is not None and key.epoch is not None:
                top = {"ncdask_set": {"layer": layer}}
                parent = _put_once(self._group, f"layer={layer}",
                                   lambda g: g.create_group(f"layer={layer}", attributes=top))
            name = path.rsplit("/", 1)[-1]
            attrs = {"ncdask_set": tags, **({"ncdask_layout": layout} if layout else {})}
            return _put_once(parent, name, lambda g: g.create_group(name, attributes=attrs))

    def _layout(self, sg: zarr.Group) -> tuple[int, int] | None:
        """``(dim, chunk_rows)`` of a set group; None while nothing fixes its width."""
        if sg.path == self._group.path:
            return self.dim, self.chunk_rows
        lay = sg.attrs.get("ncdask_layout")
        if isinstance(lay, Mapping) and "dim" in lay:
            return int(lay["dim"]), int(lay.get("chunk_rows") or self._chunk_rows_for(lay["dim"]))
        names = [n for n, _ in sg.groups()]
        if _classifier_name(sg) is not None or any("ncdask_split" in sg[n].attrs for n in names
                                        if not n.startswith(".")):
            return self.dim, self.chunk_rows  # written before sets had their own widths
        return None

    def _known_dim(self, key: SetKey) -> int | None:
        sg = self._set_group(key, create=False)
        lay = None if sg is None else self._layout(sg)
        return None if lay is None else lay[0]

    def _require_set(
        self, key: SetKey, dim: int, chunk_rows: int | None = None
    ) -> tuple[zarr.Group, int, int]:
        """The set's group and ``(dim, chunk_rows)``, recording them on its first write.

        Raises ValueError when the set already has another width.
        """
        dim = int(dim)
        rows = int(chunk_rows) if chunk_rows is not None else self._chunk_rows_for(dim)
        # a new set is created with its width: concurrent first writers agree or are refused
        sg = self._set_group(key, create=True, layout={"dim": dim, "chunk_rows": rows})
        lay = self._layout(sg)
        if lay is None:  # a set created empty by an older ncdask
            sg.attrs["ncdask_layout"] = {"dim": dim, "chunk_rows": rows}
            lay = (dim, rows)
        if dim != lay[0]:
            raise ValueError(
                f"set {key.where or '(default)'} of {self.url!r} has dim "
                f"{lay[0]} (recorded when it was first written), got dim {dim}"
            )
        if dim != self.dim and int(self._meta.get("format", 1)) < 2:
            # older ncdask reads every set with the store's dim: make it refuse the store
            meta = dict(self._group.attrs["ncdask"])
            meta["format"] = 2
            self._group.attrs["ncdask"] = meta
            self._meta = meta
        return sg, lay[0], lay[1]

    def create_set(
        self,
        *,
        layer: str | None = None,
        epoch: int | None = None,
        dim: int | None = None,
        chunk_rows: int | None = None,
    ) -> int:
        """Create an embedding set of width ``dim`` (explicitly; appends create sets too).

        Parameters
        ----------
        layer, epoch : optional
            Tags of the set; at least one.
        dim : int, optional
            Its embedding width; default the store's :attr:`dim`.
        chunk_rows : int, optional
            Rows per chunk of its splits; default as given at :meth:`create`,
            else about 64 MiB per chunk at this width.

        Returns
        -------
        int
            The set's width. Creating an existing set again is a no-op if
            ``dim`` matches (or is None) and a ValueError otherwise.

        Notes
        -----
        :meth:`sets` lists a set once it holds a split; :meth:`dim_of`
        answers from creation on.
        """
        self._require_writable()
        if layer is None and epoch is None:
            raise ValueError("create_set needs layer= or epoch= (the default set has the "
                             "store's dim)")
        key = SetKey(layer, epoch)
        if dim is None:
            dim = self._known_dim(key) or self.dim
        dim = int(dim)
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        if chunk_rows is not None and int(chunk_rows) < 1:
            raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
        return self._require_set(key, dim, chunk_rows)[1]

    def dim_of(self, *, layer: str | None = None, epoch: int | None = None) -> int:
        """The embedding width D of one set (the default set: :attr:`dim`).

        Raises
        ------
        KeyError
            The set does not exist yet (nothing was written to it).
        """
        key = SetKey(layer, epoch)
        d = self._known_dim(key)
        if d is None:
            raise KeyError(f"no embedding set {key.path!r} in {self.url!r}; "
                           f"sets: {self.sets()}")
        return d

    def sets(self) -> list[dict[str, Any]]:
        """Every embedding set holding at least one split, as a dict of tags.

        The default set is ``{}``; others look like ``{"layer": "fc_in", "epoch": 12}``.
        Each set has its own width, :meth:`dim_of` (``**tags``).
        """
        out: list[dict[str, Any]] = []

        def walk(g: zarr.Group, tags: dict) -> None:
            names = [n for n, _ in g.groups()]
            if any("ncdask_split" in g[n].attrs for n in names if not n.startswith(".")):
                out.append(tags)
            for n in sorted(names):
                sub = g[n]
                if "ncdask_set" in sub.attrs:
                    walk(sub, dict(sub.attrs["ncdask_set"]))

        with _naming_broken_metadata(self.url, self._storage_options):
            walk(self._group, {})
        return sorted(out, key=lambda t: (str(t.get("layer", "")), t.get("epoch", -1)))

    def _set_keys(self) -> list[SetKey]:
        """The keys of :meth:`sets`, in its order."""
        return [SetKey.from_tags(t) for t in self.sets()]

    def splits(self, *, layer: str | None = None, epoch: int | None = None) -> list[str]:
        """Names of the splits of one embedding set."""
        with _naming_broken_metadata(self.url, self._storage_options):
            g = self._set_group(SetKey(layer, epoch), create=False)
            if g is None:
                return []
            return sorted(n for n, sub in g.groups()
                          if "ncdask_split" in sub.attrs and not n.startswith("."))

    def _split_group(
        self,
        split: str,
        key: SetKey,
        create: bool,
        dim: int | None = None,
        labelled: bool = True,
    ) -> zarr.Group:
        """A split's group; with ``create``, made (in a set of width ``dim``) if missing."""
        check_name("split", split)
        sg = self._set_group(key, create=False)
        if create and sg is not None and split in sg and DELETED_ATTR in sg[split].attrs:
            fs, path = self._fs_path(sg, split)  # what a killed delete left: finish it
            _remove_split(sg[split], fs, path)
        if sg is not None and split in sg and "ncdask_split" in sg[split].attrs:
            g = sg[split]
            if create and "embeddings" not in g:  # another writer is creating it right now
                lay = self._layout(sg)
                self._split_arrays(g, lay[0], lay[1], _is_labelled(g))
            return g
        if not create:
            where = key.path or "the default set"
            raise KeyError(
                f"unknown split {split!r} in {where} of {self.url!r}; "
                f"splits there: {self.splits(**key.tags)}"
            )
        sg, D, rows = self._require_set(key, self.dim if dim is None else dim)
        # the group and its empty record in one write that never replaces another
        # writer's (whose record may already hold commits), then the arrays likewise
        rec = {"ncdask_split": _empty_record(split, key, self.n_classes, labelled)}
        g = _put_once(sg, split, lambda t: t.create_group(split, attributes=rec))
        _check_labelled(g, labelled)
        self._split_arrays(g, D, rows, _is_labelled(g))
        return g

    def _split_arrays(self, g: zarr.Group, D: int, rows: int, labelled: bool) -> None:
        """Give the split group ``g`` its empty arrays where they are missing."""
        # fill values: what Zarr returns for a missing chunk. NaN embeddings and an
        # impossible label make a lost chunk visible (the stats pass rejects the label)
        _put_once(g, "embeddings", lambda t: t.create_array(
            "embeddings", shape=(0, D), chunks=(rows, D), dtype=self.dtype,
            dimension_names=("sample", "feature"), compressors=default_codec(),
            fill_value=np.nan))
        if labelled:
            lab = np.int32 if self.n_classes < 2**31 else np.int64
            _put_once(g, "labels", lambda t: t.create_array(
                "labels", shape=(0,), chunks=(rows,), dtype=lab,
                dimension_names=("sample",), compressors=[ZstdCodec(level=3), Crc32cCodec()],
                fill_value=np.iinfo(lab).min))

    def _new_split_arrays(
        self, sg: zarr.Group, name: str, D: int, rows: int, labelled: bool
    ) -> zarr.Group:
        """A new group ``name`` in ``sg`` with empty split arrays (no commit record yet)."""
        g = sg.create_group(name)
        self._split_arrays(g, D, rows, labelled)
        return g

    def _require_writable(self) -> None:
        if self.mode == "r":
            raise PermissionError(
                f"store {self.url!r} is open read-only; open it with mode='a' to append"
            )

    # ------------------------------------------------------ group file moves
    def _fs_path(self, group: zarr.Group, name: str) -> tuple[Any, str]:
        import fsspec

        fs, root = fsspec.core.url_to_fs(self.url, **(self._storage_options or {}))
        parts = [root.rstrip("/"), *(p for p in (group.path, name) if p)]
        return fs, "/".join(parts)


    def _tidy(self, sg: zarr.Group) -> list[str]:
        """Delete what killed writers left staged in set ``sg`` (see :mod:`ncdask.store.staging`)."""
        fs, folder = self._fs_path(sg, "")
        keep = tuple(n for n in (_classifier_name(sg),) if n)
        gone = remove_stale(fs, folder.rstrip("/"), keep=keep)
        if gone:
            _forget_listings(sg)
        return gone

    def _remove_group(self, sg: zarr.Group, name: str) -> None:
        fs, path = self._fs_path(sg, name)
        if fs.exists(path):
            fs.rm(path, recursive=True)
            _forget_listings(sg)

    def delete_split(
        self, split: str, *, layer: str | None = None, epoch: int | None = None
    ) -> int:
        """Delete one split (its embeddings and labels) and return how many rows it held.

        The split disappears at once (its commit record is removed first);
        its arrays are deleted after. Only a split that ncdask wrote is
        deleted; the set's classifier and other splits stay.

        Raises
        ------
        KeyError
            No such split.
        PermissionError
            The store is open read-only.
        """
        self._require_writable()
        key = SetKey(layer, epoch)
        g = self._split_group(split, key, create=False)
        n = int(_snapshot(g)[1]["n_committed"])
        sg = self._set_group(key, create=False)
        fs, path = self._fs_path(sg, split)
        if renames(fs):
            aside = f"{path}.deleted-{owner_tag()}"
            rename(fs, path, aside)
            fs.rm(aside, recursive=True)
        else:  # no rename (object stores): the record goes in one PUT, then the rest
            _remove_split(g, fs, path)
        return n

    def n_rows(self, split: str, *, layer: str | None = None, epoch: int | None = None) -> int:
        """The number of committed rows of a split.

        Raises
        ------
        KeyError
            No such split.
        """
        return self._committed(split, SetKey(layer, epoch))

    def sources(
        self, split: str, *, layer: str | None = None, epoch: int | None = None
    ) -> list[dict[str, Any]]:
        """The files imported into a split (:meth:`import_files`), oldest first.

        Each is a dict with ``embeddings`` and ``labels`` (absolute paths at
        import time), ``rows`` and the content ``fingerprint`` by which a
        second import of the same data is recognised.
        """
        g = self._split_group(split, SetKey(layer, epoch), create=False)
        return [dict(x) for x in _snapshot(g)[1].get("sources") or []]

    def _committed(self, split: str, key: SetKey) -> int:
        g = self._split_group(split, key, create=False)
        return int(_snapshot(g)[1]["n_committed"])


def resolve_split(data: Any, split: str | None = None, *, labels: bool = True) -> xr.Dataset:
    """A split Dataset from a Dataset, a store and split name, or a ``(store, split)`` tuple.

    With ``labels=False`` an unlabelled split (OOD data) is accepted too.
    """
    if isinstance(data, tuple) and len(data) == 2 and split is None:
        data, split = data
    if isinstance(data, xr.Dataset):
        if split is not None:
            raise TypeError("a split Dataset was given with a split name")
        ds = data
    elif isinstance(data, (str, EmbeddingStore)):
        store = EmbeddingStore.open(data) if isinstance(data, str) else data
        ds = store.split(split or "train")
    else:
        raise TypeError(
            f"expected a split Dataset or an EmbeddingStore, got {type(data).__name__}"
        )
    if "embeddings" not in ds:
        raise ValueError("a split Dataset needs an 'embeddings' variable")
    if labels and "labels" not in ds:
        name = ds.attrs.get("split")
        raise ValueError(
            f"split {name!r} has no labels (an unlabelled split, such as OOD data); "
            "class statistics need labelled samples"
            if name is not None
            else "a split Dataset needs 'embeddings' and 'labels' variables"
        )
    return ds
