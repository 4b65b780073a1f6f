"""Every Neural Collapse metric of SPEC.md as a lazy, labelled :class:`xarray.Dataset`.

:func:`measure` maps class statistics (from :func:`ncdask.class_stats`), an
optional classifier and optional test / OOD splits to one variable per metric.
The arithmetic lives in :mod:`ncdask.kernels`, the blocked graphs in
:mod:`ncdask.graph`; this module only chooses what to compute and labels it.

Output variables
----------------
Scalars (one per SPEC key; the GNC2 kernel statistics are split into a
``_mean`` and a ``_var`` variable, the variance over pairs being the
reference's headline; the Riesz kernel also gets ``_log_mean`` and
``_log_var``, the natural logs, which stay finite where its values under- or
overflow)::

    nc1_pinv nc1_svd nc1_quot nc1_cdnv
    nc2_etf_err nc2_equinorm nc2_equiangle nc2_max_angle
    nc2g_dist_mean nc2g_dist_var nc2g_log_mean nc2g_log_var
    nc2g_riesz_mean nc2g_riesz_var nc2g_riesz_log_mean nc2g_riesz_log_var
    nc2w_etf_err nc2w_equinorm nc2w_max_angle
    nc3_dual_err nc3u_uni_dual nc3_papyan nc3_bias
    nc4_agree nc5_ood_dev nc1_ood_class

Per-class companions on the ``class`` dim (non-empty classes only)::

    mean_norms similarities similarities_cos distance_norms agree_per_class

Every variable has attrs ``long_name``, ``formula`` and ``reference``.

Degenerate input
----------------
* Empty classes are left out of every metric (their means are NaN) and
  listed in the ``empty_classes`` attribute; K below counts the classes kept.
* Classes with fewer than ``min_count`` samples, and those the statistics
  were filtered by (``class_stats(..., min_count=)``), are left out the same
  way and listed in ``filtered_classes``; the global mean is then taken over
  the classes kept. ``Σ_W`` is the statistics' own: it leaves the filtered
  classes' samples out only when ``class_stats`` was given the
  ``min_count``.
* Samples labelled ``ignore_index`` (default: the statistics' attribute, set
  from the store) are skipped by NC4 and left out of the OOD means of NC5
  and ``nc1_ood_class``.
* The Riesz kernel is accumulated in the log domain; where its mean or
  variance over- or underflows float64 (``S = D − 2`` for D in the
  thousands), computing it warns :class:`RieszRangeWarning` and the
  ``nc2g_riesz_log_*`` variables hold the finite logs.
* Metrics whose inputs are missing (no ``weights``, ``test`` or ``ood``) are
  left out silently and listed in the ``left_out`` attribute.
* Structurally undefined metrics are left out with a
  :class:`DegenerateInputWarning` and listed too: with K < 2 everything that
  needs two classes (all but ``nc3_bias``, ``nc4_agree``, ``nc5_ood_dev`` and
  the per-class companions); with K = 2 ``nc2_equiangle`` (a standard
  deviation over one pair); ``nc1_svd`` unless K − 1 < D.
* Values that depend on the data follow IEEE arithmetic, without warnings:
  two identical class means make ``nc1_cdnv``, ``nc2g_log_mean`` and
  ``nc2g_riesz_mean`` ``+inf`` and their variances NaN (``nc2g_dist`` stays
  finite); ``nc1_svd`` is ``+inf`` when Σ_B has rank < K − 1; all means
  equal gives NaN ETF errors.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr
from dask.array.utils import meta_from_array

from ._inputs import (
    as_dask,
    class_inputs,
    kept_classes,
)
from ._inputs import check_stats as _check_stats
from ._inputs import float64 as _float64
from ._inputs import like as _like
from ._inputs import namespace_of as _namespace_of
from ._inputs import split_of as _split
from ._version import __version__
from .evaluate import (
    agreement_from_summary,
    is_summary,
    ood_class_from_summary,
    ood_mean_from_summary,
    summary_dim,
)
from .graph import closed_forms as CF
from .graph import decisions as DG
from .graph.pairwise import default_tile_size, pairwise_moments, resolve_budget
from .graph.stats import finalized_arrays, partials_tree
from .kernels._xp import to_numpy
from .kernels.pairwise import RieszRangeWarning  # noqa: F401 - re-exported with measure


class DegenerateInputWarning(UserWarning):
    """Some requested metric is undefined for this input and is left out."""


# --------------------------------------------------------------------------- definitions

PAPYAN = (
    "Papyan, Han & Donoho (2020), Prevalence of neural collapse during the terminal "
    "phase of deep learning training, PNAS 117(40)"
)
HAN = (
    "Han, Papyan & Donoho (2022), Neural collapse under MSE loss: proximity to and "
    "dynamics on the central path, ICLR"
)
TIRER = "Tirer, Huang & Niles-Weed (2023), Perturbation analysis of neural collapse, ICML"
GALANTI = (
    "Galanti, György & Hutter (2022), On the role of neural collapse in transfer "
    "learning, ICLR (arXiv:2112.15121)"
)
LIU = (
    "Liu et al. (2023), Generalizing and decoupling neural collapse via hyperspherical "
    "uniformity gap, ICLR (arXiv:2303.06484)"
)
KOTHAPALLI = (
    "Kothapalli (2023), Neural collapse: a review on modelling principles and "
    "generalization, TMLR (arXiv:2206.04041)"
)
ZHU = (
    "Zhu et al. (2021), A geometric analysis of neural collapse with unconstrained "
    "features, NeurIPS"
)
AMMAR = (
    "Ammar et al. (2024), NECO: NEural Collapse based Out-of-distribution detection, "
    "ICLR (arXiv:2310.06823)"
)
WU = (
    "Wu & Papyan (2024), Linguistic collapse: neural collapse in (large) language models, "
    "NeurIPS (arXiv:2405.17767)"
)


@dataclass(frozen=True)
class MetricInfo:
    """Label and inputs of one output variable."""

    long_name: str
    formula: str
    reference: str
    needs: tuple[str, ...] = ()
    per_class: bool = False
    min_classes: int = 2


_G = "u_k = m~_k / (||m~_k|| + eps), over pairs i < j"
METRICS: dict[str, MetricInfo] = {
    "nc1_pinv": MetricInfo(
        "NC1 within-class variability (pseudo-inverse)",
        "tr(Sigma_B^+ Sigma_W) / K, torch.linalg.pinv cutoff D eps sigma_1",
        PAPYAN,
    ),
    "nc1_svd": MetricInfo(
        "NC1 within-class variability (top K-1 singular pairs)",
        "tr(Sigma_W U diag(s)^-1 U^T) / K, (U, s) the top K-1 singular "
        "pairs of Sigma_B; needs K-1 < D",
        HAN,
    ),
    "nc1_quot": MetricInfo("NC1 trace quotient", "tr(Sigma_W) / tr(Sigma_B)", TIRER),
    "nc1_cdnv": MetricInfo(
        "NC1 class-distance normalised variance",
        "mean over pairs i<j of ((v_i + v_j)/2) / ||mu_i - mu_j||^(2p)",
        GALANTI,
    ),
    "nc2_etf_err": MetricInfo(
        "NC2 simplex ETF error",
        "|| G/||G||_F - (I - 11^T/K)/sqrt(K-1) ||_F, G = M~ M~^T (closed form, no K x K matrix)",
        KOTHAPALLI,
    ),
    "nc2_equinorm": MetricInfo(
        "NC2 equinorm (coefficient of variation of ||m~_k||)",
        "std_k ||m~_k|| (unbiased) / mean_k ||m~_k||",
        PAPYAN,
    ),
    "nc2_equiangle": MetricInfo(
        "NC2 equiangularity",
        "std over pairs i<j of cos(m~_i, m~_j) (unbiased, divisor P-1)",
        PAPYAN,
        min_classes=3,
    ),
    "nc2_max_angle": MetricInfo(
        "NC2 maximal-angle deviation", "mean over pairs i<j of |cos(m~_i, m~_j) + 1/(K-1)|", PAPYAN
    ),
    "nc2g_dist_mean": MetricInfo(
        "GNC2 distance kernel, mean over pairs", f"mean ||u_i - u_j||, {_G}", LIU
    ),
    "nc2g_dist_var": MetricInfo(
        "GNC2 distance kernel, variance over pairs",
        f"(1/P) sum (||u_i - u_j|| - mean)^2, {_G}",
        LIU,
    ),
    "nc2g_log_mean": MetricInfo(
        "GNC2 logarithmic kernel, mean over pairs", f"mean log(||u_i - u_j||^-1), {_G}", LIU
    ),
    "nc2g_log_var": MetricInfo(
        "GNC2 logarithmic kernel, variance over pairs",
        f"(1/P) sum (log(||u_i - u_j||^-1) - mean)^2, {_G}",
        LIU,
    ),
    "nc2g_riesz_mean": MetricInfo(
        "GNC2 Riesz kernel, mean over pairs",
        f"mean sign(S) ||u_i - u_j||^-S, S = D-2 by default, {_G}",
        LIU,
    ),
    "nc2g_riesz_var": MetricInfo(
        "GNC2 Riesz kernel, variance over pairs",
        f"(1/P) sum (sign(S) ||u_i - u_j||^-S - mean)^2, {_G}",
        LIU,
    ),
    "nc2g_riesz_log_mean": MetricInfo(
        "GNC2 Riesz kernel, log of |mean| (log domain)",
        "log |nc2g_riesz_mean|, accumulated in the log domain",
        LIU,
    ),
    "nc2g_riesz_log_var": MetricInfo(
        "GNC2 Riesz kernel, log of the variance (log domain)",
        "log nc2g_riesz_var, accumulated in the log domain",
        LIU,
    ),
    "nc2w_etf_err": MetricInfo(
        "NC2 simplex ETF error of the classifier",
        "nc2_etf_err with G = W W^T",
        ZHU,
        needs=("weights",),
    ),
    "nc2w_equinorm": MetricInfo(
        "NC2 equinorm of the classifier",
        "std_k ||w_k|| (unbiased) / mean_k ||w_k||",
        PAPYAN,
        needs=("weights",),
    ),
    "nc2w_max_angle": MetricInfo(
        "NC2 maximal-angle deviation of the classifier",
        "mean over pairs i<j of |cos(w_i, w_j) + 1/(K-1)|",
        PAPYAN,
        needs=("weights",),
    ),
    "nc3_dual_err": MetricInfo(
        "NC3 self-duality error",
        "nc2_etf_err with G = W M~^T (closed form)",
        KOTHAPALLI,
        needs=("weights",),
    ),
    "nc3u_uni_dual": MetricInfo(
        "UNC3 uniform duality",
        "variance over classes (unbiased, divisor K-1) of w_k . m~_k",
        WU,
        needs=("weights",),
    ),
    "nc3_papyan": MetricInfo(
        "NC3 self-duality distance",
        "|| W/||W||_F - M~/||M~||_F ||_F^2",
        PAPYAN,
        needs=("weights",),
    ),
    "nc3_bias": MetricInfo(
        "NC3 bias collapse",
        "|| W mu_G + b ||_2 with the sample-weighted mu_G",
        ZHU,
        needs=("weights",),
        min_classes=1,
    ),
    "nc4_agree": MetricInfo(
        "NC4 classifier / nearest-class-centre agreement",
        "fraction of samples with argmax_k (w_k . x + b_k) == argmin_k ||x - mu_k||",
        PAPYAN,
        needs=("weights", "test"),
        min_classes=1,
    ),
    "nc5_ood_dev": MetricInfo(
        "NC5 ID/OOD orthogonality deviation",
        "(1/K) sum_k |cos(mu_k, mu_G^ood)|, uncentred mu_k",
        AMMAR,
        needs=("ood",),
        min_classes=1,
    ),
    "nc1_ood_class": MetricInfo(
        "NC1 with the OOD set as an extra class",
        "nc1_pinv over K+1 classes: the OOD samples form class K+1 (its mean, its "
        "scatter pooled into Sigma_W, N grown by the OOD count, mu_G over K+1 means)",
        AMMAR + ", App. D",
        needs=("ood",),
        min_classes=1,
    ),
    # per-class companions
    "mean_norms": MetricInfo(
        "norm of the centred class mean",
        "||m~_k|| = ||mu_k - mu_G||",
        PAPYAN,
        per_class=True,
        min_classes=1,
    ),
    "similarities": MetricInfo(
        "classifier / centred-mean similarity",
        "w_k . m~_k",
        WU,
        needs=("weights",),
        per_class=True,
        min_classes=1,
    ),
    "similarities_cos": MetricInfo(
        "classifier / centred-mean cosine similarity",
        "w_k . m~_k / max(||w_k|| ||m~_k||, 1e-8)",
        WU,
        needs=("weights",),
        per_class=True,
        min_classes=1,
    ),
    "distance_norms": MetricInfo(
        "classifier / centred-mean distance after normalising",
        "|| w_k/(||w_k||+eps) - m~_k/(||m~_k||+eps) ||",
        PAPYAN,
        needs=("weights",),
        per_class=True,
        min_classes=1,
    ),
    "agree_per_class": MetricInfo(
        "NC4 agreement per true class",
        "nc4_agree over the samples of true class k",
        PAPYAN,
        needs=("weights", "test"),
        per_class=True,
        min_classes=1,
    ),
}

_NC2G = (
    "nc2g_dist_mean",
    "nc2g_dist_var",
    "nc2g_log_mean",
    "nc2g_log_var",
    "nc2g_riesz_mean",
    "nc2g_riesz_var",
    "nc2g_riesz_log_mean",
    "nc2g_riesz_log_var",
)

#: Selection names that stand for several variables (``--metrics nc1`` on the CLI).
GROUPS: dict[str, tuple[str, ...]] = {
    "nc1": ("nc1_pinv", "nc1_svd", "nc1_quot", "nc1_cdnv", "nc1_ood_class"),
    "nc2": ("nc2_etf_err", "nc2_equinorm", "nc2_equiangle", "nc2_max_angle", "mean_norms"),
    "nc2g": _NC2G,
    "nc2g_dist": _NC2G[0:2],
    "nc2g_log": _NC2G[2:4],
    "nc2g_riesz": _NC2G[4:8],
    "nc2w": ("nc2w_etf_err", "nc2w_equinorm", "nc2w_max_angle"),
    "nc3": (
        "nc3_dual_err",
        "nc3u_uni_dual",
        "nc3_papyan",
        "nc3_bias",
        "similarities",
        "similarities_cos",
        "distance_norms",
    ),
    "nc4": ("nc4_agree", "agree_per_class"),
    "nc5": ("nc5_ood_dev",),
}

SCALARS = tuple(k for k, v in METRICS.items() if not v.per_class)
PER_CLASS = tuple(k for k, v in METRICS.items() if v.per_class)


def _selection(metrics: str | Iterable[str] | None) -> list[str]:
    """The variables asked for, in SPEC order (the order of :data:`METRICS`)."""
    if metrics is None:
        return list(METRICS)
    if isinstance(metrics, str):
        metrics = [metrics]
    chosen: set[str] = set()
    for m in metrics:
        names = GROUPS.get(m, (m,))
        for n in names:
            if n not in METRICS:
                raise ValueError(
                    f"unknown metric {m!r}; known: {list(METRICS)} and groups {list(GROUPS)}"
                )
            chosen.add(n)
    return [n for n in METRICS if n in chosen]


def label_results(ds: xr.Dataset) -> xr.Dataset:
    """``ds`` with its metric variables in SPEC order, each labelled from :data:`METRICS`.

    Variables that are not metrics keep their place after the metrics. Used by
    :func:`measure` after stacking a sweep (``xr.concat`` keeps no variable
    attrs) and by :func:`ncdask.open_results` after reading a results store
    (Zarr lists arrays alphabetically).

    Parameters
    ----------
    ds : xarray.Dataset

    Returns
    -------
    xarray.Dataset
    """
    names = [n for n in METRICS if n in ds.data_vars]
    names += [n for n in ds.data_vars if n not in METRICS]
    out = ds[names]
    out.attrs = dict(ds.attrs)
    for n in names:
        info = METRICS.get(n)
        if info is not None:
            out[n].attrs.update(
                long_name=info.long_name, formula=info.formula, reference=info.reference
            )
    return out


# --------------------------------------------------------------------------- inputs


def _ood_labels_for_one_class(yo: Any, ignore_index: int | None) -> Any:
    from .kernels._xp import array_namespace

    xp = array_namespace(yo)
    yo = xp.asarray(yo)
    zero = xp.zeros(yo.shape, dtype=xp.int64)
    if ignore_index is None:
        return zero
    return xp.where(yo == ignore_index, ignore_index, zero)


def _ood_one_class(ood: Any, M: da.Array, *, ignore_index: int | None,
                   split_every: int | None) -> tuple[Any, da.Array, da.Array]:
    """One pass over the OOD embeddings: their count, mean (1, D) and centred Σ."""
    split = _split(ood)
    Xo = _like(as_dask(split["embeddings"]), M)
    D = M.shape[1]
    if Xo.ndim != 2 or Xo.shape[1] != D:
        raise ValueError(f"OOD embeddings have shape {Xo.shape}, expected (n, {D})")
    Xo = Xo.rechunk({1: -1})
    if "labels" in split and ignore_index is not None:
        yo = as_dask(split["labels"]).rechunk((Xo.chunks[0],))
        yo = yo.map_blocks(
            _ood_labels_for_one_class, ignore_index, dtype=np.int64,
            meta=meta_from_array(yo, ndim=1, dtype=np.int64),
        )
    else:
        yo = da.zeros(Xo.shape[0], chunks=(Xo.chunks[0],), dtype=np.int64)
        yo = yo.map_blocks(
            _namespace_of(Xo).asarray, meta=meta_from_array(Xo, ndim=1, dtype=np.int64)
        )
    tree = partials_tree(
        Xo, yo, 1, dtype=np.float64, split_every=split_every or 8, ignore_index=ignore_index
    )
    fin = finalized_arrays(
        tree, 1, D, global_mean="unweighted", dtype=np.float64, meta=Xo._meta
    )
    n_o = fin["n_samples"].astype(np.float64)
    mu_o = fin["means"]  # (1, D)
    return n_o, mu_o, fin["within_cov"]


def ood_class_nc1(
    M: da.Array,
    Sw: da.Array,
    n_id: int,
    n_k: np.ndarray,
    ood: Any,
    *,
    global_mean: str = "unweighted",
    ignore_index: int | None = None,
    eps_dtype: Any = None,
    split_every: int | None = None,
) -> da.Array:
    """Lazy ``nc1_pinv`` of the K ID classes plus the OOD set as class K+1.

    One pass over the OOD embeddings gives their count ``n_o``, mean ``μ_o``
    and centred scatter ``S_o`` (the one-class case of the class-statistics
    pass); then ``Σ_W' = (N Σ_W + S_o) / (N + n_o)``, the means gain the row
    ``μ_o``, the global mean is taken over the K+1 means (or weighted by the
    counts) and ``tr(Σ_B'⁺ Σ_W') / (K+1)`` is computed as ``nc1_pinv``.

    Parameters
    ----------
    M : dask array (K, D)
        Class means of the classes measured (float64).
    Sw : dask array (D, D)
        Within-class covariance, pooled over ``n_id`` samples.
    n_id : int
        The number of samples behind ``Sw``.
    n_k : array (K,)
        Counts of the classes in ``M`` (for a weighted global mean).
    ood : split Dataset or (store, split)
        OOD samples; their labels are ignored except ``ignore_index``.
    global_mean : {"unweighted", "weighted"}
    ignore_index : int, optional
        OOD samples with this label are left out.
    eps_dtype : dtype, optional
        Sets the pseudo-inverse cutoff (see :func:`ncdask.graph.closed_forms.nc1_values`).
    split_every : int, optional

    Returns
    -------
    dask array, 0-d

    References
    ----------
    Ammar et al. (2024), NECO, ICLR (arXiv:2310.06823), Appendix D.
    """
    D = M.shape[1]
    if is_summary(ood, "ood"):
        if summary_dim(ood) != D:
            raise ValueError(f"the streamed OOD summary has width {summary_dim(ood)}, "
                             f"the statistics {D}")
        n_o, mu_o, Sw_o = ood_class_from_summary(ood, M)
    else:
        n_o, mu_o, Sw_o = _ood_one_class(ood, M, ignore_index=ignore_index,
                                         split_every=split_every)
    Sw2 = (Sw * float(n_id) + Sw_o * n_o) / (float(n_id) + n_o)
    M2 = da.concatenate([M, mu_o.rechunk((1, -1))], axis=0)
    if global_mean == "weighted":
        nk = as_dask(n_k.astype(np.float64)).rechunk((M.chunks[0],))
        nk = nk.map_blocks(_namespace_of(M).asarray, meta=meta_from_array(M, ndim=1))
        tot = (M * nk[:, None]).sum(axis=0)
        mG2 = (tot + mu_o[0] * n_o) / (float(n_k.sum()) + n_o)
    else:
        mG2 = M2.mean(axis=0)
    Mc2 = M2 - mG2[None, :]
    return CF.nc1_values(Mc2, Sw2, want_svd=False, eps_dtype=eps_dtype)[0]


# --------------------------------------------------------------------------- one measurement


def _scalar(x: Any) -> xr.DataArray:
    return xr.DataArray(x)


def _measure_one(
    stats: xr.Dataset,
    *,
    weights: Any,
    bias: Any,
    test: Any,
    ood: Any,
    tile_size: int | None,
    wanted: Sequence[str],
    dist_exp: float,
    riesz_s: float | None,
    nc4_backend: str,
    ood_labels: bool | None,
    split_every: int | None,
    min_count: int | None = None,
    ignore_index: int | None = None,
    memory_budget: int | None = None,
) -> tuple[xr.Dataset, dict[str, str]]:
    stats = _check_stats(stats)
    kept = kept_classes(stats, min_count, ignore_index)
    counts, present, empty, filtered = kept.counts, kept.present, kept.empty, kept.filtered
    K_all, K, ignore_index = kept.n_all, kept.n_kept, kept.ignore_index
    D = int(stats.sizes["feature"])
    class_ids = np.asarray(stats["class"].values)[present] if "class" in stats.coords else present
    have = {"weights": weights is not None, "test": test is not None, "ood": ood is not None}

    left_out: dict[str, str] = {}
    degenerate: dict[str, str] = {}
    for name in wanted:
        info = METRICS[name]
        missing = [n for n in info.needs if not have[n]]
        if missing:
            left_out[name] = "no " + " / ".join(missing) + " given"
        elif K < info.min_classes:
            degenerate[name] = f"needs at least {info.min_classes} non-empty classes, got {K}"
        elif name == "nc1_svd" and not K - 1 < D:
            degenerate[name] = f"defined only when K-1 < D (K={K}, D={D})"
    left_out.update(degenerate)
    todo = [n for n in wanted if n not in left_out]

    T = int(tile_size) if tile_size else default_tile_size(max(K, 1), D, budget=memory_budget)
    if T < 1:
        raise ValueError(f"tile_size must be a positive integer, got {tile_size!r}")
    out: dict[str, Any] = {}

    if K:
        ins = class_inputs(stats, kept, weights=weights, bias=bias, tile_size=T)
        M, Mc, mG, v, Sw, W, b = ins.M, ins.Mc, ins.mG, ins.v, ins.Sw, ins.W, ins.b
        eps_dtype = ins.eps_dtype

        # every class-tile reduction of the closed forms in one read of each tile (D < K)
        terms = CF.tile_terms(Mc, W) if K > D else None

        # ---- NC1
        if "nc1_pinv" in todo or "nc1_svd" in todo:
            nc1 = CF.nc1_values(Mc, Sw, want_svd="nc1_svd" in todo, eps_dtype=eps_dtype,
                                terms=terms)
            out["nc1_pinv"], out["nc1_svd"] = nc1[0], nc1[1]
        if "nc1_quot" in todo:
            sq = (Mc * Mc).sum() if terms is None else terms["M_sq"]
            out["nc1_quot"] = da.trace(Sw) / (sq / K)

        # ---- pairwise: one fused graph
        pair: list[str] = []
        wants_pair = {
            "cdnv": ["nc1_cdnv"],
            "dist": ["nc2g_dist_mean", "nc2g_dist_var"],
            "log": ["nc2g_log_mean", "nc2g_log_var"],
            "riesz": list(GROUPS["nc2g_riesz"]),
            "cos": ["nc2_equiangle"],
            "cos_dev": ["nc2_max_angle"],
            "wcos_dev": ["nc2w_max_angle"],
        }
        for stat, names in wants_pair.items():
            if any(n in todo for n in names):
                pair.append(stat)
        if pair:
            S = float(D - 2 if riesz_s is None else riesz_s)
            res = pairwise_moments(
                Mc,
                stats=pair,
                v=v if "cdnv" in pair else None,
                W=W if "wcos_dev" in pair else None,
                tile_size=T,
                dist_exp=dist_exp,
                riesz_s=S,
                inv_km1=1.0 / (K - 1),
                split_every=split_every,
            )
            row = {s: i for i, s in enumerate(pair)}
            if "cdnv" in row:
                out["nc1_cdnv"] = res[row["cdnv"], 1]
            for k in ("dist", "log", "riesz"):
                if k in row:
                    out[f"nc2g_{k}_mean"] = res[row[k], 1]
                    out[f"nc2g_{k}_var"] = res[row[k], 2]
            if "riesz" in row:
                out["nc2g_riesz_log_mean"] = res[row["riesz"], 3]
                out["nc2g_riesz_log_var"] = res[row["riesz"], 4]
            if "cos" in row:
                n = res[row["cos"], 0]
                out["nc2_equiangle"] = da.sqrt(res[row["cos"], 2] * n / (n - 1))
            if "cos_dev" in row:
                out["nc2_max_angle"] = res[row["cos_dev"], 1]
            if "wcos_dev" in row:
                out["nc2w_max_angle"] = res[row["wcos_dev"], 1]

        # ---- NC2 closed forms
        if "nc2_etf_err" in todo:
            out["nc2_etf_err"] = CF.etf_error(Mc, terms=terms, pair="MM")
        norms = CF.row_norms(Mc)
        if "mean_norms" in todo:
            out["mean_norms"] = norms
        if "nc2_equinorm" in todo:
            out["nc2_equinorm"] = norms.std(ddof=1) / norms.mean()

        # ---- NC3 and the classifier's own geometry
        if W is not None:
            sims = (W * Mc).sum(axis=1)
            if "similarities" in todo:
                out["similarities"] = sims
            if "similarities_cos" in todo:
                out["similarities_cos"] = CF.cosine_rows(W, Mc)
            if "distance_norms" in todo:
                diff = CF.normalized(W) - CF.normalized(Mc)
                out["distance_norms"] = CF.row_norms(diff)
            if "nc3u_uni_dual" in todo:
                out["nc3u_uni_dual"] = sims.var(ddof=1)
            if "nc3_dual_err" in todo:
                out["nc3_dual_err"] = CF.etf_error(Mc, W, terms=terms, pair="MW")
            if "nc3_papyan" in todo:
                d = W / da.sqrt((W * W).sum()) - Mc / da.sqrt((Mc * Mc).sum())
                out["nc3_papyan"] = (d * d).sum()
            if "nc3_bias" in todo:
                n_k = counts[present].astype(np.float64)
                frac = as_dask(n_k / n_k.sum()).rechunk((M.chunks[0],))
                frac = frac.map_blocks(_namespace_of(M).asarray, meta=meta_from_array(M, ndim=1))
                mu_w = (M * frac[:, None]).sum(axis=0)
                out["nc3_bias"] = da.sqrt(((W @ mu_w + b) ** 2).sum())
            if "nc2w_etf_err" in todo:
                out["nc2w_etf_err"] = CF.etf_error(W, terms=terms, pair="WW")
            if "nc2w_equinorm" in todo:
                wn = CF.row_norms(W)
                out["nc2w_equinorm"] = wn.std(ddof=1) / wn.mean()

            # ---- NC4
            if ("nc4_agree" in todo or "agree_per_class" in todo) and is_summary(test, "test"):
                hits, n_test = agreement_from_summary(test, Mc, W, b, K_all)
            elif "nc4_agree" in todo or "agree_per_class" in todo:
                split = _split(test)
                X = _like(_float64(as_dask(split["embeddings"])), M)
                if X.shape[1] != D:
                    raise ValueError(f"test embeddings have dim {X.shape[1]}, stats have {D}")
                if "labels" not in split:
                    raise ValueError("the test split needs 'labels' for NC4")
                k_test = split.attrs.get("n_classes") if hasattr(split, "attrs") else None
                if k_test is not None and int(k_test) != K_all:
                    raise ValueError(
                        f"the test split has n_classes={int(k_test)}, the statistics "
                        f"{K_all}: NC4 needs test data of the same classifier's classes")
                y = as_dask(split["labels"])
                kw = dict(tile_size=T, split_every=split_every, budget=memory_budget)
                if nc4_backend == "gemm":
                    dec = DG.decisions(X, W, b, Mc, mG, **kw)
                    agree = dec[:, 1] == dec[:, 3]
                elif nc4_backend == "faiss":
                    dec = DG.decisions(X, W, b, Mc, mG, ncc=False, **kw)
                    ncc = DG.faiss_ncc(X, Mc, mG)
                    agree = dec[:, 1].rechunk(ncc.chunks) == ncc
                else:
                    raise ValueError(f"nc4_backend must be 'gemm' or 'faiss', got {nc4_backend!r}")
                hits, n_test = DG.agreement_counts(agree, y.rechunk(agree.chunks), K_all,
                                                   ignore_index=ignore_index)
            if "nc4_agree" in todo or "agree_per_class" in todo:
                # a classifier with NaN/inf weights, or all zeros, decides nothing:
                # NaN, not the share of samples whose argmax of NaN logits lands right
                dead = ~da.isfinite(W).all() | ~(W != 0).any()
                if b is not None:
                    dead = dead | ~da.isfinite(b).all()
                hits = da.where(DG.on_host(dead), np.nan, hits)  # the counts are on the host
                if "nc4_agree" in todo:
                    out["nc4_agree"] = hits.sum() / n_test.sum()
                if "agree_per_class" in todo:
                    h, c = hits[present], n_test[present]
                    out["agree_per_class"] = da.where(c > 0, h / da.maximum(c, 1), np.nan)

        # ---- NC5
        if "nc5_ood_dev" in todo and is_summary(ood, "ood"):
            if summary_dim(ood) != D:
                raise ValueError(f"the streamed OOD summary has width {summary_dim(ood)}, "
                                 f"the statistics {D}")
            mood = ood_mean_from_summary(ood, ood_labels, M)
            out["nc5_ood_dev"] = da.fabs(CF.cosine_rows(M, mood[None, :])).mean()
        elif "nc5_ood_dev" in todo:
            split = ood if isinstance(ood, xr.Dataset) else _split(ood)
            Xo = _like(_float64(as_dask(split["embeddings"])), M)
            if Xo.ndim != 2 or Xo.shape[1] != D:  # here, not as a broadcast error at compute
                raise ValueError(f"OOD embeddings have shape {Xo.shape}, expected (n, {D}) "
                                 "like the statistics")
            use = "labels" in split if ood_labels is None else bool(ood_labels)
            yo = as_dask(split["labels"]) if use else None
            mood = DG.ood_global_mean(Xo, yo, ignore_index=ignore_index)
            out["nc5_ood_dev"] = da.fabs(CF.cosine_rows(M, mood[None, :])).mean()

        # ---- NC1 with the OOD set as class K+1
        if "nc1_ood_class" in todo:
            n_id = (
                int(to_numpy(stats["n_samples"].values))
                if "n_samples" in stats
                else int(counts.sum())
            )
            out["nc1_ood_class"] = ood_class_nc1(
                M,
                Sw,
                n_id,
                counts[present],
                ood,
                global_mean=stats.attrs.get("global_mean", "unweighted"),
                ignore_index=ignore_index,
                eps_dtype=eps_dtype,
                split_every=split_every,
            )

    data_vars = {}
    for name in todo:
        if name not in out:
            continue
        info = METRICS[name]
        dims = ("class",) if info.per_class else ()
        var = xr.Variable(dims, out[name])
        var.attrs.update(long_name=info.long_name, formula=info.formula, reference=info.reference)
        data_vars[name] = var
    ds = xr.Dataset(
        data_vars,
        coords={"class": class_ids} if any(METRICS[n].per_class for n in data_vars) else None,
    )
    ds.attrs.update(
        n_classes=K_all,
        n_classes_measured=K,
        dim=D,
        empty_classes=[int(i) for i in empty],
        filtered_classes=[int(i) for i in filtered],
        min_count=None if min_count is None else int(min_count),
        ignore_index=ignore_index,
        tile_size=T,
        memory_budget=memory_budget,
        dist_exp=float(dist_exp),
        riesz_s=float(D - 2 if riesz_s is None else riesz_s),
        global_mean=stats.attrs.get("global_mean", "unweighted"),
        left_out=dict(left_out),
        ncdask_version=__version__,
    )
    return ds, degenerate


# --------------------------------------------------------------------------- sweeps

_CORE_DIMS = {"class", "feature", "feature_"}


def _sweep_items(
    stats: Any, dim: str | None, labels: Sequence[Any] | None
) -> tuple[str | None, list[Any], list[xr.Dataset]]:
    if isinstance(stats, xr.Dataset):
        extra = [d for d in stats.dims if d not in _CORE_DIMS]
        if not extra:
            return None, [None], [stats]
        if len(extra) > 1:
            raise ValueError(f"stats have more than one sweep dim: {extra}; stack them first")
        d = extra[0]
        if dim is not None and dim != d:
            raise ValueError(f"dim={dim!r} but the stats are stacked along {d!r}")
        labs = list(stats[d].values) if d in stats.coords else list(range(stats.sizes[d]))
        items = [stats.isel({d: i}) for i in range(stats.sizes[d])]
        for it in items:  # the per-item empty classes follow from its own counts
            it.attrs = dict(it.attrs)
            counts = np.asarray(it["counts"].values)
            it.attrs["empty_classes"] = np.nonzero(counts == 0)[0].tolist()
        return d, labs, items
    if isinstance(stats, Mapping):
        return dim or "epoch", list(stats.keys()), list(stats.values())
    if isinstance(stats, (list, tuple)):
        labs = list(labels) if labels is not None else list(range(len(stats)))
        if len(labs) != len(stats):
            raise ValueError(f"{len(labs)} labels for {len(stats)} stats")
        return dim or "epoch", labs, list(stats)
    raise TypeError(
        f"stats must be a Dataset, a list or a dict of Datasets, got {type(stats).__name__}"
    )


def _pick(obj: Any, i: int, label: Any, dim: str | None, kind: str) -> Any:
    """Item ``i`` of a per-item input (a dict, a list, or an xarray object with ``dim``)."""
    if obj is None or dim is None:
        return obj
    if isinstance(obj, Mapping):
        return obj[label]
    if isinstance(obj, list):
        return obj[i]
    if isinstance(obj, (xr.DataArray, xr.Dataset)) and dim in obj.dims:
        return obj.isel({dim: i})
    return obj


def measure(
    stats: xr.Dataset | Sequence[xr.Dataset] | Mapping[Any, xr.Dataset],
    *,
    weights: Any = None,
    bias: Any = None,
    test: Any = None,
    ood: Any = None,
    tile_size: int | None = None,
    metrics: str | Iterable[str] | None = None,
    dist_exp: float = 1.0,
    riesz_s: float | None = None,
    nc4_backend: str = "gemm",
    ood_labels: bool | None = None,
    dim: str | None = None,
    labels: Sequence[Any] | None = None,
    split_every: int | None = None,
    min_count: int | None = None,
    ignore_index: int | None = None,
    memory_budget: int | str | None = None,
) -> xr.Dataset:
    """Measure Neural Collapse: every SPEC.md metric as a lazy labelled Dataset.

    Nothing is computed here (beyond the in-memory class counts); call
    ``.compute()`` on the result, or on the variables you want. All the
    pairwise metrics asked for come from one fused blocked graph that only
    visits the upper-triangle class tiles, so no K×K array is ever formed.

    Parameters
    ----------
    stats : xarray.Dataset, list or dict of them
        Class statistics from :func:`ncdask.class_stats`. A Dataset stacked
        along one extra dim (``epoch``, ``layer``, ...), a list (with
        ``labels``) or a dict (keys as labels) measures a sweep.
    weights : array (K, D), optional
        Classifier weights (NumPy, CuPy, dask, xarray or torch). For a sweep,
        a list or dict per item, or a DataArray with the sweep dim.
    bias : array (K,), optional
        Classifier bias, used by NC4 and ``nc3_bias`` (0 if not given).
    test : split Dataset or (store, split), optional
        Samples for NC4 (``embeddings``, ``labels``); labels outside [0, K)
        (such as -100 padding) are ignored.
    ood : split Dataset or (store, split), optional
        Out-of-distribution samples for NC5, with or without ``labels``.
    tile_size : int, optional
        Classes per tile (the chunk size of the class axis); by default the
        largest that fits ``memory_budget``.
    metrics : str or iterable of str, optional
        Variables (or groups such as ``"nc2g_riesz"``) to compute; default all.
    dist_exp : float, default 1
        CDNV distance exponent ``p`` (linguistic collapse uses 2).
    riesz_s : float, optional
        Riesz exponent ``S``; default ``D − 2``.
    nc4_backend : {"gemm", "faiss"}
        NCC decisions by blocked GEMM or by an exact FAISS index (needs
        ``faiss``; float32, so near-ties may differ).
    ood_labels : bool, optional
        Use the OOD labels (unweighted mean of per-label means); default: if present.
    dim : str, optional
        Name of the sweep dim for a list or dict of stats (default "epoch").
    labels : sequence, optional
        Coordinates of a list sweep.
    split_every : int, optional
        Fan-in of the merge trees.
    min_count : int, optional
        Leave classes with fewer samples out of every class-level metric
        (listed in the ``filtered_classes`` attribute, like empty classes);
        the global mean is then taken over the classes kept.
    ignore_index : int, optional
        Label of samples to skip in the test and OOD splits (default: the
        statistics' ``ignore_index`` attribute, which ``class_stats`` copies
        from the store).
    memory_budget : int or str, optional
        Bytes one task of the blocked graphs may hold (``"64MiB"`` works):
        sets the default tile size and the NC4 sample blocks. Default: the
        ``ncdask.tile-budget`` dask config value, else 128 MiB, lowered under
        an active distributed client to 1/8 of the smallest worker's
        ``memory_limit`` (and to half that limit over its threads); see
        :func:`ncdask.graph.pairwise.resolve_budget`.

    Returns
    -------
    xarray.Dataset
        Scalar metrics and per-class companions (see :mod:`ncdask.metrics`),
        each with ``long_name``, ``formula`` and ``reference`` attrs; Dataset
        attrs ``n_classes``, ``n_classes_measured``, ``empty_classes``,
        ``filtered_classes``, ``min_count``, ``tile_size``, ``memory_budget``, ``left_out``
        (metric → reason).

    Warns
    -----
    DegenerateInputWarning
        When a requested metric is undefined for the input and left out.
    RieszRangeWarning
        When computed, if the Riesz kernel's mean or variance over- or
        underflows float64 (the ``nc2g_riesz_log_*`` variables stay finite).

    References
    ----------
    See each variable's ``reference`` attribute; the definitions are those
    of the ``neural_collapse`` reference package (rhubarbwu/neural-collapse).

    Examples
    --------
    >>> import numpy as np, xarray as xr, dask.array as da
    >>> from ncdask.metrics import measure
    >>> rng = np.random.default_rng(0)
    >>> K, D = 4, 6
    >>> means = rng.normal(size=(K, D))
    >>> stats = xr.Dataset({
    ...     "counts": ("class", np.full(K, 10)),
    ...     "means": (("class", "feature"), da.from_array(means)),
    ...     "global_mean": ("feature", means.mean(0)),
    ...     "within_cov": (("feature", "feature_"), 0.01 * np.eye(D)),
    ...     "var_norms": ("class", np.full(K, 0.06)),
    ... }, coords={"class": np.arange(K)})
    >>> res = measure(stats, metrics=["nc1_quot", "nc2g_dist"]).compute()
    >>> sorted(res.data_vars)
    ['nc1_quot', 'nc2g_dist_mean', 'nc2g_dist_var']
    """
    wanted = _selection(metrics)
    if riesz_s is not None and not math.isfinite(float(riesz_s)):
        raise ValueError(f"riesz_s must be finite, got {riesz_s!r}")
    if min_count is not None:
        if isinstance(min_count, bool) or not isinstance(min_count, (int, np.integer)):
            raise TypeError(f"min_count must be an integer, got {min_count!r}")
        if min_count < 0:
            raise ValueError(f"min_count must be >= 0, got {min_count}")
    budget = resolve_budget(memory_budget)
    d, labs, items = _sweep_items(stats, dim, labels)
    results, degenerate = [], {}
    for i, (lab, st) in enumerate(zip(labs, items, strict=True)):
        ds, deg = _measure_one(
            st,
            weights=_pick(weights, i, lab, d, "weights"),
            bias=_pick(bias, i, lab, d, "bias"),
            test=_pick(test, i, lab, d, "test"),
            ood=_pick(ood, i, lab, d, "ood"),
            tile_size=tile_size,
            wanted=wanted,
            dist_exp=dist_exp,
            riesz_s=riesz_s,
            nc4_backend=nc4_backend,
            ood_labels=ood_labels,
            split_every=split_every,
            min_count=min_count,
            ignore_index=ignore_index,
            memory_budget=budget,
        )
        results.append(ds)
        for k, reason in deg.items():
            degenerate.setdefault(k, reason if d is None else f"{reason} at {d}={lab}")
    if degenerate:
        shown = "; ".join(f"{k}: {r}" for k, r in degenerate.items())
        warnings.warn(
            f"left out as undefined for this input: {shown}", DegenerateInputWarning, stacklevel=2
        )
    if d is None:
        return results[0]
    attrs = dict(results[0].attrs)
    attrs["left_out"] = {k: v for r in results for k, v in r.attrs["left_out"].items()}
    attrs["empty_classes"] = sorted({c for r in results for c in r.attrs["empty_classes"]})
    attrs["filtered_classes"] = sorted(
        {c for r in results for c in r.attrs["filtered_classes"]}
    )
    attrs["n_classes_measured"] = [r.attrs["n_classes_measured"] for r in results]
    out = xr.concat(
        results,
        dim=d,
        join="outer",
        combine_attrs="override",
        data_vars="all",
        coords="different",
        compat="equals",
    )
    out = label_results(out.assign_coords({d: labs}))
    out.attrs = attrs
    return out
