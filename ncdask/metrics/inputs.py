"""Inputs of the measurements, resolved once: coercion, backends, classes kept.

Every front end takes its statistics, classifier and splits through here: one answer to
which classes are measured, on which global mean, against which classifier rows."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import dask
import dask.array as da
import numpy as np
import xarray as xr
from dask.array.utils import meta_from_array
from dask.base import tokenize

from ncdask._validate import check_ignore_index
from ncdask.kernels._xp import array_namespace, to_numpy

STATS_VARS = ("counts", "means", "global_mean", "within_cov", "var_norms")


def as_dask(x: Any, *, chunks: Any = -1) -> da.Array:
    """A dask array from a NumPy, CuPy, dask, xarray or PyTorch input (no copy where possible).
    An in-memory array enters the graph once, as views of its ``chunks``, named after where
    its data lives: hashing a GiB of weights takes seconds, and the name is sound while the
    graph that holds it holds the array."""
    if isinstance(x, (xr.DataArray, xr.Variable)):
        x = x.data
    if isinstance(x, da.Array):
        return x
    mod = type(x).__module__.split(".")[0]
    if mod == "torch":
        x = to_numpy(x)
    elif not hasattr(x, "shape") or not hasattr(x, "dtype"):
        x = np.asarray(x)
    face = (getattr(x, "__array_interface__", None)
            or getattr(x, "__cuda_array_interface__", None))
    where = (id(x) if face is None else
             (face["data"][0], face["shape"], face.get("strides"), face["typestr"]))
    name = f"array-{tokenize(type(x).__name__, where)}"
    return da.from_array(_Held(x), chunks=chunks, name=name, asarray=False,
                         meta=meta_from_array(x))


class _Held:
    """An in-memory array that ``da.from_array`` slices in place: one graph node that every
    chunk's task views. Without a ``copy`` method it is not copied whole first (as dask
    copies arrays that have one)."""

    __slots__ = ("a", "dtype", "ndim", "shape")

    def __init__(self, a: Any) -> None:
        self.a, self.shape, self.dtype, self.ndim = a, a.shape, a.dtype, a.ndim

    def __getitem__(self, index: Any) -> Any:
        return self.a[index]


def class_rows(M: Any, tile_size: int | None = None, name: str = "M") -> tuple[da.Array, int]:
    """``M`` as a float64 dask matrix chunked in class tiles, and the tile size."""
    from ncdask.graph.pairwise import default_tile_size

    A = as_dask(M)
    if A.ndim != 2:
        raise ValueError(f"{name} must be a (K, D) matrix, got shape {A.shape}")
    K, D = A.shape
    T = int(tile_size) if tile_size else default_tile_size(max(K, 1), D)
    if T < 1:
        raise ValueError(f"tile_size must be a positive integer, got {tile_size!r}")
    return float64(A.rechunk((min(T, max(K, 1)), -1))), T  # per tile: no whole float64 copy



def namespace_of(x: da.Array) -> Any:
    """The array module (NumPy or CuPy) of a dask array's chunks."""
    return array_namespace(x._meta)


def like(x: da.Array, ref: da.Array) -> da.Array:
    """``x`` with the array module of ``ref``'s chunks (NumPy weights or data, CuPy stats)."""
    if type(x._meta) is type(ref._meta):
        return x
    xp = namespace_of(ref)
    move = to_numpy if xp is np else xp.asarray
    return x.map_blocks(move, meta=meta_from_array(ref, ndim=x.ndim, dtype=x.dtype))


def _rows_at(block: Any, idx: np.ndarray) -> Any:
    return block[array_namespace(block).asarray(idx)]  # CuPy's take refuses host indices


def take_rows(x: da.Array, idx: np.ndarray) -> da.Array:
    """The rows ``idx`` (sorted, host integers) of ``x``, block by block, on ``x``'s device
    (``x[idx]`` would hand CuPy blocks a host index); ``x``'s row blocks are kept."""
    idx = np.asarray(idx, dtype=np.int64)
    edges = np.cumsum((0, *x.chunks[0]))
    pieces = []
    for b in range(x.numblocks[0]):
        local = idx[(idx >= edges[b]) & (idx < edges[b + 1])] - edges[b]
        if local.size:
            blk = x.blocks[b]
            pieces.append(blk.map_blocks(_rows_at, local, chunks=((local.size,), *blk.chunks[1:]),
                                         dtype=x.dtype, meta=x._meta))
    if not pieces:
        return x[:0]
    return pieces[0] if len(pieces) == 1 else da.concatenate(pieces)


