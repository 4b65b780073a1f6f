"""Streaming readers for embeddings people already saved (.npy pairs, .npz files)."""

from __future__ import annotations

import hashlib
import os
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np

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
            (n, *self.shape[1:])
        )


def _pick(names: list[str], keys: tuple[str, ...], what: str, path: str) -> str:
    for k in keys:
        if k in names:
            return k
    raise KeyError(f"{path}: no {what} array (looked for keys {list(keys)}; found {names})")


def iter_saved_arrays(
    X_path: str | Path,
    y_path: str | Path | None = None,
    *,
    rows: int = 65536,
    labels: bool = True,
) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
    """Yield ``(X, y)`` blocks of at most ``rows`` rows from saved files.

    Parameters
    ----------
    X_path : path
        An ``.npy`` file of embeddings (with ``y_path``), or an ``.npz`` file
        holding ``X``/``Y`` or ``embeddings``/``labels``.
    y_path : path, optional
        The ``.npy`` file of labels for an ``.npy`` embeddings file.
    rows : int
        Block size.
    labels : bool, default True
        False reads the embeddings only (``y`` is None): unlabelled data.

    Raises
    ------
    ValueError
        Shapes that do not pair up, or a member shorter than its header says.

    Notes
    -----
    ``.npy`` files are memory-mapped; ``.npz`` members (compressed or not) are
    decoded as a stream, so neither is ever loaded whole.
    """
    X_path = str(X_path)
    if X_path.endswith(".npz"):
        if y_path is not None:
            raise ValueError("an .npz file holds its own labels; do not pass y_path")
        with zipfile.ZipFile(X_path) as z:
            names = [n[:-4] for n in z.namelist() if n.endswith(".npy")]
            kx = _pick(names, X_KEYS, "embeddings", Path(X_path).name)
            ky = _pick(names, Y_KEYS, "labels", Path(X_path).name) if labels else None
            with z.open(kx + ".npy") as fx:
                sx = _NpyStream(fx)
                if len(sx.shape) != 2:
                    raise ValueError(f"{X_path}: embeddings must be 2-D, got {sx.shape}")
                if ky is None:
                    yield from _stream_rows(X_path, sx, None, rows)
                    return
                with z.open(ky + ".npy") as fy:
                    sy = _NpyStream(fy)
                    if len(sy.shape) != 1 or sx.shape[0] != sy.shape[0]:
                        raise ValueError(
                            f"{X_path}: embeddings {sx.shape} and labels {sy.shape} do not "
                            "pair up"
                        )
                    yield from _stream_rows(X_path, sx, sy, rows)
        return
    if labels and y_path is None:
        raise ValueError(f"{X_path}: an .npy embeddings file needs a labels file (y_path)")
    if not labels and y_path is not None:
        raise ValueError(f"{X_path}: labels file {y_path} given for unlabelled data")
    X: Any = np.load(X_path, mmap_mode="r")
    y: Any = np.load(str(y_path), mmap_mode="r") if labels else None
    if X.ndim != 2 or (y is not None and (y.ndim != 1 or X.shape[0] != y.shape[0])):
        raise ValueError(
            f"embeddings {X.shape} and labels {None if y is None else y.shape} do not pair up"
        )
    for i in range(0, X.shape[0], rows):
        yield np.asarray(X[i : i + rows]), None if y is None else np.asarray(y[i : i + rows])


def _stream_rows(
    path: str, sx: _NpyStream, sy: _NpyStream | None, rows: int
) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
    done = 0
    while done < sx.shape[0]:
        xb = sx.read(min(rows, sx.shape[0] - done))
        yb = None if sy is None else sy.read(xb.shape[0])
        if xb.shape[0] == 0 or (yb is not None and yb.shape[0] != xb.shape[0]):
            raise ValueError(
                f"{path}: a member ends after {done} of the {sx.shape[0]} rows its header "
                "promises (a truncated or damaged file)"
            )
        done += xb.shape[0]
        yield xb, yb


