"""Out-of-distribution scores from Neural Collapse: NECO (Ammar et al. 2024) and NCI.

Under Neural Collapse the in-distribution features concentrate in the span of the class means, so
**higher scores mean in-distribution**. The fit needs no pass over the embeddings
(:func:`total_covariance` follows from the class statistics); scores are one blocked pass over a
split, whose samples labelled ``ignore_index`` (default: the split's) get NaN; ``tile_size`` is the
classes per tile of a classifier's logits. :func:`ood_report` gives AUROC and FPR.

>>> import numpy as np, ncdask
>>> rng = np.random.default_rng(0)
>>> y = np.arange(400) % 4
>>> X = 5 * rng.normal(size=(4, 8))[y] + rng.normal(size=(400, 8))
>>> s = ncdask.EmbeddingStore.from_arrays(
...     "memory://neco-doc", {"train": (X, y), "ood": (rng.normal(size=(50, 8)), y[:50])},
...     overwrite=True)
>>> st = ncdask.class_stats(s, "train")
>>> St = ncdask.total_covariance(st)  # no pass over the embeddings
>>> bool(np.allclose(St.values, np.cov(X.astype(np.float32).T, bias=True)))
True
>>> idc, ood = ncdask.neco_scores(st, (s, "train")), ncdask.neco_scores(st, (s, "ood"))
>>> float(ncdask.ood_report(idc, ood).auroc) > 0.9
True
>>> W = (st.means - st.global_mean).values
>>> idc, ood = ncdask.nci_scores(st, (s, "train"), W), ncdask.nci_scores(st, (s, "ood"), W)
>>> float(ncdask.ood_report(idc, ood).auroc) > 0.9
True
"""

from __future__ import annotations

from typing import Any

import dask.array as da
import numpy as np
import scipy.stats
import xarray as xr

from ncdask._validate import split_classes
from ncdask._version import __version__
from ncdask.graph import decisions as DG
from ncdask.graph import neco as GN
from ncdask.graph.pairwise import default_tile_size
from ncdask.kernels._xp import to_numpy
from ncdask.metrics.declarations import AMMAR
from ncdask.metrics.inputs import (
    as_dask,
    check_stats,
    float64,
    host_float64,
    kept_classes,
    row_weights,
    shaped,
)
from ncdask.metrics.inputs import split_of as _split

__all__ = ["total_covariance", "neco_fit", "neco_scores", "nci_scores", "ood_report"]

LIU_QIN = ("Liu & Qin (2025), Detecting out-of-distribution through the lens of neural collapse, "
           "CVPR (arXiv:2311.01479)")


def total_covariance(stats: xr.Dataset) -> xr.DataArray:
    """Total (population) covariance of the training features, from the class statistics.

    ``Σ_T = Σ_W + (1/N) Σ_k n_k (μ_k − μ̄)(μ_k − μ̄)ᵀ`` (sample-weighted, unlike
    NC1's Σ_B): what ``StandardScaler`` and ``PCA`` would see.

    Parameters
    ----------
    stats : xarray.Dataset
        From :func:`ncdask.class_stats` (filtered classes are left out).

    Returns
    -------
    xarray.DataArray
        Lazy ``(feature, feature_)``.
    """
    St, _ = _total(stats)
    return xr.DataArray(
        St, dims=("feature", "feature_"), name="total_covariance",
        coords={k: stats[k].values for k in ("feature", "feature_") if k in stats.coords},
        attrs={"long_name": "total covariance of the training features",
               "formula": "Sigma_W + (1/N) sum_k n_k (mu_k - mu)(mu_k - mu)^T, mu the sample "
                          "mean"})


def _kept_rows(ds: xr.Dataset, ignore_index: int | None) -> da.Array | None:
    """The rows of a split not labelled ``ignore_index`` (None: every row)."""
    _, ii = split_classes(ds, ignore_index=ignore_index, required=False)
    return as_dask(ds["labels"]) != ii if ii is not None and "labels" in ds else None


def _classifier(weights: Any, bias: Any, D: int,
                tile_size: int | None) -> tuple[da.Array, da.Array, int]:
    """The float64 classifier rows and bias (0 if None), checked, and the class tile."""
    W = float64(as_dask(weights))
    if W.ndim != 2 or W.shape[1] != D:
        raise ValueError(f"weights have shape {W.shape}, expected (K, {D})")
    K = W.shape[0]
    b = da.zeros(K, dtype=np.float64, chunks=-1) if bias is None else shaped(bias, (K,), "bias")
    return W, b, int(tile_size) if tile_size else default_tile_size(K, D)


