"""Streamed summaries (:class:`ncdask.EvalAccumulator`'s ``test`` and ``ood``) read as inputs.

A test summary carries fingerprints (projections on a fixed random vector), so
:func:`ncdask.measure` refuses it against other statistics, weights or ``min_count``."""

from __future__ import annotations

from typing import Any

import dask
import dask.array as da
import numpy as np
import xarray as xr

from ncdask.kernels._xp import to_numpy
from ncdask.metrics.inputs import as_dask, like

#: Seed of the fixed vector the fingerprints project on.
FINGERPRINT_SEED = 7_261_201
#: Relative tolerance of a fingerprint check (the lazy graph sums in other orders).
FINGERPRINT_RTOL = 1e-9


def probe(dim: int) -> np.ndarray:
    """The fixed random vector of width ``dim`` the fingerprints project on."""
    return np.random.default_rng(FINGERPRINT_SEED).standard_normal(dim)


def same_fingerprint(a: Any, b: Any) -> bool:
    """Whether two fingerprints (or two Nones) agree to :data:`FINGERPRINT_RTOL`."""
    if a is None or b is None:
        return a is None and b is None
    a, b = np.asarray(to_numpy(a)), np.asarray(to_numpy(b))
    return a.shape == b.shape and bool(
        np.linalg.norm(a - b) <= FINGERPRINT_RTOL * max(np.linalg.norm(a), 1e-300))


def is_summary(obj: Any, kind: str) -> bool:
    """Whether ``obj`` is a streamed summary of ``kind`` ("test" or "ood")."""
    return isinstance(obj, xr.Dataset) and obj.attrs.get("ncdask_streamed") == kind


def check_role(obj: Any, role: str) -> None:
    """Refuse a streamed summary passed for the other role (an OOD summary as ``test=``)."""
    kind = obj.attrs.get("ncdask_streamed") if isinstance(obj, xr.Dataset) else None
    if kind is not None and kind != role:
        raise ValueError(f"a streamed {kind} summary was given as {role}=: pass "
                         f"EvalAccumulator.{role}_summary() there")


def summary_dim(summary: xr.Dataset) -> int:
    """The width D of a summary's embeddings."""
    return int(summary.sizes["feature"])


def _check_fingerprints(fp_m: Any, fp_w: Any, fp_b: Any, want_m: Any, want_w: Any,
                        want_b: Any, counts: Any) -> Any:
    for name, got, want in (("class means", fp_m, want_m), ("classifier weights", fp_w, want_w),
                            ("classifier bias", fp_b, want_b)):
        if not same_fingerprint(got, want):
            raise ValueError(
                f"the streamed test summary was made against other {name} (or another "
                "min_count) than measure was given: build the EvalAccumulator from the same "
                "statistics, weights, bias and min_count")
    return counts


def agreement_from_summary(summary: xr.Dataset, Mc: da.Array, W: da.Array, b: da.Array,
                           n_classes: int) -> tuple[da.Array, da.Array]:
    """Lazy per-class (hits, counts) of a test summary, checked against ``Mc``, ``W``, ``b``
    when computed (on the same lazy inputs the other metrics use)."""

    if summary.sizes.get("class") != n_classes:
        raise ValueError(f"the streamed test summary has {summary.sizes.get('class')} "
                         f"classes, the statistics {n_classes}")
    if summary.sizes.get("kept_class") != Mc.shape[0]:
        raise ValueError(
            f"the streamed test summary decided between {summary.sizes.get('kept_class')} "
            f"classes, measure keeps {Mc.shape[0]}: pass the same min_count to both")
    r = like(da.from_array(probe(Mc.shape[1]), chunks=-1), Mc)
    counts = np.stack([summary["nc4_hits"].values, summary["nc4_count"].values]).astype(
        np.float64)
    checked = dask.delayed(_check_fingerprints, pure=True)(
        summary["fingerprint_means"].values, summary["fingerprint_weights"].values,
        summary["fingerprint_bias"].values, (Mc @ r), (W @ r), b, counts)
    both = da.from_delayed(checked, shape=counts.shape, dtype=np.float64,
                           meta=np.empty((0, 0), dtype=np.float64))
    return both[0], both[1]


def ood_mean_from_summary(summary: xr.Dataset, use_labels: bool | None, ref: da.Array) -> da.Array:
    """The OOD global mean of a summary: of per-label means, or plain (as ``ref``'s backend)."""
    labelled = "ood_label_sums" in summary
    use = labelled if use_labels is None else bool(use_labels)
    if use and not labelled:
        raise ValueError("ood_labels=True, but the streamed OOD summary has no labels")
    if use:
        mood = (summary["ood_label_sums"].values
                / summary["ood_label_counts"].values[:, None]).mean(axis=0)
    else:
        mood = summary["ood_sum"].values / float(summary["ood_n"].values)
    return like(as_dask(np.asarray(mood, dtype=np.float64)), ref)


def ood_class_from_summary(summary: xr.Dataset, ref: da.Array) -> tuple[Any, da.Array, da.Array]:
    """``(n_o, μ_o (1, D), Σ_o)`` of a summary's one-class statistics (``ref``'s backend)."""
    n_o = float(summary["ood_class_n"].values)
    mu = like(as_dask(summary["ood_class_mean"].values[None, :].astype(np.float64)), ref)
    Sw = like(as_dask(summary["ood_class_within_cov"].values.astype(np.float64)), ref)
    return n_o, mu, Sw
