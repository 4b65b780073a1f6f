"""The Zarr (v3) embedding store, :class:`EmbeddingStore`: any fsspec URL, laid out as::

    store.zarr/                      attrs["ncdask"]: format, version, n_classes, dim, ...
        .classifier-<owner>/{W,b}    classifier of the default set
        train/{embeddings,labels}    a split: attrs["ncdask_split"] = commit record
        layer=fc_in/epoch=12/        another embedding set (tags as path parts)
            train/...

A tagged set records its width in ``ncdask_layout`` (format 2). The record moves after the
rows, so a killed writer leaves exactly the committed rows. A thin front over
:class:`ncdask.store.core.Core`."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

import numpy as np
import xarray as xr
import zarr

from ncdask._validate import check_ignore_index
from ncdask._version import __version__
from ncdask.kernels._xp import to_numpy
from ncdask.store import appends, classifier, imports, reads
from ncdask.store.core import Core, auto_chunk_rows, naming_broken_metadata, remove_split
from ncdask.store.locks import split_lock
from ncdask.store.record import snapshot
from ncdask.store.setkey import SetKey
from ncdask.store.writer import StoreWriter
from ncdask.store.zarrio import check_output, output_lease, renames, swap_in, tidy_beside


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
    """Embeddings and labels of splits, in a chunked Zarr store.

    Create one with :meth:`create` or :meth:`from_arrays`, open one with :meth:`open`;
    ``store[split]`` is a lazy :class:`xarray.Dataset`. A store holds embedding *sets* (``layer=``
    / ``epoch=`` tags, :meth:`sets`), each of its own width (:meth:`dim_of`).

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

    @classmethod
    def create(cls, url: str, n_classes: int, dim: int, *, dtype: Any = "float32",
               chunk_rows: int | None = None, class_names: list[str] | None = None,
               attrs: Mapping[str, Any] | None = None, overwrite: bool = False,
               storage_options: dict | None = None,
               ignore_index: int | None = None) -> EmbeddingStore:
        """Create an empty store at ``url`` (a path or fsspec URL, with ``storage_options``).

        Parameters
        ----------
        n_classes, dim : int
            K and the default set's width D (tagged sets take their first write's).
        dtype : dtype, default "float32"
            Storage dtype of the embeddings.
        chunk_rows : int, optional
            Rows per chunk; default about 64 MiB per chunk at each set's width.
        class_names : list of str, optional
        attrs : mapping, optional
            User metadata (JSON-serialisable).
        overwrite : bool
            Replace an existing store at ``url``.
        ignore_index : int, optional
            A label outside ``[0, K)`` marking samples to leave out (e.g. ``-100``).
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
        check_output(url, "store", overwrite=overwrite, storage_options=storage_options)
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
    def open(cls, url: str, mode: str = "r", *,
             storage_options: dict | None = None) -> EmbeddingStore:
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
    def from_arrays(cls, url: str, splits: Mapping[str, tuple[Any, Any]], W: Any = None,
                    b: Any = None, *, n_classes: int | None = None,
                    **create_kwargs: Any) -> EmbeddingStore:
        """Create a store from in-memory arrays: ``splits`` maps split names to ``(X, y)``.

        K is ``n_classes``, else W's rows, else the largest label + 1. ``overwrite=True``
        builds beside the old store and swaps it in (not on object stores)."""
        if not splits:
            raise ValueError("from_arrays needs at least one split")
        dim = int(next(iter(splits.values()))[0].shape[1])
        if n_classes is None:
            n_classes = _n_classes_of(splits, W, create_kwargs.get("ignore_index"))
        opts = create_kwargs.get("storage_options")
        fs, path = check_output(url, "store", overwrite=bool(create_kwargs.get("overwrite")),
                                storage_options=opts)
        existed = fs.exists(path)
        staged = existed and not (fs.isdir(path) and not fs.ls(path, detail=False))
        if staged and not renames(fs):
            raise ValueError(
                f"from_arrays(overwrite=True) cannot replace the store at {url!r} in one step "
                "(an object store has no rename, so the old store would be gone before the "
                "new one is whole): write to a new URL, or delete the old store yourself "
                "first; nothing was written")
        # a replace builds the new store beside, listed in a lease beside it
        with output_lease(fs, path) if staged else contextlib.nullcontext() as lease:
            tmp = lease.stage(f"{path}.ncdask-tmp-{lease.id}") if staged else path
            built = False
            try:
                store = cls.create(url.rstrip("/") + tmp[len(path):], n_classes, dim,
                                   **{**create_kwargs, "overwrite": False})
                built = True
                for name, (X, y) in splits.items():
                    with store.writer(name) as w:
                        for i in range(0, X.shape[0], store.chunk_rows):
                            w.append(X[i : i + store.chunk_rows], y[i : i + store.chunk_rows])
                if W is not None:
                    store.set_classifier(W, b)
            except BaseException:
                if built and (staged or not existed):
                    with contextlib.suppress(OSError):  # the lease recovers the rest
                        fs.rm(tmp, recursive=True)
                raise
            if staged:
                swap_in(fs, tmp, path, lease)
        tidy_beside(fs, path)
        return cls.open(url, mode="a", storage_options=opts)

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

    def create_set(self, *, layer: str | None = None, epoch: int | None = None,
                   dim: int | None = None, chunk_rows: int | None = None,
                   depth: int | None = None) -> int:
        """Create a set (tagged with ``layer`` and/or ``epoch``) of width ``dim``; return it.
        ``dim`` defaults to the store's; again with the same ``dim`` (or None) is a no-op.
        ``depth``, the set's position in its model (:func:`ncdask.capture` records it), orders
        sweeps over layers; it is kept only by the call that creates the set."""
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
        return self.core.require_set(key, dim, chunk_rows, depth)[1]

    def depth(self, *, layer: str | None = None, epoch: int | None = None) -> int | None:
        """The set's depth in its model as :func:`ncdask.capture` recorded it (None: none)."""
        return self.core.depth(SetKey(layer, epoch))

    def dim_of(self, *, layer: str | None = None, epoch: int | None = None) -> int:
        """The width D of one set; a KeyError if nothing was written to it yet."""
        key = SetKey(layer, epoch)
        d = self.core.known_dim(key)
        if d is None:
            raise KeyError(f"no embedding set {key.path!r} in {self.url!r}; "
                           f"sets: {self.sets()}")
        return d

    def sets(self) -> list[dict[str, Any]]:
        """Every set holding a split, as its tags: ``{}``, ``{"layer": "fc", "epoch": 12}``."""
        return self.core.sets()

    def splits(self, *, layer: str | None = None, epoch: int | None = None) -> list[str]:
        """Names of the splits of one embedding set."""
        return self.core.splits(SetKey(layer, epoch))

    def delete_split(self, split: str, *, layer: str | None = None,
                     epoch: int | None = None) -> int:
        """Delete one split at once, under its lock (KeyError if missing); return its rows."""
        self.core.require_writable()
        key = SetKey(layer, epoch)
        with split_lock(self.core, key, split):
            g = self.core.split_group(split, key)
            n = int(snapshot(g)[1]["n_committed"])
            remove_split(g, *self.core.fs_path(g))
        return n

    def n_rows(self, split: str, *, layer: str | None = None, epoch: int | None = None) -> int:
        """The number of committed rows of a split (KeyError: no such split)."""
        return int(snapshot(self.core.split_group(split, SetKey(layer, epoch)))[1]["n_committed"])

    def sources(self, split: str, *, layer: str | None = None,
                epoch: int | None = None) -> list[dict[str, Any]]:
        """The files imported into a split, oldest first: ``embeddings``, ``labels`` (paths),
        ``rows`` and the content ``fingerprint`` that recognises a repeated import."""
        g = self.core.split_group(split, SetKey(layer, epoch))
        return [dict(x) for x in snapshot(g)[1].get("sources") or []]

    def append(self, split: str, X: Any, y: Any = None, *, layer: str | None = None,
               epoch: int | None = None, allow_nonfinite: bool = False) -> int:
        """Append one batch and commit it; return the split's committed row count.

        Parameters
        ----------
        split : str
            Split name, created on first use.
        X : array (n, D)
            Embeddings (NumPy, CuPy or torch) of the set's width.
        y : array (n,) or None
            Labels in ``[0, K)``; ``None`` writes an unlabelled split.
        layer, epoch : optional
            Tags of the embedding set (default set when both are None).
        allow_nonfinite : bool
            Store NaN/inf instead of raising ValueError.
        """
        return appends.append(self.core, split, X, y, SetKey(layer, epoch), allow_nonfinite)

    def writer(self, split: str, *, layer: str | None = None, epoch: int | None = None,
               allow_nonfinite: bool = False, dim: int | None = None,
               labelled: bool = True) -> StoreWriter:
        """A buffered :class:`StoreWriter` (context manager) for many small batches; a new
        set takes ``dim``, else the first batch's width."""
        return StoreWriter(self.core, split, SetKey(layer, epoch),
                           allow_nonfinite=allow_nonfinite, dim=dim, labelled=labelled)

    def set_classifier(self, W: Any, b: Any = None, *, layer: str | None = None,
                       epoch: int | None = None) -> None:
        """Store a set's classifier ``W`` (K×D; a new set takes D) and bias ``b`` (K)."""
        classifier.set_classifier(self.core, W, b, SetKey(layer, epoch))

    def classifier(self, *, layer: str | None = None, epoch: int | None = None,
                   lazy: bool = False) -> tuple[Any, Any]:
        """The stored ``(W, b)`` (b None without bias); ``lazy``: dask arrays, read by tiles."""
        return classifier.classifier(self.core, SetKey(layer, epoch), lazy)

    def import_files(self, split: str, X_path: str, y_path: str | None = None, *,
                     layer: str | None = None, epoch: int | None = None,
                     allow_nonfinite: bool = False, labels: bool = True,
                     mode: str = "add") -> int:
        """Import an ``.npy`` pair or an ``.npz`` file, streamed; all or nothing, safe to retry.

        Parameters
        ----------
        split : str
        X_path, y_path : path
            ``.npy`` embeddings and labels, or an ``.npz`` file (``X``/``Y``).
        layer, epoch : optional
            Tags of the embedding set (a new set takes the file's width).
        allow_nonfinite : bool
            Store NaN/inf instead of raising.
        labels : bool, default True
            False imports embeddings only, into an unlabelled split.
        mode : {"add", "append", "overwrite"}
            ``"add"`` refuses a source imported already, ``"append"`` does not,
            ``"overwrite"`` replaces the split's rows.

        Returns
        -------
        int
            The split's committed row count.
        """
        return imports.import_files(self.core, split, X_path, y_path, SetKey(layer, epoch),
                                    allow_nonfinite=allow_nonfinite, labels=labels, mode=mode)

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
            Array module of the chunks (``"cupy"``: copied to the GPU as read).

        Returns
        -------
        xarray.Dataset
            Dask-backed ``embeddings (sample, feature)`` and ``labels (sample)``.
        """
        return reads.read_split(self.core, name, SetKey(layer, epoch), backend)

    def __getitem__(self, split: str) -> xr.Dataset:
        return self.split(split)

    def __contains__(self, split: str) -> bool:
        return split in self.splits()


def resolve_split(data: Any, split: str | None = None, *, labels: bool = True) -> xr.Dataset:
    """A split Dataset from a Dataset, a store and split name, or a ``(store, split)`` tuple
    (with ``labels=False`` an unlabelled split too)."""
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
