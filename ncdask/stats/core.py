"""Class statistics as a labelled, lazy :class:`xarray.Dataset`: computed, merged, saved.

The graph is :mod:`ncdask.graph.tiled_stats` (class axis chunked by tiles);
:func:`ncdask.class_stats` (:mod:`ncdask.stats.api`) adds the store's cache."""

from __future__ import annotations

from typing import Any

import dask.array as da
import numpy as np
import xarray as xr

from ncdask._validate import NcdaskStoreError, check_count, split_classes
from ncdask._version import __version__
from ncdask.errors import warn
from ncdask.graph.pairwise import default_tile_size
from ncdask.graph.tiled_stats import class_tiled_stats, coarsen_tiled, merge_tiled
from ncdask.kernels._xp import array_namespace, to_numpy
from ncdask.store.zarrio import open_dataset, write_dataset


class EmptyClassWarning(UserWarning):
    """Some classes have no samples; they are kept with NaN means and left out of metrics."""


DEFINITIONS = {
    "counts": "n_k, samples per class",
    "means": "mu_k = (1/n_k) sum_{y_i=k} x_i (NaN for empty classes)",
    "global_mean": "mu_G: unweighted mean of class means, or (1/N) sum_i x_i if weighted",
    "within_cov": "Sigma_W = (1/N) sum_i (x_i - mu_{y_i})(x_i - mu_{y_i})^T",
    "var_norms": "v_k = (1/n_k) sum_{y_i=k} ||x_i - mu_k||^2 (trace of class k's covariance)",
    "n_samples": "N, the number of samples (of the classes kept, without ignored labels)",
}


def _counts_of(ds: xr.Dataset, n_classes: int) -> np.ndarray:
    """Samples per class: the store's record while the Dataset has the ``n_committed`` rows
    it describes, else the labels' (in ``[0, K)``); the pass checks them again."""
    counts = ds.attrs.get("class_counts")
    rows = ds.attrs.get("n_committed")
    if (counts is not None and len(counts) == n_classes and rows is not None
            and int(rows) == ds.sizes.get("sample", -1)):
        return np.asarray(counts, dtype=np.int64)
    lab = ds["labels"].data
    if isinstance(lab, da.Array):
        lab = lab.astype(np.int64)
        valid = (lab >= 0) & (lab < n_classes)
        w = da.bincount(da.where(valid, lab, 0), weights=valid.astype(np.int64),
                        minlength=n_classes)
        return to_numpy(w.compute()).astype(np.int64)  # CuPy labels: one explicit copy
    lab = np.asarray(to_numpy(lab), dtype=np.int64)
    valid = (lab >= 0) & (lab < n_classes)
    w = np.bincount(np.where(valid, lab, 0), weights=valid, minlength=n_classes)
    return w.astype(np.int64)


def labelled_stats(
    arrays: dict[str, Any], counts: np.ndarray, *, global_mean: str, attrs: dict[str, Any],
    in_scatter: np.ndarray | None = None,
) -> xr.Dataset:
    """The class-statistics Dataset from ``arrays`` (``means``, ``global_mean``,
    ``within_cov``, ``var_norms``, lazy or not), the ``counts`` and ``in_scatter``
    (the classes Σ_W pools; default all)."""
    K = counts.shape[0]
    D = arrays["means"].shape[1]
    empty = np.nonzero(counts == 0)[0].tolist()
    used = counts if in_scatter is None else np.where(in_scatter, counts, 0)
    ds = xr.Dataset(
        {
            "counts": (("class",), counts),
            "means": (("class", "feature"), arrays["means"]),
            "global_mean": (("feature",), arrays["global_mean"]),
            "within_cov": (("feature", "feature_"), arrays["within_cov"]),
            "var_norms": (("class",), arrays["var_norms"]),
            "n_samples": ((), np.int64(used.sum())),
        },
        coords={"class": np.arange(K), "feature": np.arange(D), "feature_": np.arange(D)},
    )
    for name, text in DEFINITIONS.items():
        ds[name].attrs["definition"] = text
    ds.attrs.update(attrs)
    ds.attrs.update(n_classes=K, dim=D, global_mean=global_mean, empty_classes=empty,
                    ncdask_version=__version__)
    if in_scatter is not None:
        ds.attrs["filtered_classes"] = np.nonzero(~in_scatter & (counts > 0))[0].tolist()
    if empty:
        shown = empty[:10]
        more = f" and {len(empty) - 10} more" if len(empty) > 10 else ""
        warn(f"{len(empty)} class(es) have no samples: {shown}{more}; they keep NaN "
             "means and are left out of measurements", EmptyClassWarning)
    return ds


