"""NECO graphs: the total covariance from class statistics, the fit, and the blocked scoring."""

from __future__ import annotations

from functools import partial
from typing import Any

import dask
import dask.array as da
import numpy as np
from dask.array.utils import meta_from_array

from ncdask.kernels import neco as KN
from ncdask.graph.closed_forms import gram, whole_block


def total_covariance(
    Sw: da.Array, M: da.Array, n_k: da.Array, n_samples: float
) -> tuple[da.Array, da.Array]:
    """Total covariance ``Σ_T = Σ_W + (1/N) Σ_k n_k (μ_k − μ̄)(μ_k − μ̄)ᵀ`` and ``μ̄``.

    ``μ̄ = Σ_k n_k μ_k / Σ_k n_k`` is the sample mean. The between-class term
    is a sum over class tiles of D×D grams (``AᵀA`` with rows
    ``√(n_k/N) (μ_k − μ̄)``), so no K×K matrix is formed.

    Parameters
    ----------
    Sw : dask array (D, D)
        Within-class covariance, pooled over ``n_samples`` samples.
    M : dask array (K, D)
        Means of the classes whose samples ``Sw`` pools (float64).
    n_k : dask array (K,)
        Their counts (float64), chunked like ``M``'s rows.
    n_samples : float
        N.

    Returns
    -------
    (dask array (D, D), dask array (D,))
    """
    tot = float(n_samples)
    mu = (M * n_k[:, None]).sum(axis=0) / da.maximum(n_k.sum(), 1.0)
    A = (M - mu[None, :]) * da.sqrt(n_k / tot)[:, None]
    return Sw + gram(A), mu.rechunk(-1)


def pca_fit(
    St: da.Array, n_components: int, *, standardize: bool = True
) -> tuple[da.Array, da.Array, da.Array]:
    """Lazy ``(scale (D,), components (d, D), eigenvalues (D,))`` of the fit.

    See :func:`ncdask.kernels.neco.pca_of_total_covariance`.
    """
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


def _score_task(X, mean, scale, comps, *rest, has_logit, has_mask):
    k = 0
    ml = mask = None
    if has_logit:
        ml = rest[0]
        k = 1
    if has_mask:
        mask = rest[k]
    return KN.neco_block(X, mean, scale, comps, ml, mask)


def neco_scores(
    X: da.Array,
    mean: da.Array,
    scale: da.Array,
    components: da.Array,
    *,
    max_logit: da.Array | None = None,
    mask: da.Array | None = None,
) -> da.Array:
    """NECO score of every row of ``X``, one task per row block.

    Parameters
    ----------
    X : dask array (N, D)
    mean, scale : dask array (D,)
    components : dask array (d, D)
    max_logit : dask array (N,), optional
    mask : dask array (N,) of bool, optional
        Rows to score (others NaN).

    Returns
    -------
    dask array (N,) float64, chunked as X's rows.
    """
    X = X.rechunk({1: -1})
    rows = (X.chunks[0],)
    args: list[Any] = [X, "sd", mean.rechunk(-1), "d", scale.rechunk(-1), "d",
                       components.rechunk(-1), "cd"]
    if max_logit is not None:
        args += [max_logit.rechunk(rows), "s"]
    if mask is not None:
        args += [mask.rechunk(rows), "s"]
    fn = partial(_score_task, has_logit=max_logit is not None, has_mask=mask is not None)
    return da.blockwise(
        fn,
        "s",
        *args,
        concatenate=True,
        align_arrays=False,
        dtype=np.float64,
        meta=meta_from_array(X, ndim=1, dtype=np.float64),
        token="ncdask-neco-score",
    )


def max_logits(logits: da.Array) -> da.Array:
    """Largest logit of each row of an ``(N, K)`` array (one task per row block)."""
    logits = logits.rechunk({1: -1})
    return logits.map_blocks(
        KN.max_over_last,
        drop_axis=1,
        dtype=np.float64,
        meta=meta_from_array(logits, ndim=1, dtype=np.float64),
    )


def nci_scores(X: da.Array, W: da.Array, b: da.Array, mG: da.Array, *, alpha: float,
               tile_size: int, mask: da.Array | None = None) -> da.Array:
    """Lazy NCI score per row of ``X`` (float64), blocked over class tiles for the prediction.

    The prediction and its logit come from the NC4 decision graph
    (:func:`ncdask.graph.decisions.decisions` without the NCC); ``g = b + W μ_G``
    is one K-vector. Rows where ``mask`` is False get NaN.
    """
    from ncdask.graph import decisions as DG

    K, D = W.shape
    zeros = da.zeros(D, dtype=np.float64, chunks=-1)
    dec = DG.decisions(X, W, b, W, zeros, tile_size=tile_size, ncc=False)
    X = X.rechunk((dec.chunks[0], -1))
    g = (b + W @ mG).rechunk(-1)
    score = da.map_blocks(KN.nci_block, X, dec[:, 0], dec[:, 1], g, mG.rechunk(-1),
                          float(alpha), drop_axis=1, dtype=np.float64,
                          meta=meta_from_array(X, ndim=1, dtype=np.float64))
    if mask is not None:
        score = da.where(mask.rechunk(score.chunks), score, np.nan)
    return score
