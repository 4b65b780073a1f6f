"""Streaming readers for embeddings people already saved (.npy pairs, .npz files)."""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np

from ncdask._validate import check_labels
from ncdask.errors import option
from ncdask.store.digest import extend

X_KEYS = ("X", "embeddings")
Y_KEYS = ("Y", "y", "labels")


class _NpyStream:
    """Rows of a ``.npy`` array read in blocks from a file object (e.g. a zip member)."""

    def __init__(self, f: IO[bytes]) -> None:
        fmt = np.lib.format
        version = fmt.read_magic(f)
        read_header = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
        shape, fortran, dtype = read_header(f)
        if fortran and len(shape) > 1:
            raise ValueError("Fortran-ordered .npy members cannot be streamed by rows")
        if dtype.hasobject:
            raise ValueError("object arrays are not supported")
        self.f, self.shape, self.dtype = f, shape, dtype
        self.row_items = int(np.prod(shape[1:], dtype=np.int64))

    def read(self, rows: int) -> np.ndarray:
        buf = self.f.read(rows * self.row_items * self.dtype.itemsize)
        n = len(buf) // (self.row_items * self.dtype.itemsize)
        return np.frombuffer(buf, dtype=self.dtype, count=n * self.row_items).reshape(
            (n, *self.shape[1:]))


def _pick(names: list[str], keys: tuple[str, ...], what: str, path: str, hint: str = "") -> str:
    for k in keys:
        if k in names:
            return k
    raise KeyError(f"{path}: no {what} array (looked for keys {list(keys)}; found {names}){hint}")


@contextlib.contextmanager
def _opened(X_path: str, y_path: str | None, labels: bool) -> Iterator[tuple[Any, Any]]:
    """The embeddings and labels (None: unlabelled) of saved files, checked to pair up:
    streams of ``.npy`` files and of ``.npz`` members."""
    if X_path.endswith(".npz"):
        if y_path is not None:
            raise ValueError("an .npz file holds its own labels; do not pass y_path")
        with zipfile.ZipFile(X_path) as z:
            names = [n[:-4] for n in z.namelist() if n.endswith(".npy")]
            name = Path(X_path).name
            kx = _pick(names, X_KEYS, "embeddings", name)
            ky = labels and _pick(names, Y_KEYS, "labels", name, "; for unlabelled data such "
                                  "as an OOD split, import with "
                                  + option("labels=False", "--no-labels"))
            with z.open(kx + ".npy") as fx, (z.open(ky + ".npy") if ky
                                             else contextlib.nullcontext()) as fy:
                yield _paired(_NpyStream(fx), None if fy is None else _NpyStream(fy), X_path)
        return
    if labels and y_path is None:
        raise ValueError(f"{X_path}: an .npy embeddings file needs a labels file (y_path)")
    if not labels and y_path is not None:
        raise ValueError(f"{X_path}: labels file {y_path} given for unlabelled data")
    with open(X_path, "rb") as fx, (open(str(y_path), "rb") if labels
                                    else contextlib.nullcontext()) as fy:
        yield _paired(_npy_file(fx, X_path), None if fy is None else _npy_file(fy, str(y_path)),
                      X_path, y_path)


def _npy_file(f: IO[bytes], path: str) -> Any:
    """An ``.npy`` file read in blocks, not mapped: a mapped file's pages count in the
    importer's resident memory up to the file's size. Fortran-ordered files are mapped."""
    try:
        s = _NpyStream(f)
    except ValueError as e:
        if "Fortran" not in str(e):
            raise ValueError(f"{path}: {e}") from None
        return np.load(path, mmap_mode="r")
    if f.tell() + s.shape[0] * s.row_items * s.dtype.itemsize > os.path.getsize(path):
        raise ValueError(f"{path}: the file ends before the {s.shape[0]} rows its header "
                         "promises (a truncated or damaged file)")
    return s


def _labels_file(X_path: str, y_path: str | Path | None) -> str:
    """The file that holds the labels, for messages: ``y_path``, else the ``.npz`` file."""
    return X_path if y_path is None else str(y_path)


def _paired(X: Any, y: Any, path: str, y_path: str | None = None) -> tuple[Any, Any]:
    if len(X.shape) != 2 or X.shape[1] < 1:
        raise ValueError(f"{path}: embeddings must be 2-D (samples, features), got {X.shape}")
    if not (np.issubdtype(X.dtype, np.floating) or np.issubdtype(X.dtype, np.integer)):
        raise TypeError(f"{path}: embeddings must be numeric, got dtype {X.dtype}")
    if y is not None and (len(y.shape) != 1 or y.shape[0] != X.shape[0]):
        raise ValueError(f"{_labels_file(path, y_path)}: labels {tuple(y.shape)} do not pair up "
                         f"with the embeddings {tuple(X.shape)} in {path} (one label per row)")
    return X, y


