"""The Zarr (v3) embedding store, :class:`EmbeddingStore`.

Layout (one Zarr group per store; any fsspec URL)::

    store.zarr/                      attrs["ncdask"]: format, version, n_classes, dim, ...
        .classifier-<owner>/{W,b}    classifier of the default set
        train/{embeddings,labels}    a split: attrs["ncdask_split"] = commit record
        layer=fc_in/epoch=12/        another embedding set (tags as path parts)
            train/...

Each set has its own width: the default set the store's ``dim``, a tagged
set the width of its first write, recorded in its ``ncdask_layout``
attribute (a store holding such a set is format 2, which older ncdask
refuses). A split's ``ncdask_split`` attribute is its commit record: rows
are written past the committed end and the record moves last, so a writer
killed mid-append leaves exactly the committed rows.

The class is a thin front over :class:`ncdask.store.core.Core` and the
modules of functions beside it (appends, writer, imports, classifier, reads).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import xarray as xr
import zarr

from ncdask._validate import check_ignore_index
from ncdask._version import __version__
from ncdask.kernels._xp import to_numpy
from ncdask.store import appends, classifier, imports, reads
from ncdask.store.core import (
    Core,
    auto_chunk_rows,
    naming_broken_metadata,
    remove_split,
)
from ncdask.store.record import snapshot
from ncdask.store.setkey import SetKey
from ncdask.store.staging import owner_tag, remove_stale
from ncdask.store.writer import StoreWriter, open_writer
from ncdask.store.zarrio import rename, renames


def _check_free(url: str, overwrite: bool, storage_options: dict | None) -> None:
    """Refuse to create a store where something is: ``zarr.open_group(mode="w")`` deletes it.

    An ncdask store is replaced only with ``overwrite=True``; any other
    non-empty path never.
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
        "(it would delete what is there): choose a new path")


def _n_classes_of(splits: Mapping[str, tuple[Any, Any]], W: Any, ii: int | None) -> int:
    """K from W's rows, else from the largest label + 1."""
    if W is not None:
        return int(W.shape[0])
    ys = (np.asarray(to_numpy(y)) for _, y in splits.values() if y is not None)
    K = 1 + max((int(np.max(y[y != ii] if ii is not None else y, initial=-1)) for y in ys),
                default=-1)
    if K < 1:
        raise ValueError("cannot tell n_classes from the labels given (there are none): "
                         "pass n_classes=")
    return K


