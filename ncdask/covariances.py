"""Per-class covariances ``Σ_k`` (K×D×D), chunked over classes, and what is built on them.

:func:`class_covariances` is one pass giving a lazy DataArray chunked over classes (never
K×D×D at once); :func:`class_nc1` and :func:`class_spectra` reduce it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import xarray as xr

from ncdask._validate import split_classes
from ncdask._version import __version__
from ncdask.graph import covariances as GC
from ncdask.kernels._xp import to_numpy
from ncdask.metrics.declarations import PAPYAN, ROY
from ncdask.metrics.inputs import as_dask, check_stats, class_inputs, float64, kept_classes
from ncdask.store.embedding import resolve_split

__all__ = ["class_covariances", "class_nc1", "class_spectra"]

RANGAMANI = ("Rangamani et al. (2023), Feature learning in deep classifiers through intermediate "
             "neural collapse, ICML")


def class_covariances(
    data: Any, classes: Sequence[int] | np.ndarray | None = None, *, split: str | None = None,
    class_chunk: int | None = None, dtype: Any = "float64", ignore_index: int | None = None,
    n_classes: int | None = None, max_memory: int | None = GC.COV_PASS_BYTES,
) -> xr.DataArray:
    """Per-class covariances of a split, in one pass, chunked over classes.

    ``Σ_k = (1/n_k) Σ_{y_i=k} (x_i − μ_k)(x_i − μ_k)ᵀ`` (``tr Σ_k = v_k``, ``Σ_k (n_k/N) Σ_k =
    Σ_W``), with centred pairwise merges (accurate on collapsed float32 features).

    Parameters
    ----------
    data : xarray.Dataset, EmbeddingStore, str or (store, split)
        A split Dataset, or a store with ``split`` (default "train").
    classes : sequence of int, optional
        The classes to compute, in output order (default all K).
    split : str, optional
    class_chunk : int, optional
        Classes per output chunk (default: 32 MiB chunks).
    dtype : dtype, default "float64"
        Accumulation and output dtype.
    ignore_index, n_classes : int, optional
        Label of samples to leave out and K (default: the split's attributes).
    max_memory : int, optional
        Bytes of per-class accumulators held at once (default 256 MiB; more
        classes take more passes). None: one pass.

    Returns
    -------
    xarray.DataArray
        Lazy ``(class, feature, feature_)``, chunked ``(class_chunk, D, D)``,
        with a ``count`` coordinate; NaN for classes without samples.

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
        ignore_index=ignore_index, max_bytes=max_memory)
    out = xr.DataArray(
        covs, dims=("class", "feature", "feature_"), name="class_covariances",
        coords={"class": sel, "feature": np.arange(D), "feature_": np.arange(D),
                "count": (("class",), counts)})
    out.attrs.update(
        long_name="per-class covariance",
        formula="Sigma_k = (1/n_k) sum_{y_i=k} (x_i - mu_k)(x_i - mu_k)^T",
        reference=RANGAMANI, n_classes=K, ncdask_version=__version__)
    if ignore_index is not None:
        out.attrs["ignore_index"] = ignore_index
    out.attrs.update({k: ds.attrs[k] for k in ("split", "layer", "epoch", "store")
                      if ds.attrs.get(k) is not None})
    return out


def _as_covariances(covariances: Any) -> xr.DataArray:
    dims = ("class", "feature", "feature_")
    if not isinstance(covariances, xr.DataArray) or covariances.dims != dims:
        raise TypeError(f"covariances must be the {dims} DataArray of class_covariances")
    return covariances


def class_nc1(covariances: xr.DataArray, stats: xr.Dataset, *,
              min_count: int | None = None) -> xr.DataArray:
    """Per-class NC1: ``tr(Σ_k Σ_B⁺) / K`` for every class of ``covariances``.

    ``Σ_B⁺`` as in ``nc1_pinv``; ``Σ_k (n_k/N) nc1_k`` is ``nc1_pinv`` when
    ``Σ_W`` pools exactly the classes measured.

    Parameters
    ----------
    covariances : xarray.DataArray
        From :func:`class_covariances`.
    stats : xarray.Dataset
        From :func:`ncdask.class_stats`, on the same split.
    min_count : int, optional
        Leave classes with fewer samples out, as :func:`ncdask.measure`.

    Returns
    -------
    xarray.DataArray
        Lazy ``(class,)`` over the classes of ``covariances`` measured.
    """
    covs = _as_covariances(covariances)
    kept = kept_classes(check_stats(stats), min_count)
    if kept.n_kept < 2:
        raise ValueError(f"class_nc1 needs at least 2 measured classes, got {kept.n_kept}")
    ins = class_inputs(stats, kept, tile_size=max(kept.n_kept, 1))
    P = GC.between_pinv(ins.Mc, eps_dtype=ins.eps_dtype)
    mine = np.isin(np.asarray(covs["class"].values), kept.present)
    sub = covs if mine.all() else covs.isel({"class": np.nonzero(mine)[0]})
    vals = GC.per_class_traces(float64(sub.data), P, 1.0 / kept.n_kept)
    out = xr.DataArray(vals, dims=("class",), coords={"class": sub["class"].values},
                       name="class_nc1")
    out.attrs.update(
        long_name="per-class NC1",
        formula="tr(Sigma_k Sigma_B^+) / K; sum_k (n_k/N) nc1_k = nc1_pinv",
        reference=PAPYAN, n_classes_measured=kept.n_kept)
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
        Lazy descending ``eigenvalues (class, component)`` and ``effective_rank
        (class)``, ``exp(−Σ p_i log p_i)``, ``p = λ/Σλ``; NaN without samples.

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
    ds = xr.Dataset({"eigenvalues": (("class", "component"), eig),
                     "effective_rank": (("class",), er)}, coords=coords)
    ds["eigenvalues"].attrs.update(long_name="eigenvalues of Sigma_k, descending",
                                   reference=RANGAMANI)
    ds["effective_rank"].attrs.update(
        long_name="effective rank of Sigma_k",
        formula="exp(-sum_i p_i log p_i), p = lambda / sum(lambda)", reference=ROY)
    return ds
