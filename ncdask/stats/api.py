"""The public :func:`class_stats`: a split's statistics, from a store's cache when asked."""

from __future__ import annotations

from typing import Any

import xarray as xr

from ncdask.stats.cache import cached_stats
from ncdask.stats.core import compute_stats
from ncdask.store.embedding import EmbeddingStore, resolve_split
from ncdask.store.setkey import SetKey


def class_stats(
    data: Any, split: str | None = None, *, global_mean: str = "unweighted",
    dtype: Any = "float64", n_classes: int | None = None, chains: int | None = None,
    ignore_index: int | None = None, min_count: int | None = None,
    tile_size: int | None = None, memory_budget: int | str | None = None, cache: bool = False,
    layer: str | None = None, epoch: int | None = None,
) -> xr.Dataset:
    """Per-class statistics of a split from one pass, chunked over classes by tiles.

    Parameters
    ----------
    data : xarray.Dataset or EmbeddingStore or str
        A split Dataset, or a store (object or URL) with ``split`` (default "train").
    split : str, optional
    global_mean : {"unweighted", "weighted"}
        Unweighted mean of the class means (the reference's) or sample-weighted.
    dtype : dtype, default "float64"
        Accumulation dtype.
    n_classes : int, optional
        K, when the Dataset's attrs do not carry it.
    chains : int, optional
        Running accumulators side by side (default: one per thread, at most 8).
    ignore_index : int, optional
        Label left out of every statistic (default: the store's).
    min_count : int, optional
        Classes with ``0 < n_k < min_count`` samples leave ``within_cov``,
        ``n_samples`` and the global mean (attr ``filtered_classes``).
    tile_size : int, optional
        Classes per chunk of ``means`` and ``var_norms`` (default: measure's tile).
    memory_budget : int or str, optional
        Bytes of class partials the pass may hold (default: dask config
        ``ncdask.stats-budget``, else 1.5 GiB); above it the classes are cut
        into groups (:mod:`ncdask.graph.tiled_stats`).
    cache : bool, default False
        With a store: keep the result beside the split and reuse it, reading
        only appended rows (:mod:`ncdask.stats.cache`).
    layer, epoch : optional
        The embedding set of ``split`` when ``data`` is a store.

    Returns
    -------
    xarray.Dataset
        ``means``, ``var_norms``, ``global_mean``, ``within_cov`` (lazy),
        ``counts`` and ``n_samples``; attrs such as ``empty_classes``.

    Warns
    -----
    EmptyClassWarning
        When some class has no samples.

    References
    ----------
    Papyan, Han & Donoho (2020), "Prevalence of neural collapse during the
    terminal phase of deep learning training", PNAS.

    Examples
    --------
    >>> import numpy as np, ncdask
    >>> rng = np.random.default_rng(0)
    >>> s = ncdask.EmbeddingStore.from_arrays(
    ...     "memory://stats-doc", {"train": (rng.normal(size=(100, 4)), np.arange(100) % 3)},
    ...     overwrite=True)
    >>> st = ncdask.class_stats(s, "train")
    >>> st.counts.values.tolist()
    [34, 33, 33]
    """
    options = dict(global_mean=global_mean, dtype=dtype, chains=chains,
                   ignore_index=ignore_index, min_count=min_count, tile_size=tile_size,
                   memory_budget=memory_budget)
    if isinstance(data, xr.Dataset) or not (cache or layer is not None or epoch is not None):
        return compute_stats(resolve_split(data, split), n_classes=n_classes, **options)
    if isinstance(data, tuple) and len(data) == 2 and split is None:
        data, split = data
    store = EmbeddingStore.open(data) if isinstance(data, str) else data
    if not isinstance(store, EmbeddingStore):
        raise TypeError(f"cache=, layer= and epoch= need a store, got {type(data).__name__}")
    split = split or "train"
    if cache:
        return cached_stats(store, split, SetKey(layer, epoch), options)
    return compute_stats(store.split(split, layer=layer, epoch=epoch), n_classes=n_classes,
                         **options)