def compute_stats(
    ds: xr.Dataset, *, global_mean: str = "unweighted", dtype: Any = "float64",
    n_classes: int | None = None, chains: int | None = None, ignore_index: int | None = None,
    min_count: int | None = None, tile_size: int | None = None,
    memory_budget: int | str | None = None,
) -> xr.Dataset:
    """The lazy class statistics of a split Dataset (:func:`ncdask.class_stats` without
    its store handling and cache; the same options)."""
    if global_mean not in ("unweighted", "weighted"):
        raise ValueError(f"global_mean must be 'unweighted' or 'weighted', got {global_mean!r}")
    K, ignore_index = split_classes(ds, n_classes, ignore_index)
    if min_count is not None:
        check_count("min_count", min_count, minimum=0)
    X = ds["embeddings"].data
    y = ds["labels"].data
    if not isinstance(X, da.Array):
        X = da.from_array(X, chunks=(max(1, (64 * 2**20) // max(1, X.shape[1] * 8)), -1))
    if not isinstance(y, da.Array):
        y = da.from_array(y, chunks=(X.chunks[0],))
    dt = np.dtype(dtype)
    counts = _counts_of(ds, K)
    in_scatter = None if min_count is None else counts >= int(min_count)
    D = int(X.shape[1])
    T = int(tile_size) if tile_size is not None else default_tile_size(K, D)
    if T < 1:
        raise ValueError(f"tile_size must be a positive integer, got {tile_size!r}")
    arrays = class_tiled_stats(X, y, K, tile=min(T, K), budget=memory_budget, dtype=dt,
                               ignore_index=ignore_index, in_scatter=in_scatter,
                               global_mean=global_mean, chains=chains, expect_counts=counts)
    attrs = {k: ds.attrs[k] for k in ("split", "layer", "epoch", "store") if k in ds.attrs}
    if ignore_index is not None:
        attrs["ignore_index"] = ignore_index
    if min_count is not None:
        attrs["min_count"] = int(min_count)
    if ds.attrs.get("finite") == 1:
        arrays = _refusing_lost_chunks(arrays, counts, ds.attrs)
    return labelled_stats(arrays, counts, global_mean=global_mean, attrs=attrs,
                          in_scatter=in_scatter)


def _refusing_lost_chunks(
    arrays: dict[str, Any], counts: np.ndarray, attrs: dict[str, Any]
) -> dict[str, Any]:
    """The statistics, raising on a non-finite value where the split promised none (a lost
    chunk reads as NaN, so these small results catch it without a re-read)."""
    where = f"split {attrs.get('split')!r} of {attrs.get('store')!r}"
    out = dict(arrays)
    present = da.from_array(counts > 0, chunks=(arrays["means"].chunks[0],))
    for name in ("means", "var_norms"):
        a = arrays[name]
        ix = "ij"[: a.ndim]
        out[name] = da.blockwise(refuse_nonfinite, ix, a, ix, present, "i", what=name,
                                 where=where, dtype=a.dtype, meta=a._meta)
    for name in ("within_cov", "global_mean"):
        a = _dask(arrays[name])
        out[name] = a.map_blocks(refuse_nonfinite, what=name, where=where, dtype=a.dtype,
                                 meta=a._meta)
    return out


def refuse_nonfinite(block: Any, present: Any = None, *, what: str = "", where: str = "") -> Any:
    """Return ``block``, or raise if it holds NaN/inf where finite rows were promised (a lost
    or damaged chunk); ``present`` (per row) limits the check to classes with samples."""
    xp = array_namespace(block)
    bad = ~xp.isfinite(block)
    if present is not None:
        p = xp.asarray(present)
        bad = bad & (p.reshape(p.shape + (1,) * (block.ndim - 1)))
    if bool(xp.any(bad)):
        raise NcdaskStoreError(
            f"{where}: {what} holds NaN or inf although the split was written without "
            "allow_nonfinite: an embeddings chunk is missing (it reads as NaN) or damaged; "
            "run `ncdask check` on the store")
    return block


def _dask(x: Any) -> da.Array:
    return x if isinstance(x, da.Array) else da.from_array(x, chunks=-1)


def merge_stats(a: xr.Dataset, b: xr.Dataset) -> xr.Dataset:
    """Statistics of the data behind ``a`` and ``b`` together, lazily, without a pass.

    Parameters
    ----------
    a, b : xarray.Dataset
        Results of :func:`class_stats` with the same options, without ``min_count``.

    Returns
    -------
    xarray.Dataset
    """
    for s_ in (a, b):
        if list(s_.attrs.get("filtered_classes", [])):
            raise ValueError("cannot merge statistics computed with min_count (their filtered "
                             "classes change with the merged counts); merge unfiltered "
                             "statistics and pass min_count to measure")
    for key in ("n_classes", "dim", "global_mean", "ignore_index"):
        if a.attrs.get(key) != b.attrs.get(key):
            raise ValueError(f"cannot merge stats with different {key}: "
                             f"{a.attrs.get(key)!r} vs {b.attrs.get(key)!r}")
    na = np.asarray(to_numpy(a["counts"].values)).astype(np.int64)
    nb = np.asarray(to_numpy(b["counts"].values)).astype(np.int64)

    def parts(s_: xr.Dataset, n: np.ndarray) -> dict[str, Any]:
        out = {v: _dask(s_[v].data) for v in ("means", "var_norms", "within_cov")}
        ns = s_["n_samples"].values if "n_samples" in s_ else n.sum()
        out["n_samples"] = int(to_numpy(ns))
        return out

    gm, ii = a.attrs["global_mean"], a.attrs.get("ignore_index")
    arrays = merge_tiled(parts(a, na), parts(b, nb), na, nb, global_mean=gm)
    attrs = {} if ii is None else {"ignore_index": ii}
    return labelled_stats(arrays, na + nb, global_mean=gm, attrs=attrs)


def coarsen(stats: xr.Dataset, groups: Any) -> xr.Dataset:
    """The statistics of the coarse problem whose classes are groups of ``stats``' classes,
    exactly and lazily, without a pass over the samples.

    Equal to :func:`class_stats` of the same samples labelled ``groups[y]``: group counts
    ``n_g = Σ_{k∈g} n_k``, means ``μ_g = Σ_{k∈g} n_k μ_k / n_g``, variance norms
    ``v_g = Σ_{k∈g} n_k (v_k + ‖μ_k − μ_g‖²) / n_g`` and
    ``Σ_W' = Σ_W + (1/N) Σ_k n_k (μ_k − μ_{g(k)})(μ_k − μ_{g(k)})ᵀ``, the within-group
    scatter of the class means (N unchanged); the unweighted global mean becomes the mean of
    the group means. Every metric then measures the coarse classes (hierarchical collapse):
    ``measure(coarsen(stats, groups))``; a classifier must then have one row per group.

    Parameters
    ----------
    stats : xarray.Dataset
        From :func:`class_stats`, :func:`load_stats` or :func:`merge_stats`, without
        ``min_count`` (coarsen unfiltered statistics and pass ``min_count`` to measure).
    groups : array-like of int
        The group of each class (token → part of speech, class → superclass): K integers
        in ``[0, G)``. A group without classes, or with empty ones only, is an empty class of
        the result (NaN mean, :class:`EmptyClassWarning`).

    Returns
    -------
    xarray.Dataset
        G classes; attrs kept, ``fine_classes`` = K added. Variables other than those of
        :func:`class_stats` are not carried. No K×K or K×D task: one G×D partial per class
        tile, merged exactly (Chan).

    Examples
    --------
    >>> import numpy as np, ncdask
    >>> rng = np.random.default_rng(0)
    >>> s = ncdask.EmbeddingStore.from_arrays(
    ...     "memory://coarsen-doc", {"train": (rng.normal(size=(60, 3)), np.arange(60) % 4)},
    ...     overwrite=True)
    >>> st = ncdask.coarsen(ncdask.class_stats(s, "train"), [0, 1, 0, 1])
    >>> st.counts.values.tolist()
    [30, 30]
    """
    K = int(stats.sizes["class"])
    g = to_numpy(groups.data if isinstance(groups, xr.DataArray) else groups)
    if g.shape != (K,) or not np.issubdtype(g.dtype, np.integer):
        raise ValueError(f"groups must be {K} integers (one group per class of the "
                         f"statistics), got shape {g.shape} of {g.dtype}")
    if K and g.min() < 0:
        raise ValueError(f"groups must be >= 0, got {int(g.min())} for class "
                         f"{int(np.argmin(g))}")
    extra = set(stats.dims) - {"class", "feature", "feature_"}
    if extra:
        raise ValueError(f"coarsen one statistics object at a time, not one stacked on "
                         f"{sorted(extra)} (take .isel of it)")
    if list(stats.attrs.get("filtered_classes", [])):
        raise ValueError("cannot coarsen statistics computed with min_count: their Σ_W and N "
                         "leave out the filtered classes a group would pool; coarsen "
                         "unfiltered statistics and pass min_count to measure")
    counts = np.asarray(to_numpy(stats["counts"].values)).astype(np.int64)
    G = int(g.max()) + 1 if K else 0
    gm = stats.attrs.get("global_mean", "unweighted")
    arrays = coarsen_tiled(_dask(stats["means"].data), _dask(stats["var_norms"].data),
                           counts, g.astype(np.int64), G, global_mean=gm)
    arrays["within_cov"] = _dask(stats["within_cov"].data) + arrays["within_cov"]
    n_g = np.bincount(g, weights=counts, minlength=G).round().astype(np.int64)
    out = labelled_stats(arrays, n_g, global_mean=gm, attrs=dict(stats.attrs))
    out.attrs["fine_classes"] = K
    return out


def save_stats(
    stats: xr.Dataset, url: str, *, overwrite: bool = False,
    storage_options: dict | None = None,
) -> None:
    """Write class statistics to a Zarr store (computing them if they are lazy).

    Written beside ``url`` and renamed into place when complete.

    Parameters
    ----------
    stats : xarray.Dataset
        From :func:`class_stats` or :func:`load_stats`.
    url : str
        Local path or fsspec URL (``storage_options`` go to fsspec).
    overwrite : bool, default False
        Replace statistics at ``url``; anything else there raises ``FileExistsError``.
    """
    out = stats.copy()
    out.attrs = {k: (list(v) if isinstance(v, (list, tuple, np.ndarray)) else v)
                 for k, v in stats.attrs.items() if v is not None}
    out.attrs["empty_classes"] = [int(i) for i in stats.attrs.get("empty_classes", [])]
    if "filtered_classes" in stats.attrs:
        out.attrs["filtered_classes"] = [int(i) for i in stats.attrs["filtered_classes"]]
    write_dataset(out, url, kind="stats", overwrite=overwrite, storage_options=storage_options)


def load_stats(url: str, *, storage_options: dict | None = None) -> xr.Dataset:
    """Reopen statistics written by :func:`save_stats` (lazy, counts in memory)."""
    ds = open_dataset(url, storage_options=storage_options)
    if "within_cov" not in ds or "counts" not in ds:
        raise ValueError(f"{url!r} does not hold ncdask class statistics")
    ds["counts"] = ds["counts"].load()
    ds["n_samples"] = ds["n_samples"].load()
    ds.attrs["empty_classes"] = [int(i) for i in ds.attrs.get("empty_classes", [])]
    if "filtered_classes" in ds.attrs:
        ds.attrs["filtered_classes"] = [int(i) for i in ds.attrs["filtered_classes"]]
    return ds