class EmbeddingStore:
    """Embeddings and labels of one or more splits, in a chunked Zarr store.

    Create one with :meth:`create` or :meth:`from_arrays`, open one with
    :meth:`open`. ``store[split]`` is a lazy :class:`xarray.Dataset`.

    A store holds one or more embedding *sets* (``layer=`` / ``epoch=``
    tags, see :meth:`sets`), each with its own width (:meth:`dim_of`), so
    one store holds several layers of a network.

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

    def __init__(self, group: zarr.Group, url: str, mode: str,
                 storage_options: dict | None = None) -> None:
        #: The store's groups, records and filesystem (:class:`ncdask.store.core.Core`).
        self.core = Core(group, url, mode, storage_options)

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
            Width D of the default (untagged) set; tagged sets take theirs
            from their first write or :meth:`create_set`.
        dtype : dtype, default "float32"
            Storage dtype of the embeddings.
        chunk_rows : int, optional
            Rows per chunk of every set; default about 64 MiB per chunk at
            each set's width.
        class_names : list of str, optional
            K class names.
        attrs : mapping, optional
            User metadata (JSON-serialisable) kept with the store.
        overwrite : bool
            Replace an existing store at ``url``.
        storage_options : dict, optional
            Passed to fsspec for remote URLs.
        ignore_index : int, optional
            A label outside ``[0, K)`` that marks samples to leave out
            (PyTorch's ``-100`` padding): appends accept it, the class counts
            and the statistics leave such samples out.
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
        chunk_rows = int(auto_chunk_rows(dim, dt) if auto_rows else chunk_rows)
        if chunk_rows < 1:
            raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
        if class_names is not None:
            class_names = [str(c) for c in class_names]
            if len(class_names) != n_classes:
                raise ValueError(f"{len(class_names)} class names given for "
                                 f"n_classes={n_classes}")
        _check_free(url, overwrite, storage_options)
        group = zarr.open_group(url, mode="w", storage_options=storage_options)
        group.attrs["ncdask"] = {
            "format": 1,  # raised to 2 once a set of another width is written
            "version": __version__, "n_classes": n_classes, "dim": dim, "dtype": dt.str,
            "chunk_rows": chunk_rows, "chunk_rows_auto": auto_rows,
            "class_names": class_names, "attrs": dict(attrs or {}),
            "ignore_index": check_ignore_index(ignore_index, n_classes),
        }
        return cls(group, url, "a", storage_options)

    @classmethod
    def open(
        cls, url: str, mode: str = "r", *, storage_options: dict | None = None
    ) -> EmbeddingStore:
        """Open an existing store, read-only (``mode="r"``) or to append (``"a"``)."""
        if mode not in ("r", "a"):
            raise ValueError(f"mode must be 'r' or 'a', got {mode!r}")
        try:
            with naming_broken_metadata(url, storage_options):
                group = zarr.open_group(url, mode="r" if mode == "r" else "r+",
                                        storage_options=storage_options)
        except (FileNotFoundError, zarr.errors.GroupNotFoundError) as e:
            raise FileNotFoundError(f"no ncdask store at {url!r}") from e
        return cls(group, url, mode, storage_options)

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

        ``splits`` maps split names to ``(X, y)``. K is taken from
        ``n_classes``, else from W's rows, else from the largest label + 1.
        With ``overwrite=True`` an existing store is replaced only once the
        new one, built beside it, is complete: bad input or a kill leaves the
        old store as it was. On an object store (no rename) replacing a
        store is refused.
        """
        import fsspec

        if not splits:
            raise ValueError("from_arrays needs at least one split")
        dim = int(next(iter(splits.values()))[0].shape[1])
        if n_classes is None:
            n_classes = _n_classes_of(splits, W, create_kwargs.get("ignore_index"))
        opts = create_kwargs.get("storage_options")
        _check_free(url, bool(create_kwargs.get("overwrite", False)), opts)
        fs, path = fsspec.core.url_to_fs(url, **(opts or {}))
        path = path.rstrip("/")
        existed = fs.exists(path)
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
                    for i in range(0, X.shape[0], store.chunk_rows):
                        w.append(X[i : i + store.chunk_rows], y[i : i + store.chunk_rows])
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
    url = property(lambda self: self.core.url, doc="The store's path or URL.")
    mode = property(lambda self: self.core.mode, doc='"r" (read-only) or "a" (append).')
    n_classes = property(lambda self: self.core.n_classes, doc="Number of classes K.")
    dim = property(lambda self: self.core.dim,
                   doc="Width D of the default set (tagged sets: :meth:`dim_of`).")
    dtype = property(lambda self: self.core.dtype, doc="Storage dtype of the embeddings.")
    chunk_rows = property(lambda self: self.core.chunk_rows,
                          doc="Rows per stored chunk of the default set.")
    class_names = property(lambda self: self.core.meta.get("class_names"),
                           doc="Class names, or None.")
    ignore_index = property(lambda self: self.core.ignore_index,
                            doc="The label of samples to leave out (None: none).")
    attrs = property(lambda self: dict(self.core.meta.get("attrs") or {}),
                     doc="User metadata given at creation.")

    def __repr__(self) -> str:
        return (f"<ncdask.EmbeddingStore {self.url!r} mode={self.mode!r} K={self.n_classes} "
                f"D={self.dim} sets={len(self.sets())} splits={self.splits()}>")

    # ------------------------------------------------------------- structure
    def create_set(self, *, layer: str | None = None, epoch: int | None = None,
                   dim: int | None = None, chunk_rows: int | None = None) -> int:
        """Create an embedding set explicitly (appends create sets too); return its width.

        Parameters
        ----------
        layer, epoch : optional
            Tags of the set; at least one.
        dim : int, optional
            Its width; default the store's :attr:`dim`.
        chunk_rows : int, optional
            Rows per chunk; default as given at :meth:`create`, else about
            64 MiB per chunk at this width.

        Returns
        -------
        int
            The set's width. Creating an existing set again is a no-op if
            ``dim`` matches (or is None), a ValueError otherwise. :meth:`sets`
            lists a set once it holds a split.
        """
        self.core.require_writable()
        if layer is None and epoch is None:
            raise ValueError("create_set needs layer= or epoch= (the default set has the "
                             "store's dim)")
        key = SetKey(layer, epoch)
        dim = int(dim if dim is not None else self.core.known_dim(key) or self.dim)
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        if chunk_rows is not None and int(chunk_rows) < 1:
            raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
        return self.core.require_set(key, dim, chunk_rows)[1]

    def dim_of(self, *, layer: str | None = None, epoch: int | None = None) -> int:
        """The width D of one set; a KeyError if nothing was written to it yet."""
        key = SetKey(layer, epoch)
        d = self.core.known_dim(key)
        if d is None:
            raise KeyError(f"no embedding set {key.path!r} in {self.url!r}; "
                           f"sets: {self.sets()}")
        return d

    def sets(self) -> list[dict[str, Any]]:
        """Every embedding set holding a split, as its tags.

        The default set is ``{}``; others look like ``{"layer": "fc_in", "epoch": 12}``.
        """
        return self.core.sets()

    def splits(self, *, layer: str | None = None, epoch: int | None = None) -> list[str]:
        """Names of the splits of one embedding set."""
        return self.core.splits(SetKey(layer, epoch))

    def delete_split(self, split: str, *, layer: str | None = None,
                     epoch: int | None = None) -> int:
        """Delete one split (its embeddings and labels); return how many rows it held.

        The split disappears at once (renamed aside, or on an object store
        its record removed first); the set's classifier and other splits stay.

        Raises
        ------
        KeyError
            No such split.
        PermissionError
            The store is open read-only.
        """
        self.core.require_writable()
        key = SetKey(layer, epoch)
        g = self.core.split_group(split, key)
        n = int(snapshot(g)[1]["n_committed"])
        fs, path = self.core.fs_path(self.core.set_group(key), split)
        if renames(fs):
            aside = f"{path}.deleted-{owner_tag()}"
            rename(fs, path, aside)
            fs.rm(aside, recursive=True)
        else:
            remove_split(g, fs, path)
        return n

    def n_rows(self, split: str, *, layer: str | None = None, epoch: int | None = None) -> int:
        """The number of committed rows of a split (KeyError: no such split)."""
        return int(snapshot(self.core.split_group(split, SetKey(layer, epoch)))[1]["n_committed"])

    def sources(self, split: str, *, layer: str | None = None,
                epoch: int | None = None) -> list[dict[str, Any]]:
        """The files imported into a split (:meth:`import_files`), oldest first.

        Each has ``embeddings`` and ``labels`` (absolute paths at import
        time), ``rows`` and the content ``fingerprint`` that recognises a
        second import of the same data.
        """
        g = self.core.split_group(split, SetKey(layer, epoch))
        return [dict(x) for x in snapshot(g)[1].get("sources") or []]

    # ---------------------------------------------------------------- writes
    def append(self, split: str, X: Any, y: Any = None, *, layer: str | None = None,
               epoch: int | None = None, allow_nonfinite: bool = False) -> int:
        """Append one batch and commit it; return the split's committed row count.

        Parameters
        ----------
        split : str
            Split name ("train", "test", "ood", ...); created on first use.
        X : array (n, D)
            Embeddings: NumPy, CuPy or a PyTorch tensor (CPU or CUDA), of the
            set's width (a new set takes this width). Cast to the store's
            dtype; ``torch.bfloat16`` is widened exactly to float32 first.
        y : array (n,) or None
            Integer labels in ``[0, K)``. ``None`` writes an *unlabelled*
            split (OOD data): the first write decides, later batches agree.
        layer, epoch : optional
            Tags of the embedding set (default set when both are None).
        allow_nonfinite : bool
            Store NaN/inf instead of raising.

        Raises
        ------
        ValueError
            A bad batch (nothing is written), e.g. a width other than the set's.

        Notes
        -----
        The rows are durable when this returns. Each call rewrites the partly
        filled last chunk: for many small batches use :meth:`writer`.
        """
        return appends.append(self.core, split, X, y, SetKey(layer, epoch), allow_nonfinite)

    def writer(self, split: str, *, layer: str | None = None, epoch: int | None = None,
               allow_nonfinite: bool = False, dim: int | None = None,
               labelled: bool = True) -> StoreWriter:
        """A buffered writer for many small batches (use as a context manager).

        Batches are validated as they arrive, written in whole chunks, and
        committed on :meth:`StoreWriter.flush` and on exit. A new set takes
        ``dim`` if given, else the first batch's width (the split is created
        then, so a writer that never gets a valid batch leaves nothing).
        ``labelled=False`` writes an unlabelled split (OOD data).
        """
        return open_writer(self.core, split, SetKey(layer, epoch),
                           allow_nonfinite=allow_nonfinite, dim=dim, labelled=labelled)

    def set_classifier(self, W: Any, b: Any = None, *, layer: str | None = None,
                       epoch: int | None = None) -> None:
        """Store the classifier weights ``W`` (K×D) and optional bias ``b`` (K) of a set.

        For a set not written yet, W's columns give the set its width.
        """
        classifier.set_classifier(self.core, W, b, SetKey(layer, epoch))

    def classifier(self, *, layer: str | None = None, epoch: int | None = None,
                   lazy: bool = False) -> tuple[Any, Any]:
        """The stored ``(W, b)`` (b is None when no bias was stored).

        With ``lazy=True``, dask arrays over the stored chunks, so a
        vocabulary-sized classifier is read tile by tile, never whole.
        """
        return classifier.classifier(self.core, SetKey(layer, epoch), lazy)

    def import_files(self, split: str, X_path: str, y_path: str | None = None, *,
                     layer: str | None = None, epoch: int | None = None,
                     allow_nonfinite: bool = False, labels: bool = True,
                     mode: str = "add") -> int:
        """Import an ``.npy`` pair or an ``.npz`` file without loading it whole.

        ``.npy`` files are memory-mapped, ``.npz`` members (``X``/``Y`` or
        ``embeddings``/``labels``) streamed. All or nothing and safe to
        retry: the files are checked before anything is written, the rows
        committed in one step, and each split remembers a fingerprint of the
        sources imported into it.

        Parameters
        ----------
        split : str
        X_path : path
            ``.npy`` embeddings (with ``y_path``) or an ``.npz`` file.
        y_path : path, optional
            ``.npy`` labels for an ``.npy`` embeddings file.
        layer, epoch : optional
            Tags of the embedding set (a new set takes the file's width).
        allow_nonfinite : bool
            Store NaN/inf instead of raising.
        labels : bool, default True
            False imports embeddings only, into an unlabelled split.
        mode : {"add", "append", "overwrite"}
            ``"add"`` appends unless the split holds this source already;
            ``"append"`` appends regardless; ``"overwrite"`` replaces the
            split's rows (the old stay readable until the new are complete).

        Returns
        -------
        int
            The split's committed row count.

        Raises
        ------
        DuplicateImportError
            ``mode="add"`` and the split already holds this source.
        ValueError
            Bad files (nothing is written).
        """
        return imports.import_files(self.core, split, X_path, y_path, SetKey(layer, epoch),
                                    allow_nonfinite=allow_nonfinite, labels=labels, mode=mode)

    # ----------------------------------------------------------------- reads
    def split(self, name: str, *, layer: str | None = None, epoch: int | None = None,
              backend: Any = "numpy") -> xr.Dataset:
        """The committed rows of a split as a lazy Dataset.

        Parameters
        ----------
        name : str
            Split name.
        layer, epoch : optional
            The set to read (see :meth:`sets`).
        backend : {"numpy", "cupy"} or array module, default "numpy"
            Array module of the chunks: ``"cupy"`` copies each chunk to the
            current CUDA device as it is read, so the statistics and metrics
            run on the GPU (results stay CuPy-backed). Any NumPy-like module
            with ``asarray`` and ``empty`` is accepted.

        Returns
        -------
        xarray.Dataset
            ``embeddings (sample, feature)`` and ``labels (sample)`` (none in
            an unlabelled split), dask-backed, chunked as stored; attrs
            ``n_classes``, ``dim``, ``class_names``, ``split``, ``layer``,
            ``epoch``, ``class_counts``, ``n_committed``, ``ncdask_version``.

        Raises
        ------
        ImportError, RuntimeError
            ``backend="cupy"`` without CuPy, or without a CUDA device.
        """
        return reads.read_split(self.core, name, SetKey(layer, epoch), backend)

    def __getitem__(self, split: str) -> xr.Dataset:
        return self.split(split)

    def __contains__(self, split: str) -> bool:
        return split in self.splits()


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
            f"expected a split Dataset or an EmbeddingStore, got {type(data).__name__}")
    if "embeddings" not in ds:
        raise ValueError("a split Dataset needs an 'embeddings' variable")
    if labels and "labels" not in ds:
        name = ds.attrs.get("split")
        raise ValueError(
            f"split {name!r} has no labels (an unlabelled split, such as OOD data); "
            "class statistics need labelled samples" if name is not None
            else "a split Dataset needs 'embeddings' and 'labels' variables")
    return ds
