"""NECO graphs: the total covariance from class statistics, the fit, and the blocked scoring."""

from __future__ import annotations

from typing import Any

import dask
import dask.array as da
import numpy as np
from dask.array.utils import meta_from_array

from ncdask.graph.closed_forms import gram, whole_block
from ncdask.graph.decisions import decisions
from ncdask.kernels import neco as KN


def total_covariance(Sw: da.Array, M: da.Array, n_k: da.Array,
                     n_samples: float) -> tuple[da.Array, da.Array]:
    """Total covariance ``Σ_T = Σ_W + (1/N) Σ_k n_k (μ_k − μ̄)(μ_k − μ̄)ᵀ`` and the mean ``μ̄``.
    ``Sw`` pools the N samples of the classes of ``M`` (K×D, float64) with
    counts ``n_k`` (float64, chunked like ``M``); the between-class term is a
    :func:`~ncdask.graph.closed_forms.gram` over the class tiles."""
    tot = float(n_samples)
    mu = (M * n_k[:, None]).sum(axis=0) / da.maximum(n_k.sum(), 1.0)
    A = (M - mu[None, :]) * da.sqrt(n_k / tot)[:, None]
    return Sw + gram(A), mu.rechunk(-1)


def pca_fit(St: da.Array, n_components: int, *,
            standardize: bool = True) -> tuple[da.Array, da.Array, da.Array]:
    """Lazy ``(scale, components, eigenvalues)`` of the NECO fit on ``St`` (one task)."""
    D = St.shape[0]
    fit = dask.delayed(KN.pca_of_total_covariance, pure=True, nout=3)(
        whole_block(St), int(n_components), standardize=standardize
    )
    dt = np.float64
    shapes = ((D,), (int(n_components), D), (D,))
    return tuple(  # type: ignore[return-value]
        da.from_delayed(f, shape=s, dtype=dt, meta=meta_from_array(St, ndim=len(s), dtype=dt))
        for f, s in zip(fit, shapes, strict=True)
    )


def neco_scores(X: da.Array, mean: da.Array, scale: da.Array, components: da.Array, *,
                max_logit: da.Array | None = None, mask: da.Array | None = None) -> da.Array:
    """NECO score (float64) of every row of ``X``, one task per row block.
    ``mean``, ``scale`` (D,), ``components`` (d, D); ``max_logit`` (N,);
    ``mask`` (N,) of bool: rows to score (others NaN)."""
    X = X.rechunk({1: -1})
    rows = (X.chunks[0],)
    args: list[Any] = [X, "sd", mean.rechunk(-1), "d", scale.rechunk(-1), "d",
                       components.rechunk(-1), "cd"]
    for opt in (max_logit, mask):  # a missing one is passed as None
        args += [None, None] if opt is None else [opt.rechunk(rows), "s"]
    return da.blockwise(
        KN.neco_block, "s", *args, concatenate=True, align_arrays=False, dtype=np.float64,
        meta=meta_from_array(X, ndim=1, dtype=np.float64), token="ncdask-neco-score",
    )


def max_logits(logits: da.Array) -> da.Array:
    """Largest logit of each row of an ``(N, K)`` array (one task per row block)."""
    logits = logits.rechunk({1: -1})
    return logits.map_blocks(KN.max_over_last, drop_axis=1, dtype=np.float64,
                             meta=meta_from_array(logits, ndim=1, dtype=np.float64))


def nci_scores(X: da.Array, W: da.Array, b: da.Array, mG: da.Array, *, alpha: float,
               tile_size: int, mask: da.Array | None = None) -> da.Array:
    """Lazy NCI score (float64) per row of ``X``; rows where ``mask`` is False get NaN.
    The prediction and its logit come from the NC4 decision graph without the NCC."""
    K, D = W.shape
    zeros = da.zeros(D, dtype=np.float64, chunks=-1)
    dec = decisions(X, W, b, W, zeros, tile_size=tile_size, ncc=False)
    X = X.rechunk((dec.chunks[0], -1))
    g = (b + W @ mG).rechunk(-1)
    score = da.map_blocks(KN.nci_block, X, dec[:, 0], dec[:, 1], g, mG.rechunk(-1),
                          float(alpha), drop_axis=1, dtype=np.float64,
                          meta=meta_from_array(X, ndim=1, dtype=np.float64))
    if mask is not None:
        score = da.where(mask.rechunk(score.chunks), score, np.nan)
    return score