def _total(stats: xr.Dataset) -> tuple[da.Array, da.Array]:
    """Σ_T and the sample mean over the classes whose samples ``Σ_W`` pools."""
    kept = kept_classes(check_stats(stats))
    K = kept.n_kept
    if K == 0:
        raise ValueError("the statistics have no samples")
    n_k = kept.counts[kept.present]
    N = (float(to_numpy(stats["n_samples"].values)) if "n_samples" in stats
         else float(n_k.sum()))
    M = float64(as_dask(stats["means"]))
    M = (M[kept.present] if K < kept.n_all else M).rechunk(
        (min(default_tile_size(K, M.shape[1]), K), -1))
    return GN.total_covariance(float64(as_dask(stats["within_cov"])), M, row_weights(n_k, M), N)


def neco_fit(stats: xr.Dataset, n_components: int | None = None, *,
             standardize: bool = True) -> xr.Dataset:
    """The NECO projection, from the class statistics alone.

    Parameters
    ----------
    stats : xarray.Dataset
        Training-split statistics from :func:`ncdask.class_stats`.
    n_components : int, optional
        Principal directions ``d``; default ``min(K − 1, D − 1)`` (the simplex
        the means collapse to). With K ≥ D, tune it.
    standardize : bool, default True
        Divide each feature by its training standard deviation first
        (the paper's ``StandardScaler``).

    Returns
    -------
    xarray.Dataset
        Lazy ``mean``, ``scale`` (1 for constant features or without
        standardisation), orthonormal ``components (component, feature)`` and
        their population ``explained_variance``.
    """
    St, mu = _total(stats)
    D = int(St.shape[0])
    K = kept_classes(stats).n_kept
    d = max(1, min(D - 1, K - 1)) if n_components is None else int(n_components)
    if not 1 <= d <= D:
        raise ValueError(f"n_components must lie in [1, D={D}], got {n_components!r}")
    scale, comps, lam = GN.pca_fit(St, d, standardize=standardize)
    coords = {"feature": np.arange(D), "component": np.arange(d)}
    ds = xr.Dataset({"mean": (("feature",), mu), "scale": (("feature",), scale),
                     "components": (("component", "feature"), comps),
                     "explained_variance": (("component",), lam[:d])}, coords=coords)
    ds.attrs.update(n_components=d, standardize=bool(standardize), reference=AMMAR,
                    ncdask_version=__version__)
    return ds


def neco_scores(stats: xr.Dataset, split: Any, n_components: int | None = None,
                logits: Any = None, *, weights: Any = None, bias: Any = None,
                standardize: bool = True, ignore_index: int | None = None,
                tile_size: int | None = None) -> xr.DataArray:
    """NECO score of every sample of a split, lazily, one task per row block.

    ``‖P_d x̃‖ / ‖x̃‖`` with ``x̃ = (x − μ) / σ`` and ``P_d`` the projection on the fit's
    components, times the largest logit when ``logits`` or ``weights`` are given.

    Parameters
    ----------
    stats : xarray.Dataset
        Training statistics, or a fit from :func:`neco_fit` (which then sets
        ``n_components`` and ``standardize``).
    split : split Dataset or (store, split name)
        The samples to score (ID test or OOD).
    logits : array (N, K) or (N,), optional
        The samples' logits (or their maxima), as NECO uses for ViT/Swin models.
    weights, bias : array (K, D), (K,), optional
        A linear classifier giving the largest logit, blocked over class tiles.

    Returns
    -------
    xarray.DataArray
        Lazy ``(sample,)`` float64, chunked as the split's rows.
    """
    fit = stats if "components" in stats else neco_fit(stats, n_components,
                                                       standardize=standardize)
    ds = _split(split)
    X = as_dask(ds["embeddings"])
    if X.ndim != 2 or X.shape[1] != fit.sizes["feature"]:
        raise ValueError(f"embeddings have shape {X.shape}, the fit has D={fit.sizes['feature']}")
    X = X.rechunk({1: -1})
    rows = (X.chunks[0],)
    max_logit = None
    if logits is not None:
        L = as_dask(logits)
        if L.shape[0] != X.shape[0] or L.ndim not in (1, 2):
            raise ValueError(f"logits have shape {L.shape}, expected ({X.shape[0]}, K)")
        max_logit = GN.max_logits(L.rechunk((rows[0], -1))) if L.ndim == 2 else float64(L)
    elif weights is not None:
        W, b, T = _classifier(weights, bias, X.shape[1], tile_size)
        zeros = da.zeros(X.shape[1], dtype=np.float64, chunks=-1)
        max_logit = DG.decisions(X, W, b, W, zeros, tile_size=T, ncc=False)[:, 0]
    mask = _kept_rows(ds, ignore_index)
    scores = GN.neco_scores(X, fit["mean"].data, fit["scale"].data, fit["components"].data,
                            max_logit=max_logit, mask=mask)
    out = xr.DataArray(scores, dims=("sample",), name="neco_score")
    out.attrs.update(
        long_name="NECO score (higher: more in-distribution)",
        formula="||P_d x~|| / ||x~||, x~ = (x - mu) / sigma"
        + (" times the largest logit" if max_logit is not None else ""),
        reference=AMMAR, n_components=int(fit.attrs.get("n_components", fit.sizes["component"])))
    return out