def _fingerprint(paths: list[str]) -> str:
    """A content fingerprint of saved files, cheap to take on large files.

    ``.npz`` files: the CRC-32 of every member's whole content (from the zip
    directory, free to read). ``.npy`` files: the size and 64 blocks of
    64 KiB spread over the file (4 MiB read at most).
    """
    h = hashlib.blake2b(digest_size=16)
    for p in paths:
        if p.endswith(".npz"):
            with zipfile.ZipFile(p) as z:
                for info in sorted(z.infolist(), key=lambda i: i.filename):
                    h.update(f"{info.filename}:{info.file_size}:{info.CRC};".encode())
            continue
        size = os.path.getsize(p)
        h.update(f"{size};".encode())
        block = 65536
        with open(p, "rb") as f:
            offsets = sorted({min(max(size - block, 0), (size * i) // 64) for i in range(65)})
            for off in offsets:
                f.seek(off)
                h.update(f.read(block))
    return h.hexdigest()


def inspect_saved(
    X_path: str | Path,
    y_path: str | Path | None = None,
    *,
    labels: bool = True,
    n_classes: int | None = None,
    ignore_index: int | None = None,
    rows: int = 2**20,
) -> dict[str, Any]:
    """Check saved files before anything is written: shapes, widths, labels.

    Reads the headers and, when labelled, every label (in blocks; the
    embeddings are not read).

    Parameters
    ----------
    X_path, y_path : path
        As for :func:`iter_saved_arrays`.
    labels : bool, default True
        False: embeddings only (an unlabelled split).
    n_classes : int, optional
        Labels must lie in ``[0, n_classes)`` (or equal ``ignore_index``).
    ignore_index : int, optional
    rows : int
        Labels read per block.

    Returns
    -------
    dict
        ``dim``, ``rows``, ``max_label`` (-1 when none), the absolute paths
        ``embeddings`` / ``labels`` and a content ``fingerprint``.

    Raises
    ------
    FileNotFoundError, ValueError, TypeError, KeyError
        A missing file, shapes that do not pair up, labels that are not
        integers or lie outside ``[0, n_classes)``.
    """
    X_path = str(X_path)
    y_path = None if y_path is None else str(y_path)
    for p in (X_path, y_path):
        if p is not None and not Path(p).is_file():
            raise FileNotFoundError(f"no such file: {p}")
    if X_path.endswith(".npz"):
        if y_path is not None:
            raise ValueError("an .npz file holds its own labels; do not pass y_path")
        with zipfile.ZipFile(X_path) as z:
            names = [n[:-4] for n in z.namelist() if n.endswith(".npy")]
            name = Path(X_path).name
            kx = _pick(names, X_KEYS, "embeddings", name)
            if labels and not any(k in names for k in Y_KEYS):
                raise KeyError(
                    f"{name}: no labels array (looked for keys {list(Y_KEYS)}; found {names}); "
                    "for unlabelled data such as an OOD split, import with --no-labels "
                    "(labels=False)"
                )
            with z.open(kx + ".npy") as fx:
                xshape, xdtype = _header(fx)
            yshape = None
            if labels:
                with z.open(_pick(names, Y_KEYS, "labels", name) + ".npy") as fy:
                    yshape = _header(fy)[0]
    else:
        if labels and y_path is None:
            raise ValueError(f"{X_path}: an .npy embeddings file needs its .npy labels file")
        if not labels and y_path is not None:
            raise ValueError(f"{X_path}: a labels file was given for unlabelled data")
        xm = np.load(X_path, mmap_mode="r")
        xshape, xdtype = xm.shape, xm.dtype
        yshape = None
        if labels:
            ym = np.load(y_path, mmap_mode="r")
            yshape = ym.shape
    if len(xshape) != 2 or xshape[1] < 1:
        raise ValueError(f"{X_path}: embeddings must be 2-D (samples, features), got {xshape}")
    if not (np.issubdtype(xdtype, np.floating) or np.issubdtype(xdtype, np.integer)):
        raise TypeError(f"{X_path}: embeddings must be numeric, got dtype {xdtype}")
    top = -1
    if labels:
        if len(yshape) != 1 or yshape[0] != xshape[0]:
            raise ValueError(
                f"{X_path}: embeddings {tuple(xshape)} and labels {tuple(yshape)} do not pair up"
            )
        for yb in _label_blocks(X_path, y_path, rows):
            top = max(top, _check_labels(yb, X_path, n_classes, ignore_index))
    paths = [str(Path(p).resolve()) for p in (X_path, y_path) if p is not None]
    return {
        "dim": int(xshape[1]),
        "rows": int(xshape[0]),
        "max_label": top,
        "embeddings": paths[0],
        "labels": paths[1] if len(paths) > 1 else None,
        "fingerprint": _fingerprint(paths),
    }


def _header(f: IO[bytes]) -> tuple[tuple[int, ...], np.dtype]:
    s = _NpyStream(f)
    return tuple(int(n) for n in s.shape), s.dtype


def _label_blocks(X_path: str, y_path: str | None, rows: int) -> Iterator[np.ndarray]:
    if y_path is not None:
        y = np.load(y_path, mmap_mode="r")
        for i in range(0, y.shape[0], rows):
            yield np.asarray(y[i : i + rows])
        return
    with zipfile.ZipFile(X_path) as z:
        names = [n[:-4] for n in z.namelist() if n.endswith(".npy")]
        with z.open(_pick(names, Y_KEYS, "labels", X_path) + ".npy") as fy:
            s = _NpyStream(fy)
            done = 0
            while done < s.shape[0]:
                block = s.read(min(rows, s.shape[0] - done))
                if block.shape[0] == 0:
                    raise ValueError(
                        f"{X_path}: the labels end after {done} of the {s.shape[0]} rows "
                        "their header promises (a truncated or damaged file)"
                    )
                done += block.shape[0]
                yield block


def _check_labels(
    y: np.ndarray, path: str, n_classes: int | None, ignore_index: int | None
) -> int:
    """The largest label of a block but ``ignore_index``; raise on a bad one."""
    if np.issubdtype(y.dtype, np.floating):
        if y.size and not np.all(np.isfinite(y) & (y == np.round(y))):
            raise TypeError(f"{path}: labels must be integers; got fractional or non-finite")
        y = y.astype(np.int64)
    elif not np.issubdtype(y.dtype, np.integer) or y.dtype == np.bool_:
        raise TypeError(f"{path}: labels must be integers, got dtype {y.dtype}")
    keep = y if ignore_index is None else y[y != ignore_index]
    if not keep.size:
        return -1
    lo, hi = int(keep.min()), int(keep.max())
    if lo < 0 or (n_classes is not None and hi >= n_classes):
        bad = lo if lo < 0 else hi
        top = f"[0, {n_classes})" if n_classes is not None else "[0, K)"
        raise ValueError(
            f"{path}: label {bad} is outside {top}"
            + ("" if ignore_index is None else f" and is not ignore_index={ignore_index}")
            + "; for data without classes of this model (OOD) import with --no-labels"
            + ("" if ignore_index is not None else
               "; for padding labels create the store with --ignore-index")
        )
    return hi
