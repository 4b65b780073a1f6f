"""Streaming readers for embeddings people already saved (.npy pairs, .npz files)."""

from __future__ import annotations

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
    X_path: str | Path, y_path: str | Path | None = None, *, rows: int = 65536
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
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
            ky = _pick(names, Y_KEYS, "labels", Path(X_path).name)
            with z.open(kx + ".npy") as fx, z.open(ky + ".npy") as fy:
                sx, sy = _NpyStream(fx), _NpyStream(fy)
                if len(sx.shape) != 2 or len(sy.shape) != 1 or sx.shape[0] != sy.shape[0]:
                    raise ValueError(
                        f"{X_path}: embeddings {sx.shape} and labels {sy.shape} do not pair up"
                    )
                done = 0
                while done < sx.shape[0]:
                    xb, yb = sx.read(rows), sy.read(rows)
                    done += xb.shape[0]
                    yield xb, yb
        return
    if y_path is None:
        raise ValueError(f"{X_path}: an .npy embeddings file needs a labels file (y_path)")
    X: Any = np.load(X_path, mmap_mode="r")
    y: Any = np.load(str(y_path), mmap_mode="r")
    if X.ndim != 2 or y.ndim != 1 or X.shape[0] != y.shape[0]:
        raise ValueError(f"embeddings {X.shape} and labels {y.shape} do not pair up")
    for i in range(0, X.shape[0], rows):
        yield np.asarray(X[i : i + rows]), np.asarray(y[i : i + rows])

