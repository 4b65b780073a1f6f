"""Per-class covariances ``Σ_k`` (K×D×D), chunked over classes, and what is built on them.

:func:`class_covariances` makes one pass over a split and returns a lazy
``(class, feature, feature_)`` DataArray whose chunks are blocks of classes,
so that it can be reduced or written to Zarr chunk by chunk without ever
holding K×D×D numbers. :func:`class_nc1` gives the per-class NC1
``tr(Σ_k Σ_B⁺) / K`` and :func:`class_spectra` the eigenvalues and
effective rank of each ``Σ_k``. The arithmetic is in
:mod:`ncdask.kernels.covariances`, the graphs in :mod:`ncdask.graph.covariances`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import xarray as xr

from ncdask.metrics.inputs import as_dask, kept_classes, split_classes
from ncdask.metrics.inputs import check_stats as _check_stats
from ncdask.metrics.inputs import float64 as _float64
from ncdask.metrics.inputs import global_mean_of as _global_mean_of
from ncdask._version import __version__
from ncdask.graph import covariances as GC
from ncdask.kernels._xp import to_numpy
from ncdask.store.embedding import resolve_split

__all__ = ["class_covariances", "class_nc1", "class_spectra"]

RANGAMANI = (
    "Rangamani et al. (2023), Feature learning in deep classifiers through intermediate "
    "neural collapse, ICML"
)
PAPYAN = (
    "Papyan, Han & Donoho (2020), Prevalence of neural collapse during the terminal "
    "phase of deep learning training, PNAS 117(40)"
)
ROY = "Roy & Vetterli (2007), The effective rank: a measure of effective dimensionality, EUSIPCO"


def class_covariances(
    data: Any,
    classes: Sequence[int] | np.ndarray | None = None,
    *,
    split: str | None = None,
    class_chunk: int | None = None,
    dtype: Any = "float64",
    ignore_index: int | None = None,
    n_classes: int | None = None,
    max_memory: int | None = GC.COV_PASS_BYTES,
) -> xr.DataArray:
    """Per-class covariances of a split, in one pass, chunked over classes.

    ``Σ_k = (1/n_k) Σ_{y_i=k} (x_i − μ_k)(x_i − μ_k)ᵀ`` (divided by ``n_k``,
    so ``tr Σ_k`` is the variance norm ``v_k`` of :func:`ncdask.class_stats`
    and ``Σ_k (n_k/N) Σ_k = Σ_W``), accumulated with centred pairwise
    merges (accurate on collapsed float32 features).

    Parameters
    ----------
    data : xarray.Dataset, EmbeddingStore, str or (store, split)
        A split Dataset (``embeddings``, ``labels``), or a store with ``split``.
    classes : sequence of int, optional
        The classes to compute, in output order (default all K). Choose the
        frequent ones at large K: the result has ``len(classes) · D²``
        numbers.
    split : str, optional
        Split name when ``data`` is a store (default "train").
    class_chunk : int, optional
        Classes per output chunk; default
        :func:`ncdask.graph.covariances.default_class_chunk` (32 MiB chunks).
    dtype : dtype, default "float64"
        Accumulation and output dtype.
    ignore_index : int, optional
        Label of samples to leave out; default the split's (store's) attribute.
    n_classes : int, optional
        K, when the Dataset does not carry it.
    max_memory : int, optional
        Bytes of per-class accumulators held at once (default 256 MiB). The
        embeddings are read once when ``len(classes) · D² · 8`` fits; beyond
        that the classes are done in passes of this size, each reading the
        embeddings once, one after the other. None: always one pass.

    Returns
    -------
    xarray.DataArray
        Dask-backed ``(class, feature, feature_)``, chunked ``(class_chunk, D,
        D)``, with a lazy ``count`` coordinate on ``class``; NaN matrices for
        classes without samples. Nothing is computed here; write it with
        ``.to_dataset(name=...).to_zarr(url)`` or reduce it chunk by chunk.

    References
    ----------
    Rangamani et al. (2023), ICML.

    Examples
    --------
    >>> import numpy as np, ncdask
    >>> from ncdask.covariances import class_covariances
    >>> rng = np.random.default_rng(0)
    >>> X, y = rng.normal(size=(60, 3)), np.arange(60) % 3
    >>> covs = class_covariances(ncdask.EmbeddingStore.from_arrays(
    ...     "memory://cov-doc", {"train": (X, y)}, overwrite=True), split="train")
    >>> covs.dims, covs.shape
    (('class', 'feature', 'feature_'), (3, 3, 3))
    >>> bool(np.allclose(covs.values[1], np.cov(X[y == 1].T, bias=True)))
    True
    """
    ds = resolve_split(data, split)
    K, ignore_index = split_classes(ds, n_classes, ignore_index)
    if classes is None:
        sel = np.arange(K, dtype=np.int64)
    else:
        sel = np.asarray(to_numpy(np.asarray(classes))).astype(np.int64).reshape(-1)
        if sel.size and (sel.min() < 0 or sel.max() >= K):
            bad = sel[(sel < 0) | (sel >= K)][0]
            raise ValueError(f"class {bad} is outside [0, {K})")
        if np.unique(sel).size != sel.size:
            raise ValueError("classes must not repeat")
    position = np.full(K, -1, dtype=np.int64)
    position[sel] = np.arange(sel.size)
    emb = ds["embeddings"]
    D = int(emb.shape[1])
    X = as_dask(emb, chunks=(max(1, (64 * 2**20) // max(1, 8 * D)), -1))
    y = as_dask(ds["labels"], chunks=(X.chunks[0],))
    C = int(class_chunk) if class_chunk else GC.default_class_chunk(D)
    if C < 1:
        raise ValueError(f"class_chunk must be a positive integer, got {class_chunk!r}")
    covs, counts = GC.class_covariance_chunks(
        X, y, position, int(sel.size), n_classes=K, class_chunk=C, dtype=np.dtype(dtype),
        ignore_index=ignore_index, max_bytes=max_memory,
    )
    out = xr.DataArray(
        covs,
        dims=("class", "feature", "feature_"),
        coords={
            "class": sel,
            "feature": np.arange(D),
            "feature_": np.arange(D),
            "count": (("class",), counts),
        },
        name="class_covariances",
    )
    out.attrs.update(
        long_name="per-class covariance",
        formula="Sigma_k = (1/n_k) sum_{y_i=k} (x_i - mu_k)(x_i - mu_k)^T",
        reference=RANGAMANI,
        n_classes=K,
        ncdask_version=__version__,
    )
    if ignore_index is not None:
        out.attrs["ignore_index"] = ignore_index
    for k in ("split", "layer", "epoch", "store"):
        if k in ds.attrs and ds.attrs[k] is not None:
            out.attrs[k] = ds.attrs[k]
    return out


def _as_covariances(covariances: Any) -> xr.DataArray:
    if not isinstance(covariances, xr.DataArray) or covariances.dims != (
        "class", "feature", "feature_"
    ):
        raise TypeError(
            "covariances must be the (class, feature, feature_) DataArray of class_covariances"
        )
    return covariances


def class_nc1(
    covariances: xr.DataArray, stats: xr.Dataset, *, min_count: int | None = None
) -> xr.DataArray:
    """Per-class NC1: ``tr(Σ_k Σ_B⁺) / K`` for every class of ``covariances``.

    ``Σ_B⁺`` is the pseudo-inverse of the between-class covariance of the
    statistics (with ``torch.linalg.pinv``'s cutoff, as ``nc1_pinv``), K the
    number of classes measured; the count-weighted mean
    ``Σ_k (n_k / N) nc1_k`` is ``nc1_pinv`` whenever ``Σ_W`` pools exactly
    the classes measured.

    Parameters
    ----------
    covariances : xarray.DataArray
        From :func:`class_covariances`.
    stats : xarray.Dataset
        From :func:`ncdask.class_stats`, on the same split.
    min_count : int, optional
        Leave classes with fewer samples out, as :func:`ncdask.measure`
        (those the statistics were filtered by are left out too).

    Returns
    -------
    xarray.DataArray
        Lazy ``(class,)``, over the classes of ``covariances`` that are
        measured (non-empty, not filtered), chunked as ``covariances``.

    References
    ----------
    Papyan et al. (2020), PNAS; Rangamani et al. (2023), ICML.
    """
    covs = _as_covariances(covariances)
    stats = _check_stats(stats)
    kept = kept_classes(stats, min_count)
    counts, present, K_all, K = kept.counts, kept.present, kept.n_all, kept.n_kept
    if K < 2:
        raise ValueError(f"class_nc1 needs at least 2 measured classes, got {K}")
    M = _float64(as_dask(stats["means"]))
    if K < K_all:
        M = M[present]
    if kept.refiltered:
        mG = _global_mean_of(M, counts[present], stats.attrs.get("global_mean"))
    else:
        mG = _float64(as_dask(stats["global_mean"])).rechunk(-1)
    given = np.dtype(stats["means"].dtype)
    eps_dtype = given if np.issubdtype(given, np.floating) else np.dtype(np.float64)
    Mc = M - mG[None, :]
    P = GC.between_pinv(Mc, eps_dtype=eps_dtype)
    ids = np.asarray(covs["class"].values)
    mine = np.isin(ids, present)
    sub = covs if mine.all() else covs.isel({"class": np.nonzero(mine)[0]})
    data = _float64(sub.data)
    vals = GC.per_class_traces(data, P, 1.0 / K)
    out = xr.DataArray(vals, dims=("class",), coords={"class": sub["class"].values},
                       name="class_nc1")
    out.attrs.update(
        long_name="per-class NC1",
        formula="tr(Sigma_k Sigma_B^+) / K; sum_k (n_k/N) nc1_k = nc1_pinv",
        reference=PAPYAN,
        n_classes_measured=K,
    )
    return out


def class_spectra(covariances: xr.DataArray) -> xr.Dataset:
    """Eigenvalues and effective rank of every per-class covariance.

    Parameters
    ----------
    covariances : xarray.DataArray
        From :func:`class_covariances`.

    Returns
    -------
    xarray.Dataset
        Lazy ``eigenvalues (class, component)`` in descending order and
        ``effective_rank (class)`` = ``exp(−Σ p_i log p_i)``, ``p = λ/Σλ``
        (negative rounding eigenvalues clipped to 0); NaN for classes without
        samples, 0 for a zero covariance.

    References
    ----------
    Roy & Vetterli (2007), EUSIPCO; Rangamani et al. (2023), ICML.

    Examples
    --------
    >>> import numpy as np, xarray as xr, dask.array as da
    >>> from ncdask.covariances import class_spectra
    >>> covs = xr.DataArray(da.from_array(np.stack([np.eye(4), np.diag([1.0, 0, 0, 0])])),
    ...                     dims=("class", "feature", "feature_"))
    >>> class_spectra(covs).effective_rank.values.round(6).tolist()
    [4.0, 1.0]
    """
    covs = _as_covariances(covariances)
    eig, er = GC.per_class_spectra(covs.data)
    coords = {"class": covs["class"].values} if "class" in covs.coords else {}
    ds = xr.Dataset(
        {
            "eigenvalues": (("class", "component"), eig),
            "effective_rank": (("class",), er),
        },
        coords=coords,
    )
    ds["eigenvalues"].attrs.update(long_name="eigenvalues of Sigma_k, descending",
                                   reference=RANGAMANI)
    ds["effective_rank"].attrs.update(
        long_name="effective rank of Sigma_k",
        formula="exp(-sum_i p_i log p_i), p = lambda / sum(lambda)",
        reference=ROY,
    )
    return ds
