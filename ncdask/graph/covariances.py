"""Graphs for per-class covariances: one pass over the samples, chunked over classes.

Each class chunk folds its rows into one running partial (a chain over the row
blocks) ending in a ``(C, D, D)`` chunk; beyond ``max_bytes`` chunks go in passes."""

from __future__ import annotations

from typing import Any

import dask.array as da
import numpy as np
from dask.array.utils import meta_from_array
from dask.base import tokenize
from dask.delayed import Delayed
from dask.highlevelgraph import HighLevelGraph

from ncdask.graph._reduce import chains, row_keys, throttled
from ncdask.graph.closed_forms import delayed_array, gram
from ncdask.kernels import covariances as KC
from ncdask.kernels.spectrum import effective_rank

#: Default bytes of one class chunk of covariances (``C · D² · 8``).
COV_CHUNK_BYTES = 32 * 2**20
#: Default bytes of accumulators one pass over the embeddings may hold.
COV_PASS_BYTES = 256 * 2**20


def default_class_chunk(dim: int, *, budget: int = COV_CHUNK_BYTES, itemsize: int = 8) -> int:
    """Classes per output chunk: ``C · D² · itemsize`` within ``budget`` (at least 1)."""
    return max(1, budget // (itemsize * dim * dim))


def class_covariance_chunks(X: da.Array, y: da.Array, position: np.ndarray, n_selected: int, *,
                            n_classes: int, class_chunk: int, dtype: Any = np.float64,
                            ignore_index: int | None = None,
                            max_bytes: int | None = COV_PASS_BYTES) -> tuple[da.Array, da.Array]:
    """Lazy per-class covariances ``(n_selected, D, D)`` and counts, in chunks of ``class_chunk``.
    ``position`` (K,) gives each class's output position (-1: not computed);
    ``dtype`` is the accumulation and output dtype; ``max_bytes`` bounds the
    partials one pass over the embeddings holds (None: one pass)."""
    X = X.rechunk({1: -1})
    y = y.rechunk((X.chunks[0],))
    D = X.shape[1]
    dt = np.dtype(dtype)
    if n_selected == 0:
        return da.zeros((0, D, D), dtype=dt), da.zeros((0,), dtype=np.int64)
    token = tokenize(X, y, position, n_selected, class_chunk, dt.str, ignore_index, max_bytes)
    bounds = [(lo, min(n_selected, lo + class_chunk)) for lo in range(0, n_selected, class_chunk)]
    per_pass = len(bounds)
    if max_bytes:
        per_pass = max(1, int(max_bytes) // (class_chunk * D * D * dt.itemsize))
    name = f"ncdask-class-covariances-{token}"
    cname = f"ncdask-class-counts-{token}"
    fname = f"ncdask-cov-{token}"
    folds: dict = {f"{fname}-position": np.asarray(position, dtype=np.int64)}
    # The output chunks are the finalize tasks themselves, not ``from_delayed``
    # pieces: optimisation fused those into two consumers and kept every
    # pass's last row block and partial alive to the end.
    out_layer: dict = {}
    cnt_layer: dict = {}
    done: list = []  # small tasks (counts) that mark a pass's accumulators complete
    rows = [(xk, yk, f"{fname}-position") for xk, yk in zip(row_keys(X), row_keys(y), strict=True)]
    for p, first in enumerate(range(0, len(bounds), per_pass)):
        # the next pass reads afresh once this one's accumulators are complete
        blocks = throttled(folds, f"{fname}-pass{p}", (X, y), rows, len(rows))(0, len(rows), done)
        done = []
        for c in range(first, min(len(bounds), first + per_pass)):
            lo, hi = bounds[c]
            red = KC.covariance_reduction(lo, hi, n_classes=n_classes, dtype=dt,
                                          ignore_index=ignore_index)
            (end,) = chains(folds, f"{fname}-{c}", red, len(blocks), blocks, n_chains=1)
            out_layer[(name, c, 0, 0)] = (red.finish, end)
            cnt_layer[(cname, c)] = (KC.covariance_counts, end, hi - lo)
            folds[(f"{fname}-done", c)] = (KC.covariance_counts, end, hi - lo)
            done.append((f"{fname}-done", c))
    graph = HighLevelGraph.from_collections(fname, folds, dependencies=[X, y])
    finals = [Delayed(f"{fname}-position", graph, layer=fname)]
    chunks_c = tuple(hi - lo for lo, hi in bounds)
    covs = da.Array(HighLevelGraph.from_collections(name, out_layer, dependencies=finals),
                    name, chunks=(chunks_c, (D,), (D,)), meta=meta_from_array(X, ndim=3, dtype=dt))
    counts = da.Array(HighLevelGraph.from_collections(cname, cnt_layer, dependencies=finals),
                      cname, chunks=(chunks_c,),
                      meta=meta_from_array(X, ndim=1, dtype=np.int64))
    return covs, counts


def per_class_traces(covs: da.Array, P: da.Array, scale: float) -> da.Array:
    """``scale · tr(Σ_k P)`` per class, one task per class chunk."""
    P = P.rechunk(-1)
    return da.blockwise(KC.trace_products, "c", covs.rechunk({1: -1, 2: -1}), "cde", P, "de",
                        scale, None, concatenate=True, dtype=covs.dtype,
                        meta=meta_from_array(covs, ndim=1))


def per_class_spectra(covs: da.Array) -> tuple[da.Array, da.Array]:
    """Eigenvalues ``(class, component)`` (descending) and effective ranks ``(class,)``."""
    covs = covs.rechunk({1: -1, 2: -1})
    eig = covs.map_blocks(KC.spectra, drop_axis=2, chunks=(covs.chunks[0], (covs.shape[1],)),
                          dtype=covs.dtype, meta=meta_from_array(covs, ndim=2))
    er = eig.map_blocks(effective_rank, drop_axis=1, chunks=(eig.chunks[0],), dtype=covs.dtype,
                        meta=meta_from_array(covs, ndim=1))
    return eig, er


def between_pinv(Mc: da.Array, *, eps_dtype: Any = None) -> da.Array:
    """Lazy ``Σ_B⁺`` (D×D) of ``Σ_B = M̃ᵀM̃/K``, factorised on the smaller side."""
    K, D = Mc.shape
    A, n = (Mc, K) if K <= D else (gram(Mc) / K, 0)
    return delayed_array(KC.between_pinv, A, n, eps_dtype=eps_dtype, shape=(D, D), like=Mc)
