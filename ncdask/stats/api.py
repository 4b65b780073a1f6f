"""The public :func:`class_stats`: a split's statistics, from a store's cache when asked."""

from __future__ import annotations

from typing import Any

import xarray as xr

from ncdask.stats.cache import cached_stats
from ncdask.stats.core import compute_stats
from ncdask.store.embedding import EmbeddingStore, resolve_split
from ncdask.store.setkey import SetKey


def class_stats(
    data: Any,
    split: str | None = None,
    *,
    global_mean: str = "unweighted",
    dtype: Any = "float64",
    n_classes: int | None = None,
    chains: int | None = None,
    ignore_index: int | None = None,
    min_count: int | None = None,
    tile_size: int | None = None,
    memory_budget: int | str | None = None,
    cache: bool = False,
    layer: str | None = None,
    epoch: int | None = None,
) -> xr.Dataset:
    """Per-class statistics of a split, chunked over classes by tiles.

    Parameters
    ----------
    data : xarray.Dataset or EmbeddingStore or str
        A split Dataset (``embeddings (sample, feature)``, ``labels (sample)``),
        or a store (object or URL) with ``split``.
    split : str, optional
        Split name when ``data`` is a store (default "train").
    global_mean : {"unweighted", "weighted"}
        Unweighted mean of the class means (the reference's default) or the
        sample-weighted mean.
    dtype : dtype, default "float64"
        Accumulation dtype.
    n_classes : int, optional
        K, when the Dataset does not carry it in its attrs.
    chains : int, optional
        Row chunks are added one after another into this many running
        accumulators, side by side (default: one per worker thread, at most
        8); each holds a D×D scatter and, past one pass, a class group.
    ignore_index : int, optional
        Samples with this label (PyTorch's ``-100`` padding) are left out of
        every statistic, ``n_samples`` included. Default: the store's
        ``ignore_index`` (the split's attribute), else none; any other label
        outside ``[0, K)`` raises ``ValueError`` when the pass runs.
    min_count : int, optional
        Classes with ``0 < n_k < min_count`` samples are *filtered*: they keep
        their ``counts``, ``means`` and ``var_norms``, but their samples leave
        ``within_cov``, ``n_samples`` and the global mean, and they are listed
        in the ``filtered_classes`` attribute, which :func:`ncdask.measure`
        leaves out of every class-level metric. The counts come from a pass
        over the labels alone, before the pass over the embeddings.
    tile_size : int, optional
        Classes per chunk of the class axis of ``means`` and ``var_norms``
        (default: :func:`ncdask.graph.pairwise.default_tile_size`, the tile
        :func:`ncdask.measure` uses). :func:`save_stats` writes one Zarr chunk
        per tile.
    memory_budget : int or str, optional
        Bytes of per-class partial results the pass may hold (default: the
        ``ncdask.stats.core-budget`` dask config value, else 1.5 GiB). When
        ``(chains + 2)·K·D·8`` bytes fit, the statistics take one read of
        the embeddings; otherwise the classes are cut into ``G`` groups of
        whole tiles of at most ``budget / (chains + 2)`` each, and the
        embeddings are read ``G + 1`` times (see
        :mod:`ncdask.graph.tiled_stats`). No task then holds more than a
        group's K×D part.
    cache : bool, default False
        With a store (not a split Dataset): keep the result in the store,
        beside the split, and reuse it (:mod:`ncdask.stats.cache`): a second call
        with nothing new reads no embedding chunk, and after appends only
        the new rows are read and merged in. The statistics are then
        computed at the call (on the active dask scheduler), not lazily. A
        store that cannot be written gets no cache.
    layer, epoch : optional
        The embedding set of ``split`` when ``data`` is a store.

    Returns
    -------
    xarray.Dataset
        Lazy ``counts (class)`` (in memory), ``means (class, feature)`` and
        ``var_norms (class)`` chunked over ``class`` by ``tile_size``,
        ``global_mean (feature)``, ``within_cov (feature, feature_)``
        and ``n_samples``; attrs ``n_classes``, ``dim``,
        ``global_mean``, ``empty_classes``, ``ignore_index`` (when set),
        ``min_count`` and ``filtered_classes`` (when ``min_count`` is given).
        Computing any subset runs the one pass once.

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