def _blocks(a: Any, rows: int, path: str) -> Iterator[np.ndarray]:
    """Blocks of at most ``rows`` rows of a memory map or a stream."""
    done, n = 0, a.shape[0]
    while done < n:
        if isinstance(a, _NpyStream):
            b = a.read(min(rows, n - done))
        else:
            b = np.asarray(a[done : done + rows])
        if b.shape[0] == 0:
            raise ValueError(f"{path}: a member ends after {done} of the {n} rows its header "
                             "promises (a truncated or damaged file)")
        done += b.shape[0]
        yield b


def iter_saved_arrays(X_path: str | Path, y_path: str | Path | None = None, *, rows: int = 65536,
                      labels: bool = True) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
    """Yield ``(X, y)`` blocks of at most ``rows`` rows from saved files, never loading them whole.
    ``X_path`` is an ``.npy`` file of embeddings (labels in ``y_path``) or an
    ``.npz`` file holding ``X``/``Y`` or ``embeddings``/``labels``; with
    ``labels=False`` only embeddings are read (``y`` is None)."""
    X_path = str(X_path)
    y_name = _labels_file(X_path, y_path)
    with _opened(X_path, None if y_path is None else str(y_path), labels) as (X, y):
        ys = _blocks(y, rows, y_name) if y is not None else itertools.repeat(None)
        for xb, yb in zip(_blocks(X, rows, X_path), ys):  # noqa: B905 - ys may be endless
            if yb is not None and yb.shape[0] != xb.shape[0]:
                raise ValueError(f"{y_name}: the labels end before the embeddings in {X_path} "
                                 "(a truncated or damaged file)")
            yield xb, yb


def _fingerprint(paths: list[str]) -> str:
    """A content fingerprint of saved files over every byte: an ``.npz`` file's member CRC-32s
    from its zip directory (the zip writer computed them over each member); an ``.npy``
    file's size and CRC-32C, one read ahead of the import's own because repeats are refused
    before anything is written. Earlier versions' sampled ``.npy`` fingerprints hash other
    input, so they never match these (nor refuse a new file)."""
    h = hashlib.blake2b(digest_size=16)
    for p in paths:
        if p.endswith(".npz"):
            with zipfile.ZipFile(p) as z:
                for info in sorted(z.infolist(), key=lambda i: i.filename):
                    h.update(f"{info.filename}:{info.file_size}:{info.CRC};".encode())
            continue
        crc = 0
        with open(p, "rb") as f:
            while block := f.read(1 << 22):
                crc = extend(crc, np.frombuffer(block, np.uint8))
        h.update(f"crc32c:{os.path.getsize(p)}:{crc:08x};".encode())
    return h.hexdigest()


def inspect_saved(X_path: str | Path, y_path: str | Path | None = None, *, labels: bool = True,
                  n_classes: int | None = None, ignore_index: int | None = None,
                  rows: int = 2**20) -> dict[str, Any]:
    """Check saved files (as for :func:`iter_saved_arrays`) before anything is written. Reads the
    headers and every label, in blocks of ``rows`` (labels lie in ``[0, n_classes)`` or equal
    ``ignore_index``). Returns ``dim``, ``rows``, ``dtype``, ``max_label`` (-1 when none), the
    absolute paths ``embeddings`` / ``labels`` and a content ``fingerprint``."""
    X_path = str(X_path)
    y_path = None if y_path is None else str(y_path)
    for p in (X_path, y_path):
        if p is not None and not Path(p).is_file():
            raise FileNotFoundError(f"no such file: {p}")
    top = -1
    with _opened(X_path, y_path, labels) as (X, y):
        shape, dtype = X.shape, np.dtype(X.dtype)
        y_name = _labels_file(X_path, y_path)
        for yb in _blocks(y, rows, y_name) if y is not None else ():
            yb = check_labels(yb, n_classes, ignore_index, f"{y_name}: ")
            keep = yb if ignore_index is None else yb[yb != ignore_index]
            top = max(top, int(keep.max()) if keep.size else -1)
    paths = [str(Path(p).resolve()) for p in (X_path, y_path) if p is not None]
    return {
        "dim": int(shape[1]),
        "rows": int(shape[0]),
        "dtype": dtype,
        "max_label": top,
        "embeddings": paths[0],
        "labels": paths[1] if len(paths) > 1 else None,
        "fingerprint": _fingerprint(paths),
    }