def host_float64(x: Any) -> np.ndarray:
    """A host float64 NumPy array of any supported input (a dask one is computed)."""
    if isinstance(x, (xr.DataArray, xr.Variable)):
        x = x.data
    if isinstance(x, da.Array):
        x = x.compute()
    return np.asarray(to_numpy(x), dtype=np.float64)


def float64(x: da.Array) -> da.Array:
    """``x`` as float64 (no-op when it is)."""
    return x if x.dtype == np.float64 else x.astype(np.float64)


def shaped(x: Any, shape: tuple[int, ...], what: str, like: str = "") -> da.Array:
    """``x`` as a float64 dask array of ``shape``, else a ValueError naming ``what`` (and the
    input ``like`` whose shape it must have)."""
    v = float64(as_dask(x))
    if v.shape != tuple(shape):
        raise ValueError(f"{what} has shape {v.shape}, expected {tuple(shape)}"
                         + (f" like {like}" if like else ""))
    return v


def split_of(obj: Any) -> xr.Dataset:
    """A split Dataset from a Dataset or ``(store, split)``; OOD splits may lack labels."""
    from ncdask.store.embedding import resolve_split

    return resolve_split(obj, labels=False)



def check_stats(stats: Any) -> xr.Dataset:
    """``stats`` if it is a class-statistics Dataset, else a clear error."""
    if not isinstance(stats, xr.Dataset):
        raise TypeError("stats must be an xarray.Dataset from class_stats, got "
                        f"{type(stats).__name__}")
    missing = [v for v in STATS_VARS if v not in stats]
    if missing:
        raise ValueError(f"stats is missing {missing}; pass the result of ncdask.class_stats")
    return stats


def row_weights(w: np.ndarray, M: da.Array) -> da.Array:
    """Host weights ``w`` (K,) as a float64 dask vector chunked and placed as ``M``'s rows."""
    w = as_dask(np.asarray(w, dtype=np.float64)).rechunk((M.chunks[0],))
    return w.map_blocks(namespace_of(M).asarray, meta=meta_from_array(M, ndim=1))


def global_mean_of(M: da.Array, n_k: np.ndarray, mode: str | None) -> da.Array:
    """Global mean of the class means ``M`` kept: unweighted, or weighted by ``n_k``."""
    if mode == "weighted":
        frac = row_weights(n_k.astype(np.float64) / max(float(n_k.sum()), 1.0), M)
        return (M * frac[:, None]).sum(axis=0).rechunk(-1)
    return M.mean(axis=0).rechunk(-1)


@dataclass(frozen=True)
class KeptClasses:
    """Which classes of a statistics Dataset are measured. ``present``: indices kept (non-empty, at
    least ``min_count``, not filtered by ``class_stats``); ``empty`` and ``filtered``: those left
    out; ``refiltered``: whether classes were filtered here (the global mean is then re-taken over
    the classes kept)."""

    counts: np.ndarray
    present: np.ndarray
    empty: list[int]
    filtered: list[int]
    refiltered: bool
    ignore_index: int | None

    @property
    def n_all(self) -> int:
        return int(self.counts.shape[0])

    @property
    def n_kept(self) -> int:
        return int(self.present.size)


def kept_classes(stats: xr.Dataset, min_count: int | None = None,
                 ignore_index: int | None = None) -> KeptClasses:
    """Resolve the classes measured and the ``ignore_index`` (default: the stats' attribute)."""
    counts = np.asarray(to_numpy(stats["counts"].values)).astype(np.int64)
    K_all = int(counts.shape[0])
    keep = counts > 0
    if min_count is not None:
        keep &= counts >= int(min_count)
    pre = [int(i) for i in stats.attrs.get("filtered_classes", []) if 0 <= int(i) < K_all]
    keep[pre] = False
    filtered = np.nonzero((counts > 0) & ~keep)[0].tolist()
    if ignore_index is None:
        ignore_index = stats.attrs.get("ignore_index")
    return KeptClasses(
        counts=counts, present=np.nonzero(keep)[0],
        empty=np.nonzero(counts == 0)[0].tolist(), filtered=filtered,
        refiltered=bool(sorted(set(filtered) - set(pre))),
        ignore_index=check_ignore_index(ignore_index, K_all))