def nci_scores(stats: xr.Dataset, split: Any, weights: Any, bias: Any = None, *,
               alpha: float = 0.0, ignore_index: int | None = None,
               tile_size: int | None = None) -> xr.DataArray:
    """NCI out-of-distribution score of every sample of a split (higher: in-distribution).

    ``((h − μ_G)·w_ĉ) / ‖h − μ_G‖ + α‖h‖₁``, ĉ the class the classifier
    predicts (blocked over class tiles as NC4's: no N×K logits).

    Parameters
    ----------
    stats : xarray.Dataset
        Class statistics of the ID training split (their ``global_mean`` is μ_G).
    split, weights, bias
        As :func:`neco_scores` (bias 0 if not given).
    alpha : float, default 0
        Weight of the L1 norm filter (the paper tunes it per model).

    Returns
    -------
    xarray.DataArray
        Lazy ``(sample,)`` float64.
    """
    D = int(check_stats(stats).sizes["feature"])
    ds = _split(split)
    X = float64(as_dask(ds["embeddings"])).rechunk({1: -1})
    if X.ndim != 2 or X.shape[1] != D:
        raise ValueError(f"embeddings have shape {X.shape}, expected (n, {D}) like the statistics")
    W, b, T = _classifier(weights, bias, D, tile_size)
    mG = float64(as_dask(stats["global_mean"]))
    scores = GN.nci_scores(X, W, b, mG, alpha=float(alpha), tile_size=T,
                           mask=_kept_rows(ds, ignore_index))
    out = xr.DataArray(scores, dims=("sample",), name="nci_score")
    out.attrs.update(
        long_name="NCI score (higher: more in-distribution)",
        formula="((x - mu_G) . w_c) / ||x - mu_G|| + alpha ||x||_1, c = argmax_k w_k . x + b_k",
        reference=LIU_QIN, alpha=float(alpha))
    return out


def ood_report(id_scores: Any, ood_scores: Any, *, tpr: float = 0.95) -> xr.Dataset:
    """AUROC and FPR at a TPR of 95 % for scores where **higher means in-distribution**.

    AUROC counts ties one half; the FPR is the share of OOD samples at or above
    the largest threshold keeping ``tpr`` of the ID ones (as scikit-learn's
    ``roc_curve``). NaN scores (ignored samples) are dropped.

    Parameters
    ----------
    id_scores, ood_scores : array-like or DataArray
        Scores of in-distribution and OOD samples (loaded, to rank exactly).
    tpr : float, default 0.95

    Returns
    -------
    xarray.Dataset
        Scalars ``auroc``, ``fpr_at_tpr``, ``threshold``, ``n_id``, ``n_ood``;
        attrs ``tpr`` and ``positive = "in-distribution (higher score)"``.

    Examples
    --------
    >>> from ncdask.neco import ood_report
    >>> r = ood_report([0.9, 0.8, 0.7, 0.6], [0.65, 0.1])
    >>> float(r.auroc), float(r.fpr_at_tpr)
    (0.875, 0.5)
    """
    if not 0 < tpr <= 1:
        raise ValueError(f"tpr must lie in (0, 1], got {tpr!r}")
    a, b = (host_float64(s).reshape(-1) for s in (id_scores, ood_scores))
    a, b = a[~np.isnan(a)], b[~np.isnan(b)]
    n1, n0 = a.size, b.size
    if n1 == 0 or n0 == 0:
        raise ValueError(f"need ID and OOD scores, got {n1} and {n0}")
    ranks = scipy.stats.rankdata(np.concatenate([a, b]))
    auroc = (ranks[:n1].sum() - n1 * (n1 + 1) / 2.0) / (n1 * n0)
    # the first k (of the ID scores, descending) with k / n1 >= tpr, as roc_curve compares
    k = int(np.searchsorted(np.arange(1, n1 + 1) / n1, tpr, side="left")) + 1
    thr = float(np.sort(a)[::-1][min(k, n1) - 1])
    fpr = float(np.count_nonzero(b >= thr)) / n0
    ds = xr.Dataset({"auroc": ((), float(auroc)), "fpr_at_tpr": ((), fpr),
                     "threshold": ((), thr), "n_id": ((), np.int64(n1)),
                     "n_ood": ((), np.int64(n0))})
    ds["auroc"].attrs["long_name"] = "area under the ROC curve, ID positive"
    ds["fpr_at_tpr"].attrs["long_name"] = f"OOD false-positive rate at {tpr:.0%} ID recall"
    ds.attrs.update(tpr=float(tpr), positive="in-distribution (higher score)")
    return ds