@dataclass(frozen=True)
class ClassInputs:
    """The lazy float64 inputs every metric is a function of (kept classes only). ``M`` means and
    ``Mc`` centred means (K×D, chunked by the class tile), ``mG`` the global mean they are centred
    on, ``v`` variance norms, ``Sw`` Σ_W, ``W``/``b`` the classifier rows of the kept classes (None
    without weights), ``eps_dtype`` the dtype that sets pseudo-inverse cutoffs."""

    M: da.Array
    Mc: da.Array
    mG: da.Array | None
    v: da.Array | None
    Sw: da.Array | None
    W: da.Array | None
    b: da.Array | None
    eps_dtype: np.dtype


def class_inputs(stats: xr.Dataset, kept: KeptClasses, *, weights: Any = None,
                 bias: Any = None, tile_size: int) -> ClassInputs:
    """Means, centred means, Σ_W and classifier rows of the kept classes, as lazy float64;
    Σ_W and the variance norms NaN when no class has two samples.
    Raises ``ValueError`` when ``weights`` is not (K, D) or ``bias`` not (K,)."""
    K_all, K, present = kept.n_all, kept.n_kept, kept.present
    D = int(stats.sizes["feature"])
    eps_dtype = pinv_dtype(stats["means"].dtype)
    M = float64(as_dask(stats["means"]))
    v = float64(as_dask(stats["var_norms"]))
    if K < K_all:  # block by block, as the classifier rows (no shuffle across blocks)
        M, v = take_rows(M, present), take_rows(v, present)
    M = M.rechunk((min(tile_size, max(K, 1)), -1))
    if kept.refiltered:  # classes filtered here: the global mean over the classes kept
        mG = global_mean_of(M, kept.counts[present], stats.attrs.get("global_mean"))
    else:
        mG = float64(as_dask(stats["global_mean"])).rechunk(-1)
    Mc = M - mG[None, :]
    W = b = None
    if weights is not None:
        W = classifier_rows(weights, M, kept, tile_size, "weights have", "(K, D)", (K_all, D))
        b = (da.zeros_like(W[:, 0]) if bias is None else
             classifier_rows(bias, M, kept, tile_size, "bias has", "(K,)", (K_all,)))
    Sw = float64(as_dask(stats["within_cov"]))
    if K and (kept.counts[present] < 2).all():  # Σ_W and v unestimable, not zero
        v, Sw = da.full_like(v, np.nan), da.full_like(Sw, np.nan)
    return ClassInputs(M=M, Mc=Mc, mG=mG, v=v, Sw=Sw, W=W, b=b, eps_dtype=eps_dtype)


def classifier_rows(x: Any, M: da.Array, kept: KeptClasses, tile_size: int, what: str,
                    dims: str, shape: tuple[int, ...]) -> da.Array:
    """Classifier rows ``x`` (weights or bias, any array type and dtype) of the kept classes,
    float64 in ``M``'s row chunks and array module. An in-memory ``x`` is one graph node
    that each tile's task gathers its rows from and converts: never a whole float64 copy.
    Raises ``ValueError`` (``what`` has shape ...) unless ``x`` has ``shape``."""
    A = as_dask(x, chunks={0: tile_size})
    if A.shape != shape:
        raise ValueError(f"{what} shape {A.shape}, expected {dims} = {shape}")
    if kept.n_kept < kept.n_all and isinstance(held := _held_of(A), _Held):
        rows = da.from_array(kept.present, chunks=(M.chunks[0],))
        A = rows.map_blocks(_gather, dask.delayed(held, name=f"held-{A.name}"),
                            new_axis=list(range(1, A.ndim)), chunks=(M.chunks[0], *A.chunks[1:]),
                            dtype=A.dtype, meta=A._meta)
    elif kept.n_kept < kept.n_all:
        A = take_rows(A, kept.present)
    return float64(like(A, M)).rechunk({0: M.chunks[0]})


def _held_of(A: da.Array) -> Any:
    """The :class:`_Held` array behind a dask array made by :func:`as_dask`, else None."""
    return next((v for v in dict(A.__dask_graph__()).values() if isinstance(v, _Held)), None)


def _gather(rows: np.ndarray, held: _Held) -> Any:
    return held.a[array_namespace(held.a).asarray(rows)]  # CuPy takes device indices


def computed_float(x: Any) -> float:
    """A lazy scalar computed into a Python float (host side, whatever its backend)."""
    return float(to_numpy(dask.compute(x)[0]))


def pinv_dtype(dtype: Any) -> np.dtype:
    """The dtype whose eps sets a pseudo-inverse cutoff: a floating input's own, else float64."""
    given = np.dtype(dtype)
    return given if np.issubdtype(given, np.floating) else np.dtype(np.float64)

